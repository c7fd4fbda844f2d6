//! Lab test of the Prometheus metrics with the real binaries (issue 15): the storage agents serve
//! `/metrics` on their agent listener, the web node on its own `[web.metrics] listen`. Scraped while
//! the backup is unreachable (a replication backlog: queue and lag rise, failed pushes are counted,
//! then everything drains and the lag falls to 0) and through a failover and failback (the active
//! server moves, the counters count once, the phase shows the work in progress). Every scrape passes
//! `promtool check metrics` (Debian's `prometheus` package, installed by scripts/install-deps.sh).
// Samples compared here are small integers (exact in f64).
#![allow(clippy::unwrap_used, clippy::float_cmp)]

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/lab.rs"]
mod lab;
mod storage_common;
#[path = "common/web_node.rs"]
mod web_node;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster::{api, Cluster};
use lab::{Fault, Host, Lab};

const WEB_METRICS_PORT: u16 = 9469;

/// `GET url` from inside `from` (bounded); the body, or `None` if it did not answer 200.
fn scrape(lab: &Lab, from: Host, url: &str) -> Option<String> {
    let out = lab.exec_timeout(from, &["curl", "-sf", "--max-time", "2", url], Duration::from_secs(5))?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `promtool check metrics` on `text`: no error, no lint finding.
fn promtool_ok(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool missing: install Debian's prometheus package (scripts/install-deps.sh)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

/// The value of the sample written exactly `series` (name with its labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `nfs-guard status` (the summary for people) of the node of `config`: its exit code and text.
fn status(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-guard")).arg("--config").arg(config).arg("status").output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn metrics_follow_a_replication_backlog_and_a_failover() {
    let lab = Lab::up("ops1");
    let (prim, back) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    fs::write(prim.join("seed"), "both").unwrap();
    let work = tempfile::Builder::new().prefix("metrics-lab").tempdir_in(lab.state_dir()).unwrap();
    let mut c = Cluster::new(&lab, work.path(), "[storage.metrics]\n", "");
    let web_url = format!("http://{}:{WEB_METRICS_PORT}/metrics", lab.ip(Host::Web));
    let mut web_toml = fs::OpenOptions::new().append(true).open(&c.web.config).unwrap();
    writeln!(web_toml, "[web.metrics]\nlisten = \"{}:{WEB_METRICS_PORT}\"", lab.ip(Host::Web)).unwrap();
    c.start_agent(&lab, Host::Primary);
    c.start_agent(&lab, Host::Backup);
    storage_common::wait_same(&prim, &back, Duration::from_secs(30), None);
    c.web.start(&lab);
    c.wait("the web node serves the primary", Duration::from_secs(30), || c.web.active_is("primary"));
    let storage_url = format!("{}/metrics", api(&lab, Host::Primary));
    let (queue, lag) = (
        "nfsguard_storage_queue_paths{remote=\"backup\"}",
        "nfsguard_storage_replication_lag_seconds{remote=\"backup\"}",
    );

    // Before: caught up, one listener per process (the agent's), valid exposition.
    let s = scrape(&lab, Host::Primary, &storage_url).expect("the agent serves /metrics");
    promtool_ok(&s);
    assert_eq!(must(&s, "nfsguard_build_info{version=\"0.1.0\",role=\"storage\"}"), 1.0);
    assert_eq!(must(&s, lag), 0.0, "{s}");
    let bytes_before = must(&s, "nfsguard_storage_sent_bytes_total{remote=\"backup\"}");

    // Backlog: the backup's rsync daemon is down; changes queue and the lag grows.
    lab.fault(Host::Backup, Fault::StopRsyncd);
    storage_common::burst(&prim, "backlog", 3, 60);
    let mut lags = Vec::new();
    c.wait("a growing lag and a failed push", Duration::from_secs(30), || {
        let Some(s) = scrape(&lab, Host::Primary, &storage_url) else { return false };
        lags.push(must(&s, lag));
        let failed = s.lines().any(|l| {
            l.starts_with("nfsguard_storage_pushes_total{remote=\"backup\",kind=\"batch\",result=\"transient\"")
        });
        must(&s, queue) > 0.0 && failed && lags.len() >= 3 && lags[lags.len() - 1] > lags[0] + 1.0
    });
    let s = scrape(&lab, Host::Primary, &storage_url).unwrap();
    promtool_ok(&s);
    // the summary for people shows the lag and the failing pushes: degraded (exit 1; between two
    // retries the remote may show as pushing, so poll)
    let mut text = String::new();
    c.wait("status: degraded during the backlog", Duration::from_secs(15), || {
        let code;
        (code, text) = status(&c.dir.join("primary.toml"));
        code == Some(1) && text.contains("retrying, queue ")
    });
    assert!(!text.contains("lag 0s") && text.contains("pushes to backup are failing"), "{text}");
    lab.heal(Host::Backup);
    c.wait("the backlog to drain (lag back to 0)", Duration::from_secs(60), || {
        scrape(&lab, Host::Primary, &storage_url).is_some_and(|s| must(&s, queue) == 0.0 && must(&s, lag) == 0.0)
    });
    let s = scrape(&lab, Host::Primary, &storage_url).unwrap();
    assert!(must(&s, "nfsguard_storage_sent_bytes_total{remote=\"backup\"}") > bytes_before, "{s}");
    storage_common::wait_same(&prim, &back, Duration::from_secs(30), None);

    // Failover: scraped all along, the endpoint answers while the node switches.
    let w = scrape(&lab, Host::Web, &web_url).expect("the web node serves /metrics");
    promtool_ok(&w);
    assert_eq!(must(&w, "nfsguard_web_active_server{server=\"primary\"}"), 1.0, "{w}");
    assert_eq!(must(&w, "nfsguard_web_failovers_total"), 0.0);
    assert_eq!(must(&w, "nfsguard_web_server_up{server=\"primary\"}"), 1.0);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    lab.fault(Host::Primary, Fault::StopNfs);
    let mut phases = BTreeSet::new();
    let phase = |w: &str| {
        w.lines()
            .find(|l| l.starts_with("nfsguard_web_phase{") && l.ends_with(" 1"))
            .map(|l| l.split('"').nth(1).unwrap_or_default().to_owned())
    };
    c.wait("the failover seen in the metrics", Duration::from_secs(30), || {
        let w = scrape(&lab, Host::Web, &web_url).expect("/metrics answers during the failover");
        phases.extend(phase(&w));
        must(&w, "nfsguard_web_active_server{server=\"backup\"}") == 1.0
    });
    let w = scrape(&lab, Host::Web, &web_url).unwrap();
    promtool_ok(&w);
    assert_eq!(must(&w, "nfsguard_web_active_server{server=\"primary\"}"), 0.0, "{w}");
    assert_eq!(must(&w, "nfsguard_web_failovers_total"), 1.0, "{w}");
    assert_eq!(must(&w, "nfsguard_web_server_up{server=\"primary\"}"), 0.0, "{w}");
    assert!(must(&w, "nfsguard_web_last_transition_timestamp_seconds") >= started - 1.0, "{w}");
    assert!(must(&w, "nfsguard_web_last_failover_duration_seconds") > 0.0, "{w}");
    // the NFS server is down: its RPC layer fails (or is not reached when TCP is refused first)
    assert_eq!(must(&w, "nfsguard_web_check_up{server=\"primary\",layer=\"rpc\"}"), 0.0, "{w}");
    assert_eq!(must(&w, "nfsguard_web_check_up{server=\"backup\",layer=\"rpc\"}"), 1.0, "{w}");
    eprintln!("phases seen while failing over: {phases:?}");
    // the summary for people says so, and its exit code is a monitoring check's CRITICAL
    let (code, text) = status(&c.web.config);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.starts_with("web: FAILED OVER: serving the backup"), "{text}");
    assert!(text.contains("last change: mounting -> serving: mounted backup"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("primary") && l.contains("DOWN")), "{text}");

    // Failback: counted once, the primary active again.
    lab.heal(Host::Primary);
    c.wait("the failback seen in the metrics", Duration::from_secs(90), || {
        let w = scrape(&lab, Host::Web, &web_url).expect("/metrics answers during the failback");
        phases.extend(phase(&w));
        must(&w, "nfsguard_web_failbacks_total") == 1.0
            && must(&w, "nfsguard_web_active_server{server=\"primary\"}") == 1.0
    });
    let w = scrape(&lab, Host::Web, &web_url).unwrap();
    promtool_ok(&w);
    assert_eq!(must(&w, "nfsguard_web_failovers_total"), 1.0, "{w}");
    assert_eq!(must(&w, "nfsguard_web_server_up{server=\"primary\"}"), 1.0, "{w}");
    eprintln!("phases seen: {phases:?}");
    c.wait("status: healthy after the failback", Duration::from_secs(30), || status(&c.web.config).0 == Some(0));
    let (_, text) = status(&c.web.config);
    assert!(text.starts_with("web: serving the primary") && text.contains("verdict: OK (exit 0)"), "{text}");
    c.web.kill9();
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
}

/// `storage --once` (the timer mode) writes its metrics for `node_exporter`'s textfile collector:
/// whole (valid for promtool), world-readable, no temp file left beside it.
#[test]
fn once_writes_the_metrics_textfile() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let daemon = storage_common::Daemon::start(d.path());
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a file"), "x".repeat(5000)).unwrap();
    let (cfg, state, prom_dir) = (d.path().join("n.toml"), d.path().join("state"), d.path().join("textfile"));
    let prom = prom_dir.join("nfs-guard.prom");
    let extra = format!("[storage.metrics]\ntextfile = \"{}\"", prom.display());
    storage_common::write_config(&cfg, &state, &src, "127.0.0.1", daemon.port, &extra, "");
    let bin = env!("CARGO_BIN_EXE_nfs-guard");
    let out = Command::new(bin).arg("--config").arg(&cfg).args(["storage", "--once"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = fs::read_to_string(&prom).unwrap();
    promtool_ok(&text);
    let series =
        "nfsguard_storage_pushes_total{remote=\"backup\",kind=\"full-sync\",result=\"success\",exit_code=\"0\"}";
    assert_eq!(must(&text, series), 1.0, "{text}");
    assert!(must(&text, "nfsguard_storage_sent_bytes_total{remote=\"backup\"}") >= 5000.0, "{text}");
    assert_eq!(fs::metadata(&prom).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(fs::read_dir(&prom_dir).unwrap().count(), 1, "a temp file was left beside the metrics file");
}
