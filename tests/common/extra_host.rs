//! More web hosts for a lab (the web farm's tests need three web nodes; `scripts/lab.sh` makes one):
//! a network namespace plugged into the lab's switch at `10.203.X.<octet>`, with its own mount
//! namespace set up like the lab's `web` host in sshfs mode (tmpfs `/run` and `/mnt`, `/mnt/nfs`,
//! the lab's `mount.nfs` stand-in over `/usr/sbin`). Faults are nftables tables of its own
//! (`cut_from`), never the lab's. Dropping it kills everything in it and deletes the namespace.
//!
//! Include with `#[path = "common/extra_host.rs"] mod extra_host;` (needs `lab`).

#![allow(dead_code)] // shared by several test crates, each using part of it

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::lab::{netns_pids, output_with_timeout, Lab, HOST_PATH};

pub struct ExtraHost {
    pub name: String,
    pub netns: String,
    pub ip: String,
    holder: Child,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl ExtraHost {
    /// Host `name` (1-3 chars of `[a-z0-9]`) at `10.203.X.<octet>` (6 and up: 2-5 are the lab's).
    pub fn new(lab: &Lab, name: &str, octet: u8) -> ExtraHost {
        assert!(octet > 5, "octets 2-5 belong to the lab's hosts");
        assert_eq!(lab.web_kind(), crate::lab::WebKind::Sshfs, "extra web hosts use the sshfs stand-in");
        let netns = format!("ngl-{}-{name}", lab.name());
        let sw = lab.switch_netns();
        let port = format!("sw-{name}");
        let addr = format!("10.203.{}.{octet}", lab.index());
        // leftovers of a crashed run (usually none: quiet)
        let _ = Command::new("ip").args(["netns", "delete", &netns]).output();
        ip(&["netns", "add", &netns]);
        ip(&["netns", "exec", &netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let _ = Command::new("ip").args(["-n", &sw, "link", "del", &port]).output();
        ip(&["link", "add", "eth0", "netns", &netns, "type", "veth", "peer", "name", &port, "netns", &sw]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &sw, "link", "set", &port, "up"]);
        ip(&["-n", &netns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        let holder = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["--", "unshare", "-m", "--propagation", "private", "--", "sleep", "infinity"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("namespace holder");
        let host = ExtraHost { name: name.to_owned(), netns, ip: addr, holder };
        let sbin = lab.run_dir(crate::lab::Host::Web).join("sbin");
        let setup = format!(
            "umount -l /run/netns 2>/dev/null || true\n\
             mount -t tmpfs -o mode=0755,size=16m lab-run /run\n\
             mkdir -p /run/lock /run/mount\n\
             mount -t tmpfs -o mode=0755,size=1m lab-mnt /mnt\n\
             mkdir -p /mnt/nfs\n\
             mount -t overlay lab-sbin -o lowerdir={sbin}:/usr/sbin /usr/sbin\n\
             if [ ! -L /sbin ]; then mount -t overlay lab-sbin -o lowerdir={sbin}:/sbin /sbin; fi\n",
            sbin = sbin.display()
        );
        // the holder must have unshared before its mount namespace is set up
        crate::lab::wait_until("the extra host's mount namespace", Duration::from_secs(10), || {
            let me = std::fs::read_link("/proc/self/ns/mnt").ok();
            let it = std::fs::read_link(format!("/proc/{}/ns/mnt", host.holder.id())).ok();
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", host.holder.id())).unwrap_or_default();
            it.is_some() && it != me && comm.trim() == "sleep"
        });
        let out = host.command("sh").args(["-ec", &setup]).output().unwrap();
        assert!(out.status.success(), "setting up {name}: {}", String::from_utf8_lossy(&out.stderr));
        host
    }

    /// `program` inside the host's network and mount namespaces (the spawned pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.holder.id().to_string()).args(["-m", "-n", "--wd=.", "--"]).arg(program);
        c.env("PATH", HOST_PATH);
        c
    }

    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Option<std::process::Output> {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]);
        output_with_timeout(&mut c, timeout).ok()
    }

    /// The host's mountinfo (never touches a mount).
    pub fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.holder.id())).unwrap_or_default()
    }

    /// Drops every packet to and from `ips` (a cable to those hosts cut); `heal_cut` undoes it.
    pub fn cut_from(&self, ips: &[String]) {
        cut(&self.netns, ips);
    }

    pub fn heal_cut(&self) {
        heal_cut(&self.netns);
    }

    /// Drops every TCP packet to and from `port` on other hosts (e.g. etcd's client port: cut off
    /// from etcd, not from the NFS servers on the same hosts); `heal_cut` undoes it.
    pub fn cut_port(&self, port: u16) {
        let rules = format!(
            "table inet ngl_farm {{\n chain in {{ type filter hook input priority -250; policy accept; tcp sport {port} drop; }}\n chain out {{ type filter hook output priority -250; policy accept; tcp dport {port} drop; }}\n}}\n"
        );
        crate::etcd::nft(&self.netns, &rules);
    }
}

/// Drops every packet between network namespace `netns` and `ips` (table `ngl_farm`, apart from
/// the lab's own fault table).
pub fn cut(netns: &str, ips: &[String]) {
    let set = ips.join(", ");
    let rules = format!(
        "table inet ngl_farm {{\n chain in {{ type filter hook input priority -250; policy accept; ip saddr {{ {set} }} drop; }}\n chain out {{ type filter hook output priority -250; policy accept; ip daddr {{ {set} }} drop; }}\n}}\n"
    );
    crate::etcd::nft(netns, &rules);
}

pub fn heal_cut(netns: &str) {
    let _ = Command::new("ip").args(["netns", "exec", netns, "nft", "delete", "table", "inet", "ngl_farm"]).status();
}

impl Drop for ExtraHost {
    fn drop(&mut self) {
        let path = format!("/run/netns/{}", self.netns);
        for pid in netns_pids(&path) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // mounts die with the mount namespace; the veth pair goes with the network namespace
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
    }
}
