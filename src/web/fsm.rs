//! The failover state machine: a PURE function `step(&State, Event, &Policy, now_ms) -> Transition`.
//! It decides; it performs nothing, reads no clock (`now_ms` is a parameter) and holds no alert prose:
//! it raises [`Action::Notify`] with a small [`Fact`], which `alert::notice` renders. Events are past-tense facts (health verdicts after hysteresis,
//! effect completions, operator requests); actions are imperatives the controller carries out and
//! reports back. Work in progress is a phase (`Mounting`, `Resyncing`, `Staging`, `CatchingUp`), never a
//! flag, so a restart knows exactly what was interrupted.
//!
//! Ordering promises encoded here: the primary is never mounted again after a failover until a reverse
//! sync backup->primary has succeeded (or the operator forces it); the staged switch keeps the old mount
//! until the new one is verified; both-down and network-lost alert once per episode. A running rsync pass
//! never blocks a failover: when a server it reads or writes goes DOWN, or the node moves on, the pass is
//! aborted (`AbortPass`) and what it owed stays recorded; every pass carries an id, so the late report of
//! an aborted pass is never taken for the report of the next one.

use serde::{Deserialize, Serialize};

use crate::alert::notice::Context;
pub use crate::alert::notice::{Fact, FailoverCause, Notice, Pass};
pub use crate::domain::{PerServer, Request, Server, Status};
use crate::timing::doubling_ms;

/// What the node is doing.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredPhase", into = "StoredPhase")]
pub enum Phase {
    /// Nothing of ours is mounted (start-up, or a mount failed after the old one was detached).
    Unmounted,
    /// The mount point serves this server.
    Serving { server: Server },
    /// Detaching the old (dead) mount and mounting `to` directly.
    Mounting { to: Server },
    /// An rsync pass backup->primary, attempt `attempt`, while serving `kind.serving()`: a reverse sync
    /// through the mount point (the backup), or a reconciliation from a staging mount of the backup
    /// (the node left the backup without a completed reverse sync).
    Syncing { kind: SyncKind, attempt: u32 },
    /// Staged switch to `to`: new mount ready at a staging dir, then moved onto the mount point.
    Staging { to: Server },
    /// Serving the primary again; catch-up pass from the kept backup mount running.
    CatchingUp,
}

/// Which backup->primary pass a [`Phase::Syncing`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Pass 1 of a failback, serving the backup.
    ReverseSync,
    /// The backup's writes of an epoch the node left unsynced, serving the primary.
    Reconcile,
}

impl SyncKind {
    /// The server the mount point serves during the pass.
    pub fn serving(self) -> Server {
        match self {
            SyncKind::ReverseSync => Server::Backup,
            SyncKind::Reconcile => Server::Primary,
        }
    }

    /// The pass, as alerts name it.
    fn pass(self, attempt: u32) -> Pass {
        match self {
            SyncKind::ReverseSync => Pass::ReverseSync { attempt },
            SyncKind::Reconcile => Pass::Reconcile { attempt },
        }
    }
}

/// [`Phase`] as state files (and the status document) hold it, and as logs show it: one phase per
/// pass kind, as every earlier version wrote it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
enum StoredPhase {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    pub primary: Status,
    pub backup: Status,
    /// `None` when no witness is configured.
    pub witness: Option<Status>,
    pub primary_error: Option<String>,
    pub backup_error: Option<String>,
    /// The latest check of the server failed (it may still be UP while below `fall`). A server is only
    /// switched TO when it is UP and its latest check passed, so two servers dying together never
    /// cause a switch to the one whose failure count is one step behind.
    #[serde(default)]
    pub primary_failing: bool,
    #[serde(default)]
    pub backup_failing: bool,
    /// The witness's latest check failed: no switch is started until it passes again or the witness
    /// is DOWN (then the node has lost its network), so losing our own link never races a failover.
    #[serde(default)]
    pub witness_failing: bool,
}

impl Snapshot {
    pub fn of(&self, s: Server) -> Status {
        match s {
            Server::Primary => self.primary,
            Server::Backup => self.backup,
        }
    }

    /// UP and the latest check passed: safe to switch to.
    pub fn usable(&self, s: Server) -> bool {
        let failing = match s {
            Server::Primary => self.primary_failing,
            Server::Backup => self.backup_failing,
        };
        self.of(s) == Status::Up && !failing
    }
}

