//! rsync processes working inside a directory (an rsync daemon's session receiving into its module),
//! found from /proc: an agent that becomes active stops its peer's pushes still under way, which
//! would otherwise land over what clients write there from now on (found by the chaos test: a push
//! stalled by a network fault completed after the failover and brought back a renamed-away file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a stopped rsync gets to remove its temporary file before it is killed.
const GRACE: Duration = Duration::from_millis(500);

fn ppid(proc_root: &Path, pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, so split after the last ')'
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Is `pid` `me` or one of its descendants (at most a few generations up)?
fn mine(proc_root: &Path, mut pid: u32, me: u32) -> bool {
    for _ in 0..8 {
        if pid == me {
            return true;
        }
        match ppid(proc_root, pid) {
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// The working directory and root of `pid` (those that can be read).
fn places(proc_root: &Path, pid: u32) -> Vec<PathBuf> {
    let d = proc_root.join(pid.to_string());
    ["cwd", "root"].iter().filter_map(|l| std::fs::read_link(d.join(l)).ok()).collect()
}

/// Is `pid` an rsync daemon (its command line holds `--daemon`)?
fn daemon(proc_root: &Path, pid: u32) -> bool {
    std::fs::read(proc_root.join(pid.to_string()).join("cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--daemon"))
}

/// rsync processes (not `me` nor its descendants) whose working directory or root is inside one of
/// `dirs`, and the daemon's sessions that have not entered a module yet (still in the daemon's
/// working directory and root): a client whose connection was accepted before a network fault stalls in the greeting
/// and, once healed, would enter the module with the old active's authority (found by the chaos
/// test: a push stalled 6 s by a blackhole delivered after the promotion).
pub fn inside(proc_root: &Path, dirs: &[PathBuf], me: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir(proc_root) else { return Vec::new() };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        if comm.trim() != "rsync" {
            continue;
        }
        let at = places(proc_root, pid);
        let within = at.iter().any(|at| at != Path::new("/") && dirs.iter().any(|d| at.starts_with(d)));
        // still where the daemon is (it moves into the module, with chroot or chdir, once chosen)
        let greeting = at.len() == 2
            && ppid(proc_root, pid).is_some_and(|parent| daemon(proc_root, parent) && places(proc_root, parent) == at);
        if (within || greeting) && !mine(proc_root, pid, me) {
            out.push(pid);
        }
    }
    out
}

/// Stops `pids`: SIGTERM (rsync removes its temporary file), then SIGKILL for those still there.
pub fn stop(pids: &[u32]) {
    let send = |pid: u32, s: Signal| i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), s).is_ok());
    let termed: Vec<u32> = pids.iter().copied().filter(|p| send(*p, Signal::SIGTERM)).collect();
    if termed.is_empty() {
        return;
    }
    std::thread::sleep(GRACE);
    for p in termed {
        let _ = send(p, Signal::SIGKILL);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fake(proc_root: &Path, pid: u32, comm: &str, parent: u32, cwd: &Path) {
        let d = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(d.join("stat"), format!("{pid} ({comm} x) S {parent} 1 1 0")).unwrap();
        symlink(cwd, d.join("cwd")).unwrap();
        symlink("/", d.join("root")).unwrap();
    }

    #[test]
    fn finds_rsync_sessions_in_the_export_but_not_its_own_pushes() {
        let t = tempfile::tempdir().unwrap();
        let (proc_root, export) = (t.path().join("proc"), PathBuf::from("/srv/nfs"));
        fake(&proc_root, 10, "rsync", 9, Path::new("/srv/nfs"));
        fake(&proc_root, 11, "rsync", 10, Path::new("/srv/nfs/sub dir"));
        fake(&proc_root, 12, "rsync", 1, Path::new("/"));
        fake(&proc_root, 13, "sh", 1, Path::new("/srv/nfs"));
        fake(&proc_root, 14, "rsync", 500, Path::new("/srv/nfs"));
        fake(&proc_root, 15, "rsync", 1, Path::new("/srv/nfs2"));
        fake(&proc_root, 500, "nfs-guard", 1, Path::new("/"));
        // the daemon (12) and a session of it still in the greeting; a client's own fork at / is not one
        std::fs::write(proc_root.join("12/cmdline"), b"rsync\0--daemon\0--no-detach\0").unwrap();
        fake(&proc_root, 16, "rsync", 12, Path::new("/"));
        fake(&proc_root, 17, "rsync", 15, Path::new("/"));
        fake(&proc_root, 18, "rsync", 12, Path::new("/srv/other-module"));
        let mut found = inside(&proc_root, &[export], 500);
        found.sort_unstable();
        assert_eq!(
            found,
            [10, 11, 16],
            "sessions in the export or still in the greeting; not the daemon, not a shell, not its own child"
        );
    }
}
