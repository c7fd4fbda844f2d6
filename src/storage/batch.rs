//! Coalescing of file events into batches: PURE (no I/O, no clock; `now` is a parameter).
//!
//! An [`Entry`] names one path of one tree, relative to the tree root, and a [`Scope`]: `Path` pushes
//! that path alone (a file, a symlink, a directory's own attributes, or its deletion when it is gone);
//! `Tree` pushes it and everything beneath it (new or moved-in directories, whose contents inotify
//! could not see); `Gone` is a deleted directory (or a path moved away), listed like `Path` so rsync
//! deletes it with everything beneath; `Replace` is a directory deleted and then created again before
//! the deletion was pushed (`rm -rf d && mkdir d`): pushed like `Tree`, and what the remote still has
//! beneath it that the source no longer has is deleted. Events for one path merge into one entry
//! ([`Scope::then`]); a directory's deletion drops the entries queued beneath it (rsync deletes the
//! whole directory). Because rsync sends a path's state at push time, one entry per path preserves
//! per-path order by construction.
//!
//! [`PendingSet`] is the ordered, merging set shared by the batcher and each remote's queue;
//! [`Batcher`] adds the timing, PER PATH: an entry is due `window` after its path's last event (the
//! coalescing window: a file written in several steps goes once), or `max_delay` after its first
//! (a path touched without pause still goes), and everything is due at once when `max_batch`
//! entries wait. A steady stream of different files therefore never holds the first of them back:
//! each leaves `window` after its own event. Batching across paths is the remotes' group commit
//! (`remote::Queue::next`): a free push slot takes what is queued now; while every slot is busy,
//! what arrives accumulates and goes as the next batch. `max_delay` is a cap, not a timer.
//!
//! A file being written (just created by `open()`, or a `modify` event) SETTLES instead of being
//! pushed: its `close_write` will announce the finished file (a push now would send a partial file
//! and the close would send it all again). Any other event of that path, or of a directory deleted
//! above it, ends the wait; so does `quiet` without another write (an NFS server such as
//! nfs-ganesha keeps the files it writes open: their close may not come for minutes), and at the
//! latest `settle` after the wait began, the file is pushed anyway.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    Path,
    Tree,
    Gone,
    Replace,
}

impl Scope {
    /// The scope of one path that saw `self` and then `next`.
    #[must_use]
    pub fn then(self, next: Scope) -> Scope {
        use Scope::{Gone, Path, Replace, Tree};
        match (self, next) {
            (Replace, _) | (_, Replace) | (Gone, Tree) => Replace,
            (Gone, _) | (_, Gone) => Gone,
            (Tree, _) | (_, Tree) => Tree,
            (Path, Path) => Path,
        }
    }

    /// Pushed with everything beneath it.
    pub fn recursive(self) -> bool {
        matches!(self, Scope::Tree | Scope::Replace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Index into `StorageConfig::trees`.
    pub tree: u32,
    /// Relative to the tree root; never empty (the root itself is `.`).
    pub path: PathBuf,
    pub scope: Scope,
}

impl Entry {
    pub fn new(tree: u32, path: impl Into<PathBuf>, scope: Scope) -> Entry {
        Entry { tree, path: path.into(), scope }
    }
}

/// Orders two relative paths as [`Path`] orders them (component by component, the tree root `.`
/// first), from their bytes: for normalized paths (no empty, `.` or `..` component, no trailing
/// `/`), that is the byte order with `/` below every other byte. Everything beneath a directory
/// therefore sorts right after it, in one contiguous range. `Path`'s own comparison parses the
/// components of both sides on every call: in a burst of 10,000 renames it was a third of the
/// replicator's CPU time (`perf`, docs/bench-storage.md), and the event loop fell 0.4 s behind.
pub fn cmp_rel(a: &Path, b: &Path) -> Ordering {
    let (a, b) = (a.as_os_str().as_bytes(), b.as_os_str().as_bytes());
    match (a == b".", b == b".") {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        (false, false) => {}
    }
    let rank = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => rank(a[i]).cmp(&rank(b[i])),
        None => a.len().cmp(&b.len()),
    }
}

/// Is `p` normalized (see [`cmp_rel`]), so that its bytes compare as its components do?
fn normalized(p: &Path) -> bool {
    let b = p.as_os_str().as_bytes();
    b == b"." || (!b.is_empty() && b.split(|c| *c == b'/').all(|c| !c.is_empty() && c != b"." && c != b".."))
}

/// A path of one tree as a map key, ordered by tree, then by [`cmp_rel`]. A path that is not
/// normalized is rebuilt from its components (`a//b/`, `a/./b`: `a/b`, as `Path` compares them equal);
/// `..` or a leading `./` (never produced by the watcher or the journal) stay, in byte order.
#[derive(Debug, Clone)]
pub struct PathKey {
    pub tree: u32,
    pub path: PathBuf,
}

impl PathKey {
    pub fn new(tree: u32, path: &Path) -> PathKey {
        if normalized(path) {
            PathKey { tree, path: path.to_path_buf() }
        } else {
            PathKey::normalize(tree, path)
        }
    }

