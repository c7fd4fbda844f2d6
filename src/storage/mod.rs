//! `nfs-guard storage`: watch export trees and push every change to every remote with rsync, in
//! batches, without ever losing a change.
//!
//! ```text
//!  inotify (notify thread, one watcher per tree)
//!     | try_send (full -> overflow flag)          rescan flag / overflow -> full sync request
//!     v
//!  [main loop]  changes() -> filter -> Batcher (pure: per-path window, max_delay cap, subsumption)
//!     | due entries (each one window after its path's last event): fan out to every real-time remote
//!     v
//!  Queue(remote A) ---journal A (fdatasync per batch)      Queue(remote B) ---journal B
//!     |                                                       |
//!  [worker A] up to push_concurrency rsyncs at once, of      [worker B]  (never waits for A)
//!     |       non-overlapping batches (one rsync per batch and tree); backoff + jitter;
//!     |       group commit: a free slot takes all that is queued, a busy one lets it pile up
//!     |-- ack in journal, status board, hooks (own tasks)     |
//!     v                                                       v
//!  [status writer] <state_dir>/storage.status.json (coalesced, <= 1 write/s)
//! ```
//!
//! Start: replay journals, compare directory count with the inotify limit, install watches, queue
//! full syncs (configured at start, or forced after an unclean stop), then READY. Shutdown: flush the
//! pending batch into the journals, let workers finish their push within a grace period, then stop;
//! whatever is left stays journaled for the next start.

pub mod agent;
pub mod batch;
pub mod fullsync;
pub mod guard;
mod guard_keep;
pub mod hooks;
pub mod journal;
pub mod push;
mod queue_view;
pub mod remote;
pub mod status;
pub mod watcher;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alert::{AlertEvent, AlertKind, AlertSink, Role};
use crate::config::storage::StorageConfig;
use crate::config::Config;
use crate::domain::Server;
use crate::sys::{fsutil, systemd};
use crate::timing::sleep_until;
use batch::{Batcher, Entry, Timing};
use guard::{Guards, Seen};
use remote::{Queue, Worker};
use status::{Board, RemoteStatus, StorageStatus};
use watcher::{Change, Msg};

/// Capacity of the watcher -> replicator channel (events, not batches). Past it: full sync.
const CHANNEL: usize = 65_536;
/// Workers get this long after shutdown to finish the push in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// At most one overflow warning (and alert) per this period; the rest are counted.
const OVERFLOW_WARN_EVERY: Duration = Duration::from_secs(60);
/// At most one journal-growing alert per remote per this period.
const JOURNAL_ALERT_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this node's config has no [storage] section")]
    NoSection,
    #[error("cannot create state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another nfs-guard storage runs with this state directory")]
    Locked(#[from] crate::sys::lockfile::LockError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Watch(#[from] watcher::WatchError),
    #[error("a replication worker ended while the replicator was running")]
    WorkerEnded,
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error(transparent)]
    AgentApi(#[from] agent::api::BindError),
    #[error("full sync failed: {}", failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    FullSync { failures: Vec<fullsync::Failure> },
}

/// How the storage role runs (from the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode {
    /// One full sync of every tree to every remote, then return.
    pub once: bool,
}

pub async fn run(
    config: &Config,
    mode: Mode,
    alerts: Arc<dyn AlertSink>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let cfg = Arc::new(config.storage.clone().ok_or(Error::NoSection)?);
    if mode.once {
        let failures = fullsync::once(Arc::clone(&cfg), shutdown).await;
        return if failures.is_empty() { Ok(()) } else { Err(Error::FullSync { failures }) };
    }
    Replicator::start(config, cfg, alerts, shutdown)?.run().await
}

