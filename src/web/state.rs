//! Durable web state in `<state_dir>/web.state.json` (written with `write_atomic`): the state machine's
//! state (phase, failover epoch, pending reverse sync, hold, backoff) and the hysteresis counters, so a
//! restart of the daemon or of the node, and successive `web --once` runs, resume where they stopped.
//! Operator requests travel through `<state_dir>/web.request.json`, picked up by the running daemon (or
//! the next `--once` run) within one interval.
//!
//! An unusable file (corrupt JSON, absurd values, a FIFO, a device, a symlink, too large) never stops
//! the node: it is moved aside to `<name>.corrupt-<UTC time>` (never over an earlier one) and the
//! caller starts from what mountinfo shows and alerts. Reads never block and are capped.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsm::{Request, State};
use super::health::Health;
use crate::sys::fsutil::{read_capped, write_atomic};

/// Larger state or request files are not ours.
const MAX_STATE_BYTES: u64 = 1 << 20;
const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// The largest failover epoch accepted from disk (one per failover: never reached honestly; JSON
/// readers keep integers exact up to here).
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("web state {path} is unusable ({problem}) and cannot be moved aside")]
    Quarantine {
        path: PathBuf,
        problem: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Hysteresis counters of every probed target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Healths {
    pub primary: Health,
    pub backup: Health,
    pub witness: Health,
}

/// Everything persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Durable {
    pub fsm: State,
    pub health: Healths,
}

/// A state or request file that could not be used, and where it was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub path: PathBuf,
    pub problem: String,
    /// `None` when it could not be moved (then it was removed, or is still there: see `problem`).
    pub moved_to: Option<PathBuf>,
}

/// What [`load`] found: the state, and the unusable file it replaced (the caller rebuilds from
/// mountinfo and alerts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    pub durable: Durable,
    pub quarantined: Option<Quarantined>,
}

impl From<Durable> for Loaded {
    fn from(durable: Durable) -> Loaded {
        Loaded { durable, quarantined: None }
    }
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("web.state.json")
}

/// Held by the daemon and by `--once` runs (one instance per state directory).
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("web.lock")
}

pub fn request_path(state_dir: &Path) -> PathBuf {
    state_dir.join("web.request.json")
}

/// Loads the durable state; a missing file is a fresh start, an unusable one is moved aside (a
/// fresh start too, flagged in [`Loaded::quarantined`]). Errs only when it cannot be moved aside.
pub fn load(state_dir: &Path) -> Result<Loaded, StateError> {
    let path = state_path(state_dir);
    let problem = match read_regular(&path, MAX_STATE_BYTES) {
        Ok(None) => return Ok(Loaded::default()),
        Ok(Some(bytes)) => match parse_state(&bytes) {
            Ok(durable) => return Ok(durable.into()),
            Err(p) => p,
        },
        Err(p) => p,
    };
    match quarantine(&path) {
        Ok(to) => {
            tracing::error!(path = %path.display(), moved_to = %to.display(), problem, "unusable web state moved aside; starting from the mount table");
            Ok(Loaded {
                durable: Durable::default(),
                quarantined: Some(Quarantined { path, problem, moved_to: Some(to) }),
            })
        }
        Err(source) => Err(StateError::Quarantine { path, problem, source }),
    }
}

fn parse_state(bytes: &[u8]) -> Result<Durable, String> {
    let d: Durable = serde_json::from_slice(bytes).map_err(|e| format!("not valid web state JSON: {e}"))?;
    let f = &d.fsm;
    if f.epoch > MAX_EPOCH {
        return Err(format!("fsm.epoch = {} is beyond {MAX_EPOCH}", f.epoch));
    }
    if let Some(r) = f.reconcile_epoch.filter(|r| *r > f.epoch) {
        return Err(format!("fsm.reconcile_epoch = {r} is after fsm.epoch = {}", f.epoch));
    }
    Ok(d)
}

/// Reads `path` if it is a regular file (`None` when missing). A symlink is refused (the next atomic
/// write would silently replace the link, and its target may be a device or dangle), as are FIFOs,
/// devices, directories and files over `max`: the error says which.
fn read_regular(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot stat: {e}")),
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(path).map_or_else(|e| format!("? ({e})"), |t| t.display().to_string());
            let dangling = if std::fs::metadata(path).is_err() { ", dangling" } else { "" };
            return Err(format!("is a symbolic link to {target}{dangling}, not a regular file"));
        }
        Ok(_) => {}
    }
    read_capped(path, max).map(Some).map_err(|e| e.to_string())
}

