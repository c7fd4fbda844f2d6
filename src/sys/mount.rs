//! Mount operations, each with a deadline and run where it can be abandoned: the system mount helper
//! as a child process (so fstab-style options and `mount.nfs` work as on any host), and the raw
//! syscalls (lazy detach, bind, move, remount: through sys-mount) on a blocking thread we stop
//! waiting for at the deadline. Nothing here stats a mounted file system.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sys_mount::{Mount, MountFlags};
use tokio::process::Command;

use super::child;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error("`{command}` did not finish within {deadline:?} (abandoned)")]
    TimedOut { command: String, deadline: Duration },
    #[error("{op} {path}")]
    Syscall {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{op} {path} did not return within {deadline:?} (abandoned)")]
    SyscallTimedOut { op: &'static str, path: PathBuf, deadline: Duration },
}

/// `mount -t FSTYPE [-o OPTIONS] SOURCE TARGET` as a child in its own process group, killed at the
/// deadline. Arguments are a vector: no shell sees the paths.
pub async fn mount_helper(
    fstype: &str,
    options: &str,
    source: &str,
    target: &Path,
    deadline: Duration,
) -> Result<(), MountError> {
    let mut cmd = Command::new("mount");
    cmd.arg("-t").arg(fstype);
    if !options.is_empty() {
        cmd.arg("-o").arg(options);
    }
    cmd.arg(source).arg(target);
    let command = format!("mount -t {fstype}{} {source} {}", opt_text(options), target.display());
    run_child(cmd, command, deadline).await
}

fn opt_text(options: &str) -> String {
    if options.is_empty() {
        String::new()
    } else {
        format!(" -o {options}")
    }
}

/// Runs a prepared command with a deadline (see [`child::run`]); its exit ends the wait: a helper that
/// daemonizes (FUSE) may leave a grandchild holding stderr, which is read only briefly after the exit.
pub async fn run_child(cmd: Command, command: String, deadline: Duration) -> Result<(), MountError> {
    let spec =
        child::Spec { cmd, stdin: None, stdout_keep: 0, deadline, end: child::End::Exited { trailing: STDERR_TRAIL } };
    match child::run(spec).await.map_err(|e| MountError::Spawn { program: e.program, source: e.source })? {
        child::Ran::Exited { status: Ok(status), .. } if status.success() => Ok(()),
        child::Ran::Exited { status, stderr, .. } => Err(MountError::Failed {
            command,
            status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            stderr: String::from_utf8_lossy(&stderr).trim().replace('\n', " | "),
        }),
        child::Ran::TimedOut => Err(MountError::TimedOut { command, deadline }),
    }
}

/// How long a helper's stderr is read after it exited.
const STDERR_TRAIL: Duration = Duration::from_millis(300);

/// Runs a blocking syscall on its own thread and stops waiting at the deadline (the thread is
/// abandoned if the kernel never returns, which a hung network file system can cause).
async fn blocking(
    op: &'static str,
    path: &Path,
    deadline: Duration,
    f: impl FnOnce() -> nix::Result<()> + Send + 'static,
) -> Result<(), MountError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("nfs-guard-{op}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| MountError::Syscall {
            op,
            path: path.to_owned(),
            source: nix::Error::try_from(e).unwrap_or(nix::Error::EAGAIN),
        })?;
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(source))) => Err(MountError::Syscall { op, path: path.to_owned(), source }),
        Ok(Err(_)) => Err(MountError::Syscall { op, path: path.to_owned(), source: nix::Error::EIO }),
        Err(_) => Err(MountError::SyscallTimedOut { op, path: path.to_owned(), deadline }),
    }
}

/// Lazily detaches whatever is mounted at `target` (`umount2(MNT_DETACH [| MNT_FORCE])`): it leaves
/// the namespace at once, open files keep working (or fail, when the server is dead) until closed.
/// `force` also aborts pending requests to a dead server. Nothing mounted there is success.
///
/// The syscall runs in a child `umount -i -c -l [-f]` (own process group), not on a thread of ours:
/// on `NFSv4` the detach of a mount's last reference also tears its client down (`DESTROY_SESSION`), in
/// the detaching task, in D until a dead server answers (measured on Linux 6.1 against a blackholed or
/// frozen server: the mount leaves mountinfo in ~0.2 s, the syscall hangs for good). So success is the
/// mount leaving this thread's mountinfo; then the child is killed, which ends its (killable) wait.
pub async fn detach(target: &Path, force: bool, deadline: Duration) -> Result<(), MountError> {
    detach_with("umount", Path::new("/proc/thread-self/mountinfo"), target, force, deadline).await
}

