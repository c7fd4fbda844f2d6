//! Lab test of `nfs-guard storage`: the real binary runs inside the lab's `primary` host and pushes
//! /srv/nfs to `backup`'s rsync daemon over the lab network. One lab, several phases (to keep the suite
//! fast): the file scenarios of the storage issue, the backup blackholed then healed, and `kill -9` in
//! the middle of a burst then a restart. Every phase ends with the backup's tree equal to the primary's,
//! byte for byte (checksums) with modes, owners, mtimes, symlinks and hard links. Also: two remotes
//! (a dead one never delays the other), and the ssh transport with a pinned host key.
#![allow(clippy::unwrap_used)]

#[path = "common/lab.rs"]
mod lab;
mod storage_common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use lab::{Fault, Host, Lab};
use storage_common::*;

fn config(lab: &Lab, path: &Path, state: &Path, full_sync_at_start: bool) {
    write_config(
        path,
        state,
        Path::new(Lab::EXPORT),
        &lab.ip(Host::Backup),
        873,
        &format!("alert_after = \"1s\"\n[storage.full_sync]\nat_start = {full_sync_at_start}"),
        &lab.rsync_auth_toml(),
    );
}

#[test]
fn lab_replicates_through_faults_and_kill9() {
    let lab = Lab::up("stor1");
    let src = lab.data_dir(Host::Primary);
    let dst = lab.data_dir(Host::Backup);
    let work = tempfile::Builder::new().prefix("nfsguard-storage-lab").tempdir_in("/var/tmp").unwrap();
    let outside = src.parent().unwrap().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let state = work.path().join("state");
    let cfg = work.path().join("n.toml");
    config(&lab, &cfg, &state, true);
    fs::write(src.join("before-start"), "x").unwrap();

    // Phase 1: the scenarios.
    let mut node = Node::spawn(lab.command(Host::Primary, BIN), &cfg, &work.path().join("node1.log"));
    wait_idle(&state, &node, Duration::from_secs(30));
    all_scenarios(&src, &outside, 3000);
    wait_same(&src, &dst, Duration::from_secs(40), Some(&node));
    deletes_second_half(&src);
    hostile_second_half(&src);
    wait_same(&src, &dst, Duration::from_secs(20), Some(&node));
    assert!(!dst.join("del/tree").exists());

    // Phase 2: the backup drops every packet; changes queue; after healing they all arrive.
    lab.fault(Host::Backup, Fault::Blackhole);
    burst(&src, "during-blackhole", 5, 500);
    fs::remove_file(src.join("before-start")).unwrap();
    wait_for("a failed push against the blackholed backup", Duration::from_secs(30), || {
        status_json(&state).is_some_and(|s| s["remotes"][0]["retries"].as_u64().unwrap_or(0) >= 1)
    });
    wait_for("the remote-unreachable alert", Duration::from_secs(30), || {
        node.log_text().contains("remote backup unreachable")
    });
    lab.heal(Host::Backup);
    wait_same(&src, &dst, Duration::from_secs(40), Some(&node));
    wait_for("the remote-recovered alert", Duration::from_secs(10), || {
        node.log_text().contains("remote backup recovered")
    });

    // Phase 3: kill -9 in the middle of a burst, then restart. First the journal alone: the backup is
    // blackholed during the burst (nothing can be pushed), and before the restart the run marker is
    // removed, so no unclean-stop full sync runs (start-up full sync OFF in the config): whatever of
    // the burst reaches the backup, the replayed journal pushed.
    lab.fault(Host::Backup, Fault::Blackhole);
    let writer = {
        let src = src.clone();
        std::thread::spawn(move || burst(&src, "kill9", 30, 3000))
    };
    let scratch = work.path();
    wait_for("journaled paths of the burst", Duration::from_secs(20), || {
        journaled_paths(&state, "backup", scratch).iter().any(|p| p.starts_with("kill9"))
    });
    node.kill9();
    writer.join().unwrap();
    let journaled: Vec<_> =
        journaled_paths(&state, "backup", scratch).into_iter().filter(|p| p.starts_with("kill9")).collect();
    assert!(!journaled.is_empty());
    wait_for("the killed node's rsyncs to time out", Duration::from_secs(30), || {
        !pushes_running(&lab.ip(Host::Backup))
    });
    assert!(!dst.join("kill9").exists(), "nothing of the burst can have reached the blackholed backup");
    fs::remove_file(state.join("storage/running")).unwrap();
    lab.heal(Host::Backup);
    config(&lab, &cfg, &state, false);
    let mut node2 = Node::spawn(lab.command(Host::Primary, BIN), &cfg, &work.path().join("node2.log"));
    wait_for("every journaled path on the backup, by replay alone", Duration::from_secs(40), || {
        journaled.iter().all(|p| dst.join(p).exists() || !src.join(p).exists())
    });
    for p in journaled.iter().filter(|p| src.join(p).is_file()) {
        assert_eq!(fs::read(src.join(p)).unwrap(), fs::read(dst.join(p)).unwrap(), "{}", p.display());
    }
    let log = node2.log_text();
    assert!(log.contains("journal replayed") && !log.contains("full sync started"), "{log}");
    // Then the unclean stop itself: killed again, the next start sees the marker and forces a full
    // sync, which brings over what no journal held (files written after the kill).
    node2.kill9();
    let node3 = Node::spawn(lab.command(Host::Primary, BIN), &cfg, &work.path().join("node3.log"));
    wait_same_after_kill(&src, &dst, Duration::from_secs(40), Some(&node3));
    assert!(node3.log_text().contains("did not stop cleanly"), "{}", node3.log_text());
    let mut node3 = node3;
    let status = node3.stop(Duration::from_secs(20));
    assert!(status.success(), "{}", node3.log_text());
    let _ = fs::remove_dir_all(&outside);
}

