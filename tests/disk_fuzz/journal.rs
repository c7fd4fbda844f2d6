//! The storage journal (`storage::journal`): valid journals written through the real queue (and
//! version-1 files encoded here), then truncated, bit-flipped, overwritten with huge length fields,
//! spliced with duplicated, moved or deleted chunks, garbage, or whole records with valid checksums
//! and absurd content. `Journal::open` must return `Ok` (or, with a damaged magic, an error naming the
//! file), never panic or hang; what it replays must be paths that were really written; a torn tail
//! loses only the record it cut; any other damage that changed what is pending asks for a full sync
//! of every tree; and the state it replays is what the next open replays again.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nfs_guard::storage::batch::{Entry, Scope};
use nfs_guard::storage::journal::{Journal, ALL_TREES};
use nfs_guard::storage::remote::{Queue, Work};

use super::harness::{self, chunk, flip_bit, random_bytes, set_byte};

const MAGIC_V1: &[u8] = b"NFSGUARD-JOURNAL-1\n";
const MAGIC_V2: &[u8] = b"NFSGUARD-JOURNAL-2\n";
/// `format::MAX_SEQ` and `format::MAX_RECORD` (crate-private): beyond them a number is damage.
const MAX_SEQ: u64 = 1 << 62;
const MAX_RECORD: u32 = 1 << 20;

/// What one open replayed: `(seq, tree, path, scope)` oldest first, and the full syncs asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seen {
    pending: Vec<(u64, u32, Vec<u8>, Scope)>,
    full_sync: BTreeSet<u32>,
}

impl Seen {
    fn of(r: &nfs_guard::storage::journal::Replayed) -> Seen {
        Seen {
            pending: r
                .pending
                .iter()
                .map(|(s, e)| (s, e.tree, e.path.as_os_str().as_bytes().to_vec(), e.scope))
                .collect(),
            full_sync: r.full_sync.clone(),
        }
    }

    fn keys(&self) -> BTreeSet<(u32, Vec<u8>)> {
        self.pending.iter().map(|(_, t, p, _)| (*t, p.clone())).collect()
    }

    /// Is everything `base` has pending still pending here, or covered by a full sync of its tree?
    fn covers(&self, base: &Seen) -> Result<(), String> {
        if self.full_sync.contains(&ALL_TREES) {
            return Ok(());
        }
        let keys = self.keys();
        for (t, p) in base.keys() {
            if !keys.contains(&(t, p.clone())) && !self.full_sync.contains(&t) {
                return Err(format!(
                    "pending path {:?} of tree {t} lost without a full sync",
                    String::from_utf8_lossy(&p)
                ));
            }
        }
        if let Some(t) = base.full_sync.difference(&self.full_sync).next() {
            return Err(format!("the full sync of tree {t} was lost"));
        }
        Ok(())
    }
}

/// A valid journal and what it holds.
pub struct Base {
    v1: bool,
    bytes: Vec<u8>,
    /// Every `(tree, path)` ever written to it.
    written: BTreeSet<(u32, Vec<u8>)>,
    /// Where each record ends (the magic's end first).
    bounds: Vec<usize>,
    seen: Seen,
}

fn names(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        &b"a"[..],
        b"dir",
        b"dir/a",
        b"dir/sub/b",
        b"a\nb",
        b"-rf",
        b"#x",
        b";ls",
        b" sp ",
        b"\xff\xfe",
        b"dir/\x01\x7f",
        b".",
        b"tab\there",
        b"--delete",
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    v.push(vec![b'l'; 255]);
    for _ in 0..6 {
        // Any bytes but NUL, components separated by '/', none empty, "." or "..".
        let n: Vec<u8> = (0..rng.usize(1..12)).map(|_| rng.u8(1..)).collect();
        let n: Vec<u8> = n
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty() && *c != b"." && *c != b"..")
            .collect::<Vec<_>>()
            .join(&b'/');
        if !n.is_empty() {
            v.push(n);
        }
    }
    v
}

fn scope(rng: &mut fastrand::Rng) -> Scope {
    [Scope::Path, Scope::Tree, Scope::Gone, Scope::Replace][rng.usize(..4)]
}

