//! The decisions of the steady phases (`decide`, after every observation, tick and request) and the
//! transitions they share with `step`. Work in progress is never interrupted here, except a pass that
//! a dead server makes impossible.

use super::{Action, Fact, FailoverCause, Hold, Out, Pass, Phase, Server, Snapshot, Status, SyncKind};

/// The decision for a steady phase; work in progress is never interrupted.
pub(super) fn decide(o: &mut Out, now_ms: u64) {
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
            let pick = prefer.into_iter().flatten().find(|&s| h.of(s) != Status::Down).filter(|&s| h.usable(s));
            let Some(s) = pick else { return both_down(o, witness_down) };
            if !due(o.s.mount_not_before, now_ms) {
                // Unmounted --a server is usable, mount retry backoff running--> (same)
            } else if s == Server::Backup && !o.s.pending_reverse_sync {
                // Unmounted --only the backup is usable--> Mounting(backup): a failover, new epoch
                failover(o, FailoverCause::PrimaryUnusable);
            } else if s == Server::Backup || may_leave_backup(o) {
                // Unmounted --backup usable, writes pending there--> Mounting(backup), same epoch;
                // --primary picked while the backup's writes are not synced--> Mounting(primary),
                // reconciliation pending; without a reverse-sync target: (same), alerted, the operator decides
                o.mount(s, None);
            }
        }
        // Syncing(kind, n) --backup or primary DOWN--> Serving(what it serves), the pass aborted (it
        // reads the backup, through the mount point or its staging mount, and writes the primary: it
        // cannot finish, and a read on the dead backup would sit in the kernel until the pass deadline),
        // the pass still owed; then decided as that steady phase. A reverse sync: a dead primary stays
        // on the backup (the hold-down restarts); a dead backup with a usable primary moves the node to
        // the primary with the backup's writes recorded as a durable reconciliation BEFORE the mount
        // moves (see `server_down` for why serving beats waiting); both dead: stay, one both-down
        // alert. A reconciliation: a dead primary fails over.
        Phase::Syncing { kind, attempt } if pass_side_down(&h) => {
            o.notify(Fact::PassAborted(match kind {
                SyncKind::ReverseSync => Pass::ReverseSync { attempt },
                SyncKind::Reconcile => Pass::Reconcile { attempt },
            }));
            o.s.phase = Phase::Serving { server: kind.serving() };
            o.acts.push(Action::Persist);
            decide(o, now_ms);
        }
        Phase::Serving { server: Server::Primary } | Phase::Syncing { kind: SyncKind::Reconcile, .. } => match o.s.hold
        {
            // Serving(primary)|Reconciling --held, or primary not down--> (same), reconciling when due
            Hold::Stay | Hold::Pinned(Server::Primary) => reconcile_if_due(o, now_ms),
            Hold::None if h.status.primary != Status::Down => reconcile_if_due(o, now_ms),
            // Serving(primary)|Reconciling --primary down--> see `server_down` (a running reconciliation
            // was aborted above: it cannot outlive a dead primary)
            Hold::None => server_down(o, Server::Primary, witness_down),
            // Serving(primary)|Reconciling --pinned to a dead backup--> (same)
            Hold::Pinned(Server::Backup) if h.status.backup == Status::Down => {}
            // Serving(primary)|Reconciling --pinned to backup, primary dead--> Mounting(backup), new
            // epoch before the mount is attempted (like any failover); a running reconciliation is
            // aborted by `step`
            Hold::Pinned(Server::Backup) if h.status.primary == Status::Down => failover(o, FailoverCause::Pinned),
            // Serving(primary)|Reconciling --pinned to backup--> Staging(backup): the staged switch opens
            // the epoch when the backup is served (a switch that fails on the way leaves nothing owed)
            Hold::Pinned(Server::Backup) => o.stage(Server::Backup, false),
        },
        Phase::Serving { server: Server::Backup } => {
            if matches!(o.s.hold, Hold::Stay | Hold::Pinned(Server::Backup)) {
                // Serving(backup) --held there--> (same)
            } else if h.status.backup == Status::Down {
                // Serving(backup) --backup down--> see `server_down`
                server_down(o, Server::Backup, witness_down);
            } else if h.status.primary == Status::Up {
                // Serving(backup) --primary up--> (same), alert once; failback when due
                if once(&mut o.s.recovered_alerted) {
                    o.notify(Fact::PrimaryRecovered { failback: o.p.failback, hold_down_ms: o.p.hold_down_ms });
                }
                failback_if_due(o, now_ms);
            }
            // Serving(backup) --primary not up--> (same)
        }
        // CatchingUp --backup or primary DOWN--> Serving(primary), the catch-up aborted: the files written
        // to the backup during pass 1 become a durable reconciliation of this epoch (retried from a
        // staging mount once the backup is back); then decided as Serving(primary): a dead primary
        // fails over to the backup (whose pass-1 writes it serves), a dead backup keeps the primary
        Phase::CatchingUp => {
            if pass_side_down(&h) {
                end_catch_up(o, false);
                o.notify(Fact::PassAborted(Pass::CatchUp));
                decide(o, now_ms);
            }
        }
        // Mounting/Staging: decided when the mount step reports back (it has its own deadlines, and it
        // only ever touches the server it mounts). Syncing(reverse sync, n) with no server DOWN: (same).
        Phase::Mounting { .. } | Phase::Staging { .. } | Phase::Syncing { kind: SyncKind::ReverseSync, .. } => {}
    }
}

