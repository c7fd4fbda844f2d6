//! A storage cluster in the lab for the agent tests: `nfs-guard storage` as an agent on both storage
//! hosts (each pushing to the other's rsync daemon while active), and `nfs-guard web` driving them
//! (`[web.agents]`), all with the real binaries, rsync daemons and NFS servers.

#![allow(dead_code)] // shared by several test crates, each using part of it

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::{wait_until, Host, Lab};
use crate::storage_common::{self, Node};
use crate::web_node::WebNode;

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");
pub const API_PORT: u16 = 7451;

pub struct Cluster {
    pub dir: PathBuf,
    pub secret: PathBuf,
    pub agents: [Option<Node>; 2],
    pub web: WebNode,
}

fn index(h: Host) -> usize {
    usize::from(h == Host::Backup)
}

fn other(h: Host) -> Host {
    if h == Host::Primary {
        Host::Backup
    } else {
        Host::Primary
    }
}

pub fn api(lab: &Lab, h: Host) -> String {
    format!("http://{}:{API_PORT}", lab.ip(h))
}

impl Cluster {
    /// Configs for both agents and the web node under `dir` (inside the lab's state dir, so a
    /// user-mode-linux web host sees them); nothing started. `storage_extra` goes into `[storage]`,
    /// `agent_extra` into `[storage.agent]`.
    pub fn new(lab: &Lab, dir: &Path, storage_extra: &str, agent_extra: &str) -> Cluster {
        let secret = dir.join("agent.secret");
        fs::write(&secret, "lab-secret-0123456789abcdef\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        for h in Host::STORAGE {
            let peer = other(h);
            let text = format!(
                "state_dir = \"{state}\"\n[storage]\nwindow = \"20ms\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\n\
                 {storage_extra}\n\
                 [storage.agent]\nserver = \"{me}\"\nlisten = \"{ip}:{API_PORT}\"\nsecret_file = \"{secret}\"\n\
                 peer = \"{peer}\"\npeer_api = \"{peer_api}\"\ntimeout = \"1s\"\n{agent_extra}\n\
                 [[storage.trees]]\npath = \"{export}\"\n\
                 [[storage.remotes]]\nname = \"{peer}\"\nhost = \"{peer_ip}\"\nmodule = \"{module}\"\n\
                 connect_timeout = \"1s\"\nio_timeout = \"5s\"\n{auth}\n",
                state = dir.join(format!("{}-state", h.name())).display(),
                me = h.name(),
                ip = lab.ip(h),
                secret = secret.display(),
                peer = peer.name(),
                peer_api = api(lab, peer),
                export = Lab::EXPORT,
                peer_ip = lab.ip(peer),
                module = Lab::RSYNC_MODULE,
                auth = lab.rsync_auth_toml(),
            );
            fs::write(dir.join(format!("{}.toml", h.name())), text).unwrap();
        }
        let web_extra = format!(
            "[web.agents]\nprimary = \"{}\"\nbackup = \"{}\"\nsecret_file = \"{}\"\ntimeout = \"1s\"\ndrain_timeout = \"60s\"\n",
            api(lab, Host::Primary),
            api(lab, Host::Backup),
            secret.display()
        );
        let web = WebNode::new(lab, dir, &web_extra);
        Cluster { dir: dir.to_owned(), secret, agents: [None, None], web }
    }

    /// [`Cluster::new`], then both agents and the web node started: the backup equal to the
    /// primary and the web node serving the primary.
    pub fn running(lab: &Lab, dir: &Path, storage_extra: &str, agent_extra: &str) -> Cluster {
        let mut c = Cluster::new(lab, dir, storage_extra, agent_extra);
        c.start(lab);
        c
    }

    /// Starts both agents and then the web node (see [`Cluster::running`]).
    pub fn start(&mut self, lab: &Lab) {
        self.start_agent(lab, Host::Primary);
        self.start_agent(lab, Host::Backup);
        let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
        storage_common::wait_same(&p, &b, Duration::from_secs(30), None);
        self.web.start(lab);
        self.wait("the web node serves the primary", Duration::from_secs(30), || self.web.active_is("primary"));
    }

    pub fn state(&self, h: Host) -> PathBuf {
        self.dir.join(format!("{}-state", h.name()))
    }

    pub fn log(&self, h: Host) -> PathBuf {
        self.dir.join(format!("{}.log", h.name()))
    }

    /// Starts the agent of `h` and waits until its API answers.
    pub fn start_agent(&mut self, lab: &Lab, h: Host) {
        let cfg = self.dir.join(format!("{}.toml", h.name()));
        self.agents[index(h)] = Some(Node::spawn(lab.command(h, BIN), &cfg, &self.log(h)));
        wait_until(&format!("the {} agent's API", h.name()), Duration::from_secs(20), || {
            Cluster::report(lab, h).is_some()
        });
    }

    /// The pid of `h`'s agent (nsenter execs it: the child is the agent).
    pub fn agent_pid(&self, h: Host) -> u32 {
        self.agents[index(h)].as_ref().expect("agent running").child.id()
    }

    pub fn kill_agent(&mut self, h: Host) {
        if let Some(mut n) = self.agents[index(h)].take() {
            n.kill9();
        }
    }

    /// `GET /v1/role` of `h`'s agent, from inside `h` (bounded).
    pub fn report(lab: &Lab, h: Host) -> Option<serde_json::Value> {
        let url = format!("{}/v1/role", api(lab, h));
        let out = lab.exec_timeout(h, &["curl", "-sf", "--max-time", "2", &url], Duration::from_secs(5))?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `curl` from `from` to `h`'s agent with the given method, path, body and secret; (HTTP code, body).
    pub fn call(lab: &Lab, from: Host, h: Host, path: &str, body: &str, secret: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", api(lab, h));
        let header = format!("x-nfs-guard-secret: {}", secret.unwrap_or(""));
        let mut argv = vec!["curl", "-s", "--max-time", "5", "-w", "\\ncode=%{http_code}", "-X", "POST"];
        argv.extend(["-H", "content-type: application/json", "--data-binary", body, &url]);
        if secret.is_some() {
            argv.extend(["-H", &header]);
        }
        let out = lab.exec_timeout(from, &argv, Duration::from_secs(10)).expect("curl hung");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once("\ncode=").unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn epoch(lab: &Lab, h: Host) -> Option<u64> {
        Cluster::report(lab, h).and_then(|r| r["record"]["epoch"].as_u64())
    }

    /// [`wait_until`] that shows every log when it times out.
    pub fn wait(&self, what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + deadline;
        while !cond() {
            assert!(
                std::time::Instant::now() < end,
                "timed out after {deadline:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let mut out: Vec<String> = Host::STORAGE
            .iter()
            .map(|h| {
                format!("--- {} agent log:\n{}", h.name(), tail(&fs::read_to_string(self.log(*h)).unwrap_or_default()))
            })
            .collect();
        out.push(format!("--- web log:\n{}", self.web.log_tail()));
        out.join("\n")
    }
}

fn tail(t: &str) -> String {
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Runs `script` with `sh -c` in the web host (bounded); panics with its stderr when it fails.
pub fn on_web(lab: &Lab, script: &str) {
    let out = lab
        .exec_timeout(Host::Web, &["sh", "-c", script], Duration::from_secs(30))
        .expect("command through the mount hung");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}