    /// [`PathKey::new`] without a copy when `path` is normalized already.
    pub fn owned(tree: u32, path: PathBuf) -> PathKey {
        if normalized(&path) {
            PathKey { tree, path }
        } else {
            PathKey::normalize(tree, &path)
        }
    }

    fn normalize(tree: u32, path: &Path) -> PathKey {
        let mut p: PathBuf = path.components().filter(|c| *c != Component::CurDir || path == Path::new(".")).collect();
        if p.as_os_str().is_empty() {
            p = PathBuf::from(".");
        }
        PathKey { tree, path: p }
    }

    /// Is `self` strictly beneath `dir` (of the same tree)?
    pub fn beneath(&self, tree: u32, dir: &Path) -> bool {
        let (p, d) = (self.path.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
        self.tree == tree && d != b"." && p.len() > d.len() && p.starts_with(d) && p[d.len()] == b'/'
    }
}

impl Ord for PathKey {
    fn cmp(&self, o: &PathKey) -> Ordering {
        self.tree.cmp(&o.tree).then_with(|| cmp_rel(&self.path, &o.path))
    }
}

impl PartialOrd for PathKey {
    fn partial_cmp(&self, o: &PathKey) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for PathKey {
    fn eq(&self, o: &PathKey) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for PathKey {}

/// What [`PendingSet::insert_with_seq`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// The sequence number the path's entry now has.
    pub seq: u64,
    /// A new entry, a wider scope or a new place.
    pub changed: bool,
    /// Another sequence number of the same path that is now covered by `seq`.
    pub absorbed: Option<u64>,
}

/// Ordered by first insertion (sequence number), merged by path. Paths sort component-wise, so
/// everything beneath a directory is one contiguous range of `by_path`.
#[derive(Debug, Default, Clone)]
pub struct PendingSet {
    by_seq: BTreeMap<u64, Entry>,
    by_path: BTreeMap<PathKey, u64>,
    next_seq: u64,
}

impl PendingSet {
    pub fn new(next_seq: u64) -> PendingSet {
        PendingSet { next_seq, ..PendingSet::default() }
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The lowest sequence number queued.
    pub fn first_seq(&self) -> Option<u64> {
        self.by_seq.keys().next().copied()
    }

    /// Adds `e` with a fresh sequence number, or merges it into the queued entry of the same path
    /// (which keeps its place and its number). Returns the sequence number of a record worth
    /// persisting: the fresh one for a new path, the queued entry's own for a widened scope (a record
    /// with a known number widens that entry on replay); `None` when nothing changed.
    pub fn insert(&mut self, e: Entry) -> Option<u64> {
        let fresh = self.next_seq;
        let m = self.merge(fresh, e);
        if m.seq == fresh {
            self.next_seq = fresh.saturating_add(1);
        }
        m.changed.then_some(m.seq)
    }

    /// Inserts with a known sequence number (journal replay, a failed batch put back). An entry of the
    /// same path keeps the older place; the scope is the wider of both. Returns the merge: when two
    /// numbers became one entry, the journal must learn that the absorbed one is covered.
    pub fn insert_with_seq(&mut self, seq: u64, e: Entry) -> Merged {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        self.merge(seq, e)
    }

    /// The queued entry with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.by_seq.get(&seq)
    }

    fn merge(&mut self, seq: u64, e: Entry) -> Merged {
        let key = PathKey::new(e.tree, &e.path);
        let Some(old) = self.by_path.get(&key).copied() else {
            self.by_path.insert(key, seq);
            self.by_seq.insert(seq, e);
            return Merged { seq, changed: true, absorbed: None };
        };
        let cur = self.by_seq.get_mut(&old).expect("by_path and by_seq agree");
        // A put-back batch (older sequence number) happened before what is queued.
        let merged = if seq < old { e.scope.then(cur.scope) } else { cur.scope.then(e.scope) };
        let widened = merged != cur.scope;
        cur.scope = merged;
        if seq < old {
            // A put-back batch is older than what arrived meanwhile: it takes the older place.
            let entry = self.by_seq.remove(&old).expect("present");
            self.by_seq.insert(seq, entry);
            self.by_path.insert(key, seq);
            return Merged { seq, changed: true, absorbed: Some(old) };
        }
        Merged { seq: old, changed: widened, absorbed: (seq != old).then_some(seq) }
    }

