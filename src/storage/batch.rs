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
//! [`Batcher`] adds the timing: a batch is due `window` after the last event, or `max_delay` after the
//! first, or at once when it holds `max_batch` entries.
//!
//! A file just created by `open()` is still being written: its `close_write` will announce the
//! finished file, so its creation SETTLES instead of being pushed (a push would send a partial file
//! and the close would send it all again). Any other event of that path, or of a directory deleted
//! above it, ends the wait; if none comes within `settle`, the creation is pushed anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
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
    by_path: BTreeMap<(u32, PathBuf), u64>,
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
        let key = (e.tree, e.path.clone());
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

    /// Drops every queued entry strictly beneath `dir` (the directory itself stays).
    pub fn remove_beneath(&mut self, tree: u32, dir: &Path) {
        let start = (tree, dir.to_path_buf());
        let doomed: Vec<((u32, PathBuf), u64)> = self
            .by_path
            .range(start..)
            .skip_while(|((t, p), _)| *t == tree && p == dir)
            .take_while(|((t, p), _)| *t == tree && p.starts_with(dir) && p != dir)
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        for (k, s) in doomed {
            self.by_path.remove(&k);
            self.by_seq.remove(&s);
        }
    }

    /// Removes and returns up to `max` entries, oldest first, with their sequence numbers.
    pub fn take(&mut self, max: usize) -> Vec<(u64, Entry)> {
        let mut out = Vec::with_capacity(max.min(self.len()));
        while out.len() < max {
            let Some((seq, e)) = self.by_seq.pop_first() else { break };
            self.by_path.remove(&(e.tree, e.path.clone()));
            out.push((seq, e));
        }
        out
    }

    /// Like [`PendingSet::take`] but only entries for which `ok` holds (the others keep their place).
    pub fn take_where(&mut self, max: usize, mut ok: impl FnMut(&Entry) -> bool) -> Vec<(u64, Entry)> {
        let seqs: Vec<u64> = self.by_seq.iter().filter(|(_, e)| ok(e)).take(max).map(|(s, _)| *s).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for s in seqs {
            if let Some(e) = self.by_seq.remove(&s) {
                self.by_path.remove(&(e.tree, e.path.clone()));
                out.push((s, e));
            }
        }
        out
    }

    /// Drops the entries whose sequence numbers fall in the inclusive `ranges` (they were pushed).
    pub fn ack_ranges(&mut self, ranges: &[(u64, u64)]) {
        for &(lo, hi) in ranges.iter().filter(|(lo, hi)| lo <= hi) {
            let seqs: Vec<u64> = self.by_seq.range(lo..=hi).map(|(s, _)| *s).collect();
            for s in seqs {
                if let Some(e) = self.by_seq.remove(&s) {
                    self.by_path.remove(&(e.tree, e.path));
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
        self.by_path.retain(|(t, _), _| *t != tree);
    }
}

/// Timing policy of the batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: Duration,
    pub max_delay: Duration,
    pub max_batch: usize,
    /// How long a new file's creation waits for its `close_write`.
    pub settle: Duration,
}

/// The pending batch and when it is due.
#[derive(Debug)]
pub struct Batcher {
    set: PendingSet,
    timing: Timing,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// Creations waiting for their close.
    settling: Settling,
}

/// Creations waiting for their close, by path and by the time they are pushed anyway (so the next
/// deadline is found without a scan).
#[derive(Debug, Default)]
struct Settling {
    by_path: BTreeMap<(u32, PathBuf), Instant>,
    by_deadline: BTreeSet<(Instant, u32, PathBuf)>,
}

impl Settling {
    fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Adds `path` unless it already waits (the earlier deadline stays).
    fn insert(&mut self, tree: u32, path: PathBuf, at: Instant) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.by_path.entry((tree, path.clone())) {
            v.insert(at);
            self.by_deadline.insert((at, tree, path));
        }
    }

    fn remove(&mut self, tree: u32, path: &Path) {
        if let Some((key, at)) = self.by_path.remove_entry(&(tree, path.to_path_buf())) {
            self.by_deadline.remove(&(at, key.0, key.1));
        }
    }

    /// Removes `dir` and everything beneath it (paths sort component-wise: one contiguous range).
    fn remove_beneath(&mut self, tree: u32, dir: &Path) {
        let doomed: Vec<PathBuf> = self
            .by_path
            .range((tree, dir.to_path_buf())..)
            .take_while(|((t, p), _)| *t == tree && p.starts_with(dir))
            .map(|((_, p), _)| p.clone())
            .collect();
        for p in doomed {
            self.remove(tree, &p);
        }
    }

    fn clear_tree(&mut self, tree: u32) {
        self.by_path.retain(|(t, _), _| *t != tree);
        self.by_deadline.retain(|(_, t, _)| *t != tree);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _, _)| *at)
    }

    /// The earliest creation whose wait is over at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(u32, PathBuf)> {
        if self.next_deadline()? > now {
            return None;
        }
        let (_, tree, path) = self.by_deadline.pop_first()?;
        self.by_path.remove(&(tree, path.clone()));
        Some((tree, path))
    }

    fn drain(&mut self) -> impl Iterator<Item = (u32, PathBuf)> {
        self.by_deadline.clear();
        std::mem::take(&mut self.by_path).into_keys()
    }
}

