//! Lab test of the failback guard (`failback_guard`): writes acknowledged through the backup mount
//! while reverse-sync pass 1 runs survive the failback on BOTH servers.
//!
//! The README's deployment: `nfs-guard storage` on the primary pushes to the backup's rsync daemon;
//! `nfs-guard web` fails over and reverse-syncs into the primary's rsync daemon. Without the guard,
//! pass 1 copies a file into the primary's export, the primary's replicator pushes that copy back to
//! the backup over the newer version a client wrote meanwhile, and the catch-up pass finds nothing
//! newer: the write is lost on both servers. Two wrapper scripts make the window deterministic: the
//! web node's rsync holds after pass 1 until the test releases it, and the primary's replicator's
//! rsync holds until the client's newer write is acknowledged.
#![allow(clippy::unwrap_used)]

#[path = "common/lab.rs"]
mod lab;
mod storage_common;
#[path = "common/web_node.rs"]
mod web_node;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use lab::{wait_until, Fault, Host, Lab};
use storage_common::{status_json, wait_idle, write_config, Node, BIN};
use web_node::WebNode;

/// An rsync wrapper: runs the real rsync; `before` / `after` are shell lines run around it.
fn wrapper(path: &Path, before: &str, after: &str) {
    let text = format!("#!/bin/sh\n{before}\n/usr/bin/rsync \"$@\"\nrc=$?\n{after}\nexit $rc\n");
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Polls `flag` until it is gone (bounded: a lost test must not leave rsync waiting forever).
fn hold_while(flag: &Path) -> String {
    format!("n=0; while [ -e '{}' ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done", flag.display())
}

/// Writes `content` to `name` through the web host's mount (acknowledged: the command's exit code).
fn write_through_mount(lab: &Lab, name: &str, content: &str) {
    let script = format!("printf '%s' '{content}' > '{}/{name}' && sync", Lab::WEB_MOUNT);
    let out = lab.exec_timeout(Host::Web, &["sh", "-c", &script], Duration::from_secs(20)).expect("write hung");
    assert!(out.status.success(), "write through the mount failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn writes_during_reverse_sync_pass_1_survive_the_failback() {
    let lab = Lab::up("echo");
    let src = lab.data_dir(Host::Primary);
    let dst = lab.data_dir(Host::Backup);
    let work = tempfile::Builder::new().prefix("nfsguard-echo").tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    let (hold_echo, hold_pass1, pass1_done) = (w.join("hold-echo"), w.join("hold-pass1"), w.join("pass1-done"));

    // The primary's replicator: its pushes wait while `hold-echo` exists.
    let storage_rsync = w.join("storage-rsync");
    wrapper(&storage_rsync, &hold_while(&hold_echo), "");
    let state = w.join("storage-state");
    let cfg = w.join("storage.toml");
    write_config(
        &cfg,
        &state,
        Path::new(Lab::EXPORT),
        &lab.ip(Host::Backup),
        873,
        &format!("rsync = \"{}\"\n[storage.full_sync]\nat_start = true", storage_rsync.display()),
        &lab.rsync_auth_toml(),
    );
    fs::write(src.join("page.html"), "v0").unwrap();
    let storage = Node::spawn(lab.command(Host::Primary, BIN), &cfg, &w.join("storage.log"));
    wait_idle(&state, &storage, Duration::from_secs(30));
    assert_eq!(read(&dst.join("page.html")), "v0");

    // The web node: its reverse-sync passes (`--update`) mark `pass1-done`, then wait on `hold-pass1`.
    let web_rsync = w.join("web-rsync");
    let after = format!(
        "case \" $* \" in *\" --update \"*) touch '{}'; {};; esac",
        pass1_done.display(),
        hold_while(&hold_pass1)
    );
    wrapper(&web_rsync, "", &after);
    let mut web = WebNode::new(&lab, w, &format!("rsync = \"{}\"", web_rsync.display()));
    web.start(&lab);
    wait_until("the web node serves the primary", Duration::from_secs(20), || web.active_is("primary"));

    // Failover (NFS only: the primary's replicator and rsync daemon stay up), then a write on the backup.
    lab.fault(Host::Primary, Fault::StopNfs);
    wait_until("the web node serves the backup", Duration::from_secs(20), || web.active_is("backup"));
    write_through_mount(&lab, "page.html", "v1");
    assert_eq!(read(&dst.join("page.html")), "v1");

    // Failback: pass 1 copies v1 into the primary and holds; the replicator's push waits.
    fs::write(&hold_echo, "").unwrap();
    fs::write(&hold_pass1, "").unwrap();
    lab.heal(Host::Primary);
    wait_until("reverse-sync pass 1 to finish copying", Duration::from_secs(60), || pass1_done.exists());
    assert_eq!(read(&src.join("page.html")), "v1", "pass 1 copied the backup's version");

    // The replicator has seen pass 1's copy: either its push is on its way (held), or the guard is up.
    wait_until("the replicator to react to pass 1", Duration::from_secs(20), || {
        storage.log_text().contains("failback guard on")
            || status_json(&state).is_some_and(|s| s["remotes"][0]["state"] != "idle" || s["remotes"][0]["queue"] != 0)
    });
    // A client overwrites the file through the backup mount (acknowledged), then the replicator runs.
    write_through_mount(&lab, "page.html", "v2");
    assert_eq!(read(&dst.join("page.html")), "v2");
    fs::remove_file(&hold_echo).unwrap();
    wait_until("the primary's replicator to be idle", Duration::from_secs(20), || {
        status_json(&state).is_some_and(|s| s["remotes"][0]["state"] == "idle" && s["remotes"][0]["queue"] == 0)
    });
    fs::remove_file(&hold_pass1).unwrap();
    wait_until("the web node to serve the primary again, nothing pending", Duration::from_secs(60), || {
        web.serving_primary_settled()
    });

    let (p, b) = (read(&src.join("page.html")), read(&dst.join("page.html")));
    web.kill9();
    assert!(
        p == "v2" && b == "v2",
        "the acknowledged write v2 was lost: primary has {p:?}, backup has {b:?}\nweb log:\n{}\nstorage log:\n{}",
        web.log_text(),
        storage.log_text()
    );
    assert!(!src.join(nfs_guard::failback_guard::MARKER).exists(), "the marker was lowered");
    assert!(!dst.join(nfs_guard::failback_guard::MARKER).exists(), "the marker never replicates");
    assert!(storage.log_text().contains("failback guard on"), "{}", storage.log_text());
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}

/// The final catch-up runs with writes to the backup frozen; when it fails, the backup mount is
/// writable again at once, the node keeps serving the backup, and the next attempt fails back with
/// everything written meanwhile.
#[test]
fn a_failed_final_catch_up_leaves_the_backup_mount_writable() {
    let lab = Lab::up("frz");
    let src = lab.data_dir(Host::Primary);
    let work = tempfile::Builder::new().prefix("nfsguard-freeze").tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    // The second `--update` pass (the final catch-up, writes frozen) fails once.
    let count = w.join("update-passes");
    let before = format!(
        "case \" $* \" in *\" --update \"*) n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'; \
         [ $n -eq 2 ] && {{ echo 'injected failure' >&2; exit 12; }};; esac",
        c = count.display()
    );
    let web_rsync = w.join("web-rsync");
    wrapper(&web_rsync, &before, "");
    let mut web = WebNode::new(&lab, w, &format!("rsync = \"{}\"", web_rsync.display()));
    web.start(&lab);
    let log = || web.log_text();
    wait_until("the web node serves the primary", Duration::from_secs(20), || web.active_is("primary"));
    lab.fault(Host::Primary, Fault::StopNfs);
    wait_until("the web node serves the backup", Duration::from_secs(20), || web.active_is("backup"));
    write_through_mount(&lab, "during-failover", "one");
    lab.heal(Host::Primary);
    wait_until("the final catch-up to fail", Duration::from_secs(60), || log().contains("injected failure"));
    // Writable again (the thaw), still on the backup.
    wait_until("a write through the backup mount to succeed", Duration::from_secs(10), || {
        let script = format!("printf two > '{}/after-failed-switch' && sync", Lab::WEB_MOUNT);
        lab.exec_timeout(Host::Web, &["sh", "-c", &script], Duration::from_secs(10)).is_some_and(|o| o.status.success())
    });
    assert!(log().contains("writes frozen for the final catch-up"), "{}", log());
    wait_until("the failback on the next attempt", Duration::from_secs(60), || web.serving_primary_settled());
    assert_eq!(read(&src.join("during-failover")), "one", "{}", log());
    assert_eq!(read(&src.join("after-failed-switch")), "two", "{}", log());
    web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}
