//! The durable outbox: every alert to be mailed is a sequence-numbered JSON file, and removed
//! only once the SMTP server has accepted it (or it is dead-lettered). Delivery takes the lowest
//! number first, so mail goes out in the order it was raised, and a restart replays whatever is
//! left.
//!
//! File operations are not done by the caller: the in-memory index changes at once and the
//! ordered writer ([`super::writer`]) applies them in the same order, with fsync, a moment later.
//! So `emit` never waits for the disk, and the order on disk is the order of the decisions.
//!
//! Layout under `state_dir/outbox/`:
//! ```text
//! queue/00000000000000000042.json   a message to send: one alert, or a digest of folded alerts
//! fold/00000000000000000043.json    one alert held back by flood control for its kind's digest
//! dead/00000000000000000040.json    a message no recipient will take (kept for the operator)
//! flood.json                        flood-control state (when each kind was last mailed, digests due)
//! backoff.json                      delivery backoff while the mail server fails (absent when none)
//! ```
//! An alert is durable once the writer has its file on disk (fsync'd file and directory). From then
//! on it survives a crash and is delivered at least once. A crash between the server's 250 and the
//! file's removal sends it again: duplicates are possible, loss is not.
//!
//! The outbox keeps an in-memory index mirroring the files. If a file cannot be written (disk full,
//! read-only state dir) the entry stays in memory, is still delivered by this process, and the error
//! is logged: the alert is then only as durable as the process.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::event::{AlertEvent, AlertKind};
use super::policy::KindState;
use super::writer::{FileOp, Writer};
use crate::sys::fsutil;

/// One message waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queued {
    pub seq: u64,
    /// One alert, or (a digest) several alerts of one kind, oldest first.
    pub events: Vec<AlertEvent>,
    /// Recipients that accepted it (in an earlier attempt).
    #[serde(default)]
    pub sent_to: Vec<String>,
    /// Recipients that refused it for good (5xx, or 4xx for too long): not retried.
    #[serde(default)]
    pub refused: Vec<String>,
    /// Delivery attempts so far that reached the recipients step.
    #[serde(default)]
    pub attempts: u32,
}

/// Delivery's backoff while the mail server fails, kept so that the next process (each
/// `web --once` run) honours it instead of trying at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryState {
    /// Failed attempts in a row.
    pub failures: u32,
    /// No attempt before this (wall clock).
    pub next_attempt: SystemTime,
}

/// One alert held for a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Folded {
    seq: u64,
    event: AlertEvent,
}

#[derive(Debug, thiserror::Error)]
#[error("alert outbox {path}")]
pub struct OutboxError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub struct Outbox {
    dir: PathBuf,
    next_seq: u64,
    queue: BTreeMap<u64, Queued>,
    folds: BTreeMap<u64, AlertEvent>,
    quarantined: Vec<Quarantined>,
    /// The newest message this process queued (a drain sends up to it and no further).
    newest_queued_here: Option<u64>,
    /// Applies the file operations in order, off the caller (see [`super::writer`]).
    writer: Arc<Writer>,
}

/// A file `open` found damaged and moved to `dead/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub from: PathBuf,
    /// Where it went; `None` if it could not be moved (it stays, and is met again next start).
    pub to: Option<PathBuf>,
    pub why: String,
}

const QUEUE: &str = "queue";
const FOLD: &str = "fold";
const DEAD: &str = "dead";
const FLOOD: &str = "flood.json";
const RETRY: &str = "backoff.json";
/// Highest sequence number accepted in a file name. A larger one is damage, not history (2^63
/// alerts are never raised), and bounding it keeps the numbering arithmetic free of overflow.
const MAX_SEQ: u64 = u64::MAX / 2;
/// Largest entry file read (a digest of thousands of alerts is far below it); a larger one, or a
/// link to `/dev/zero`, is damage and never read whole into memory.
const MAX_ENTRY_BYTES: u64 = 16 << 20;

