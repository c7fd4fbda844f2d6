//! The agent's part of the replicator loop (`storage::Replicator` owns the watchers, the batcher and
//! the queues; this holds what the agent adds to it): where changes go by role, and the loop's side
//! of promotions, demotions and drains ([`Control`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::orphans::{self, Orphans};
use super::ring::Ring;
use super::{Agent, Control};
use crate::alert::AlertSink;
use crate::config::filter::Filter;
use crate::storage::batch::Entry;
use crate::storage::remote::Queue;

/// The drain barrier: a file the agent writes at the root of each tree; once the watcher reports
/// it, every change made before the drain was asked for has been seen (inotify keeps order).
pub const BARRIER: &str = ".nfs-guard-barrier";
/// How often a drain checks whether the peer's queue is empty.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long a demotion waits for the pushes under way to stop (killing an rsync is quick).
const ABORT_WAIT: Duration = Duration::from_secs(5);

struct PendingDrain {
    /// Per tree: barrier seen?
    seen: Vec<bool>,
    deadline: Instant,
    done: oneshot::Sender<Result<(), String>>,
}

pub struct Duty {
    pub agent: Arc<Agent>,
    /// Index of the peer among the remotes.
    pub peer: usize,
    pub control: mpsc::Receiver<Control>,
    ring: Ring,
    peer_queue: Arc<Queue>,
    /// The peer's pushes are cautious (`--update`) from a promotion until caught up.
    cautious: Arc<AtomicBool>,
    roots: Vec<PathBuf>,
    drain: Option<PendingDrain>,
    alerts: Arc<dyn AlertSink>,
    /// After an unclean stop while active: journal what changed since then (unix ms) at start.
    recover: Option<(u64, Filter)>,
}

/// What an event was to the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not the agent's: replicate as usual.
    Pass,
    /// The drain barrier (never replicated); `true` when it completes the barrier.
    Barrier(bool),
}

impl Duty {
    pub fn new(
        agent: Arc<Agent>,
        peer: usize,
        control: mpsc::Receiver<Control>,
        peer_queue: Arc<Queue>,
        cautious: Arc<AtomicBool>,
        roots: Vec<PathBuf>,
        alerts: Arc<dyn AlertSink>,
    ) -> Duty {
        let ring = Ring::new(agent.covered_since_ms.load(Ordering::SeqCst));
        Duty { agent, peer, control, ring, peer_queue, cautious, roots, drain: None, alerts, recover: None }
    }

    /// Does a change go into remote `idx`'s queue? Not into the peer's while standby (it goes into
    /// the ring instead, see [`Duty::standby_saw`]).
    pub fn feeds(&self, idx: usize) -> bool {
        idx != self.peer || self.agent.is_active()
    }

    /// A batch the standby saw (not journaled for the peer).
    pub fn standby_saw(&mut self, batch: &[Entry]) {
        if !self.agent.is_active() {
            self.ring.record(crate::cluster::now_ms(), batch);
        }
    }

    /// Events of the export were lost: the ring no longer covers what came before.
    pub fn lost_events(&mut self) {
        let now = crate::cluster::now_ms();
        self.ring.lost(now);
        self.agent.covered_since_ms.store(self.ring.covered_since_ms(), Ordering::SeqCst);
    }

    /// At start, after an unclean stop while active: every path changed since `since_ms` is
    /// journaled for the peer (see `unclean`).
    pub fn recover_since(&mut self, since_ms: u64, filter: Filter) {
        self.recover = Some((since_ms, filter));
    }