#[allow(clippy::struct_excessive_bools, reason = "per-episode alert flags, each independent")]
/// The whole decision state; persisted as is (with the health counters) by `web::state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Wall-clock ms since which the primary has been continuously UP (hold-down for failback).
    pub primary_up_since: Option<u64>,
    /// Wall-clock ms since which the backup has been continuously UP (hold-down for reconciliation).
    #[serde(default)]
    pub backup_up_since: Option<u64>,
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

impl Default for State {
    fn default() -> Self {
        State {
            phase: Phase::Unmounted,
            epoch: 0,
            pending_reverse_sync: false,
            reconcile_epoch: None,
            hold: Hold::None,
            health: Snapshot::default(),
            primary_up_since: None,
            backup_up_since: None,
            resync_failures: 0,
            resync_not_before: None,
            mount_failures: 0,
            mount_not_before: None,
            both_down_alerted: false,
            network_lost_alerted: false,
            recovered_alerted: false,
            stranded_alerted: false,
            pass: 0,
        }
    }
}

impl State {
    /// The pass running in this phase, if any.
    pub fn running_pass(&self) -> Option<u64> {
        match self.phase {
            Phase::Syncing { .. } | Phase::CatchingUp => Some(self.pass),
            Phase::Unmounted | Phase::Serving { .. } | Phase::Mounting { .. } | Phase::Staging { .. } => None,
        }
    }

    /// A new pass id (wrapping: a report 2^64 passes late is not a concern, a panic would be).
    fn start_pass(&mut self) -> u64 {
        self.pass = self.pass.wrapping_add(1);
        self.pass
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

    /// A failover to the backup starts a new episode: writes may now land on the backup only. The
    /// retry counters start afresh (a failed reconciliation of an older epoch must not delay it).
    fn new_epoch(&mut self) {
        self.epoch = self.epoch.saturating_add(1);
        self.pending_reverse_sync = true;
        self.resync_failures = 0;
        self.resync_not_before = None;
    }

    /// The node leaves (or has left) the backup without a completed reverse sync: with a reverse-sync
    /// target configured, the backup's writes become a pending reconciliation of this epoch (durable),
    /// run once the backup is back; without one, the pending flag stays for the operator.
    pub fn leave_backup_unsynced(&mut self, failback: bool) {
        if failback && self.pending_reverse_sync {
            self.reconcile_epoch = Some(self.epoch);
            self.pending_reverse_sync = false;
            self.resync_failures = 0;
            self.resync_not_before = None;
        }
    }
}

/// First wait before retrying a failed direct mount (the mount point is empty meanwhile, so short).
pub const MOUNT_RETRY_INITIAL_MS: u64 = 5_000;
/// The retry wait doubles up to this.
pub const MOUNT_RETRY_MAX_MS: u64 = 60_000;

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
    /// Backoff before reverse-sync attempt `failures + 1`: doubling from `retry_initial`, capped.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        doubling_ms(self.retry_initial_ms, self.retry_max_ms, failures)
    }
}

/// Past-tense facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A check finished; the snapshot holds every verdict after hysteresis.
    HealthObserved(Snapshot),
    /// Time passed (backoff and hold-down expiry).
    Ticked,
    /// The mount point now serves `server` (verified in mountinfo). `old_mount` is the mountinfo id
    /// of the mount that was detached, if any (to report processes still holding it).
    MountSucceeded {
        server: Server,
        old_mount: Option<u64>,
    },
    /// The direct mount failed; nothing of ours is mounted now.
    MountFailed {
        server: Server,
        error: String,
    },
    /// Reverse-sync pass `pass` finished (each pass completion names its pass: see [`State::pass`]).
    ReverseSyncSucceeded {
        pass: u64,
        files: u64,
        bytes: u64,
        elapsed_ms: u64,
    },
    ReverseSyncFailed {
        pass: u64,
        error: String,
    },
    /// The staged switch to `to` completed (verified).
    StagedSwitchSucceeded {
        to: Server,
        old_mount: Option<u64>,
    },
    /// The staged switch failed; `serving` is what the mount point serves now.
    StagedSwitchFailed {
        to: Server,
        error: String,
        serving: Option<Server>,
    },
    CatchUpFinished {
        pass: u64,
        result: Result<(u64, u64), String>,
    },
    /// The reconciliation backup->primary (from the backup's staging mount) succeeded.
    ReconcileSucceeded {
        pass: u64,
        files: u64,
        bytes: u64,
        elapsed_ms: u64,
    },
    ReconcileFailed {
        pass: u64,
        error: String,
    },
    Requested(Request),
}

