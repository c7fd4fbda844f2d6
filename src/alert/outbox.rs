//! The durable outbox: every alert to be mailed is a sequence-numbered JSON file, written with
//! fsync before `emit` returns, and removed only once the SMTP server has accepted it (or it is
//! dead-lettered). Delivery takes the lowest number first, so mail goes out in the order it was
//! raised, and a restart replays whatever is left.
//!
//! Layout under `state_dir/outbox/`:
//! ```text
//! queue/00000000000000000042.json   a message to send: one alert, or a digest of folded alerts
//! fold/00000000000000000043.json    one alert held back by flood control for its kind's digest
//! dead/00000000000000000040.json    a message no recipient will take (kept for the operator)
//! flood.json                        flood-control state (when each kind was last mailed, digests due)
//! ```
//! "Acknowledged" for an alert means: its file is on disk (fsync'd file and directory). From then
//! on it survives a crash and is delivered at least once. A crash between the server's 250 and the
//! file's removal sends it again: duplicates are possible, loss is not.
//!
//! The outbox keeps an in-memory index mirroring the files. If a file cannot be written (disk full,
//! read-only state dir) the entry stays in memory, is still delivered by this process, and the error
//! is logged: the alert is then only as durable as the process.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::event::{AlertEvent, AlertKind};
use super::policy::KindState;
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
}

const QUEUE: &str = "queue";
const FOLD: &str = "fold";
const DEAD: &str = "dead";
const FLOOD: &str = "flood.json";