impl Batcher {
    pub fn new(timing: Timing) -> Batcher {
        Batcher { set: PendingSet::default(), timing, first_at: None, last_at: None, settling: Settling::default() }
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
            self.set.remove_beneath(e.tree, &e.path);
            self.settling.remove_beneath(e.tree, &e.path);
            e.scope = Scope::Gone;
        } else {
            self.settling.remove(e.tree, &e.path);
        }
        self.set.insert(e);
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
    }

    /// Records the creation of a file that is still open for writing: pushed at its next event, or
    /// `settle` from now. A path already queued needs no wait (it goes with the batch).
    pub fn add_settling(&mut self, now: Instant, e: Entry) {
        if self.set.by_path.contains_key(&(e.tree, e.path.clone())) {
            return;
        }
        self.settling.insert(e.tree, e.path, now + self.timing.settle);
    }

    /// When the pending batch (or a settled creation) must go out; `None` when nothing is pending.
    pub fn due(&self) -> Option<Instant> {
        match (self.batch_due(), self.settling.next_deadline()) {
            (Some(b), Some(s)) => Some(b.min(s)),
            (b, s) => b.or(s),
        }
    }

    fn batch_due(&self) -> Option<Instant> {
        let (first, last) = (self.first_at?, self.last_at?);
        if self.set.len() >= self.timing.max_batch {
            return Some(last.min(first));
        }
        Some((last + self.timing.window).min(first + self.timing.max_delay))
    }

    /// The batch, if it is due at `now`. Leftovers beyond `max_batch` stay, due again at once.
    /// Creations whose wait is over join it.
    pub fn take_due(&mut self, now: Instant) -> Option<Vec<Entry>> {
        // A creation that waited long enough makes the batch due at once.
        let mut ripe = false;
        while let Some((tree, path)) = self.settling.pop_due(now) {
            ripe = true;
            self.set.insert(Entry { tree, path, scope: Scope::Path });
            self.first_at.get_or_insert(now);
            self.last_at.get_or_insert(now);
        }
        if !ripe && self.batch_due()? > now {
            return None;
        }
        let batch: Vec<Entry> = self.set.take(self.timing.max_batch).into_iter().map(|(_, e)| e).collect();
        if self.set.is_empty() {
            self.first_at = None;
            self.last_at = None;
        } else {
            self.first_at = Some(now);
            self.last_at = Some(now);
        }
        Some(batch)
    }

    /// Everything pending, due or not, settling creations included (shutdown).
    pub fn flush(&mut self) -> Vec<Entry> {
        self.first_at = None;
        self.last_at = None;
        let mut out: Vec<Entry> = self.set.take(usize::MAX).into_iter().map(|(_, e)| e).collect();
        out.extend(self.settling.drain().map(|(tree, path)| Entry { tree, path, scope: Scope::Path }));
        out
    }

    /// Drops pending entries of `tree` (a full sync of it is coming).
    pub fn clear_tree(&mut self, tree: u32) {
        self.settling.clear_tree(tree);
        self.set.clear_tree(tree);
        if self.set.is_empty() {
            self.first_at = None;
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
        Timing { window: 100 * MS, max_delay: 1000 * MS, max_batch: 3, settle: 5000 * MS }
    }

    fn p(path: &str) -> Entry {
        Entry::new(0, path, Scope::Path)
    }

    fn paths(b: &[Entry]) -> Vec<String> {
        b.iter().map(|e| format!("{}{}", e.path.display(), if e.scope == Scope::Tree { "/**" } else { "" })).collect()
    }

    #[test]
    fn batch_waits_for_a_quiet_window() {
        let t0 = Instant::now();
        let mut b = Batcher::new(timing());
        assert_eq!(b.due(), None);
        b.add(t0, p("a"), false);
        b.add(t0 + 50 * MS, p("b"), false);
        assert_eq!(b.due(), Some(t0 + 150 * MS));
        assert!(b.take_due(t0 + 149 * MS).is_none());
        assert_eq!(paths(&b.take_due(t0 + 150 * MS).unwrap()), ["a", "b"]);
        assert_eq!(b.due(), None);
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