/// Serving(`s`) and `s` is DOWN (after hysteresis).
fn server_down(o: &mut Out, s: Server, witness_down: bool) {
    let h = &o.s.health;
    if h.witness_failing && !witness_down {
        // Serving(s) --s down, witness failing--> (same): wait one more check, is it `s` or our own network?
    } else if witness_down || !h.usable(s.other()) {
        // Serving(s) --s and witness down--> (same), network-lost alert once;
        // Serving(s) --s down, the other not usable--> (same), both-down alert once if both are DOWN
        both_down(o, witness_down);
    } else if s == Server::Primary {
        // Serving(primary) --primary down, backup usable--> Mounting(backup), new epoch
        failover(o, FailoverCause::PrimaryDown);
    } else if may_leave_backup(o) {
        // Serving(backup) --backup down, primary usable--> Mounting(primary): the reverse sync is
        // impossible now; a reconciliation of this epoch is recorded (durably, before the mount moves)
        // and runs once the backup is back. (Also reached from Resyncing, the pass aborted.) Why serve
        // rather than wait on the dead backup: the writes acknowledged on the backup are not lost, they
        // stay on the backup's disk and are copied back (--update, never --delete) from a staging mount
        // as soon as it returns, while waiting means every client hangs on a dead hard mount for as
        // long as the backup is down. The price, said in the alert: until then clients see the
        // primary's older copies, and a file changed on both sides keeps the newer mtime.
        o.mount(Server::Primary, Some(Fact::BackupLost));
    }
    // Serving(backup) --backup down, primary usable, no reverse-sync target--> (same), alerted once:
    // see `may_leave_backup`
}

/// --> Mounting(backup): a failover opens a new epoch before the mount is attempted.
fn failover(o: &mut Out, cause: FailoverCause) {
    o.s.new_epoch();
    o.mount(Server::Backup, Some(Fact::FailoverStarted { cause }));
}

/// Serving(backup) --primary up for hold-down (or the operator pinned it), backoff over-->
/// Resyncing(n) with writes to copy back, else (manual, nothing to sync) Staging(primary)
fn failback_if_due(o: &mut Out, now_ms: u64) {
    let manual = o.s.hold == Hold::Pinned(Server::Primary);
    let held_long = o.p.failback && up_for(o.s.up_since.primary, o.p.hold_down_ms, now_ms);
    if !(manual || held_long) || !due(o.s.resync_not_before, now_ms) {
        return;
    }
    if o.p.failback && o.s.pending_reverse_sync {
        start_sync(o, SyncKind::ReverseSync);
    } else {
        o.stage(Server::Primary, false);
    }
}