impl Outbox {
    /// Opens (creating it, mode 0700) the outbox in `dir` and loads what a previous run left.
    /// Anything in `queue/` or `fold/` that is not a readable entry under its canonical name is
    /// moved to `dead/` with an error log and counted ([`Outbox::quarantined`]) rather than
    /// blocking the queue, crashing, or lying there unnoticed.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| OutboxError { path, source }
        };
        for sub in [QUEUE, FOLD, DEAD] {
            fsutil::ensure_private_dir(&dir.join(sub)).map_err(err(&dir.join(sub)))?;
        }
        let mut outbox = Outbox {
            dir: dir.to_owned(),
            next_seq: 1,
            queue: BTreeMap::new(),
            folds: BTreeMap::new(),
            quarantined: Vec::new(),
            newest_queued_here: None,
            writer: Writer::new(),
        };
        // Numbers are never reused, so dead letters and quarantined entries count too.
        for name in names(&dir.join(DEAD)).map_err(err(&dir.join(DEAD)))? {
            if let Some(seq) = dead_seq(&name) {
                outbox.saw(seq);
            }
        }
        for sub in [QUEUE, FOLD] {
            for name in names(&dir.join(sub)).map_err(err(&dir.join(sub)))? {
                let path = dir.join(sub).join(&name);
                match classify(&name) {
                    Name::Entry(seq) => {
                        outbox.saw(seq);
                        outbox.load(sub, seq, &path);
                    }
                    Name::Temp => {
                        // An interrupted write: the rename never happened, so it was never acknowledged.
                        tracing::info!(path = %path.display(), "removing the temp file of an interrupted outbox write");
                        if let Err(e) = fs::remove_file(&path) {
                            tracing::warn!(path = %path.display(), "cannot remove the temp file: {e}");
                        }
                    }
                    Name::Stray(why) => outbox.quarantine(&path, why),
                }
            }
        }
        Ok(outbox)
    }

    /// Loads one entry of `queue/` or `fold/`; quarantines it if unreadable.
    fn load(&mut self, sub: &str, seq: u64, path: &Path) {
        const MISMATCH: &str = "its content does not match its name";
        if sub == QUEUE {
            match read_json::<Queued>(path) {
                Ok(q) if q.seq == seq && !q.events.is_empty() => {
                    self.queue.insert(seq, q);
                }
                Ok(_) => self.quarantine(path, MISMATCH),
                Err(e) => self.quarantine(path, &e),
            }
        } else {
            match read_json::<Folded>(path) {
                Ok(f) if f.seq == seq => {
                    self.folds.insert(seq, f.event);
                }
                Ok(_) => self.quarantine(path, MISMATCH),
                Err(e) => self.quarantine(path, &e),
            }
        }
    }

    /// Keeps numbering above `seq` (which [`classify`] bounds, so this cannot overflow).
    fn saw(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// What `open` moved aside: each file's old and new place (`None` if the move failed) and why.
    pub fn quarantined(&self) -> &[Quarantined] {
        &self.quarantined
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues a message for `events` (one alert, or a digest) and returns its sequence number.
    /// Its file is written (fsync'd) by the writer, after every earlier file operation; on a write
    /// error the entry is kept in memory only.
    pub fn enqueue(&mut self, events: Vec<AlertEvent>) -> u64 {
        let seq = self.take_seq();
        let q = Queued { seq, events, sent_to: Vec::new(), refused: Vec::new(), attempts: 0 };
        self.write(QUEUE, seq, &q);
        self.queue.insert(seq, q);
        self.newest_queued_here = Some(seq);
        seq
    }

    /// Holds `event` for its kind's digest.
    pub fn fold(&mut self, event: AlertEvent) -> u64 {
        let seq = self.take_seq();
        self.write(FOLD, seq, &Folded { seq, event: event.clone() });
        self.folds.insert(seq, event);
        seq
    }

    /// The kinds that have folded alerts waiting (e.g. left by a previous run).
    pub fn folded_kinds(&self) -> Vec<AlertKind> {
        let mut kinds: Vec<AlertKind> = Vec::new();
        for e in self.folds.values() {
            if !kinds.contains(&e.kind) {
                kinds.push(e.kind);
            }
        }
        kinds
    }

    /// Turns the folded alerts of `kind` into one queued digest. The digest is written before the
    /// fold files are removed, so a crash in between can only duplicate, never lose.
    pub fn seal_digest(&mut self, kind: AlertKind) -> Option<u64> {
        let seqs: Vec<u64> = self.folds.iter().filter(|(_, e)| e.kind == kind).map(|(s, _)| *s).collect();
        if seqs.is_empty() {
            return None;
        }
        let events: Vec<AlertEvent> = seqs.iter().filter_map(|s| self.folds.remove(s)).collect();
        let seq = self.enqueue(events);
        for s in seqs {
            self.remove_file(FOLD, s);
        }
        Some(seq)
    }

    /// The flood-control state a previous process saved (empty if none or unreadable).
    pub fn load_flood(&self) -> Vec<(AlertKind, KindState)> {
        let path = self.dir.join(FLOOD);
        match read_json(&path) {
            Ok(state) => state,
            Err(_) if path.symlink_metadata().is_err() => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "flood-control state unreadable, starting afresh: {e}");
                Vec::new()
            }
        }
    }

    /// The delivery backoff a previous process left (none if absent or unreadable).
    pub fn load_retry(&self) -> Option<RetryState> {
        let path = self.dir.join(RETRY);
        match read_json(&path) {
            Ok(state) => Some(state),
            Err(_) if path.symlink_metadata().is_err() => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "delivery backoff unreadable, ignored: {e}");
                None
            }
        }
    }

    /// Saves the delivery backoff, or removes it (`None`: the last attempt succeeded). Not
    /// fsync'd: a crash that loses it costs one early attempt, nothing else.
    pub fn save_retry(&self, state: Option<&RetryState>) {
        let path = self.dir.join(RETRY);
        match state {
            Some(state) => self.submit_write(path, state, false, "the delivery backoff".to_owned()),
            None => self.writer.submit(FileOp::Remove { path }),
        }
    }

    /// Saves the flood-control state (fsync'd), so the next process keeps folding.
    pub fn save_flood(&self, state: &[(AlertKind, KindState)]) {
        self.submit_write(self.dir.join(FLOOD), &state, true, "the flood-control state".to_owned());
    }

    /// The oldest queued message.
    pub fn head(&self) -> Option<&Queued> {
        self.queue.values().next()
    }

    /// The newest message queued by this process (not loaded from a previous one), if any.
    pub fn newest_queued_here(&self) -> Option<u64> {
        self.newest_queued_here
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Folded alerts waiting for a digest.
    pub fn folded(&self) -> usize {
        self.folds.len()
    }

    /// Records progress on a message (recipients served, attempts).
    pub fn update(&mut self, q: Queued) {
        self.write(QUEUE, q.seq, &q);
        self.queue.insert(q.seq, q);
    }

    /// The server accepted the message: forget it.
    pub fn remove(&mut self, seq: u64) {
        self.queue.remove(&seq);
        self.remove_file(QUEUE, seq);
    }

    /// No recipient will ever take this message: move it to `dead/` for the operator (never over
    /// a file already there).
    pub fn dead_letter(&mut self, seq: u64) {
        let Some(q) = self.queue.remove(&seq) else { return };
        let name = self.path(DEAD, seq).file_name().unwrap_or_default().to_os_string();
        let bytes = serde_json::to_vec_pretty(&q).unwrap_or_default();
        let (from, dir) = (self.path(QUEUE, seq), self.dir.join(DEAD));
        self.writer.submit(FileOp::DeadLetter { from, dir, name, bytes, seq });
    }

    /// The writer applying this outbox's file operations (to wait for them without a lock held).
    pub fn writer(&self) -> Arc<Writer> {
        self.writer.clone()
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        // Bounded by MAX_SEQ + 1 at open; 2^63 alerts later this would saturate, never wrap.
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    fn path(&self, sub: &str, seq: u64) -> PathBuf {
        self.dir.join(sub).join(format!("{seq:020}.json"))
    }

    fn write<T: Serialize>(&self, sub: &str, seq: u64, value: &T) {
        let what = if sub == FOLD { format!("alert {seq} (folded)") } else { format!("alert {seq}") };
        self.submit_write(self.path(sub, seq), value, true, what);
    }

    fn submit_write<T: Serialize + ?Sized>(&self, path: PathBuf, value: &T, durable: bool, what: String) {
        match serde_json::to_vec_pretty(value) {
            Ok(bytes) => self.writer.submit(FileOp::Write { path, bytes, durable, what }),
            Err(e) => tracing::error!(path = %path.display(), "{what} cannot be serialized: {e}"),
        }
    }

    fn remove_file(&self, sub: &str, seq: u64) {
        self.writer.submit(FileOp::Remove { path: self.path(sub, seq) });
    }

    /// Moves a damaged file of `queue/` or `fold/` to `dead/<name>.unreadable` (never over an
    /// earlier one), logged and counted.
    fn quarantine(&mut self, path: &Path, why: &str) {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".unreadable");
        let moved = match move_aside(path, &self.dir.join(DEAD), &name) {
            Ok(to) => {
                tracing::error!(path = %path.display(), to = %to.display(), "damaged file in the alert outbox, moved aside: {why}");
                Some(to)
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "damaged file in the alert outbox ({why}), and it cannot be moved aside: {e}");
                None
            }
        };
        self.quarantined.push(Quarantined { from: path.to_owned(), to: moved, why: why.to_owned() });
    }
}

