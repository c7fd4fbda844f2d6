//! Lab tests of the web farm (`[cluster]`, docs/farm.md): a real 3-member etcd cluster (Debian's
//! etcd-server, members on both storage hosts and the lab's web host), both storage hosts running
//! agents, and three web nodes, each in its own network and mount namespaces.
//!
//! Web nodes are the sshfs/netns stand-in, not user-mode-linux guests: the lab has one UML slot
//! (its `web` host), a guest boots in 7-13 s and holds ~256 MiB on this 2-core machine shared by
//! several engineers, and what these tests check (which server each node mounts, when, on whose
//! decision) does not depend on the kernel's NFS client, which `tests/web_uml.rs` covers for one node.
#![allow(clippy::unwrap_used)]

#[path = "common/etcd.rs"]
mod etcd;
#[path = "common/extra_host.rs"]
mod extra_host;
#[path = "common/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use etcd::Etcd;
use lab::{Host, Lab, WebKind};

/// The lab's etcd helper: three members healthy, a value written survives one member's death and
/// is read back through the other two, and the member comes back.
#[test]
fn etcd_lab_cluster_keeps_quorum_when_a_member_dies() {
    let lab = Lab::up_with("fa1", WebKind::Sshfs);
    let dir = tempfile::tempdir_in(lab.state_dir()).unwrap();
    let started = Instant::now();
    let mut e = Etcd::start(&lab, dir.path());
    eprintln!("3 etcd members healthy after {:?}", started.elapsed());
    let put = e.ctl(&lab, Host::Web, &["put", "/t/k", "v1"]).unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    e.kill(Host::Primary);
    let get = e.ctl(&lab, Host::Backup, &["get", "--print-value-only", "/t/k"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v1", "{}", e.logs());
    let put = e.ctl(&lab, Host::Backup, &["put", "/t/k", "v2"]).unwrap();
    assert!(put.status.success(), "two of three members still take writes: {}", e.logs());
    e.restart(&lab, Host::Primary);
    // the member that came back has caught up
    lab::wait_until("the restarted member to serve v2", Duration::from_secs(20), || {
        let ep = format!("http://{}:{}", lab.ip(Host::Primary), etcd::CLIENT_PORT);
        lab.exec_timeout(
            Host::Primary,
            &["etcdctl", "--endpoints", &ep, "get", "--consistency=s", "--print-value-only", "/t/k"],
            Duration::from_secs(8),
        )
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "v2")
    });
    // a partitioned member loses quorum for writes; the other two keep it (after an election if
    // the partitioned member led)
    e.partition(&lab, Host::Web);
    lab::wait_until("the majority side to take a write", Duration::from_secs(20), || {
        e.ctl_on(&lab, Host::Primary, &["put", "/t/k", "v3"]).is_some_and(|o| o.status.success())
    });
    let put = e.ctl_on(&lab, Host::Web, &["put", "/t/k", "v4"]);
    assert!(!put.is_some_and(|o| o.status.success()), "the partitioned member took a write alone");
    e.heal_partition(&lab, Host::Web);
    e.wait_healthy(&lab, &etcd::MEMBERS, Duration::from_secs(30));
    drop(e);
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|d| d.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert!(left.is_empty(), "data dirs left after drop: {left:?}");
}
