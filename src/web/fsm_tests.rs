//! Every transition of the pure state machine.

use super::*;
use crate::alert::notice::render;
use crate::alert::{AlertEvent, AlertKind};

fn policy() -> Policy {
    Policy { hold_down_ms: 10_000, failback: true, retry_initial_ms: 1_000, retry_max_ms: 4_000 }
}

fn snap(primary: Status, backup: Status) -> Snapshot {
    Snapshot {
        status: PerServer { primary, backup },
        witness: None,
        error: PerServer { primary: Some("rpc timeout".into()), backup: None },
        failing: PerServer { primary: primary == Status::Down, backup: backup == Status::Down },
        witness_failing: false,
    }
}

fn serving(server: Server) -> State {
    State { phase: Phase::Serving { server }, health: snap(Status::Up, Status::Up), ..State::default() }
}

fn on_backup() -> State {
    State {
        phase: Phase::Serving { server: Server::Backup },
        epoch: 1,
        pending_reverse_sync: true,
        health: snap(Status::Down, Status::Up),
        ..State::default()
    }
}

/// The alert `a` raises, rendered as the controller renders it.
fn alert(a: &Action) -> Option<AlertEvent> {
    let labels = PerServer { primary: "primary (p:/e)".to_owned(), backup: "backup (b:/e)".to_owned() };
    match a {
        Action::Notify(n) => Some(render(n, &labels, std::time::UNIX_EPOCH)),
        _ => None,
    }
}

fn kinds(t: &Transition) -> Vec<AlertKind> {
    t.actions.iter().filter_map(alert).map(|e| e.kind).collect()
}

fn effects(t: &Transition) -> Vec<Action> {
    t.actions.iter().filter(|a| !matches!(a, Action::Notify(_) | Action::Persist)).cloned().collect()
}

fn persists(t: &Transition) -> bool {
    t.actions.contains(&Action::Persist)
}

const UP: Status = Status::Up;
const DOWN: Status = Status::Down;
const UNKNOWN: Status = Status::Unknown;

#[test]
fn unmounted_mounts_the_primary_when_up() {
    let t = step(&State::default(), Event::HealthObserved(snap(UP, UP)), &policy(), 0);
    assert_eq!(t.next.phase, Phase::Mounting { to: Server::Primary });
    assert_eq!(effects(&t), vec![Action::Mount { server: Server::Primary }]);
    assert_eq!(t.next.epoch, 0);
}

#[test]
fn unmounted_with_pending_sync_prefers_the_backup() {
    let s = State { pending_reverse_sync: true, ..State::default() };
    let t = step(&s, Event::HealthObserved(snap(UP, UP)), &policy(), 0);
    assert_eq!(effects(&t), vec![Action::Mount { server: Server::Backup }]);
}

#[test]
fn unmounted_mounts_the_backup_when_only_it_is_up_and_opens_an_epoch() {
    let t = step(&State::default(), Event::HealthObserved(snap(DOWN, UP)), &policy(), 0);
    assert_eq!(effects(&t), vec![Action::Mount { server: Server::Backup }]);
    assert_eq!(kinds(&t), vec![AlertKind::FailoverStarted]);
    assert_eq!(t.next.epoch, 1);
    assert!(t.next.pending_reverse_sync);
}

#[test]
fn unmounted_waits_for_the_first_check_of_the_preferred_server() {
    let t = step(&State::default(), Event::HealthObserved(snap(UNKNOWN, UP)), &policy(), 0);
    assert_eq!(t.next.phase, Phase::Unmounted);
    assert!(t.actions.is_empty());
}

#[test]
fn unmounted_waits_while_nothing_is_known() {
    let t = step(&State::default(), Event::HealthObserved(snap(UNKNOWN, UNKNOWN)), &policy(), 0);
    assert_eq!(t.next.phase, Phase::Unmounted);
    assert!(t.actions.is_empty());
}

#[test]
fn primary_down_backup_up_fails_over_with_one_alert() {
    let t = step(&serving(Server::Primary), Event::HealthObserved(snap(DOWN, UP)), &policy(), 0);
    assert_eq!(t.next.phase, Phase::Mounting { to: Server::Backup });
    assert_eq!(effects(&t), vec![Action::Mount { server: Server::Backup }]);
    assert_eq!(kinds(&t), vec![AlertKind::FailoverStarted]);
    assert_eq!(t.next.epoch, 1);
    assert!(t.next.pending_reverse_sync);
    assert!(persists(&t));
    // further observations while mounting change nothing
    let t2 = step(&t.next, Event::HealthObserved(snap(DOWN, UP)), &policy(), 1);
    assert!(t2.actions.is_empty());
}

#[test]
fn a_backup_whose_latest_check_failed_is_not_switched_to() {
    let mut h = snap(DOWN, UP);
    h.failing.backup = true;
    let t = step(&serving(Server::Primary), Event::HealthObserved(h), &policy(), 0);
    assert!(t.actions.is_empty());
}

#[test]
fn primary_unknown_or_up_does_not_fail_over() {
    for p in [UP, UNKNOWN] {
        let t = step(&serving(Server::Primary), Event::HealthObserved(snap(p, UP)), &policy(), 0);
        assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
        assert!(t.actions.is_empty());
    }
}

#[test]
fn mount_success_serves_and_reports() {
    let s = State { phase: Phase::Mounting { to: Server::Backup }, ..on_backup() };
    let t = step(&s, Event::MountSucceeded { server: Server::Backup, old_mount: Some(40) }, &policy(), 0);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
    assert_eq!(kinds(&t), vec![AlertKind::FailoverCompleted]);
    assert_eq!(effects(&t), vec![Action::AfterSwitch { server: Server::Backup, old_mount: Some(40) }]);
    assert!(persists(&t));
}

