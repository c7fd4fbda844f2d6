//! The durable pending set of one remote: an append-only log under the state directory, replayed
//! at start, so a crash, `kill -9` or a restart loses no queued path. The bytes are `format`'s.
//!
//! Writes happen on the journal's own thread (`writer`, group commit): an append returns a
//! [`Durable`] that resolves once its records are written and, for `A` and `F`, fdatasync'd. Acks
//! are not synced (a lost ack only repeats a push). A torn tail (a crash mid-append) is cut off at the last whole record. Damage (a record
//! whose checksum fails, followed by good ones, or bytes that are no record) is skipped, logged, and
//! becomes a full sync of every tree: the skipped records may have named any path. The log is
//! compacted (rewritten atomically with only the live records) when it grows well past its live
//! content, and at open when it was damaged or of the older version. The file is private (0600), never
//! followed through a symlink, and read without blocking and with a size cap (a FIFO or a huge file
//! in its place is an error naming it). This module owns the file only; what is pending is decided
//! by `remote`.

pub(crate) mod format;
mod writer;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::batch::Entry;
use crate::sys::fsutil::{read_capped, write_atomic};
pub use format::{ranges, Replayed, ALL_TREES};
pub use writer::Durable;

/// The handle of one journal: encodes records (cheap, under the caller's lock) and hands them to
/// the journal's writer thread (`writer`). Dropping it waits until everything handed over is written.
pub struct Journal {
    path: PathBuf,
    tx: Option<std::sync::mpsc::Sender<writer::Req>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<writer::Shared>,
    /// File size once everything handed over is written.
    size: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}")]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A journal larger than this is refused (compaction keeps a healthy one far smaller: its live
/// content is bounded by `max_pending`).
const MAX_SIZE: u64 = 1 << 30;

/// Opens the journal file for appending: never through a symlink, and readable by its owner only.
fn open_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl Journal {
    /// Opens (creating) the journal at `path` and replays it. A torn tail is cut off; damage is
    /// skipped and asks for a full sync of every tree.
    pub fn open(path: &Path) -> Result<(Journal, Replayed), JournalError> {
        let err = |source| JournalError { path: path.to_owned(), source };
        // Never followed: a symlink planted here would have its target truncated and rewritten.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symlink; refusing to follow it (put the journal file itself there, or remove the link)",
            )));
        }
        // A FIFO or device cannot stall the start, nor a huge file eat the memory.
        let data = match read_capped(path, MAX_SIZE) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        let Some(parsed) = format::parse(&data) else {
            return Err(err(io::Error::new(io::ErrorKind::InvalidData, "not an nfs-guard journal (bad magic)")));
        };
        let old_version = data.starts_with(format::MAGIC_V1);
        if let Some((offset, bytes)) = parsed.damaged {
            tracing::warn!(path = %path.display(), offset, bytes, kept = parsed.replayed.pending.len(),
                "journal damaged: skipped what is no whole record, kept every valid one; a full sync of every tree is queued");
        }
        let rewrite = data.is_empty() || old_version || parsed.damaged.is_some() || parsed.merged;
        let replayed = parsed.replayed;
        let size = if rewrite {
            let buf = format::encode_state(replayed.pending.iter(), &replayed.full_sync);
            write_atomic(path, &buf).map_err(err)?;
            buf.len()
        } else {
            parsed.good_end
        };
        let mut file = open_private(path).map_err(err)?;
        if !rewrite && data.len() > size {
            tracing::warn!(path = %path.display(), dropped = data.len() - size, "journal had a torn tail; cut");
            file.set_len(size as u64).map_err(err)?;
            file.sync_data().map_err(err)?;
        }
        {
            use std::io::Seek;
            file.seek(io::SeekFrom::Start(size as u64)).map_err(err)?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(writer::Shared::default());
        let (p, sh) = (path.to_owned(), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer::run(&p, file, &rx, &sh))
            .map_err(err)?;
        let j = Journal { path: path.to_owned(), tx: Some(tx), thread: Some(thread), shared, size: size as u64 };
        Ok((j, replayed))
    }

    fn send(&mut self, op: writer::Op) -> Durable {
        let (done, rx) = tokio::sync::oneshot::channel();
        let req = writer::Req { op, done: Some(done) };
        // Should the writer be gone, the request is dropped and the waiter hears so.
        if let Some(tx) = &self.tx {
            let _ = tx.send(req);
        }
        Durable::new(rx, &self.path)
    }

    fn append(&mut self, buf: Vec<u8>, sync: bool) -> Durable {
        self.size += buf.len() as u64;
        self.send(writer::Op::Append { buf, sync })
    }

    /// Persists new pending entries durably (one write, one fdatasync, shared with whatever else
    /// queued up meanwhile).
    pub fn add(&mut self, entries: &[(u64, &Entry)]) -> Durable {
        if entries.is_empty() {
            return Durable::default();
        }
        let mut buf = Vec::with_capacity(entries.len() * 40);
        for (seq, e) in entries {
            format::encode_add(&mut buf, *seq, e);
        }
        self.append(buf, true)
    }

    /// Marks the entries with these sequence numbers as pushed (stored as ranges of consecutive
    /// numbers; not synced: a lost ack only repeats a push).
    pub fn ack_seqs(&mut self, seqs: &[u64]) -> Durable {
        if seqs.is_empty() {
            return Durable::default();
        }
        let mut buf = Vec::new();
        format::encode_acks(&mut buf, &ranges(seqs));
        self.append(buf, false)
    }

    pub fn full_sync(&mut self, tree: u32, needed: bool) -> Durable {
        let mut buf = Vec::new();
        format::encode_full_sync(&mut buf, tree, needed);
        self.append(buf, true)
    }

    /// A full sync of `tree` needed, its queued paths staying queued (see `format::Rec::FullSyncKeep`).
    pub fn full_sync_keep(&mut self, tree: u32) -> Durable {
        let mut buf = Vec::new();
        format::encode_full_sync_keep(&mut buf, tree);
        self.append(buf, true)
    }

    /// Resolves once everything handed over before it is written.
    pub fn flush(&mut self) -> Durable {
        self.append(Vec::new(), false)
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
    ) -> Durable {
        let buf = format::encode_state(live, full_sync);
        self.size = buf.len() as u64;
        self.send(writer::Op::Replace { buf })
    }

    /// fdatasyncs done by the writer so far.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What tests lock (`.gate`) to hold the writer before its next group, so requests queue up.
    #[cfg(test)]
    fn writer_state(&self) -> Arc<writer::Shared> {
        Arc::clone(&self.shared)
    }
}

