//! One remote: its durable queue ([`Queue`], journal-backed) and its worker task ([`Worker`]).
//!
//! Each remote has its own queue and worker, so a slow or dead remote never delays another. The
//! worker takes up to `max_batch` pending paths (or a pending full sync), runs ONE rsync per tree
//! in the batch, and acknowledges the paths in the journal only after rsync succeeded; on failure
//! the paths go back in place and the worker waits with exponential backoff and jitter. A queue that
//! outgrows `max_pending` (a remote down for hours) collapses into "full sync needed", so memory and
//! journal stay bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{Entry, PendingSet, Scope};
use super::hooks::Hooks;
use super::journal::{self, Journal};
use super::push;
use super::status::{now_rfc3339, Board};
use crate::alert::{AlertEvent, AlertKind, AlertSink, Role};
use crate::config::storage::{Remote, StorageConfig};
use crate::sys::rsync::{self, ExitClass, RsyncReport};
use crate::timing;

/// Work for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    FullSync(u32),
    Batch(Vec<(u64, Entry)>),
}

struct QState {
    pending: PendingSet,
    full_sync: BTreeSet<u32>,
    journal: Journal,
    /// Paths of the batches being pushed (with a count: a path can be in one batch only, but the
    /// count keeps removal simple). A pending path equal to, above or below one of them waits, so two
    /// concurrent rsyncs never touch the same part of the tree and per-path order holds.
    busy: BTreeMap<(u32, PathBuf), usize>,
    /// The entries of the batches being pushed: still live in the journal (a compaction keeps them).
    in_flight: BTreeMap<u64, Entry>,
    batches_in_flight: usize,
    /// Every queued entry below this sequence number overlaps a batch in flight: [`Queue::next`]
    /// looks from here on. Valid until a batch ends (`busy` shrinks, or entries are put back); new
    /// entries get higher numbers. Without it, a burst beneath a directory being pushed made every
    /// wake of the worker re-check every waiting entry (quadratic; the worker's largest CPU cost).
    blocked_below: u64,
    /// Overlap checks made by [`Queue::next`] so far (its cost, for tests).
    #[cfg(test)]
    overlap_checks: usize,
    /// The tree of the full sync running, if any (still owed until it succeeds: compaction keeps it).
    full_sync_running: Option<u32>,
    max_pending: usize,
    /// Since when the queue has not been empty (the oldest unpushed change is at most this old).
    backlog_since: Option<std::time::Instant>,
}

impl QState {
    /// Rewrites the journal with the live state: the queued entries and those being pushed, the full
    /// syncs asked for and the one running.
    fn compact(&mut self) {
        let QState { pending, in_flight, full_sync, journal, full_sync_running, .. } = self;
        let owed: BTreeSet<u32> = full_sync.iter().copied().chain(*full_sync_running).collect();
        let _ = journal.compact(pending.iter().chain(in_flight.iter().map(|(q, e)| (*q, e))), &owed);
    }
}

/// The pending work of one remote, shared by the fan-out (producer) and the worker (consumer).
pub struct Queue {
    state: Mutex<QState>,
    wake: Notify,
    /// Bumped by [`Queue::abort_pushes`]: the worker stops the pushes under way.
    aborts: std::sync::atomic::AtomicU64,
}

/// What `enqueue` did.
#[derive(Default)]
pub struct Enqueued {
    /// The queue outgrew `max_pending` and collapsed into full syncs of these trees.
    pub collapsed: Vec<u32>,
    /// Resolves once the new records are fdatasync'd: only then is the batch durable.
    pub durable: journal::Durable,
}