#[test]
fn mount_failure_leaves_unmounted_and_retries_next_decision() {
    let s = State { phase: Phase::Mounting { to: Server::Backup }, ..on_backup() };
    let t = step(&s, Event::MountFailed { server: Server::Backup, error: "exit 32".into() }, &policy(), 0);
    assert_eq!(t.next.phase, Phase::Unmounted);
    assert_eq!(kinds(&t), vec![AlertKind::SwitchFailed]);
    match alert(&t.actions[1]) {
        Some(e) => {
            assert_eq!(e.reason, "exit 32", "the mount command's error");
            assert!(e.details.contains(&("switching to".into(), "backup (b:/e)".into())), "{e:?}");
            assert!(e.next_steps.contains("mount options"), "{e:?}");
        }
        a => panic!("{a:?}"),
    }
    let t2 = step(&t.next, Event::Ticked, &policy(), MOUNT_RETRY_INITIAL_MS);
    assert_eq!(effects(&t2), vec![Action::Mount { server: Server::Backup }]);
    assert_eq!(t2.next.epoch, 1, "a retry is the same episode");
}

#[test]
fn mount_retries_back_off_and_alert_once_per_outage_then_once_on_recovery() {
    let p = policy();
    let mut s = State { phase: Phase::Mounting { to: Server::Backup }, ..on_backup() };
    let mut now = 0;
    let mut alerts = Vec::new();
    let mut attempts_at = Vec::new();
    for _ in 0..5 {
        let t = step(&s, Event::MountFailed { server: Server::Backup, error: "exit 32".into() }, &p, now);
        alerts.extend(kinds(&t));
        s = t.next;
        // tick every second until the retry is due
        loop {
            now += 1_000;
            let t = step(&s, Event::Ticked, &p, now);
            let fx = effects(&t);
            s = t.next;
            if !fx.is_empty() {
                assert_eq!(fx, vec![Action::Mount { server: Server::Backup }]);
                attempts_at.push(now);
                break;
            }
        }
    }
    assert_eq!(alerts, vec![AlertKind::SwitchFailed], "one alert for the whole outage");
    assert_eq!(attempts_at, vec![5_000, 15_000, 35_000, 75_000, 135_000], "doubling from 5 s, capped at 60 s");
    let t = step(&s, Event::MountSucceeded { server: Server::Backup, old_mount: None }, &p, now);
    assert_eq!(kinds(&t), vec![AlertKind::FailoverCompleted]);
    match t.actions.iter().find_map(alert) {
        Some(e) => {
            assert!(e.details.contains(&("failed mount attempts before this one".into(), "5".into())), "{e:?}");
        }
        a => panic!("{a:?}"),
    }
    assert_eq!((t.next.mount_failures, t.next.mount_not_before), (0, None), "the outage is over");
    // a later outage alerts again
    let m = State { phase: Phase::Mounting { to: Server::Backup }, ..t.next };
    let t = step(&m, Event::MountFailed { server: Server::Backup, error: "exit 32".into() }, &p, now);
    assert_eq!(kinds(&t), vec![AlertKind::SwitchFailed]);
}

#[test]
fn both_down_stays_and_alerts_once_per_episode() {
    let t = step(&serving(Server::Primary), Event::HealthObserved(snap(DOWN, DOWN)), &policy(), 0);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
    assert_eq!(kinds(&t), vec![AlertKind::BothDown]);
    let t2 = step(&t.next, Event::HealthObserved(snap(DOWN, DOWN)), &policy(), 1);
    assert!(kinds(&t2).is_empty());
    let t3 = step(&t2.next, Event::Ticked, &policy(), 2);
    assert!(t3.actions.is_empty());
    // backup back: failover; a later both-down is a new episode
    let t4 = step(&t3.next, Event::HealthObserved(snap(DOWN, UP)), &policy(), 3);
    assert!(!t4.next.both_down_alerted);
    assert_eq!(kinds(&t4), vec![AlertKind::FailoverStarted]);
}

#[test]
fn witness_down_means_our_network_is_lost_and_nothing_moves() {
    let mut h = snap(DOWN, DOWN);
    h.witness = Some(DOWN);
    let t = step(&serving(Server::Primary), Event::HealthObserved(h.clone()), &policy(), 0);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
    assert_eq!(kinds(&t), vec![AlertKind::NetworkLost]);
    let t2 = step(&t.next, Event::HealthObserved(h), &policy(), 1);
    assert!(t2.actions.is_empty(), "alerted once");
    // even when the backup looks up, a lost witness blocks the switch
    let mut h2 = snap(DOWN, UP);
    h2.witness = Some(DOWN);
    let t3 = step(&serving(Server::Primary), Event::HealthObserved(h2), &policy(), 0);
    assert!(effects(&t3).is_empty());
    // witness back: the flag resets
    let mut h3 = snap(UP, UP);
    h3.witness = Some(UP);
    assert!(!step(&t2.next, Event::HealthObserved(h3), &policy(), 2).next.network_lost_alerted);
}

#[test]
fn a_failing_witness_delays_the_failover_by_one_check() {
    let mut h = snap(DOWN, UP);
    h.witness = Some(UP);
    h.witness_failing = true;
    let t = step(&serving(Server::Primary), Event::HealthObserved(h.clone()), &policy(), 0);
    assert!(t.actions.is_empty());
    h.witness_failing = false;
    let t2 = step(&t.next, Event::HealthObserved(h), &policy(), 1);
    assert_eq!(effects(&t2), vec![Action::Mount { server: Server::Backup }]);
}

#[test]
fn primary_recovery_alerts_once_and_waits_for_hold_down() {
    let t = step(&on_backup(), Event::HealthObserved(snap(UP, UP)), &policy(), 1_000);
    assert_eq!(kinds(&t), vec![AlertKind::PrimaryRecovered]);
    assert_eq!(t.next.up_since.primary, Some(1_000));
    assert!(effects(&t).is_empty());
    let t2 = step(&t.next, Event::Ticked, &policy(), 10_999);
    assert!(t2.actions.is_empty());
    let t3 = step(&t2.next, Event::Ticked, &policy(), 11_000);
    assert_eq!(t3.next.phase, Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 });
    assert_eq!(effects(&t3), vec![Action::ReverseSync { attempt: 1, pass: 1 }]);
    assert_eq!(kinds(&t3), vec![AlertKind::ReverseSyncStarted]);
}