impl Event {
    /// The pass a pass completion reports on.
    fn pass(&self) -> Option<u64> {
        match self {
            Event::ReverseSyncSucceeded { pass, .. }
            | Event::ReverseSyncFailed { pass, .. }
            | Event::CatchUpFinished { pass, .. }
            | Event::ReconcileSucceeded { pass, .. }
            | Event::ReconcileFailed { pass, .. } => Some(*pass),
            Event::HealthObserved(_)
            | Event::Ticked
            | Event::MountSucceeded { .. }
            | Event::MountFailed { .. }
            | Event::StagedSwitchSucceeded { .. }
            | Event::StagedSwitchFailed { .. }
            | Event::Requested(_) => None,
        }
    }
}

/// Imperatives for the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Detach whatever is at the mount point (force, lazily) and mount `server` directly.
    Mount { server: Server },
    /// Push the mount point's content (the backup) to the primary; report with `pass`.
    ReverseSync { attempt: u32, pass: u64 },
    /// Mount `to` at a staging dir, verify, then swap it onto the mount point. `keep_old`: keep the old
    /// mount reachable at a second staging dir for the catch-up pass.
    StagedSwitch { to: Server, keep_old: bool },
    /// Push files written during the first pass from the kept backup mount, then detach it; report
    /// with `pass`.
    CatchUp { pass: u64 },
    /// Mount the backup at a staging dir, push it to the primary (`--update`, never `--delete`: the
    /// primary has been live since), then detach the staging mount lazily; report with `pass`.
    Reconcile { attempt: u32, pass: u64 },
    /// Stop pass `pass` NOW (a server it reads or writes died, or the node moved on): kill its rsync
    /// (SIGKILL: a read on a dead hard mount is killable) and lazily force-detach what it reads (the
    /// kept backup mount of a catch-up, the staging mount of a reconciliation). Never wait for it. Its
    /// report, if one still arrives, is ignored (its pass id is no longer current).
    AbortPass { pass: u64 },
    /// Restart the listed units and report processes holding the detached mount.
    AfterSwitch { server: Server, old_mount: Option<u64> },
    /// Tell the operator (rendered by `alert::notice`).
    Notify(Notice),
    /// Write the durable state now (the transition must survive a crash).
    Persist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: State,
    pub actions: Vec<Action>,
}

struct Out<'a> {
    s: State,
    acts: Vec<Action>,
    p: &'a Policy,
}

impl Out<'_> {
    /// Raises `fact` with the current state as its context.
    fn notify(&mut self, fact: Fact) {
        let h = &self.s.health;
        let ctx = Context {
            epoch: self.s.epoch,
            pending_reverse_sync: self.s.pending_reverse_sync,
            reconcile_epoch: self.s.reconcile_epoch,
            status: PerServer::from_fn(|s| h.of(s)),
            error: PerServer { primary: h.primary_error.clone(), backup: h.backup_error.clone() },
            witness: h.witness,
        };
        self.acts.push(Action::Notify(Notice { fact, ctx }));
    }
}

