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
    for required in ["alerts.toml", "storage-backup.toml", "storage-primary.toml", "web.toml"] {
        assert!(seen.iter().any(|s| s == required), "config/{required} missing; have {seen:?}");
    }
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