#[test]
fn a_flapping_primary_restarts_the_hold_down_and_never_moves_the_mount() {
    let p = policy();
    let mut s = on_backup();
    let mut now = 0;
    for _ in 0..10 {
        let t = step(&s, Event::HealthObserved(snap(UP, UP)), &p, now);
        assert!(effects(&t).is_empty());
        now += 5_000;
        let t = step(&t.next, Event::HealthObserved(snap(DOWN, UP)), &p, now);
        assert!(effects(&t).is_empty());
        assert_eq!(t.next.up_since.primary, None);
        s = t.next;
        now += 1_000;
    }
    assert_eq!(s.phase, Phase::Serving { server: Server::Backup });
}

#[test]
fn reverse_sync_failure_backs_off_then_retries_with_the_next_attempt() {
    let p = policy();
    let s = State {
        phase: Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 },
        up_since: PerServer { primary: Some(0), backup: None },
        ..on_backup()
    };
    let s = State { health: snap(UP, UP), recovered_alerted: true, ..s };
    let t = step(&s, Event::ReverseSyncFailed { pass: 0, error: "exit 10".into() }, &p, 20_000);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed]);
    assert_eq!(t.next.resync_not_before, Some(21_000));
    assert!(step(&t.next, Event::Ticked, &p, 20_999).actions.is_empty());
    let t2 = step(&t.next, Event::Ticked, &p, 21_000);
    assert_eq!(effects(&t2), vec![Action::ReverseSync { attempt: 2, pass: 1 }]);
    let t3 = step(&t2.next, Event::ReverseSyncFailed { pass: 1, error: "exit 10".into() }, &p, 22_000);
    assert_eq!(t3.next.resync_not_before, Some(24_000), "doubling");
    assert_eq!(p.backoff_ms(5), 4_000, "capped");
    match t3.actions.iter().find_map(alert) {
        Some(e) => assert!(e.title.contains("attempt 2") && e.reason == "exit 10", "{e:?}"),
        None => panic!("no alert"),
    }
}

#[test]
fn only_a_successful_sync_leads_to_the_staged_switch() {
    let s =
        State { phase: Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 3 }, resync_failures: 2, ..on_backup() };
    let s = State { health: snap(UP, UP), ..s };
    let t = step(&s, Event::ReverseSyncSucceeded { pass: 0, files: 5, bytes: 10, elapsed_ms: 7 }, &policy(), 0);
    assert_eq!(t.next.phase, Phase::Staging { to: Server::Primary });
    assert_eq!(effects(&t), vec![Action::StagedSwitch { to: Server::Primary, keep_old: true }]);
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncSucceeded]);
    assert_eq!(t.next.resync_failures, 0);
    assert!(t.next.pending_reverse_sync, "still pending until the catch-up is done");
}

#[test]
fn a_sync_success_after_the_primary_died_again_stays_on_backup() {
    let s = State { phase: Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 }, ..on_backup() };
    let t = step(&s, Event::ReverseSyncSucceeded { pass: 0, files: 0, bytes: 0, elapsed_ms: 0 }, &policy(), 0);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
    assert!(effects(&t).is_empty());
}

#[test]
fn staged_switch_then_catch_up_then_failback_completed() {
    let s = State { phase: Phase::Staging { to: Server::Primary }, ..on_backup() };
    let t = step(&s, Event::StagedSwitchSucceeded { to: Server::Primary, old_mount: Some(7) }, &policy(), 0);
    assert_eq!(t.next.phase, Phase::CatchingUp);
    assert_eq!(
        effects(&t),
        vec![Action::CatchUp { pass: 1 }, Action::AfterSwitch { server: Server::Primary, old_mount: Some(7) }]
    );
    assert_eq!(kinds(&t), vec![AlertKind::FailbackCompleted], "the clients see the primary from now on");
    let t2 = step(&t.next, Event::CatchUpFinished { pass: 1, result: Ok((3, 30)) }, &policy(), 1);
    assert_eq!(t2.next.phase, Phase::Serving { server: Server::Primary });
    assert!(!t2.next.pending_reverse_sync);
    assert!(kinds(&t2).is_empty(), "logged; the failback was mailed at the switch");
    assert!(persists(&t2));
    let t3 = step(&t.next, Event::CatchUpFinished { pass: 1, result: Err("exit 23".into()) }, &policy(), 1);
    assert_eq!(kinds(&t3), vec![AlertKind::ReverseSyncFailed]);
    assert!(alert(&t3.actions[1]).is_some_and(|e| e.title.contains("FAILED") && e.reason == "exit 23"));
    // the files written during pass 1 are reconciled from a staging mount of the backup
    assert_eq!(t3.next.reconcile_epoch, Some(1));
    assert_eq!(t2.next.reconcile_epoch, None);
}

#[test]
fn a_failed_staged_switch_keeps_serving_and_backs_off() {
    let s = State { phase: Phase::Staging { to: Server::Primary }, ..on_backup() };
    let ev = Event::StagedSwitchFailed {
        to: Server::Primary,
        error: "mount: exit 32".into(),
        serving: Some(Server::Backup),
    };
    let t = step(&s, ev, &policy(), 0);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
    assert_eq!(kinds(&t), vec![AlertKind::SwitchFailed]);
    assert!(alert(&t.actions[1])
        .is_some_and(|e| e.reason == "mount: exit 32" && e.next_steps.contains("keeps serving backup")));
    assert_eq!(t.next.resync_not_before, Some(1_000));
    assert!(t.next.pending_reverse_sync);
}