/// The transition for `event` in `state`.
#[allow(clippy::too_many_lines, reason = "one exhaustive (state, event) table reads best in one place")]
pub fn step(state: &State, event: Event, p: &Policy, now_ms: u64) -> Transition {
    let mut o = Out { s: state.clone(), acts: Vec::new(), p };
    clamp_times(&mut o.s, p, now_ms);
    let phase = state.phase;
    let running = state.running_pass();
    let finished = running.is_some() && event.pass() == running;
    let current = |pass: u64| Some(pass) == running;
    match (phase, event) {
        // any --health observed--> (same), then decide. (These three arms take any phase: `decide`
        // matches every phase exhaustively.)
        (_, Event::HealthObserved(snap)) => {
            observe(&mut o, snap, now_ms);
            decide(&mut o, now_ms);
        }
        // any --ticked--> (same), then decide (hold-down, backoff)
        (_, Event::Ticked) => decide(&mut o, now_ms),
        // any --requested--> (same, hold changed), then decide
        (_, Event::Requested(r)) => {
            request(&mut o, r);
            decide(&mut o, now_ms);
        }
        // Mounting(to) --mount succeeded--> Serving(to); ends an outage of failed mounts (the recovery
        // notice says how many failed)
        (Phase::Mounting { to }, Event::MountSucceeded { server, old_mount }) if to == server => {
            o.s.phase = Phase::Serving { server };
            let failed = std::mem::take(&mut o.s.mount_failures);
            o.s.mount_not_before = None;
            o.acts.push(Action::Persist);
            o.notify(Fact::Serving { server, failed_mounts: failed });
            o.acts.push(Action::AfterSwitch { server, old_mount });
            decide(&mut o, now_ms);
        }
        // Mounting(to) --mount failed--> Unmounted, retried after a doubling backoff; alerted once per
        // outage (the first failure), the next successful mount is the recovery notice
        (Phase::Mounting { to }, Event::MountFailed { server, error }) if to == server => {
            o.s.phase = Phase::Unmounted;
            o.s.mount_failures = o.s.mount_failures.saturating_add(1);
            let wait = doubling_ms(MOUNT_RETRY_INITIAL_MS, MOUNT_RETRY_MAX_MS, o.s.mount_failures);
            o.s.mount_not_before = Some(now_ms.saturating_add(wait));
            o.acts.push(Action::Persist);
            if o.s.mount_failures == 1 {
                o.notify(Fact::MountFailed {
                    server,
                    error,
                    first_wait_ms: MOUNT_RETRY_INITIAL_MS,
                    max_wait_ms: MOUNT_RETRY_MAX_MS,
                });
            }
        }
        // Resyncing(n) --sync succeeded--> Staging(primary) (or Serving(backup) if no longer wanted)
        (
            Phase::Syncing { kind: SyncKind::ReverseSync, attempt },
            Event::ReverseSyncSucceeded { pass, files, bytes, elapsed_ms },
        ) if current(pass) => {
            o.s.resync_failures = 0;
            o.s.resync_not_before = None;
            // pass 1 copied the whole backup tree: an older pending reconciliation is included
            o.s.reconcile_epoch = None;
            o.notify(Fact::ReverseSyncSucceeded { attempt, files, bytes, elapsed_ms });
            let stay =
                matches!(o.s.hold, Hold::Stay | Hold::Pinned(Server::Backup)) || o.s.health.primary != Status::Up;
            if stay {
                o.s.phase = Phase::Serving { server: Server::Backup };
            } else {
                o.s.phase = Phase::Staging { to: Server::Primary };
                o.acts.push(Action::StagedSwitch { to: Server::Primary, keep_old: true });
            }
            o.acts.push(Action::Persist);
        }
        // Syncing(kind, n) --sync failed--> Serving(what it serves: the backup for a reverse sync, the
        // primary for a reconciliation), retry after backoff
        (
            Phase::Syncing { kind, attempt },
            Event::ReverseSyncFailed { pass, error } | Event::ReconcileFailed { pass, error },
        ) if current(pass) => {
            o.s.resync_failures = attempt;
            let wait = p.backoff_ms(attempt);
            o.s.resync_not_before = Some(now_ms.saturating_add(wait));
            o.s.phase = Phase::Serving { server: kind.serving() };
            o.acts.push(Action::Persist);
            o.notify(match kind {
                SyncKind::ReverseSync => Fact::ReverseSyncFailed { attempt, error, wait_ms: wait },
                SyncKind::Reconcile => {
                    let epoch = o.s.reconcile_epoch.unwrap_or(o.s.epoch);
                    Fact::ReconcileFailed { attempt, epoch, error, wait_ms: wait }
                }
            });
        }
        // Staging(to) --switched--> CatchingUp (failback) or Serving(to); the clients now see `to`, so
        // this is the alert that says so (a catch-up only mails if it fails)
        (Phase::Staging { to }, Event::StagedSwitchSucceeded { to: done, old_mount }) if to == done => {
            let catch_up = to == Server::Primary && p.failback && o.s.pending_reverse_sync;
            if catch_up {
                o.s.phase = Phase::CatchingUp;
                let pass = o.s.start_pass();
                o.acts.push(Action::CatchUp { pass });
            } else {
                o.s.phase = Phase::Serving { server: to };
                if to == Server::Primary {
                    o.s.pending_reverse_sync = false;
                } else {
                    o.s.new_epoch();
                }
            }
            o.notify(Fact::Switched { to, catch_up });
            o.acts.push(Action::Persist);
            o.acts.push(Action::AfterSwitch { server: to, old_mount });
        }
        // Staging(to) --switch failed--> Serving(what is mounted) or Unmounted, retried after backoff
        // (an epoch opens if the mount point ended up on the backup)
        (Phase::Staging { to }, Event::StagedSwitchFailed { to: failed, error, serving }) if to == failed => {
            o.s.phase = serving.map_or(Phase::Unmounted, |server| Phase::Serving { server });
            if serving == Some(Server::Backup) && !o.s.pending_reverse_sync {
                // the switch got as far as the backup: clients may write there from now on
                o.s.new_epoch();
            }
            o.s.resync_failures = o.s.resync_failures.saturating_add(1);
            o.s.resync_not_before = Some(now_ms.saturating_add(p.backoff_ms(o.s.resync_failures)));
            o.acts.push(Action::Persist);
            o.notify(Fact::SwitchFailed { to, error, serving });
        }
        // CatchingUp --catch-up finished--> Serving(primary) (logged, the failback was mailed at the
        // switch); a failed pass owes a reconciliation (mailed)
        (Phase::CatchingUp, Event::CatchUpFinished { pass, result }) if current(pass) => match result {
            Ok(_) => {
                o.s.phase = Phase::Serving { server: Server::Primary };
                o.s.pending_reverse_sync = false;
                o.acts.push(Action::Persist);
            }
            Err(e) => {
                catch_up_not_done(&mut o);
                o.notify(Fact::CatchUpFailed { error: e });
            }
        },
        // Reconciling(n) --sync succeeded--> Serving(primary), reconciliation done
        (
            Phase::Syncing { kind: SyncKind::Reconcile, attempt },
            Event::ReconcileSucceeded { pass, files, bytes, elapsed_ms },
        ) if current(pass) => {
            let epoch = o.s.reconcile_epoch.take().unwrap_or(o.s.epoch);
            o.s.resync_failures = 0;
            o.s.resync_not_before = None;
            o.s.phase = Phase::Serving { server: Server::Primary };
            o.acts.push(Action::Persist);
            o.notify(Fact::ReconcileSucceeded { attempt, epoch, files, bytes, elapsed_ms });
        }
        // Completions that do not match the phase or the running pass (stale after a restart, or the
        // late report of an aborted pass): ignored.
        (
            Phase::Unmounted
            | Phase::Serving { .. }
            | Phase::Mounting { .. }
            | Phase::Syncing { .. }
            | Phase::Staging { .. }
            | Phase::CatchingUp,
            Event::MountSucceeded { .. }
            | Event::MountFailed { .. }
            | Event::ReverseSyncSucceeded { .. }
            | Event::ReverseSyncFailed { .. }
            | Event::StagedSwitchSucceeded { .. }
            | Event::StagedSwitchFailed { .. }
            | Event::CatchUpFinished { .. }
            | Event::ReconcileSucceeded { .. }
            | Event::ReconcileFailed { .. },
        ) => {}
    }
    // Any --the node moved on while a pass runs--> (next), the pass aborted: whatever left the pass's
    // phase (a server died, a failover, an operator request) must not wait for it.
    if let Some(pass) = running {
        if !finished && o.s.running_pass() != Some(pass) {
            o.acts.insert(0, Action::AbortPass { pass });
        }
    }
    Transition { next: o.s, actions: o.acts }
}

