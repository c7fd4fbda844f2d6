//! The web node's side of the failback guard (see [`crate::failback_guard`]): raise the marker on
//! the primary before reverse-sync pass 1, lower it after, through the reverse sync's own rsync
//! target. Both are small rsync runs from files under the state directory (local disk, never a
//! mount), each with a deadline.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::web::ReverseSyncConfig;
use crate::failback_guard::{encode, MARKER};

/// Deadline of one marker upload or deletion (they move a few bytes).
const DEADLINE: Duration = Duration::from_secs(60);
/// The lease outlives the pass by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// argv that uploads `file` (the marker) into the root of the target.
pub fn raise_args(file: &Path, rs: &ReverseSyncConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-t".into(), "--stats".into()];
    a.extend(rs.target.transport_args());
    a.push(file.into());
    a.push(rs.target.url().into());
    a
}

/// argv that deletes the marker (and rsync's temporary files for it), and nothing else, from the
/// root of the target: an empty source with `--delete`, everything but the marker excluded.
pub fn lower_args(empty: &Path, rs: &ReverseSyncConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "-r".into(),
        "--delete".into(),
        "--stats".into(),
        format!("--include=/{MARKER}").into(),
        format!("--include=/.{MARKER}.*").into(),
        "--exclude=*".into(),
    ];
    a.extend(rs.target.transport_args());
    let mut src = empty.as_os_str().to_owned();
    src.push("/");
    a.push(src);
    a.push(rs.target.url().into());
    a
}

async fn run(rsync: &Path, args: &[OsString], what: &str) -> Result<(), String> {
    let r =
        crate::sys::rsync::run(rsync, args, None, DEADLINE).await.map_err(|e| format!("{what}: {e}: {}", e.source))?;
    if r.ok() {
        Ok(())
    } else {
        Err(format!("{what}: {}", r.error_text()))
    }
}

/// Uploads the marker with a lease covering one pass (`rs.timeout`). `dir`: a private local
/// directory for the files it needs.
pub async fn raise(rsync: &Path, rs: &ReverseSyncConfig, dir: &Path) -> Result<(), String> {
    let up = dir.join("up");
    let file: PathBuf = up.join(MARKER);
    let content = encode(rs.timeout.saturating_add(LEASE_MARGIN));
    let prepared = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || crate::sys::fsutil::write_atomic_nosync(&file, &content))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    prepared.map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    run(rsync, &raise_args(&file, rs), "raising the failback guard on the primary").await
}

/// Deletes the marker.
pub async fn lower(rsync: &Path, rs: &ReverseSyncConfig, dir: &Path) -> Result<(), String> {
    let empty = dir.join("empty");
    let made = {
        let empty = empty.clone();
        tokio::task::spawn_blocking(move || crate::sys::fsutil::ensure_private_dir(&empty))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    made.map_err(|e| format!("cannot create {}: {e}", empty.display()))?;
    run(rsync, &lower_args(&empty, rs), "lowering the failback guard on the primary").await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::rsync::RsyncTarget;

    fn rs() -> ReverseSyncConfig {
        ReverseSyncConfig {
            target: RsyncTarget::example(),
            delete: false,
            timeout: Duration::from_secs(120),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(2),
        }
    }

    fn strings(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn raise_uploads_one_file_into_the_target_root() {
        let a = strings(&raise_args(Path::new("/s/guard/up/.nfs-guard-failback"), &rs()));
        assert_eq!(a[a.len() - 2..], ["/s/guard/up/.nfs-guard-failback", "rsync://nfsguard@10.0.0.3:873/data/"]);
        assert!(!a.iter().any(|x| x.starts_with("--delete") || x == "-r"));
    }

    #[test]
    fn lower_deletes_nothing_but_the_marker() {
        let a = strings(&lower_args(Path::new("/s/guard/empty"), &rs()));
        let i = a.iter().position(|x| x == "--include=/.nfs-guard-failback").unwrap();
        assert_eq!(a[i + 1], "--include=/..nfs-guard-failback.*");
        assert_eq!(a[i + 2], "--exclude=*");
        assert!(a.contains(&"--delete".to_owned()) && !a.iter().any(|x| x == "--delete-excluded"));
        assert_eq!(a[a.len() - 2..], ["/s/guard/empty/", "rsync://nfsguard@10.0.0.3:873/data/"]);
    }
}