#[test]
fn without_reverse_sync_config_the_node_stays_on_backup() {
    let p = Policy { failback: false, ..policy() };
    let t = step(&on_backup(), Event::HealthObserved(snap(UP, UP)), &p, 0);
    assert_eq!(kinds(&t), vec![AlertKind::PrimaryRecovered]);
    let t2 = step(&t.next, Event::Ticked, &p, 1_000_000);
    assert!(t2.actions.is_empty());
}

#[test]
fn backup_dying_while_serving_it_moves_to_the_primary_and_says_what_is_missing() {
    let s = State { health: snap(UP, UP), ..on_backup() };
    let t = step(&s, Event::HealthObserved(snap(UP, DOWN)), &policy(), 0);
    assert_eq!(effects(&t), vec![Action::Mount { server: Server::Primary }]);
    assert_eq!(kinds(&t), vec![AlertKind::FailoverStarted]);
    assert_eq!(t.next.phase, Phase::Mounting { to: Server::Primary });
    // the backup's writes become a durable reconciliation of this epoch, recorded before the mount moves
    assert_eq!(t.next.reconcile_epoch, Some(1));
    assert!(!t.next.pending_reverse_sync);
    assert!(persists(&t));
    assert!(alert(&t.actions[1]).is_some_and(|e| e.next_steps.contains("staging dir")));
}

fn on_primary_reconcile_pending() -> State {
    State {
        phase: Phase::Serving { server: Server::Primary },
        epoch: 1,
        reconcile_epoch: Some(1),
        health: snap(UP, DOWN),
        ..State::default()
    }
}

#[test]
fn without_reverse_sync_config_a_dying_backup_is_not_left_unless_the_operator_forces_it() {
    // nothing would ever copy the backup's writes back: serving the primary's older copies is the
    // operator's decision
    let p = Policy { failback: false, ..policy() };
    let s = State { health: snap(UP, UP), ..on_backup() };
    let t = step(&s, Event::HealthObserved(snap(UP, DOWN)), &p, 0);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
    assert!(effects(&t).is_empty(), "{:?}", t.actions);
    assert_eq!(kinds(&t), vec![AlertKind::SwitchFailed]);
    assert!(alert(&t.actions[0]).is_some_and(|e| e.next_steps.contains("--failover-to primary")));
    // alerted once per outage of the backup
    let t2 = step(&t.next, Event::HealthObserved(snap(UP, DOWN)), &p, 1);
    assert!(t2.actions.is_empty());
    let back = step(&t2.next, Event::HealthObserved(snap(UP, UP)), &p, 2);
    let again = step(&back.next, Event::HealthObserved(snap(UP, DOWN)), &p, 3);
    assert_eq!(kinds(&again), vec![AlertKind::SwitchFailed]);
    // the same from an empty mount point
    let empty = State { phase: Phase::Unmounted, ..t2.next.clone() };
    assert!(effects(&step(&empty, Event::Ticked, &p, 4)).is_empty());
    // forced: the primary, the pending flag left for the operator
    let forced = step(&t2.next, Event::Requested(Request::FailoverTo(Server::Primary)), &p, 5);
    assert_eq!(effects(&forced), vec![Action::Mount { server: Server::Primary }]);
    assert_eq!(forced.next.reconcile_epoch, None);
    assert!(forced.next.pending_reverse_sync);
    assert!(forced.actions.iter().filter_map(alert).any(|e| e.next_steps.contains("by hand")));
}

#[test]
fn unmounted_with_pending_sync_and_a_dead_backup_mounts_the_primary_and_records_the_reconciliation() {
    let s = State { pending_reverse_sync: true, epoch: 3, ..State::default() };
    let t = step(&s, Event::HealthObserved(snap(UP, DOWN)), &policy(), 0);
    assert_eq!(effects(&t), vec![Action::Mount { server: Server::Primary }]);
    assert_eq!(t.next.reconcile_epoch, Some(3));
    assert!(!t.next.pending_reverse_sync);
    assert!(persists(&t));
}

#[test]
fn reconciliation_waits_for_the_backup_to_be_up_for_the_hold_down() {
    let p = policy();
    let s = on_primary_reconcile_pending();
    let t = step(&s, Event::HealthObserved(snap(UP, DOWN)), &p, 0);
    assert!(t.actions.is_empty());
    let t = step(&t.next, Event::HealthObserved(snap(UP, UP)), &p, 1_000);
    assert_eq!(t.next.up_since.backup, Some(1_000));
    assert!(effects(&t).is_empty());
    let t2 = step(&t.next, Event::Ticked, &p, 10_999);
    assert!(t2.actions.is_empty());
    // Serving(primary) --backup up for hold-down--> Reconciling(1)
    let t3 = step(&t2.next, Event::Ticked, &p, 11_000);
    assert_eq!(t3.next.phase, Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 });
    assert_eq!(effects(&t3), vec![Action::Reconcile { attempt: 1, pass: 1 }]);
    assert_eq!(kinds(&t3), vec![AlertKind::ReverseSyncStarted]);
    assert!(persists(&t3));
    assert_eq!(t3.next.active(), Some(Server::Primary));
    // work in progress: nothing else starts
    assert!(step(&t3.next, Event::Ticked, &p, 12_000).actions.is_empty());
}

#[test]
fn a_flapping_backup_restarts_the_reconciliation_hold_down() {
    let p = policy();
    let t = step(&on_primary_reconcile_pending(), Event::HealthObserved(snap(UP, UP)), &p, 0);
    let t = step(&t.next, Event::HealthObserved(snap(UP, DOWN)), &p, 9_000);
    assert_eq!(t.next.up_since.backup, None);
    let t = step(&t.next, Event::HealthObserved(snap(UP, UP)), &p, 10_000);
    assert!(step(&t.next, Event::Ticked, &p, 19_999).actions.is_empty());
    assert_eq!(effects(&step(&t.next, Event::Ticked, &p, 20_000)), vec![Action::Reconcile { attempt: 1, pass: 1 }]);
}