impl Drop for Journal {
    /// Waits until everything handed over is written.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod model_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::batch::Scope;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;

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
            j.add(&[(0, &e(b"a\nb", Scope::Path)), (1, &e(b"-x \xff", Scope::Tree))]).wait_blocking().unwrap();
            j.add(&[(2, &e(b"c", Scope::Gone)), (3, &e(b"d", Scope::Replace))]).wait_blocking().unwrap();
            j.ack_seqs(&[0, 1]).wait_blocking().unwrap();
            j.full_sync(3, true).wait_blocking().unwrap();
        }
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(2, b"c".to_vec()), (3, b"d".to_vec())]);
        let scopes: Vec<Scope> = r.pending.iter().map(|(_, e)| e.scope).collect();
        assert_eq!(scopes, [Scope::Gone, Scope::Replace]);
        assert_eq!(r.pending.next_seq(), 4);
        assert_eq!(r.full_sync.iter().copied().collect::<Vec<_>>(), [3]);
    }

    /// A storage agent's start-up full sync keeps its queued paths (they may become orphans),
    /// across a replay and a compaction; an ordinary full sync covers them.
    #[test]
    fn a_full_sync_that_keeps_paths_keeps_them_across_replay_and_compaction() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.add(&[(0, &e(b"orphan", Scope::Path))]).wait_blocking().unwrap();
            j.full_sync_keep(0).wait_blocking().unwrap();
            j.add(&[(1, &e(b"other-tree", Scope::Path))]).wait_blocking().unwrap();
        }
        let (mut j, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(0, b"orphan".to_vec()), (1, b"other-tree".to_vec())]);
        assert!(r.full_sync.contains(&0));
        let state: Vec<(u64, Entry)> = r.pending.iter().map(|(q, e)| (q, e.clone())).collect();
        j.compact(state.iter().map(|(q, e)| (*q, e)), &r.full_sync).wait_blocking().unwrap();
        j.full_sync(0, true).wait_blocking().unwrap();
        drop(j);
        let (_, r) = Journal::open(&p).unwrap();
        assert!(live(&r).is_empty(), "an ordinary full sync covers the queued paths");
    }

    #[test]
    fn an_older_ack_never_drops_a_newer_record_of_the_same_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.add(&[(0, &e(b"a", Scope::Path))]).wait_blocking().unwrap();
            // `a` queued again while seq 0 is being pushed; then seq 0's push is acknowledged.
            j.add(&[(1, &e(b"a", Scope::Tree))]).wait_blocking().unwrap();
            j.ack_seqs(&[0]).wait_blocking().unwrap();
        }
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(1, b"a".to_vec())]);
        assert_eq!(r.pending.iter().next().unwrap().1.scope, Scope::Tree);
        // Two live records of one path merge at replay (older place) and the file is compacted, so
        // the merged entry's ack clears both.
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.add(&[(2, &e(b"a", Scope::Path))]).wait_blocking().unwrap();
        }
        let (mut j, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(1, b"a".to_vec())]);
        j.ack_seqs(&[1]).wait_blocking().unwrap();
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
            j.add(&es.iter().enumerate().map(|(i, e)| (i as u64, e)).collect::<Vec<_>>()).wait_blocking().unwrap();
            j.ack_seqs(&[4, 0, 1]).wait_blocking().unwrap();
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
            j.add(&[(0, &e(b"whole", Scope::Path))]).wait_blocking().unwrap();
        }
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"A\x01\x00\x00").unwrap();
        drop(file);
        {
            let (mut j, r) = Journal::open(&path).unwrap();
            assert_eq!(live(&r), [(0, b"whole".to_vec())]);
            j.add(&[(1, &e(b"next", Scope::Path))]).wait_blocking().unwrap();
        }
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(live(&r), [(0, b"whole".to_vec()), (1, b"next".to_vec())]);
    }

    /// Writes records for `f0`..`f4`, one append each, and returns the file's bytes.
    fn five_records(p: &Path) -> Vec<u8> {
        let (mut j, _) = Journal::open(p).unwrap();
        for i in 0..5u8 {
            j.add(&[(u64::from(i), &e(format!("f{i}").as_bytes(), Scope::Path))]).wait_blocking().unwrap();
        }
        drop(j);
        std::fs::read(p).unwrap()
    }

    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).position(|w| w == needle).unwrap()
    }

    #[test]
    fn damage_in_the_middle_keeps_every_later_record_and_asks_for_a_full_sync() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        let mut data = five_records(&p);
        // A flipped bit inside f1's record: that record is lost, f2..f4 are not.
        let at = find(&data, b"f1");
        data[at + 1] ^= 0x40;
        std::fs::write(&p, &data).unwrap();
        let (mut j, r) = Journal::open(&p).unwrap();
        let names: Vec<Vec<u8>> = live(&r).into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, [b"f0".to_vec(), b"f2".to_vec(), b"f3".to_vec(), b"f4".to_vec()]);
        assert_eq!(r.full_sync.iter().copied().collect::<Vec<_>>(), [ALL_TREES], "a full sync of every tree");
        // The damage is gone from the file; the full-sync request is durable.
        j.add(&[(5, &e(b"f5", Scope::Path))]).wait_blocking().unwrap();
        drop(j);
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(r.pending.len(), 5);
        assert!(r.full_sync.contains(&ALL_TREES));
    }

    #[test]
    fn garbage_in_the_middle_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        let data = five_records(&p);
        let at = find(&data, b"f2") + 2;
        let mut bad = data[..at].to_vec();
        bad.extend_from_slice(b"\x00\xffgarbage that is no record at all\x07");
        bad.extend_from_slice(&data[at..]);
        std::fs::write(&p, &bad).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        let names: Vec<Vec<u8>> = live(&r).into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, [b"f0".to_vec(), b"f1".to_vec(), b"f2".to_vec(), b"f3".to_vec(), b"f4".to_vec()]);
        assert!(r.full_sync.contains(&ALL_TREES));
    }

    #[test]
    fn a_torn_tail_asks_for_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        let data = five_records(&p);
        std::fs::write(&p, &data[..data.len() - 3]).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(r.pending.len(), 4);
        assert!(r.full_sync.is_empty());
    }

    #[test]
    fn compaction_keeps_only_live_state() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        let (mut j, _) = Journal::open(&p).unwrap();
        let many: Vec<Entry> = (0..100).map(|i| e(format!("f{i}").as_bytes(), Scope::Path)).collect();
        j.add(&many.iter().enumerate().map(|(i, e)| (i as u64, e)).collect::<Vec<_>>()).wait_blocking().unwrap();
        j.ack_seqs(&(0..=98).collect::<Vec<_>>()).wait_blocking().unwrap();
        let before = j.size();
        let (_, r) = Journal::open(&p).unwrap();
        j.compact(r.pending.iter(), &[7].into()).wait_blocking().unwrap();
        assert!(j.size() < before / 10);
        j.add(&[(100, &e(b"new", Scope::Path))]).wait_blocking().unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(99, b"f99".to_vec()), (100, b"new".to_vec())]);
        assert!(r.full_sync.contains(&7));
    }

    #[test]
    fn concurrent_appends_share_one_fdatasync_and_none_is_durable_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.journal");
        let (mut j, _) = Journal::open(&path).unwrap();
        let names: Vec<Entry> = (0..10).map(|i| e(format!("f{i}").as_bytes(), Scope::Path)).collect();
        let mut pending = Vec::new();
        {
            let writer = j.writer_state();
            let _held = writer.gate.lock().unwrap();
            for (i, n) in names.iter().enumerate() {
                pending.push(j.add(&[(i as u64, n)]));
            }
            // The writer is held: nothing may be reported durable yet.
            assert!(pending.iter_mut().all(|d| !d.is_done()));
        }
        for d in pending {
            d.wait_blocking().unwrap();
        }
        assert_eq!(j.syncs(), 1, "ten appends queued together, one fdatasync");
        drop(j);
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(r.pending.len(), 10);
    }

    #[test]
    fn version_1_files_are_read_and_rewritten_as_version_2() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.journal");
        let mut v1 = b"NFSGUARD-JOURNAL-1\n".to_vec();
        for (seq, name) in [(0u64, &b"old\nname"[..]), (1, b"acked\xff\xfe")] {
            v1.push(b'A');
            v1.extend_from_slice(&seq.to_le_bytes());
            v1.extend_from_slice(&0u32.to_le_bytes());
            v1.push(1);
            v1.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
            v1.extend_from_slice(name);
        }
        v1.extend_from_slice(b"R\x01\x00\x00\x00");
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.push(b'K');
        v1.extend_from_slice(&0u64.to_le_bytes()[..4]); // cut short
        std::fs::write(&p, &v1).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(live(&r), [(0, b"old\nname".to_vec())]);
        assert_eq!(r.pending.iter().next().unwrap().1.scope, Scope::Tree);
        // Version 1 cannot tell a torn tail from damage: leftovers ask for a full sync.
        assert!(r.full_sync.contains(&ALL_TREES));
        assert!(std::fs::read(&p).unwrap().starts_with(format::MAGIC));
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!((r.pending.len(), r.full_sync.len()), (1, 1));
    }

    #[test]
    fn absurd_sequence_numbers_are_damage_not_a_panic_or_a_reused_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.journal");
        let mut data = format::MAGIC.to_vec();
        format::encode_add(&mut data, 0, &e(b"ok", Scope::Path));
        format::encode_add(&mut data, u64::MAX, &e(b"max", Scope::Path));
        format::encode_acks(&mut data, &[(7, u64::MAX), (9, 3)]);
        format::encode_add(&mut data, 1, &e(b"later", Scope::Path));
        std::fs::write(&path, &data).unwrap();
        let (_, replayed) = Journal::open(&path).unwrap();
        assert_eq!(live(&replayed), [(0, b"ok".to_vec()), (1, b"later".to_vec())]);
        assert!(replayed.full_sync.contains(&ALL_TREES), "skipped records ask for a full sync");
        let mut pending = replayed.pending;
        let x = pending.insert(e(b"x", Scope::Path)).unwrap();
        let y = pending.insert(e(b"y", Scope::Path)).unwrap();
        assert!(x != y && x > 1, "fresh numbers: {x} {y}");
        assert_eq!(pending.len(), 4);
        assert_eq!(ranges(&[u64::MAX, u64::MAX - 1, 0]), [(0, 0), (u64::MAX - 1, u64::MAX)]);
    }

    /// Runs `f` on another thread; fails (instead of hanging the suite) when it blocks.
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("blocked")
    }

    #[test]
    fn a_fifo_or_a_symlink_in_place_of_the_journal_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.journal");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let f2 = fifo.clone();
        let msg = within_5s(move || crate::chain::render_chain(&Journal::open(&f2).err().unwrap()));
        assert!(msg.contains("fifo.journal") && msg.contains("FIFO"), "{msg}");
        // A symlink to a file elsewhere: never followed, the target never truncated or replaced.
        let outside = dir.path().join("precious");
        std::fs::write(&outside, b"do not touch").unwrap();
        let link = dir.path().join("link.journal");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let msg = crate::chain::render_chain(&Journal::open(&link).err().unwrap());
        assert!(msg.contains("link.journal") && msg.contains("symlink"), "{msg}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"do not touch");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        // An existing journal readable by others becomes private.
        let p = dir.path().join("r.journal");
        five_records(&p);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(r.pending.len(), 5);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
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
