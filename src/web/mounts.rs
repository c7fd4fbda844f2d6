//! The mount table operations the web role's choreography is made of (direct mount, staged switch,
//! reconciliation staging mount: see `effects`), behind [`MountOps`], so the choreography's fallback
//! branches are tested on an in-memory mount table ([`MemMounts`], tests only) without root.
//! [`SysMountOps`] is the real one: `/proc/self/mountinfo` and the `sys::mount` helper and syscalls,
//! each with its deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::web::WebConfig;
use crate::sys::mount::{self, MountError};
use crate::sys::mountinfo::{self, MountEntry};

/// Deadline of one detach, bind or move syscall.
pub const SYSCALL_DEADLINE: Duration = Duration::from_secs(3);

pub trait MountOps: Send + Sync + 'static {
    /// The mount table (mountinfo); never touches a mounted file system.
    fn entries(&self) -> Vec<MountEntry>;
    /// Where the table is read from (for messages).
    fn table(&self) -> &Path;
    /// Mounts `source` (`SERVER:/export`) at `at`, with the configured type and options, under the
    /// mount deadline.
    fn mount(&self, source: &str, at: &Path) -> impl Future<Output = Result<(), MountError>> + Send;
    /// Lazily detaches the top mount at `at` (`force`: also abort requests to a dead server).
    fn detach(&self, at: &Path, force: bool) -> impl Future<Output = Result<(), MountError>> + Send;
    /// Binds the mount at `from` to `to`.
    fn bind(&self, from: &Path, to: &Path) -> impl Future<Output = Result<(), MountError>> + Send;
    /// Moves the mount at `from` to `to`.
    fn move_mount(&self, from: &Path, to: &Path) -> impl Future<Output = Result<(), MountError>> + Send;
    /// Makes `dir` a private mount point of its own (staging mounts are moved out of it).
    fn private_self_bind(&self, dir: &Path) -> impl Future<Output = Result<(), MountError>> + Send;
}

/// The real mount table.
pub struct SysMountOps {
    mountinfo: PathBuf,
    fstype: String,
    options: String,
    mount_timeout: Duration,
}

impl SysMountOps {
    /// Reads the table from `mountinfo`; mounts as `[web]` says (`fstype`, `options`, `mount_timeout`).
    pub fn new(mountinfo: PathBuf, cfg: &WebConfig) -> SysMountOps {
        SysMountOps {
            mountinfo,
            fstype: cfg.fstype.clone(),
            options: cfg.options.clone(),
            mount_timeout: cfg.mount_timeout,
        }
    }
}

impl MountOps for SysMountOps {
    fn table(&self) -> &Path {
        &self.mountinfo
    }

    fn entries(&self) -> Vec<MountEntry> {
        mountinfo::read(&self.mountinfo).unwrap_or_else(|e| {
            tracing::warn!(path = %self.mountinfo.display(), error = %e, "cannot read mountinfo");
            Vec::new()
        })
    }

    async fn mount(&self, source: &str, at: &Path) -> Result<(), MountError> {
        mount::mount_helper(&self.fstype, &nfs_options(&self.fstype, &self.options), source, at, self.mount_timeout)
            .await
    }

    async fn detach(&self, at: &Path, force: bool) -> Result<(), MountError> {
        mount::detach(at, force, SYSCALL_DEADLINE).await
    }

    async fn bind(&self, from: &Path, to: &Path) -> Result<(), MountError> {
        mount::bind(from, to, SYSCALL_DEADLINE).await
    }

    async fn move_mount(&self, from: &Path, to: &Path) -> Result<(), MountError> {
        mount::move_mount(from, to, SYSCALL_DEADLINE).await
    }

    async fn private_self_bind(&self, dir: &Path) -> Result<(), MountError> {
        mount::private_self_bind(dir, &self.mountinfo, SYSCALL_DEADLINE).await
    }
}

/// The options of every NFS mount nfs-guard makes: the configured ones plus `nosharecache` (unless
/// the config says `sharecache` or `nosharecache` itself). Linux's client otherwise gives a new mount
/// of a server the superblock of an earlier mount of it that is still alive, and one lazily detached
/// from a dead server stays alive, hung: a failback or reconciliation would inherit its stuck
/// requests (measured with the kernel client: 18 s, same device number, see LAB-FACTS).
pub fn nfs_options(fstype: &str, options: &str) -> String {
    let has = |o: &str| options.split(',').any(|x| x.trim() == o);
    if !fstype.starts_with("nfs") || has("sharecache") || has("nosharecache") {
        return options.to_owned();
    }
    if options.trim().is_empty() {
        "nosharecache".to_owned()
    } else {
        format!("{options},nosharecache")
    }
}