async fn detach_with(
    program: &str,
    mountinfo: &Path,
    target: &Path,
    force: bool,
    deadline: Duration,
) -> Result<(), MountError> {
    use crate::sys::mountinfo::{read, top_at};
    // The mount to detach, by id (mountinfo never touches the file system). Unreadable: rely on the child.
    let id = match read(mountinfo) {
        Ok(entries) => match top_at(&entries, target) {
            None => return Ok(()),
            Some(m) => Some(m.id),
        },
        Err(_) => None,
    };
    let gone =
        || id.is_some_and(|id| read(mountinfo).is_ok_and(|e| !e.iter().any(|m| m.id == id && m.mount_point == target)));
    let started = tokio::time::Instant::now();
    // A file system without umount_begin may reject MNT_FORCE (EINVAL): then once more without it.
    let attempts: &[bool] = if force { &[true, false] } else { &[false] };
    let mut last = Ok(());
    for &f in attempts {
        let mut cmd = Command::new(program);
        cmd.args(["-i", "-c", "-l"]);
        if f {
            cmd.arg("-f");
        }
        cmd.arg(target);
        let command = format!("{program} -i -c -l{} {}", if f { " -f" } else { "" }, target.display());
        let left = deadline.saturating_sub(started.elapsed());
        // Dropping the child's future kills it (kill_on_drop): the select below does so once it is gone.
        let child = run_child(cmd, command, left);
        tokio::pin!(child);
        let result = loop {
            tokio::select! {
                r = &mut child => break r,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if gone() {
                        return Ok(());
                    }
                }
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(_) if gone() => return Ok(()),
            Err(e) => last = Err(e),
        }
    }
    last
}

/// `mount --bind SRC DST`.
pub async fn bind(src: &Path, dst: &Path, deadline: Duration) -> Result<(), MountError> {
    let (s, d) = (src.to_owned(), dst.to_owned());
    blocking("bind", dst, deadline, move || mount_flags(&s, &d, MountFlags::BIND)).await
}

/// `mount --move SRC DST` (the mount at SRC now appears at DST; its parent must not be shared).
pub async fn move_mount(src: &Path, dst: &Path, deadline: Duration) -> Result<(), MountError> {
    let (s, d) = (src.to_owned(), dst.to_owned());
    blocking("move", dst, deadline, move || mount_flags(&s, &d, MountFlags::MOVE)).await
}

/// Makes the mount at `target` read-only (`ro`) or writable again, for this mount point only
/// (`MS_REMOUNT | MS_BIND`): the file system and its server are not asked anything. While files are
/// open for writing on that mount, the kernel refuses read-only with EBUSY.
pub async fn set_read_only(target: &Path, ro: bool, deadline: Duration) -> Result<(), MountError> {
    let t = target.to_owned();
    blocking(if ro { "remount read-only" } else { "remount writable" }, target, deadline, move || {
        set_read_only_now(&t, ro)
    })
    .await
}

/// [`set_read_only`] on the calling thread, without a deadline: for a thread of its own (a drop
/// cannot await).
pub fn set_read_only_now(target: &Path, ro: bool) -> nix::Result<()> {
    let mut flags = MountFlags::REMOUNT | MountFlags::BIND;
    if ro {
        flags |= MountFlags::RDONLY;
    }
    mount_flags(Path::new(""), target, flags)
}

/// Makes `dir` a private mount point of its own (a bind of itself, propagation private), so mounts
/// made under it can be moved with `MS_MOVE` even when `/` is shared (systemd's default).
pub async fn private_self_bind(dir: &Path, mountinfo: &Path, deadline: Duration) -> Result<(), MountError> {
    let already = crate::sys::mountinfo::read(mountinfo).is_ok_and(|e| {
        crate::sys::mountinfo::top_at(&e, dir).is_some_and(|m| !m.optional.iter().any(|o| o.starts_with("shared:")))
    });
    if !already {
        bind(dir, dir, deadline).await?;
    }
    let d = dir.to_owned();
    // nix, not sys-mount: sys-mount sets a propagation type only on a `Mount` it made itself, and
    // this dir may have been bound by an earlier run.
    blocking("make-private", dir, deadline, move || {
        nix::mount::mount(None::<&str>, &d, None::<&str>, nix::mount::MsFlags::MS_PRIVATE, None::<&str>)
    })
    .await
}

/// `mount(source, target, "", flags, NULL)` through sys-mount, for the flag-only operations (bind,
/// move, remount, propagation) where the kernel ignores the file system type. An empty `source` is
/// passed as NULL. The type is given (empty), so sys-mount never probes `/proc/filesystems`; its
/// loop-device feature is off, so it never looks at `source` either (it may be a dead NFS mount).
fn mount_flags(source: &Path, target: &Path, flags: MountFlags) -> nix::Result<()> {
    Mount::builder().fstype("").flags(flags).mount(source, target).map(drop).map_err(|e| errno(&e))
}

fn errno(e: &io::Error) -> nix::Error {
    e.raw_os_error().map_or(nix::Error::EIO, nix::Error::from_raw)
}

/// A process that still has files open on a detached mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub files: usize,
}

