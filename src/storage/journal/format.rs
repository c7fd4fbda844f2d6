//! The journal's bytes: record encoding, and replay of a file's records into the pending state.
//! Pure (no I/O).
//!
//! Version 2 frames every record as `len:u32 crc:u32 body[len]` (little-endian; `crc` is CRC-32 of
//! `len` and `body`), so a damaged record is detected and skipped, and the records after it are found
//! again. Version 1 (still read, never written) is the bare bodies one after another.
//!
//! Bodies (paths are raw bytes, so every name Linux allows survives):
//! - `A seq:u64 tree:u32 scope:u8 len:u32 path` — a path is pending; the same `seq` again widens it;
//! - `R n:u32 (lo:u64 hi:u64)*n` — the `A` records with `seq` in these inclusive ranges were pushed;
//!   `K upto:u64` (version 1) acks every `seq <= upto`;
//! - `F tree:u32` / `f tree:u32` — a full sync of `tree` is needed / was done ([`ALL_TREES`]: every
//!   tree, asked for when damage may have hidden records).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::storage::batch::{Entry, PendingSet, Scope};

pub const MAGIC_V1: &[u8] = b"NFSGUARD-JOURNAL-1\n";
pub const MAGIC: &[u8] = b"NFSGUARD-JOURNAL-2\n";
/// A full sync of every tree (the tree of a damaged record is unknown).
pub const ALL_TREES: u32 = u32::MAX;
/// No record is larger (acks are split): a larger length is damage.
const MAX_RECORD: usize = 1 << 20;
/// Ack ranges per `R` record.
const RANGES_PER_RECORD: usize = 4096;
const HEADER: usize = 8;
/// Sequence numbers count records written (one per path change): beyond this they are damage, and
/// every `+ 1` on a valid one stays far from overflow.
pub const MAX_SEQ: u64 = 1 << 62;

/// What a journal file holds after replay.
#[derive(Debug, Default)]
pub struct Replayed {
    pub pending: PendingSet,
    pub full_sync: BTreeSet<u32>,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Add(u64, Entry),
    Acks(Vec<(u64, u64)>),
    FullSync(u32, bool),
    /// A full sync needed that leaves the tree's queued paths queued (a storage agent's journal to
    /// its peer: they may become orphans, which need their names).
    FullSyncKeep(u32),
}

fn scope_byte(s: Scope) -> u8 {
    match s {
        Scope::Path => 0,
        Scope::Tree => 1,
        Scope::Gone => 2,
        Scope::Replace => 3,
    }
}

/// Appends one framed record with `body` to `out`.
fn frame(out: &mut Vec<u8>, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(body);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(body);
}

pub fn encode_add(out: &mut Vec<u8>, seq: u64, e: &Entry) {
    let bytes = e.path.as_os_str().as_bytes();
    let mut b = Vec::with_capacity(18 + bytes.len());
    b.push(b'A');
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&e.tree.to_le_bytes());
    b.push(scope_byte(e.scope));
    b.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    b.extend_from_slice(bytes);
    frame(out, &b);
}

/// Acks of these inclusive ranges (as many records as needed).
pub fn encode_acks(out: &mut Vec<u8>, ranges: &[(u64, u64)]) {
    for chunk in ranges.chunks(RANGES_PER_RECORD) {
        let mut b = Vec::with_capacity(5 + chunk.len() * 16);
        b.push(b'R');
        b.extend_from_slice(&u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_le_bytes());
        for (lo, hi) in chunk {
            b.extend_from_slice(&lo.to_le_bytes());
            b.extend_from_slice(&hi.to_le_bytes());
        }
        frame(out, &b);
    }
}

pub fn encode_full_sync(out: &mut Vec<u8>, tree: u32, needed: bool) {
    let mut b = vec![if needed { b'F' } else { b'f' }];
    b.extend_from_slice(&tree.to_le_bytes());
    frame(out, &b);
}

pub fn encode_full_sync_keep(out: &mut Vec<u8>, tree: u32) {
    let mut b = vec![b'G'];
    b.extend_from_slice(&tree.to_le_bytes());
    frame(out, &b);
}

