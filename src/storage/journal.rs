//! The durable pending set of one remote: an append-only binary log under the state directory,
//! replayed at start, so a crash, `kill -9` or a restart loses no queued path.
//!
//! Records (integers little-endian; paths are raw bytes, so every name Linux allows survives):
//! - `A seq:u64 tree:u32 scope:u8 len:u32 path` — a path is pending (fdatasync'd per batch);
//! - `R n:u32 (lo:u64 hi:u64)*n` — the `A` records with `seq` in these inclusive ranges were pushed
//!   (not synced: a lost ack only repeats a push); `K upto:u64` (older form) acks every `seq <= upto`;
//! - `F tree:u32` / `f tree:u32` — a full sync of `tree` is needed / was done.
//!
//! A torn tail (crash mid-append) is cut off at the last whole record. The log is compacted (rewritten
//! atomically with only the live records) when it grows well past its live content. This module owns
//! the file format only; what is pending is decided by `remote`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::batch::{Entry, PendingSet, Scope};
use crate::sys::fsutil::write_atomic;

const MAGIC: &[u8] = b"NFSGUARD-JOURNAL-1\n";

/// What a journal file holds after replay.
#[derive(Debug, Default)]
pub struct Replayed {
    pub pending: PendingSet,
    pub full_sync: BTreeSet<u32>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Current file size.
    size: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}")]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn encode_add(out: &mut Vec<u8>, seq: u64, e: &Entry) {
    let bytes = e.path.as_os_str().as_bytes();
    out.push(b'A');
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&e.tree.to_le_bytes());
    out.push(match e.scope {
        Scope::Path => 0,
        Scope::Tree => 1,
        Scope::Gone => 2,
        Scope::Replace => 3,
    });
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Journal records applied in order, keyed by sequence number (not by path: a path queued again
/// while its older record is being pushed has two live records, and the older one's ack must not
/// drop the newer one).
#[derive(Debug, Default)]
struct Replay {
    live: BTreeMap<u64, Entry>,
    full_sync: BTreeSet<u32>,
    next_seq: u64,
}

impl Replay {
    fn add(&mut self, seq: u64, e: Entry) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        match self.live.get_mut(&seq) {
            // The same number again: that entry's scope was widened.
            Some(cur) if cur.tree == e.tree && cur.path == e.path => cur.scope = cur.scope.then(e.scope),
            _ => {
                self.live.insert(seq, e);
            }
        }
    }

    fn ack(&mut self, lo: u64, hi: u64) {
        self.next_seq = self.next_seq.max(hi.saturating_add(1));
        let doomed: Vec<u64> = self.live.range(lo..=hi).map(|(s, _)| *s).collect();
        for s in doomed {
            self.live.remove(&s);
        }
    }

    fn full_sync(&mut self, tree: u32, needed: bool) {
        if needed {
            self.full_sync.insert(tree);
            self.live.retain(|_, e| e.tree != tree);
        } else {
            self.full_sync.remove(&tree);
        }
    }

    /// The pending set (records of one path merged, oldest place first) and whether merging dropped
    /// numbers the file still holds (then the file is compacted, so their acks cannot go missing).
    fn finish(self) -> (Replayed, bool) {
        let records = self.live.len();
        let mut pending = PendingSet::new(self.next_seq);
        for (seq, e) in self.live {
            pending.insert_with_seq(seq, e);
        }
        let merged = pending.len() < records;
        (Replayed { pending, full_sync: self.full_sync }, merged)
    }
}

/// Parses `data` (after the magic); returns the state, the length of the whole-record prefix, and
/// whether records of one path were merged.
fn parse(data: &[u8]) -> (Replayed, usize, bool) {
    fn take<const N: usize>(d: &[u8], at: &mut usize) -> Option<[u8; N]> {
        let v: [u8; N] = d.get(*at..*at + N)?.try_into().ok()?;
        *at += N;
        Some(v)
    }
    let mut r = Replay::default();
    let mut at = 0;
    loop {
        let mut cur = at;
        let Some([op]) = take::<1>(data, &mut cur) else { break };
        let ok = match op {
            b'A' => (|| {
                let seq = u64::from_le_bytes(take(data, &mut cur)?);
                let tree = u32::from_le_bytes(take(data, &mut cur)?);
                let scope = match take::<1>(data, &mut cur)? {
                    [0] => Scope::Path,
                    [1] => Scope::Tree,
                    [2] => Scope::Gone,
                    [3] => Scope::Replace,
                    _ => return None,
                };
                let len = u32::from_le_bytes(take(data, &mut cur)?) as usize;
                let bytes = data.get(cur..cur + len)?;
                cur += len;
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(bytes));
                r.add(seq, Entry { tree, path, scope });
                Some(())
            })(),
            b'K' => take(data, &mut cur).map(|b| r.ack(0, u64::from_le_bytes(b))),
            b'R' => (|| {
                let n = u32::from_le_bytes(take(data, &mut cur)?) as usize;
                let mut ranges = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let lo = u64::from_le_bytes(take(data, &mut cur)?);
                    let hi = u64::from_le_bytes(take(data, &mut cur)?);
                    ranges.push((lo, hi));
                }
                for (lo, hi) in ranges {
                    r.ack(lo, hi);
                }
                Some(())
            })(),
            b'F' => take(data, &mut cur).map(|b| r.full_sync(u32::from_le_bytes(b), true)),
            b'f' => take(data, &mut cur).map(|b| r.full_sync(u32::from_le_bytes(b), false)),
            _ => None,
        };
        if ok.is_none() {
            break;
        }
        at = cur;
    }
    let (replayed, merged) = r.finish();
    (replayed, at, merged)
}

