//! `nfs-guard storage --once` and signals: SIGTERM or SIGINT stops a full sync under way, and the
//! rsync it started goes with the ssh (here: the child) rsync started. A fake rsync stands in (a
//! shell that starts a child and waits), so no daemon or root is needed.
#![allow(clippy::unwrap_used)]

mod storage_common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use storage_common::{wait_for, BIN};

/// Is `pid` gone (no such process, or a zombie)?
fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
}

fn once_stops_on(signal: Signal) {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let pids = d.path().join("pids");
    let fake = d.path().join("rsync");
    fs::write(
        &fake,
        format!("#!/bin/sh\nsleep 300 &\necho $$ $! > '{0}.tmp'\nmv '{0}.tmp' '{0}'\nwait\n", pids.display()),
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = d.path().join("nfs-guard.toml");
    fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[storage]\nrsync = \"{}\"\n[[storage.trees]]\npath = \"{}\"\n\
             [[storage.remotes]]\nhost = \"127.0.0.1\"\nmodule = \"data\"\n",
            d.path().join("state").display(),
            fake.display(),
            tree.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["storage", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the fake rsync and its child", Duration::from_secs(20), || pids.exists());
    let both: Vec<i32> = fs::read_to_string(&pids).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), signal).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("storage --once still running 10 s after {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(1), "a stopped full sync is a failure\n{stderr}");
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    wait_for("rsync and its child gone", Duration::from_secs(5), || both.iter().all(|p| gone(*p)));
}

#[test]
fn storage_once_stops_on_sigterm() {
    once_stops_on(Signal::SIGTERM);
}

#[test]
fn storage_once_stops_on_sigint() {
    once_stops_on(Signal::SIGINT);
}

#[test]
fn gone_sees_this_process_alive() {
    assert!(!gone(i32::try_from(std::process::id()).unwrap()));
    assert!(Path::new("/proc/self/stat").exists());
}