struct Replicator {
    cfg: Arc<StorageConfig>,
    queues: Vec<Arc<Queue>>,
    board: Arc<Board>,
    alerts: Arc<dyn AlertSink>,
    shutdown: CancellationToken,
    rx: mpsc::Receiver<Msg>,
    /// Kept so the channel stays open even with no watcher (full-sync-only nodes).
    _tx: mpsc::Sender<Msg>,
    watchers: watcher::Watchers,
    /// One task per remote; one ending before shutdown is an error (the process exits, systemd
    /// restarts it, the journals replay), never a silently dead remote.
    workers: tokio::task::JoinSet<()>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    status_stop: CancellationToken,
    status_task: tokio::task::JoinHandle<()>,
    /// The state directory (journals, watermark, run marker).
    dir: PathBuf,
    /// Every event before this (unix ms) is journaled (see `agent::unclean`), and whether events
    /// came since it was stored (an idle replicator without an agent writes nothing; an agent's is
    /// its sign of life too).
    watermark_ms: u64,
    unmarked: bool,
    /// Held for the life of the replicator.
    _lock: crate::sys::lockfile::LockFile,
    last_overflow_warn: Option<Instant>,
    overflows_suppressed: u64,
    last_journal_alert: Vec<Option<Instant>>,
    /// Per tree: is a reverse sync writing into it (failback guard)?
    guards: Guards,
    /// Per tree: this server's unpushed files kept under conflict names while its guard is on.
    kept: Vec<Option<agent::orphans::Orphans>>,
    /// Pinged by the loop itself after each turn: a wedged loop stops pinging and systemd restarts it.
    watchdog: systemd::Watchdog,
    /// This host is a storage agent (`[storage.agent]`).
    duty: Option<agent::duty::Duty>,
    api_stop: CancellationToken,
    /// The batcher's size last published in the status.
    pending: usize,
}

impl Replicator {
    fn start(
        config: &Config,
        cfg: Arc<StorageConfig>,
        alerts: Arc<dyn AlertSink>,
        shutdown: CancellationToken,
    ) -> Result<Replicator, Error> {
        let dir = config.state_dir.join("storage");
        fsutil::ensure_private_dir(&dir).map_err(|source| Error::StateDir { path: dir.clone(), source })?;
        // One replicator per state directory: two would interleave records in the same journals.
        let lock = crate::sys::lockfile::LockFile::acquire(&dir.join("lock"))?;
        let previous = mark_running(&dir)?;
        let clean = previous.is_none();
        let mut queues = Vec::new();
        for r in &cfg.remotes {
            queues.push(Arc::new(Queue::open(&dir, &r.name, cfg.max_pending)?));
        }
        let (agent, recover) = open_agent(&cfg, &dir, &queues, previous)?;
        // Watches go in before the start-up full sync, so nothing changed in between is missed.
        let roots: Vec<PathBuf> = cfg.trees.iter().map(|t| t.path.clone()).collect();
        // A node whose remotes all take full syncs only (a backup) needs no watches at all.
        let watched: &[PathBuf] = if cfg.remotes.iter().any(|r| r.realtime) { &roots } else { &[] };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (watchers, dirs) = start_watching(watched, &cfg, &tx)?;
        tracing::info!(trees = watched.len(), watches = dirs, remotes = cfg.remotes.len(), "watching");
        if fullsync::needed_at_start(cfg.full_sync.at_start, clean) {
            // the agent's peer: only on a first run (seeding it); later what changed is journaled
            let peer = agent
                .as_ref()
                .map(|(a, peer, _)| (*peer, a.is_active() && recover.is_none() && cfg.full_sync.at_start));
            owe_start_full_syncs(&queues, cfg.trees.len(), peer);
        }
        // after the full syncs owed (which would drop the paths queued before them)
        if agent.is_none() {
            if let Some(previous) = previous {
                journal_unwatched(&dir, previous, watched, &cfg, &queues);
            }
        }
        crate::metrics::storage()
            .started(dirs, cfg.remotes.iter().map(|r| r.name.clone()).zip(queues.iter().map(queue_view::of)).collect());
        let board = Board::new(initial_status(&cfg, &roots, dirs));
        let status_stop = CancellationToken::new();
        let status_task = board.spawn_writer(config.state_dir.clone(), status_stop.clone());
        let stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let hooks = cfg.hook.clone().map(hooks::Hooks::new);
        // Per remote: pushes must not overwrite newer files there (see `remote::Pusher`): from the
        // start when the journal replayed paths (the remote may have served clients since).
        let cautious: Vec<Arc<AtomicBool>> =
            queues.iter().map(|q| Arc::new(AtomicBool::new(q.depth().0 > 0))).collect();
        let mut workers = tokio::task::JoinSet::new();
        for (idx, remote) in cfg.remotes.iter().enumerate() {
            workers.spawn(
                Worker {
                    idx,
                    remote: remote.clone(),
                    queue: Arc::clone(&queues[idx]),
                    cfg: Arc::clone(&cfg),
                    board: Arc::clone(&board),
                    alerts: Arc::clone(&alerts),
                    hooks: hooks.clone(),
                    stop: stop.clone(),
                    hard_stop: hard_stop.clone(),
                    cautious: Arc::clone(&cautious[idx]),
                    gate: agent
                        .as_ref()
                        .filter(|(_, peer, _)| *peer == idx)
                        .map(|(a, _, _)| Arc::clone(a) as Arc<dyn remote::Gate>),
                }
                .run(),
            );
        }
        workers.spawn(watch_for_lost_time(cautious.clone(), stop.clone()));
        systemd::ready(&format!("watching {} trees ({dirs} directories)", roots.len()));
        let guards = Guards::new(&roots.iter().map(PathBuf::as_path).collect::<Vec<_>>(), Instant::now());
        let watermark_ms = initial_watermark(agent.as_ref().map(|(a, _, _)| a.as_ref()));
        let duty = agent.map(|(a, peer, control)| {
            let (q, c) = (Arc::clone(&queues[peer]), Arc::clone(&cautious[peer]));
            let mut d = agent::duty::Duty::new(a, peer, control, q, c, roots.clone(), Arc::clone(&alerts));
            if let Some(since) = recover {
                d.recover_since(since, cfg.filter.clone());
            }
            d
        });
        Ok(Replicator {
            last_journal_alert: vec![None; queues.len()],
            cfg,
            queues,
            board,
            alerts,
            shutdown,
            rx,
            _tx: tx,
            watchers,
            workers,
            stop,
            hard_stop,
            status_stop,
            status_task,
            watermark_ms,
            unmarked: true,
            dir,
            _lock: lock,
            last_overflow_warn: None,
            overflows_suppressed: 0,
            guards,
            kept: vec![None; roots.len()],
            watchdog: systemd::Watchdog::from_env(),
            duty,
            api_stop: CancellationToken::new(),
            pending: 0,
        })
    }