#[test]
fn reconciliation_needs_a_usable_primary_and_runs_while_held() {
    let p = policy();
    let s = State {
        health: snap(UP, UP),
        up_since: PerServer { primary: None, backup: Some(0) },
        ..on_primary_reconcile_pending()
    };
    let mut failing = s.clone();
    failing.health.failing.primary = true;
    assert!(step(&failing, Event::Ticked, &p, 60_000).actions.is_empty());
    // held on the primary: the mount does not move, so the reconciliation still runs
    let held = State { hold: Hold::Stay, ..s };
    assert_eq!(effects(&step(&held, Event::Ticked, &p, 60_000)), vec![Action::Reconcile { attempt: 1, pass: 1 }]);
    let no_target = Policy { failback: false, ..policy() };
    assert!(step(&held, Event::Ticked, &no_target, 60_000).actions.is_empty());
}

#[test]
fn reconciliation_success_clears_the_pending_epoch() {
    let s = State {
        phase: Phase::Syncing { kind: SyncKind::Reconcile, attempt: 2 },
        resync_failures: 1,
        ..on_primary_reconcile_pending()
    };
    let t = step(&s, Event::ReconcileSucceeded { pass: 0, files: 4, bytes: 40, elapsed_ms: 9 }, &policy(), 0);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
    assert_eq!(t.next.reconcile_epoch, None);
    assert_eq!(t.next.resync_failures, 0);
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncSucceeded]);
    assert!(effects(&t).is_empty());
    assert!(persists(&t));
}

#[test]
fn reconciliation_failure_backs_off_then_retries_with_the_next_attempt() {
    let p = policy();
    let s = State {
        phase: Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 },
        health: snap(UP, UP),
        up_since: PerServer { primary: None, backup: Some(0) },
        ..on_primary_reconcile_pending()
    };
    let t = step(&s, Event::ReconcileFailed { pass: 0, error: "rsync exit 10".into() }, &p, 20_000);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
    assert_eq!(t.next.reconcile_epoch, Some(1), "still pending");
    assert_eq!(t.next.resync_not_before, Some(21_000));
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed]);
    assert!(persists(&t));
    assert!(step(&t.next, Event::Ticked, &p, 20_999).actions.is_empty());
    let t2 = step(&t.next, Event::Ticked, &p, 21_000);
    assert_eq!(effects(&t2), vec![Action::Reconcile { attempt: 2, pass: 1 }]);
}

#[test]
fn a_running_reconciliation_never_delays_a_failover_and_its_late_report_is_ignored() {
    let s = State {
        phase: Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 },
        health: snap(UP, UP),
        up_since: PerServer { primary: None, backup: Some(0) },
        ..on_primary_reconcile_pending()
    };
    // Reconciling --primary down, backup up--> Mounting(backup), new epoch, the pass aborted
    let t = step(&s, Event::HealthObserved(snap(DOWN, UP)), &policy(), 0);
    assert_eq!(effects(&t), vec![Action::AbortPass { pass: 0 }, Action::Mount { server: Server::Backup }]);
    assert_eq!(t.next.epoch, 2);
    assert!(t.next.pending_reverse_sync);
    let late = step(&t.next, Event::ReconcileSucceeded { pass: 0, files: 1, bytes: 1, elapsed_ms: 1 }, &policy(), 1);
    assert_eq!(late.next, t.next);
    assert!(late.actions.is_empty());
    // the next failback's first pass copies the whole backup tree: the old reconciliation is included
    let r = State { phase: Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 }, health: snap(UP, UP), ..t.next };
    let t2 = step(&r, Event::ReverseSyncSucceeded { pass: 0, files: 1, bytes: 1, elapsed_ms: 1 }, &policy(), 2);
    assert_eq!(t2.next.reconcile_epoch, None);
}

#[test]
fn manual_failover_to_backup_stages_when_the_primary_is_healthy() {
    let t = step(&serving(Server::Primary), Event::Requested(Request::FailoverTo(Server::Backup)), &policy(), 0);
    assert_eq!(t.next.hold, Hold::Pinned(Server::Backup));
    assert_eq!(kinds(&t), vec![AlertKind::ManualOverride]);
    assert_eq!(effects(&t), vec![Action::StagedSwitch { to: Server::Backup, keep_old: false }]);
    let t2 = step(&t.next, Event::StagedSwitchSucceeded { to: Server::Backup, old_mount: None }, &policy(), 1);
    assert_eq!(t2.next.phase, Phase::Serving { server: Server::Backup });
    // held: a healthy primary does not trigger failback
    let t3 = step(&t2.next, Event::Ticked, &policy(), 1_000_000);
    assert!(effects(&t3).is_empty());
}

#[test]
fn manual_failover_to_primary_syncs_first_without_hold_down() {
    let s = State { health: snap(UP, UP), up_since: PerServer { primary: Some(0), backup: None }, ..on_backup() };
    let t = step(&s, Event::Requested(Request::FailoverTo(Server::Primary)), &policy(), 1);
    assert_eq!(effects(&t), vec![Action::ReverseSync { attempt: 1, pass: 1 }]);
}

#[test]
fn hold_suspends_failover_and_release_resumes_it() {
    let t = step(&serving(Server::Primary), Event::Requested(Request::Hold), &policy(), 0);
    assert_eq!(t.next.hold, Hold::Stay);
    let t2 = step(&t.next, Event::HealthObserved(snap(DOWN, UP)), &policy(), 1);
    assert!(effects(&t2).is_empty());
    let t3 = step(&t2.next, Event::Requested(Request::Release), &policy(), 2);
    assert_eq!(t3.next.hold, Hold::None);
    assert_eq!(effects(&t3), vec![Action::Mount { server: Server::Backup }]);
    assert_eq!(kinds(&t3), vec![AlertKind::ManualOverride, AlertKind::FailoverStarted]);
}