/// Moves `from` into `dir` as `name`, or `name.1`, `name.2`, ... when taken: never overwrites
/// (`RENAME_NOREPLACE`, so a concurrent mover cannot race it either). A name too long for the
/// file system with its suffix is shortened (the log line keeps the full original path).
pub(super) fn move_aside(from: &Path, dir: &Path, name: &OsStr) -> io::Result<PathBuf> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    use std::os::unix::ffi::OsStrExt;
    const NAME_MAX: usize = 255;
    for n in 0..1000u32 {
        let suffix = if n == 0 { String::new() } else { format!(".{n}") };
        let keep = name.len().min(NAME_MAX - suffix.len());
        let mut candidate = OsStr::from_bytes(&name.as_bytes()[..keep]).to_os_string();
        candidate.push(&suffix);
        let to = dir.join(candidate);
        match renameat2(AT_FDCWD, from, AT_FDCWD, &to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(to),
            Err(nix::errno::Errno::EEXIST) => {}
            // The file system cannot refuse to replace: a hard link can (a link never overwrites).
            Err(nix::errno::Errno::EINVAL) => match fs::hard_link(from, &to) {
                Ok(()) => return fs::remove_file(from).map(|()| to),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: 1000 names taken", dir.join(name).display())))
}

/// What a file name in `queue/` or `fold/` is.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// `<seq, 20 digits>.json`, the only form the outbox writes (and the only one it would remove).
    Entry(u64),
    /// `<entry name>.tmp.<pid>`: an interrupted atomic write.
    Temp,
    /// Anything else, with why it is not an entry.
    Stray(&'static str),
}

fn classify(name: &OsStr) -> Name {
    let Some(name) = name.to_str() else { return Name::Stray("its name is not UTF-8") };
    let entry = |n: &str| {
        let digits = n.strip_suffix(".json").filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))?;
        Some(digits.parse::<u64>().ok().filter(|s| *s <= MAX_SEQ))
    };
    if let Some((base, pid)) = name.split_once(".tmp.") {
        if entry(base).flatten().is_some() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            return Name::Temp;
        }
    }
    match entry(name) {
        Some(Some(seq)) => Name::Entry(seq),
        Some(None) => Name::Stray("its sequence number is out of range"),
        None => Name::Stray("its name is not an outbox entry's (<20 digits>.json)"),
    }
}

