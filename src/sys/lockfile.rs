//! One instance per state directory: an exclusive `flock` on a lock file that also names its holder
//! (the pid is written into it once the lock is held), so a second instance fails at once with an
//! error naming the file and the pid instead of racing the first one's decisions. The kernel drops
//! the lock when the holder exits, even on `kill -9`: a stale file never blocks a restart.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The longest pid text read back from a lock file.
const PID_CAP: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is locked by another running instance ({holder})")]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// An exclusive lock, held until dropped.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl LockFile {
    /// Takes the lock at `path` without waiting; records our pid in it.
    pub fn acquire(path: &Path) -> Result<LockFile, LockError> {
        // Never truncated before the lock is ours: the holder's pid stays readable. O_NOFOLLOW: a
        // symlink planted at the lock path is an error, not a file written somewhere else.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| LockError::Open { path: path.to_owned(), source })?;
        if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
            return Err(LockError::Open { path: path.to_owned(), source });
        }
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::Error::EWOULDBLOCK)) => {
                return Err(LockError::Held { path: path.to_owned(), holder: holder(path) });
            }
            Err((_, source)) => return Err(LockError::Lock { path: path.to_owned(), source }),
        };
        let pid = format!("{}\n", std::process::id());
        let written = lock.set_len(0).and_then(|()| lock.write_all(pid.as_bytes()));
        if let Err(e) = written {
            // the lock is what matters; the pid is for the operator's error message
            tracing::warn!(path = %path.display(), error = %e, "cannot record our pid in the lock file");
        }
        Ok(LockFile { path: path.to_owned(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// "pid N" from the lock file, or why it is not known.
fn holder(path: &Path) -> String {
    match crate::sys::fsutil::read_capped_string(path, PID_CAP) {
        Ok(t) => match t.trim().parse::<u32>() {
            Ok(pid) => format!("pid {pid}"),
            Err(_) => "pid not recorded yet".to_owned(),
        },
        Err(e) => format!("pid unknown: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_file_and_the_holder_pid() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("web.lock");
        let first = LockFile::acquire(&p).unwrap();
        assert_eq!(first.path(), p);
        let e = LockFile::acquire(&p).unwrap_err().to_string();
        assert_eq!(e, format!("{} is locked by another running instance (pid {})", p.display(), std::process::id()));
        drop(first);
        let again = LockFile::acquire(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{}\n", std::process::id()));
        drop(again);
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("web.lock");
        std::os::unix::fs::symlink(d.path().join("elsewhere"), &p).unwrap();
        let e = LockFile::acquire(&p).unwrap_err().to_string();
        assert_eq!(e, format!("cannot open lock file {}", p.display()));
        assert!(!d.path().join("elsewhere").exists());
    }

    #[test]
    fn a_fifo_at_the_lock_path_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = LockFile::acquire(&p).unwrap_err();
        assert!(matches!(e, LockError::Open { .. }), "{e}");
    }
}
