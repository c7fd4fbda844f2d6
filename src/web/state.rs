//! Durable web state in `<state_dir>/web.state.json` (written with `write_atomic`): the state machine's
//! state (phase, failover epoch, pending reverse sync, hold, backoff) and the hysteresis counters, so a
//! restart of the daemon or of the node, and successive `web --once` runs, resume where they stopped.
//! Operator requests travel through `<state_dir>/web.request.json`, picked up by the running daemon (or
//! the next `--once` run) within one interval.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsm::{Request, State};
use super::health::Health;
use crate::sys::fsutil::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read web state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web state {path} is corrupt (move it away to start fresh)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
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

/// Loads the durable state; a missing file is a fresh start.
pub fn load(state_dir: &Path) -> Result<Durable, StateError> {
    let path = state_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Durable::default()),
        Err(source) => Err(StateError::Read { path, source }),
    }
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

/// Takes the pending request, if any, removing the file. An unreadable request is logged and dropped.
pub fn take_request(state_dir: &Path) -> Option<Request> {
    let path = request_path(state_dir);
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match serde_json::from_slice::<RequestFile>(&bytes) {
        Ok(r) => Some(r.request),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable operator request");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::web::fsm::{Phase, Server};

    #[test]
    fn state_round_trips_and_missing_is_fresh() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), Durable::default());
        let mut s = Durable::default();
        s.fsm.phase = Phase::Serving { server: Server::Backup };
        s.fsm.epoch = 4;
        s.fsm.pending_reverse_sync = true;
        s.health.primary.fails = 2;
        save(d.path(), &s).unwrap();
        assert_eq!(load(d.path()).unwrap(), s);
    }

    #[test]
    fn a_pending_reconciliation_is_durable_and_older_state_files_still_load() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Durable::default();
        s.fsm.reconcile_epoch = Some(3);
        s.fsm.backup_up_since = Some(1_000);
        save(d.path(), &s).unwrap();
        assert_eq!(load(d.path()).unwrap().fsm.reconcile_epoch, Some(3));
        // a state file written before the reconciliation fields existed
        let mut v: serde_json::Value = serde_json::to_value(Durable::default()).unwrap();
        let fsm = v["fsm"].as_object_mut().unwrap();
        fsm.remove("reconcile_epoch");
        fsm.remove("backup_up_since");
        std::fs::write(state_path(d.path()), v.to_string()).unwrap();
        assert_eq!(load(d.path()).unwrap(), Durable::default());
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(state_path(d.path()), "{").unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("web.state.json is corrupt"), "{e}");
    }

    #[test]
    fn requests_are_taken_once() {
        let d = tempfile::tempdir().unwrap();
        put_request(d.path(), Request::FailoverTo(Server::Backup)).unwrap();
        assert_eq!(take_request(d.path()), Some(Request::FailoverTo(Server::Backup)));
        assert_eq!(take_request(d.path()), None);
    }
}
