//! A real 3-member etcd cluster (Debian's `etcd-server`) inside a lab, for the web farm's tests:
//! one member on each storage host and one on the lab's `web` host (what docs/farm.md suggests for
//! production: two storage hosts and one web node), listening on lab addresses only, data dirs under
//! the test's directory. `start` waits (polling, with a deadline) until every member is healthy;
//! `kill`/`restart` a member, `partition` one from its peers; dropping the cluster kills every
//! member and removes its data dir.
//!
//! Include with `#[path = "common/etcd.rs"] mod etcd;` (needs `lab`).

#![allow(dead_code)] // shared by several test crates, each using part of it

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// Where the members run.
pub const MEMBERS: [Host; 3] = [Host::Primary, Host::Backup, Host::Web];

pub struct Etcd {
    dir: PathBuf,
    token: String,
    urls: Vec<(Host, String, String)>,
    children: Vec<(Host, Child)>,
    /// Network namespaces of the partitioned members (healed on drop).
    partitioned: Vec<String>,
}

fn member(h: Host) -> String {
    format!("m-{}", h.name())
}

impl Etcd {
    /// Starts the three members (`dir` holds their data dirs and logs) and waits until all are
    /// healthy (60 s: three members elect a leader within seconds even on busy cores).
    pub fn start(lab: &Lab, dir: &Path) -> Etcd {
        assert!(
            Path::new("/usr/bin/etcd").exists(),
            "etcd is missing: run scripts/install-deps.sh (Debian package etcd-server)"
        );
        let urls = MEMBERS
            .iter()
            .map(|h| {
                let ip = lab.ip(*h);
                (*h, format!("http://{ip}:{CLIENT_PORT}"), format!("http://{ip}:{PEER_PORT}"))
            })
            .collect();
        let mut e = Etcd {
            dir: dir.to_owned(),
            token: format!("ngl-{}", lab.name()),
            urls,
            children: Vec::new(),
            partitioned: Vec::new(),
        };
        for h in MEMBERS {
            e.spawn(lab, h);
        }
        e.wait_healthy(lab, &MEMBERS, Duration::from_secs(60));
        e
    }

    fn data_dir(&self, h: Host) -> PathBuf {
        self.dir.join(format!("etcd-{}", h.name()))
    }

    pub fn log(&self, h: Host) -> PathBuf {
        self.dir.join(format!("etcd-{}.log", h.name()))
    }

    fn spawn(&mut self, lab: &Lab, h: Host) {
        let (_, client, peer) = self.urls.iter().find(|(m, _, _)| *m == h).expect("member").clone();
        let initial: Vec<String> = self.urls.iter().map(|(m, _, p)| format!("{}={p}", member(*m))).collect();
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log(h)).unwrap();
        let child = lab
            .command(h, "/usr/bin/etcd")
            .args(["--name", &member(h), "--data-dir", self.data_dir(h).to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new", "--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd on {h:?}: {e}"));
        self.children.push((h, child));
    }

    /// `http://IP:2379,...` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.urls.iter().map(|(_, c, _)| c.clone()).collect()
    }

    /// `etcdctl ARGS` from inside `from` against every member (bounded by 10 s).
    pub fn ctl(&self, lab: &Lab, from: Host, args: &[&str]) -> Option<std::process::Output> {
        ctl_with(lab, from, &self.endpoints().join(","), args)
    }

    /// `etcdctl ARGS` from inside `h` against its own member only (bounded by 10 s).
    pub fn ctl_on(&self, lab: &Lab, h: Host, args: &[&str]) -> Option<std::process::Output> {
        let ep = self.urls.iter().find(|(m, _, _)| *m == h).map(|(_, c, _)| c.clone()).expect("a member host");
        ctl_with(lab, h, &ep, args)
    }

    /// `etcdctl ARGS` on each live member in turn (from its own host) until one succeeds: a killed
    /// or partitioned member never fails a read of the test.
    pub fn ctl_any(&self, lab: &Lab, args: &[&str]) -> Option<std::process::Output> {
        self.children.iter().map(|(h, _)| *h).find_map(|h| self.ctl_on(lab, h, args).filter(|o| o.status.success()))
    }

    /// Polls `etcdctl endpoint health` of `members` until all are healthy or `deadline` passes.
    pub fn wait_healthy(&self, lab: &Lab, members: &[Host], deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let healthy = members.iter().all(|h| {
                let ep = self.urls.iter().find(|(m, _, _)| m == h).map(|(_, c, _)| c.clone()).unwrap();
                lab.exec_timeout(
                    *h,
                    &["etcdctl", "--endpoints", &ep, "--dial-timeout", "2s", "endpoint", "health"],
                    Duration::from_secs(8),
                )
                .is_some_and(|o| o.status.success())
            });
            if healthy {
                return;
            }
            assert!(Instant::now() < end, "etcd members {members:?} not healthy after {deadline:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL the member on `h`.
    pub fn kill(&mut self, h: Host) {
        if let Some(i) = self.children.iter().position(|(m, _)| *m == h) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the member on `h` again (its data dir kept) and waits until it is healthy.
    pub fn restart(&mut self, lab: &Lab, h: Host) {
        self.kill(h);
        self.spawn(lab, h);
        self.wait_healthy(lab, &[h], Duration::from_secs(60));
    }

    /// Cuts the member on `h` from its peers (its peer port, both ways); clients still reach it.
    pub fn partition(&mut self, lab: &Lab, h: Host) {
        let rules = format!(
            "table inet ngl_etcd {{\n chain in {{ type filter hook input priority -200; policy accept; tcp dport {PEER_PORT} drop; tcp sport {PEER_PORT} drop; }}\n chain out {{ type filter hook output priority -200; policy accept; tcp dport {PEER_PORT} drop; tcp sport {PEER_PORT} drop; }}\n}}\n"
        );
        nft(&lab.netns(h), &rules);
        self.partitioned.push(lab.netns(h));
    }

    pub fn heal_partition(&mut self, lab: &Lab, h: Host) {
        let ns = lab.netns(h);
        self.partitioned.retain(|n| *n != ns);
        heal(&ns);
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        MEMBERS
            .iter()
            .map(|h| {
                let t = fs::read_to_string(self.log(*h)).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                format!("--- etcd {}:\n{}", h.name(), lines[lines.len().saturating_sub(15)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn heal(netns: &str) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "delete", "table", "inet", "ngl_etcd"])
        .status();
}

fn ctl_with(lab: &Lab, from: Host, endpoints: &str, args: &[&str]) -> Option<std::process::Output> {
    let mut cmd = vec!["etcdctl", "--endpoints", endpoints, "--dial-timeout", "2s", "--command-timeout", "3s"];
    cmd.extend_from_slice(args);
    lab.exec_timeout(from, &cmd, Duration::from_secs(10))
}

/// Loads nftables `rules` in network namespace `netns` (panics on failure).
pub fn nft(netns: &str, rules: &str) {
    use std::io::Write as _;
    let mut c = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip netns exec nft");
    c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "nft -f in {netns} failed:\n{rules}");
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for ns in &self.partitioned {
            heal(ns);
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in MEMBERS {
            let _ = fs::remove_dir_all(self.data_dir(h));
        }
    }
}