impl Outbox {
    /// Opens (creating it, mode 0700) the outbox in `dir` and loads what a previous run left.
    /// Unreadable entries are moved to `dead/` with an error log rather than blocking the queue.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| OutboxError { path, source }
        };
        for sub in [QUEUE, FOLD, DEAD] {
            fsutil::ensure_private_dir(&dir.join(sub)).map_err(err(&dir.join(sub)))?;
        }
        let mut outbox = Outbox { dir: dir.to_owned(), next_seq: 1, queue: BTreeMap::new(), folds: BTreeMap::new() };
        for (seq, _) in list(&dir.join(DEAD)).map_err(err(&dir.join(DEAD)))? {
            outbox.next_seq = outbox.next_seq.max(seq + 1);
        }
        for (seq, path) in list(&dir.join(QUEUE)).map_err(err(&dir.join(QUEUE)))? {
            outbox.next_seq = outbox.next_seq.max(seq + 1);
            match read_json::<Queued>(&path) {
                Ok(q) if q.seq == seq && !q.events.is_empty() => {
                    outbox.queue.insert(seq, q);
                }
                Ok(_) => outbox.quarantine(&path, seq, "its content does not match its name"),
                Err(e) => outbox.quarantine(&path, seq, &e),
            }
        }
        for (seq, path) in list(&dir.join(FOLD)).map_err(err(&dir.join(FOLD)))? {
            outbox.next_seq = outbox.next_seq.max(seq + 1);
            match read_json::<Folded>(&path) {
                Ok(f) if f.seq == seq => {
                    outbox.folds.insert(seq, f.event);
                }
                Ok(_) => outbox.quarantine(&path, seq, "its content does not match its name"),
                Err(e) => outbox.quarantine(&path, seq, &e),
            }
        }
        Ok(outbox)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues a message for `events` (one alert, or a digest) and returns its sequence number.
    /// The file is fsync'd before this returns; on a write error the entry is kept in memory only.
    pub fn enqueue(&mut self, events: Vec<AlertEvent>) -> (u64, Result<(), OutboxError>) {
        let seq = self.take_seq();
        let q = Queued { seq, events, sent_to: Vec::new(), refused: Vec::new(), attempts: 0 };
        let written = self.write(QUEUE, seq, &q);
        self.queue.insert(seq, q);
        (seq, written)
    }

    /// Holds `event` for its kind's digest.
    pub fn fold(&mut self, event: AlertEvent) -> (u64, Result<(), OutboxError>) {
        let seq = self.take_seq();
        let written = self.write(FOLD, seq, &Folded { seq, event: event.clone() });
        self.folds.insert(seq, event);
        (seq, written)
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
    pub fn seal_digest(&mut self, kind: AlertKind) -> Option<(u64, Result<(), OutboxError>)> {
        let seqs: Vec<u64> = self.folds.iter().filter(|(_, e)| e.kind == kind).map(|(s, _)| *s).collect();
        if seqs.is_empty() {
            return None;
        }
        let events: Vec<AlertEvent> = seqs.iter().filter_map(|s| self.folds.remove(s)).collect();
        let (seq, written) = self.enqueue(events);
        let removed = seqs.iter().try_for_each(|s| self.remove_file(FOLD, *s));
        Some((seq, written.and(removed)))
    }

    /// The flood-control state a previous process saved (empty if none or unreadable).
    pub fn load_flood(&self) -> Vec<(AlertKind, KindState)> {
        let path = self.dir.join(FLOOD);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "flood-control state unreadable, starting afresh: {e}");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Saves the flood-control state (fsync'd), so the next process keeps folding.
    pub fn save_flood(&self, state: &[(AlertKind, KindState)]) -> Result<(), OutboxError> {
        let path = self.dir.join(FLOOD);
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|e| OutboxError { path: path.clone(), source: e.into() })?;
        fsutil::write_atomic(&path, &bytes).map_err(|source| OutboxError { path, source })
    }

    /// The oldest queued message.
    pub fn head(&self) -> Option<&Queued> {
        self.queue.values().next()
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
    pub fn update(&mut self, q: Queued) -> Result<(), OutboxError> {
        let written = self.write(QUEUE, q.seq, &q);
        self.queue.insert(q.seq, q);
        written
    }

    /// The server accepted the message: forget it.
    pub fn remove(&mut self, seq: u64) -> Result<(), OutboxError> {
        self.queue.remove(&seq);
        self.remove_file(QUEUE, seq)
    }

    /// No recipient will ever take this message: move it to `dead/` for the operator.
    pub fn dead_letter(&mut self, seq: u64) -> Result<PathBuf, OutboxError> {
        let q = self.queue.remove(&seq);
        let from = self.path(QUEUE, seq);
        let to = self.path(DEAD, seq);
        match fs::rename(&from, &to) {
            Ok(()) => Ok(to),
            // Never written (memory-only): write it to dead/ now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => match q {
                Some(q) => self.write(DEAD, seq, &q).map(|()| to),
                None => Ok(to),
            },
            Err(source) => Err(OutboxError { path: from, source }),
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn path(&self, sub: &str, seq: u64) -> PathBuf {
        self.dir.join(sub).join(format!("{seq:020}.json"))
    }

    fn write<T: Serialize>(&self, sub: &str, seq: u64, value: &T) -> Result<(), OutboxError> {
        let path = self.path(sub, seq);
        let bytes =
            serde_json::to_vec_pretty(value).map_err(|e| OutboxError { path: path.clone(), source: e.into() })?;
        fsutil::write_atomic(&path, &bytes).map_err(|source| OutboxError { path, source })
    }

    fn remove_file(&self, sub: &str, seq: u64) -> Result<(), OutboxError> {
        let path = self.path(sub, seq);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(OutboxError { path, source }),
        }
    }

    fn quarantine(&self, path: &Path, seq: u64, why: &str) {
        let to = self.path(DEAD, seq).with_extension("unreadable");
        tracing::error!(path = %path.display(), to = %to.display(), "unreadable alert in the outbox, moved aside: {why}");
        if let Err(e) = fs::rename(path, &to) {
            tracing::error!(path = %path.display(), "cannot move the unreadable alert aside: {e}");
        }
    }
}

/// `(seq, path)` of every `<seq>.json` in `dir`, ascending. Leftover temp files from an interrupted
/// write are removed (the rename never happened, so they were never acknowledged).
fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.contains(".tmp.") {
            let _ = fs::remove_file(&path);
            continue;
        }
        if let Some(seq) = name.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) {
            out.push((seq, path));
        } else if let Some(seq) = name.strip_suffix(".unreadable").and_then(|s| s.parse::<u64>().ok()) {
            // Quarantined: only its number matters (never reused).
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
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
            o.enqueue(vec![ev(AlertKind::BothDown, t)]).1.unwrap();
        }
        assert_eq!(
            files(d.path(), QUEUE),
            ["00000000000000000001.json", "00000000000000000002.json", "00000000000000000003.json"]
        );
        o.remove(1).unwrap();
        drop(o);

        let mut o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.head().unwrap().events[0].title, "two");
        o.remove(2).unwrap();
        assert_eq!(o.head().unwrap().events[0].title, "three");
        // Numbers are never reused, so order holds across restarts.
        assert_eq!(o.enqueue(vec![ev(AlertKind::BothDown, "four")]).0, 4);
    }

    #[test]
    fn progress_survives_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "one")]).1.unwrap();
        let mut q = o.head().unwrap().clone();
        q.sent_to.push("a@example.com".into());
        q.attempts = 2;
        o.update(q.clone()).unwrap();
        drop(o);
        let o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.head(), Some(&q));
    }

    #[test]
    fn folded_alerts_become_one_digest_also_after_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.fold(ev(AlertKind::PrimaryRecovered, "r1")).1.unwrap();
        o.fold(ev(AlertKind::BothDown, "b1")).1.unwrap();
        o.fold(ev(AlertKind::PrimaryRecovered, "r2")).1.unwrap();
        drop(o);
        let mut o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.folded_kinds(), [AlertKind::PrimaryRecovered, AlertKind::BothDown]);
        let (seq, r) = o.seal_digest(AlertKind::PrimaryRecovered).unwrap();
        r.unwrap();
        assert_eq!(seq, 4);
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
        o.save_flood(&state).unwrap();
        assert_eq!(Outbox::open(d.path()).unwrap().load_flood(), state);
        fs::write(d.path().join(FLOOD), b"{").unwrap();
        assert!(o.load_flood().is_empty(), "a torn file is not fatal");
    }

    #[test]
    fn dead_letters_leave_the_queue_and_stay_for_the_operator() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "one")]).1.unwrap();
        let p = o.dead_letter(1).unwrap();
        assert!(p.ends_with("dead/00000000000000000001.json"));
        assert!(o.is_empty());
        drop(o);
        let mut o = Outbox::open(d.path()).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.enqueue(vec![ev(AlertKind::BothDown, "two")]).0, 2);
    }

    #[test]
    fn unreadable_entry_is_moved_aside_and_does_not_block_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "one")]).1.unwrap();
        o.enqueue(vec![ev(AlertKind::BothDown, "two")]).1.unwrap();
        drop(o);
        fs::write(d.path().join(QUEUE).join("00000000000000000001.json"), b"{ torn").unwrap();
        fs::write(d.path().join(QUEUE).join("00000000000000000009.json.tmp.77"), b"{").unwrap();
        let o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.head().unwrap().events[0].title, "two");
        assert_eq!(files(d.path(), QUEUE), ["00000000000000000002.json"]);
        assert_eq!(files(d.path(), DEAD), ["00000000000000000001.unreadable"]);
    }

    #[test]
    fn write_failure_keeps_the_alert_in_memory() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path()).unwrap();
        fs::remove_dir_all(d.path().join(QUEUE)).unwrap();
        fs::write(d.path().join(QUEUE), b"not a dir").unwrap();
        let (seq, r) = o.enqueue(vec![ev(AlertKind::BothDown, "one")]);
        assert!(r.is_err());
        assert_eq!(o.head().unwrap().seq, seq);
    }
}
