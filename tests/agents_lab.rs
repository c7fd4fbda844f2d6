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
use std::path::Path;
use std::time::Duration;

use cluster::{on_web, Cluster};
use lab::{wait_until, Fault, Host, Lab};
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
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(root.join("chmod.sh")).unwrap().permissions().mode() & 0o777, 0o755, "{what}");
    for gone in ["delete-me", "old-name", "olddir", "rmtree", "empty-dir", "#hash name"] {
        assert!(!root.join(gone).exists(), "{what}: {gone} came back");
    }
}

fn work_dir(lab: &Lab) -> tempfile::TempDir {
    tempfile::Builder::new().prefix("agents").tempdir_in(lab.state_dir()).unwrap()
}

/// The first acceptance test: every kind of change made through the backup mount during a
/// failover is on the primary after failback, byte for byte; nothing deleted comes back, nothing
/// renamed exists twice; primary == backup. The primary's NFS service dies (its agent and rsync
/// daemon stay up: it must stand down, not push its old tree over the backup's).
#[test]
fn failback_replays_deletes_and_renames_made_during_the_failover() {
    let lab = Lab::up("agt");
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    seed(&p);
    let work = work_dir(&lab);
    let mut c = Cluster::new(&lab, work.path(), "");
    c.start_agent(&lab, Host::Primary);
    c.start_agent(&lab, Host::Backup);
    storage_common::wait_same(&p, &b, Duration::from_secs(30), None);
    c.web.start(&lab);
    wait_until("the web node serves the primary", Duration::from_secs(30), || c.web.active_is("primary"));

    lab.fault(Host::Primary, Fault::StopNfs);
    wait_until("the web node serves the backup", Duration::from_secs(30), || c.web.active_is("backup"));
    assert_eq!(c.epoch(&lab, Host::Backup), Some(1), "the backup was promoted before the mount\n{}", c.logs());
    change_everything(&lab);
    assert_replayed(&b, "the backup");
    // the primary stood down (told by the decider, or by its own fence): it never pushed its tree back
    wait_until("the primary's agent to stand down", Duration::from_secs(10), || c.epoch(&lab, Host::Primary) == Some(1));
    assert!(b.join("delete-me").exists().eq(&false), "the demoted primary pushed over the backup\n{}", c.logs());

    lab.heal(Host::Primary);
    wait_until("the failback", Duration::from_secs(90), || c.web.serving_primary_settled());
    assert_replayed(&p, "the primary after failback");
    storage_common::wait_same(&p, &b, Duration::from_secs(20), None);
    assert_eq!(c.epoch(&lab, Host::Primary), Some(2), "{}", c.logs());
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