    async fn run(mut self) -> Result<(), Error> {
        let timing = Timing {
            window: self.cfg.window,
            max_delay: self.cfg.max_delay,
            max_batch: self.cfg.max_batch,
            settle: self.cfg.settle,
            quiet: self.cfg.quiet,
        };
        let mut batcher = Batcher::new(timing);
        // A restart during a failback (the marker was there): what is unpushed (replayed, or
        // journaled after an unclean stop) is kept as when the guard goes on while running.
        for tree in 0..self.cfg.trees.len() {
            if self.guards.is_on(tree) {
                self.guard_began(tree);
            }
        }
        if let Some(d) = &mut self.duty {
            // orphans quarantined before the API tells anyone this agent's record
            d.start().await;
            agent::api::bind(Arc::clone(&d.agent), self.api_stop.clone()).await?;
            if let Some(owed) = agent::unclean::load_owed(d.agent.dir()) {
                let (cfg, agent, stop) = (Arc::clone(&self.cfg), Arc::clone(&d.agent), self.api_stop.clone());
                tokio::spawn(agent::unclean::settle(cfg, d.peer, agent, owed, stop));
            }
        }
        // the watermark: see `agent::unclean`
        let mut watermark = Some(Instant::now());
        let mut periodic = self.cfg.full_sync.interval.map(|i| Instant::now() + i);
        let wake = Arc::clone(&self.watchers.overflow_wake);
        let mut result = Ok(());
        loop {
            let due = batcher.due();
            let drain_due = self.duty.as_ref().and_then(agent::duty::Duty::drain_deadline);
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(ended) = self.workers.join_next() => {
                    tracing::error!(panicked = ended.is_err(), "a replication worker ended unexpectedly; stopping");
                    result = Err(Error::WorkerEnded);
                    break;
                }
                () = wake.notified() => self.check_overflow_flags(&mut batcher),
                Some(c) = control(&mut self.duty) => {
                    if matches!(c, agent::Control::Demote { .. }) {
                        // what was seen while active goes into the journal, so it becomes an orphan
                        // instead of a standby's memory
                        let rest = batcher.flush();
                        self.fan_out(&rest);
                    }
                    if let Some(d) = &mut self.duty {
                        d.act(c).await;
                    }
                }
                () = sleep_until(drain_due) => {
                    if let Some(d) = &mut self.duty {
                        d.drain_expired();
                    }
                }
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    let now = Instant::now();
                    self.handle(msg, now, &mut batcher);
                    // Drain what is already queued without another trip through select!.
                    for _ in 0..4096 {
                        let Ok(msg) = self.rx.try_recv() else { break };
                        self.handle(msg, now, &mut batcher);
                    }
                }
                () = sleep_until(due) => {}
                // wake at least once per watchdog period, whatever else the loop waits for
                () = sleep_until(self.watchdog.period().map(|p| Instant::now() + p)) => {}
                () = sleep_until(watermark) => {
                    self.store_watermark(&batcher);
                    watermark = Some(Instant::now() + agent::unclean::WATERMARK_EVERY);
                }
                () = sleep_until(self.guards.next_expiry()) => {
                    for tree in self.guards.expire(Instant::now()) {
                        self.guard_ended(tree);
                        self.full_sync_all(u32::try_from(tree).ok());
                    }
                }
                () = sleep_until(periodic) => {
                    tracing::info!("periodic full sync");
                    self.full_sync_all(None);
                    periodic = self.cfg.full_sync.interval.map(|i| Instant::now() + i);
                }
            }
            self.watchdog.ping();
            while let Some(b) = batcher.take_due(Instant::now()) {
                self.fan_out(&b);
                if batcher.due().is_none_or(|d| d > Instant::now()) {
                    break;
                }
            }
            if batcher.len() != self.pending {
                self.pending = batcher.len();
                self.board.update(|d| d.pending = batcher.len());
            }
        }
        self.finish(&mut batcher).await;
        result
    }

    /// Persists the time before which every event of the export is journaled (it stays while the
    /// event channel holds events not yet batched), with the time it was written (a sign of life).
    fn store_watermark(&mut self, batcher: &Batcher) {
        let empty = self.rx.is_empty();
        if self.duty.is_none() && empty && batcher.is_empty() && !std::mem::take(&mut self.unmarked) {
            // nothing happened since the last one: it still holds (an agent's is its sign of life too)
            return;
        }
        let now = crate::cluster::now_ms();
        if empty {
            let waiting = batcher.oldest().map_or(Duration::ZERO, |o| Instant::now().saturating_duration_since(o));
            self.watermark_ms = now
                .saturating_sub(u64::try_from(waiting.as_millis()).unwrap_or(u64::MAX))
                .saturating_sub(agent::unclean::MARGIN_MS);
        }
        if let Err(e) = agent::unclean::store_watermark(&self.dir, self.watermark_ms, now) {
            tracing::warn!(error = %e, "cannot persist the watermark");
        }
    }

    fn handle(&mut self, msg: Msg, now: Instant, batcher: &mut Batcher) {
        match msg {
            Msg::Event(tree, ev) => {
                self.unmarked = true;
                let cfg = Arc::clone(&self.cfg);
                let Some(t) = cfg.trees.get(tree as usize) else { return };
                tracing::trace!(kind = ?ev.kind, paths = ?ev.paths, "event");
                if let Some(d) = &mut self.duty {
                    let seen: Vec<_> = ev.paths.iter().map(|p| d.observe(tree as usize, &t.path, p)).collect();
                    if seen.contains(&agent::duty::Seen::Barrier(true)) {
                        // everything seen before the drain was asked for goes into the journal now
                        let rest = batcher.flush();
                        self.fan_out(&rest);
                        if let Some(d) = &mut self.duty {
                            d.barrier_passed();
                        }
                    }
                    if seen.iter().any(|s| *s != agent::duty::Seen::Pass) {
                        return;
                    }
                }
                // A reverse sync's copies must not go back to the backup (see `failback_guard`).
                let was_on = self.guards.is_on(tree as usize);
                let seen = self.guards.observe(tree as usize, &t.path, &ev, now);
                match (was_on, self.guards.is_on(tree as usize)) {
                    (false, true) => {
                        // what is batched is unpushed too
                        let rest = batcher.flush();
                        self.fan_out(&rest);
                        self.guard_began(tree as usize);
                    }
                    (true, false) => self.guard_ended(tree as usize),
                    _ => {}
                }
                if seen != Seen::Pass {
                    return;
                }
                for c in watcher::changes(&ev, &cfg.events) {
                    match c {
                        Change::Rescan => {
                            // Lost events may have announced new directories: watch them before the
                            // full sync starts, so nothing changed after it is missed either.
                            // It walks the tree: let the runtime move other tasks off this thread.
                            let rewatched = blocking_here(|| self.watchers.rewatch(tree as usize, &t.path));
                            if let Err(e) = rewatched {
                                tracing::error!(tree = %t.path.display(), error = %e, "cannot re-install watches");
                            }
                            self.overflow(tree, "the kernel's inotify queue overflowed", batcher);
                        }
                        Change::Push { path, scope, dir_gone, created, written } => {
                            let Some(rel) = watcher::relative(&t.path, &path) else { continue };
                            if cfg.filter.excluded(&rel) {
                                continue;
                            }
                            let entry = Entry { tree, path: rel, scope };
                            if created && cfg.events.close_write && watcher::being_written(&path) {
                                batcher.add_settling(now, entry);
                            } else if written && cfg.events.close_write {
                                batcher.add_written(now, entry);
                            } else {
                                batcher.add(now, entry, dir_gone);
                            }
                        }
                    }
                }
            }
            Msg::Error(tree, e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    let limit = watcher::max_user_watches().unwrap_or(0);
                    tracing::error!(
                        "out of inotify watches: new directories are not watched; raise fs.inotify.max_user_watches \
                         (now {limit}) to at least {}",
                        watcher::suggested_watches(limit)
                    );
                    self.overflow(tree, "inotify ran out of watches (fs.inotify.max_user_watches)", batcher);
                } else {
                    tracing::warn!(error = %e, "watcher error");
                }
            }
        }
    }

    fn check_overflow_flags(&mut self, batcher: &mut Batcher) {
        let flags = Arc::clone(&self.watchers.overflowed);
        for (i, f) in flags.iter().enumerate() {
            if f.swap(false, Ordering::SeqCst) {
                let tree = u32::try_from(i).unwrap_or(u32::MAX);
                self.overflow(tree, "the replicator's event channel was full", batcher);
            }
        }
    }

    /// Events of `tree` were lost: it gets a full sync on every real-time remote. Never silent.
    fn overflow(&mut self, tree: u32, reason: &str, batcher: &mut Batcher) {
        batcher.clear_tree(tree);
        if let Some(d) = &mut self.duty {
            d.lost_events();
        }
        self.full_sync_all(Some(tree));
        self.board.update(|d| d.overflows += 1);
        crate::metrics::storage().overflow();
        let path = self.cfg.trees.get(tree as usize).map(|t| t.path.display().to_string()).unwrap_or_default();
        let now = Instant::now();
        if self.last_overflow_warn.is_some_and(|t| now.duration_since(t) < OVERFLOW_WARN_EVERY) {
            self.overflows_suppressed += 1;
            return;
        }
        tracing::warn!(tree = %path, suppressed = self.overflows_suppressed, "{reason}: full sync of the tree queued");
        self.alerts.emit(
            AlertEvent::new(AlertKind::OverflowRescan, Role::Storage, format!("event overflow on {path}"), reason)
                .detail("similar overflows suppressed", self.overflows_suppressed)
                .next_steps(
                    "A full sync of the tree is running, so nothing is lost. If this repeats, raise \
                     fs.inotify.max_queued_events or lower the write rate.",
                ),
        );
        self.last_overflow_warn = Some(now);
        self.overflows_suppressed = 0;
    }

    /// Queues a full sync of `tree` (or all trees) for every real-time remote.
    fn full_sync_all(&self, tree: Option<u32>) {
        let all = u32::try_from(self.cfg.trees.len()).unwrap_or(u32::MAX);
        for (i, (q, r)) in self.queues.iter().zip(&self.cfg.remotes).enumerate() {
            if tree.is_some() && !r.realtime || self.duty.as_ref().is_some_and(|d| !d.feeds(i)) {
                continue;
            }
            for t in tree.map_or(0..all, |t| t..t + 1) {
                q.request_full_sync(t);
            }
        }
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.cfg.trees.iter().map(|t| t.path.clone()).collect()
    }

    /// A reverse sync starts writing into `tree`: this server's unpushed files there are kept
    /// under conflict names until it ends (see `guard_keep`). Not for agents (they keep orphans).
    fn guard_began(&mut self, tree: usize) {
        if self.duty.is_some() {
            return;
        }
        let Ok(t) = u32::try_from(tree) else { return };
        let mut entries: Vec<Entry> = self.queues.iter().flat_map(|q| q.unpushed(t)).collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|a, b| a.path == b.path);
        if entries.is_empty() {
            return;
        }
        let kept = blocking_here(|| guard_keep::keep(&self.roots(), &entries));
        tracing::warn!(
            changes = entries.len(),
            "a reverse sync writes here: unpushed changes kept under conflict names until it ends"
        );
        if let Some(slot) = self.kept.get_mut(tree) {
            *slot = Some(kept);
        }
    }

    /// The reverse sync into `tree` ended: kept versions it replaced stay (pushed, alerted).
    fn guard_ended(&mut self, tree: usize) {
        if let Ok(t) = u32::try_from(tree) {
            for q in &self.queues {
                q.forget_doubtful(t);
            }
        }
        let Some(kept) = self.kept.get_mut(tree).and_then(Option::take) else { return };
        let agent::orphans::Resolved { push, conflicts } =
            blocking_here(|| agent::orphans::resolve(&self.roots(), &kept));
        if !conflicts.is_empty() {
            self.alerts.emit(agent::orphans::conflict_alert(
                Server::Primary,
                &format!("before the failover (kept {})", kept.epoch),
                &conflicts,
            ));
        }
        self.fan_out(&push);
    }

    fn fan_out(&mut self, batch: &[Entry]) {
        tracing::debug!(entries = batch.len(), "batch formed");
        if let Some(d) = &mut self.duty {
            d.standby_saw(batch);
        }
        for (i, (q, r)) in self.queues.iter().zip(&self.cfg.remotes).enumerate() {
            if !r.realtime || self.duty.as_ref().is_some_and(|d| !d.feeds(i)) {
                continue;
            }
            let out = q.enqueue(batch);
            if out.collapsed.is_empty() {
                continue;
            }
            tracing::warn!(remote = %r.name, max_pending = self.cfg.max_pending, "queue collapsed into a full sync");
            let now = Instant::now();
            if self.last_journal_alert[i].is_some_and(|t| now.duration_since(t) < JOURNAL_ALERT_EVERY) {
                continue;
            }
            self.last_journal_alert[i] = Some(now);
            self.alerts.emit(
                AlertEvent::new(
                    AlertKind::JournalGrowing,
                    Role::Storage,
                    format!("replication to {} is far behind", r.name),
                    format!("more than {} paths were queued; the queue became a full sync", self.cfg.max_pending),
                )
                .server(r.name.clone(), "behind")
                .next_steps("Check that the remote is reachable; the full sync runs as soon as it is."),
            );
        }
    }

    async fn finish(mut self, batcher: &mut Batcher) {
        systemd::stopping();
        // No new events from here on; what the channel already holds still goes into the journal.
        self.watchers.stop();
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg, Instant::now(), batcher);
        }
        let rest = batcher.flush();
        if !rest.is_empty() {
            self.fan_out(&rest);
        }
        tracing::info!(flushed = rest.len(), "stopping: pending batch journaled");
        self.stop.cancel();
        for q in &self.queues {
            q.wake();
        }
        let all = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::info!("grace period over: abandoning pushes in flight (they stay journaled)");
            self.hard_stop.cancel();
            while self.workers.join_next().await.is_some() {}
        }
        // An agent's last sign of life comes after its last push: the next start's prune on the peer
        // then never takes a file this run pushed for one the peer wrote itself (and keeps it).
        self.store_watermark(batcher);
        self.api_stop.cancel();
        self.status_stop.cancel();
        let _ = self.status_task.await;
        let marker = running_marker(&self.dir);
        if let Err(e) = std::fs::remove_file(&marker) {
            tracing::warn!(path = %marker.display(), error = %e, "cannot remove the run marker");
        }
    }
}

