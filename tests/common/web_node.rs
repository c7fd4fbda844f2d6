//! `nfs-guard web` in the lab's `web` host for the lab tests that drive whole failbacks (chaos,
//! failback guard, freeze): a config with the reverse sync into the primary's rsync daemon, start,
//! `kill -9`, and `status --json` (bounded).

#![allow(dead_code)] // shared by several test crates, each using part of it

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::lab::{output_with_timeout, Host, Lab};

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

pub struct WebNode {
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl WebNode {
    /// A node with its config and state under `dir`; `web_extra` goes inside `[web]` (e.g. `rsync`).
    pub fn new(lab: &Lab, dir: &Path, web_extra: &str) -> WebNode {
        let config = dir.join("web.toml");
        let text = format!(
            r#"state_dir = "{state}"
[web]
mount_point = "{mp}"
fstype = "nfs"
options = "vers=3,soft,timeo=10"
interval = "1s"
fall = 3
rise = 2
probe_timeout = "800ms"
mount_timeout = "10s"
hold_down = "1s"
{web_extra}
[web.primary]
address = "{p}"
export = "{export}"
[web.backup]
address = "{b}"
export = "{export}"
[web.reverse_sync]
retry_initial = "1s"
retry_max = "3s"
timeout = "120s"
[web.reverse_sync.target]
host = "{p}"
module = "{module}"
user = "{user}"
password_file = "{pass}"
connect_timeout = "2s"
io_timeout = "30s"
"#,
            state = dir.join("web-state").display(),
            mp = Lab::WEB_MOUNT,
            p = lab.ip(Host::Primary),
            b = lab.ip(Host::Backup),
            export = Lab::EXPORT,
            module = Lab::RSYNC_MODULE,
            user = Lab::RSYNC_USER,
            pass = lab.rsync_password_file().display(),
        );
        fs::write(&config, text).unwrap();
        WebNode { config, log: dir.join("web.log"), child: None }
    }

    /// Replaces the mount options of the config (the stand-in's `vers=3,soft,timeo=10` by default),
    /// before [`WebNode::start`]; e.g. a hard mount on the kernel client.
    pub fn set_mount_options(&self, options: &str) {
        let text = fs::read_to_string(&self.config).unwrap();
        let with = text.replace(r#"options = "vers=3,soft,timeo=10""#, &format!(r#"options = "{options}""#));
        assert_ne!(with, text, "the config's mount options changed: {text}");
        fs::write(&self.config, with).unwrap();
    }

    /// Starts the daemon inside the web host, appending to the log.
    pub fn start(&mut self, lab: &Lab) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        self.child = Some(
            lab.command(Host::Web, BIN)
                .args(["--config", self.config.to_str().unwrap(), "--log-format", "human", "web"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The web document of `nfs-guard status --json` from the root namespace; it must answer within 5 s.
    pub fn status(&self) -> serde_json::Value {
        let mut c = Command::new(BIN);
        c.args(["--config", self.config.to_str().unwrap(), "status", "--json"]);
        let out = output_with_timeout(&mut c, Duration::from_secs(5)).expect("status did not answer in 5 s");
        serde_json::from_str::<serde_json::Value>(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_default()
            ["web"]
            .clone()
    }

    pub fn active_is(&self, server: &str) -> bool {
        self.status()["active"] == server
    }

    /// Serving the primary with no reverse sync owed and no work in progress.
    pub fn serving_primary_settled(&self) -> bool {
        let s = self.status();
        s["active"] == "primary" && s["pending_reverse_sync"] == false && s["phase"].to_string().contains("serving")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for WebNode {
    fn drop(&mut self) {
        self.kill9();
    }
}