impl Journal {
    /// Opens (creating) the journal at `path` and replays it. A torn tail is cut off.
    pub fn open(path: &Path) -> Result<(Journal, Replayed), JournalError> {
        let err = |source| JournalError { path: path.to_owned(), source };
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        let (replayed, keep, merged) = if data.starts_with(MAGIC) {
            let (r, good, merged) = parse(&data[MAGIC.len()..]);
            (r, MAGIC.len() + good, merged)
        } else if data.is_empty() {
            (Replayed::default(), 0, false)
        } else {
            return Err(err(io::Error::new(io::ErrorKind::InvalidData, "not an nfs-guard journal (bad magic)")));
        };
        if keep == 0 {
            write_atomic(path, MAGIC).map_err(err)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(err)?;
        let keep = keep.max(MAGIC.len()) as u64;
        if (data.len() as u64) > keep && !data.is_empty() {
            tracing::warn!(path = %path.display(), dropped = data.len() as u64 - keep, "journal had a torn tail; cut");
            file.set_len(keep).map_err(err)?;
            file.sync_data().map_err(err)?;
        }
        let mut j = Journal { path: path.to_owned(), file, size: keep };
        j.seek_end().map_err(err)?;
        if merged {
            j.compact(replayed.pending.iter(), &replayed.full_sync)?;
        }
        Ok((j, replayed))
    }

    fn seek_end(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(self.size)).map(|_| ())
    }

    fn err(&self, source: io::Error) -> JournalError {
        JournalError { path: self.path.clone(), source }
    }

    fn append(&mut self, buf: &[u8], sync: bool) -> Result<(), JournalError> {
        self.file.write_all(buf).map_err(|e| self.err(e))?;
        self.size += buf.len() as u64;
        if sync {
            self.file.sync_data().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Persists new pending entries durably (one write, one fdatasync).
    pub fn add(&mut self, entries: &[(u64, &Entry)]) -> Result<(), JournalError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * 32);
        for (seq, e) in entries {
            encode_add(&mut buf, *seq, e);
        }
        self.append(&buf, true)
    }

    /// Marks the entries with these sequence numbers as pushed (stored as ranges of consecutive numbers).
    pub fn ack_seqs(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        let ranges = ranges(seqs);
        let mut buf = Vec::with_capacity(5 + ranges.len() * 16);
        buf.push(b'R');
        buf.extend_from_slice(&u32::try_from(ranges.len()).unwrap_or(u32::MAX).to_le_bytes());
        for (lo, hi) in ranges {
            buf.extend_from_slice(&lo.to_le_bytes());
            buf.extend_from_slice(&hi.to_le_bytes());
        }
        self.append(&buf, false)
    }

    /// Marks every entry with `seq <= upto` as pushed.
    pub fn ack(&mut self, upto: u64) -> Result<(), JournalError> {
        let mut buf = vec![b'K'];
        buf.extend_from_slice(&upto.to_le_bytes());
        self.append(&buf, false)
    }