/// A tick this much late means the process did not run meanwhile (the host was frozen, or the
/// machine stalled): long enough for the farm to have failed over to a remote.
const LOST_TIME: Duration = Duration::from_secs(1);

/// Makes every remote's pushes cautious when this process lost time: what it queued before may be
/// older than what clients wrote on the remote while it stood still. Ends with `stop`.
async fn watch_for_lost_time(cautious: Vec<Arc<AtomicBool>>, stop: CancellationToken) {
    let period = Duration::from_millis(200);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let now = Instant::now();
        let late = now.saturating_duration_since(last).saturating_sub(period);
        if late > LOST_TIME {
            tracing::warn!(
                lost_ms = late.as_millis(),
                "this process stood still: pushes never overwrite newer files until caught up"
            );
            for c in &cautious {
                c.store(true, Ordering::SeqCst);
            }
        }
        last = now;
    }
}

/// The status document before anything happened.
fn initial_status(cfg: &StorageConfig, roots: &[PathBuf], dirs: u64) -> StorageStatus {
    StorageStatus {
        pid: std::process::id(),
        trees: roots.iter().map(|p| p.display().to_string()).collect(),
        watches: dirs,
        overflows: 0,
        pending: 0,
        remotes: cfg
            .remotes
            .iter()
            .map(|r| RemoteStatus {
                name: r.name.clone(),
                url: r.target.display(),
                state: "idle".into(),
                ..RemoteStatus::default()
            })
            .collect(),
    }
}

