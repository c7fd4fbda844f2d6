//! Model-based property test of the journal and the pending set, through `remote::Queue` (their one
//! user): random enqueues, batches taken and then acknowledged or put back, full syncs requested,
//! run, failed, collapses of an overfull queue (a compaction), and reopens (the queue dropped with its
//! batches in flight, as by a crash, and the journal replayed from disk), checked against a model:
//! the set of paths that must still be pushed. After every reopen, every path the model has is
//! pending or covered by a full sync of its tree (nothing lost), every full sync asked for is still
//! asked for, and a path whose push was acknowledged and that was not queued again is not pending.
//!
//! Deterministic; a few seconds by default. A long run (`NFS_GUARD_FUZZ_CASES` sequences):
//! `NFS_GUARD_FUZZ_CASES=100000 cargo test --release --lib storage::journal::model_tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{Journal, ALL_TREES};
use crate::storage::batch::{Entry, Scope};
use crate::storage::remote::{Queue, Work};

type Key = (u32, PathBuf);

const PATHS: [&str; 12] = [".", "a", "a/b", "a/b/c", "a/x", "d", "d/e", "-rf", "new\nline", "sp ace", "#h", "d/e/f;g"];

#[derive(Default)]
struct Model {
    /// Queued and not acknowledged since (or covered by a finished full sync).
    must: BTreeSet<Key>,
    /// Acknowledged and not queued since.
    acked: BTreeSet<Key>,
    /// Trees whose full sync was asked for and not done since.
    full: BTreeSet<u32>,
    /// Bumped each time a path is queued (a push taken before that does not cover it).
    generation: BTreeMap<Key, u64>,
    /// Bumped each time a tree's full sync is asked for.
    full_generation: BTreeMap<u32, u64>,
}

/// Work in flight, with what the model knew when it was taken.
struct Flight {
    work: Work,
    /// The paths it covers and their generation at take time.
    keys: Vec<(Key, u64)>,
    full_generation: u64,
}

impl Model {
    fn queued(&mut self, k: &Key) {
        self.must.insert(k.clone());
        self.acked.remove(k);
        *self.generation.entry(k.clone()).or_default() += 1;
    }

    fn full_sync_asked(&mut self, t: u32) {
        self.full.insert(t);
        *self.full_generation.entry(t).or_default() += 1;
    }

    fn taken(&self, work: Work) -> Flight {
        let gen = |k: &Key| self.generation.get(k).copied().unwrap_or(0);
        let (keys, full_generation) = match &work {
            Work::Batch(b) => {
                (b.iter().map(|(_, e)| ((e.tree, e.path.clone()), 0)).map(|(k, _)| (k.clone(), gen(&k))).collect(), 0)
            }
            // A full sync covers what was queued in its tree before it started.
            Work::FullSync(t) => (
                self.must.iter().filter(|(kt, _)| kt == t).map(|k| (k.clone(), gen(k))).collect(),
                self.full_generation.get(t).copied().unwrap_or(0),
            ),
        };
        Flight { work, keys, full_generation }
    }

    fn done(&mut self, f: &Flight, ok: bool) {
        if !ok {
            return;
        }
        for (k, g) in &f.keys {
            if self.generation.get(k).copied().unwrap_or(0) == *g {
                self.must.remove(k);
                if matches!(f.work, Work::Batch(_)) {
                    self.acked.insert(k.clone());
                }
            }
        }
        if let Work::FullSync(t) = f.work {
            if self.full_generation.get(&t).copied().unwrap_or(0) == f.full_generation {
                self.full.remove(&t);
            }
        }
    }

