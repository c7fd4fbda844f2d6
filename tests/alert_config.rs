//! The commented example `config/alerts.toml` must stay valid: check-config accepts it, and it
//! says what it documents.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nfs_guard::alert::AlertKind;
use nfs_guard::config::Config;
use nfs_guard::sys::smtp::Security;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/alerts.toml");

#[test]
fn example_passes_check_config() {
    let o = Command::new(env!("CARGO_BIN_EXE_nfs-guard")).args(["--config", EXAMPLE, "check-config"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("valid (sections: alert)"), "{out}");
}

#[test]
fn example_values_match_its_comments() {
    let c = Config::load(Path::new(EXAMPLE)).unwrap();
    let a = c.alert.unwrap();
    assert_eq!((a.smtp.host.as_str(), a.smtp.port, a.smtp.security), ("smtp.example.com", 587, Security::StartTls));
    assert_eq!(a.smtp.user.as_deref(), Some("nfs-guard"));
    assert_eq!(a.to.len(), 2);
    assert_eq!(a.disabled, [AlertKind::ReverseSyncStarted]);
    assert_eq!(a.flood_period, Duration::from_secs(15 * 60));
    assert_eq!(a.smtp.deadline(), Duration::from_secs(2 * 10 + 6 * 30));
}