#[test]
fn stale_completions_are_ignored() {
    let s = serving(Server::Primary);
    for ev in [
        Event::MountSucceeded { server: Server::Backup, old_mount: None },
        Event::MountFailed { server: Server::Backup, error: "x".into() },
        Event::ReverseSyncSucceeded { pass: 0, files: 0, bytes: 0, elapsed_ms: 0 },
        Event::ReverseSyncFailed { pass: 0, error: "x".into() },
        Event::StagedSwitchSucceeded { to: Server::Primary, old_mount: None },
        Event::StagedSwitchFailed { to: Server::Primary, error: "x".into(), serving: None },
        Event::CatchUpFinished { pass: 0, result: Ok((0, 0)) },
        Event::ReconcileSucceeded { pass: 0, files: 0, bytes: 0, elapsed_ms: 0 },
        Event::ReconcileFailed { pass: 0, error: "x".into() },
    ] {
        let t = step(&s, ev, &policy(), 0);
        assert_eq!(t.next, s);
        assert!(t.actions.is_empty());
    }
    let m = State { phase: Phase::Mounting { to: Server::Backup }, ..s };
    assert!(step(&m, Event::MountSucceeded { server: Server::Primary, old_mount: None }, &policy(), 0)
        .actions
        .is_empty());
}

#[test]
fn active_server_per_phase() {
    let mut s = State::default();
    assert_eq!(s.active(), None);
    s.phase = Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 };
    assert_eq!(s.active(), Some(Server::Backup));
    s.phase = Phase::Staging { to: Server::Primary };
    assert_eq!(s.active(), Some(Server::Backup));
    s.phase = Phase::CatchingUp;
    assert_eq!(s.active(), Some(Server::Primary));
    s.phase = Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 };
    assert_eq!(s.active(), Some(Server::Primary));
}

#[test]
fn extreme_counters_and_times_from_a_state_file_never_panic() {
    // web.state.json is input: any value serde accepts must be survivable.
    let p = Policy { retry_initial_ms: u64::MAX, retry_max_ms: u64::MAX, ..policy() };
    let edge = State {
        epoch: u64::MAX,
        resync_failures: u32::MAX,
        resync_not_before: Some(0),
        up_since: PerServer { primary: Some(0), backup: None },
        health: snap(DOWN, UP),
        ..State::default()
    };
    // Serving(primary) --primary down--> Mounting(backup): a new epoch at u64::MAX
    let t = step(
        &State { phase: Phase::Serving { server: Server::Primary }, ..edge.clone() },
        Event::HealthObserved(snap(DOWN, UP)),
        &p,
        u64::MAX,
    );
    assert_eq!(t.next.phase, Phase::Mounting { to: Server::Backup });
    assert_eq!(t.next.epoch, u64::MAX, "saturates");
    // reverse-sync attempt numbers and backoff deadlines at their limits
    let on_b = State {
        phase: Phase::Serving { server: Server::Backup },
        pending_reverse_sync: true,
        health: snap(UP, UP),
        ..edge.clone()
    };
    let t = step(&on_b, Event::Ticked, &p, u64::MAX);
    assert_eq!(t.next.phase, Phase::Syncing { kind: SyncKind::ReverseSync, attempt: u32::MAX });
    let t = step(&t.next, Event::ReverseSyncFailed { pass: 1, error: "x".into() }, &p, u64::MAX);
    assert_eq!(t.next.resync_not_before, Some(u64::MAX));
    let staging = State { phase: Phase::Staging { to: Server::Primary }, ..on_b.clone() };
    let ev = Event::StagedSwitchFailed { to: Server::Primary, error: "x".into(), serving: Some(Server::Backup) };
    let t = step(&staging, ev, &p, u64::MAX);
    assert_eq!(t.next.resync_failures, u32::MAX);
    let rec = State {
        phase: Phase::Syncing { kind: SyncKind::Reconcile, attempt: u32::MAX },
        reconcile_epoch: Some(u64::MAX),
        ..edge
    };
    let t = step(&rec, Event::ReconcileFailed { pass: 0, error: "x".into() }, &p, u64::MAX);
    assert_eq!(t.next.resync_not_before, Some(u64::MAX));
}

fn resyncing() -> State {
    State {
        phase: Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 },
        health: snap(UP, UP),
        up_since: PerServer { primary: Some(0), backup: None },
        ..on_backup()
    }
}

fn catching_up() -> State {
    State { phase: Phase::CatchingUp, health: snap(UP, UP), ..on_backup() }
}

#[test]
fn the_backup_dying_during_the_reverse_sync_moves_to_the_primary_and_records_a_reconciliation() {
    let t = step(&resyncing(), Event::HealthObserved(snap(UP, DOWN)), &policy(), 5);
    assert_eq!(t.next.phase, Phase::Mounting { to: Server::Primary });
    assert_eq!(effects(&t), vec![Action::AbortPass { pass: 0 }, Action::Mount { server: Server::Primary }]);
    assert_eq!(t.next.reconcile_epoch, Some(1), "the backup's writes are owed to the primary");
    assert!(!t.next.pending_reverse_sync);
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed, AlertKind::FailoverStarted]);
    let persist = t.actions.iter().position(|a| *a == Action::Persist).unwrap();
    let mount = t.actions.iter().position(|a| matches!(a, Action::Mount { .. })).unwrap();
    assert!(persist < mount, "the reconciliation is durable before the mount moves: {:?}", t.actions);
}

#[test]
fn the_primary_dying_during_the_reverse_sync_aborts_it_and_stays_on_the_backup() {
    let t = step(&resyncing(), Event::HealthObserved(snap(DOWN, UP)), &policy(), 5);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
    assert_eq!(effects(&t), vec![Action::AbortPass { pass: 0 }]);
    assert!(t.next.pending_reverse_sync, "still owed");
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed]);
    assert!(persists(&t));
}