    /// The sequence number of the queued entry of `path`.
    pub fn seq_of(&self, tree: u32, path: &Path) -> Option<u64> {
        self.by_path.get(&PathKey::new(tree, path)).copied()
    }

    /// Drops every queued entry strictly beneath `dir` (the directory itself stays); returns their
    /// sequence numbers.
    pub fn remove_beneath(&mut self, tree: u32, dir: &Path) -> Vec<u64> {
        let start = PathKey::new(tree, dir);
        let doomed: Vec<(PathKey, u64)> = self
            .by_path
            .range(&start..)
            .skip_while(|(k, _)| **k == start)
            .take_while(|(k, _)| k.beneath(tree, &start.path))
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        let mut gone = Vec::with_capacity(doomed.len());
        for (k, s) in doomed {
            self.by_path.remove(&k);
            self.by_seq.remove(&s);
            gone.push(s);
        }
        gone
    }

    /// Removes and returns the entries with these sequence numbers, oldest first (absent ones are
    /// skipped).
    pub fn take_seqs(&mut self, seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, Entry)> {
        let mut seqs: Vec<u64> = seqs.into_iter().collect();
        seqs.sort_unstable();
        let mut out = Vec::with_capacity(seqs.len());
        for s in seqs {
            if let Some(e) = self.by_seq.remove(&s) {
                self.by_path.remove(&PathKey::new(e.tree, &e.path));
                out.push((s, e));
            }
        }
        out
    }

    /// Removes and returns up to `max` entries, oldest first, with their sequence numbers.
    pub fn take(&mut self, max: usize) -> Vec<(u64, Entry)> {
        let mut out = Vec::with_capacity(max.min(self.len()));
        while out.len() < max {
            let Some((seq, e)) = self.by_seq.pop_first() else { break };
            self.by_path.remove(&PathKey::new(e.tree, &e.path));
            out.push((seq, e));
        }
        out
    }

    /// Like [`PendingSet::take`] but only entries for which `ok` holds (the others keep their place).
    pub fn take_where(&mut self, max: usize, ok: impl FnMut(&Entry) -> bool) -> Vec<(u64, Entry)> {
        self.take_where_from(0, max, ok)
    }

    /// [`PendingSet::take_where`] among the entries numbered `from` or higher.
    pub fn take_where_from(&mut self, from: u64, max: usize, mut ok: impl FnMut(&Entry) -> bool) -> Vec<(u64, Entry)> {
        let seqs: Vec<u64> = self.by_seq.range(from..).filter(|(_, e)| ok(e)).take(max).map(|(s, _)| *s).collect();
        self.take_seqs(seqs)
    }

    /// The entries numbered `from` or higher, oldest first.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, &Entry)> {
        self.by_seq.range(from..).map(|(s, e)| (*s, e))
    }

    /// Drops the entries whose sequence numbers fall in the inclusive `ranges` (they were pushed).
    pub fn ack_ranges(&mut self, ranges: &[(u64, u64)]) {
        for &(lo, hi) in ranges.iter().filter(|(lo, hi)| lo <= hi) {
            let seqs: Vec<u64> = self.by_seq.range(lo..=hi).map(|(s, _)| *s).collect();
            for s in seqs {
                if let Some(e) = self.by_seq.remove(&s) {
                    self.by_path.remove(&PathKey::new(e.tree, &e.path));
                }
            }
            self.next_seq = self.next_seq.max(hi.saturating_add(1));
        }
    }

    /// Every entry, oldest first (journal compaction).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.by_seq.iter().map(|(s, e)| (*s, e))
    }

    /// Drops everything of `tree` (it is going to be fully synced).
    pub fn clear_tree(&mut self, tree: u32) {
        self.by_seq.retain(|_, e| e.tree != tree);
        self.by_path.retain(|k, _| k.tree != tree);
    }
}

/// Timing policy of the batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: Duration,
    pub max_delay: Duration,
    pub max_batch: usize,
    /// How long a file being written waits for its `close_write` at most.
    pub settle: Duration,
    /// A file being written is pushed once this long passed without a write.
    pub quiet: Duration,
}

/// The pending entries and when each is due.
#[derive(Debug)]
pub struct Batcher {
    set: PendingSet,
    timing: Timing,
    /// Per queued entry (by sequence number): its path's first event and when it is due.
    times: BTreeMap<u64, (Instant, Instant)>,
    /// The same, by due time (the next deadline without a scan).
    by_due: BTreeSet<(Instant, u64)>,
    /// The latest event (a full batch is due at once: this is "once", never later than now).
    last_at: Option<Instant>,
    /// Files being written, waiting for their close.
    settling: Settling,
}

