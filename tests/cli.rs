//! Binary tests: the built `nfs-guard` executable's help, exit codes and config diagnostics.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

fn nfs_guard(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("RUST_LOG").env_remove("NFS_GUARD_CONFIG").output().expect("run nfs-guard")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Writes `body` to a config file in a fresh temp dir; returns (dir guard, path).
fn config(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nfs-guard.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

fn check(path: &Path) -> Output {
    nfs_guard(&["--config", path.to_str().unwrap(), "check-config"])
}

#[test]
fn help_teaches_the_commands_and_exit_codes() {
    let o = nfs_guard(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let t = text(&o);
    for needle in ["web", "storage", "check-config", "status", "alert-test", "--config", "Exit codes", "78"] {
        assert!(t.contains(needle), "--help lacks {needle:?}:\n{t}");
    }
    let o = nfs_guard(&["web", "--help"]);
    assert!(text(&o).contains("--once") && text(&o).contains("--failover-to"), "{}", text(&o));
}

#[test]
fn version_prints_the_crate_version() {
    let o = nfs_guard(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_64() {
    assert_eq!(nfs_guard(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(nfs_guard(&["web", "--hold", "--release"]).status.code(), Some(64));
    assert_eq!(nfs_guard(&[]).status.code(), Some(64));
}

#[test]
fn missing_config_file_exits_78_naming_the_file() {
    let o = nfs_guard(&["--config", "/nonexistent/nfs-guard.toml", "check-config"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("cannot read config file /nonexistent/nfs-guard.toml: No such file"), "{}", text(&o));
}

#[test]
fn default_config_path_is_etc() {
    // Whatever this machine has at the default path (nothing, a valid or a broken config), the command
    // reads THAT file and names it: "<path>: valid (...)" or an error naming it. Every branch asserts.
    const DEFAULT: &str = "/etc/nfs-guard/nfs-guard.toml";
    let o = nfs_guard(&["check-config"]);
    let t = text(&o);
    match std::fs::metadata(DEFAULT) {
        Err(_) => {
            assert_eq!(o.status.code(), Some(78), "{t}");
            assert!(t.contains(&format!("cannot read config file {DEFAULT}")), "{t}");
        }
        Ok(_) if o.status.code() == Some(0) => assert!(t.contains(&format!("{DEFAULT}: valid")), "{t}"),
        Ok(_) => {
            assert_eq!(o.status.code(), Some(78), "{t}");
            assert!(t.contains(DEFAULT), "{t}");
        }
    }
    // and the help says which file that is
    let h = text(&nfs_guard(&["--help"]));
    assert!(h.contains(&format!("[default: {DEFAULT}]")), "{h}");
}

#[test]
fn syntax_error_exits_78_with_line_and_column() {
    let (_d, p) = config("[web\n");
    let o = check(&p);
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains(&format!("{}:1:", p.display())), "{}", text(&o));
}

#[test]
fn unknown_key_exits_78_with_location() {
    let (_d, p) = config("# comment\nstate_dirr = \"/x\"\n");
    let o = check(&p);
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains(&format!("{}:2:1: unknown field `state_dirr`", p.display())), "{}", text(&o));
}

#[test]
fn bad_type_exits_78_with_location() {
    let (_d, p) = config("state_dir = 5\n");
    let o = check(&p);
    assert_eq!(o.status.code(), Some(78));
    assert!(
        text(&o).contains(&format!("{}:1:13: invalid type: integer `5`, expected a string", p.display())),
        "{}",
        text(&o)
    );
}