#[test]
fn both_dying_during_the_reverse_sync_aborts_it_and_says_both_are_down() {
    let t = step(&resyncing(), Event::HealthObserved(snap(DOWN, DOWN)), &policy(), 5);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
    assert_eq!(effects(&t), vec![Action::AbortPass { pass: 0 }]);
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed, AlertKind::BothDown]);
    // the primary comes back first: the backup is still dead, so move there with a reconciliation
    let t2 = step(&t.next, Event::HealthObserved(snap(UP, DOWN)), &policy(), 6);
    assert_eq!(effects(&t2), vec![Action::Mount { server: Server::Primary }], "nothing left to abort");
    assert_eq!(t2.next.reconcile_epoch, Some(1));
}

#[test]
fn a_failing_check_below_fall_does_not_abort_the_reverse_sync() {
    let mut h = snap(UP, UP);
    h.failing.backup = true;
    let t = step(&resyncing(), Event::HealthObserved(h), &policy(), 5);
    assert_eq!(t.next.phase, Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 });
    assert!(t.actions.is_empty());
}

#[test]
fn the_backup_dying_during_the_catch_up_keeps_the_primary_and_owes_a_reconciliation() {
    let t = step(&catching_up(), Event::HealthObserved(snap(UP, DOWN)), &policy(), 5);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
    assert_eq!(effects(&t), vec![Action::AbortPass { pass: 0 }]);
    assert_eq!(t.next.reconcile_epoch, Some(1), "retried from a staging mount when the backup is back");
    assert!(!t.next.pending_reverse_sync);
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed]);
    assert!(persists(&t));
    // backup back for the hold-down: the reconciliation runs
    let t2 = step(&t.next, Event::HealthObserved(snap(UP, UP)), &policy(), 10);
    let t3 = step(&t2.next, Event::Ticked, &policy(), 10 + 10_000);
    assert!(matches!(t3.next.phase, Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 }), "{:?}", t3.next.phase);
}

#[test]
fn the_primary_dying_during_the_catch_up_fails_over_to_the_backup() {
    let t = step(&catching_up(), Event::HealthObserved(snap(DOWN, UP)), &policy(), 5);
    assert_eq!(t.next.phase, Phase::Mounting { to: Server::Backup });
    assert_eq!(effects(&t), vec![Action::AbortPass { pass: 0 }, Action::Mount { server: Server::Backup }]);
    assert_eq!(t.next.epoch, 2);
    assert!(t.next.pending_reverse_sync);
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed, AlertKind::FailoverStarted]);
}

#[test]
fn the_backup_dying_during_a_reconciliation_aborts_it_and_keeps_it_owed() {
    let s = State {
        phase: Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 },
        health: snap(UP, UP),
        up_since: PerServer { primary: None, backup: Some(0) },
        ..on_primary_reconcile_pending()
    };
    let t = step(&s, Event::HealthObserved(snap(UP, DOWN)), &policy(), 5);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
    assert_eq!(effects(&t), vec![Action::AbortPass { pass: 0 }]);
    assert_eq!(t.next.reconcile_epoch, Some(1));
    assert_eq!(kinds(&t), vec![AlertKind::ReverseSyncFailed]);
}

#[test]
fn a_late_report_of_an_aborted_pass_is_not_taken_for_the_next_pass() {
    let p = policy();
    // Resyncing(pass 0) --primary down--> Serving(backup), pass 0 aborted
    let t = step(&resyncing(), Event::HealthObserved(snap(DOWN, UP)), &p, 0);
    // the primary is back for the hold-down: pass 1 starts
    let t = step(&t.next, Event::HealthObserved(snap(UP, UP)), &p, 1_000);
    let t = step(&t.next, Event::Ticked, &p, 11_000);
    assert_eq!(effects(&t), vec![Action::ReverseSync { attempt: 1, pass: 1 }]);
    // pass 0's rsync finished before the kill landed: its report must not start the switch
    for late in [
        Event::ReverseSyncSucceeded { pass: 0, files: 1, bytes: 1, elapsed_ms: 1 },
        Event::ReverseSyncFailed { pass: 0, error: "killed".into() },
    ] {
        let l = step(&t.next, late, &p, 11_001);
        assert_eq!(l.next, t.next);
        assert!(l.actions.is_empty(), "{:?}", l.actions);
    }
    let done = step(&t.next, Event::ReverseSyncSucceeded { pass: 1, files: 1, bytes: 1, elapsed_ms: 1 }, &p, 12_000);
    assert_eq!(done.next.phase, Phase::Staging { to: Server::Primary });
    // the same for a catch-up and a reconciliation: only the current pass id is heard
    let c = State { pass: 7, ..catching_up() };
    assert!(step(&c, Event::CatchUpFinished { pass: 6, result: Ok((0, 0)) }, &p, 0).actions.is_empty());
    let r = State {
        phase: Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 },
        pass: 7,
        ..on_primary_reconcile_pending()
    };
    assert!(step(&r, Event::ReconcileSucceeded { pass: 6, files: 0, bytes: 0, elapsed_ms: 0 }, &p, 0)
        .actions
        .is_empty());
}

#[test]
fn pass_ids_wrap_instead_of_panicking() {
    let s = State {
        pass: u64::MAX,
        health: snap(UP, UP),
        up_since: PerServer { primary: Some(0), backup: None },
        ..on_backup()
    };
    let t = step(&s, Event::Ticked, &policy(), 20_000);
    assert_eq!(effects(&t), vec![Action::ReverseSync { attempt: 1, pass: 0 }]);
}

#[test]
fn an_operator_switch_during_a_reconciliation_aborts_it() {
    let s = State {
        phase: Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 },
        health: snap(UP, UP),
        pass: 3,
        ..on_primary_reconcile_pending()
    };
    let t = step(&s, Event::Requested(Request::FailoverTo(Server::Backup)), &policy(), 0);
    assert_eq!(t.next.phase, Phase::Staging { to: Server::Backup });
    assert_eq!(
        effects(&t),
        vec![Action::AbortPass { pass: 3 }, Action::StagedSwitch { to: Server::Backup, keep_old: false }]
    );
}