/// A whole file holding only this state (the full syncs first: the paths after them stay live).
pub fn encode_state<'a>(live: impl IntoIterator<Item = (u64, &'a Entry)>, full_sync: &BTreeSet<u32>) -> Vec<u8> {
    let mut buf = MAGIC.to_vec();
    for tree in full_sync {
        encode_full_sync(&mut buf, *tree, true);
    }
    for (seq, e) in live {
        encode_add(&mut buf, seq, e);
    }
    buf
}

/// Sorted inclusive ranges of consecutive numbers: `[1,2,3,7]` -> `[(1,3),(7,7)]`.
pub fn ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut v = seqs.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in v {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(s) => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// A cursor over bytes; every read is bounds-checked.
struct Cur<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.d.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(v)
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.arr()?))
    }
}

/// Decodes one record body at the cursor.
fn decode(c: &mut Cur<'_>) -> Option<Rec> {
    match c.u8()? {
        b'A' => {
            let seq = c.u64()?;
            let tree = c.u32()?;
            let scope = match c.u8()? {
                0 => Scope::Path,
                1 => Scope::Tree,
                2 => Scope::Gone,
                3 => Scope::Replace,
                _ => return None,
            };
            let len = c.u32()? as usize;
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(c.bytes(len)?));
            Some(Rec::Add(seq, Entry { tree, path, scope }))
        }
        b'K' => Some(Rec::Acks(vec![(0, c.u64()?)])),
        b'R' => {
            let n = c.u32()? as usize;
            let mut ranges = Vec::with_capacity(n.min(RANGES_PER_RECORD));
            for _ in 0..n {
                ranges.push((c.u64()?, c.u64()?));
            }
            Some(Rec::Acks(ranges))
        }
        b'F' => Some(Rec::FullSync(c.u32()?, true)),
        b'f' => Some(Rec::FullSync(c.u32()?, false)),
        b'G' => Some(Rec::FullSyncKeep(c.u32()?)),
        _ => None,
    }
}