/// Creations waiting for their close, by path and by the time they are pushed anyway (so the next
/// deadline is found without a scan).
#[derive(Debug, Default)]
struct Settling {
    /// When each began to wait, and when it is pushed anyway.
    by_path: BTreeMap<PathKey, (Instant, Instant)>,
    by_deadline: BTreeSet<(Instant, PathKey)>,
}

impl Settling {
    fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Adds `key`, waiting from `now` until `at`, unless it already waits (its deadline stays).
    fn insert(&mut self, key: PathKey, now: Instant, at: Instant) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.by_path.entry(key.clone()) {
            v.insert((now, at));
            self.by_deadline.insert((at, key));
        }
    }

    /// A write to `key` at `now`: it waits until `quiet` passes without another, at most until
    /// `settle` after it began to wait.
    fn written(&mut self, key: PathKey, now: Instant, t: &Timing) {
        let since = match self.by_path.get(&key) {
            Some(&(since, at)) => {
                self.by_deadline.remove(&(at, key.clone()));
                since
            }
            None => now,
        };
        let at = (now + t.quiet).min(since + t.settle);
        self.by_deadline.insert((at, key.clone()));
        self.by_path.insert(key, (since, at));
    }

    /// When the longest wait began.
    fn oldest(&self) -> Option<Instant> {
        self.by_path.values().map(|(since, _)| *since).min()
    }

    fn remove(&mut self, tree: u32, path: &Path) {
        if let Some((key, (_, at))) = self.by_path.remove_entry(&PathKey::new(tree, path)) {
            self.by_deadline.remove(&(at, key));
        }
    }

    /// Removes `dir` and everything beneath it (paths sort component-wise: one contiguous range).
    fn remove_beneath(&mut self, tree: u32, dir: &Path) {
        let start = PathKey::new(tree, dir);
        let doomed: Vec<PathKey> = self
            .by_path
            .range(&start..)
            .take_while(|(k, _)| **k == start || k.beneath(tree, &start.path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            if let Some((_, at)) = self.by_path.remove(&k) {
                self.by_deadline.remove(&(at, k));
            }
        }
    }

    fn clear_tree(&mut self, tree: u32) {
        self.by_path.retain(|k, _| k.tree != tree);
        self.by_deadline.retain(|(_, k)| k.tree != tree);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// The earliest creation whose wait is over at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(u32, PathBuf)> {
        if self.next_deadline()? > now {
            return None;
        }
        let (_, k) = self.by_deadline.pop_first()?;
        self.by_path.remove(&k);
        Some((k.tree, k.path))
    }

    fn drain(&mut self) -> impl Iterator<Item = (u32, PathBuf)> {
        self.by_deadline.clear();
        std::mem::take(&mut self.by_path).into_keys().map(|k| (k.tree, k.path))
    }
}

impl Batcher {
    pub fn new(timing: Timing) -> Batcher {
        Batcher {
            set: PendingSet::default(),
            timing,
            times: BTreeMap::new(),
            by_due: BTreeSet::new(),
            last_at: None,
            settling: Settling::default(),
        }
    }

    /// Entries pending, settling ones included.
    pub fn len(&self) -> usize {
        self.set.len() + self.settling.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.settling.len() == 0
    }

    /// Records an event. `dir_deleted`: `e.path` was a directory and is gone, so queued entries
    /// beneath it are subsumed by its deletion.
    pub fn add(&mut self, now: Instant, mut e: Entry, dir_deleted: bool) {
        if dir_deleted {
            for seq in self.set.remove_beneath(e.tree, &e.path) {
                self.unschedule(seq);
            }
            self.settling.remove_beneath(e.tree, &e.path);
            e.scope = Scope::Gone;
        } else {
            self.settling.remove(e.tree, &e.path);
        }
        self.enqueue(now, e, self.timing.window);
    }

    /// Queues `e`, due `wait` from now (at most `max_delay` after its path's first event); returns
    /// its sequence number. Each event of a path restarts its wait: the coalescing window.
    fn enqueue(&mut self, now: Instant, e: Entry, wait: Duration) -> u64 {
        let key = (e.tree, e.path.clone());
        self.set.insert(e);
        let seq = self.set.seq_of(key.0, &key.1).expect("just inserted");
        let first = self.times.get(&seq).map_or(now, |(first, _)| *first);
        self.schedule(seq, first, (now + wait).min(first + self.timing.max_delay));
        self.last_at = Some(now);
        seq
    }

