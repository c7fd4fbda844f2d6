//! Golden tests of `nfs-guard status` for people: fixed status documents, a fixed "now", the whole
//! text compared, in each phase of a failover and failback, plus storage lag and waiting alerts.
//! Also the exit code of each, and the `--json` document's schema.
// Goldens are raw strings with hashes, whatever they contain (so any text can be blessed in).
#![allow(clippy::unwrap_used, clippy::needless_raw_string_hashes, clippy::needless_pass_by_value)]

use std::path::PathBuf;

use nfs_guard::status::{assess, render_human, render_json, Doc, Docs, Level};
use serde_json::{json, Value};

/// 2026-11-29 04:30:00 UTC.
const NOW: u64 = 1_795_926_600_000;
const S: u64 = 1000;

fn server(name: &str, ip: &str, state: &str, fails: u64, error: Option<&str>, since: u64) -> Value {
    json!({
        "name": name, "source": format!("{ip}:/srv/nfs"), "state": state,
        "consecutive_failures": fails, "consecutive_successes": if fails == 0 { 2 } else { 0 },
        "last_error": error, "state_since_ms": since,
    })
}

/// A web document as the controller writes it.
fn web(
    active: &str,
    phase: Value,
    primary: Value,
    pending: bool,
    transition: Option<(&str, &str, &str, u64)>,
) -> Value {
    json!({
        "active": active, "phase": phase, "mount_point": "/mnt/nfs", "hold": "none", "epoch": 1,
        "pending_reverse_sync": pending, "pending_reconcile_epoch": null, "reverse_sync_failures": 0,
        "servers": [primary, server("backup", "10.0.0.3", "up", 0, None, NOW - 3600 * S)],
        "witness": null, "last_after_switch": null,
        "checked_ms": [NOW - S, NOW - S, null],
        "last_transition": transition.map(|(from, to, why, at)| json!({"at_ms": at, "from": from, "to": to, "why": why})),
        "written_ms": NOW - 2 * S,
    })
}

fn docs(web: Value) -> Docs {
    Docs {
        state_dir: PathBuf::from("/var/lib/nfs-guard"),
        web: Doc::Read(web),
        farm: Doc::Missing,
        storage: Doc::Missing,
        storage_running: None,
        alerts_waiting: Some(0),
    }
}

const DOWN_ERR: &str = "Rpc check of 10.0.0.2:2049 failed: no answer within 800ms";

fn primary_up() -> Value {
    server("primary", "10.0.0.2", "up", 0, Some("an old error, fixed since"), NOW - 7200 * S)
}

fn primary_down() -> Value {
    server("primary", "10.0.0.2", "down", 7, Some(DOWN_ERR), NOW - 65 * S)
}

/// `GOLDEN_BLESS=1` prints each text with its line instead of comparing (to update the goldens).
#[track_caller]
fn check(d: &Docs, want: &str, level: Level) {
    let got = render_human(d, NOW, false);
    if std::env::var_os("GOLDEN_BLESS").is_some() {
        println!("GOLDEN {}<<<{got}>>>", std::panic::Location::caller().line());
        return;
    }
    assert_eq!(got, want, "\n--- got:\n{got}\n--- want:\n{want}");
    assert_eq!(assess(d, NOW).level, level);
}

#[test]
fn serving_the_primary_is_healthy_and_hides_an_old_error() {
    let d = docs(web("primary", json!({"phase": "serving", "server": "primary"}), primary_up(), false, None));
    check(
        &d,
        r#"web: serving the primary (/mnt/nfs, epoch 1)
  phase: serving (no change since the daemon started)
  primary  10.0.0.2:/srv/nfs        UP for 2h 0m, checked 1s ago
  backup   10.0.0.3:/srv/nfs        UP for 1h 0m, checked 1s ago
verdict: OK (exit 0)
"#,
        Level::Healthy,
    );
}

#[test]
fn failing_over_shows_nothing_mounted_and_why() {
    let d = docs(web(
        "none",
        json!({"phase": "mounting", "to": "backup"}),
        primary_down(),
        true,
        Some(("serving", "mounting", &format!("primary down ({DOWN_ERR})"), NOW - 3 * S)),
    ));
    check(
        &d,
        r#"web: NOTHING MOUNTED (/mnt/nfs, epoch 1)
  phase: mounting to backup since 2026-11-29 04:29:57 UTC (3s ago)
  last change: serving -> mounting: primary down (Rpc check of 10.0.0.2:2049 failed: no answer within 800ms)
  primary  10.0.0.2:/srv/nfs        DOWN for 1m 5s, checked 1s ago: Rpc check of 10.0.0.2:2049 failed: no answer within 800ms
  backup   10.0.0.3:/srv/nfs        UP for 1h 0m, checked 1s ago
  pending: reverse sync backup -> primary before failback
verdict: CRITICAL: switching to backup: nothing served until it is mounted; primary is down; a reverse sync backup -> primary is pending (exit 2)
"#,
        Level::Down,
    );
}