/// The storage agent, when configured: it, its peer's index among the remotes, its control channel;
/// and, when it is active and ran here before (`previous`: when a run that stopped uncleanly
/// began), where the window of what it did not see begins (see `agent::unclean`).
#[allow(clippy::type_complexity)]
fn open_agent(
    cfg: &StorageConfig,
    dir: &Path,
    queues: &[Arc<Queue>],
    previous: Option<u64>,
) -> Result<(Option<(Arc<agent::Agent>, usize, mpsc::Receiver<agent::Control>)>, Option<u64>), Error> {
    let Some(a) = &cfg.agent else { return Ok((None, None)) };
    let peer = cfg.remotes.iter().position(|r| r.name == a.peer).unwrap_or(0);
    let roots = cfg.trees.iter().map(|t| t.path.clone()).collect();
    let (agent, control) = agent::Agent::open(a, dir, Arc::clone(&queues[peer]), roots)?;
    let recover = if agent.is_active() {
        agent::unclean::begin(&agent, previous).map_err(|source| Error::StateDir { path: dir.to_owned(), source })?
    } else {
        None
    };
    Ok((Some((agent, peer, control)), recover))
}

/// Counts the directories of `watched` and watches them (two walks of the trees: systemd hears
/// about them, see `systemd::while_starting`).
fn start_watching(
    watched: &[PathBuf],
    cfg: &StorageConfig,
    tx: &mpsc::Sender<Msg>,
) -> Result<(watcher::Watchers, u64), Error> {
    let dirs = if watched.is_empty() {
        0
    } else {
        systemd::while_starting("counting directories", || watcher::check_limits(watched))?
    };
    let watchers = systemd::while_starting(&format!("watching {dirs} directories"), || {
        watcher::start(watched, &cfg.events, tx, dirs)
    })?;
    Ok((watchers, dirs))
}

