//! A remote's durable queue: the paths owed to it (journal-backed), what is being pushed, the
//! full syncs owed; the worker ([`super::worker`]) takes from it and acknowledges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use crate::storage::batch::{Entry, PathKey, PendingSet, Scope};
use crate::storage::journal::{self, Journal};
use crate::storage::push;

/// Work for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    FullSync(u32),
    Batch(Vec<(u64, Entry)>),
}

pub(super) struct QState {
    pending: PendingSet,
    full_sync: BTreeSet<u32>,
    journal: Journal,
    /// Paths of the batches being pushed (with a count: a path can be in one batch only, but the
    /// count keeps removal simple). A pending path equal to, above or below one of them waits, so two
    /// concurrent rsyncs never touch the same part of the tree and per-path order holds.
    busy: BTreeMap<PathKey, usize>,
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
    pub(super) overlap_checks: usize,
    /// The tree of the full sync running, if any (still owed until it succeeds: compaction keeps it).
    full_sync_running: Option<u32>,
    max_pending: usize,
    /// Since when the queue has not been empty (the oldest unpushed change is at most this old).
    backlog_since: Option<std::time::Instant>,
    /// Changes a CAUTIOUS push acknowledged (`--update`, see the worker): the remote may have kept
    /// its own newer version of the file and the daemon does not say which it left alone, so both
    /// servers may have changed it. Unpushed for a reverse sync ([`Queue::unpushed`]: the failback
    /// guard keeps this server's version under a conflict name) until a push that overwrites
    /// succeeds or the guard ended ([`Queue::forget_doubtful`]). Their records stay live in the
    /// journal until then (with their numbers here): after a restart they are queued again, pushed
    /// again cautiously, and doubtful again. At most [`MAX_DOUBTFUL`].
    doubtful: BTreeMap<PathKey, (u64, Entry)>,
}

/// The most changes remembered as doubtful (a remote out of reach for long, a huge backlog).
pub const MAX_DOUBTFUL: usize = 100_000;

impl QState {
    /// Rewrites the journal with the live state: the queued entries and those being pushed, the full
    /// syncs asked for and the one running.
    fn compact(&mut self) {
        let QState { pending, in_flight, doubtful, full_sync, journal, full_sync_running, .. } = self;
        let owed: BTreeSet<u32> = full_sync.iter().copied().chain(*full_sync_running).collect();
        let live =
            pending.iter().chain(in_flight.iter().map(|(q, e)| (*q, e))).chain(doubtful.values().map(|(q, e)| (*q, e)));
        let _ = journal.compact(live, &owed);
    }
}

/// The pending work of one remote, shared by the fan-out (producer) and the worker (consumer).
pub struct Queue {
    state: Mutex<QState>,
    pub(super) wake: Notify,
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
                doubtful: BTreeMap::new(),
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, QState> {
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
                let max = if replace { max.min(push::MAX_REPLACE_ROOTS) } else { max };
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
            *s.busy.entry(PathKey::new(e.tree, &e.path)).or_insert(0) += 1;
            s.in_flight.insert(*seq, e.clone());
        }
        s.batches_in_flight += 1;
        Some(Work::Batch(batch))
    }

    /// [`Queue::done`] of a batch a cautious push acknowledged: its changes stay doubtful (see
    /// `QState::doubtful`).
    pub fn done_cautiously(&self, work: &Work) {
        self.finish(work.clone(), true, true);
    }

    /// The failback guard of `tree` ended: what was doubtful there was kept, and is resolved.
    pub fn forget_doubtful(&self, tree: u32) {
        let mut s = self.lock();
        let mut settled = Vec::new();
        s.doubtful.retain(|k, (q, _)| {
            let keep = k.tree != tree;
            if !keep {
                settled.push(*q);
            }
            keep
        });
        let _ = s.journal.ack_seqs(&settled);
    }

    /// Records the outcome of `work`: acknowledged in the journal, or put back in place.
    pub fn done(&self, work: Work, ok: bool) {
        self.finish(work, ok, false);
    }

    /// [`Queue::done`]; `cautious`: a successful batch's changes stay doubtful.
    fn finish(&self, work: Work, ok: bool, cautious: bool) {
        let mut s = self.lock();
        match &work {
            Work::FullSync(_) => s.full_sync_running = None,
            Work::Batch(b) => {
                s.batches_in_flight = s.batches_in_flight.saturating_sub(1);
                // Entries that waited for this batch may go now (and put-back ones are older).
                s.blocked_below = 0;
                for (seq, e) in b {
                    s.in_flight.remove(seq);
                    let key = PathKey::new(e.tree, &e.path);
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
                let mut acked = Vec::with_capacity(b.len());
                let mut unkept = 0;
                for (seq, e) in b {
                    let key = PathKey::new(e.tree, &e.path);
                    if cautious && (s.doubtful.len() < MAX_DOUBTFUL || s.doubtful.contains_key(&key)) {
                        // live in the journal until a push overwrites it or a guard ends
                        acked.extend(s.doubtful.insert(key, (seq, e)).map(|(old, _)| old).filter(|old| *old != seq));
                        continue;
                    }
                    unkept += usize::from(cautious);
                    if !s.doubtful.is_empty() {
                        acked.extend(s.doubtful.remove(&key).map(|(old, _)| old));
                    }
                    acked.push(seq);
                }
                if unkept > 0 {
                    tracing::warn!(
                        changes = unkept,
                        "too many changes pushed without overwriting to remember: a reverse sync may replace them unkept"
                    );
                }
                let _ = s.journal.ack_seqs(&acked);
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
        let live = (s.pending.len() + s.in_flight.len() + s.doubtful.len()) as u64 * 64 + 4096;
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

    /// The changes of tree `tree` queued, being pushed, or doubtful (copies; the queue is unchanged).
    pub fn unpushed(&self, tree: u32) -> Vec<Entry> {
        let s = self.lock();
        s.pending
            .iter()
            .map(|(_, e)| e)
            .chain(s.in_flight.values())
            .chain(s.doubtful.values().map(|(_, e)| e))
            .filter(|e| e.tree == tree)
            .cloned()
            .collect()
    }

    /// Asks the worker to stop every push under way (their rsyncs killed) and to queue their
    /// paths again; [`Queue::in_flight`] is zero once it has.
    pub fn abort_pushes(&self) {
        self.aborts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    pub(super) fn aborts(&self) -> u64 {
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
pub fn overlaps(busy: &BTreeMap<PathKey, usize>, e: &Entry) -> bool {
    let t = e.tree;
    let me = PathKey::new(t, &e.path);
    if me.path == Path::new(".") {
        return busy.keys().any(|k| k.tree == t);
    }
    if busy.contains_key(&PathKey::new(t, Path::new("."))) {
        return true;
    }
    if me.path.ancestors().filter(|a| !a.as_os_str().is_empty()).any(|a| busy.contains_key(&PathKey::new(t, a))) {
        return true;
    }
    // Descendants sort right after the path itself (component-wise order).
    busy.range(&me..).next().is_some_and(|(k, _)| k.beneath(t, &me.path))
}
