//! Per-remote counters, written to `<state_dir>/storage.status.json` for `nfs-guard status`. Writes
//! are coalesced (at most one per second) so a busy replicator does not fsync a status file per batch.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteStatus {
    pub name: String,
    pub url: String,
    /// `idle`, `pushing`, `full-sync`, `retrying`.
    pub state: String,
    pub queue: usize,
    pub full_sync_pending: Vec<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub batches: u64,
    pub files: u64,
    pub bytes: u64,
    pub retries: u64,
    /// Wall-clock ms since which changes have waited unpushed (replication lag = now - this);
    /// `None` when caught up.
    pub behind_since_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageStatus {
    pub pid: u32,
    pub trees: Vec<String>,
    pub watches: u64,
    pub overflows: u64,
    /// Changes seen but not handed to the remotes yet: in their coalescing window, or files still
    /// being written (waiting for their close, `quiet` or `settle`). Caught up: 0 here and every
    /// remote idle with an empty queue.
    pub pending: usize,
    pub remotes: Vec<RemoteStatus>,
}

/// Shared status document plus a "changed" signal for the writer task.
pub struct Board {
    doc: Mutex<StorageStatus>,
    changed: Notify,
}

impl Board {
    pub fn new(doc: StorageStatus) -> Arc<Board> {
        Arc::new(Board { doc: Mutex::new(doc), changed: Notify::new() })
    }

    pub fn update(&self, f: impl FnOnce(&mut StorageStatus)) {
        f(&mut self.doc.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_one();
    }

    pub fn remote(&self, i: usize, f: impl FnOnce(&mut RemoteStatus)) {
        self.update(|d| {
            if let Some(r) = d.remotes.get_mut(i) {
                f(r);
            }
        });
    }

    pub fn snapshot(&self) -> StorageStatus {
        self.doc.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Writes the document whenever it changed, at most once per second, and once more at shutdown.
    pub fn spawn_writer(
        self: &Arc<Self>,
        state_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = me.changed.notified() => {}
                    () = shutdown.cancelled() => break,
                }
                crate::status::write(&state_dir, "storage", &me.snapshot());
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => break,
                }
            }
            crate::status::write(&state_dir, "storage", &me.snapshot());
        })
    }
}

pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}
