//! Lab tests of the storage agents and epochs: failback replays what changed during a failover,
//! deletes and renames included; a stale primary never pushes; role changes need the secret.
#![allow(clippy::unwrap_used)]

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/lab.rs"]
mod lab;
mod storage_common;
#[path = "common/web_node.rs"]
mod web_node;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cluster::{on_web, Cluster};
use lab::{wait_until, Fault, Host, Lab, WebKind};
use storage_common::differences;

/// The tree both servers hold before the failover.
fn seed(root: &Path) {
    for (name, text) in [
        ("overwrite.txt", "v0"),
        ("append.log", "line1\n"),
        ("chmod.sh", "echo hi"),
        ("delete-me", "gone soon"),
        ("old-name", "renamed file"),
        ("#hash name", "odd"),
        ("olddir/inner", "in a renamed dir"),
        ("rmtree/a", "a"),
        ("rmtree/sub/b", "b"),
    ] {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fs::create_dir_all(root.join("empty-dir")).unwrap();
}

/// Every kind of change, through the web node's mount of the backup.
fn change_everything(lab: &Lab) {
    let m = Lab::WEB_MOUNT;
    on_web(
        lab,
        &format!(
            "set -e; cd {m}; printf new > created.txt; printf v1 > overwrite.txt; printf 'line2\\n' >> append.log; \
             chmod 755 chmod.sh; rm delete-me; mv old-name new-name; mv olddir newdir; rm -r rmtree; \
             rmdir empty-dir; mkdir -p made/deep; printf x > made/deep/file; mv '#hash name' '#hash renamed'; sync"
        ),
    );
}

fn assert_replayed(root: &Path, what: &str) {
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{what}: {p}: {e}"));
    assert_eq!(read("created.txt"), "new", "{what}");
    assert_eq!(read("overwrite.txt"), "v1", "{what}");
    assert_eq!(read("append.log"), "line1\nline2\n", "{what}");
    assert_eq!(read("new-name"), "renamed file", "{what}");
    assert_eq!(read("newdir/inner"), "in a renamed dir", "{what}");
    assert_eq!(read("made/deep/file"), "x", "{what}");
    assert_eq!(read("#hash renamed"), "odd", "{what}");
    assert_eq!(fs::metadata(root.join("chmod.sh")).unwrap().permissions().mode() & 0o777, 0o755, "{what}");
    for gone in ["delete-me", "old-name", "olddir", "rmtree", "empty-dir", "#hash name"] {
        assert!(!root.join(gone).exists(), "{what}: {gone} came back");
    }
}

fn work_dir(lab: &Lab) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("agents")
        .disable_cleanup(std::env::var_os("AGENTS_KEEP").is_some())
        .tempdir_in(lab.state_dir())
        .unwrap()
}

/// The issue's first acceptance test: every kind of change made through the backup mount during a
/// failover is on the primary after failback, byte for byte; nothing deleted comes back, nothing
/// renamed exists twice; primary == backup. The primary's NFS service dies (its agent and rsync
/// daemon stay up: it must stand down, not push its old tree over the backup's).
#[test]
fn failback_replays_deletes_and_renames_made_during_the_failover() {
    let lab = Lab::up("agt");
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    seed(&p);
    let work = work_dir(&lab);
    let mut c = Cluster::running(&lab, work.path(), "", "");

    lab.fault(Host::Primary, Fault::StopNfs);
    wait_until("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    assert_eq!(Cluster::epoch(&lab, Host::Backup), Some(1), "the backup was promoted before the mount\n{}", c.logs());
    change_everything(&lab);
    assert_replayed(&b, "the backup");
    // the primary stood down (told by the decider, or by its own fence): it never pushed its tree back
    wait_until("the primary's agent to stand down", Duration::from_secs(10), || {
        Cluster::epoch(&lab, Host::Primary) == Some(1)
    });
    assert!(b.join("delete-me").exists().eq(&false), "the demoted primary pushed over the backup\n{}", c.logs());

    lab.heal(Host::Primary);
    wait_until("the failback", Duration::from_secs(90), || c.web.serving_primary_settled());
    assert_replayed(&p, "the primary after failback");
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);
    assert_eq!(Cluster::epoch(&lab, Host::Primary), Some(2), "{}", c.logs());
    assert!(c.web.log_text().contains("drained"), "{}", c.logs());
    // and the primary replicates again
    fs::write(p.join("after-failback"), "ok").unwrap();
    wait_until("a new write to reach the backup", Duration::from_secs(20), || b.join("after-failback").exists());
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
    assert_eq!(differences(&p, &b), "");
    if std::env::var_os("AGENTS_LOGS").is_some() {
        eprintln!("{}", c.logs());
    }
}

