//! Aborting the TCP connections of a process group before it is killed.
//!
//! Killing a process CLOSES its sockets: what its TCP connections still hold in their send buffers
//! is delivered afterwards, and retransmitted until the peer takes it. A push stalled by a network
//! partition (packets dropped) and killed meanwhile therefore still completes after the heal: the
//! rsync daemon receives the rest of the stale transfer and renames it into place, over whatever
//! clients wrote on that server during the failover (found by the chaos test on the kernel client).
//! So before the kill every TCP socket of the group is set to linger 0: its close then RESETS the
//! connection and drops the unsent data. The sockets are reached through `pidfd_getfd(2)` (Linux 5.6;
//! the caller's own children, so ptrace access holds); where that fails the kill goes ahead as
//! before.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use rustix::net::{sockopt, AddressFamily, SocketType};
use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

/// Sets linger 0 on every TCP socket of the processes in group `pgid`; how many it set.
pub fn reset_group_connections(pgid: i32) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| group_of(*pid) == Some(pgid))
        .map(reset_process_connections)
        .sum()
}

/// The process group of `pid`, from `/proc/PID/stat` (after the command's closing parenthesis:
/// state, ppid, pgrp).
fn group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

fn reset_process_connections(pid: i32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    let Some(pidfd) = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok()) else { return 0 };
    let mut n = 0;
    for e in fds.flatten() {
        let is_socket = std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str().as_bytes().starts_with(b"socket:"));
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()).filter(|_| is_socket) else {
            continue;
        };
        // A duplicate of the child's socket: the option is the socket's, so it holds for the child's
        // descriptor too, and whichever close comes last resets the connection.
        let Ok(sock) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) else { continue };
        let tcp = sockopt::socket_type(&sock).is_ok_and(|t| t == SocketType::STREAM)
            && sockopt::socket_domain(&sock).is_ok_and(|d| d == AddressFamily::INET || d == AddressFamily::INET6);
        if tcp && sockopt::set_socket_linger(&sock, Some(Duration::ZERO)).is_ok() {
            n += 1;
        }
    }
    n
}
