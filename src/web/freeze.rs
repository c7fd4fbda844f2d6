//! Writes frozen for the last catch-up of a failback, so the primary is complete when clients move.
//!
//! Without it, a file written through the backup mount after reverse-sync pass 1 reaches the primary
//! only in the catch-up pass AFTER the switch; a client that meanwhile writes the same file on the
//! primary builds on the old copy, its newer mtime makes the catch-up (`--update`) skip the backup's
//! version, and an acknowledged write is gone (found by the chaos test). So the failback switch first
//! makes the serving backup mount read-only for this mount point only (`MS_REMOUNT|MS_BIND|MS_RDONLY`:
//! the server is not asked anything), runs the catch-up from it, then swaps. Writers get EROFS for
//! that pass (an error, never a lost acknowledgement). Every way out of the switch other than
//! success makes the mount writable again ([`Frozen`]'s drop); a restart after `kill -9` does too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::sys::mount::{self, MountError};

/// One remount syscall (flags only) gets this long.
const SYSCALL_DEADLINE: Duration = Duration::from_secs(3);

/// A read-only mount point, made writable again when dropped unless [`Frozen::keep`] was called.
#[derive(Debug)]
pub struct Frozen {
    mount_point: PathBuf,
    armed: bool,
}

impl Frozen {
    /// Makes `mount_point` read-only. Files open for writing make the kernel refuse (EBUSY): retried
    /// until `patience` runs out, then the error is returned (the caller decides).
    pub async fn freeze(mount_point: &Path, patience: Duration) -> Result<Frozen, MountError> {
        let end = Instant::now() + patience;
        loop {
            match mount::set_read_only(mount_point, true, SYSCALL_DEADLINE).await {
                Ok(()) => {
                    tracing::info!(mount_point = %mount_point.display(), "writes frozen for the final catch-up");
                    return Ok(Frozen { mount_point: mount_point.to_owned(), armed: true });
                }
                Err(MountError::Syscall { source: nix::Error::EBUSY, .. }) if Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The switch succeeded: the frozen mount is no longer served; nothing to undo.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mp = self.mount_point.clone();
        // A drop cannot await: a detached thread does the one flags-only syscall.
        let spawned = std::thread::Builder::new().name("nfs-guard-thaw".into()).spawn(move || {
            match mount::set_read_only_now(&mp, false) {
                Ok(()) => tracing::info!(mount_point = %mp.display(), "writes thawed"),
                Err(e) => {
                    tracing::error!(mount_point = %mp.display(), error = %e, "cannot make the mount writable again");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the thread that makes the mount writable again");
        }
    }
}

/// Does `options` (the configured mount options) ask for a read-only mount?
pub fn configured_read_only(options: &str) -> bool {
    options.split(',').any(|o| o.trim() == "ro")
}

/// After a restart: a freeze left by a run killed in the middle of a failback is undone (unless
/// the mount is configured read-only). Synchronous, so it is done before the controller decides
/// anything; bounded: the flags-only syscall runs on a thread abandoned after its deadline.
pub fn thaw_leftover(mount_point: &Path, options: &str) {
    if configured_read_only(options) {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mp = mount_point.to_owned();
    let spawned = std::thread::Builder::new().name("nfs-guard-thaw".into()).spawn(move || {
        let _ = tx.send(mount::set_read_only_now(&mp, false));
    });
    if spawned.is_err() {
        return;
    }
    match rx.recv_timeout(SYSCALL_DEADLINE) {
        Ok(Ok(())) => tracing::debug!(mount_point = %mount_point.display(), "mount point writable"),
        Ok(Err(e)) => tracing::debug!(mount_point = %mount_point.display(), error = %e, "no leftover freeze undone"),
        Err(_) => {
            tracing::warn!(mount_point = %mount_point.display(), "making the mount point writable did not return");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_option() {
        assert!(configured_read_only("vers=3,ro,soft"));
        assert!(!configured_read_only("vers=3,rw,soft,rsize=1048576"));
        assert!(!configured_read_only(""));
    }
}