    /// Checks a replay of the journal against the model.
    fn check(&self, pending: &BTreeSet<Key>, full_sync: &BTreeSet<u32>) -> Result<(), String> {
        if full_sync.contains(&ALL_TREES) {
            return Err("a healthy journal asked for a repair".into());
        }
        if let Some(k) = self.must.iter().find(|k| !pending.contains(*k) && !full_sync.contains(&k.0)) {
            return Err(format!("{k:?} lost: neither pending nor covered by a full sync"));
        }
        if let Some(t) = self.full.difference(full_sync).next() {
            return Err(format!("the full sync of tree {t} was lost"));
        }
        if let Some(k) = self.acked.intersection(pending).next() {
            return Err(format!("{k:?} is pending again after its push was acknowledged"));
        }
        Ok(())
    }
}

/// A scratch directory, on tmpfs when there is one (every enqueue fsyncs).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("temp dir")
}

fn scope(rng: &mut fastrand::Rng) -> Scope {
    [Scope::Path, Scope::Tree, Scope::Gone, Scope::Replace][rng.usize(..4)]
}

/// Replays the journal the way a restart does (the queue must be dropped): what is pending.
fn replay(dir: &Path) -> (BTreeSet<Key>, BTreeSet<u32>, usize) {
    let (_, r) = Journal::open(&dir.join("r.journal")).expect("replay");
    let keys: BTreeSet<Key> = r.pending.iter().map(|(_, e)| (e.tree, e.path.clone())).collect();
    (keys, r.full_sync, r.pending.len())
}

/// One random sequence; `Err` describes the failed check with the steps so far.
fn sequence(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = scratch();
    let max_pending = if rng.u8(..3) == 0 { rng.usize(2..10) } else { 10_000 };
    let open = || Queue::open(dir.path(), "r", max_pending).expect("open");
    let mut q = open();
    let mut m = Model::default();
    let mut flights: Vec<Flight> = Vec::new();
    let mut log: Vec<String> = Vec::new();
    for _ in 0..rng.usize(20..200) {
        match rng.u8(..20) {
            0..=6 => {
                let es: Vec<Entry> = (0..rng.usize(1..5))
                    .map(|_| Entry::new(rng.u32(..3), PATHS[rng.usize(..PATHS.len())], scope(&mut rng)))
                    .collect();
                for e in &es {
                    m.queued(&(e.tree, e.path.clone()));
                }
                let out = q.enqueue(&es);
                for t in &out.collapsed {
                    m.full_sync_asked(*t);
                }
                log.push(format!("enqueue {:?} collapsed {:?}", es, out.collapsed));
            }
            7..=10 => {
                if let Some(w) = q.next(rng.usize(1..6)) {
                    log.push(format!("take {w:?}"));
                    flights.push(m.taken(w));
                }
            }
            11..=15 if !flights.is_empty() => {
                let f = flights.swap_remove(rng.usize(..flights.len()));
                let ok = rng.u8(..3) != 0;
                log.push(format!("done {:?} ok={ok}", f.work));
                m.done(&f, ok);
                q.done(f.work, ok);
            }
            16 => {
                let t = rng.u32(..3);
                m.full_sync_asked(t);
                q.request_full_sync(t);
                log.push(format!("full sync {t}"));
            }
            17 => {
                // Restart: whatever was in flight is abandoned (never acknowledged).
                drop(q);
                flights.clear();
                let (pending, full_sync, n) = replay(dir.path());
                log.push(format!("reopen: pending {pending:?}, full syncs {full_sync:?}"));
                m.check(&pending, &full_sync).map_err(|e| format!("{e}\n{}", log.join("\n")))?;
                q = open();
                if q.depth().0 != n {
                    return Err(format!("the queue holds {} paths, the journal {n}", q.depth().0));
                }
            }
            _ => {}
        }
    }
    drop(q);
    let (pending, full_sync, _) = replay(dir.path());
    m.check(&pending, &full_sync).map_err(|e| format!("at the end: {e}\n{}", log.join("\n")))
}

