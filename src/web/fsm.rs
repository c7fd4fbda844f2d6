//! The failover state machine: a PURE function `step(&State, Event, &Policy, now_ms) -> Transition`.
//! It decides; it performs nothing, reads no clock (`now_ms` is a parameter) and holds no alert prose:
//! it raises [`Action::Notify`] with a small [`Fact`], which `alert::notice` renders. Events are
//! past-tense facts (health verdicts after hysteresis, effect completions, operator requests); actions
//! are imperatives the controller carries out and reports back. Work in progress is a phase
//! (`Mounting`, `Syncing`, `Staging`, `CatchingUp`), never a flag, so a restart knows exactly what was
//! interrupted. This file holds the phases, events, actions and `step` (completions and requests);
//! `state` what is remembered (the state file's format) and `decide` the steady phases' decisions.
//!
//! Ordering promises encoded here: the primary is never mounted again after a failover until a reverse
//! sync backup->primary has succeeded (or the operator forces it); the staged switch keeps the old mount
//! until the new one is verified; both-down and network-lost alert once per episode; a transition is
//! persisted before the effects it starts. A running rsync pass never blocks a failover: when a server
//! it reads or writes goes DOWN, or the node moves on, the pass is aborted (`AbortPass`) and what it
//! owed stays recorded; every pass carries an id, so the late report of an aborted pass is never taken
//! for the report of the next one.

mod decide;
mod state;

pub use state::{Hold, Policy, Snapshot, State, MOUNT_RETRY_INITIAL_MS, MOUNT_RETRY_MAX_MS};

use crate::alert::notice::Context;
pub use crate::alert::notice::{Fact, FailoverCause, Notice, Pass};
pub use crate::domain::{PerServer, Request, Server, Status};
use decide::{decide, end_catch_up};
use state::{StoredPhase, MOUNT_RETRY};

/// What the node is doing.
#[derive(Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredPhase", into = "StoredPhase")]
pub enum Phase {
    /// Nothing of ours is mounted (start-up, or a mount failed after the old one was detached).
    #[default]
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
    MountSucceeded { server: Server, old_mount: Option<u64> },
    /// The direct mount failed; nothing of ours is mounted now.
    MountFailed { server: Server, error: String },
    /// Reverse-sync pass `pass` finished (each pass completion names its pass: see [`State::pass`]).
    ReverseSyncSucceeded { pass: u64, files: u64, bytes: u64, elapsed_ms: u64 },
    /// Reverse-sync pass `pass` failed (or was abandoned at its deadline).
    ReverseSyncFailed { pass: u64, error: String },
    /// The staged switch to `to` completed (verified).
    StagedSwitchSucceeded { to: Server, old_mount: Option<u64> },
    /// The staged switch failed; `serving` is what the mount point serves now.
    StagedSwitchFailed { to: Server, error: String, serving: Option<Server> },
    /// Catch-up pass `pass` finished: the files and bytes it copied, or why it failed.
    CatchUpFinished { pass: u64, result: Result<(u64, u64), String> },
    /// The reconciliation backup->primary (from the backup's staging mount) succeeded.
    ReconcileSucceeded { pass: u64, files: u64, bytes: u64, elapsed_ms: u64 },
    /// The reconciliation pass `pass` failed (or was abandoned at its deadline).
    ReconcileFailed { pass: u64, error: String },
    /// The operator asked (`nfs-guard web --failover-to/--hold/--release`).
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

/// The transition being built.
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
            status: h.status.clone(),
            error: h.error.clone(),
            witness: h.witness,
        };
        self.acts.push(Action::Notify(Notice { fact, ctx }));
    }

    /// Enters `phase` and starts its `effect`, in the order every start keeps: persist (an effect never
    /// outruns the state it was decided on), tell (`fact`), act.
    fn enter(&mut self, phase: Phase, fact: Option<Fact>, effect: Action) {
        self.s.phase = phase;
        self.acts.push(Action::Persist);
        if let Some(fact) = fact {
            self.notify(fact);
        }
        self.acts.push(effect);
    }

    /// --> Mounting(to): detach whatever is at the mount point and mount `to` directly.
    fn mount(&mut self, to: Server, fact: Option<Fact>) {
        self.enter(Phase::Mounting { to }, fact, Action::Mount { server: to });
    }

    /// --> Staging(to): the staged switch.
    fn stage(&mut self, to: Server, keep_old: bool) {
        self.enter(Phase::Staging { to }, None, Action::StagedSwitch { to, keep_old });
    }
}