fn entry(tree: u32, path: &[u8], scope: Scope) -> Entry {
    Entry::new(tree, PathBuf::from(std::ffi::OsStr::from_bytes(path)), scope)
}

/// Opens a copy of `bytes` in `dir`; `Err` is the rendered error.
fn open_bytes(dir: &Path, bytes: &[u8]) -> Result<Seen, String> {
    let p = dir.join("probe.journal");
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
    let r = Journal::open(&p).map(|(_, r)| Seen::of(&r)).map_err(|e| nfs_guard::chain::render_chain(&e));
    let _ = std::fs::remove_file(&p);
    r
}

/// Record ends of a version-2 file (stops at the first bad length).
fn v2_bounds(bytes: &[u8]) -> Vec<usize> {
    let mut out = vec![MAGIC_V2.len()];
    let mut at = MAGIC_V2.len();
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        at += 8 + len;
        if at > bytes.len() {
            break;
        }
        out.push(at);
    }
    out
}

/// A version-2 journal written by a real queue: enqueues, batches taken, acked or put back, full
/// syncs, collapses (compactions) when `max_pending` is small, batches still in flight at the end.
fn v2_base(dir: &Path, rng: &mut fastrand::Rng) -> Base {
    let names = names(rng);
    let qdir = dir.join(format!("q{}", rng.u32(..)));
    std::fs::create_dir_all(&qdir).unwrap();
    let max_pending = if rng.u8(..4) == 0 { rng.usize(3..12) } else { 10_000 };
    let mut written = BTreeSet::new();
    {
        let q = Queue::open(&qdir, "r", max_pending).unwrap();
        let mut flight: Vec<Work> = Vec::new();
        for _ in 0..rng.usize(1..60) {
            match rng.u8(..10) {
                0..=4 => {
                    let es: Vec<Entry> = (0..rng.usize(1..6))
                        .map(|_| entry(rng.u32(..3), &names[rng.usize(..names.len())], scope(rng)))
                        .collect();
                    written.extend(es.iter().map(|e| (e.tree, e.path.as_os_str().as_bytes().to_vec())));
                    let _ = q.enqueue(&es);
                }
                5..=6 => flight.extend(q.next(rng.usize(1..8))),
                7..=8 if !flight.is_empty() => {
                    let w = flight.swap_remove(rng.usize(..flight.len()));
                    q.done(w, rng.u8(..4) != 0);
                }
                9 if rng.u8(..4) == 0 => q.request_full_sync(rng.u32(..3)),
                _ => {}
            }
        }
        q.flush().wait_blocking().unwrap();
    }
    let bytes = std::fs::read(qdir.join("r.journal")).unwrap();
    std::fs::remove_dir_all(&qdir).unwrap();
    let seen = open_bytes(dir, &bytes).unwrap();
    assert!(!seen.full_sync.contains(&ALL_TREES), "a healthy journal asks for no repair: {seen:?}");
    Base { v1: false, bounds: v2_bounds(&bytes), bytes, written, seen }
}

/// A version-1 journal (bare records, as the previous release wrote them).
fn v1_base(dir: &Path, rng: &mut fastrand::Rng) -> Base {
    let names = names(rng);
    let mut bytes = MAGIC_V1.to_vec();
    let mut bounds = vec![bytes.len()];
    let mut written = BTreeSet::new();
    let mut seq = 0u64;
    for _ in 0..rng.usize(1..40) {
        match rng.u8(..10) {
            0..=5 => {
                let (tree, path) = (rng.u32(..3), names[rng.usize(..names.len())].clone());
                written.insert((tree, path.clone()));
                bytes.push(b'A');
                bytes.extend_from_slice(&seq.to_le_bytes());
                bytes.extend_from_slice(&tree.to_le_bytes());
                bytes.push(rng.u8(..4));
                bytes.extend_from_slice(&u32::try_from(path.len()).unwrap().to_le_bytes());
                bytes.extend_from_slice(&path);
                seq += 1;
            }
            6 => {
                bytes.push(b'K');
                bytes.extend_from_slice(&rng.u64(..=seq).to_le_bytes());
            }
            7 => {
                let n = rng.u32(..4);
                bytes.push(b'R');
                bytes.extend_from_slice(&n.to_le_bytes());
                for _ in 0..n {
                    let lo = rng.u64(..=seq);
                    bytes.extend_from_slice(&lo.to_le_bytes());
                    bytes.extend_from_slice(&rng.u64(lo..=seq).to_le_bytes());
                }
            }
            _ => {
                bytes.push(if rng.bool() { b'F' } else { b'f' });
                bytes.extend_from_slice(&rng.u32(..3).to_le_bytes());
            }
        }
        bounds.push(bytes.len());
    }
    let seen = open_bytes(dir, &bytes).unwrap();
    Base { v1: true, bytes, written, bounds, seen }
}