    /// At start: what an unclean stop left unjournaled goes into the journal; a standby whose
    /// journal to the peer still holds changes (it was demoted, or its record changed, while it
    /// was down) quarantines them now.
    pub async fn start(&mut self) {
        if let Some((since, filter)) = self.recover.take() {
            let roots = self.roots.clone();
            let found = tokio::task::spawn_blocking(move || super::unclean::changed_since(&roots, &filter, since))
                .await
                .unwrap_or_default();
            if !found.is_empty() {
                if let Err(e) = self.peer_queue.enqueue(&found).durable.wait().await {
                    tracing::error!(error = %crate::chain::render_chain(&e), "journal write failed after the unclean stop");
                }
            }
            tracing::warn!(
                paths = found.len(),
                "after the unclean stop: journaled every path changed since the window began"
            );
        }
        if !self.agent.is_active() && self.peer_queue.depth().0 > 0 {
            tracing::warn!("standby with changes queued for the peer: keeping them as orphans");
            self.demote(self.agent.record().epoch).await;
        }
    }

    /// Acts on a role change or a drain (from the agent's API).
    pub async fn act(&mut self, c: Control) {
        match c {
            Control::Promote { journal_since_ms, done } => {
                self.promote(journal_since_ms).await;
                let _ = done.send(());
            }
            Control::Demote { epoch, done } => {
                self.demote(epoch).await;
                let _ = done.send(());
            }
            Control::Drain { deadline, done } => {
                if !self.agent.is_active() {
                    let _ = done.send(Err("refused: this agent is not active".into()));
                    return;
                }
                if let Some(old) = self.drain.take() {
                    let _ = old.done.send(Err("superseded by a newer drain request".into()));
                }
                for root in &self.roots {
                    let p = root.join(BARRIER);
                    if let Err(e) = std::fs::write(&p, crate::cluster::now_ms().to_string()) {
                        let _ = done.send(Err(format!("cannot write the drain barrier {}: {e}", p.display())));
                        return;
                    }
                }
                self.drain = Some(PendingDrain { seen: vec![false; self.roots.len()], deadline, done });
            }
        }
    }