/// Processes with open files on mount `mnt_id` (from /proc/PID/fdinfo `mnt_id:`, which never touches
/// the mounted file system). Scans at most `max_fds` descriptors so a huge host stays bounded.
pub fn holders(proc_root: &Path, mnt_id: u64, max_fds: usize) -> Vec<Holder> {
    let mut out = Vec::new();
    let mut scanned = 0;
    let Ok(procs) = std::fs::read_dir(proc_root) else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else { continue };
        let mut files = 0;
        for fd in fds.flatten() {
            scanned += 1;
            if scanned > max_fds {
                break;
            }
            let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
            let id = info.lines().find_map(|l| l.strip_prefix("mnt_id:")).and_then(|v| v.trim().parse::<u64>().ok());
            if id == Some(mnt_id) {
                files += 1;
            }
        }
        if files > 0 {
            let command = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_owned();
            out.push(Holder { pid, command, files });
        }
        if scanned > max_fds {
            break;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_helper_reports_command_and_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'mount: bad option' >&2; exit 32"]);
        let e = run_child(cmd, "mount -t nfs x:/e /m".into(), Duration::from_secs(5)).await.unwrap_err().to_string();
        assert_eq!(e, "`mount -t nfs x:/e /m` failed (exit status: 32): mount: bad option");
    }

    #[tokio::test]
    async fn a_hung_helper_is_abandoned_at_the_deadline() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let t = std::time::Instant::now();
        let e = run_child(cmd, "mount hang".into(), Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, MountError::TimedOut { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// bind, move, read-only remount and detach through sys-mount, on tmpfs, in a mount namespace of
    /// this test's thread (the threads `blocking` starts from it share it). Needs root: says so loudly
    /// and returns without it.
    #[test]
    fn the_syscalls_bind_move_remount_and_detach() {
        use nix::mount::MsFlags;
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
            eprintln!("SKIPPED the_syscalls_bind_move_remount_and_detach: no mount namespace ({e}); run as root");
            return;
        }
        nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(n));
        for p in [&a, &b, &c] {
            std::fs::create_dir(p).unwrap();
        }
        nix::mount::mount(Some("tmpfs"), &a, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        std::fs::write(a.join("x"), "x").unwrap();
        let table = || crate::sys::mountinfo::read(Path::new("/proc/thread-self/mountinfo")).unwrap();
        let mounted = |p: &Path| crate::sys::mountinfo::top_at(&table(), p).is_some();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let limit = Duration::from_secs(5);
            bind(&a, &b, limit).await.unwrap();
            assert!(b.join("x").exists());
            move_mount(&b, &c, limit).await.unwrap();
            assert!(!mounted(&b) && mounted(&c) && c.join("x").exists());
            set_read_only(&c, true, limit).await.unwrap();
            let e = std::fs::write(c.join("y"), "y").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(nix::libc::EROFS));
            set_read_only_now(&c, false).unwrap();
            std::fs::write(c.join("y"), "y").unwrap();
            detach(&c, false, limit).await.unwrap();
            assert!(!mounted(&c));
            detach(&c, true, limit).await.expect("nothing mounted (EINVAL) is success");
            detach(&a, true, limit).await.unwrap();
            assert!(!mounted(&a));
        });
    }

    #[test]
    fn holders_match_fdinfo_mount_ids() {
        let d = tempfile::tempdir().unwrap();
        for (pid, ids) in [("10", vec![40, 41]), ("11", vec![22]), ("self", vec![40])] {
            let fdinfo = d.path().join(pid).join("fdinfo");
            std::fs::create_dir_all(&fdinfo).unwrap();
            std::fs::write(d.path().join(pid).join("comm"), "php-fpm\n").unwrap();
            for (i, id) in ids.iter().enumerate() {
                std::fs::write(fdinfo.join(i.to_string()), format!("pos:\t0\nflags:\t02\nmnt_id:\t{id}\n")).unwrap();
            }
        }
        let h = holders(d.path(), 40, 1000);
        assert_eq!(h, vec![Holder { pid: 10, command: "php-fpm".into(), files: 1 }]);
    }

    /// A fake `umount` that never returns (like one stuck in an `NFSv4` client teardown) and a mountinfo
    /// rewritten 300 ms later without the mount: the detach succeeds then, and kills the child.
    #[tokio::test]
    async fn a_detach_is_done_when_the_mount_leaves_mountinfo_even_if_umount_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("umount");
        let pidfile = dir.path().join("pid");
        std::fs::write(&fake, format!("#!/bin/sh\necho $$ > {}\nexec sleep 30\n", pidfile.display())).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mi = dir.path().join("mountinfo");
        let line = "36 25 0:40 / /mnt/nfs rw,relatime shared:1 - nfs4 10.0.0.2:/srv/nfs rw,vers=4.1\n";
        std::fs::write(&mi, format!("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n{line}")).unwrap();
        let mi2 = mi.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(&mi2, "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap();
        });
        let t = std::time::Instant::now();
        let r = detach_with(fake.to_str().unwrap(), &mi, Path::new("/mnt/nfs"), true, Duration::from_secs(10)).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let dead = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
        };
        let t = std::time::Instant::now();
        while !dead() {
            assert!(t.elapsed() < Duration::from_secs(5), "the hung umount child {pid} was not killed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