#[test]
fn failed_over_to_the_backup_is_down_with_the_reverse_sync_pending() {
    let d = docs(web(
        "backup",
        json!({"phase": "serving", "server": "backup"}),
        primary_down(),
        true,
        Some(("mounting", "serving", "mounted backup", NOW - 200 * S)),
    ));
    check(
        &d,
        r#"web: FAILED OVER: serving the backup (/mnt/nfs, epoch 1)
  phase: serving since 2026-11-29 04:26:40 UTC (3m 20s ago)
  last change: mounting -> serving: mounted backup
  primary  10.0.0.2:/srv/nfs        DOWN for 1m 5s, checked 1s ago: Rpc check of 10.0.0.2:2049 failed: no answer within 800ms
  backup   10.0.0.3:/srv/nfs        UP for 1h 0m, checked 1s ago
  pending: reverse sync backup -> primary before failback
verdict: CRITICAL: failed over: serving the backup; primary is down; a reverse sync backup -> primary is pending (exit 2)
"#,
        Level::Down,
    );
}

#[test]
fn reverse_sync_retries_are_counted() {
    let mut w = web(
        "backup",
        json!({"phase": "resyncing", "attempt": 3}),
        server("primary", "10.0.0.2", "up", 0, Some(DOWN_ERR), NOW - 120 * S),
        true,
        Some(("serving", "reverse-syncing", "health: primary up, backup up", NOW - 50 * S)),
    );
    w["reverse_sync_failures"] = json!(2);
    check(
        &docs(w),
        r#"web: FAILED OVER: serving the backup (/mnt/nfs, epoch 1)
  phase: reverse-syncing attempt 3 since 2026-11-29 04:29:10 UTC (50s ago)
  last change: serving -> reverse-syncing: health: primary up, backup up
  primary  10.0.0.2:/srv/nfs        UP for 2m, checked 1s ago
  backup   10.0.0.3:/srv/nfs        UP for 1h 0m, checked 1s ago
  pending: reverse sync backup -> primary (2 failed so far)
verdict: CRITICAL: failed over: serving the backup; a reverse sync backup -> primary is pending (exit 2)
"#,
        Level::Down,
    );
}

#[test]
fn staging_and_catching_up_are_shown_while_the_failback_runs() {
    let staging = web(
        "backup",
        json!({"phase": "staging", "to": "primary"}),
        primary_up(),
        true,
        Some(("reverse-syncing", "staging", "reverse sync done (412 files)", NOW - 2 * S)),
    );
    check(
        &docs(staging),
        r#"web: FAILED OVER: serving the backup (/mnt/nfs, epoch 1)
  phase: staging to primary since 2026-11-29 04:29:58 UTC (2s ago)
  last change: reverse-syncing -> staging: reverse sync done (412 files)
  primary  10.0.0.2:/srv/nfs        UP for 2h 0m, checked 1s ago
  backup   10.0.0.3:/srv/nfs        UP for 1h 0m, checked 1s ago
  pending: reverse sync backup -> primary before failback
verdict: CRITICAL: failed over: serving the backup; a reverse sync backup -> primary is pending (exit 2)
"#,
        Level::Down,
    );
    let catching_up = web(
        "primary",
        json!({"phase": "catching-up"}),
        primary_up(),
        false,
        Some(("staging", "catching-up", "switched to primary", NOW - S)),
    );
    check(
        &docs(catching_up),
        r#"web: serving the primary (/mnt/nfs, epoch 1)
  phase: catching-up since 2026-11-29 04:29:59 UTC (1s ago)
  last change: staging -> catching-up: switched to primary
  primary  10.0.0.2:/srv/nfs        UP for 2h 0m, checked 1s ago
  backup   10.0.0.3:/srv/nfs        UP for 1h 0m, checked 1s ago
verdict: OK (exit 0)
"#,
        Level::Healthy,
    );
}

#[test]
fn both_down_nothing_mounted_hold_and_a_stale_status() {
    let mut w = web(
        "none",
        json!({"phase": "unmounted"}),
        primary_down(),
        true,
        Some(("mounting", "unmounted", "mount of backup failed: mount.nfs: Connection refused", NOW - 30 * S)),
    );
    w["servers"][1] =
        server("backup", "10.0.0.3", "down", 4, Some("Tcp check of 10.0.0.3:2049 failed: refused"), NOW - 40 * S);
    w["hold"] = json!({"pinned": "backup"});
    w["written_ms"] = json!(NOW - 300 * S);
    check(
        &docs(w),
        r#"web: NOTHING MOUNTED (/mnt/nfs, epoch 1)
  phase: unmounted since 2026-11-29 04:29:30 UTC (30s ago)
  last change: mounting -> unmounted: mount of backup failed: mount.nfs: Connection refused
  primary  10.0.0.2:/srv/nfs        DOWN for 1m 5s, checked 1s ago: Rpc check of 10.0.0.2:2049 failed: no answer within 800ms
  backup   10.0.0.3:/srv/nfs        DOWN for 40s, checked 1s ago: Tcp check of 10.0.0.3:2049 failed: refused
  pending: reverse sync backup -> primary before failback; operator hold ({"pinned":"backup"}): release with `nfs-guard web --release`
verdict: CRITICAL: nothing mounted (unmounted); primary is down; backup is down; a reverse sync backup -> primary is pending; operator hold: no automatic failover or failback; web status not updated for 5m (is nfs-guard web running?) (exit 2)
"#,
        Level::Down,
    );
}

