//! Status files: each role writes `<state_dir>/<role>.status.json` (atomically, without fsync: a crash
//! may lose the latest, readers never see a torn one) whenever its state changes (the web role also
//! every few seconds, so the age of its last check shows); `nfs-guard status` reads them without
//! talking to the daemons, so it answers even while a daemon is busy or a mount is hung.
//!
//! `nfs-guard status` prints a short summary for people ([`render_human`]) or, with `--json`, one
//! versioned document for scripts ([`render_json`], schema [`SCHEMA`], documented in README), and
//! exits with the [`Verdict`]'s code: 0 healthy, 1 degraded, 2 failed over or down. Reading is
//! [`gather`] (files, the outbox, /proc); everything after it is pure, with `now` passed in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::sys::fsutil::{read_capped_string, write_atomic_nosync};

/// Larger status files are not ours.
const MAX_STATUS_BYTES: u64 = 1 << 20;

/// `farm`: the web farm's record, leader and every node's served epoch, as this node last read them.
pub const ROLES: [&str; 3] = ["web", "farm", "storage"];

/// Version of the `--json` document; bumped only when a field changes meaning or goes away.
pub const SCHEMA: u32 = 1;

/// A web status older than this means the daemon (or timer) stopped updating it.
pub const WEB_STALE_MS: u64 = 60_000;

/// Replication lag past this is degraded.
pub const LAG_DEGRADED_MS: u64 = 60_000;

pub fn path(state_dir: &Path, role: &str) -> PathBuf {
    state_dir.join(format!("{role}.status.json"))
}

/// Writes the status document of `role`. Failures are logged, never fatal: status is for humans.
pub fn write<T: Serialize>(state_dir: &Path, role: &str, status: &T) {
    let p = path(state_dir, role);
    let result = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomic_nosync(&p, &bytes));
    if let Err(e) = result {
        tracing::warn!(path = %p.display(), error = %e, "cannot write status file");
    }
}

/// Wall-clock ms since which changes have waited, for a queue that has held them `lag` (`None`: none).
pub fn behind_since_ms(lag: Duration) -> Option<u64> {
    (!lag.is_zero()).then(|| now_ms().saturating_sub(u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)))
}

pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// One role's status document as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Missing,
    Unreadable(String),
    Read(Value),
}

/// Everything `nfs-guard status` looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Docs {
    pub state_dir: PathBuf,
    pub web: Doc,
    /// A farm node's view of the farm (`[cluster]`).
    pub farm: Doc,
    pub storage: Doc,
    /// The storage daemon's process still exists (`None`: unknown or no storage status).
    pub storage_running: Option<bool>,
    /// Alert messages waiting in the outbox (`None`: no outbox).
    pub alerts_waiting: Option<usize>,
}

/// How the node is, for a monitoring check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Healthy,
    Degraded,
    /// Failed over, nothing mounted, or a role down.
    Down,
}

impl Level {
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Healthy => 0,
            Level::Degraded => 1,
            Level::Down => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub level: Level,
    /// Why it is not healthy, most serious first.
    pub reasons: Vec<String>,
}

