//! The web farm's lab nodes (`[cluster]`, docs/farm.md), shared by `tests/farm_lab.rs` and the
//! benchmark `tests/farm_bench.rs`: where a web node runs (the lab's `web` host or an extra host),
//! `nfs-guard web` with its config (with or without `[cluster]`, optionally mailing the lab's SMTP
//! server), the storage agents and etcd, and reads of the farm's record.
//!
//! Include with `#[path = "common/farm.rs"] mod farm;` (needs `lab`, `etcd`, `extra_host`,
//! `cluster`, `storage_common`, `web_node`).

#![allow(dead_code)] // shared by several test crates, each using part of it

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{self, Cluster};
use crate::etcd::Etcd;
use crate::extra_host::{self, ExtraHost};
use crate::lab::{self, Host, Lab};

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");
/// The web nodes' check interval and `fall`: the failover bound is `FALL x INTERVAL + 2 s + one
/// etcd round (one interval)`, plus the stand-in's unmount and sshfs mount.
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const FALL: u32 = 3;

/// Where a web node runs.
pub enum Place<'a> {
    /// The lab's own `web` host (also an etcd member).
    LabWeb(&'a Lab),
    Extra(&'a ExtraHost),
}

impl Place<'_> {
    pub fn command(&self, program: &str) -> Command {
        match self {
            Place::LabWeb(lab) => lab.command(Host::Web, program),
            Place::Extra(h) => h.command(program),
        }
    }

    pub fn mountinfo(&self) -> String {
        match self {
            Place::LabWeb(lab) => lab.web_mountinfo(),
            Place::Extra(h) => h.mountinfo(),
        }
    }

    /// What is mounted at /mnt/nfs (the topmost mount), from mountinfo.
    pub fn mount_source(&self) -> Option<String> {
        let mut source = None;
        for line in self.mountinfo().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
            if f.get(4) == Some(&Lab::WEB_MOUNT) {
                source = f.get(sep + 2).map(|s| (*s).to_owned());
            }
        }
        source
    }

    /// Drops every packet between this host and `ips`.
    pub fn cut_from(&self, ips: &[String]) {
        match self {
            Place::LabWeb(lab) => extra_host::cut(&lab.netns(Host::Web), ips),
            Place::Extra(h) => h.cut_from(ips),
        }
    }

    pub fn heal_cut(&self) {
        match self {
            Place::LabWeb(lab) => extra_host::heal_cut(&lab.netns(Host::Web)),
            Place::Extra(h) => h.heal_cut(),
        }
    }

    /// `sh -c script` in the host, bounded; panics on failure.
    pub fn sh(&self, script: &str) {
        let mut c = self.command("sh");
        c.args(["-c", script]);
        let out = lab::output_with_timeout(&mut c, Duration::from_secs(30)).expect("command through the mount hung");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `nfs-guard web` with `[cluster]`, config and state under the test's dir.
pub struct FarmNode<'a> {
    pub name: String,
    pub place: Place<'a>,
    pub config: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl<'a> FarmNode<'a> {
    /// A node named `name` with its config and state under `dir`: a farm member when `etcd` is
    /// given (`[cluster]`), else a single node driving the agents alone; `extra` is appended to the
    /// config (e.g. an `[alert]` section; `{node}` in it becomes `name`).
    pub fn new(
        lab: &Lab,
        dir: &Path,
        name: &str,
        place: Place<'a>,
        secret: &Path,
        etcd: Option<&Etcd>,
        extra: &str,
    ) -> FarmNode<'a> {
        let state = dir.join(format!("{name}-state"));
        let cluster = etcd.map_or_else(String::new, |etcd| {
            let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
            format!("[cluster]\nendpoints = [{}]\nname = \"{name}\"\nlease_ttl = \"3s\"\n", endpoints.join(", "))
        });
        let text = format!(
            r#"state_dir = "{state}"
[web]
mount_point = "{mp}"
fstype = "nfs"
options = "vers=3,soft,timeo=10"
interval = "{interval}s"
fall = {FALL}
rise = 2
probe_timeout = "800ms"
mount_timeout = "10s"
hold_down = "1s"
[web.primary]
address = "{p}"
export = "{export}"
[web.backup]
address = "{b}"
export = "{export}"
[web.agents]
primary = "{pa}"
backup = "{ba}"
secret_file = "{secret}"
timeout = "1s"
drain_timeout = "60s"
{cluster}{extra}"#,
            extra = extra.replace("{node}", name),
            state = state.display(),
            mp = Lab::WEB_MOUNT,
            interval = INTERVAL.as_secs(),
            p = lab.ip(Host::Primary),
            b = lab.ip(Host::Backup),
            export = Lab::EXPORT,
            pa = cluster::api(lab, Host::Primary),
            ba = cluster::api(lab, Host::Backup),
            secret = secret.display(),
        );
        let config = dir.join(format!("{name}.toml"));
        fs::write(&config, text).unwrap();
        FarmNode { name: name.to_owned(), place, config, state, log: dir.join(format!("{name}.log")), child: None }
    }

    pub fn start(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut c = self.place.command(BIN);
        c.args(["--config", self.config.to_str().unwrap(), "--log-format", "human", "web"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(c.spawn().unwrap());
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn status(&self, which: &str) -> serde_json::Value {
        let text = fs::read_to_string(self.state.join(format!("{which}.status.json"))).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Serving `server` (the state machine says so, in a steady phase) and mounted from it.
    pub fn serves(&self, lab: &Lab, server: Host) -> bool {
        let s = self.status("web");
        s["active"] == server.name()
            && s["phase"]["phase"] == "serving"
            && self.place.mount_source().as_deref() == Some(lab.nfs_source(server).as_str())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for FarmNode<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn tails(nodes: &[FarmNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            let t = n.log_text();
            let lines: Vec<&str> = t.lines().collect();
            format!("--- {} log:\n{}", n.name, lines[lines.len().saturating_sub(40)..].join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn wait_all(
    what: &str,
    deadline: Duration,
    nodes: &[FarmNode],
    mut cond: impl FnMut(&FarmNode) -> bool,
) -> Duration {
    let start = Instant::now();
    while !nodes.iter().all(&mut cond) {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}\n{}", tails(nodes));
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Both agents running (the trees equal) and the 3-member etcd cluster healthy.
pub fn storage_and_etcd(lab: &Lab, dir: &Path) -> (Cluster, Etcd) {
    let mut storage = Cluster::new(lab, dir, "", "");
    storage.start_agent(lab, Host::Primary);
    storage.start_agent(lab, Host::Backup);
    (storage, Etcd::start(lab, dir))
}

/// Web nodes w1 (the lab's web host), w2 and w3 (`extra`) started, every one serving the primary,
/// and a leader elected; `config` is appended to each node's config (e.g. an `[alert]` section).
pub fn start_farm<'a>(
    lab: &'a Lab,
    dir: &Path,
    etcd: &Etcd,
    storage: &Cluster,
    extra: [&'a ExtraHost; 2],
    config: &str,
) -> Vec<FarmNode<'a>> {
    let places = [Place::LabWeb(lab), Place::Extra(extra[0]), Place::Extra(extra[1])];
    let mut nodes: Vec<FarmNode> = ["w1", "w2", "w3"]
        .into_iter()
        .zip(places)
        .map(|(name, place)| FarmNode::new(lab, dir, name, place, &storage.secret, Some(etcd), config))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    wait_all("every node serving the primary", Duration::from_secs(60), &nodes, |n| n.serves(lab, Host::Primary));
    wait_all("a farm leader", Duration::from_secs(30), &nodes, |n| n.status("farm")["leader"].is_string());
    nodes
}

/// The name of the farm's leader as `node` last read it.
pub fn leader(node: &FarmNode) -> Option<String> {
    node.status("farm")["leader"].as_str().map(str::to_owned)
}

/// `(active, epoch, version)` of the farm's record in etcd (version: times it was written).
pub fn record(lab: &Lab, etcd: &Etcd) -> Option<(String, u64, u64)> {
    let out = etcd.ctl_any(lab, &["get", "/nfs-guard/record", "-w", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let kv = &v["kvs"][0];
    let value = kv["value"].as_str()?;
    let bytes = base64_decode(value);
    let r: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((r["active"].as_str()?.to_owned(), r["epoch"].as_u64()?, kv["version"].as_u64()?))
}

/// etcdctl's JSON output holds values in standard base64.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (u32::from(val(*c)) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The record says a failback is under way (nodes moving, the backup's agent still active).
pub fn switching(lab: &Lab, etcd: &Etcd) -> bool {
    let Some(out) = etcd.ctl_any(lab, &["get", "--print-value-only", "/nfs-guard/record"]) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|r| r["switching"] == true)
}

/// The `[alert]` section that mails the lab's SMTP server (port 25, no TLS) with the node's name as
/// its host name (`{node}` is replaced by [`FarmNode::new`]).
pub fn alert_section(lab: &Lab) -> String {
    format!(
        "[alert]\nsmtp_host = \"{}\"\nsecurity = \"none\"\nfrom = \"nfs-guard <nfs-guard@lab.example>\"\n\
         to = [\"ops@lab.example\"]\nhostname = \"{{node}}\"\nconnect_timeout = \"1s\"\ncommand_timeout = \"2s\"\n\
         retry_max = \"2s\"\n",
        lab.ip(Host::Mail)
    )
}

/// The subjects of the mails the lab received, in arrival order (folded header lines joined).
pub fn subjects(lab: &Lab) -> Vec<String> {
    lab.mails()
        .iter()
        .filter_map(|raw| {
            let raw = raw.replace("\r\n", "\n");
            let head = raw.split_once("\n\n").map_or(raw.as_str(), |(h, _)| h).to_owned();
            let mut subject: Option<String> = None;
            let mut in_subject = false;
            for line in head.lines() {
                if in_subject && line.starts_with([' ', '\t']) {
                    if let Some(s) = subject.as_mut() {
                        s.push(' ');
                        s.push_str(line.trim());
                    }
                    continue;
                }
                in_subject = false;
                if let Some(v) = line.strip_prefix("Subject:") {
                    subject = Some(v.trim().to_owned());
                    in_subject = true;
                }
            }
            subject
        })
        .collect()
}

/// How many mails node `node` sent whose subject contains any of `needles` (a digest's subject
/// names its kind and its latest title).
pub fn mails_from(lab: &Lab, node: &str, needles: &[&str]) -> usize {
    let from = format!("[nfs-guard] {node} web: ");
    subjects(lab).iter().filter(|s| s.starts_with(&from) && needles.iter().any(|n| s.contains(n))).count()
}
