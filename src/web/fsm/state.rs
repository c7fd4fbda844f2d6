//! What the state machine remembers between steps (persisted as is, with the health counters, by
//! `web::state`) and the knobs it decides with. The serialized shapes here are the state file's
//! format: they only ever gain optional fields.

use serde::{Deserialize, Serialize};

use super::{Phase, Server, Status, SyncKind};
use crate::domain::PerServer;
use crate::timing::Backoff;

/// [`Phase`] as state files (and the status document) hold it, and as logs show it: one phase per
/// pass kind, as every earlier version wrote it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub(super) enum StoredPhase {
    Unmounted,
    Serving { server: Server },
    Mounting { to: Server },
    Resyncing { attempt: u32 },
    Staging { to: Server },
    CatchingUp,
    Reconciling { attempt: u32 },
}

impl From<StoredPhase> for Phase {
    fn from(p: StoredPhase) -> Phase {
        match p {
            StoredPhase::Unmounted => Phase::Unmounted,
            StoredPhase::Serving { server } => Phase::Serving { server },
            StoredPhase::Mounting { to } => Phase::Mounting { to },
            StoredPhase::Resyncing { attempt } => Phase::Syncing { kind: SyncKind::ReverseSync, attempt },
            StoredPhase::Staging { to } => Phase::Staging { to },
            StoredPhase::CatchingUp => Phase::CatchingUp,
            StoredPhase::Reconciling { attempt } => Phase::Syncing { kind: SyncKind::Reconcile, attempt },
        }
    }
}

impl From<Phase> for StoredPhase {
    fn from(p: Phase) -> StoredPhase {
        match p {
            Phase::Unmounted => StoredPhase::Unmounted,
            Phase::Serving { server } => StoredPhase::Serving { server },
            Phase::Mounting { to } => StoredPhase::Mounting { to },
            Phase::Syncing { kind: SyncKind::ReverseSync, attempt } => StoredPhase::Resyncing { attempt },
            Phase::Staging { to } => StoredPhase::Staging { to },
            Phase::CatchingUp => StoredPhase::CatchingUp,
            Phase::Syncing { kind: SyncKind::Reconcile, attempt } => StoredPhase::Reconciling { attempt },
        }
    }
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        StoredPhase::from(*self).fmt(f)
    }
}

/// Operator control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Hold {
    /// Automatic control.
    #[default]
    None,
    /// Stay on the current server: no automatic failover or failback.
    Stay,
    /// Switch to this server (now) and stay there.
    Pinned(Server),
}

/// Health verdicts (after hysteresis) and the last check errors, for decisions and alert texts.
/// Persisted (in [`State`]) in the flat shape of [`StoredSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(from = "StoredSnapshot", into = "StoredSnapshot")]
pub struct Snapshot {
    pub status: PerServer<Status>,
    /// `None` when no witness is configured.
    pub witness: Option<Status>,
    pub error: PerServer<Option<String>>,
    /// The latest check of the server failed (it may still be UP while below `fall`). A server is only
    /// switched TO when it is UP and its latest check passed, so two servers dying together never
    /// cause a switch to the one whose failure count is one step behind.
    pub failing: PerServer<bool>,
    /// The witness's latest check failed: no switch is started until it passes again or the witness
    /// is DOWN (then the node has lost its network), so losing our own link never races a failover.
    pub witness_failing: bool,
}

impl Snapshot {
    pub fn of(&self, s: Server) -> Status {
        self.status[s]
    }

    /// UP and the latest check passed: safe to switch to.
    pub fn usable(&self, s: Server) -> bool {
        self.of(s) == Status::Up && !self.failing[s]
    }
}

/// [`Snapshot`] as state files hold it (one field per server, as written since the first release).
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    primary: Status,
    backup: Status,
    witness: Option<Status>,
    primary_error: Option<String>,
    backup_error: Option<String>,
    #[serde(default)]
    primary_failing: bool,
    #[serde(default)]
    backup_failing: bool,
    #[serde(default)]
    witness_failing: bool,
}

impl From<StoredSnapshot> for Snapshot {
    fn from(s: StoredSnapshot) -> Snapshot {
        Snapshot {
            status: PerServer { primary: s.primary, backup: s.backup },
            witness: s.witness,
            error: PerServer { primary: s.primary_error, backup: s.backup_error },
            failing: PerServer { primary: s.primary_failing, backup: s.backup_failing },
            witness_failing: s.witness_failing,
        }
    }
}