impl Base {
    /// Is `bytes` (a version-2 journal) made only of records of `self`, whole, in any order or
    /// number, with at most a torn-looking tail?
    fn is_splice(&self, bytes: &[u8]) -> bool {
        let Some(mut rest) = bytes.strip_prefix(MAGIC_V2) else { return false };
        let mine: BTreeSet<&[u8]> = self.bounds.windows(2).map(|w| &self.bytes[w[0]..w[1]]).collect();
        while !rest.is_empty() {
            let len = rest.get(..4).map_or(usize::MAX, |l| u32::from_le_bytes(l.try_into().unwrap()) as usize);
            match rest.get(..len.saturating_add(8)) {
                Some(rec) if mine.contains(rec) => rest = &rest[rec.len()..],
                _ => return looks_torn(rest) && !whole_with_bad_length(rest),
            }
        }
        true
    }

    /// The end of the last record of `self` that `bytes` holds unchanged from the start.
    fn intact_prefix(&self, bytes: &[u8]) -> usize {
        *self.bounds.iter().rev().find(|b| bytes.get(..**b) == Some(&self.bytes[..**b])).unwrap_or(&0)
    }
}

/// Is `rest` the start of a record whose header or body runs past the end of the file?
fn looks_torn(rest: &[u8]) -> bool {
    match rest.get(..4) {
        None => true,
        Some(len) => {
            let len = u32::from_le_bytes(len.try_into().unwrap());
            len <= MAX_RECORD && rest.len() < 8 + len as usize
        }
    }
}

/// Is `rest` a whole record with a valid checksum under the length it really has?
fn whole_with_bad_length(rest: &[u8]) -> bool {
    rest.len() >= 8 && {
        let mut h = crc32fast::Hasher::new();
        h.update(&u32::try_from(rest.len() - 8).unwrap().to_le_bytes());
        h.update(&rest[8..]);
        h.finalize().to_le_bytes() == rest[4..8]
    }
}

/// One framed (version-2) record with a valid checksum.
fn frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap().to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(body);
    let mut out = len.to_vec();
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn add_body(seq: u64, tree: u32, scope: u8, path: &[u8], claimed_len: u32) -> Vec<u8> {
    let mut b = vec![b'A'];
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&tree.to_le_bytes());
    b.push(scope);
    b.extend_from_slice(&claimed_len.to_le_bytes());
    b.extend_from_slice(path);
    b
}

/// A record with a valid checksum whose content no version ever wrote: absurd sequence numbers,
/// inverted or absurd ack ranges, an unknown kind or scope, a body longer or shorter than it says.
fn insane_record(rng: &mut fastrand::Rng, base: &Base) -> (String, Vec<u8>) {
    let path = base.written.iter().next().map_or(b"x".to_vec(), |(_, p)| p.clone());
    let plen = u32::try_from(path.len()).unwrap();
    let seq = [MAX_SEQ + 1, u64::MAX, 1 << 63][rng.usize(..3)];
    let (what, body) = match rng.u8(..7) {
        0 => ("A with an absurd seq", add_body(seq, 0, 0, &path, plen)),
        1 => ("A with scope 9", add_body(1, 0, 9, &path, plen)),
        2 => ("A with trailing bytes", add_body(1, 0, 0, &path, plen.saturating_sub(1))),
        3 => {
            let mut b = vec![b'R'];
            b.extend_from_slice(&2u32.to_le_bytes());
            for (lo, hi) in [(0u64, 0u64), if rng.bool() { (9, 3) } else { (7, seq) }] {
                b.extend_from_slice(&lo.to_le_bytes());
                b.extend_from_slice(&hi.to_le_bytes());
            }
            ("R with an inverted or absurd range", b)
        }
        4 => {
            let mut b = vec![b'R'];
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.extend_from_slice(&[0; 16]);
            ("R claiming 2^32-1 ranges", b)
        }
        5 => ("an unknown kind", vec![b'Z', 1, 2, 3]),
        _ => ("an empty body", Vec::new()),
    };
    (what.to_owned(), frame(&body))
}