/// Two remotes: `backup` (over the lab network) and a second rsync daemon inside `primary` itself.
/// With `backup` blackholed, the other remote keeps receiving in real time; `backup`'s queue outgrows
/// `max_pending` and collapses into a full sync (journal-growing alert); after healing, both equal the
/// source.
#[test]
fn lab_dead_remote_never_delays_the_other() {
    let lab = Lab::up("stor2");
    let src = lab.data_dir(Host::Primary);
    let dst = lab.data_dir(Host::Backup);
    let work = tempfile::Builder::new().prefix("nfsguard-storage-lab2").tempdir_in("/var/tmp").unwrap();
    let local = work.path().join("local-remote");
    fs::create_dir_all(&local).unwrap();
    let rsyncd_conf = work.path().join("rsyncd.conf");
    fs::write(&rsyncd_conf, daemon_conf(&local)).unwrap();
    let mut local_daemon = lab
        .command(Host::Primary, "rsync")
        .args(["--daemon", "--no-detach", "--address=127.0.0.1", "--port=8873"])
        .arg(format!("--config={}", rsyncd_conf.display()))
        .spawn()
        .unwrap();
    let _reap = Reap(&mut local_daemon);
    wait_for("the local rsync daemon inside primary", Duration::from_secs(10), || {
        lab.exec(Host::Primary, &["rsync", "rsync://127.0.0.1:8873/"]).status.success()
    });
    let state = work.path().join("state");
    let cfg = work.path().join("n.toml");
    fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[storage]\nwindow = \"20ms\"\nmax_pending = 100\nretry_min = \"200ms\"\nretry_max = \"1s\"\n\
             [[storage.trees]]\npath = \"{}\"\n\
             [[storage.remotes]]\nname = \"backup\"\nhost = \"{}\"\nmodule = \"data\"\nuser = \"{}\"\npassword_file = \"{}\"\n\
             connect_timeout = \"1s\"\nio_timeout = \"2s\"\n\
             [[storage.remotes]]\nname = \"local\"\nhost = \"127.0.0.1\"\nport = 8873\nmodule = \"data\"\n",
            state.display(),
            Lab::EXPORT,
            lab.ip(Host::Backup),
            Lab::RSYNC_USER,
            lab.rsync_password_file().display()
        ),
    )
    .unwrap();
    let node = Node::spawn(lab.command(Host::Primary, BIN), &cfg, &work.path().join("node.log"));
    wait_for("both remotes idle after the start-up full sync", Duration::from_secs(30), || {
        status_json(&state).is_some_and(|s| {
            (0..2).all(|i| s["remotes"][i]["state"] == "idle" && s["remotes"][i]["last_success"].is_string())
        })
    });
    lab.fault(Host::Backup, Fault::Blackhole);
    // One file at a time: each must reach the healthy remote quickly although `backup` hangs.
    for i in 0..5 {
        let name = format!("rt{i}");
        fs::write(src.join(&name), &name).unwrap();
        let t = std::time::Instant::now();
        wait_for("the healthy remote to get the file", Duration::from_secs(3), || local.join(&name).exists());
        assert!(t.elapsed() < Duration::from_secs(2), "healthy remote delayed {:?}", t.elapsed());
    }
    // Overgrow backup's queue (max_pending = 100).
    burst(&src, "many", 4, 400);
    wait_for("the queue to collapse into a full sync", Duration::from_secs(30), || {
        node.log_text().contains("queue collapsed into a full sync")
    });
    assert!(node.log_text().contains("is far behind"), "journal-growing alert\n{}", node.log_text());
    wait_same(&src, &local, Duration::from_secs(30), Some(&node));
    lab.heal(Host::Backup);
    wait_same(&src, &dst, Duration::from_secs(60), Some(&node));
    let mut node = node;
    assert!(node.stop(Duration::from_secs(20)).success(), "{}", node.log_text());
}