/// Stored times further ahead than this node could have set them (the wall clock stepped back, an
/// edited state file) are pulled back, so no backoff or hold-down lasts longer than configured.
fn clamp_times(s: &mut State, p: &Policy, now_ms: u64) {
    let cap = |t: &mut Option<u64>, max: u64| *t = t.map(|t| t.min(max));
    cap(&mut s.resync_not_before, now_ms.saturating_add(p.retry_max_ms));
    cap(&mut s.mount_not_before, now_ms.saturating_add(MOUNT_RETRY_MAX_MS));
    cap(&mut s.primary_up_since, now_ms);
    cap(&mut s.backup_up_since, now_ms);
}

/// Records the new verdicts and the episode flags that depend on them.
fn observe(o: &mut Out, snap: Snapshot, now_ms: u64) {
    let was = o.s.health.clone();
    if snap.primary == Status::Up && was.primary != Status::Up {
        o.s.primary_up_since = Some(now_ms);
    }
    if snap.primary != Status::Up {
        o.s.primary_up_since = None;
        o.s.recovered_alerted = false;
    }
    if snap.backup == Status::Up && (was.backup != Status::Up || o.s.backup_up_since.is_none()) {
        o.s.backup_up_since = Some(now_ms);
    }
    if snap.backup != Status::Up {
        o.s.backup_up_since = None;
    }
    if snap.primary == Status::Up || snap.backup == Status::Up {
        o.s.both_down_alerted = false;
    }
    if snap.backup == Status::Up {
        o.s.stranded_alerted = false;
    }
    if snap.witness != Some(Status::Down) {
        o.s.network_lost_alerted = false;
    }
    o.s.health = snap;
}

