//! The agent's view of its export, for the web role's checks (`GET /v1/health`): a server whose
//! export went read-only or full is of no use to clients even while its NFS service answers.
//!
//! Per tree: the filesystem's flags and free space (`statvfs`), and a canary write (write, fsync,
//! read back) of [`CANARY`] at the tree root. All of it on the blocking pool under a deadline: a
//! hung disk is a failed check, never a hung agent.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The canary file at each tree root (never replicated: `push` excludes it).
pub const CANARY: &str = ".nfs-guard-agent-canary";

pub use crate::cluster::ExportHealth as Health;

/// The thresholds below which an export counts as full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_free_bytes: u64,
    pub min_free_inodes: u64,
}

/// Where this host's services listen (each checked by a TCP connect when set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Services {
    pub nfs: Option<std::net::SocketAddr>,
    pub rsyncd: Option<std::net::SocketAddr>,
}

/// Checks every tree (see the module header) and `services`, within `deadline`.
pub async fn check(roots: Vec<PathBuf>, limits: Limits, services: Services, deadline: Duration) -> Health {
    let job = tokio::task::spawn_blocking(move || check_blocking(&roots, limits));
    let (export, states) = tokio::join!(tokio::time::timeout(deadline, job), probe_services(services, deadline));
    let mut h = export_health(export, deadline);
    for s in states {
        if !s.up && s.name == "nfs" {
            h.problems.push(format!(
                "the NFS server at {} does not answer: {}",
                s.address,
                s.error.as_deref().unwrap_or("")
            ));
            h.ok = false;
        }
        h.services.push(s);
    }
    h
}

async fn probe_services(services: Services, deadline: Duration) -> Vec<crate::cluster::ServiceState> {
    let probe = |name: &str, addr: std::net::SocketAddr| {
        let name = name.to_owned();
        async move {
            let error = match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {deadline:?}")),
            };
            crate::cluster::ServiceState { name, address: addr.to_string(), up: error.is_none(), error }
        }
    };
    let mut out = Vec::new();
    if let Some(a) = services.nfs {
        out.push(probe("nfs", a).await);
    }
    if let Some(a) = services.rsyncd {
        out.push(probe("rsyncd", a).await);
    }
    out
}

fn export_health(
    r: Result<Result<Health, tokio::task::JoinError>, tokio::time::error::Elapsed>,
    deadline: Duration,
) -> Health {
    match r {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => Health { ok: false, problems: vec![format!("health check failed: {e}")], ..Health::default() },
        Err(_) => Health {
            ok: false,
            problems: vec![format!("the export did not answer a canary write within {deadline:?}")],
            ..Health::default()
        },
    }
}

fn check_blocking(roots: &[PathBuf], limits: Limits) -> Health {
    let mut h = Health { ok: true, free_bytes: u64::MAX, free_inodes: u64::MAX, ..Health::default() };
    for root in roots {
        let shown = root.display();
        match nix::sys::statvfs::statvfs(root) {
            Ok(s) => {
                if s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
                    h.problems.push(format!("{shown}: the filesystem is read-only"));
                }
                let bytes = s.blocks_available().saturating_mul(s.fragment_size());
                let inodes = s.files_available();
                h.free_bytes = h.free_bytes.min(bytes);
                h.free_inodes = h.free_inodes.min(inodes);
                if bytes < limits.min_free_bytes {
                    h.problems.push(format!("{shown}: {bytes} bytes free, below {}", limits.min_free_bytes));
                }
                if s.files() > 0 && inodes < limits.min_free_inodes {
                    h.problems.push(format!("{shown}: {inodes} inodes free, below {}", limits.min_free_inodes));
                }
            }
            Err(e) => h.problems.push(format!("{shown}: statvfs: {e}")),
        }
        if let Err(e) = canary(&root.join(CANARY)) {
            h.problems.push(format!("{shown}: canary write failed: {e}"));
        }
    }
    h.ok = h.problems.is_empty();
    h
}

/// Writes a fresh value into `path`, fsyncs, reads it back.
fn canary(path: &Path) -> std::io::Result<()> {
    let value = format!("{:016x}", fastrand::u64(..));
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes())?;
    f.sync_data()?;
    f.rewind()?;
    let mut back = String::new();
    f.read_to_string(&mut back)?;
    if back == value {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("read back {back:?} instead of {value:?}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writable_export_is_ok_and_thresholds_make_it_full() {
        let d = tempfile::tempdir().unwrap();
        let roots = vec![d.path().to_path_buf()];
        let none = Services::default();
        let h =
            check(roots.clone(), Limits { min_free_bytes: 1, min_free_inodes: 1 }, none, Duration::from_secs(10)).await;
        assert!(h.ok, "{h:?}");
        assert!(d.path().join(CANARY).exists());
        let h = check(
            roots.clone(),
            Limits { min_free_bytes: u64::MAX, min_free_inodes: 0 },
            none,
            Duration::from_secs(10),
        )
        .await;
        assert!(!h.ok);
        assert!(h.problems[0].contains("bytes free, below"), "{h:?}");
        let gone = check(
            vec![d.path().join("missing")],
            Limits { min_free_bytes: 0, min_free_inodes: 0 },
            none,
            Duration::from_secs(10),
        )
        .await;
        assert!(!gone.ok && gone.problems.len() == 2, "{gone:?}");
    }

    /// A dead NFS server makes the export unusable; a dead rsync daemon is reported only (the
    /// peer cannot push here, clients are served).
    #[tokio::test]
    async fn a_dead_nfs_server_is_not_ok_a_dead_rsync_daemon_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let roots = vec![d.path().to_path_buf()];
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed again
        let limits = Limits { min_free_bytes: 0, min_free_inodes: 0 };
        let t = Duration::from_secs(5);
        let h =
            check(roots.clone(), limits, Services { nfs: Some(up.local_addr().unwrap()), rsyncd: Some(dead) }, t).await;
        assert!(h.ok, "{h:?}");
        assert_eq!(
            h.services.iter().map(|s| (s.name.as_str(), s.up)).collect::<Vec<_>>(),
            [("nfs", true), ("rsyncd", false)]
        );
        let h = check(roots, limits, Services { nfs: Some(dead), rsyncd: None }, t).await;
        assert!(!h.ok && h.problems[0].contains("NFS server at 127.0.0.1:"), "{h:?}");
    }
}