    fn schedule(&mut self, seq: u64, first: Instant, due: Instant) {
        if let Some((_, old)) = self.times.insert(seq, (first, due)) {
            self.by_due.remove(&(old, seq));
        }
        self.by_due.insert((due, seq));
    }

    fn unschedule(&mut self, seq: u64) {
        if let Some((_, due)) = self.times.remove(&seq) {
            self.by_due.remove(&(due, seq));
        }
    }

    /// Records the creation of a file that is still open for writing: pushed at its next event, or
    /// `settle` from now. A path already queued needs no wait (it goes with the batch).
    pub fn add_settling(&mut self, now: Instant, e: Entry) {
        if self.set.seq_of(e.tree, &e.path).is_some() {
            return;
        }
        self.settling.insert(PathKey::owned(e.tree, e.path), now, now + self.timing.settle);
    }

    /// Records a write to a file's data (`modify`): the file is being written, so it waits like a
    /// creation, for its close or `quiet` without a write (see the module's doc). A path already
    /// queued needs no wait (it goes with the batch, which reads the file when it runs).
    pub fn add_written(&mut self, now: Instant, e: Entry) {
        if self.set.seq_of(e.tree, &e.path).is_some() {
            return;
        }
        self.settling.written(PathKey::owned(e.tree, e.path), now, &self.timing);
    }

