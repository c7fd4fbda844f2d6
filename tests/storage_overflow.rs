//! A forced inotify queue overflow (tiny `fs.inotify.max_queued_events`) must end in a full sync of
//! the tree, never in silent loss. The sysctl is GLOBAL: this is its own test binary (cargo runs test
//! binaries one after another) with a single test, and the old value is restored as soon as the
//! replicator's inotify instance exists (the kernel reads the limit when an instance is created), and
//! again on any panic.
#![allow(clippy::unwrap_used)]

mod storage_common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use storage_common::*;

const SYSCTL: &str = "/proc/sys/fs/inotify/max_queued_events";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, &self.0);
    }
}

#[test]
fn inotify_overflow_becomes_a_full_sync() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (sysctl fs.inotify.max_queued_events)");
    let Site { d, daemon, src, state, cfg } = site();

    // Two runs of this test at once (two checkouts) would each restore the other's 32: serialize.
    let lock = fs::OpenOptions::new().create(true).append(true).open("/tmp/nfs-guard-inotify-sysctl.lock").unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let old = fs::read_to_string(SYSCTL).unwrap();
    let restore = Restore(old.clone());
    fs::write(SYSCTL, "32").unwrap();
    let node = Node::spawn(Command::new(BIN), &cfg, &d.path().join("node.log"));
    wait_idle(&state, &node, Duration::from_secs(20));
    drop(restore);
    assert_eq!(fs::read_to_string(SYSCTL).unwrap(), old, "sysctl restored");

    // Far more events than 32 queued ones while the replicator cannot read any (stopped), so the
    // kernel queue overflows whatever the speed of this machine. The directories exist and are
    // watched first: files created in a directory that has no watch yet raise no events at all (the
    // replicator walks such a directory when it sees it), so they could not overflow anything.
    for d in 0..10 {
        fs::create_dir_all(src.join(format!("flood/d{d:03}"))).unwrap();
    }
    wait_same(&src, &daemon.root, Duration::from_secs(20), Some(&node));
    wait_idle(&state, &node, Duration::from_secs(20));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(node.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    burst(&src, "flood", 10, 3000);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let overflowed = || status_json(&state).is_some_and(|s| s["overflows"].as_u64().unwrap_or(0) >= 1);
    while !overflowed() {
        assert!(std::time::Instant::now() < deadline, "no overflow detected in 20 s; log:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_same(&src, &daemon.root, Duration::from_secs(40), Some(&node));
    let log = node.log_text();
    assert!(log.contains("inotify queue overflowed"), "{log}");
    assert!(log.contains("full sync done"), "{log}");

    // Directories created during the flood (their create events were lost) are watched again: a
    // write inside them arrives in real time, without another full sync.
    wait_status_settled(&state, &node, Duration::from_secs(20));
    let overflows = || status_json(&state).unwrap()["overflows"].as_u64().unwrap();
    let before = overflows();
    let full_syncs = count_in_log(&node.log_text(), "full sync done");
    for d in [3, 6, 9] {
        fs::write(src.join(format!("flood/d{d:03}/after-overflow")), "x").unwrap();
        wait_same(&src, &daemon.root, Duration::from_secs(10), Some(&node));
    }
    wait_status_settled(&state, &node, Duration::from_secs(20));
    assert_eq!(overflows(), before, "no new overflow from three writes");
    assert_eq!(count_in_log(&node.log_text(), "full sync done"), full_syncs, "{}", node.log_text());

    // Reads are not subscribed: reading all 3,000 files (as NFS clients and full syncs do) must not
    // overflow even this 32-event queue.
    for entry in fs::read_dir(src.join("flood")).unwrap() {
        for f in fs::read_dir(entry.unwrap().path()).unwrap() {
            let _ = fs::read(f.unwrap().path()).unwrap();
        }
    }
    // A write after the reads: once it has arrived and the status settled, every event (or
    // overflow) the reads could have caused was handled before it (one inotify queue, in order).
    fs::write(src.join("flood/after-reads"), "x").unwrap();
    wait_same(&src, &daemon.root, Duration::from_secs(20), Some(&node));
    wait_status_settled(&state, &node, Duration::from_secs(20));
    assert_eq!(overflows(), before, "reading files overflowed the queue\n{}", node.log_text());
}