    pub fn full_sync(&mut self, tree: u32, needed: bool) -> Result<(), JournalError> {
        let mut buf = vec![if needed { b'F' } else { b'f' }];
        buf.extend_from_slice(&tree.to_le_bytes());
        self.append(&buf, true)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rewrites the file with only the live state (atomically), then continues appending to it.
    /// `live` is every unacknowledged entry: the queued ones and those being pushed.
    pub fn compact<'a>(
        &mut self,
        live: impl IntoIterator<Item = (u64, &'a Entry)>,
        full_sync: &BTreeSet<u32>,
    ) -> Result<(), JournalError> {
        let mut buf = MAGIC.to_vec();
        for tree in full_sync {
            buf.push(b'F');
            buf.extend_from_slice(&tree.to_le_bytes());
        }
        for (seq, e) in live {
            encode_add(&mut buf, seq, e);
        }
        write_atomic(&self.path, &buf).map_err(|e| self.err(e))?;
        self.file = OpenOptions::new().read(true).write(true).open(&self.path).map_err(|e| self.err(e))?;
        self.size = buf.len() as u64;
        self.seek_end().map_err(|e| self.err(e))
    }
}

/// Sorted inclusive ranges of consecutive numbers: `[1,2,3,7]` -> `[(1,3),(7,7)]`.
pub fn ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut v = seqs.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in v {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn e(p: &[u8], scope: Scope) -> Entry {
        Entry { tree: 0, path: PathBuf::from(std::ffi::OsStr::from_bytes(p)), scope }
    }

    fn live(r: &Replayed) -> Vec<(u64, Vec<u8>)> {
        r.pending.iter().map(|(s, e)| (s, e.path.as_os_str().as_bytes().to_vec())).collect()
    }

    #[test]
    fn replay_keeps_unacked_entries_with_raw_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        {
            let (mut j, r) = Journal::open(&p).unwrap();
            assert!(r.pending.is_empty());
            j.add(&[(0, &e(b"a\nb", Scope::Path)), (1, &e(b"-x \xff", Scope::Tree))]).unwrap();
            j.add(&[(2, &e(b"c", Scope::Gone)), (3, &e(b"d", Scope::Replace))]).unwrap();
            j.ack(1).unwrap();
            j.full_sync(3, true).unwrap();
        }
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(2, b"c".to_vec()), (3, b"d".to_vec())]);
        let scopes: Vec<Scope> = r.pending.iter().map(|(_, e)| e.scope).collect();
        assert_eq!(scopes, [Scope::Gone, Scope::Replace]);
        assert_eq!(r.pending.next_seq(), 4);
        assert_eq!(r.full_sync.iter().copied().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn an_older_ack_never_drops_a_newer_record_of_the_same_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.add(&[(0, &e(b"a", Scope::Path))]).unwrap();
            // `a` queued again while seq 0 is being pushed; then seq 0's push is acknowledged.
            j.add(&[(1, &e(b"a", Scope::Tree))]).unwrap();
            j.ack_seqs(&[0]).unwrap();
        }
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(1, b"a".to_vec())]);
        assert_eq!(r.pending.iter().next().unwrap().1.scope, Scope::Tree);
        // Two live records of one path merge at replay (older place) and the file is compacted, so
        // the merged entry's ack clears both.
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.add(&[(2, &e(b"a", Scope::Path))]).unwrap();
        }
        let (mut j, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(1, b"a".to_vec())]);
        j.ack_seqs(&[1]).unwrap();
        drop(j);
        let (_, r) = Journal::open(&p).unwrap();
        assert!(r.pending.is_empty());
    }

    #[test]
    fn range_acks_survive_replay() {
        assert_eq!(ranges(&[7, 1, 2, 3, 9, 8]), [(1, 3), (7, 9)]);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            let es: Vec<Entry> = (0..6).map(|i| e(format!("f{i}").as_bytes(), Scope::Path)).collect();
            j.add(&es.iter().enumerate().map(|(i, e)| (i as u64, e)).collect::<Vec<_>>()).unwrap();
            j.ack_seqs(&[4, 0, 1]).unwrap();
        }
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(2, b"f2".to_vec()), (3, b"f3".to_vec()), (5, b"f5".to_vec())]);
        assert_eq!(r.pending.next_seq(), 6);
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.journal");
        {
            let (mut j, _) = Journal::open(&path).unwrap();
            j.add(&[(0, &e(b"whole", Scope::Path))]).unwrap();
        }
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"A\x01\x00\x00").unwrap();
        drop(file);
        {
            let (mut j, r) = Journal::open(&path).unwrap();
            assert_eq!(live(&r), [(0, b"whole".to_vec())]);
            j.add(&[(1, &e(b"next", Scope::Path))]).unwrap();
        }
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(live(&r), [(0, b"whole".to_vec()), (1, b"next".to_vec())]);
    }

    #[test]
    fn compaction_keeps_only_live_state() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        let (mut j, _) = Journal::open(&p).unwrap();
        let many: Vec<Entry> = (0..100).map(|i| e(format!("f{i}").as_bytes(), Scope::Path)).collect();
        j.add(&many.iter().enumerate().map(|(i, e)| (i as u64, e)).collect::<Vec<_>>()).unwrap();
        j.ack(98).unwrap();
        let before = j.size();
        let (_, r) = Journal::open(&p).unwrap();
        j.compact(r.pending.iter(), &[7].into()).unwrap();
        assert!(j.size() < before / 10);
        j.add(&[(100, &e(b"new", Scope::Path))]).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(99, b"f99".to_vec()), (100, b"new".to_vec())]);
        assert!(r.full_sync.contains(&7));
    }

    #[test]
    fn foreign_file_is_an_error_not_data_loss() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        std::fs::write(&p, b"hello").unwrap();
        let e = Journal::open(&p).err().unwrap();
        assert!(e.to_string().contains("r.journal"));
    }
}