#[test]
fn random_histories_lose_nothing_across_reopens() {
    let cases = std::env::var("NFS_GUARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150u64);
    let seed = std::env::var("NFS_GUARD_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x006d_6f64_656c_u64);
    for n in 0..cases {
        let s = seed ^ n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if let Err(e) = sequence(s) {
            panic!("sequence {n} (seed {s}) failed: {e}");
        }
    }
}

/// Found by the model: a path whose push was in flight when a full sync of its tree was asked for,
/// put back when that push failed, then covered by the full sync, then changed again: the new change
/// merged into the put-back entry in memory (nothing new to journal), but the journal had dropped
/// that entry at the full-sync record, so a restart lost the change.
#[test]
fn a_change_after_a_full_sync_covered_a_failed_push_survives_a_restart() {
    let dir = scratch();
    let d = Entry::new(0, "d", Scope::Path);
    let q = Queue::open(dir.path(), "r", 100).expect("open");
    let _ = q.enqueue(std::slice::from_ref(&d));
    let push = q.next(10).expect("a batch");
    q.request_full_sync(0);
    q.done(push, false);
    let full = q.next(10).expect("the full sync");
    assert_eq!(full, Work::FullSync(0));
    q.done(full, true);
    // `d` changes after the full sync: this change must survive a restart.
    let _ = q.enqueue(std::slice::from_ref(&d));
    drop(q);
    let (pending, full_sync, _) = replay(dir.path());
    assert!(pending.contains(&(0, PathBuf::from("d"))) || full_sync.contains(&0), "{pending:?} {full_sync:?}");
}

/// Found by the model: a compaction (an overfull queue collapsing) while a full sync ran rewrote the
/// journal without that full sync (it was no longer "asked for", only running): a restart before it
/// finished forgot it, and with it every path the earlier collapse had folded into it.
#[test]
fn a_compaction_while_a_full_sync_runs_keeps_it_across_a_restart() {
    let dir = scratch();
    let q = Queue::open(dir.path(), "r", 2).expect("open");
    let three: Vec<Entry> = ["a", "b", "c"].iter().map(|p| Entry::new(0, p, Scope::Path)).collect();
    assert_eq!(q.enqueue(&three).collapsed, [0]);
    let full = q.next(10).expect("the full sync");
    assert_eq!(full, Work::FullSync(0));
    // While it runs, tree 1 overflows: the journal is compacted.
    let others: Vec<Entry> = ["x", "y", "z"].iter().map(|p| Entry::new(1, p, Scope::Path)).collect();
    assert_eq!(q.enqueue(&others).collapsed, [1]);
    drop(q);
    let (_, full_sync, _) = replay(dir.path());
    assert_eq!(full_sync, [0, 1].into(), "the running full sync of tree 0 is still owed");
}

/// Found by the model (a long run): a batch in flight when its tree collapsed into a full sync was
/// kept live by that compaction (after the full-sync record), then dropped from memory as covered
/// when its push failed: the journal still held it, so a restart queued the path again even after a
/// later push of it was acknowledged.
#[test]
fn a_failed_push_covered_by_a_collapse_is_not_replayed_after_a_later_ack() {
    let dir = scratch();
    let a = Entry::new(0, "a", Scope::Path);
    let q = Queue::open(dir.path(), "r", 2).expect("open");
    let _ = q.enqueue(std::slice::from_ref(&a));
    let push = q.next(10).expect("a batch");
    let more: Vec<Entry> = ["b", "c", "d"].iter().map(|p| Entry::new(0, p, Scope::Path)).collect();
    assert_eq!(q.enqueue(&more).collapsed, [0]);
    q.done(push, false);
    let full = q.next(10).expect("the full sync");
    q.done(full, true);
    let _ = q.enqueue(std::slice::from_ref(&a));
    let push = q.next(10).expect("a batch");
    q.done(push, true);
    drop(q);
    let (pending, full_sync, _) = replay(dir.path());
    assert!(pending.is_empty() && full_sync.is_empty(), "{pending:?} {full_sync:?}");
}