/// Moves `path` aside to `<path>.corrupt-<UTC time>[-N]`, never over an existing file.
pub fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut last = std::io::Error::other("no free quarantine name");
    for n in 0..100 {
        let mut name = path.as_os_str().to_owned();
        name.push(if n == 0 { format!(".corrupt-{stamp}") } else { format!(".corrupt-{stamp}-{n}") });
        let to = PathBuf::from(name);
        match renameat2(AT_FDCWD, path, AT_FDCWD, &to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(to),
            Err(nix::Error::EEXIST) => last = std::io::Error::from(nix::Error::EEXIST),
            Err(nix::Error::EINVAL) => {
                // no RENAME_NOREPLACE on this file system: we hold the state lock, check then rename
                if std::fs::symlink_metadata(&to).is_err() {
                    std::fs::rename(path, &to)?;
                    return Ok(to);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last)
}

pub fn save(state_dir: &Path, d: &Durable) -> Result<(), StateError> {
    let path = state_path(state_dir);
    let bytes = serde_json::to_vec_pretty(d).map_err(|e| StateError::Write { path: path.clone(), source: e.into() })?;
    write_atomic(&path, &bytes).map_err(|source| StateError::Write { path, source })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RequestFile {
    request: Request,
    requested_at: String,
}

/// Records an operator request durably (the last request wins).
pub fn put_request(state_dir: &Path, request: Request) -> Result<(), StateError> {
    let path = request_path(state_dir);
    let doc = RequestFile { request, requested_at: chrono::Utc::now().to_rfc3339() };
    let bytes =
        serde_json::to_vec_pretty(&doc).map_err(|e| StateError::Write { path: path.clone(), source: e.into() })?;
    write_atomic(&path, &bytes).map_err(|source| StateError::Write { path, source })
}

/// What [`take_request`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    Nothing,
    Request(Request),
    /// Not a request we can read: moved aside (or removed), never acted on, never read again.
    Unreadable(Quarantined),
}

/// Takes the pending request, if any: the file is removed, or moved aside when unusable.
pub fn take_request(state_dir: &Path) -> Taken {
    let path = request_path(state_dir);
    let problem = match read_regular(&path, MAX_REQUEST_BYTES) {
        Ok(None) => return Taken::Nothing,
        Ok(Some(bytes)) => match serde_json::from_slice::<RequestFile>(&bytes) {
            Ok(r) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the taken request");
                }
                return Taken::Request(r.request);
            }
            Err(e) => format!("not a valid request: {e}"),
        },
        Err(p) => p,
    };
    let moved_to = match quarantine(&path) {
        Ok(to) => Some(to),
        Err(e) => {
            // never act on it, and never read it again every interval
            let removed = std::fs::remove_file(&path)
                .map_or_else(|e| format!("cannot remove it either: {e}"), |()| "removed".into());
            return Taken::Unreadable(Quarantined {
                path,
                problem: format!("{problem}; cannot move it aside: {e}; {removed}"),
                moved_to: None,
            });
        }
    };
    Taken::Unreadable(Quarantined { path, problem, moved_to })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::web::fsm::{Phase, Server};

    #[test]
    fn state_round_trips_and_missing_is_fresh() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), Loaded::default());
        let mut s = Durable::default();
        s.fsm.phase = Phase::Serving { server: Server::Backup };
        s.fsm.epoch = 4;
        s.fsm.pending_reverse_sync = true;
        s.health.primary.fails = 2;
        save(d.path(), &s).unwrap();
        assert_eq!(load(d.path()).unwrap(), s.into());
    }

    #[test]
    fn a_pending_reconciliation_is_durable_and_older_state_files_still_load() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Durable::default();
        s.fsm.epoch = 3;
        s.fsm.reconcile_epoch = Some(3);
        s.fsm.up_since.backup = Some(1_000);
        save(d.path(), &s).unwrap();
        assert_eq!(load(d.path()).unwrap().durable.fsm.reconcile_epoch, Some(3));
        // a state file written before the reconciliation fields existed
        let mut v: serde_json::Value = serde_json::to_value(Durable::default()).unwrap();
        let fsm = v["fsm"].as_object_mut().unwrap();
        fsm.remove("reconcile_epoch");
        fsm.remove("backup_up_since");
        std::fs::write(state_path(d.path()), v.to_string()).unwrap();
        assert_eq!(load(d.path()).unwrap(), Loaded::default());
    }

    /// The per-server values are written one field per server, as every earlier version wrote and
    /// reads them (a downgrade, or a node of the farm still on the previous release).
    #[test]
    fn per_server_values_keep_the_state_files_flat_shape() {
        let mut s = Durable::default();
        s.fsm.up_since.primary = Some(7);
        s.fsm.health.error.backup = Some("refused".into());
        s.fsm.health.failing.primary = true;
        let v = serde_json::to_value(&s).unwrap();
        let fsm = &v["fsm"];
        assert_eq!((fsm["primary_up_since"].as_u64(), fsm["backup_up_since"].is_null()), (Some(7), true), "{fsm}");
        let h = &fsm["health"];
        assert_eq!(
            (h["primary"].as_str(), h["backup_error"].as_str(), h["primary_failing"].as_bool()),
            (Some("unknown"), Some("refused"), Some(true)),
            "{h}"
        );
        assert!(fsm.get("up_since").is_none() && h.get("status").is_none() && h.get("failing").is_none(), "{fsm}");
        assert_eq!(serde_json::from_value::<Durable>(v).unwrap(), s);
    }

    /// Loads a state dir whose state file is unusable: a fresh state, the file moved aside (and
    /// nothing left at the state path); returns the problem text.
    fn quarantined(d: &Path) -> String {
        let l = load(d).unwrap();
        assert_eq!(l.durable, Durable::default());
        let q = l.quarantined.expect("quarantined");
        assert_eq!(q.path, state_path(d));
        let to = q.moved_to.unwrap();
        assert!(to.file_name().unwrap().to_str().unwrap().starts_with("web.state.json.corrupt-"), "{to:?}");
        assert!(std::fs::symlink_metadata(&to).is_ok(), "{to:?} exists");
        assert!(std::fs::symlink_metadata(state_path(d)).is_err(), "moved, not copied");
        q.problem
    }

    #[test]
    fn corrupt_state_is_moved_aside_never_over_an_earlier_one() {
        let d = tempfile::tempdir().unwrap();
        for content in ["{", "{\"fsm\": 1}"] {
            std::fs::write(state_path(d.path()), content).unwrap();
            let p = quarantined(d.path());
            assert!(p.starts_with("not valid web state JSON: "), "{p}");
        }
        // both kept (same millisecond or not), with their own content
        let mut kept: Vec<String> =
            std::fs::read_dir(d.path()).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
        kept.sort();
        assert_eq!(kept, ["{", "{\"fsm\": 1}"]);
    }

    #[test]
    fn a_fifo_state_file_never_blocks() {
        let d = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&state_path(d.path()), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(quarantined(d.path()), "is a FIFO, not a regular file");
    }

    #[test]
    fn symlinks_are_refused_whatever_they_point_to() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", state_path(d.path())).unwrap();
        assert_eq!(quarantined(d.path()), "is a symbolic link to /dev/zero, not a regular file");
        let gone = d.path().join("gone.json");
        std::os::unix::fs::symlink(&gone, state_path(d.path())).unwrap();
        assert_eq!(
            quarantined(d.path()),
            format!("is a symbolic link to {}, dangling, not a regular file", gone.display())
        );
    }

    #[test]
    fn oversize_and_absurd_values_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(state_path(d.path()), vec![b' '; 2 << 20]).unwrap();
        assert_eq!(quarantined(d.path()), "larger than 1048576 bytes");
        let mut s = Durable::default();
        s.fsm.epoch = u64::MAX;
        save(d.path(), &s).unwrap();
        assert_eq!(quarantined(d.path()), format!("fsm.epoch = {} is beyond {MAX_EPOCH}", u64::MAX));
        s.fsm.epoch = 2;
        s.fsm.reconcile_epoch = Some(3);
        save(d.path(), &s).unwrap();
        assert_eq!(quarantined(d.path()), "fsm.reconcile_epoch = 3 is after fsm.epoch = 2");
    }

    #[test]
    fn a_state_file_that_cannot_be_moved_aside_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("no/such/dir");
        // not reachable: stat fails with NotFound, which is a fresh start; use a file as a directory
        std::fs::write(d.path().join("file"), "x").unwrap();
        let e = load(&d.path().join("file")).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "web state {}/web.state.json is unusable (cannot stat: ",
                d.path().join("file").display()
            )),
            "{e}"
        );
        assert_eq!(load(&missing).unwrap(), Loaded::default());
    }

    #[test]
    fn requests_are_taken_once() {
        let d = tempfile::tempdir().unwrap();
        put_request(d.path(), Request::FailoverTo(Server::Backup)).unwrap();
        assert_eq!(take_request(d.path()), Taken::Request(Request::FailoverTo(Server::Backup)));
        assert_eq!(take_request(d.path()), Taken::Nothing);
    }

    #[test]
    fn unreadable_requests_are_moved_aside_never_acted_on() {
        let d = tempfile::tempdir().unwrap();
        let p = request_path(d.path());
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let Taken::Unreadable(q) = take_request(d.path()) else { panic!("a FIFO request") };
        assert_eq!(q.problem, "is a FIFO, not a regular file");
        assert!(q.moved_to.unwrap().to_str().unwrap().contains("web.request.json.corrupt-"));
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let Taken::Unreadable(q) = take_request(d.path()) else { panic!("a symlink request") };
        assert_eq!(q.problem, "is a symbolic link to /dev/zero, not a regular file");
        std::fs::write(&p, "{\"request\": \"failover-to\"}").unwrap();
        let Taken::Unreadable(q) = take_request(d.path()) else { panic!("a bad request") };
        assert!(q.problem.starts_with("not a valid request: "), "{}", q.problem);
        assert_eq!(take_request(d.path()), Taken::Nothing, "never read again");
    }
}