impl From<Snapshot> for StoredSnapshot {
    fn from(s: Snapshot) -> StoredSnapshot {
        StoredSnapshot {
            primary: s.status.primary,
            backup: s.status.backup,
            witness: s.witness,
            primary_error: s.error.primary,
            backup_error: s.error.backup,
            primary_failing: s.failing.primary,
            backup_failing: s.failing.backup,
            witness_failing: s.witness_failing,
        }
    }
}

#[allow(clippy::struct_excessive_bools, reason = "per-episode alert flags, each independent")]
/// The whole decision state; persisted as is (with the health counters) by `web::state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    pub phase: Phase,
    /// Bumped at every failover to the backup; names the episode in alerts and status.
    pub epoch: u64,
    /// Writes may exist on the backup that the primary lacks (set at failover, cleared by failback).
    pub pending_reverse_sync: bool,
    /// The node left the backup without a completed reverse sync during this failover epoch: the
    /// backup's writes must still be copied to the primary (from a staging mount of the backup, once
    /// it is back). Cleared by that reconciliation or by a later completed failback.
    #[serde(default)]
    pub reconcile_epoch: Option<u64>,
    pub hold: Hold,
    pub health: Snapshot,
    /// Wall-clock ms since which each server has been continuously UP: the primary's is the
    /// failback's hold-down, the backup's the reconciliation's. Stored as `primary_up_since` and
    /// `backup_up_since`.
    #[serde(flatten, with = "stored_up_since")]
    pub up_since: PerServer<Option<u64>>,
    /// Failed reverse-sync attempts in a row (attempt numbers in alerts; backoff).
    pub resync_failures: u32,
    /// No reverse-sync attempt before this wall-clock ms (backoff).
    pub resync_not_before: Option<u64>,
    /// Failed direct mounts in a row while the mount point is empty (one alert per outage; backoff).
    #[serde(default)]
    pub mount_failures: u32,
    /// No direct-mount retry before this wall-clock ms (backoff).
    #[serde(default)]
    pub mount_not_before: Option<u64>,
    pub both_down_alerted: bool,
    pub network_lost_alerted: bool,
    pub recovered_alerted: bool,
    /// Alerted that the node will not move to the primary while the dead backup holds writes nothing
    /// would copy back (no reverse-sync target); once per outage of the backup.
    #[serde(default)]
    pub stranded_alerted: bool,
    /// Id of the latest rsync pass started (reverse sync, catch-up, reconciliation). A pass's actions
    /// and its completion carry it, so the late report of an aborted pass is never taken for the
    /// report of a later pass of the same kind.
    #[serde(default)]
    pub pass: u64,
}

impl State {
    /// The pass running in this phase, if any.
    pub fn running_pass(&self) -> Option<u64> {
        match self.phase {
            Phase::Syncing { .. } | Phase::CatchingUp => Some(self.pass),
            Phase::Unmounted | Phase::Serving { .. } | Phase::Mounting { .. } | Phase::Staging { .. } => None,
        }
    }

    /// The server the mount point serves (or is being switched away from), if any.
    pub fn active(&self) -> Option<Server> {
        match self.phase {
            Phase::Unmounted | Phase::Mounting { .. } => None,
            Phase::Serving { server } => Some(server),
            Phase::Syncing { kind, .. } => Some(kind.serving()),
            Phase::Staging { to } => Some(to.other()),
            Phase::CatchingUp => Some(Server::Primary),
        }
    }

    /// The node leaves (or has left) the backup without a completed reverse sync: with a reverse-sync
    /// target configured, the backup's writes become a pending reconciliation of this epoch (durable),
    /// run once the backup is back; without one, the pending flag stays for the operator.
    pub fn leave_backup_unsynced(&mut self, failback: bool) {
        if failback && self.pending_reverse_sync {
            self.reconcile_epoch = Some(self.epoch);
            self.pending_reverse_sync = false;
            self.retry_afresh();
        }
    }

    /// A new pass id (wrapping: a report 2^64 passes late is not a concern, a panic would be).
    pub(super) fn start_pass(&mut self) -> u64 {
        self.pass = self.pass.wrapping_add(1);
        self.pass
    }