fn storage_queue(c: &Cluster, h: Host) -> u64 {
    storage_common::status_json(&c.state(h)).and_then(|s| s["remotes"][0]["queue"].as_u64()).unwrap_or(0)
}

/// The primary dies with writes it never replicated; the backup changes one of the same paths
/// during the failover. After failback both versions of that path exist on both servers (the
/// primary's under its conflict name), one alert names it, and the other orphans are everywhere.
#[test]
fn orphaned_writes_of_a_dead_primary_come_back_and_conflicts_keep_both_versions() {
    let lab = Lab::up("agto");
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    fs::write(p.join("base"), "both").unwrap();
    let work = work_dir(&lab);
    let mut c = Cluster::running(&lab, work.path(), "", "");

    // The primary acknowledges writes it cannot replicate (the backup's rsync daemon is down) ...
    lab.fault(Host::Backup, Fault::StopRsyncd);
    for (name, text) in [("orphan-1", "primary only 1"), ("orphan-2", "primary only 2"), ("both.txt", "primary's")] {
        fs::write(p.join(name), text).unwrap();
    }
    wait_until("the writes to be journaled", Duration::from_secs(10), || storage_queue(&c, Host::Primary) >= 3);
    // ... and dies.
    lab.fault(Host::Primary, Fault::Kill);
    c.kill_agent(Host::Primary);
    lab.heal(Host::Backup);
    wait_until("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    on_web(&lab, &format!("printf \"backup's\" > {}/both.txt && sync", Lab::WEB_MOUNT));

    lab.heal(Host::Primary);
    c.start_agent(&lab, Host::Primary);
    wait_until("the failback", Duration::from_secs(90), || c.web.serving_primary_settled());
    let copy = "both.txt.nfs-guard-conflict-0-primary";
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !(b.join(copy).exists() && b.join("orphan-2").exists()) {
        assert!(std::time::Instant::now() < end, "the orphans never reached the backup\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    for root in [&p, &b] {
        let read = |n: &str| {
            fs::read_to_string(root.join(n)).unwrap_or_else(|e| panic!("{n} on {}: {e}\n{}", root.display(), c.logs()))
        };
        assert_eq!(read("both.txt"), "backup's", "{}", c.logs());
        assert_eq!(read(copy), "primary's", "{}", c.logs());
        assert_eq!(read("orphan-1"), "primary only 1");
        assert_eq!(read("orphan-2"), "primary only 2");
        assert!(!root.join("orphan-1.nfs-guard-conflict-0-primary").exists(), "no conflict, no copy");
    }
    let log = fs::read_to_string(c.log(Host::Primary)).unwrap();
    assert_eq!(storage_common::count_in_log(&log, "kind=\"conflict\""), 1, "{log}");
    assert!(log.contains(copy), "the alert names the copy: {log}");
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}

/// A primary that comes back with a stale epoch while no decider runs: it learns the newer epoch
/// from its peer, never pushes its old tree over the backup's, never becomes active by itself, and
/// receives the backup's changes. Role changes without the secret, or with a stale epoch, are
/// refused.
#[test]
fn a_stale_primary_stands_down_and_forged_role_changes_are_refused() {
    let lab = Lab::up("agts");
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    fs::write(p.join("victim"), "deleted during the failover").unwrap();
    let work = work_dir(&lab);
    let mut c = Cluster::running(&lab, work.path(), "", "");
    lab.fault(Host::Primary, Fault::Kill);
    c.kill_agent(Host::Primary);
    wait_until("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    on_web(&lab, &format!("rm {m}/victim && printf new > {m}/x && sync", m = Lab::WEB_MOUNT));
    // no decider from here on
    c.web.kill9();

    lab.heal(Host::Primary);
    c.start_agent(&lab, Host::Primary);
    wait_until("the primary to learn epoch 1", Duration::from_secs(20), || {
        Cluster::epoch(&lab, Host::Primary) == Some(1)
    });
    let r = Cluster::report(&lab, Host::Primary).unwrap();
    assert_eq!(r["record"]["active"], "backup", "{r}");
    wait_until("the backup's changes to reach the primary", Duration::from_secs(20), || {
        p.join("x").exists() && !p.join("victim").exists()
    });
    assert!(!b.join("victim").exists(), "the stale primary pushed its old tree\n{}", c.logs());
    assert_eq!(fs::read_to_string(b.join("x")).unwrap(), "new");

    let stale = r#"{"record":{"epoch":0,"active":"primary","since_ms":0}}"#;
    let newer = r#"{"record":{"epoch":9,"active":"primary","since_ms":0}}"#;
    let (code, body) = Cluster::call(&lab, Host::Primary, Host::Backup, "/v1/role", newer, None);
    assert_eq!(code, 401, "{body}");
    let (code, body) =
        Cluster::call(&lab, Host::Primary, Host::Backup, "/v1/role", newer, Some("wrong-secret-0123456789"));
    assert_eq!(code, 401, "{body}");
    let secret = fs::read_to_string(&c.secret).unwrap();
    let (code, body) = Cluster::call(&lab, Host::Primary, Host::Backup, "/v1/role", stale, Some(secret.trim()));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("refused"), "{body}");
    let (code, body) = Cluster::call(
        &lab,
        Host::Primary,
        Host::Backup,
        "/v1/drain",
        r#"{"epoch":0,"timeout_ms":100}"#,
        Some(secret.trim()),
    );
    assert_eq!(code, 409, "{body}");
    let r = Cluster::report(&lab, Host::Backup).unwrap();
    assert_eq!((r["record"]["epoch"].as_u64(), r["record"]["active"].as_str()), (Some(1), Some("backup")), "{r}");
    assert_eq!(Cluster::report(&lab, Host::Primary).unwrap()["record"]["active"], "backup", "never active by itself");
}