    /// When the oldest event still waiting here came (settling creations included); `None` when
    /// nothing waits. Everything seen before it is in the queues.
    pub fn oldest(&self) -> Option<Instant> {
        let queued = self.times.values().map(|(first, _)| *first).min();
        let settling = self.settling.oldest();
        match (queued, settling) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the next entries (or a settled creation) must go out; `None` when nothing is pending.
    pub fn due(&self) -> Option<Instant> {
        match (self.batch_due(), self.settling.next_deadline()) {
            (Some(b), Some(s)) => Some(b.min(s)),
            (b, s) => b.or(s),
        }
    }

    fn batch_due(&self) -> Option<Instant> {
        if self.set.len() >= self.timing.max_batch {
            return self.last_at;
        }
        self.by_due.first().map(|(due, _)| *due)
    }

    /// The entries due at `now` (oldest first, at most `max_batch`; when `max_batch` entries wait,
    /// the oldest of them, due or not). Creations whose wait is over are due at once. `None` when
    /// nothing is due.
    pub fn take_due(&mut self, now: Instant) -> Option<Vec<Entry>> {
        while let Some((tree, path)) = self.settling.pop_due(now) {
            self.enqueue(now, Entry { tree, path, scope: Scope::Path }, Duration::ZERO);
        }
        let max = self.timing.max_batch;
        let taken = if self.set.len() >= max {
            self.set.take(max)
        } else {
            let ripe: Vec<u64> =
                self.by_due.iter().take_while(|(due, _)| *due <= now).take(max).map(|(_, s)| *s).collect();
            self.set.take_seqs(ripe)
        };
        for (seq, _) in &taken {
            self.unschedule(*seq);
        }
        if self.set.is_empty() {
            self.last_at = None;
        }
        (!taken.is_empty()).then(|| taken.into_iter().map(|(_, e)| e).collect())
    }

    /// Everything pending, due or not, settling creations included (shutdown).
    pub fn flush(&mut self) -> Vec<Entry> {
        self.last_at = None;
        self.times.clear();
        self.by_due.clear();
        let mut out: Vec<Entry> = self.set.take(usize::MAX).into_iter().map(|(_, e)| e).collect();
        out.extend(self.settling.drain().map(|(tree, path)| Entry { tree, path, scope: Scope::Path }));
        out
    }

    /// Drops pending entries of `tree` (a full sync of it is coming).
    pub fn clear_tree(&mut self, tree: u32) {
        self.settling.clear_tree(tree);
        self.set.clear_tree(tree);
        let set = &self.set;
        self.times.retain(|seq, _| set.get(*seq).is_some());
        self.by_due.retain(|(_, seq)| set.get(*seq).is_some());
        if self.set.is_empty() {
            self.last_at = None;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn timing() -> Timing {
        Timing { window: 100 * MS, max_delay: 1000 * MS, max_batch: 3, settle: 5000 * MS, quiet: 300 * MS }
    }

    fn p(path: &str) -> Entry {
        Entry::new(0, path, Scope::Path)
    }

    fn paths(b: &[Entry]) -> Vec<String> {
        b.iter().map(|e| format!("{}{}", e.path.display(), if e.scope == Scope::Tree { "/**" } else { "" })).collect()
    }

    /// The byte comparison orders every name as `Path` does (hostile names included: bytes below
    /// `/` such as `-`, `!`, space and newline, `#`, wildcards, invalid UTF-8, dots), so the ranges
    /// "beneath a directory" stay contiguous; unnormalized spellings are one key with their normal form.
    #[test]
    fn path_keys_order_as_paths_do() {
        use std::os::unix::ffi::OsStrExt;
        let names: Vec<&[u8]> = vec![
            b"a",
            b"a b",
            b"a-b",
            b"a!",
            b"a\n",
            b"a\x01",
            b"-x",
            b"#c",
            b"*?[\\",
            b"\xff\xfe",
            b".hidden",
            b"..x",
            b"a.b",
            b"ab",
            b"a\xff",
            b"~",
            b"0",
        ];
        let mut paths: Vec<PathBuf> = vec![PathBuf::from(".")];
        for n in &names {
            let n = std::ffi::OsStr::from_bytes(n);
            paths.push(PathBuf::from(n));
            for m in &names {
                paths.push(Path::new(n).join(std::ffi::OsStr::from_bytes(m)));
                paths.push(Path::new(n).join(std::ffi::OsStr::from_bytes(m)).join("z"));
            }
        }
        for a in &paths {
            for b in &paths {
                assert_eq!(cmp_rel(a, b), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(PathKey::new(0, a) == PathKey::new(0, b), a == b, "{a:?} vs {b:?}");
            }
        }
        // Everything beneath a directory, and nothing else, right after it.
        let mut keys: Vec<PathKey> = paths.iter().map(|p| PathKey::new(0, p)).collect();
        keys.sort();
        let dir = Path::new("a");
        let at = keys.iter().position(|k| k.path == dir).unwrap();
        let run = keys[at + 1..].iter().take_while(|k| k.beneath(0, dir)).count();
        assert_eq!(run, paths.iter().filter(|p| p.starts_with(dir) && *p != dir).count());
        assert!(!PathKey::new(0, Path::new("a")).beneath(0, Path::new(".")), "the root is no prefix");
        assert!(!PathKey::new(1, Path::new("a/b")).beneath(0, dir), "another tree");
        // Unnormalized spellings: the same key as their normal form, as `Path` has them equal.
        for odd in ["a//b", "a/./b", "a/b/", "a/b/."] {
            assert_eq!(PathKey::new(0, Path::new(odd)), PathKey::new(0, Path::new("a/b")), "{odd}");
        }
        assert_eq!(PathKey::new(0, Path::new("./")).path, Path::new("."));
    }

    #[test]
    fn each_path_waits_for_its_own_quiet_window() {
        let t0 = Instant::now();
        let mut b = Batcher::new(timing());
        assert_eq!(b.due(), None);
        b.add(t0, p("a"), false);
        b.add(t0 + 50 * MS, p("b"), false);
        assert_eq!(b.due(), Some(t0 + 100 * MS), "a's window, not the last event's");
        assert!(b.take_due(t0 + 99 * MS).is_none());
        assert_eq!(paths(&b.take_due(t0 + 100 * MS).unwrap()), ["a"]);
        // A second event of b restarts b's window only.
        b.add(t0 + 120 * MS, p("b"), false);
        assert_eq!(b.due(), Some(t0 + 220 * MS));
        assert!(b.take_due(t0 + 150 * MS).is_none());
        assert_eq!(paths(&b.take_due(t0 + 220 * MS).unwrap()), ["b"]);
        assert_eq!(b.due(), None);
    }

    /// The old batcher kept one window for the whole batch, restarted by every event: under a
    /// steady stream of different files nothing left before `max_delay`.
    #[test]
    fn a_steady_stream_of_new_files_never_waits_for_max_delay() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Timing { max_batch: 1000, ..timing() });
        let mut sent: Vec<(Duration, String)> = Vec::new();
        for i in 0..300u32 {
            let now = t0 + i * 5 * MS;
            b.add(now, p(&format!("f{i:03}")), false);
            while let Some(batch) = b.take_due(now) {
                sent.extend(paths(&batch).into_iter().map(|n| (now - t0, n)));
            }
        }
        assert_eq!(sent[0], (100 * MS, "f000".to_owned()), "the first file goes one window after its event");
        // Every file leaves one window after its own event, in order.
        for (k, (at, name)) in sent.iter().enumerate() {
            assert_eq!(
                (*at, name.as_str()),
                (u32::try_from(k).unwrap() * 5 * MS + 100 * MS, format!("f{k:03}").as_str())
            );
        }
    }

    #[test]
    fn max_delay_caps_a_path_that_never_pauses_but_not_the_others() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Timing { max_batch: 100, ..timing() });
        for i in 0..20u32 {
            b.add(t0 + i * 60 * MS, p("hot"), false);
        }
        b.add(t0 + 950 * MS, p("cold"), false);
        assert_eq!(b.due(), Some(t0 + 1000 * MS), "hot's cap, though it never paused");
        assert_eq!(paths(&b.take_due(t0 + 1000 * MS).unwrap()), ["hot"]);
        assert!(b.take_due(t0 + 1000 * MS).is_none());
        assert_eq!(paths(&b.take_due(t0 + 1050 * MS).unwrap()), ["cold"]);
    }

