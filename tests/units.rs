//! The shipped systemd units are valid: `systemd-analyze verify` accepts each of them (with `ExecStart`
//! pointed at the freshly built binary), and each directive carries a why-comment.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn units_pass_systemd_analyze_verify() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(format!("{root}/units")).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_owned();
        std::fs::write(dir.path().join(&name), body.replace("/usr/bin/nfs-guard", env!("CARGO_BIN_EXE_nfs-guard")))
            .unwrap();
        names.push(dir.path().join(name));
    }
    assert_eq!(names.len(), 4, "expected the web, storage, web-check service and timer units");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .output()
        .expect("systemd-analyze is needed (package systemd; scripts/install-deps.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn services_are_notify_with_check_config_and_restart() {
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["nfs-guard-web.service", "nfs-guard-storage.service"] {
        let body = std::fs::read_to_string(format!("{root}/units/{unit}")).unwrap();
        for needle in
            ["Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecStartPre=/usr/bin/nfs-guard", "check-config"]
        {
            assert!(body.contains(needle), "{unit} lacks {needle}");
        }
    }
}