/// Serving beats waiting: the backup's agent is frozen at the failover; the web node switches
/// anyway, tells the agent again until it takes its role, and the agent then journals what clients
/// wrote since the switch, deletes and renames included.
#[test]
fn a_frozen_backup_agent_never_blocks_the_failover_and_its_changes_still_reach_the_primary() {
    let lab = Lab::up_with("agtf", WebKind::from_env_or(WebKind::Uml));
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    seed(&p);
    let work = work_dir(&lab);
    let mut c = Cluster::running(&lab, work.path(), "", "");

    let agent = c.agent_pid(Host::Backup);
    signal(agent, "STOP");
    lab.fault(Host::Primary, Fault::StopNfs);
    wait_until("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    change_everything(&lab);
    signal(agent, "CONT");
    wait_until("the backup's agent to take epoch 1", Duration::from_secs(20), || {
        Cluster::epoch(&lab, Host::Backup) == Some(1)
    });
    assert!(c.web.log_text().contains("did not take the new role"), "{}", c.logs());
    assert!(c.web.log_text().contains("kind=\"agent-unreachable\""), "mailed too: {}", c.logs());
    wait_until("the web node to tell the agent again", Duration::from_secs(10), || {
        c.web.log_text().contains("the agent took its role after the switch")
    });

    lab.heal(Host::Primary);
    wait_until("the failback", Duration::from_secs(90), || c.web.serving_primary_settled());
    assert_replayed(&p, "the primary after failback");
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid}");
}

/// `kill -9` at the steps of a failover and a failback: the backup's agent after it journaled the
/// failover's changes, the primary's agent after it stood down, the web node while the drain runs.
/// After each restart the sequence completes and every change is replayed exactly.
#[test]
fn kill_9_of_agents_and_web_node_at_each_step_loses_nothing() {
    let lab = Lab::up_with("agtk", WebKind::from_env_or(WebKind::Uml));
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    seed(&p);
    let work = work_dir(&lab);
    let mut c = Cluster::running(&lab, work.path(), "", "");

    // the primary dies whole (agent, rsync daemon, NFS): the backup's journal holds the changes
    lab.fault(Host::Primary, Fault::Kill);
    c.kill_agent(Host::Primary);
    wait_until("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    change_everything(&lab);
    wait_until("the changes to be journaled for the primary", Duration::from_secs(10), || {
        storage_queue(&c, Host::Backup) >= 10
    });
    // 1. the backup's agent, its journal full
    c.kill_agent(Host::Backup);
    c.start_agent(&lab, Host::Backup);
    assert_eq!(Cluster::epoch(&lab, Host::Backup), Some(1), "the role survives the restart\n{}", c.logs());

    // 2. the primary's agent right after it stood down (told by the backup's fence)
    lab.heal(Host::Primary);
    // the web node must not fail back yet: hold it
    c.web.kill9();
    c.start_agent(&lab, Host::Primary);
    wait_until("the primary's agent to stand down", Duration::from_secs(20), || {
        Cluster::epoch(&lab, Host::Primary) == Some(1)
    });
    c.kill_agent(Host::Primary);
    c.start_agent(&lab, Host::Primary);
    assert_eq!(Cluster::epoch(&lab, Host::Primary), Some(1), "{}", c.logs());

    // 3. the web node while the failback's drain runs (or right after it)
    c.web.start(&lab);
    wait_until("the failback's drain to start", Duration::from_secs(60), || {
        let l = c.web.log_text();
        l.matches("reverse sync backup -> primary").count() >= 1 || l.matches("staged switch").count() >= 2
    });
    c.web.kill9();
    c.web.start(&lab);
    wait_until("the failback", Duration::from_secs(90), || c.web.serving_primary_settled());
    assert_replayed(&p, "the primary after failback");
    assert_replayed(&b, "the backup after failback");
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);
    assert_eq!(Cluster::epoch(&lab, Host::Primary), Some(2), "{}", c.logs());
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}