    #[test]
    fn a_new_file_waits_for_its_close_and_is_pushed_anyway_after_settle() {
        let t0 = Instant::now();
        let mut b = Batcher::new(timing());
        // Created: nothing due until settle; the close arrives and makes one ordinary entry.
        b.add_settling(t0, p("big"));
        assert_eq!(b.due(), Some(t0 + 5000 * MS));
        assert!(b.take_due(t0 + 200 * MS).is_none());
        b.add(t0 + 2000 * MS, p("big"), false);
        assert_eq!(b.due(), Some(t0 + 2100 * MS));
        assert_eq!(paths(&b.take_due(t0 + 2100 * MS).unwrap()), ["big"]);
        assert!(b.is_empty() && b.due().is_none(), "the settled creation was consumed by the close");
        // Never closed (mknod, or a file kept open): pushed when settle runs out, at once.
        b.add_settling(t0, p("open"));
        assert!(b.take_due(t0 + 4999 * MS).is_none());
        assert_eq!(paths(&b.take_due(t0 + 5000 * MS).unwrap()), ["open"]);
        // A directory deleted above a settling creation ends its wait (its deletion covers it).
        b.add_settling(t0, p("d/f"));
        b.add(t0, p("d"), true);
        assert_eq!(paths(&b.flush()), ["d"]);
        // A path already queued goes with its batch; shutdown flushes settling ones too.
        b.add(t0, p("q"), false);
        b.add_settling(t0, p("q"));
        b.add_settling(t0, p("s"));
        assert_eq!(b.len(), 2);
        assert_eq!(paths(&b.flush()), ["q", "s"]);
    }