/// The watermark at start: an agent's covers what it journaled before the watches went in (nothing
/// seen since is journaled yet); without one, now.
fn initial_watermark(agent: Option<&agent::Agent>) -> u64 {
    agent.map_or_else(
        || crate::cluster::now_ms().saturating_sub(agent::unclean::MARGIN_MS),
        |a| a.covered_since_ms.load(std::sync::atomic::Ordering::SeqCst),
    )
}

/// The run marker: there while a replicator runs, removed at a clean stop.
fn running_marker(dir: &Path) -> PathBuf {
    dir.join("running")
}

/// Writes the run marker; returns, when the previous run left its marker (it did not stop
/// cleanly), when that run began (unix ms).
fn mark_running(dir: &Path) -> Result<Option<u64>, Error> {
    let marker = running_marker(dir);
    let previous = std::fs::symlink_metadata(&marker).ok().map(|m| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
    });
    if previous.is_some() {
        tracing::warn!("previous run did not stop cleanly: every tree gets a full sync");
    }
    fsutil::write_atomic(&marker, std::process::id().to_string().as_bytes())
        .map_err(|source| Error::StateDir { path: marker.clone(), source })?;
    Ok(previous)
}

/// The reverse-sync mode after an unclean stop (`previous`: when that run began, unix ms): what
/// changed since its last persisted watermark (the batcher's contents at a kill, what clients wrote
/// while no replicator ran) was never journaled. It is journaled now for every realtime remote, so
/// it is pushed (cautiously: the remote may have served clients meanwhile) and, until a push
/// overwrites it there, counts as unpushed for the failback guard, which keeps this server's
/// version beside the backup's (found by the chaos test on the kernel client: appends acknowledged
/// 150 ms before a kill of the primary were replaced by the failback's reverse sync). A watermark
/// older than `previous` is an older run's: the window then starts at `previous`.
fn journal_unwatched(dir: &Path, previous: u64, roots: &[PathBuf], cfg: &StorageConfig, queues: &[Arc<Queue>]) {
    let since = agent::unclean::load_watermark(dir).map_or(previous, |(w, _)| w.max(previous));
    let entries = blocking_here(|| {
        systemd::while_starting("after an unclean stop: finding what changed since the last journaled event", || {
            agent::unclean::changed_since(roots, &cfg.filter, since)
        })
    });
    tracing::warn!(
        paths = entries.len(),
        since_ms = since,
        "previous run did not stop cleanly: what changed since its last journaled event is journaled now"
    );
    if entries.is_empty() {
        return;
    }
    for (q, _) in queues.iter().zip(&cfg.remotes).filter(|(_, r)| r.realtime) {
        q.enqueue(&entries);
    }
}