/// Serving(primary) --reconciliation pending, both usable, backup UP for hold-down, backoff over-->
/// Reconciling(n)
fn reconcile_if_due(o: &mut Out, now_ms: u64) {
    let h = &o.s.health;
    if o.s.reconcile_epoch.is_some()
        && o.s.phase == (Phase::Serving { server: Server::Primary })
        && o.p.failback
        && h.usable(Server::Backup)
        && h.usable(Server::Primary)
        && up_for(o.s.up_since.backup, o.p.hold_down_ms, now_ms)
        && due(o.s.resync_not_before, now_ms)
    {
        start_sync(o, SyncKind::Reconcile);
    }
}

/// --> Syncing(kind, n): attempt n = the failures so far + 1, under a new pass id.
fn start_sync(o: &mut Out, kind: SyncKind) {
    let attempt = o.s.resync_failures.saturating_add(1);
    let epoch = o.s.reconcile_epoch.unwrap_or(o.s.epoch);
    let pass = o.s.start_pass();
    let (fact, action) = match kind {
        SyncKind::ReverseSync => (Fact::ReverseSyncStarted { attempt }, Action::ReverseSync { attempt, pass }),
        SyncKind::Reconcile => (Fact::ReconcileStarted { attempt, epoch }, Action::Reconcile { attempt, pass }),
    };
    o.enter(Phase::Syncing { kind, attempt }, Some(fact), action);
}

/// `CatchingUp --(catch-up finished, failed or aborted)--> Serving(primary)`. Unless `done`, the files
/// written to the backup during pass 1 are still only there: they become a reconciliation of this epoch.
pub(super) fn end_catch_up(o: &mut Out, done: bool) {
    o.s.phase = Phase::Serving { server: Server::Primary };
    o.s.pending_reverse_sync = false;
    if !done {
        o.s.reconcile_epoch = Some(o.s.epoch);
    }
    o.acts.push(Action::Persist);
}

/// The node is about to mount the primary while the backup may hold writes the primary lacks. With a
/// reverse-sync target they become a durable reconciliation of this epoch (see `server_down` for why
/// serving beats waiting). Without one nothing would ever copy them back, and clients would work on
/// the primary's older copies: the node stays (no service) and alerts once per outage of the backup,
/// until the backup returns or the operator forces `--failover-to primary` (after copying what they
/// can by hand).
fn may_leave_backup(o: &mut Out) -> bool {
    if !o.s.pending_reverse_sync || o.p.failback || o.s.hold == Hold::Pinned(Server::Primary) {
        o.s.leave_backup_unsynced(o.p.failback);
        return true;
    }
    if once(&mut o.s.stranded_alerted) {
        o.notify(Fact::Stranded);
    }
    false
}

/// Nothing to switch to: with the witness DOWN it is our own network (network-lost alert once per
/// episode), else both servers DOWN alert once per episode.
fn both_down(o: &mut Out, witness_down: bool) {
    let h = &o.s.health;
    if witness_down {
        if once(&mut o.s.network_lost_alerted) {
            o.notify(Fact::NetworkLost);
        }
    } else if h.status.primary == Status::Down && h.status.backup == Status::Down && once(&mut o.s.both_down_alerted) {
        o.notify(Fact::BothDown);
    }
}

/// A server an rsync pass reads or writes is DOWN (after hysteresis): the pass cannot finish.
fn pass_side_down(h: &Snapshot) -> bool {
    h.status.primary == Status::Down || h.status.backup == Status::Down
}

/// Sets a once-per-episode flag; true the first time.
fn once(flag: &mut bool) -> bool {
    !std::mem::replace(flag, true)
}

/// No backoff set, or it is over.
fn due(not_before: Option<u64>, now_ms: u64) -> bool {
    not_before.is_none_or(|t| now_ms >= t)
}

/// Continuously UP since `since`, for at least `hold_down_ms`.
fn up_for(since: Option<u64>, hold_down_ms: u64, now_ms: u64) -> bool {
    since.is_some_and(|t| now_ms >= t.saturating_add(hold_down_ms))
}
