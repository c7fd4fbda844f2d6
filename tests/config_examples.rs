//! Every example in `config/` passes `check-config` (so the examples cannot rot), and a file with
//! several problems gets all of them reported at once, each with `file:line:col`, key path and value.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

fn check(path: &std::path::Path) -> (Option<i32>, String) {
    let o = Command::new(BIN).args(["--config", path.to_str().unwrap(), "check-config"]).output().unwrap();
    (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out) = check(&path);
            assert_eq!(code, Some(0), "{} is not valid:\n{out}", path.display());
            assert!(out.contains("valid"), "{out}");
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    for required in ["alerts.toml", "storage-backup.toml", "storage-primary.toml", "web.toml", "web-farm.toml"] {
        assert!(seen.iter().any(|s| s == required), "config/{required} missing; have {seen:?}");
    }
}

/// The farm example (docs/farm.md) is a web node with its `[cluster]` section.
#[test]
fn the_farm_example_is_a_web_node_of_a_cluster() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/web-farm.toml");
    let (code, out) = check(&path);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("valid (sections: web, cluster)"), "{out}");
}

#[test]
fn several_problems_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nfs-guard.toml");
    std::fs::write(
        &path,
        r#"[web]
mount_point = "/mnt/nfs"
interval = "often"
fall = 0

[web.primary]
address = "10.0.0.300"
export = "/srv/nfs"

[web.backup]
address = "10.0.0.3"
export = "relative/path"
"#,
    )
    .unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, Some(78), "{out}");
    let f = path.display();
    for expected in [
        format!("{f}:3:12: web.interval: \"often\" is not a duration"),
        format!("{f}:4:8: web.fall: 0 must be between 1 and 100"),
        format!("{f}:7:11: web.primary.address: \"10.0.0.300\" is not an IP address or host name"),
        format!("{f}:12:10: web.backup.export: \"relative/path\" must be an absolute path"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.contains("4 problems"), "{out}");
}

#[test]
fn group_readable_secret_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("rsync.pass");
    std::fs::write(&secret, "s3cret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("nfs-guard.toml");
    std::fs::write(
        &path,
        format!(
            "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n\
             [web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n\
             [web.reverse_sync.target]\nhost = \"10.0.0.2\"\nmodule = \"data\"\npassword_file = \"{}\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("has mode 0644: readable by group or others"), "{out}");
}

/// Runs `check-config` on `path` with a deadline and a 1 GiB address-space limit, so a config
/// that is a FIFO (hang) or `/dev/zero` (unbounded read) fails this test instead of the machine.
fn check_bounded(path: &std::path::Path) -> (Option<i32>, String) {
    use std::time::{Duration, Instant};
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -v 1048576; exec \"$0\" --config \"$1\" check-config", BIN, path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("check-config on {} still running after 20s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn a_fifo_config_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("nfs-guard.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (code, out) = check_bounded(&fifo);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains(&format!("cannot read config file {}", fifo.display())), "{out}");
    assert!(out.contains("is a FIFO, not a regular file"), "{out}");
}

#[test]
fn a_config_linked_to_dev_zero_or_too_big_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let (code, out) = check_bounded(&zero);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains(&format!("cannot read config file {}", zero.display())), "{out}");
    assert!(out.contains("is a device, not a regular file"), "{out}");

    let big = dir.path().join("big.toml");
    let mut text = "[web]\nmount_point = \"/mnt/nfs\"\n".to_owned();
    text.push_str(&"# padding\n".repeat(120_000));
    std::fs::write(&big, text).unwrap();
    let (code, out) = check_bounded(&big);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("larger than 1048576 bytes"), "{out}");
}
