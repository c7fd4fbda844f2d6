//! `nfs-guard web --failover-to/--hold/--release` record the request durably for the running daemon
//! and say what will happen; `status` shows the web status without talking to the daemon.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    config_with(dir, "10.0.0.2", "10.0.0.3")
}

fn config_with(dir: &std::path::Path, primary: &str, backup: &str) -> std::path::PathBuf {
    let p = dir.join("web.toml");
    std::fs::write(
        &p,
        format!(
            "state_dir = \"{}\"\n[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"{primary}\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"{backup}\"\nexport = \"/srv/nfs\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

fn run(cfg: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(BIN).arg("--config").arg(cfg).args(args).env_remove("RUST_LOG").output().unwrap();
    (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn manual_requests_are_recorded_and_explained() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (code, out) = run(&cfg, &["web", "--failover-to", "backup"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Recorded: switch /mnt/nfs to backup 10.0.0.3:/srv/nfs and hold there"), "{out}");
    assert!(out.contains("nfs-guard web --release"), "{out}");
    let req = std::fs::read_to_string(d.path().join("state/web.request.json")).unwrap();
    assert!(req.contains("\"failover-to\": \"backup\""), "{req}");

    let (_, out) = run(&cfg, &["web", "--failover-to", "primary"]);
    assert!(out.contains("WITHOUT copying the backup's changes back"), "no reverse sync configured: {out}");
    let (_, out) = run(&cfg, &["web", "--hold"]);
    assert!(out.contains("Recorded: hold /mnt/nfs on its current server"), "{out}");
    let (_, out) = run(&cfg, &["web", "--release"]);
    assert!(out.contains("Recorded: release the hold"), "{out}");
    let req = std::fs::read_to_string(d.path().join("state/web.request.json")).unwrap();
    assert!(req.contains("\"release\""), "the last request wins: {req}");
}

/// Kills (SIGTERM) and reaps the daemon this test started, even when an assertion fails.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// A running daemon holds `<state_dir>/web.lock`: a `--once` run beside it (a timer, an operator)
/// refuses to start, naming the lock file and the daemon's pid, instead of deciding on the same state
/// (it could clear a pending reverse sync and remount the primary). A request only writes the request
/// file and works while the daemon runs.
#[test]
fn one_web_instance_per_state_dir() {
    let d = tempfile::tempdir().unwrap();
    // TEST-NET addresses: never answer, so the daemon never mounts anything
    let cfg = config_with(d.path(), "192.0.2.2", "192.0.2.3");
    let daemon = Daemon(
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("web")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lock = d.path().join("state/web.lock");
    let pid = daemon.0.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim() != pid) {
        assert!(std::time::Instant::now() < deadline, "the daemon never recorded its pid in {}", lock.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, out) = run(&cfg, &["web", "--once"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("{} is locked by another running instance (pid {pid})", lock.display())), "{out}");
    // a request alone needs no lock; with --once it is still recorded for the daemon
    let (code, out) = run(&cfg, &["web", "--hold"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&cfg, &["web", "--release", "--once"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("by the running `nfs-guard web`") && out.contains(&format!("(pid {pid})")), "{out}");
    let req = std::fs::read_to_string(d.path().join("state/web.request.json")).unwrap();
    assert!(req.contains("\"release\""), "{req}");
}

/// `nfs-guard status` never hangs or eats memory on a planted status file (a FIFO, /dev/zero): it says
/// which file is unreadable and why.
#[test]
fn status_survives_a_fifo_or_device_status_file() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    std::fs::create_dir_all(d.path().join("state")).unwrap();
    let web = d.path().join("state/web.status.json");
    nix::unistd::mkfifo(&web, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.path().join("state/storage.status.json")).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`nfs-guard status` hangs on a FIFO status file");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "degraded: {out}");
    assert!(
        out.contains(&format!("web: status unreadable: {}: is a FIFO, not a regular file", web.display())),
        "{out}"
    );
    assert!(out.contains("storage: status unreadable: ") && out.contains("is a device"), "{out}");
}
