//! Storage role metrics: per remote the queue (read from the queues at each scrape), the replication
//! lag, every rsync run by result and exit code with what it sent; overflow rescans; watches.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::FGauge;
use crate::sys::rsync::{ExitClass, RsyncReport, SpawnError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemoteLabel {
    pub remote: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabel {
    pub remote: String,
    /// `batch` (real-time changes) or `full-sync` (one tree).
    pub kind: String,
    /// `success`, `partial`, `transient`, `fatal`.
    pub result: String,
    /// rsync's exit code; `killed` (deadline, stop) or `spawn-error` (rsync did not start).
    pub exit_code: String,
}

/// What an rsync run was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    Batch,
    FullSync,
}

/// A replication queue as a scrape reads it (implemented by `storage::remote::Queue`).
pub trait QueueView: Send + Sync {
    /// Changed paths queued or being pushed.
    fn paths(&self) -> usize;
    /// Trees owed a full sync.
    fn full_syncs(&self) -> usize;
    /// How long the queue has held unpushed changes (zero when caught up).
    fn lag(&self) -> std::time::Duration;
}

#[derive(Default)]
pub struct StorageMetrics {
    queue_paths: Family<RemoteLabel, Gauge>,
    full_sync_pending: Family<RemoteLabel, Gauge>,
    lag: Family<RemoteLabel, FGauge>,
    pushes: Family<PushLabel, Counter>,
    sent_bytes: Family<RemoteLabel, Counter>,
    sent_files: Family<RemoteLabel, Counter>,
    overflow_rescans: Counter,
    watches: Gauge,
    queues: Mutex<Vec<(String, Arc<dyn QueueView>)>>,
}

fn label(remote: &str) -> RemoteLabel {
    RemoteLabel { remote: remote.to_owned() }
}

pub fn class_name(c: ExitClass) -> &'static str {
    match c {
        ExitClass::Success => "success",
        ExitClass::Partial => "partial",
        ExitClass::Transient => "transient",
        ExitClass::Fatal => "fatal",
    }
}

impl StorageMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "nfsguard_storage_queue_paths",
            "Changed paths queued (or being pushed) for the remote",
            self.queue_paths.clone(),
        );
        r.register(
            "nfsguard_storage_full_sync_pending",
            "Trees owed a full sync to the remote",
            self.full_sync_pending.clone(),
        );
        r.register(
            "nfsguard_storage_replication_lag_seconds",
            "How long the remote's queue has held unpushed changes (0 when caught up): the age of the oldest unpushed change, at most",
            self.lag.clone(),
        );
        r.register(
            "nfsguard_storage_pushes",
            "rsync runs to the remote, by kind, result and exit code",
            self.pushes.clone(),
        );
        r.register("nfsguard_storage_sent_bytes", "Bytes rsync reported sent to the remote", self.sent_bytes.clone());
        r.register(
            "nfsguard_storage_sent_files",
            "Files rsync reported transferred to the remote",
            self.sent_files.clone(),
        );
        r.register(
            "nfsguard_storage_overflow_rescans",
            "Event overflows (inotify queue, event channel, out of watches) that queued a full sync",
            self.overflow_rescans.clone(),
        );
        r.register("nfsguard_storage_watched_directories", "Directories under inotify watch", self.watches.clone());
    }

    /// The replicator started watching `watches` directories; its queues are read at each scrape
    /// (depth and lag cost a lock, no I/O).
    pub fn started(&self, watches: u64, queues: Vec<(String, Arc<dyn QueueView>)>) {
        self.watches(watches);
        for (name, _) in &queues {
            // a series from the start (rate() needs two samples)
            drop(self.pushes.get_or_create(&PushLabel {
                remote: name.clone(),
                kind: "batch".into(),
                result: "success".into(),
                exit_code: "0".into(),
            }));
            drop(self.sent_bytes.get_or_create(&label(name)));
            drop(self.sent_files.get_or_create(&label(name)));
        }
        *self.queues.lock().unwrap_or_else(PoisonError::into_inner) = queues;
    }

    pub(super) fn refresh(&self) {
        for (name, q) in self.queues.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let l = label(name);
            self.queue_paths.get_or_create(&l).set(i64::try_from(q.paths()).unwrap_or(i64::MAX));
            self.full_sync_pending.get_or_create(&l).set(i64::try_from(q.full_syncs()).unwrap_or(i64::MAX));
            self.lag.get_or_create(&l).set(q.lag().as_secs_f64());
        }
    }

    /// One rsync run to `remote` ended (or did not start).
    pub fn pushed(&self, remote: &str, kind: PushKind, r: &Result<RsyncReport, SpawnError>) {
        let (result, exit_code) = match r {
            Ok(r) => (class_name(r.class), r.code.map_or_else(|| "killed".to_owned(), |c| c.to_string())),
            Err(_) => ("fatal", "spawn-error".to_owned()),
        };
        let kind = match kind {
            PushKind::Batch => "batch",
            PushKind::FullSync => "full-sync",
        };
        self.pushes
            .get_or_create(&PushLabel { remote: remote.into(), kind: kind.into(), result: result.into(), exit_code })
            .inc();
        if let Ok(r) = r {
            self.sent_bytes.get_or_create(&label(remote)).inc_by(r.bytes);
            self.sent_files.get_or_create(&label(remote)).inc_by(r.files);
        }
    }

    pub fn overflow(&self) {
        self.overflow_rescans.inc();
    }

    pub fn watches(&self, dirs: u64) {
        self.watches.set(i64::try_from(dirs).unwrap_or(i64::MAX));
    }
}
