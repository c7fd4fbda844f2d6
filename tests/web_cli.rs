//! `nfs-guard web --failover-to/--hold/--release` record the request durably for the running daemon
//! and say what will happen; `status` shows the web status without talking to the daemon.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("web.toml");
    std::fs::write(
        &p,
        format!(
            "state_dir = \"{}\"\n[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n",
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