#[derive(Debug, Default)]
pub struct Tally {
    pub cases: u64,
    /// Opened with a full sync of every tree asked for.
    pub repaired: u64,
    /// Opened with nothing asked for (a torn tail cut, or damage that changed nothing).
    pub clean: u64,
    /// Refused (damaged magic), with an error naming the file.
    pub refused: u64,
    /// Version-1 cases.
    pub v1: u64,
    /// Replayed with the next sequence number beyond `MAX_SEQ` (see `open_checked`).
    pub seq_at_limit: u64,
    /// Mutations that made another valid journal of whole base records (see `case`).
    pub record_splices: u64,
}

pub struct Fuzz {
    dir: tempfile::TempDir,
    bases: Vec<Base>,
    /// Replay of a prefix `..end` of base `i`.
    prefixes: BTreeMap<(usize, usize), Seen>,
    pub tally: Tally,
}

impl std::fmt::Debug for Fuzz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bases, {:?}", self.bases.len(), self.tally)
    }
}

impl Fuzz {
    pub fn new(seed: u64) -> Fuzz {
        let dir = harness::scratch();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bases: Vec<Base> = (0..24).map(|_| v2_base(dir.path(), &mut rng)).collect();
        bases.extend((0..6).map(|_| v1_base(dir.path(), &mut rng)));
        Fuzz { dir, bases, prefixes: BTreeMap::new(), tally: Tally::default() }
    }

    pub fn base_count(&self) -> usize {
        self.bases.len()
    }

    pub fn base_len(&self, i: usize) -> usize {
        self.bases[i].bytes.len()
    }

    /// What base `i` cut at `end` (a record boundary) replays.
    fn prefix(&mut self, i: usize, end: usize) -> Seen {
        if let Some(s) = self.prefixes.get(&(i, end)) {
            return s.clone();
        }
        let s = open_bytes(self.dir.path(), &self.bases[i].bytes[..end]).unwrap();
        self.prefixes.insert((i, end), s.clone());
        s
    }

    /// Base `i` truncated at `cut`: only the record cut short may be lost, and nothing is asked for
    /// (version 1, which cannot tell a torn tail from damage, asks for a full sync).
    pub fn truncated(&mut self, i: usize, cut: usize) -> Result<(), String> {
        let magic = if self.bases[i].v1 { MAGIC_V1.len() } else { MAGIC_V2.len() };
        let bytes = self.bases[i].bytes[..cut].to_vec();
        let got = self.open_checked(i, &bytes, true)?;
        let Some(got) = got else {
            return if cut > 0 && cut < magic { Ok(()) } else { Err(format!("cut at {cut}: refused")) };
        };
        if cut < magic {
            return if cut == 0 && got == Seen::default() { Ok(()) } else { Err(format!("cut at {cut}: {got:?}")) };
        }
        let end = *self.bases[i].bounds.iter().rev().find(|b| **b <= cut).unwrap();
        let mut want = self.prefix(i, end);
        if self.bases[i].v1 && end < cut {
            want.full_sync.insert(ALL_TREES);
        }
        if got != want {
            return Err(format!("cut at {cut} (last whole record ends at {end}): replayed {got:?}, expected {want:?}"));
        }
        Ok(())
    }