    async fn promote(&mut self, since_ms: u64) {
        // The peer's pushes still under way were admitted under the old record: stopped before
        // clients write here, or they land over those writes (rsync's session in this export).
        let roots = self.roots.clone();
        let stopped = tokio::task::spawn_blocking(move || {
            let pids = crate::sys::receivers::inside(std::path::Path::new("/proc"), &roots, std::process::id());
            crate::sys::receivers::stop(&pids);
            pids.len()
        })
        .await
        .unwrap_or(0);
        if stopped > 0 {
            tracing::warn!(processes = stopped, "stopped the peer's pushes still under way into this export");
        }
        let mut entries = self.ring.since(since_ms);
        let seen = entries.len();
        match orphans::load(self.agent.dir()) {
            Ok(Some(o)) => {
                let r = orphans::resolve(&self.roots, &o);
                if !r.conflicts.is_empty() {
                    self.conflict_alert(&o, &r.conflicts);
                }
                tracing::info!(orphans = o.list.len(), conflicts = r.conflicts.len(), "orphaned writes resolved");
                entries.extend(r.push);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the orphaned writes; they stay until resolved by hand"),
        }
        if !entries.is_empty() {
            if let Err(e) = self.peer_queue.enqueue(&entries).durable.wait().await {
                tracing::error!(error = %crate::chain::render_chain(&e), "journal write failed at promotion");
            }
        }
        // orphans delivered to the journal: the file can go
        if let Err(e) = orphans::store(self.agent.dir(), None) {
            tracing::warn!(error = %e, "cannot remove the orphans file");
        }
        self.agent.orphans.store(0, Ordering::SeqCst);
        self.cautious.store(true, Ordering::SeqCst);
        self.agent.set_active(true);
        self.peer_queue.wake();
        tracing::warn!(journaled = entries.len(), seen_while_standby = seen, "promoted: this server is active");
    }

    async fn demote(&mut self, epoch: u64) {
        self.agent.set_active(false);
        // Pushes under way were admitted under the old role: stopped, so none lands on the peer
        // (active now) over what clients write there, and their paths are quarantined with the rest
        // (found by the chaos test: a push stalled by a fault was left out, and its file lost).
        self.peer_queue.abort_pushes();
        let end = Instant::now() + ABORT_WAIT;
        while self.peer_queue.in_flight() > 0 && Instant::now() < end {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if self.peer_queue.in_flight() > 0 {
            tracing::error!(
                pushes = self.peer_queue.in_flight(),
                "pushes under way did not stop; their paths stay journaled, not quarantined"
            );
        }
        let taken = self.peer_queue.take_pending();
        if taken.is_empty() {
            tracing::warn!("demoted: this server is standby, nothing was left unpushed");
            return;
        }
        let entries: Vec<Entry> = taken.iter().map(|(_, e)| e.clone()).collect();
        let mut o = orphans::load(self.agent.dir()).ok().flatten().unwrap_or(Orphans { epoch, list: Vec::new() });
        let roots = self.roots.clone();
        let server = self.agent.server();
        let q = tokio::task::spawn_blocking(move || orphans::quarantine(&roots, &entries, epoch, server)).await;
        let Ok(q) = q else {
            tracing::error!("quarantine of orphaned writes failed; they stay in the journal");
            return;
        };
        o.list.extend(q.list);
        match orphans::store(self.agent.dir(), Some(&o)) {
            Ok(()) => {
                let seqs: Vec<u64> = taken.iter().map(|(s, _)| *s).collect();
                let _ = self.peer_queue.forget(&seqs).wait().await;
                self.agent.orphans.store(o.list.len() as u64, Ordering::SeqCst);
                tracing::warn!(
                    orphans = o.list.len(),
                    epoch,
                    "demoted with unpushed changes: kept as orphans until this server is active again"
                );
            }
            Err(e) => tracing::error!(error = %e, "cannot persist the orphaned writes; they stay in the journal"),
        }
    }

    fn conflict_alert(&self, o: &Orphans, conflicts: &[String]) {
        let when = format!("in epoch {}", o.epoch);
        self.alerts.emit(orphans::conflict_alert(self.agent.server(), &when, conflicts));
    }

    /// Looks at one watched path of tree `tree` (rooted at `root`).
    pub fn observe(&mut self, tree: usize, root: &Path, path: &Path) -> Seen {
        if path.parent() != Some(root) || path.file_name().is_none_or(|n| n != BARRIER && n != super::health::CANARY) {
            return Seen::Pass;
        }
        if path.file_name().is_some_and(|n| n == super::health::CANARY) {
            return Seen::Barrier(false);
        }
        let Some(d) = &mut self.drain else { return Seen::Barrier(false) };
        if let Some(s) = d.seen.get_mut(tree) {
            *s = true;
        }
        Seen::Barrier(d.seen.iter().all(|s| *s))
    }

    /// The barrier is complete and the batcher flushed into the queues: answer once every change
    /// queued until now is pushed (or the deadline passes); changes clients make meanwhile are
    /// the next drain's.
    pub fn barrier_passed(&mut self) {
        let Some(d) = self.drain.take() else { return };
        for root in &self.roots {
            let _ = std::fs::remove_file(root.join(BARRIER));
        }
        let q = Arc::clone(&self.peer_queue);
        let upto = q.next_seq();
        q.wake();
        tokio::spawn(async move {
            loop {
                if q.drained_before(upto) {
                    let _ = d.done.send(Ok(()));
                    return;
                }
                if Instant::now() >= d.deadline {
                    let (n, owed) = q.depth();
                    let _ = d.done.send(Err(format!(
                        "not drained in time: {n} paths queued, {} being pushed, {} full syncs owed",
                        q.in_flight(),
                        owed.len()
                    )));
                    return;
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
        });
    }

    /// When a pending drain's barrier never came (lost events): its deadline.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain.as_ref().map(|d| d.deadline)
    }

    pub fn drain_expired(&mut self) {
        if let Some(d) = self.drain.take() {
            for root in &self.roots {
                let _ = std::fs::remove_file(root.join(BARRIER));
            }
            let _ = d.done.send(Err("the drain barrier was not seen in time (events lost?)".into()));
        }
    }
}