/// The sequence number a name in `dead/` holds (dead letters and quarantined entries), if any.
fn dead_seq(name: &OsStr) -> Option<u64> {
    let digits = name.to_str()?.split('.').next()?;
    digits.parse::<u64>().ok().filter(|s| *s <= MAX_SEQ)
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut out = fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

/// Reads one JSON file, never blocking (a FIFO) nor reading more than [`MAX_ENTRY_BYTES`].
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = fsutil::read_capped(path, MAX_ENTRY_BYTES).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alert::event::Role;

    fn ev(kind: AlertKind, title: &str) -> AlertEvent {
        AlertEvent::new(kind, Role::Web, title, "why")
    }

    fn files(dir: &Path, sub: &str) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir.join(sub)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn queued_alerts_are_on_disk_in_order_and_replayed_after_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        for t in ["one", "two", "three"] {
            o.enqueue(vec![ev(AlertKind::BothDown, t)]);
        }
        assert_eq!(
            files(d.path(), QUEUE),
            ["00000000000000000001.json", "00000000000000000002.json", "00000000000000000003.json"]
        );
        o.remove(1);
        drop(o);

        let mut o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.head().unwrap().events[0].title, "two");
        o.remove(2);
        assert_eq!(o.head().unwrap().events[0].title, "three");
        // Numbers are never reused, so order holds across restarts.
        assert_eq!(o.enqueue(vec![ev(AlertKind::BothDown, "four")]), 4);
    }

    #[test]
    fn progress_survives_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "one")]);
        let mut q = o.head().unwrap().clone();
        q.sent_to.push("a@example.com".into());
        q.attempts = 2;
        o.update(q.clone());
        drop(o);
        let o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.head(), Some(&q));
    }

    #[test]
    fn folded_alerts_become_one_digest_also_after_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.fold(ev(AlertKind::PrimaryRecovered, "r1"));
        o.fold(ev(AlertKind::BothDown, "b1"));
        o.fold(ev(AlertKind::PrimaryRecovered, "r2"));
        drop(o);
        let mut o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.folded_kinds(), [AlertKind::PrimaryRecovered, AlertKind::BothDown]);
        assert_eq!(o.seal_digest(AlertKind::PrimaryRecovered), Some(4));
        let titles: Vec<&str> = o.head().unwrap().events.iter().map(|e| e.title.as_str()).collect();
        assert_eq!(titles, ["r1", "r2"]);
        assert_eq!(files(d.path(), FOLD), ["00000000000000000002.json"]);
        assert!(o.seal_digest(AlertKind::PrimaryRecovered).is_none());
    }

    #[test]
    fn flood_state_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let o = Outbox::open(d.path()).unwrap();
        assert!(o.load_flood().is_empty());
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let state = vec![(AlertKind::BothDown, KindState { last_sent: t, digest_due: Some(t) })];
        o.save_flood(&state);
        assert_eq!(Outbox::open(d.path()).unwrap().load_flood(), state);
        fs::write(d.path().join(FLOOD), b"{").unwrap();
        assert!(o.load_flood().is_empty(), "a torn file is not fatal");
    }

    #[test]
    fn dead_letters_leave_the_queue_and_stay_for_the_operator() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "one")]);
        o.dead_letter(1);
        assert_eq!(files(d.path(), DEAD), ["00000000000000000001.json"]);
        assert!(o.is_empty());
        drop(o);
        let mut o = Outbox::open(d.path()).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.enqueue(vec![ev(AlertKind::BothDown, "two")]), 2);
    }

    #[test]
    fn unreadable_entry_is_moved_aside_and_does_not_block_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "one")]);
        o.enqueue(vec![ev(AlertKind::BothDown, "two")]);
        drop(o);
        fs::write(d.path().join(QUEUE).join("00000000000000000001.json"), b"{ torn").unwrap();
        fs::write(d.path().join(QUEUE).join("00000000000000000009.json.tmp.77"), b"{").unwrap();
        let o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.head().unwrap().events[0].title, "two");
        assert_eq!(files(d.path(), QUEUE), ["00000000000000000002.json"]);
        assert_eq!(files(d.path(), DEAD), ["00000000000000000001.json.unreadable"]);
    }

    /// Every name in `queue/` and `fold/` that is not a canonical entry is damage: moved aside
    /// with a log line and counted, never a panic and never silently ignored (an ignored file
    /// would never be mailed, nor removed).
    #[test]
    fn names_out_of_range_or_not_canonical_are_quarantined_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "one")]);
        drop(o);
        let strays = [
            (QUEUE, "18446744073709551615.json"),
            (QUEUE, "99999999999999999999.json"),
            (QUEUE, "7.json"),
            (QUEUE, "notes.txt"),
            (QUEUE, "-x\n#;y .json"),
            (FOLD, "18446744073709551614.json"),
        ];
        for (sub, name) in strays {
            fs::write(d.path().join(sub).join(name), b"{}").unwrap();
        }
        // Already quarantined: kept as is, and an absurd number there must not panic either.
        fs::write(d.path().join(DEAD).join("18446744073709551615.json"), b"{}").unwrap();

        let mut o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o.quarantined().len(), strays.len());
        assert_eq!(files(d.path(), QUEUE), ["00000000000000000001.json"]);
        assert!(files(d.path(), FOLD).is_empty());
        let dead = files(d.path(), DEAD);
        for (_, name) in strays {
            assert!(dead.contains(&format!("{name}.unreadable")), "{name} kept in dead/: {dead:?}");
        }
        assert_eq!(o.enqueue(vec![ev(AlertKind::BothDown, "two")]), 2, "numbering is not thrown off");
    }

    /// Moving aside keeps what is already there: a second damaged file of the same name, or a
    /// dead letter whose name is taken, gets a suffix instead of destroying the first.
    #[test]
    fn quarantine_and_dead_letters_never_overwrite() {
        let d = tempfile::tempdir().unwrap();
        drop(Outbox::open(d.path()).unwrap());
        let torn = d.path().join(QUEUE).join("00000000000000000001.json");
        for content in ["{ torn one", "{ torn two", "{ torn three"] {
            fs::write(&torn, content).unwrap();
            assert_eq!(Outbox::open(d.path()).unwrap().quarantined().len(), 1);
        }
        let dead = d.path().join(DEAD);
        assert_eq!(
            files(d.path(), DEAD),
            [
                "00000000000000000001.json.unreadable",
                "00000000000000000001.json.unreadable.1",
                "00000000000000000001.json.unreadable.2"
            ]
        );
        assert_eq!(fs::read_to_string(dead.join("00000000000000000001.json.unreadable")).unwrap(), "{ torn one");
        assert_eq!(fs::read_to_string(dead.join("00000000000000000001.json.unreadable.2")).unwrap(), "{ torn three");

        let mut o = Outbox::open(d.path()).unwrap();
        let seq = o.enqueue(vec![ev(AlertKind::BothDown, "one")]);
        let taken = dead.join(format!("{seq:020}.json"));
        fs::write(&taken, "the operator's").unwrap();
        o.dead_letter(seq);
        assert_eq!(fs::read_to_string(&taken).unwrap(), "the operator's");
        let p = dead.join(format!("{seq:020}.json.1"));
        assert!(fs::read_to_string(&p).unwrap().contains("\"one\""));
    }

    /// A FIFO, a link to `/dev/zero`, a dangling link or an oversized file where an entry should
    /// be: `open` neither hangs nor eats memory, and moves each aside.
    #[test]
    fn fifo_device_dangling_and_huge_entries_are_quarantined_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        for t in ["fifo", "zero", "dangling", "huge", "fine"] {
            o.enqueue(vec![ev(AlertKind::BothDown, t)]);
        }
        o.fold(ev(AlertKind::BothDown, "fold fifo"));
        drop(o);
        let q = |seq: u64| d.path().join(QUEUE).join(format!("{seq:020}.json"));
        let fifo = |p: &Path| {
            fs::remove_file(p).unwrap();
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        };
        // Lowest number first: before the fix the open blocks here, before it could read /dev/zero.
        fifo(&q(1));
        fs::remove_file(q(2)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", q(2)).unwrap();
        fs::remove_file(q(3)).unwrap();
        std::os::unix::fs::symlink(d.path().join("nowhere"), q(3)).unwrap();
        let mut huge = fs::read(q(4)).unwrap();
        huge.resize(usize::try_from(MAX_ENTRY_BYTES).unwrap() + 1, b' ');
        fs::write(q(4), huge).unwrap();
        fifo(&d.path().join(FOLD).join("00000000000000000006.json"));
        std::os::unix::fs::symlink("/dev/zero", d.path().join(FLOOD)).unwrap();

        let dir = d.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let o = Outbox::open(&dir).unwrap();
            let flood = o.load_flood();
            tx.send((o, flood)).unwrap();
        });
        let (o, flood) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("open must not block");
        assert!(flood.is_empty());
        assert_eq!(o.len(), 1);
        assert_eq!(o.head().unwrap().events[0].title, "fine");
        let why: Vec<&str> = o.quarantined().iter().map(|q| q.why.as_str()).collect();
        assert_eq!(why.len(), 5, "{why:?}");
        assert!(why[0].contains("FIFO") && why[1].contains("device") && why[3].contains("larger than"), "{why:?}");
        assert!(o.quarantined().iter().all(|q| q.to.is_some()));
        assert!(files(d.path(), FOLD).is_empty());
    }

    #[test]
    fn write_failure_keeps_the_alert_in_memory() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        fs::remove_dir_all(d.path().join(QUEUE)).unwrap();
        fs::write(d.path().join(QUEUE), b"not a dir").unwrap();
        let seq = o.enqueue(vec![ev(AlertKind::BothDown, "one")]);
        assert_eq!(o.head().unwrap().seq, seq);
    }
}