fn request(o: &mut Out, r: Request) {
    o.s.hold = match r {
        Request::FailoverTo(s) => Hold::Pinned(s),
        Request::Hold => Hold::Stay,
        Request::Release => Hold::None,
    };
    o.acts.push(Action::Persist);
    o.notify(Fact::Requested(r));
}

/// The decision for a steady phase; work in progress is never interrupted.
#[allow(clippy::too_many_lines, reason = "one arm per steady phase, kept together")]
fn decide(o: &mut Out, now_ms: u64) {
    let h = o.s.health.clone();
    let witness_down = h.witness == Some(Status::Down);
    match o.s.phase {
        // Unmounted --a server is usable--> Mounting(it)
        Phase::Unmounted => {
            let prefer = match o.s.hold {
                Hold::Pinned(s) => [Some(s), None],
                Hold::None | Hold::Stay if o.s.pending_reverse_sync => [Some(Server::Backup), Some(Server::Primary)],
                Hold::None | Hold::Stay => [Some(Server::Primary), Some(Server::Backup)],
            };
            // The first preferred server that is usable; a preferred server still Unknown (start-up)
            // is waited for rather than skipped, so a slow first check never causes a failover.
            let mut pick = None;
            for s in prefer.into_iter().flatten() {
                if h.usable(s) {
                    pick = Some(s);
                    break;
                }
                if h.of(s) != Status::Down {
                    break;
                }
            }
            if pick.is_some() && o.s.mount_not_before.is_some_and(|t| now_ms < t) {
                // Unmounted --a server is usable, mount retry backoff running--> (same)
                return;
            }
            if let Some(s) = pick {
                // Unmounted --primary picked while the backup's writes are not synced--> Mounting(primary),
                // reconciliation pending; without a reverse-sync target: (same), alerted, the operator decides
                if s == Server::Primary && !may_leave_backup(o) {
                    return;
                }
                if s == Server::Backup && !o.s.pending_reverse_sync {
                    // Unmounted --only the backup is usable--> Mounting(backup): a failover, new epoch
                    o.s.new_epoch();
                    o.notify(Fact::FailoverStarted { cause: FailoverCause::PrimaryUnusable });
                }
                o.s.phase = Phase::Mounting { to: s };
                o.acts.push(Action::Persist);
                o.acts.push(Action::Mount { server: s });
            } else {
                both_down(o, witness_down);
            }
        }
        // Syncing(kind, n) --backup or primary DOWN--> Serving(what it serves), the pass aborted (it
        // reads the backup, through the mount point or its staging mount, and writes the primary: it
        // cannot finish, and a read on the dead backup would sit in the kernel until the pass deadline),
        // the pass still owed; then decided as that steady phase. A reverse sync: a dead primary stays
        // on the backup (the hold-down restarts); a dead backup with a usable primary moves the node to
        // the primary with the backup's writes recorded as a durable reconciliation BEFORE the mount
        // moves (see the Serving(backup) arm for why serving beats waiting); both dead: stay, one
        // both-down alert. A reconciliation: a dead primary fails over.
        Phase::Syncing { kind, attempt } if pass_side_down(&h) => {
            o.notify(Fact::PassAborted(kind.pass(attempt)));
            o.s.phase = Phase::Serving { server: kind.serving() };
            o.acts.push(Action::Persist);
            decide(o, now_ms);
        }
        Phase::Serving { server: Server::Primary } | Phase::Syncing { kind: SyncKind::Reconcile, .. } => match o.s.hold
        {
            // Serving(primary)|Reconciling --held--> (same), reconciling when due
            Hold::Stay | Hold::Pinned(Server::Primary) => reconcile_if_due(o, now_ms),
            // Serving(primary)|Reconciling --pinned to backup--> Staging(backup) (or Mounting if the
            // primary is dead; a running reconciliation is aborted by `step`);
            // the staged switch opens the epoch when the backup is served (a switch that fails on the
            // way leaves nothing owed), the direct mount before it is attempted (like any failover)
            Hold::Pinned(Server::Backup) => {
                if h.backup != Status::Down {
                    if h.primary == Status::Down {
                        o.s.new_epoch();
                        o.s.phase = Phase::Mounting { to: Server::Backup };
                        o.notify(Fact::FailoverStarted { cause: FailoverCause::Pinned });
                        o.acts.push(Action::Mount { server: Server::Backup });
                    } else {
                        o.s.phase = Phase::Staging { to: Server::Backup };
                        o.acts.push(Action::StagedSwitch { to: Server::Backup, keep_old: false });
                    }
                    o.acts.push(Action::Persist);
                }
            }
            // Serving(primary)|Reconciling --primary down, backup usable--> Mounting(backup), new epoch
            // (a running reconciliation was aborted above: it cannot outlive a dead primary)
            Hold::None => {
                if h.primary != Status::Down {
                    // Serving(primary) --primary not down--> (same), reconciling when due
                    reconcile_if_due(o, now_ms);
                    return;
                }
                if witness_down {
                    // Serving(primary) --primary and witness down--> (same), network-lost alert once
                    network_lost(o);
                } else if h.witness_failing {
                    // Serving(primary) --primary down, witness failing--> (same): wait one more check,
                    // is it the primary or our own network?
                } else if h.usable(Server::Backup) {
                    o.s.new_epoch();
                    o.s.phase = Phase::Mounting { to: Server::Backup };
                    o.acts.push(Action::Persist);
                    o.notify(Fact::FailoverStarted { cause: FailoverCause::PrimaryDown });
                    o.acts.push(Action::Mount { server: Server::Backup });
                } else {
                    // Serving(primary) --primary down, backup not usable--> (same), both-down alert once
                    both_down(o, false);
                }
            }
        },
        Phase::Serving { server: Server::Backup } => {
            let manual = o.s.hold == Hold::Pinned(Server::Primary);
            if matches!(o.s.hold, Hold::Stay | Hold::Pinned(Server::Backup)) {
                // Serving(backup) --held there--> (same)
                return;
            }
            if h.backup == Status::Down {
                if witness_down {
                    // Serving(backup) --backup and witness down--> (same), network-lost alert once
                    network_lost(o);
                } else if h.witness_failing {
                    // Serving(backup) --backup down, witness failing--> (same): our own network may be
                    // the problem
                } else if h.usable(Server::Primary) {
                    if !may_leave_backup(o) {
                        // Serving(backup) --backup down, primary up, no reverse-sync target--> (same),
                        // alerted once: see `may_leave_backup`
                        return;
                    }
                    // Serving(backup) --backup down, primary up--> Mounting(primary): the reverse sync
                    // is impossible now; a reconciliation of this epoch is recorded (durably, before
                    // the mount moves) and runs once the backup is back. (Also reached from Resyncing,
                    // the pass aborted.) Why serve rather than wait on the dead backup: the writes
                    // acknowledged on the backup are not lost, they stay on the backup's disk and are
                    // copied back (--update, never --delete) from a staging mount as soon as it
                    // returns, while waiting means every client hangs on a dead hard mount for as long
                    // as the backup is down. The price, said in the alert: until then clients see the
                    // primary's older copies, and a file changed on both sides keeps the newer mtime.
                    o.s.phase = Phase::Mounting { to: Server::Primary };
                    o.acts.push(Action::Persist);
                    o.notify(Fact::BackupLost);
                    o.acts.push(Action::Mount { server: Server::Primary });
                } else if h.primary == Status::Down {
                    // Serving(backup) --both down--> (same), both-down alert once
                    both_down(o, false);
                }
                // Serving(backup) --backup down, primary unknown or failing--> (same): wait for a verdict
                return;
            }
            if h.primary != Status::Up {
                // Serving(backup) --primary not up--> (same)
                return;
            }
            // Serving(backup) --primary up--> (same), alert once
            if !o.s.recovered_alerted {
                o.s.recovered_alerted = true;
                o.notify(Fact::PrimaryRecovered { failback: o.p.failback, hold_down_ms: o.p.hold_down_ms });
            }
            let held_long = o.s.primary_up_since.is_some_and(|t| now_ms >= t.saturating_add(o.p.hold_down_ms));
            let backoff_over = o.s.resync_not_before.is_none_or(|t| now_ms >= t);
            if !(manual || (o.p.failback && held_long)) || !backoff_over {
                return;
            }
            if o.p.failback && o.s.pending_reverse_sync {
                // Serving(backup) --primary up for hold-down--> Resyncing(n)
                let attempt = o.s.resync_failures.saturating_add(1);
                o.s.phase = Phase::Syncing { kind: SyncKind::ReverseSync, attempt };
                o.acts.push(Action::Persist);
                o.notify(Fact::ReverseSyncStarted { attempt });
                let pass = o.s.start_pass();
                o.acts.push(Action::ReverseSync { attempt, pass });
            } else {
                // Serving(backup) --manual, nothing to sync--> Staging(primary)
                o.s.phase = Phase::Staging { to: Server::Primary };
                o.acts.push(Action::Persist);
                o.acts.push(Action::StagedSwitch { to: Server::Primary, keep_old: false });
            }
        }
        // CatchingUp --backup or primary DOWN--> Serving(primary), the catch-up aborted: the files written
        // to the backup during pass 1 become a durable reconciliation of this epoch (retried from a
        // staging mount once the backup is back); then decided as Serving(primary): a dead primary
        // fails over to the backup (whose pass-1 writes it serves), a dead backup keeps the primary
        Phase::CatchingUp => {
            if pass_side_down(&h) {
                catch_up_not_done(o);
                o.notify(Fact::PassAborted(Pass::CatchUp));
                decide(o, now_ms);
            }
        }
        // Mounting/Staging: decided when the mount step reports back (it has its own deadlines, and it
        // only ever touches the server it mounts). Syncing(reverse sync, n) with no server DOWN: (same).
        Phase::Mounting { .. } | Phase::Staging { .. } | Phase::Syncing { kind: SyncKind::ReverseSync, .. } => {}
    }
}