    /// A failover to the backup starts a new episode: writes may now land on the backup only. The
    /// retry counters start afresh (a failed reconciliation of an older epoch must not delay it).
    pub(super) fn new_epoch(&mut self) {
        self.epoch = self.epoch.saturating_add(1);
        self.pending_reverse_sync = true;
        self.retry_afresh();
    }

    /// The reverse-sync/reconciliation/switch retries start from the first attempt, at once.
    pub(super) fn retry_afresh(&mut self) {
        self.resync_failures = 0;
        self.resync_not_before = None;
    }

    /// Records `failures` failed attempts in a row and returns the backoff before the next one.
    pub(super) fn retry_later(&mut self, failures: u32, p: &Policy, now_ms: u64) -> u64 {
        let wait = p.backoff_ms(failures);
        self.resync_failures = failures;
        self.resync_not_before = Some(now_ms.saturating_add(wait));
        wait
    }

    /// Stored times further ahead than this node could have set them (the wall clock stepped back,
    /// an edited state file) are pulled back, so no backoff or hold-down lasts longer than configured.
    pub(super) fn clamp_times(&mut self, p: &Policy, now_ms: u64) {
        let cap = |t: &mut Option<u64>, max: u64| *t = t.map(|t| t.min(max));
        cap(&mut self.resync_not_before, now_ms.saturating_add(p.retry_max_ms));
        cap(&mut self.mount_not_before, now_ms.saturating_add(MOUNT_RETRY_MAX_MS));
        cap(&mut self.up_since.primary, now_ms);
        cap(&mut self.up_since.backup, now_ms);
    }

    /// Records the new verdicts and the episode flags that depend on them.
    pub(super) fn observe(&mut self, snap: Snapshot, now_ms: u64) {
        let was = &self.health;
        if snap.status.primary == Status::Up && was.status.primary != Status::Up {
            self.up_since.primary = Some(now_ms);
        }
        if snap.status.primary != Status::Up {
            self.up_since.primary = None;
            self.recovered_alerted = false;
        }
        if snap.status.backup == Status::Up && (was.status.backup != Status::Up || self.up_since.backup.is_none()) {
            self.up_since.backup = Some(now_ms);
        }
        if snap.status.backup != Status::Up {
            self.up_since.backup = None;
        }
        self.both_down_alerted &= snap.status.primary != Status::Up && snap.status.backup != Status::Up;
        self.stranded_alerted &= snap.status.backup != Status::Up;
        self.network_lost_alerted &= snap.witness == Some(Status::Down);
        self.health = snap;
    }
}

/// First wait before retrying a failed direct mount (the mount point is empty meanwhile, so short).
pub const MOUNT_RETRY_INITIAL_MS: u64 = 5_000;
/// The retry wait doubles up to this.
pub const MOUNT_RETRY_MAX_MS: u64 = 60_000;
/// The direct-mount retry backoff.
pub(super) const MOUNT_RETRY: Backoff = Backoff::from_ms(MOUNT_RETRY_INITIAL_MS, MOUNT_RETRY_MAX_MS);

/// Knobs from the config, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub hold_down_ms: u64,
    /// A reverse-sync target is configured: automatic failback is possible.
    pub failback: bool,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Policy {
    /// Backoff before reverse-sync attempt `failures + 1`: the crate's one [`Backoff`], without its
    /// jitter. A pure function gives the same answer for the same input (the property tests and the
    /// persisted `resync_not_before` rely on that), and one node retrying its own reverse sync has no
    /// peers to fall out of lockstep with.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        Backoff::from_ms(self.retry_initial_ms, self.retry_max_ms).delay_ms(failures)
    }
}

/// [`State::up_since`] as state files hold it: two fields (the backup's since a later release).
mod stored_up_since {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::domain::PerServer;

    #[derive(Serialize, Deserialize)]
    struct Stored {
        primary_up_since: Option<u64>,
        #[serde(default)]
        backup_up_since: Option<u64>,
    }

    pub fn serialize<S: Serializer>(v: &PerServer<Option<u64>>, s: S) -> Result<S::Ok, S::Error> {
        Stored { primary_up_since: v.primary, backup_up_since: v.backup }.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PerServer<Option<u64>>, D::Error> {
        let s = Stored::deserialize(d)?;
        Ok(PerServer { primary: s.primary_up_since, backup: s.backup_up_since })
    }
}