/// The transition for `event` in `state`.
#[allow(clippy::too_many_lines, reason = "one exhaustive (state, event) table reads best in one place")]
pub fn step(state: &State, event: Event, p: &Policy, now_ms: u64) -> Transition {
    let mut o = Out { s: state.clone(), acts: Vec::new(), p };
    o.s.clamp_times(p, now_ms);
    let running = state.running_pass();
    let finished = running.is_some() && event.pass() == running;
    let current = |pass: u64| Some(pass) == running;
    match (state.phase, event) {
        // any --health observed--> (same), then decide. (These three arms take any phase: `decide`
        // matches every phase exhaustively.)
        (_, Event::HealthObserved(snap)) => {
            o.s.observe(snap, now_ms);
            decide(&mut o, now_ms);
        }
        // any --ticked--> (same), then decide (hold-down, backoff)
        (_, Event::Ticked) => decide(&mut o, now_ms),
        // any --requested--> (same, hold changed), then decide
        (_, Event::Requested(r)) => {
            o.s.hold = match r {
                Request::FailoverTo(s) => Hold::Pinned(s),
                Request::Hold => Hold::Stay,
                Request::Release => Hold::None,
            };
            o.acts.push(Action::Persist);
            o.notify(Fact::Requested(r));
            decide(&mut o, now_ms);
        }
        // Mounting(to) --mount succeeded--> Serving(to); ends an outage of failed mounts (the recovery
        // notice says how many failed)
        (Phase::Mounting { to }, Event::MountSucceeded { server, old_mount }) if to == server => {
            let failed_mounts = std::mem::take(&mut o.s.mount_failures);
            o.s.mount_not_before = None;
            o.s.phase = Phase::Serving { server };
            o.acts.push(Action::Persist);
            o.notify(Fact::Serving { server, failed_mounts });
            o.acts.push(Action::AfterSwitch { server, old_mount });
            decide(&mut o, now_ms);
        }
        // Mounting(to) --mount failed--> Unmounted, retried after a doubling backoff; alerted once per
        // outage (the first failure), the next successful mount is the recovery notice
        (Phase::Mounting { to }, Event::MountFailed { server, error }) if to == server => {
            o.s.mount_failures = o.s.mount_failures.saturating_add(1);
            o.s.mount_not_before = Some(now_ms.saturating_add(MOUNT_RETRY.delay_ms(o.s.mount_failures)));
            o.s.phase = Phase::Unmounted;
            o.acts.push(Action::Persist);
            if o.s.mount_failures == 1 {
                let (first_wait_ms, max_wait_ms) = (MOUNT_RETRY_INITIAL_MS, MOUNT_RETRY_MAX_MS);
                o.notify(Fact::MountFailed { server, error, first_wait_ms, max_wait_ms });
            }
        }
        // Resyncing(n) --sync succeeded--> Staging(primary) (or Serving(backup) if no longer wanted)
        (
            Phase::Syncing { kind: SyncKind::ReverseSync, attempt },
            Event::ReverseSyncSucceeded { pass, files, bytes, elapsed_ms },
        ) if current(pass) => {
            o.s.retry_afresh();
            // pass 1 copied the whole backup tree: an older pending reconciliation is included
            o.s.reconcile_epoch = None;
            o.notify(Fact::ReverseSyncSucceeded { attempt, files, bytes, elapsed_ms });
            if matches!(o.s.hold, Hold::Stay | Hold::Pinned(Server::Backup)) || o.s.health.status.primary != Status::Up
            {
                o.s.phase = Phase::Serving { server: Server::Backup };
                o.acts.push(Action::Persist);
            } else {
                o.stage(Server::Primary, true);
            }
        }
        // Syncing(kind, n) --sync failed--> Serving(what it serves: the backup for a reverse sync, the
        // primary for a reconciliation), retry after backoff
        (
            Phase::Syncing { kind, attempt },
            Event::ReverseSyncFailed { pass, error } | Event::ReconcileFailed { pass, error },
        ) if current(pass) => {
            let wait_ms = o.s.retry_later(attempt, p, now_ms);
            o.s.phase = Phase::Serving { server: kind.serving() };
            o.acts.push(Action::Persist);
            let epoch = o.s.reconcile_epoch.unwrap_or(o.s.epoch);
            o.notify(match kind {
                SyncKind::ReverseSync => Fact::ReverseSyncFailed { attempt, error, wait_ms },
                SyncKind::Reconcile => Fact::ReconcileFailed { attempt, epoch, error, wait_ms },
            });
        }
        // Staging(to) --switched--> CatchingUp (failback) or Serving(to); the clients now see `to`, so
        // this is the alert that says so (a catch-up only mails if it fails)
        (Phase::Staging { to }, Event::StagedSwitchSucceeded { to: done, old_mount }) if to == done => {
            let catch_up = to == Server::Primary && p.failback && o.s.pending_reverse_sync;
            let effect = if catch_up {
                o.s.phase = Phase::CatchingUp;
                Some(Action::CatchUp { pass: o.s.start_pass() })
            } else {
                o.s.phase = Phase::Serving { server: to };
                if to == Server::Primary {
                    o.s.pending_reverse_sync = false;
                } else {
                    o.s.new_epoch();
                }
                None
            };
            o.notify(Fact::Switched { to, catch_up });
            o.acts.push(Action::Persist);
            o.acts.extend(effect);
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
            o.s.retry_later(o.s.resync_failures.saturating_add(1), p, now_ms);
            o.acts.push(Action::Persist);
            o.notify(Fact::SwitchFailed { to, error, serving });
        }
        // CatchingUp --catch-up finished--> Serving(primary) (logged, the failback was mailed at the
        // switch); a failed pass owes a reconciliation (mailed)
        (Phase::CatchingUp, Event::CatchUpFinished { pass, result }) if current(pass) => {
            end_catch_up(&mut o, result.is_ok());
            if let Err(error) = result {
                o.notify(Fact::CatchUpFailed { error });
            }
        }
        // Reconciling(n) --sync succeeded--> Serving(primary), reconciliation done
        (
            Phase::Syncing { kind: SyncKind::Reconcile, attempt },
            Event::ReconcileSucceeded { pass, files, bytes, elapsed_ms },
        ) if current(pass) => {
            let epoch = o.s.reconcile_epoch.take().unwrap_or(o.s.epoch);
            o.s.retry_afresh();
            o.s.phase = Phase::Serving { server: Server::Primary };
            o.acts.push(Action::Persist);
            o.notify(Fact::ReconcileSucceeded { attempt, epoch, files, bytes, elapsed_ms });
        }
        // any --a completion that does not match the phase or the running pass (stale after a restart,
        // or the late report of an aborted pass)--> (same), ignored
        (
            _,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "fsm_tests.rs"]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "fsm_props.rs"]
mod props;