/// A server an rsync pass reads or writes is DOWN (after hysteresis): the pass cannot finish.
fn pass_side_down(h: &Snapshot) -> bool {
    h.primary == Status::Down || h.backup == Status::Down
}

/// `CatchingUp --(catch-up failed or aborted)--> Serving(primary)`: the files written to the backup during
/// pass 1 are still only there; they become a reconciliation of this epoch.
fn catch_up_not_done(o: &mut Out) {
    o.s.phase = Phase::Serving { server: Server::Primary };
    o.s.pending_reverse_sync = false;
    o.s.reconcile_epoch = Some(o.s.epoch);
    o.acts.push(Action::Persist);
}

/// Serving(primary) --reconciliation pending, backup UP for hold-down, backoff over--> Reconciling(n)
fn reconcile_if_due(o: &mut Out, now_ms: u64) {
    let Some(epoch) = o.s.reconcile_epoch else { return };
    if o.s.phase != (Phase::Serving { server: Server::Primary }) || !o.p.failback {
        return;
    }
    let h = &o.s.health;
    let held_long = o.s.backup_up_since.is_some_and(|t| now_ms >= t.saturating_add(o.p.hold_down_ms));
    let backoff_over = o.s.resync_not_before.is_none_or(|t| now_ms >= t);
    if !(h.usable(Server::Backup) && h.usable(Server::Primary) && held_long && backoff_over) {
        return;
    }
    let attempt = o.s.resync_failures.saturating_add(1);
    o.s.phase = Phase::Syncing { kind: SyncKind::Reconcile, attempt };
    o.acts.push(Action::Persist);
    o.notify(Fact::ReconcileStarted { attempt, epoch });
    let pass = o.s.start_pass();
    o.acts.push(Action::Reconcile { attempt, pass });
}