/// A primary whose export goes read-only, or whose filesystem fills up, is DOWN for failover even
/// though its NFS service answers (the agent's health check); once it is writable again it fails
/// back through the drain, with what clients wrote meanwhile.
#[test]
fn a_read_only_or_full_export_is_failed_over_from_and_failed_back_to_through_the_drain() {
    let env = [("LAB_DATA_FS", "ext4"), ("LAB_DATA_SIZE", "128M")];
    let lab = Lab::up_env("agth", WebKind::from_env_or(WebKind::Uml), &env);
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    let work = work_dir(&lab);
    // the filler stays on the primary (replicated, it would fill the backup as well)
    let mut c = Cluster::running(&lab, work.path(), "exclude = [\"fill\"]", "min_free_mb = 16");

    let episodes: [(&str, &str, &str); 2] = [
        ("read-only", "mount -o remount,ro,bind /srv/nfs", "mount -o remount,rw,bind /srv/nfs"),
        (
            "full",
            "fallocate -l $(( $(df --output=avail -B1 /srv/nfs | tail -1) - 4*1024*1024 )) /srv/nfs/fill",
            "rm /srv/nfs/fill",
        ),
    ];
    for (i, (what, fault, repair)) in episodes.iter().enumerate() {
        let out = lab.exec(Host::Primary, &["sh", "-c", fault]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        c.wait(&format!("failover from a {what} primary"), Duration::from_secs(30), || c.web.active_is("backup"));
        assert!(c.web.log_text().contains("the agent reports the export unusable"), "{}", c.logs());
        let name = format!("written-while-{what}");
        on_web(&lab, &format!("printf {i} > {}/{name} && sync", Lab::WEB_MOUNT));
        let out = lab.exec(Host::Primary, &["sh", "-c", repair]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        c.wait(&format!("failback after the {what} episode"), Duration::from_secs(90), || {
            c.web.serving_primary_settled()
        });
        assert_eq!(fs::read_to_string(p.join(&name)).unwrap_or_default(), i.to_string(), "{}", c.logs());
    }
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);
    assert_eq!(Cluster::epoch(&lab, Host::Primary), Some(4), "{}", c.logs());
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}

/// Waits until `log` shows `line` (polled, bounded): the moment to kill something.
fn wait_for_line(c: &Cluster, what: &str, log: &std::path::Path, line: &str) {
    c.wait(what, Duration::from_secs(90), || fs::read_to_string(log).is_ok_and(|t| t.contains(line)));
}

/// More `kill -9` points, each right after a step's log line: the web node right after it made the
/// failover's epoch, the backup's agent while the failback's drain runs, the web node right after
/// the primary became active (before the swap), the primary's agent right after its promotion.
/// After each restart the sequence completes; every change is replayed exactly, on both servers.
#[test]
fn kill_9_right_after_each_protocol_step_loses_nothing() {
    let lab = Lab::up_with("agtk2", WebKind::from_env_or(WebKind::Uml));
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    seed(&p);
    let work = work_dir(&lab);
    let mut c = Cluster::running(&lab, work.path(), "", "");

    lab.fault(Host::Primary, Fault::Kill);
    c.kill_agent(Host::Primary);
    let web_log = c.web.log.clone();
    wait_for_line(&c, "the failover's epoch", &web_log, "cluster: new epoch");
    c.web.kill9();
    c.web.start(&lab);
    c.wait("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    change_everything(&lab);
    c.wait("the changes journaled", Duration::from_secs(10), || storage_queue(&c, Host::Backup) >= 10);

    lab.heal(Host::Primary);
    c.start_agent(&lab, Host::Primary);
    let backup_log = c.log(Host::Backup);
    // the backup pushes as soon as the primary's agent holds its epoch: kill it at its first push
    wait_for_line(&c, "the backup's first push to the primary", &backup_log, "batch pushed remote=primary");
    c.kill_agent(Host::Backup);
    c.start_agent(&lab, Host::Backup);
    wait_for_line(&c, "the primary active again", &web_log, "the primary is active");
    c.web.kill9();
    c.web.start(&lab);
    let primary_log = c.log(Host::Primary);
    wait_for_line(&c, "the primary's promotion", &primary_log, "promoted: this server is active");
    c.kill_agent(Host::Primary);
    c.start_agent(&lab, Host::Primary);
    c.wait("the failback", Duration::from_secs(120), || c.web.serving_primary_settled());
    assert_replayed(&p, "the primary after failback");
    c.wait("the backup equal to the primary", Duration::from_secs(30), || {
        storage_common::differences(&p, &b).is_empty()
    });
    assert_replayed(&b, "the backup after failback");
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}

/// `kill -9` of the ACTIVE agent while changes of its export are not journaled yet (stopped
/// first, so the kernel's inotify queue dies with it). After the restart its deletes and renames
/// reach the peer (pruned there) and its creates too; so do those made while it was stopped
/// cleanly (clients write through NFS meanwhile). Then a create left unjournaled by a kill
/// right before a failover: the old primary keeps it as an orphan; the backup's own unclean
/// restart during the failover does not prune it; after failback it is on both servers.
#[test]
fn an_unclean_stop_of_the_active_agent_loses_no_delete_rename_or_create() {
    let lab = Lab::up("agtu");
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    for n in ["del", "old", "dir/inner", "#odd\nname"] {
        fs::create_dir_all(p.join(n).parent().unwrap()).unwrap();
        fs::write(p.join(n), n).unwrap();
    }
    let work = work_dir(&lab);
    let mut c = Cluster::running(&lab, work.path(), "", "");
    // (the backup's copies arrived a moment ago: younger than any window, and still pruned)

    signal(c.agent_pid(Host::Primary), "STOP");
    fs::remove_file(p.join("del")).unwrap();
    fs::rename(p.join("old"), p.join("new")).unwrap();
    fs::remove_dir_all(p.join("dir")).unwrap();
    fs::remove_file(p.join("#odd\nname")).unwrap();
    fs::write(p.join("made"), "made while the agent was stopped").unwrap();
    c.kill_agent(Host::Primary);
    c.start_agent(&lab, Host::Primary);
    c.wait("the unjournaled changes to reach the backup", Duration::from_secs(30), || {
        b.join("new").exists()
            && b.join("made").exists()
            && !b.join("del").exists()
            && !b.join("old").exists()
            && !b.join("dir").exists()
            && !b.join("#odd\nname").exists()
    });
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);

    // A clean stop: clients go on writing through NFS while the agent is down.
    c.agents[0].as_mut().unwrap().stop(Duration::from_secs(20));
    fs::remove_file(p.join("made")).unwrap();
    fs::write(p.join("while-stopped"), "written while the agent was stopped").unwrap();
    c.start_agent(&lab, Host::Primary);
    c.wait("what changed while the agent was stopped to reach the backup", Duration::from_secs(30), || {
        !b.join("made").exists() && b.join("while-stopped").exists()
    });

    // A create the primary's agent never journals, then a failover.
    signal(c.agent_pid(Host::Primary), "STOP");
    fs::write(p.join("orphan"), "the primary's unjournaled create").unwrap();
    c.kill_agent(Host::Primary);
    lab.fault(Host::Primary, Fault::StopNfs);
    c.wait("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    c.start_agent(&lab, Host::Primary);
    c.wait("the primary to keep its unjournaled create as an orphan", Duration::from_secs(30), || {
        Cluster::report(&lab, Host::Primary)
            .is_some_and(|r| r["record"]["epoch"] == 1 && r["orphans"].as_u64() >= Some(1))
    });
    on_web(&lab, &format!("printf during > {}/during && sync", Lab::WEB_MOUNT));
    // The backup's agent stops uncleanly while active: its prune of the primary must spare the orphan.
    c.kill_agent(Host::Backup);
    c.start_agent(&lab, Host::Backup);
    let pruned = "pruned what the peer deleted";
    c.wait("the backup's prune", Duration::from_secs(30), || {
        fs::read_to_string(c.log(Host::Primary)).unwrap_or_default().contains(pruned)
    });
    assert_eq!(fs::read_to_string(p.join("orphan")).unwrap(), "the primary's unjournaled create", "{}", c.logs());

    lab.heal(Host::Primary);
    c.wait("the failback", Duration::from_secs(90), || c.web.serving_primary_settled());
    c.wait("the orphan to reach the backup", Duration::from_secs(30), || b.join("orphan").exists());
    assert_eq!(fs::read_to_string(b.join("orphan")).unwrap(), "the primary's unjournaled create");
    assert_eq!(fs::read_to_string(p.join("during")).unwrap(), "during");
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}