/// Full syncs at start (configured, or after an unclean stop) of every tree to every remote. With
/// an agent (`peer`: its index, and whether it gets one: only when active and configured), the
/// peer's queued paths stay queued (they may become orphans). Once the agent ran here, its peer
/// gets what changed since its watermark instead (`agent::unclean`): a blind `--update` copy of
/// the whole tree would re-create there what the peer deleted meanwhile as an orphan (found by
/// the chaos test: an orphaned rename's old name came back).
fn owe_start_full_syncs(queues: &[Arc<Queue>], trees: usize, peer: Option<(usize, bool)>) {
    for (i, q) in queues.iter().enumerate() {
        let to_peer = peer.is_some_and(|(p, _)| p == i);
        if to_peer && peer.is_some_and(|(_, owed)| !owed) {
            continue;
        }
        for t in 0..trees {
            q.owe_full_sync(u32::try_from(t).unwrap_or(u32::MAX), to_peer);
        }
    }
}

/// The next role change or drain for the agent's part of the loop (never, without an agent).
async fn control(duty: &mut Option<agent::duty::Duty>) -> Option<agent::Control> {
    match duty {
        Some(d) => d.control.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs blocking `f` on this task, telling a multi-thread runtime to move its other tasks elsewhere
/// meanwhile (a current-thread runtime, as in tests, just runs it).
fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that stood still (SIGSTOP, a frozen host) makes pushes cautious; normal ticking
    /// does not.
    #[tokio::test(start_paused = true)]
    async fn lost_time_makes_pushes_cautious() {
        let flags = vec![Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_for_lost_time(flags.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(flags.iter().all(|f| !f.load(Ordering::SeqCst)), "ticking normally is not lost time");
        // the clock jumps while nothing runs: what a SIGSTOP looks like from inside
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(flags.iter().all(|f| f.load(Ordering::SeqCst)));
        stop.cancel();
        task.await.unwrap_or_default();
    }
}