/// The node is about to mount the primary while the backup may hold writes the primary lacks. With a
/// reverse-sync target they become a durable reconciliation of this epoch (see the Serving(backup)
/// arm for why serving beats waiting). Without one nothing would ever copy them back, and clients
/// would work on the primary's older copies: the node stays (no service) and alerts once per outage
/// of the backup, until the backup returns or the operator forces `--failover-to primary` (after
/// copying what they can by hand).
fn may_leave_backup(o: &mut Out) -> bool {
    if !o.s.pending_reverse_sync || o.p.failback || o.s.hold == Hold::Pinned(Server::Primary) {
        o.s.leave_backup_unsynced(o.p.failback);
        return true;
    }
    if !o.s.stranded_alerted {
        o.s.stranded_alerted = true;
        o.notify(Fact::Stranded);
    }
    false
}

fn both_down(o: &mut Out, witness_down: bool) {
    if witness_down {
        network_lost(o);
        return;
    }
    let h = &o.s.health;
    if h.primary != Status::Down || h.backup != Status::Down || o.s.both_down_alerted {
        return;
    }
    o.s.both_down_alerted = true;
    o.notify(Fact::BothDown);
}

fn network_lost(o: &mut Out) {
    if o.s.network_lost_alerted {
        return;
    }
    o.s.network_lost_alerted = true;
    o.notify(Fact::NetworkLost);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "fsm_tests.rs"]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "fsm_props.rs"]
mod props;