fn read_doc(state_dir: &Path, role: &str) -> Doc {
    let p = path(state_dir, role);
    // bounded and non-blocking: a FIFO or /dev/zero planted here never hangs `nfs-guard status`
    match read_capped_string(&p, MAX_STATUS_BYTES) {
        Ok(t) => match serde_json::from_str::<Value>(&t) {
            Ok(v) if v.is_object() => Doc::Read(v),
            Ok(_) => Doc::Unreadable(format!("{}: not a JSON object", p.display())),
            Err(e) => Doc::Unreadable(format!("{}: {e}", p.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Doc::Missing,
        Err(e) => Doc::Unreadable(format!("{}: {e}", p.display())),
    }
}

/// Reads the status files, the alert outbox and whether the storage daemon runs.
pub fn gather(state_dir: &Path) -> Docs {
    let web = read_doc(state_dir, "web");
    let farm = read_doc(state_dir, "farm");
    let storage = read_doc(state_dir, "storage");
    let storage_running = match &storage {
        Doc::Read(v) => v["pid"].as_u64().map(|pid| Path::new(&format!("/proc/{pid}")).exists()),
        _ => None,
    };
    let alerts_waiting = std::fs::read_dir(state_dir.join("outbox").join("queue"))
        .ok()
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "json")).count());
    Docs { state_dir: state_dir.to_owned(), web, farm, storage, storage_running, alerts_waiting }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The phase name and its detail (e.g. `("mounting", "to backup")`) of the web document's `phase`.
fn phase(web: &Value) -> (String, String) {
    let p = &web["phase"];
    // the state file's name of a reverse sync, as metrics and `last_transition` call it
    let name = match text(&p["phase"]) {
        "resyncing" => "reverse-syncing".to_owned(),
        other => other.to_owned(),
    };
    let detail = match (p.get("server"), p.get("to"), p.get("attempt")) {
        (Some(s), _, _) => text(s).to_owned(),
        (_, Some(t), _) => format!("to {}", text(t)),
        (_, _, Some(a)) => format!("attempt {a}"),
        _ => String::new(),
    };
    (name, detail)
}

fn servers(web: &Value) -> Vec<&Value> {
    web["servers"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn lag_ms(remote: &Value, now_ms: u64) -> u64 {
    remote["behind_since_ms"].as_u64().map_or(0, |s| now_ms.saturating_sub(s))
}

/// Pure: the node's verdict from what [`gather`] read.
pub fn assess(d: &Docs, now_ms: u64) -> Verdict {
    let mut found: Vec<(Level, String)> = Vec::new();
    let mut add = |l: Level, why: String| found.push((l, why));
    if matches!((&d.web, &d.storage), (Doc::Missing, Doc::Missing)) {
        add(Level::Down, format!("no status under {}: is nfs-guard web or storage running?", d.state_dir.display()));
    }
    for (role, doc) in [("web", &d.web), ("storage", &d.storage)] {
        if let Doc::Unreadable(e) = doc {
            add(Level::Degraded, format!("{role} status unreadable: {e}"));
        }
    }
    if let Doc::Read(w) = &d.web {
        match text(&w["active"]) {
            "primary" => {}
            "backup" => add(Level::Down, "failed over: serving the backup".into()),
            _ => {
                let (name, detail) = phase(w);
                add(
                    Level::Down,
                    if name == "mounting" {
                        // a failover (or a first mount) under way: say where it is going
                        format!("switching {detail}: nothing served until it is mounted")
                    } else {
                        format!("nothing mounted ({name})")
                    },
                );
            }
        }
        for s in servers(w) {
            if text(&s["state"]) != "up" {
                add(Level::Degraded, format!("{} is {}", text(&s["name"]), text(&s["state"])));
            } else if s["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
                add(Level::Degraded, format!("{}'s last check failed", text(&s["name"])));
            }
        }
        if w["pending_reverse_sync"] == true {
            add(Level::Degraded, "a reverse sync backup -> primary is pending".into());
        }
        if let Some(e) = w["pending_reconcile_epoch"].as_u64() {
            add(Level::Degraded, format!("the backup's writes of epoch {e} still need reconciling"));
        }
        if w["hold"].is_object() || w["hold"].as_str().is_some_and(|h| h != "none") {
            add(Level::Degraded, "operator hold: no automatic failover or failback".into());
        }
        if let Some(age) = w["written_ms"].as_u64().map(|t| now_ms.saturating_sub(t)).filter(|a| *a > WEB_STALE_MS) {
            add(Level::Degraded, format!("web status not updated for {} (is nfs-guard web running?)", ago(age)));
        }
    }
    if let Doc::Read(s) = &d.storage {
        if d.storage_running == Some(false) {
            add(Level::Down, "nfs-guard storage is not running".into());
        }
        for r in s["remotes"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let lag = lag_ms(r, now_ms);
            if lag > LAG_DEGRADED_MS {
                add(Level::Degraded, format!("replication to {} is {} behind", text(&r["name"]), ago(lag)));
            } else if text(&r["state"]) == "retrying" {
                add(Level::Degraded, format!("pushes to {} are failing", text(&r["name"])));
            }
        }
    }
    if let Some(n) = d.alerts_waiting.filter(|n| *n > 0) {
        add(Level::Degraded, format!("{n} alert(s) waiting in the outbox"));
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Verdict {
        level: found.first().map_or(Level::Healthy, |f| f.0),
        reasons: found.into_iter().map(|(_, w)| w).collect(),
    }
}

/// `3s`, `4m 10s`, `2h 5m`, `3d 4h`: an age, to the second, two units at most.
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `2026-11-29 04:12:03 UTC`.
fn at(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(0))
        .map_or_else(|| "?".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn when(ms: Option<u64>, now_ms: u64) -> String {
    ms.map_or_else(|| "?".into(), |t| format!("{} ({} ago)", at(t), ago(now_ms.saturating_sub(t))))
}

/// ANSI colour, only when `on`.
struct Paint {
    on: bool,
}

impl Paint {
    fn level(&self, l: Level, s: &str) -> String {
        let code = match l {
            Level::Healthy => "32",
            Level::Degraded => "33",
            Level::Down => "1;31",
        };
        self.wrap(code, s)
    }

    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

fn render_web(w: &Value, now_ms: u64, p: &Paint, out: &mut String) {
    let (ph, detail) = phase(w);
    let last = &w["last_transition"];
    let since = last["at_ms"].as_u64();
    let active = text(&w["active"]);
    let headline = match active {
        "primary" => p.level(Level::Healthy, "serving the primary"),
        "backup" => p.level(Level::Down, "FAILED OVER: serving the backup"),
        _ => p.level(Level::Down, "NOTHING MOUNTED"),
    };
    let epoch = w["epoch"].as_u64().map_or(String::new(), |e| format!(", epoch {e}"));
    let _ = writeln!(out, "web: {headline} ({}{epoch})", text(&w["mount_point"]));
    let work = if detail.is_empty() || ph == "serving" { ph.clone() } else { format!("{ph} {detail}") };
    match since {
        Some(_) => {
            let _ = writeln!(out, "  phase: {work} since {}", when(since, now_ms));
            let _ = writeln!(
                out,
                "  last change: {} -> {}: {}",
                text(&last["from"]),
                text(&last["to"]),
                text(&last["why"])
            );
        }
        None => {
            let _ = writeln!(out, "  phase: {work} (no change since the daemon started)");
        }
    }
    let checked = w["checked_ms"].as_array();
    for (i, s) in servers(w).into_iter().enumerate() {
        let name = text(&s["name"]);
        let state = text(&s["state"]);
        let level = match state {
            "up" if s["consecutive_failures"].as_u64().unwrap_or(0) == 0 => Level::Healthy,
            "up" | "unknown" => Level::Degraded,
            _ => Level::Down,
        };
        let mut line = format!("  {name:<8} {:<24} {}", text(&s["source"]), p.level(level, &state.to_uppercase()));
        if let Some(t) = s["state_since_ms"].as_u64() {
            let _ = write!(line, " for {}", ago(now_ms.saturating_sub(t)));
        }
        if let Some(t) = checked.and_then(|c| c.get(i)).and_then(Value::as_u64) {
            let _ = write!(line, ", checked {} ago", ago(now_ms.saturating_sub(t)));
        }
        // the error only while the server is failing: a recovered server's old error is history
        if s["consecutive_failures"].as_u64().unwrap_or(0) > 0 || state == "down" {
            if let Some(e) = s["last_error"].as_str() {
                let _ = write!(line, ": {e}");
            }
        }
        let _ = writeln!(out, "{line}");
    }
    let mut pending = Vec::new();
    if w["pending_reverse_sync"] == true {
        let failures = w["reverse_sync_failures"].as_u64().unwrap_or(0);
        pending.push(if failures > 0 {
            format!("reverse sync backup -> primary ({failures} failed so far)")
        } else {
            "reverse sync backup -> primary before failback".to_owned()
        });
    }
    if let Some(e) = w["pending_reconcile_epoch"].as_u64() {
        pending.push(format!("reconcile the backup's writes of epoch {e}"));
    }
    if w["hold"].is_object() || w["hold"].as_str().is_some_and(|h| h != "none") {
        pending.push(format!("operator hold ({}): release with `nfs-guard web --release`", w["hold"]));
    }
    if !pending.is_empty() {
        let _ = writeln!(out, "  pending: {}", pending.join("; "));
    }
}

fn render_storage(s: &Value, running: Option<bool>, now_ms: u64, p: &Paint, out: &mut String) {
    let watches = s["watches"].as_u64().unwrap_or(0);
    let trees = s["trees"].as_array().map_or(0, Vec::len);
    let run = match running {
        Some(false) => format!(" {}", p.level(Level::Down, "NOT RUNNING")),
        _ => String::new(),
    };
    let _ = writeln!(out, "storage:{run} {trees} tree(s), {watches} directories watched");
    for r in s["remotes"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let lag = lag_ms(r, now_ms);
        let state = text(&r["state"]);
        let level = if lag > LAG_DEGRADED_MS || state == "retrying" { Level::Degraded } else { Level::Healthy };
        let mut line = format!(
            "  {:<8} {:<24} {}, queue {}, lag {}",
            text(&r["name"]),
            text(&r["url"]),
            p.level(level, state),
            r["queue"].as_u64().unwrap_or(0),
            ago(lag)
        );
        if let Some(fs) = r["full_sync_pending"].as_array().filter(|a| !a.is_empty()) {
            let _ = write!(line, ", full sync owed for {}", fs.iter().map(text).collect::<Vec<_>>().join(", "));
        }
        if state == "retrying" {
            if let Some(e) = r["last_error"].as_str() {
                let _ = write!(line, ": {e}");
            }
        }
        let _ = writeln!(out, "{line}");
    }
}

/// The farm as this node last read it: the record, the leader, what every live node serves.
fn render_farm(f: &Value, out: &mut String) {
    let etcd = if f["connected"] == Value::Bool(false) { " (etcd unreachable: last record read)" } else { "" };
    let r = &f["record"];
    let record = if r.is_object() {
        format!(
            "{} active, epoch {}, decided by {}{}",
            text(&r["active"]),
            r["epoch"].as_u64().unwrap_or(0),
            text(&r["by"]),
            if r["switching"] == Value::Bool(true) { ", nodes moving" } else { "" }
        )
    } else {
        "none yet (the primary)".into()
    };
    let _ = writeln!(out, "farm: node {}, leader {}{etcd}", text(&f["node"]), f["leader"].as_str().unwrap_or("none"));
    let _ = writeln!(out, "  record: {record}");
    for n in f["nodes"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let serves = &n["serves"];
        let what = match (serves["serving"].as_str(), serves["epoch"].as_u64()) {
            (Some(s), Some(e)) => format!("serves {s} (epoch {e})"),
            (Some(s), None) => format!("serves {s} (not the record's)"),
            _ => "serves nothing".into(),
        };
        let _ = writeln!(out, "  {:<12} {what}", text(&n["name"]));
    }
}

/// The summary for people: one block per role, the alerts waiting, the verdict last.
pub fn render_human(d: &Docs, now_ms: u64, color: bool) -> String {
    let p = Paint { on: color };
    let mut out = String::new();
    match &d.web {
        Doc::Read(w) => render_web(w, now_ms, &p, &mut out),
        Doc::Unreadable(e) => {
            let _ = writeln!(out, "web: status unreadable: {e}");
        }
        Doc::Missing => {}
    }
    match &d.farm {
        Doc::Read(f) => render_farm(f, &mut out),
        Doc::Unreadable(e) => {
            let _ = writeln!(out, "farm: status unreadable: {e}");
        }
        Doc::Missing => {}
    }
    match &d.storage {
        Doc::Read(s) => render_storage(s, d.storage_running, now_ms, &p, &mut out),
        Doc::Unreadable(e) => {
            let _ = writeln!(out, "storage: status unreadable: {e}");
        }
        Doc::Missing => {}
    }
    if let Some(n) = d.alerts_waiting.filter(|n| *n > 0) {
        let _ = writeln!(out, "alerts: {n} waiting in the outbox (nfs-guard alert-test shows why mail fails)");
    }
    let v = assess(d, now_ms);
    let word = match v.level {
        Level::Healthy => "OK",
        Level::Degraded => "WARNING",
        Level::Down => "CRITICAL",
    };
    let _ = write!(out, "verdict: {}", p.level(v.level, word));
    if !v.reasons.is_empty() {
        let _ = write!(out, ": {}", v.reasons.join("; "));
    }
    let _ = writeln!(out, " (exit {})", v.level.exit_code());
    out
}

/// The `--json` document (schema [`SCHEMA`]): the verdict plus each role's status document as written.
pub fn render_json(d: &Docs, now_ms: u64) -> String {
    let v = assess(d, now_ms);
    let doc = |x: &Doc| match x {
        Doc::Read(v) => v.clone(),
        Doc::Missing => Value::Null,
        Doc::Unreadable(e) => serde_json::json!({ "unreadable": e }),
    };
    let out = serde_json::json!({
        "schema": SCHEMA,
        "now_ms": now_ms,
        "level": v.level,
        "exit_code": v.level.exit_code(),
        "reasons": v.reasons,
        "web": doc(&d.web),
        "farm": doc(&d.farm),
        "storage": doc(&d.storage),
        "storage_running": d.storage_running,
        "alerts_waiting": d.alerts_waiting,
    });
    format!("{}\n", serde_json::to_string_pretty(&out).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_farm_node_shows_the_farm() {
        let d = tempfile::tempdir().unwrap();
        let farm = serde_json::json!({"node": "w1", "connected": true, "leader": "w2",
            "record": {"active": "backup", "epoch": 2, "since_ms": 1, "by": "w2", "switching": false},
            "nodes": [{"name": "w1", "serves": {"serving": "backup", "epoch": 2}}, {"name": "w3", "serves": null}]});
        std::fs::write(path(d.path(), "farm"), farm.to_string()).unwrap();
        let text = render_human(&gather(d.path()), 0, false);
        assert!(text.contains("farm: node w1, leader w2\n  record: backup active, epoch 2, decided by w2\n"), "{text}");
        assert!(text.contains("  w1           serves backup (epoch 2)\n  w3           serves nothing\n"), "{text}");
        assert!(render_json(&gather(d.path()), 0).contains("\"farm\""));
    }
}