/// An in-memory mount table with injectable failures, for the choreography's tests.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::needless_pass_by_value)]
pub mod mem {
    use std::collections::HashSet;
    use std::ffi::OsString;
    use std::sync::Mutex;

    use super::*;

    /// Which operation fails.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub enum Op {
        /// The mount helper for this target dir.
        Mount(PathBuf),
        Detach(PathBuf),
        Bind(PathBuf),
        /// A move of the mount at this dir.
        Move(PathBuf),
    }

    #[derive(Default)]
    pub struct MemMounts {
        table: Mutex<Vec<MountEntry>>,
        failing: Mutex<HashSet<Op>>,
        /// Every operation done, in order (for assertions), e.g. `move /s/new -> /mnt`.
        pub log: Mutex<Vec<String>>,
        next_id: Mutex<u64>,
    }

    impl MemMounts {
        pub fn fail(&self, op: Op) {
            self.failing.lock().unwrap().insert(op);
        }

        /// Lists a mount of `source` at `at` (on top of what is there).
        pub fn add(&self, source: &str, at: &Path) {
            let id = {
                let mut n = self.next_id.lock().unwrap();
                *n += 1;
                100 + *n
            };
            self.table.lock().unwrap().push(MountEntry {
                id,
                parent: 1,
                mount_point: at.to_owned(),
                fstype: "nfs4".into(),
                source: OsString::from(source),
                optional: Vec::new(),
            });
        }

        /// The source on top at `at`, if any.
        pub fn top(&self, at: &Path) -> Option<String> {
            mountinfo::top_at(&self.entries(), at).map(|e| e.source.to_string_lossy().into_owned())
        }

        fn check(&self, op: Op, name: &'static str, path: &Path, log: String) -> Result<(), MountError> {
            self.log.lock().unwrap().push(log);
            if self.failing.lock().unwrap().contains(&op) {
                return Err(MountError::Syscall { op: name, path: path.to_owned(), source: nix::Error::EIO });
            }
            Ok(())
        }
    }

    impl MountOps for MemMounts {
        fn table(&self) -> &Path {
            Path::new("(in-memory mount table)")
        }

        fn entries(&self) -> Vec<MountEntry> {
            self.table.lock().unwrap().clone()
        }

        async fn mount(&self, source: &str, at: &Path) -> Result<(), MountError> {
            self.check(Op::Mount(at.to_owned()), "mount", at, format!("mount {source} {}", at.display()))?;
            self.add(source, at);
            Ok(())
        }

        async fn detach(&self, at: &Path, _force: bool) -> Result<(), MountError> {
            self.check(Op::Detach(at.to_owned()), "umount2", at, format!("detach {}", at.display()))?;
            let mut t = self.table.lock().unwrap();
            if let Some(i) = t.iter().rposition(|e| e.mount_point == at) {
                t.remove(i);
            }
            Ok(())
        }

        async fn bind(&self, from: &Path, to: &Path) -> Result<(), MountError> {
            self.check(Op::Bind(to.to_owned()), "bind", to, format!("bind {} -> {}", from.display(), to.display()))?;
            let source = self.top(from).unwrap_or_else(|| from.display().to_string());
            self.add(&source, to);
            Ok(())
        }

        async fn move_mount(&self, from: &Path, to: &Path) -> Result<(), MountError> {
            self.check(Op::Move(from.to_owned()), "move", to, format!("move {} -> {}", from.display(), to.display()))?;
            let mut t = self.table.lock().unwrap();
            let Some(i) = t.iter().rposition(|e| e.mount_point == from) else {
                return Err(MountError::Syscall { op: "move", path: to.to_owned(), source: nix::Error::EINVAL });
            };
            let mut e = t.remove(i);
            e.mount_point = to.to_owned();
            t.push(e);
            Ok(())
        }

        async fn private_self_bind(&self, _dir: &Path) -> Result<(), MountError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod option_tests {
    use super::nfs_options;

    #[test]
    fn nfs_mounts_never_share_a_superblock_unless_the_config_says_so() {
        assert_eq!(nfs_options("nfs", "vers=3,hard"), "vers=3,hard,nosharecache");
        assert_eq!(nfs_options("nfs4", ""), "nosharecache");
        assert_eq!(nfs_options("nfs", "vers=3,sharecache"), "vers=3,sharecache");
        assert_eq!(nfs_options("nfs", "nosharecache,vers=3"), "nosharecache,vers=3");
        assert_eq!(nfs_options("fuse.sshfs", "ro"), "ro");
    }
}