/// The ssh transport: the replicator pushes to `backup` over ssh (root, the lab key), checking the
/// backup's host key against a `known_hosts` file of its own. A wrong key fails the pushes (batch
/// mode: never a prompt, never a hang); with the right one, the scenarios replicate exactly.
#[test]
fn lab_pushes_over_ssh_with_a_pinned_host_key() {
    let lab = Lab::up("stor3");
    let src = lab.data_dir(Host::Primary);
    let dst = lab.data_dir(Host::Backup);
    let work = tempfile::Builder::new().prefix("nfsguard-storage-lab3").tempdir_in("/var/tmp").unwrap();
    let outside = src.parent().unwrap().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let host_key = |h: Host| fs::read_to_string(lab.run_dir(h).join("ssh_host_ed25519_key.pub")).unwrap();
    let known = work.path().join("known_hosts");
    let backup_ip = lab.ip(Host::Backup);
    // The primary's key where the backup's belongs: a host key mismatch.
    fs::write(&known, format!("{backup_ip} {}", host_key(Host::Primary))).unwrap();
    let state = work.path().join("state");
    let cfg = work.path().join("n.toml");
    write_config(
        &cfg,
        &state,
        Path::new(Lab::EXPORT),
        &backup_ip,
        22,
        "",
        &format!(
            "transport = \"ssh\"\npath = \"{}\"\nuser = \"root\"\nssh_identity = \"{}\"\nssh_known_hosts = \"{}\"",
            Lab::EXPORT,
            lab.ssh_key().display(),
            known.display()
        ),
    );
    fs::write(src.join("before-start"), "x").unwrap();
    let mut node = Node::spawn(lab.command(Host::Primary, BIN), &cfg, &work.path().join("node.log"));
    wait_for("a failed push: the host key does not match", Duration::from_secs(30), || {
        status_json(&state).is_some_and(|s| {
            s["remotes"][0]["retries"].as_u64().unwrap_or(0) >= 1
                && s["remotes"][0]["last_error"].as_str().is_some_and(|e| e.contains("ssh"))
        })
    });
    assert!(!dst.join("before-start").exists(), "pushed to a host whose key did not match");
    // The right key: the retries succeed and everything replicates over ssh.
    fs::write(&known, format!("{backup_ip} {}", host_key(Host::Backup))).unwrap();
    wait_idle(&state, &node, Duration::from_secs(30));
    all_scenarios(&src, &outside, 500);
    wait_same(&src, &dst, Duration::from_secs(40), Some(&node));
    assert!(node.log_text().contains("roots=true"), "a new subtree went as arguments over ssh too");
    assert!(node.stop(Duration::from_secs(20)).success(), "{}", node.log_text());
    let _ = fs::remove_dir_all(&outside);
}

/// Is an rsync to `ip` still running (a push of a killed node, until its timeout)?
fn pushes_running(ip: &str) -> bool {
    let needle = format!("@{ip}");
    fs::read_dir("/proc").unwrap().filter_map(Result::ok).any(|p| {
        fs::read(p.path().join("cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c);
            let argv0 = c.split('\0').next().unwrap_or_default();
            Path::new(argv0).file_name().is_some_and(|n| n == "rsync") && c.contains(&needle) && !c.contains("--daemon")
        })
    })
}

struct Reap<'a>(&'a mut std::process::Child);

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