fn storage(state: &str, queue: u64, behind: Option<u64>, error: Option<&str>) -> Value {
    json!({
        "pid": 4242, "trees": ["/srv/nfs"], "watches": 1234, "overflows": 0,
        "remotes": [{
            "name": "backup", "url": "rsync://nfsguard@10.0.0.3/data", "state": state, "queue": queue,
            "full_sync_pending": [], "last_success": "2026-11-29T04:20:00Z", "last_error": error,
            "batches": 10, "files": 99, "bytes": 123_456, "retries": 3, "behind_since_ms": behind,
        }]
    })
}

#[test]
fn storage_lag_failing_pushes_and_waiting_alerts_are_degraded() {
    let d = Docs {
        state_dir: PathBuf::from("/var/lib/nfs-guard"),
        web: Doc::Missing,
        farm: Doc::Missing,
        storage: Doc::Read(storage(
            "retrying",
            5321,
            Some(NOW - 754 * S),
            Some("2026-11-29T04:29:58Z: exit 10 (error in socket I/O): connection refused"),
        )),
        storage_running: Some(true),
        alerts_waiting: Some(2),
    };
    check(
        &d,
        r#"storage: 1 tree(s), 1234 directories watched
  backup   rsync://nfsguard@10.0.0.3/data retrying, queue 5321, lag 12m 34s: 2026-11-29T04:29:58Z: exit 10 (error in socket I/O): connection refused
alerts: 2 waiting in the outbox (nfs-guard alert-test shows why mail fails)
verdict: WARNING: replication to backup is 12m 34s behind; 2 alert(s) waiting in the outbox (exit 1)
"#,
        Level::Degraded,
    );
    let caught_up = Docs { storage: Doc::Read(storage("idle", 0, None, None)), alerts_waiting: Some(0), ..d.clone() };
    check(
        &caught_up,
        r#"storage: 1 tree(s), 1234 directories watched
  backup   rsync://nfsguard@10.0.0.3/data idle, queue 0, lag 0s
verdict: OK (exit 0)
"#,
        Level::Healthy,
    );
    let stopped = Docs { storage_running: Some(false), ..caught_up };
    check(
        &stopped,
        r#"storage: NOT RUNNING 1 tree(s), 1234 directories watched
  backup   rsync://nfsguard@10.0.0.3/data idle, queue 0, lag 0s
verdict: CRITICAL: nfs-guard storage is not running (exit 2)
"#,
        Level::Down,
    );
}

#[test]
fn nothing_running_is_down() {
    let d = Docs {
        state_dir: PathBuf::from("/var/lib/nfs-guard"),
        web: Doc::Missing,
        farm: Doc::Missing,
        storage: Doc::Missing,
        storage_running: None,
        alerts_waiting: None,
    };
    check(
        &d,
        r#"verdict: CRITICAL: no status under /var/lib/nfs-guard: is nfs-guard web or storage running? (exit 2)
"#,
        Level::Down,
    );
}

#[test]
fn the_json_document_is_versioned_and_carries_the_verdict() {
    let d = docs(web(
        "backup",
        json!({"phase": "serving", "server": "backup"}),
        primary_down(),
        true,
        Some(("mounting", "serving", "mounted backup", NOW - 200 * S)),
    ));
    let v: Value = serde_json::from_str(&render_json(&d, NOW)).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["level"], "down");
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["now_ms"], NOW);
    assert_eq!(v["web"]["active"], "backup");
    assert_eq!(v["storage"], Value::Null);
    assert_eq!(v["farm"], Value::Null);
    assert_eq!(v["alerts_waiting"], 0);
    assert_eq!(v["reasons"][0], "failed over: serving the backup");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "alerts_waiting",
            "exit_code",
            "farm",
            "level",
            "now_ms",
            "reasons",
            "schema",
            "storage",
            "storage_running",
            "web"
        ]
    );
}

#[test]
fn colour_only_when_asked() {
    let d = docs(web("backup", json!({"phase": "serving", "server": "backup"}), primary_down(), true, None));
    assert!(!render_human(&d, NOW, false).contains('\x1b'));
    assert!(render_human(&d, NOW, true).contains("\x1b[1;31mFAILED OVER: serving the backup\x1b[0m"));
}