#[test]
fn a_manual_switch_to_the_backup_that_failed_owes_nothing() {
    let p = policy();
    let t = step(&serving(Server::Primary), Event::Requested(Request::FailoverTo(Server::Backup)), &p, 0);
    assert_eq!(t.next.phase, Phase::Staging { to: Server::Backup });
    let ev = Event::StagedSwitchFailed { to: Server::Backup, error: "exit 32".into(), serving: Some(Server::Primary) };
    let t = step(&t.next, ev, &p, 1);
    assert_eq!(t.next.phase, Phase::Serving { server: Server::Primary });
    assert!(!t.next.pending_reverse_sync, "no client ever wrote to the backup");
    assert_eq!(t.next.epoch, 0);
    // an empty mount point later must not prefer the backup
    let t = step(&t.next, Event::Requested(Request::Release), &p, 2);
    let u = State { phase: Phase::Unmounted, ..t.next };
    assert_eq!(effects(&step(&u, Event::Ticked, &p, 3)), vec![Action::Mount { server: Server::Primary }]);
    // a switch that got as far as the backup opens the epoch
    let st = State {
        phase: Phase::Staging { to: Server::Backup },
        hold: Hold::Pinned(Server::Backup),
        ..serving(Server::Primary)
    };
    for ev in [
        Event::StagedSwitchSucceeded { to: Server::Backup, old_mount: None },
        Event::StagedSwitchFailed { to: Server::Backup, error: "verify".into(), serving: Some(Server::Backup) },
    ] {
        let t = step(&st, ev, &p, 4);
        assert_eq!(t.next.phase, Phase::Serving { server: Server::Backup });
        assert!(t.next.pending_reverse_sync);
        assert_eq!(t.next.epoch, 1);
    }
}

#[test]
fn times_in_the_future_never_hold_the_node_longer_than_configured() {
    // the wall clock stepped back after these were stored
    let p = policy();
    let s = State {
        health: snap(UP, UP),
        up_since: PerServer { primary: Some(u64::MAX), backup: None },
        resync_not_before: Some(u64::MAX),
        recovered_alerted: true,
        ..on_backup()
    };
    let t = step(&s, Event::Ticked, &p, 1_000);
    assert_eq!(t.next.up_since.primary, Some(1_000), "the hold-down starts now");
    assert_eq!(t.next.resync_not_before, Some(5_000), "at most retry_max away");
    assert_eq!(effects(&step(&t.next, Event::Ticked, &p, 11_000)), vec![Action::ReverseSync { attempt: 1, pass: 1 }]);
    let u = State { phase: Phase::Unmounted, mount_not_before: Some(u64::MAX), ..serving(Server::Primary) };
    let t = step(&u, Event::Ticked, &p, 0);
    assert!(effects(&t).is_empty());
    assert_eq!(t.next.mount_not_before, Some(MOUNT_RETRY_MAX_MS));
    assert_eq!(
        effects(&step(&t.next, Event::Ticked, &p, MOUNT_RETRY_MAX_MS)),
        vec![Action::Mount { server: Server::Primary }]
    );
}

#[test]
fn sync_phases_keep_the_stored_names_of_every_earlier_version() {
    for (text, phase) in [
        (r#"{"phase":"resyncing","attempt":2}"#, Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 2 }),
        (r#"{"phase":"reconciling","attempt":3}"#, Phase::Syncing { kind: SyncKind::Reconcile, attempt: 3 }),
        (r#"{"phase":"serving","server":"backup"}"#, Phase::Serving { server: Server::Backup }),
        (r#"{"phase":"catching-up"}"#, Phase::CatchingUp),
    ] {
        assert_eq!(serde_json::from_str::<Phase>(text).unwrap(), phase, "{text}");
        assert_eq!(serde_json::to_string(&phase).unwrap(), text);
    }
    // logs and the systemd status line show the same names as before
    assert_eq!(format!("{:?}", Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 }), "Reconciling { attempt: 1 }");
}

/// The controller starts each effect once the state persisted so far is written: an effect pushed
/// before its transition's `Persist` could move the mount (or start a switch or a pass) while the
/// state file still says otherwise, and a crash then restarts from a state that does not know it (a
/// failover whose new epoch was never written owes no reverse sync).
#[test]
fn every_effect_starts_after_its_transition_is_persisted() {
    let p = policy();
    let pinned = State { hold: Hold::Pinned(Server::Backup), ..serving(Server::Primary) };
    let resyncing = State { phase: Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 }, pass: 1, ..on_backup() };
    let resynced = State { health: snap(UP, UP), ..resyncing };
    let staging = State { phase: Phase::Staging { to: Server::Primary }, ..resynced.clone() };
    let cases = [
        step(&pinned, Event::HealthObserved(snap(DOWN, UP)), &p, 0),
        step(&pinned, Event::Ticked, &p, 0),
        step(&resynced, Event::ReverseSyncSucceeded { pass: 1, files: 1, bytes: 1, elapsed_ms: 1 }, &p, 0),
        step(&staging, Event::StagedSwitchSucceeded { to: Server::Primary, old_mount: None }, &p, 0),
    ];
    for t in cases {
        let persist = t.actions.iter().position(|a| *a == Action::Persist);
        let effect = t.actions.iter().position(|a| {
            matches!(
                a,
                Action::Mount { .. }
                    | Action::StagedSwitch { .. }
                    | Action::ReverseSync { .. }
                    | Action::CatchUp { .. }
                    | Action::Reconcile { .. }
            )
        });
        assert!(effect.is_some() && persist < effect, "persisted before the effect starts: {:?}", t.actions);
    }
}