    #[test]
    fn a_file_being_written_goes_at_its_close_or_once_quiet_or_after_settle() {
        let t0 = Instant::now();
        let mut b = Batcher::new(timing());
        // Written through NFS (no close): each write restarts `quiet` (300 ms); pushed once quiet.
        b.add_settling(t0, p("nfs"));
        b.add_written(t0 + 10 * MS, p("nfs"));
        b.add_written(t0 + 200 * MS, p("nfs"));
        assert_eq!(b.due(), Some(t0 + 500 * MS));
        assert!(b.take_due(t0 + 499 * MS).is_none());
        assert_eq!(b.oldest(), Some(t0), "the watermark sees the wait from its first event");
        assert_eq!(paths(&b.take_due(t0 + 500 * MS).unwrap()), ["nfs"]);
        // An existing file overwritten locally: its writes wait; its close makes one ordinary entry.
        b.add_written(t0, p("local"));
        b.add_written(t0 + 250 * MS, p("local"));
        assert!(b.take_due(t0 + 400 * MS).is_none(), "still being written");
        b.add(t0 + 450 * MS, p("local"), false);
        assert_eq!(paths(&b.take_due(t0 + 550 * MS).unwrap()), ["local"]);
        assert!(b.is_empty());
        // Written without pause for longer than `settle`: pushed at settle after its first write.
        for i in 0..60 {
            b.add_written(t0 + i * 100 * MS, p("log"));
        }
        assert_eq!(b.due(), Some(t0 + 5000 * MS));
        // A path already queued goes with its batch (which reads the file when it runs).
        b.add(t0, p("q"), false);
        b.add_written(t0 + 50 * MS, p("q"));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_directory_deleted_and_made_again_is_replaced() {
        use Scope::{Gone, Path, Replace, Tree};
        assert_eq!(Path.then(Tree), Tree);
        assert_eq!(Tree.then(Gone), Gone, "made and deleted again: only the deletion is left");
        assert_eq!(Gone.then(Tree), Replace);
        assert_eq!(Gone.then(Path), Gone, "a file in its place: listed, rsync swaps the directory for it");
        assert_eq!(Replace.then(Gone), Replace);
        assert_eq!(Path.then(Replace), Replace);
        let t0 = Instant::now();
        let mut b = Batcher::new(timing());
        b.add(t0, Entry::new(0, "d/x", Scope::Path), false);
        b.add(t0, Entry::new(0, "d", Scope::Path), true);
        b.add(t0, Entry::new(0, "d", Scope::Tree), false);
        let batch = b.flush();
        assert_eq!((batch.len(), batch[0].scope), (1, Replace));
        // A failed push put back behind a newer event keeps the order of the two.
        let mut s = PendingSet::new(5);
        s.insert(Entry::new(0, "d", Tree));
        s.insert_with_seq(0, Entry::new(0, "d", Gone));
        assert_eq!(s.take(9)[0].1.scope, Gone.then(Tree));
    }

    #[test]
    fn max_delay_caps_a_steady_stream() {
        let t0 = Instant::now();
        let mut b = Batcher::new(timing());
        for i in 0..20u32 {
            b.add(t0 + i * 60 * MS, p("same"), false);
        }
        assert_eq!(b.len(), 1, "one path, one entry");
        assert_eq!(b.due(), Some(t0 + 1000 * MS));
    }

    #[test]
    fn max_batch_makes_it_due_now_and_leftovers_follow() {
        let t0 = Instant::now();
        let mut b = Batcher::new(timing());
        for n in ["a", "b", "c", "d"] {
            b.add(t0, p(n), false);
        }
        assert_eq!(b.due(), Some(t0));
        assert_eq!(paths(&b.take_due(t0).unwrap()), ["a", "b", "c"]);
        assert_eq!(paths(&b.take_due(t0 + 100 * MS).unwrap()), ["d"]);
    }

    #[test]
    fn merging_keeps_first_position_and_widens_scope() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Timing { max_batch: 100, ..timing() });
        b.add(t0, p("x"), false);
        b.add(t0, p("y"), false);
        b.add(t0, Entry::new(0, "x", Scope::Tree), false);
        b.add(t0, p("x"), false);
        assert_eq!(paths(&b.flush()), ["x/**", "y"]);
    }

    #[test]
    fn deleting_a_dir_subsumes_queued_children_only() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Timing { max_batch: 100, ..timing() });
        for n in ["d/a", "d/sub/b", "d", "dd/c", "e"] {
            b.add(t0, p(n), false);
        }
        b.add(t0, Entry::new(1, "d/z", Scope::Path), false);
        b.add(t0, p("d"), true);
        // Recreated after the delete: must stay.
        b.add(t0, p("d/new"), false);
        let out = b.flush();
        assert_eq!(paths(&out), ["d", "dd/c", "e", "d/z", "d/new"]);
        assert_eq!(out[3].tree, 1, "other trees are untouched");
    }

    #[test]
    fn take_where_skips_without_reordering_and_ranges_ack() {
        let mut s = PendingSet::new(0);
        for n in ["a", "b/x", "c", "b/y", "d"] {
            s.insert(p(n));
        }
        let got = s.take_where(2, |e| !e.path.starts_with("b"));
        assert_eq!(got.iter().map(|(q, _)| *q).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(s.take(9).iter().map(|(q, _)| *q).collect::<Vec<_>>(), [1, 3, 4]);
        let mut s = PendingSet::new(0);
        for n in ["a", "b", "c", "d", "e"] {
            s.insert(p(n));
        }
        s.ack_ranges(&[(0, 1), (3, 3)]);
        assert_eq!(s.take(9).iter().map(|(q, _)| *q).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn extreme_sequence_numbers_never_panic() {
        let mut s = PendingSet::new(0);
        s.insert_with_seq(u64::MAX, p("a"));
        s.ack_ranges(&[(5, 3), (u64::MAX, u64::MAX)]);
        assert!(s.is_empty());
        assert_eq!(s.next_seq(), u64::MAX);
        let mut s = PendingSet::new(u64::MAX);
        s.insert(p("b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn pending_set_reports_what_must_be_persisted() {
        let mut s = PendingSet::new(10);
        assert_eq!(s.insert(p("a")), Some(10));
        assert_eq!(s.insert(p("a")), None);
        assert_eq!(s.insert(Entry::new(0, "a", Scope::Tree)), Some(10), "widened: the same number again");
        assert_eq!(s.insert(p("b")), Some(11));
        let taken = s.take(1);
        assert_eq!(taken[0].0, 10);
        assert_eq!(taken[0].1.scope, Scope::Tree);
        // Put back after a failure while "a" was queued again meanwhile: older place wins.
        assert_eq!(s.insert(p("a")), Some(12));
        let m = s.insert_with_seq(10, taken[0].1.clone());
        assert_eq!(m, Merged { seq: 10, changed: true, absorbed: Some(12) });
        let all: Vec<(u64, String)> = s.take(9).into_iter().map(|(q, e)| (q, paths(&[e])[0].clone())).collect();
        assert_eq!(all, [(10, "a/**".to_owned()), (11, "b".to_owned())]);
    }
}