impl Queue {
    /// Opens the journal of `name` under `dir`, replaying what a previous run left pending.
    pub fn open(dir: &Path, name: &str, max_pending: usize) -> Result<Queue, journal::JournalError> {
        let (journal, r) = Journal::open(&dir.join(format!("{name}.journal")))?;
        if !r.pending.is_empty() || !r.full_sync.is_empty() {
            tracing::info!(remote = name, paths = r.pending.len(), full_syncs = r.full_sync.len(), "journal replayed");
        }
        Ok(Queue {
            state: Mutex::new(QState {
                pending: r.pending,
                full_sync: r.full_sync,
                journal,
                busy: BTreeMap::new(),
                in_flight: BTreeMap::new(),
                batches_in_flight: 0,
                blocked_below: 0,
                #[cfg(test)]
                overlap_checks: 0,
                full_sync_running: None,
                max_pending,
                backlog_since: None,
            }),
            wake: Notify::new(),
            aborts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a batch and hands its records to the journal's writer; durable once `durable` resolves
    /// (one fdatasync, shared with other appends queued meanwhile). Never blocks on the disk.
    pub fn enqueue(&self, entries: &[Entry]) -> Enqueued {
        let mut s = self.lock();
        let mut fresh = Vec::new();
        for e in entries {
            if let Some(seq) = s.pending.insert(e.clone()) {
                // A widened scope is recorded under the entry's own number, with the merged scope.
                fresh.push((seq, s.pending.get(seq).unwrap_or(e).clone()));
            }
        }
        let fresh: Vec<(u64, &Entry)> = fresh.iter().map(|(q, e)| (*q, e)).collect();
        if !fresh.is_empty() && s.backlog_since.is_none() {
            s.backlog_since = Some(std::time::Instant::now());
        }
        let mut out = Enqueued { collapsed: Vec::new(), durable: s.journal.add(&fresh) };
        if s.pending.len() > s.max_pending {
            let trees: BTreeSet<u32> = s.pending.iter().map(|(_, e)| e.tree).collect();
            for t in &trees {
                s.pending.clear_tree(*t);
                s.full_sync.insert(*t);
            }
            s.compact();
            out.collapsed = trees.into_iter().collect();
        }
        drop(s);
        self.wake.notify_one();
        out
    }

    /// Requests a full sync of `tree` (durably); its queued paths are covered by it.
    pub fn request_full_sync(&self, tree: u32) {
        self.owe_full_sync(tree, false);
    }

    /// Requests a full sync of `tree` (durably); `keep_paths`: its queued paths stay queued too
    /// (a storage agent's journal to its peer: they may become orphans, which need their names).
    pub fn owe_full_sync(&self, tree: u32, keep_paths: bool) {
        let mut s = self.lock();
        s.full_sync.insert(tree);
        // Written (and synced) by the journal's writer, which logs a failure.
        if keep_paths {
            let _ = s.journal.full_sync_keep(tree);
        } else {
            s.pending.clear_tree(tree);
            let _ = s.journal.full_sync(tree, true);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// The next work that may start now: a pending full sync once no batch is in flight (it runs
    /// alone), else up to `max` paths that do not overlap a batch in flight.
    pub fn next(&self, max: usize) -> Option<Work> {
        let mut s = self.lock();
        if s.full_sync_running.is_some() {
            return None;
        }
        if !s.full_sync.is_empty() {
            if s.batches_in_flight > 0 {
                return None;
            }
            let t = s.full_sync.pop_first()?;
            s.full_sync_running = Some(t);
            return Some(Work::FullSync(t));
        }
        let mut checks = 0;
        let QState { pending, busy, blocked_below, .. } = &mut *s;
        let mut free = |e: &Entry| {
            checks += 1;
            !overlaps(busy, e)
        };
        // Replaced directories go in batches of their own (pushed with `--delete` inside them), the
        // kind of the oldest entry that may go first; each path keeps its one place in the queue.
        let first =
            pending.iter_from(*blocked_below).find(|(_, e)| free(e)).map(|(q, e)| (q, e.scope == Scope::Replace));
        let batch = match first {
            None => {
                *blocked_below = pending.next_seq();
                Vec::new()
            }
            Some((first, replace)) => {
                *blocked_below = first;
                let max = if replace { max.min(push::MAX_ROOTS) } else { max };
                pending.take_where_from(first, max, |e| (e.scope == Scope::Replace) == replace && free(e))
            }
        };
        #[cfg(test)]
        {
            s.overlap_checks += checks;
        }
        if batch.is_empty() {
            return None;
        }
        for (seq, e) in &batch {
            *s.busy.entry((e.tree, e.path.clone())).or_insert(0) += 1;
            s.in_flight.insert(*seq, e.clone());
        }
        s.batches_in_flight += 1;
        Some(Work::Batch(batch))
    }

    /// Records the outcome of `work`: acknowledged in the journal, or put back in place.
    pub fn done(&self, work: Work, ok: bool) {
        let mut s = self.lock();
        match &work {
            Work::FullSync(_) => s.full_sync_running = None,
            Work::Batch(b) => {
                s.batches_in_flight = s.batches_in_flight.saturating_sub(1);
                // Entries that waited for this batch may go now (and put-back ones are older).
                s.blocked_below = 0;
                for (seq, e) in b {
                    s.in_flight.remove(seq);
                    let key = (e.tree, e.path.clone());
                    if let Some(n) = s.busy.get_mut(&key) {
                        *n -= 1;
                        if *n == 0 {
                            s.busy.remove(&key);
                        }
                    }
                }
            }
        }
        // Written by the journal's writer, which logs a failure; nothing here waits for it.
        match (work, ok) {
            (Work::FullSync(t), true) if !s.full_sync.contains(&t) => {
                let _ = s.journal.full_sync(t, false);
            }
            (Work::FullSync(_), true) => {}
            (Work::FullSync(t), false) => {
                s.full_sync.insert(t);
            }
            (Work::Batch(b), true) => {
                let _ = s.journal.ack_seqs(&b.iter().map(|(q, _)| *q).collect::<Vec<_>>());
            }
            (Work::Batch(b), false) => {
                // A put-back entry that absorbed a newer record of its path (queued meanwhile) carries
                // the merged scope under its own number; the absorbed number is covered by it.
                let mut merged = Vec::new();
                let mut covered = Vec::new();
                for (seq, e) in b {
                    // A full sync of its tree asked for while it was pushed covers it (and runs before
                    // any batch): it is dropped, from memory and from the journal alike (which kept it
                    // if a compaction came after the request), never left in one of them only.
                    if s.full_sync.contains(&e.tree) {
                        covered.push(seq);
                        continue;
                    }
                    let m = s.pending.insert_with_seq(seq, e);
                    if let (Some(gone), Some(e)) = (m.absorbed, s.pending.get(m.seq)) {
                        merged.push((m.seq, e.clone()));
                        covered.push(gone);
                    }
                }
                let merged: Vec<(u64, &Entry)> = merged.iter().map(|(q, e)| (*q, e)).collect();
                let _ = s.journal.add(&merged);
                let _ = s.journal.ack_seqs(&covered);
            }
        }
        // Compact when the log is mostly dead records (cheap when little is pending).
        let live = (s.pending.len() + s.in_flight.len()) as u64 * 64 + 4096;
        if s.journal.size() > (1 << 20) && s.journal.size() > 4 * live {
            s.compact();
        }
    }

    /// Resolves once everything journaled so far is written.
    pub fn flush(&self) -> journal::Durable {
        self.lock().journal.flush()
    }

    /// (paths queued, trees waiting for a full sync)
    pub fn depth(&self) -> (usize, Vec<u32>) {
        let s = self.lock();
        (s.pending.len(), s.full_sync.iter().copied().collect())
    }

    /// Paths being pushed now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// The changes of tree `tree` queued or being pushed (copies; the queue is unchanged).
    pub fn unpushed(&self, tree: u32) -> Vec<Entry> {
        let s = self.lock();
        s.pending.iter().map(|(_, e)| e).chain(s.in_flight.values()).filter(|e| e.tree == tree).cloned().collect()
    }

    /// Asks the worker to stop every push under way (their rsyncs killed) and to queue their
    /// paths again; [`Queue::in_flight`] is zero once it has.
    pub fn abort_pushes(&self) {
        self.aborts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn aborts(&self) -> u64 {
        self.aborts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Nothing queued, nothing being pushed, no full sync owed or running.
    pub fn idle(&self) -> bool {
        let mut s = self.lock();
        let idle =
            s.pending.is_empty() && s.in_flight.is_empty() && s.full_sync.is_empty() && s.full_sync_running.is_none();
        if idle {
            s.backlog_since = None;
        }
        idle
    }

    /// The sequence number of the next change queued: every change queued so far has a lower one
    /// (a change merged into a queued entry of its path keeps that entry's number).
    pub fn next_seq(&self) -> u64 {
        self.lock().pending.next_seq()
    }

    /// Every change queued before `seq` (a [`Queue::next_seq`] read earlier) is pushed, and no full
    /// sync is owed or running. What a drain waits for: clients that keep writing add changes
    /// numbered from `seq` on, which cannot hold it off (found by the chaos test: waiting for an
    /// idle queue never ended under a writer that never pauses).
    pub fn drained_before(&self, seq: u64) -> bool {
        let s = self.lock();
        s.pending.first_seq().is_none_or(|f| f >= seq)
            && s.in_flight.keys().next().is_none_or(|f| *f >= seq)
            && s.full_sync.is_empty()
            && s.full_sync_running.is_none()
    }

    /// Replication lag: how long the queue has held unpushed changes (zero when idle); an upper
    /// bound of the age of the oldest unpushed change.
    pub fn lag(&self) -> std::time::Duration {
        if self.idle() {
            return std::time::Duration::ZERO;
        }
        self.lock().backlog_since.map_or(std::time::Duration::ZERO, |t| t.elapsed())
    }

    /// Takes every queued path out of the queue (not those being pushed); they stay in the journal
    /// until [`Queue::forget`] (so a crash in between replays them).
    pub fn take_pending(&self) -> Vec<(u64, Entry)> {
        let mut s = self.lock();
        let n = s.pending.len();
        s.pending.take(n)
    }

    /// Acknowledges `seqs` in the journal without a push (they were taken care of otherwise).
    pub fn forget(&self, seqs: &[u64]) -> journal::Durable {
        self.lock().journal.ack_seqs(seqs)
    }

    /// Wakes the worker (new work or shutdown).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Does `e` overlap a path in `busy` (the same path, an ancestor or a descendant, in the same tree)?
/// The tree root `.` overlaps everything of its tree.
pub fn overlaps(busy: &BTreeMap<(u32, PathBuf), usize>, e: &Entry) -> bool {
    let t = e.tree;
    if e.path == Path::new(".") {
        return busy.keys().any(|(bt, _)| *bt == t);
    }
    if busy.contains_key(&(t, PathBuf::from("."))) {
        return true;
    }
    if e.path.ancestors().filter(|a| !a.as_os_str().is_empty()).any(|a| busy.contains_key(&(t, a.to_path_buf()))) {
        return true;
    }
    // Descendants sort right after the path itself (component-wise order).
    let start = (t, e.path.clone());
    busy.range(start..).next().is_some_and(|((bt, bp), _)| *bt == t && bp.starts_with(&e.path))
}

/// Retry delay after `attempt` consecutive failures (1-based): `min * 2^(attempt-1)` capped at
/// `max`, then spread by ±20% (`jitter` in 0..1) so workers do not retry in lockstep. Saturates:
/// absurd durations give a long delay, never a panic.
pub fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    timing::jittered(timing::doubling(min, max, attempt), jitter)
}

/// `now + d`, or a year from now when that is beyond what an `Instant` holds.
pub fn later(now: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    now.checked_add(d).or_else(|| now.checked_add(YEAR)).unwrap_or(now)
}

/// Everything a worker needs, built by `storage::run`.
pub struct Worker {
    pub idx: usize,
    pub remote: Remote,
    pub queue: Arc<Queue>,
    pub cfg: Arc<StorageConfig>,
    pub board: Arc<Board>,
    pub alerts: Arc<dyn AlertSink>,
    pub hooks: Option<Hooks>,
    /// Finish the pushes under way (and what is queued), then exit instead of waiting for more.
    pub stop: CancellationToken,
    /// Abandon the pushes under way now (their paths stay in the journal).
    pub hard_stop: CancellationToken,
    /// Pushes are cautious (see `Pusher::cautious`); start with it set when the journal replayed
    /// paths.
    pub cautious: Arc<AtomicBool>,
    /// Asked before every push to this remote (the storage agent's fence); `None`: always pushes.
    pub gate: Option<Arc<dyn Gate>>,
}

/// May this remote be pushed to now? (See `storage::agent::Agent::admit`.)
pub trait Gate: Send + Sync + 'static {
    fn admit(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

/// A closed gate is asked again after this long (or when the queue is woken: a promotion).
const GATE_RETRY: Duration = Duration::from_millis(500);

/// Outcome of one unit of work.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    pub class: ExitClass,
    pub files: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

/// The effect of one unit of work: rsync in production ([`Worker::run`]), a fake in tests, so retry,
/// backoff and alert timing run on paused time.
pub trait Push: Send + Sync + 'static {
    fn perform<'a>(
        &'a self,
        work: &'a Work,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>>;
}

/// A partial transfer (rsync 23) of the same work this many times: given up.
const PARTIAL_TRIES: u32 = 3;

/// What a push task needs, shared by the concurrent pushes of one remote.
struct Pusher {
    remote: Remote,
    cfg: Arc<StorageConfig>,
    hooks: Option<Hooks>,
    /// Pushes are cautious (never overwrite a newer file on the remote) from a failed push or a
    /// replayed journal until the queue is empty again: while the remote was out of reach, the
    /// farm may have failed over to it and clients written there; what this node queued before is
    /// then older than what the remote holds, and must not overwrite it (found by the chaos test:
    /// a returning primary pushed its last unreplicated writes over newer ones made during the
    /// failover). The storage agents' epochs (issue 11) will replace this with exact knowledge.
    cautious: Arc<AtomicBool>,
}

/// Failure bookkeeping of one remote (for backoff and alerts).
#[derive(Default)]
struct Health {
    attempt: u32,
    /// Partial transfers so far, per piece of work (a batch's entries by sequence number, a full
    /// sync by tree): one stubborn batch never counts against another.
    partial: BTreeMap<PartialKey, u32>,
    failing_since: Option<Instant>,
    alerted: bool,
    retry_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PartialKey {
    Seq(u64),
    Tree(u32),
}

fn partial_keys(work: &Work) -> Vec<PartialKey> {
    match work {
        Work::FullSync(t) => vec![PartialKey::Tree(*t)],
        Work::Batch(b) => b.iter().map(|(q, _)| PartialKey::Seq(*q)).collect(),
    }
}

impl Health {
    /// Counts one more partial transfer of `work`; returns how many in a row it has had.
    fn partial_again(&mut self, work: &Work) -> u32 {
        let keys = partial_keys(work);
        let tries = 1 + keys.iter().filter_map(|k| self.partial.get(k)).max().copied().unwrap_or(0);
        if self.partial.len() > 100_000 {
            // Entries covered by a full sync never come back to clear theirs: keep the map bounded.
            self.partial.clear();
        }
        for k in keys {
            self.partial.insert(k, tries);
        }
        tries
    }

    fn forget(&mut self, work: &Work) {
        for k in partial_keys(work) {
            self.partial.remove(&k);
        }
    }
}

impl Worker {
    /// Keeps up to `push_concurrency` pushes of non-overlapping batches under way (a full sync runs
    /// alone); a slow rsync therefore does not hold back the next files, and per-path order holds.
    pub async fn run(self) {
        let cautious = Arc::clone(&self.cautious);
        let pusher = Arc::new(Pusher {
            remote: self.remote.clone(),
            cfg: Arc::clone(&self.cfg),
            hooks: self.hooks.clone(),
            cautious,
        });
        self.run_with(pusher).await;
    }

    /// [`Worker::run`] with the effect given. On exit, everything journaled so far is written
    /// before the worker reports done (the clean-stop marker goes only after that).
    pub async fn run_with(self, pusher: Arc<dyn Push>) {
        let queue = Arc::clone(&self.queue);
        self.work(pusher).await;
        if let Err(e) = queue.flush().wait().await {
            tracing::error!(error = %crate::chain::render_chain(&e), "journal not fully written at stop");
        }
    }

    async fn work(self, pusher: Arc<dyn Push>) {
        let mut tasks: tokio::task::JoinSet<(Work, Outcome)> = tokio::task::JoinSet::new();
        // What each task pushes: a task that panicked or was aborted gives its work back.
        let mut running: std::collections::HashMap<tokio::task::Id, Work> = std::collections::HashMap::new();
        let mut aborts = self.queue.aborts();
        let mut was_cautious = self.cautious.load(Ordering::SeqCst);
        let mut h = Health::default();
        loop {
            // Pushes become cautious when the remote may have served clients meanwhile (a push
            // failed, this process stood still): those under way were started without `--update`
            // and may be stalled by the same fault, to land later over what clients write there
            // (found by the chaos test: a push stalled by a blackhole completed after the heal,
            // over an append made on the backup). They are stopped and go again, cautiously.
            let cautious = self.cautious.load(Ordering::SeqCst);
            let newly_cautious = cautious && !was_cautious;
            was_cautious = cautious;
            if self.queue.aborts() != aborts || newly_cautious {
                aborts = self.queue.aborts();
                if !tasks.is_empty() {
                    tracing::warn!(remote = %self.remote.name, pushes = tasks.len(), "pushes under way stopped");
                    tasks.abort_all();
                }
            }
            self.publish_depth();
            if h.retry_at.is_none_or(|t| t <= Instant::now()) {
                h.retry_at = None;
                if !self.admitted(tasks.len()).await {
                    h.retry_at = Some(Instant::now() + GATE_RETRY);
                }
                while h.retry_at.is_none() && tasks.len() < self.cfg.push_concurrency {
                    let Some(work) = self.queue.next(self.cfg.max_batch) else { break };
                    let state = if matches!(work, Work::FullSync(_)) { "full-sync" } else { "pushing" };
                    self.board.remote(self.idx, |r| r.state = state.into());
                    let p = Arc::clone(&pusher);
                    let mine = work.clone();
                    let handle = tasks.spawn(async move {
                        let o = p.perform(&work).await;
                        (work, o)
                    });
                    running.insert(handle.id(), mine);
                }
            }
            if tasks.is_empty() {
                if h.retry_at.is_none() {
                    self.board.remote(self.idx, |r| r.state = "idle".into());
                    // Caught up: what is queued from now on is newer than anything on the remote.
                    if self.queue.depth().0 == 0 && self.cautious.swap(false, Ordering::SeqCst) {
                        tracing::info!(remote = %self.remote.name, "caught up: pushes overwrite the remote again");
                    }
                }
                if self.stop.is_cancelled() {
                    return;
                }
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => match done {
                    Ok((id, (work, outcome))) => {
                        running.remove(&id);
                        self.account(work, outcome, &mut h);
                    }
                    Err(e) => {
                        // aborted (or panicked): never acknowledged, its paths queued again
                        if e.is_panic() {
                            tracing::error!(remote = %self.remote.name, error = %e, "a push panicked; its paths are queued again");
                        }
                        if let Some(work) = running.remove(&e.id()) {
                            self.queue.done(work, false);
                        }
                    }
                },
                () = self.queue.wake.notified() => {}
                () = timing::sleep_until(h.retry_at) => {}
                () = self.stop.cancelled(), if !self.stop.is_cancelled() => {}
                () = self.hard_stop.cancelled() => {
                    // The aborted pushes were never acknowledged: the journal still holds them.
                    tasks.abort_all();
                    return;
                }
            }
            if self.stop.is_cancelled() && h.retry_at.is_some() && tasks.is_empty() {
                return;
            }
        }
    }

    /// Asks the gate (if any) before new pushes start: only when there is work to start.
    async fn admitted(&self, running: usize) -> bool {
        let Some(gate) = &self.gate else { return true };
        let (pending, owed) = self.queue.depth();
        if running >= self.cfg.push_concurrency || (pending == 0 && owed.is_empty()) {
            return true;
        }
        let open = gate.admit().await;
        if !open {
            self.board.remote(self.idx, |r| r.state = "fenced".into());
        }
        open
    }

    /// Records the outcome of one push: acknowledge or put back, counters, alerts, backoff.
    fn account(&self, work: Work, outcome: Outcome, h: &mut Health) {
        let partial = !outcome.ok && outcome.class == ExitClass::Partial;
        let gave_up = partial && h.partial_again(&work) >= PARTIAL_TRIES;
        if !outcome.ok && !self.cautious.swap(true, Ordering::SeqCst) {
            tracing::info!(remote = %self.remote.name, "push failed: pushes never overwrite a newer file there until caught up");
        }
        if outcome.ok || gave_up {
            h.forget(&work);
            if gave_up {
                self.give_up(&work, &outcome);
            }
            h.attempt = 0;
            self.queue.done(work.clone(), true);
            if gave_up {
                // Re-running a full sync that keeps failing partially would loop: its alert says so.
                if let Work::Batch(b) = &work {
                    for t in b.iter().map(|(_, e)| e.tree).collect::<BTreeSet<u32>>() {
                        self.queue.request_full_sync(t);
                    }
                }
            }
            let err = outcome.error.clone();
            self.board.remote(self.idx, |r| {
                r.batches += 1;
                r.files += outcome.files;
                r.bytes += outcome.bytes;
                r.last_success = Some(now_rfc3339());
                if err.is_some() {
                    r.last_error = err;
                }
            });
            if h.alerted {
                let down = h.failing_since.map(|s| s.elapsed()).unwrap_or_default();
                self.alerts.emit(
                    AlertEvent::new(
                        AlertKind::RemoteRecovered,
                        Role::Storage,
                        format!("remote {} recovered", self.remote.name),
                        "a push succeeded again; the queued changes are being delivered",
                    )
                    .detail("down for", humantime::format_duration(round_secs(down)))
                    .server(self.remote.name.clone(), "up"),
                );
            }
            h.failing_since = None;
            h.alerted = false;
            return;
        }
        self.queue.done(work, false);
        h.attempt += 1;
        let since = *h.failing_since.get_or_insert_with(Instant::now);
        let error = outcome.error.unwrap_or_default();
        let delay = backoff(h.attempt, self.cfg.retry_min, self.cfg.retry_max, fastrand::f64());
        h.retry_at = Some(later(Instant::now(), delay));
        tracing::warn!(remote = %self.remote.name, attempt = h.attempt, retry_in_ms = ms(delay), error = %error, "push failed");
        let e2 = error.clone();
        self.board.remote(self.idx, |r| {
            r.state = "retrying".into();
            r.retries += 1;
            r.last_error = Some(format!("{}: {e2}", now_rfc3339()));
        });
        if !h.alerted && since.elapsed() >= self.cfg.alert_after {
            h.alerted = true;
            let (queued, _) = self.queue.depth();
            self.alerts.emit(
                AlertEvent::new(
                    AlertKind::RemoteUnreachable,
                    Role::Storage,
                    format!("remote {} unreachable", self.remote.name),
                    error,
                )
                .detail("failing for", humantime::format_duration(round_secs(since.elapsed())))
                .detail("attempts", h.attempt)
                .detail("paths queued (journaled)", queued)
                .server(self.remote.name.clone(), "down")
                .next_steps(format!(
                    "Check the rsync service on {}. Changes stay queued on disk and are pushed when it is back.",
                    self.remote.target.display()
                )),
            );
        }
    }

    /// A partial transfer of the same work, [`PARTIAL_TRIES`] times: logged and alerted; a batch
    /// becomes a full sync of its trees (queued by the caller) so no change is dropped.
    fn give_up(&self, work: &Work, outcome: &Outcome) {
        let error = outcome.error.clone().unwrap_or_default();
        let (what, trees, paths) = match work {
            Work::FullSync(t) => ("full sync", BTreeSet::from([*t]), 0),
            Work::Batch(b) => ("batch", b.iter().map(|(_, e)| e.tree).collect(), b.len()),
        };
        let names: Vec<String> = trees
            .iter()
            .map(|t| {
                self.cfg
                    .trees
                    .get(*t as usize)
                    .map_or_else(|| "every tree".to_owned(), |t| t.path.display().to_string())
            })
            .collect();
        let names = names.join(", ");
        tracing::error!(remote = %self.remote.name, tries = PARTIAL_TRIES, paths, trees = %names, error = %error,
            "partial transfer {PARTIAL_TRIES} times: {what} given up");
        let next = match work {
            Work::Batch(_) => {
                "A full sync of the tree is queued so no change is lost. rsync exit 23 usually \
                               means a file the replicator cannot read or the remote cannot write: check the error."
            }
            Work::FullSync(_) => {
                "The full sync transferred what it could. rsync exit 23 usually means a file the \
                                  replicator cannot read or the remote cannot write: fix it; the next full sync \
                                  (periodic, or at restart) completes the copy."
            }
        };
        self.alerts.emit(
            AlertEvent::new(
                AlertKind::OverflowRescan,
                Role::Storage,
                format!("changes to {} could not all be pushed ({names})", self.remote.name),
                error,
            )
            .detail("partial transfers", PARTIAL_TRIES)
            .detail("paths in the batch", paths)
            .server(self.remote.name.clone(), "partial")
            .next_steps(next),
        );
    }

    fn publish_depth(&self) {
        let (queue, trees) = self.queue.depth();
        let names: Vec<String> = trees
            .iter()
            .filter_map(|t| match self.cfg.trees.get(*t as usize) {
                Some(tree) => Some(tree.path.display().to_string()),
                None => (*t == journal::ALL_TREES).then(|| "(every tree)".to_owned()),
            })
            .collect();
        let behind = crate::status::behind_since_ms(self.queue.lag());
        self.board.remote(self.idx, |r| {
            r.queue = queue;
            r.full_sync_pending = names;
            r.behind_since_ms = behind;
        });
    }
}

impl Push for Pusher {
    fn perform<'a>(
        &'a self,
        work: &'a Work,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.push(work))
    }
}

impl Pusher {
    async fn full_sync(&self, tree: &crate::config::storage::Tree) -> Outcome {
        // Never `--delete` unless configured, agents included: a delete an agent's journal missed
        // (a kill -9 right after it) then comes back on the standby, but with `--delete` a restarted
        // active agent deleted files its peer had created and never journaled (the chaos test lost
        // four acknowledged creates that way). A deletion is recoverable; lost data is not.
        let args = push::full_sync_args(
            &self.cfg.rsync_args,
            &self.remote.target,
            tree,
            &self.cfg.full_sync,
            &self.cfg.filter,
        );
        tracing::info!(remote = %self.remote.name, tree = %tree.path.display(), "full sync started");
        let r = rsync::run(&self.cfg.rsync, &args, None, self.cfg.full_sync.timeout).await;
        crate::metrics::storage().pushed(&self.remote.name, crate::metrics::storage::PushKind::FullSync, &r);
        let o = outcome(r);
        if o.ok {
            tracing::info!(remote = %self.remote.name, tree = %tree.path.display(), files = o.files, bytes = o.bytes, "full sync done");
        }
        o
    }

    async fn push(&self, work: &Work) -> Outcome {
        match work {
            Work::FullSync(t) => {
                // Every tree when the journal was damaged (the lost records' trees are unknown).
                let all = u32::try_from(self.cfg.trees.len()).unwrap_or(u32::MAX);
                let trees = if *t == journal::ALL_TREES { 0..all } else { *t..t.saturating_add(1) };
                let mut total = Outcome { ok: true, class: ExitClass::Success, files: 0, bytes: 0, error: None };
                for tree in trees.filter_map(|t| self.cfg.trees.get(t as usize)) {
                    let o = self.full_sync(tree).await;
                    total.files += o.files;
                    total.bytes += o.bytes;
                    if !o.ok {
                        return Outcome { files: total.files, bytes: total.bytes, ..o };
                    }
                    total.error = total.error.or(o.error);
                }
                total
            }
            Work::Batch(batch) => {
                let mut total = Outcome { ok: true, class: ExitClass::Success, files: 0, bytes: 0, error: None };
                let trees: BTreeSet<u32> = batch.iter().map(|(_, e)| e.tree).collect();
                for t in trees {
                    let Some(tree) = self.cfg.trees.get(t as usize) else { continue };
                    let entries: Vec<Entry> =
                        batch.iter().filter(|(_, e)| e.tree == t).map(|(_, e)| e.clone()).collect();
                    let root = tree.path.clone();
                    let filter = self.cfg.filter.clone();
                    let planned = tokio::task::spawn_blocking(move || {
                        let plan = push::plan(&root, &entries, &filter);
                        (plan, entries)
                    })
                    .await;
                    // A panic while listing must not pass for an empty, successful batch.
                    let Ok((plan, entries)) = planned else {
                        return Outcome {
                            ok: false,
                            class: ExitClass::Fatal,
                            files: 0,
                            bytes: 0,
                            error: Some(format!("listing the batch of {} failed", tree.path.display())),
                        };
                    };
                    if plan.is_empty() {
                        continue;
                    }
                    let started = Instant::now();
                    let paths = plan.len();
                    let (c, target) = (&self.cfg, &self.remote.target);
                    let opts =
                        push::RunOpts { deadline: c.batch_timeout, cautious: self.cautious.load(Ordering::SeqCst) };
                    let r = push::run(&c.rsync, &c.rsync_args, target, tree, &plan, &c.filter, opts).await;
                    crate::metrics::storage().pushed(&self.remote.name, crate::metrics::storage::PushKind::Batch, &r);
                    let o = outcome(r);
                    if o.ok || o.class == ExitClass::Partial {
                        tracing::info!(remote = %self.remote.name, tree = %tree.path.display(), paths,
                            roots = !matches!(plan, push::Plan::List(_)), replace = matches!(plan, push::Plan::Replace(_)),
                            files = o.files, bytes = o.bytes,
                            elapsed_ms = ms(started.elapsed()), ok = o.ok, "batch pushed");
                    }
                    if o.ok {
                        if let Some(h) = &self.hooks {
                            // Hooks get every path; rsync walked the roots itself.
                            let list = match plan {
                                push::Plan::List(l) => l,
                                push::Plan::Roots(_) | push::Plan::Replace(_) => {
                                    let (root, filter) = (tree.path.clone(), self.cfg.filter.clone());
                                    tokio::task::spawn_blocking(move || push::expand(&root, &entries, &filter))
                                        .await
                                        .unwrap_or_default()
                                }
                            };
                            h.after_batch(&self.remote.name, &tree.path, &list);
                        }
                    }
                    total.files += o.files;
                    total.bytes += o.bytes;
                    if !o.ok {
                        total.ok = false;
                        total.class = o.class;
                        total.error = o.error;
                        break;
                    }
                }
                total
            }
        }
    }
}

fn outcome(r: Result<RsyncReport, rsync::SpawnError>) -> Outcome {
    match r {
        Ok(r) => Outcome {
            ok: r.ok(),
            class: r.class,
            files: r.files,
            bytes: r.bytes,
            error: (!r.ok()).then(|| r.error_text()).or_else(|| (r.code == Some(24)).then(|| r.error_text())),
        },
        Err(e) => Outcome {
            ok: false,
            class: ExitClass::Fatal,
            files: 0,
            bytes: 0,
            error: Some(crate::chain::render_chain(&e)),
        },
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
#[path = "remote_worker_tests.rs"]
mod worker_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff(1, S, 60 * S, 0.5), S);
        assert_eq!(backoff(2, S, 60 * S, 0.5), 2 * S);
        assert_eq!(backoff(4, S, 60 * S, 0.5), 8 * S);
        assert_eq!(backoff(30, S, 60 * S, 0.5), 60 * S);
        assert_eq!(backoff(1, S, 60 * S, 0.0), S.mul_f64(0.8));
        assert_eq!(backoff(1, S, 60 * S, 1.0), S.mul_f64(1.2));
    }

    #[test]
    fn huge_retry_durations_saturate_instead_of_panicking() {
        let huge = Duration::MAX;
        assert!(backoff(1, huge, huge, 1.0) >= Duration::from_secs(u64::from(u32::MAX)));
        assert!(backoff(40, S, huge, 1.0) > S);
        let now = Instant::now();
        assert!(later(now, huge) > now);
    }

    fn e(p: &str) -> Entry {
        Entry::new(0, p, Scope::Path)
    }

    #[test]
    fn replaced_directories_go_in_batches_of_their_own_and_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let paths = |w: Option<Work>| match w {
            Some(Work::Batch(b)) => b.iter().map(|(_, e)| e.path.to_str().unwrap().to_owned()).collect::<Vec<_>>(),
            _ => panic!("expected a batch"),
        };
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            // `d` deleted, then made again: one Replace entry, journaled as its two records.
            q.enqueue(&[e("a"), Entry::new(0, "d", Scope::Gone), e("c")]);
            q.enqueue(&[Entry::new(0, "d", Scope::Tree)]);
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(paths(q.next(10)), ["a", "c"]);
        let Some(Work::Batch(b)) = q.next(10) else { panic!() };
        assert_eq!((b[0].1.path.to_str(), b[0].1.scope, b.len()), (Some("d"), Scope::Replace, 1));
    }

    #[test]
    fn failed_batches_go_back_and_acked_ones_stay_gone_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            q.enqueue(&[e("a"), e("b"), e("c")]);
            let w = q.next(2).unwrap();
            q.done(w, false);
            let Some(Work::Batch(b)) = q.next(2) else { panic!() };
            assert_eq!(b.iter().map(|(_, e)| e.path.to_str().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
            q.done(Work::Batch(b), true);
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (1, vec![]));
        let Some(Work::Batch(b)) = q.next(10) else { panic!() };
        assert_eq!(b[0].1.path, Path::new("c"));
    }

    /// A drain waits for what was queued before it, not for changes queued after.
    #[test]
    fn drained_before_ignores_later_changes() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100).unwrap();
        q.enqueue(&[e("a"), e("b")]);
        let upto = q.next_seq();
        q.enqueue(&[e("c"), e("a")]);
        assert!(!q.drained_before(upto));
        let w = q.next(1).unwrap();
        assert!(!q.drained_before(upto), "a batch in flight is not pushed yet");
        q.done(w, true);
        assert!(!q.drained_before(upto), "b is still queued");
        let w = q.next(1).unwrap();
        q.done(w, true);
        assert!(q.drained_before(upto), "c, queued later, does not count");
        assert!(!q.idle());
        q.enqueue(&[]);
        assert!(!q.drained_before(q.next_seq()), "c is queued before now");
    }

    /// The lag is zero while idle, grows while changes wait, and is zero again once they are acked.
    #[test]
    fn lag_counts_from_the_first_waiting_change_until_the_queue_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.lag(), Duration::ZERO);
        let _ = q.enqueue(&[e("a")]);
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while q.lag().is_zero() {
            assert!(std::time::Instant::now() < end, "the lag never grew");
            std::thread::yield_now();
        }
        let w = q.next(10).unwrap();
        assert!(!q.lag().is_zero(), "in flight is still behind");
        q.done(w, true);
        assert_eq!(q.lag(), Duration::ZERO);
    }

    #[test]
    fn overgrown_queue_collapses_into_a_durable_full_sync() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 3).unwrap();
            let many: Vec<Entry> = (0..5).map(|i| e(&format!("f{i}"))).collect();
            assert_eq!(q.enqueue(&many).collapsed, [0]);
            assert_eq!(q.depth(), (0, vec![0]));
        }
        let q = Queue::open(d.path(), "r", 3).unwrap();
        assert_eq!(q.next(10), Some(Work::FullSync(0)));
        q.done(Work::FullSync(0), true);
        assert_eq!(q.next(10), None);
        drop(q);
        let q = Queue::open(d.path(), "r", 3).unwrap();
        assert_eq!(q.depth(), (0, vec![]));
    }

    #[test]
    fn overlapping_paths_wait_for_the_push_under_way() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100).unwrap();
        q.enqueue(&[e("a/x"), e("b")]);
        let first = q.next(1).unwrap();
        // Same path again, its parent, a child, the root: all must wait; an unrelated path may go.
        q.enqueue(&[e("a/x"), e("a"), e("a/x/y"), e("."), e("c")]);
        let Some(Work::Batch(second)) = q.next(10) else { panic!() };
        let names: Vec<_> = second.iter().map(|(_, e)| e.path.to_str().unwrap()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(q.next(10), None, "everything left overlaps the batch under way");
        q.done(first, true);
        let Some(Work::Batch(third)) = q.next(10) else { panic!() };
        let names: Vec<_> = third.iter().map(|(_, e)| e.path.to_str().unwrap()).collect();
        assert_eq!(names, ["a/x", "a", "a/x/y"], "the root still overlaps b and c");
        // A full sync waits until no batch is under way, and runs alone.
        q.request_full_sync(0);
        assert_eq!(q.next(10), None);
        q.done(Work::Batch(second), true);
        q.done(Work::Batch(third), true);
        assert_eq!(q.next(10), Some(Work::FullSync(0)));
        q.enqueue(&[e("z")]);
        assert_eq!(q.next(10), None);
    }

    /// A burst beneath a directory being pushed: every wake of the worker used to re-check every
    /// waiting entry against the batches in flight (quadratic in the burst; the worker's largest CPU
    /// cost in a 10,000-file burst). Entries already found waiting are not checked again until a
    /// batch ends; what goes out is unchanged.
    #[test]
    fn entries_waiting_for_a_push_are_not_checked_again_until_it_ends() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100_000).unwrap();
        q.enqueue(&[Entry::new(0, "a", Scope::Tree)]);
        let walk = q.next(10).unwrap();
        for i in 0..1000 {
            q.enqueue(&[e(&format!("a/f{i}"))]);
            assert_eq!(q.next(10), None, "beneath the push under way");
        }
        q.enqueue(&[e("b")]);
        let Some(Work::Batch(b)) = q.next(10) else { panic!("b overlaps nothing") };
        assert_eq!(b[0].1.path, Path::new("b"));
        assert!(q.lock().overlap_checks < 3000, "{} checks for 1,000 waiting entries", q.lock().overlap_checks);
        // Once the push ends they go, oldest first, as before.
        q.done(walk, true);
        let Some(Work::Batch(rest)) = q.next(10) else { panic!() };
        assert_eq!(rest.iter().map(|(_, e)| e.path.to_str().unwrap()).collect::<Vec<_>>()[..2], ["a/f0", "a/f1"]);
        q.done(Work::Batch(b), false);
        let Some(Work::Batch(back)) = q.next(100_000) else { panic!("put back: looked at again") };
        assert_eq!((back.len(), back.last().map(|(_, e)| e.path.as_path())), (991, Some(Path::new("b"))));
    }

    #[test]
    fn a_change_queued_while_the_same_path_is_pushed_survives_the_ack_and_a_restart() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            q.enqueue(&[e("a")]);
            let first = q.next(10).unwrap();
            q.enqueue(&[e("a")]);
            q.done(first, true);
            assert_eq!(q.depth(), (1, vec![]));
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (1, vec![]), "the newer change of `a` must survive the older batch's ack");
        let w = q.next(10).unwrap();
        q.done(w, true);
        drop(q);
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (0, vec![]));
    }

    #[test]
    fn widened_and_put_back_entries_leave_nothing_behind_after_their_ack() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            // Widened while queued: one entry, acked once.
            q.enqueue(&[e("w")]);
            q.enqueue(&[Entry::new(0, "w", Scope::Tree)]);
            let w = q.next(10).unwrap();
            q.done(w, true);
            // Failed, queued again meanwhile, put back: the two merge; one push acks both.
            q.enqueue(&[Entry::new(0, "p", Scope::Gone)]);
            let w = q.next(10).unwrap();
            q.enqueue(&[Entry::new(0, "p", Scope::Tree)]);
            q.done(w, false);
            let Some(Work::Batch(b)) = q.next(10) else { panic!() };
            assert_eq!((b.len(), b[0].1.scope), (1, Scope::Replace));
            q.done(Work::Batch(b), true);
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (0, vec![]), "nothing pushed is pushed again after a restart");
    }

    #[test]
    fn a_rescan_during_a_full_sync_runs_another() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 10).unwrap();
        q.request_full_sync(0);
        let w = q.next(1).unwrap();
        q.request_full_sync(0);
        q.done(w, true);
        assert_eq!(q.next(1), Some(Work::FullSync(0)));
    }
}