    /// Opens `bytes` (a mutation of base `i`) and checks what every open must hold; `None`: refused.
    fn open_checked(&mut self, i: usize, bytes: &[u8], truncation: bool) -> Result<Option<Seen>, String> {
        let base = &self.bases[i];
        let path = self.dir.path().join("case.journal");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, bytes).unwrap();
        self.tally.cases += 1;
        self.tally.v1 += u64::from(base.v1);
        let (j, r) = match Journal::open(&path) {
            Ok(x) => x,
            Err(e) => {
                let msg = nfs_guard::chain::render_chain(&e);
                let magic = if base.v1 { MAGIC_V1 } else { MAGIC_V2 };
                if bytes.starts_with(magic) {
                    return Err(format!("a file with an intact magic was refused: {msg}"));
                }
                if !msg.contains(&path.display().to_string()) {
                    return Err(format!("the error does not name the file: {msg}"));
                }
                self.tally.refused += 1;
                return Ok(None);
            }
        };
        let got = Seen::of(&r);
        if got.full_sync.contains(&ALL_TREES) {
            self.tally.repaired += 1;
        } else {
            self.tally.clean += 1;
        }
        // Version 1 has no checksums: a flipped bit in a name is another name, undetectably.
        if !base.v1 || truncation {
            if let Some((t, n)) = got.keys().difference(&base.written).next() {
                return Err(format!("replayed a path never written: tree {t}, {:?}", String::from_utf8_lossy(n)));
            }
        }
        // What was replayed (and repaired) is what the next open replays.
        let mut j = j;
        let seq = r.pending.next_seq();
        let appended = (got.pending.len() < 500).then(|| {
            let e = entry(1, b"appended after the open", Scope::Path);
            j.add(&[(seq, &e)]).wait_blocking().map(|()| (seq, 1, b"appended after the open".to_vec(), Scope::Path))
        });
        drop(j);
        let again = Journal::open(&path).map(|(_, r)| Seen::of(&r)).map_err(|e| nfs_guard::chain::render_chain(&e))?;
        let mut want = got.clone();
        if let Some(a) = appended {
            want.pending.push(a.map_err(|e| e.to_string())?);
        }
        if again != want {
            // Known (reported, left alone): a damaged number accepted at the limit (`MAX_SEQ`) makes the
            // next records numbered beyond it, which the next replay refuses as damage. Nothing is lost
            // (that replay asks for a full sync of every tree) and the rewrite heals the numbering.
            let at_limit = seq > MAX_SEQ && again.full_sync.contains(&ALL_TREES) && again.covers(&want).is_ok();
            if !at_limit {
                return Err(format!("the second open replayed {again:?}, the first {want:?}"));
            }
            self.tally.seq_at_limit += 1;
        }
        Ok(Some(got))
    }

    /// One case: a random base, truncated, or damaged one to three times.
    #[allow(clippy::too_many_lines, reason = "one match of every mutation")]
    pub fn case(&mut self, rng: &mut fastrand::Rng) -> Result<(), String> {
        let i = rng.usize(..self.bases.len());
        if rng.u8(..4) == 0 {
            let cut = rng.usize(..=self.bases[i].bytes.len());
            return self.truncated(i, cut);
        }
        let base = &self.bases[i];
        let magic = if base.v1 { MAGIC_V1.len() } else { MAGIC_V2.len() };
        let mut bytes = base.bytes.clone();
        let mut what = Vec::new();
        // Rarely the magic too; else only what follows it.
        let from = if rng.u8(..32) == 0 { 0 } else { magic };
        let rounds = rng.usize(1..=3);
        // One insane record alone (later insertions would land off the shifted boundaries).
        let mut insane_only = rounds == 1;
        for _ in 0..rounds {
            let len = bytes.len();
            let kind = rng.u8(..12);
            insane_only &= kind == 11;
            what.push(match kind {
                0..=1 => flip_bit(rng, &mut bytes, from),
                2 => set_byte(rng, &mut bytes, from),
                3 => {
                    // A huge, zero or off-by-one length field, at a record start or anywhere.
                    let at =
                        if rng.bool() { base.bounds[rng.usize(..base.bounds.len())] } else { rng.usize(from..=len) };
                    let at = at.min(len);
                    let v = [MAX_RECORD, MAX_RECORD + 1, u32::MAX, 0, 1 << 19, rng.u32(..)][rng.usize(..6)];
                    let end = (at + 4).min(len);
                    bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                    format!("u32 {v:#x} at {at}")
                }
                4 => {
                    let at = rng.usize(from..=len);
                    let v = [u64::MAX, MAX_SEQ, MAX_SEQ + 1, 1 << 63][rng.usize(..4)];
                    let end = (at + 8).min(len);
                    bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                    format!("u64 {v:#x} at {at}")
                }
                5 => {
                    let at = rng.usize(from..=len);
                    let g = random_bytes(rng, 1..64);
                    bytes.splice(at..at, g.iter().copied());
                    format!("{} garbage bytes inserted at {at}", g.len())
                }
                6 => {
                    let (a, b) = chunk(rng, len, from, 96);
                    let at = rng.usize(from..=len);
                    let c = bytes[a..b].to_vec();
                    bytes.splice(at..at, c);
                    format!("{a}..{b} duplicated at {at}")
                }
                7 => {
                    let (a, b) = chunk(rng, len, from, 96);
                    let c: Vec<u8> = bytes.drain(a..b).collect();
                    let at = rng.usize(from.min(bytes.len())..=bytes.len());
                    bytes.splice(at..at, c);
                    format!("{a}..{b} moved to {at}")
                }
                8 => {
                    // Never the end of the file: that is a truncation (`truncated`).
                    let (a, b) = chunk(rng, len.saturating_sub(1), from, 96);
                    bytes.drain(a..b);
                    format!("{a}..{b} deleted")
                }
                9 => {
                    let g = random_bytes(rng, 1..4096);
                    bytes.extend_from_slice(&g);
                    format!("{} garbage bytes appended", g.len())
                }
                10 => {
                    let g = random_bytes(rng, 0..4096);
                    bytes.truncate(magic);
                    bytes.extend_from_slice(&g);
                    format!("everything after the magic replaced by {} random bytes", g.len())
                }
                _ => {
                    // Inserted at a record boundary (of the base: later ones may have moved).
                    let at = base.bounds[rng.usize(..base.bounds.len())].min(len);
                    let (w, rec) = insane_record(rng, base);
                    bytes.splice(at..at, rec);
                    format!("{w} inserted at {at}")
                }
            });
        }
        let v1 = base.v1;
        let base_seen = base.seen.clone();
        let changed = bytes != self.bases[i].bytes;
        let got = self.open_checked(i, &bytes, false).map_err(|e| format!("{what:?}: {e}"))?;
        let Some(got) = got else { return Ok(()) };
        if !v1 && changed {
            // What follows the last intact record may look like a record cut short by a crash (then
            // what it hid is lost, as with a torn tail), unless it is a whole record whose length
            // alone was damaged (its checksum says so).
            let b = self.bases[i].intact_prefix(&bytes);
            let rest = &bytes[b..];
            let want =
                if looks_torn(rest) && !whole_with_bad_length(rest) { self.prefix(i, b) } else { base_seen.clone() };
            // Whole records of the base deleted, repeated or reordered (by a splice that happened to
            // fall on record boundaries, or to recreate a record byte for byte) are a valid journal of
            // another history: checksums cannot tell, and nothing is asked for.
            if self.bases[i].is_splice(&bytes) && !got.full_sync.contains(&ALL_TREES) {
                self.tally.record_splices += 1;
                return Ok(());
            }
            got.covers(&want).map_err(|e| {
                let b = &self.bases[i];
                format!("{what:?}: {e}; base {i} (records end at {:?}) replays {:?}; got {got:?}", b.bounds, b.seen)
            })?;
            if insane_only && bytes.starts_with(MAGIC_V2) {
                let mut want = base_seen;
                want.full_sync.insert(ALL_TREES);
                if got != want {
                    return Err(format!("{what:?}: replayed {got:?}, expected {want:?}"));
                }
            }
        }
        Ok(())
    }
}