/// The framed record at `at`, if one is whole and its checksum holds: (record, end).
fn framed(data: &[u8], at: usize) -> Option<(Rec, usize)> {
    let mut c = Cur { d: data, at };
    let len_bytes = c.arr::<4>()?;
    let crc = c.u32()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let body = c.bytes(len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(body);
    if h.finalize() != crc {
        return None;
    }
    let mut b = Cur { d: body, at: 0 };
    let rec = decode(&mut b)?;
    // A body longer than its record is not one this version wrote.
    (b.at == body.len()).then_some((rec, c.at))
}

/// Is the rest of `data` from `at` the beginning of a record that was cut short (its header, or
/// its body, runs past the end)? Not when it is a whole record whose length field alone is damaged
/// (its checksum holds under the length it really has): that record was written whole.
fn torn(data: &[u8], at: usize) -> bool {
    let rest = &data[at..];
    let Some(len) = rest.get(..4) else { return true };
    let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
    len <= MAX_RECORD && rest.len() < HEADER + len && !whole_with_damaged_length(rest)
}

fn whole_with_damaged_length(rest: &[u8]) -> bool {
    let (Some(crc), Ok(real)) = (rest.get(4..HEADER), u32::try_from(rest.len().saturating_sub(HEADER))) else {
        return false;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&real.to_le_bytes());
    h.update(&rest[HEADER..]);
    h.finalize().to_le_bytes() == crc
}

/// Records of one path keyed by sequence number (not by path: a path queued again while its older
/// record is being pushed has two live records, and the older one's ack must not drop the newer).
#[derive(Debug, Default)]
struct Replay {
    live: BTreeMap<u64, Entry>,
    full_sync: BTreeSet<u32>,
    next_seq: u64,
}

/// Does `rec` hold only sane numbers (sequence numbers up to [`MAX_SEQ`], ranges `lo <= hi`)?
fn sane(rec: &Rec) -> bool {
    match rec {
        Rec::Add(seq, _) => *seq <= MAX_SEQ,
        Rec::Acks(ranges) => ranges.iter().all(|(lo, hi)| lo <= hi && *hi <= MAX_SEQ),
        Rec::FullSync(..) | Rec::FullSyncKeep(_) => true,
    }
}

impl Replay {
    /// Applies `rec`; false (and nothing applied) when it holds absurd numbers: damage.
    fn apply(&mut self, rec: Rec) -> bool {
        if !sane(&rec) {
            return false;
        }
        match rec {
            Rec::Add(seq, e) => {
                self.next_seq = self.next_seq.max(seq.saturating_add(1));
                match self.live.get_mut(&seq) {
                    // The same number again: that entry's scope was widened.
                    Some(cur) if cur.tree == e.tree && cur.path == e.path => cur.scope = cur.scope.then(e.scope),
                    _ => {
                        self.live.insert(seq, e);
                    }
                }
            }
            Rec::Acks(ranges) => {
                for (lo, hi) in ranges {
                    self.next_seq = self.next_seq.max(hi.saturating_add(1));
                    let doomed: Vec<u64> = self.live.range(lo..=hi).map(|(s, _)| *s).collect();
                    for s in doomed {
                        self.live.remove(&s);
                    }
                }
            }
            Rec::FullSync(tree, true) => {
                self.full_sync.insert(tree);
                self.live.retain(|_, e| e.tree != tree);
            }
            Rec::FullSync(tree, false) => {
                self.full_sync.remove(&tree);
            }
            Rec::FullSyncKeep(tree) => {
                self.full_sync.insert(tree);
            }
        }
        true
    }
}

/// What parsing a file found.
#[derive(Debug, Default)]
pub struct Parsed {
    pub replayed: Replayed,
    /// End of the last whole record: what follows is a torn tail (cut off).
    pub good_end: usize,
    /// Bytes skipped before `good_end` (damage, not a torn tail), and where the first damage was.
    pub damaged: Option<(usize, usize)>,
    /// Two live records of one path became one entry: the file must be compacted.
    pub merged: bool,
}

impl Parsed {
    fn finish(r: Replay, good_end: usize, damaged: Option<(usize, usize)>) -> Parsed {
        let records = r.live.len();
        let mut pending = PendingSet::new(r.next_seq);
        for (seq, e) in r.live {
            pending.insert_with_seq(seq, e);
        }
        let merged = pending.len() < records;
        let mut full_sync = r.full_sync;
        if damaged.is_some() {
            full_sync.insert(ALL_TREES);
        }
        Parsed { replayed: Replayed { pending, full_sync }, good_end, damaged, merged }
    }
}

/// Parses a whole file (magic included). `None`: not a journal (foreign magic).
pub fn parse(data: &[u8]) -> Option<Parsed> {
    if data.is_empty() {
        return Some(Parsed::default());
    }
    if let Some(body) = data.strip_prefix(MAGIC_V1) {
        return Some(parse_v1(body));
    }
    let body = data.strip_prefix(MAGIC)?;
    let mut r = Replay::default();
    let (mut at, mut good_end) = (0, 0);
    let mut damaged: Option<(usize, usize)> = None;
    while at < body.len() {
        if let Some((rec, end)) = framed(body, at) {
            if !r.apply(rec) {
                damaged.get_or_insert((MAGIC.len() + at, 0)).1 += end - at;
            }
            at = end;
            good_end = end;
            continue;
        }
        // Not a record here: find the next one. None at all: a record cut short by a crash
        // mid-append (never acknowledged) is a torn tail, cut silently; anything else is damage.
        let next = (at + 1..body.len()).find(|&s| framed(body, s).is_some());
        if next.is_none() && torn(body, at) {
            break;
        }
        let next = next.unwrap_or(body.len());
        let d = damaged.get_or_insert((MAGIC.len() + at, 0));
        d.1 += next - at;
        at = next;
    }
    Some(Parsed::finish(r, MAGIC.len() + good_end, damaged))
}

/// Version 1 has no checksums: whatever does not parse may be a torn tail or damage that hid later
/// records, so any leftover asks for a full sync.
fn parse_v1(body: &[u8]) -> Parsed {
    let mut r = Replay::default();
    let mut c = Cur { d: body, at: 0 };
    let mut good = 0;
    let mut damaged: Option<(usize, usize)> = None;
    while let Some(rec) = decode(&mut c) {
        if !r.apply(rec) {
            damaged.get_or_insert((MAGIC_V1.len() + good, 0)).1 += c.at - good;
        }
        good = c.at;
    }
    let leftover = body.len() - good;
    if leftover > 0 {
        damaged.get_or_insert((MAGIC_V1.len() + good, 0)).1 += leftover;
    }
    Parsed::finish(r, MAGIC_V1.len() + good, damaged)
}
