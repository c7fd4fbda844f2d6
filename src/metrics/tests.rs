//! The exposition is checked line by line by a strict parser of the Prometheus text format (the
//! lab test runs `promtool check metrics` on a live scrape too).

use super::*;
use crate::domain::Server;
use crate::sys::probe::Layer;

/// Parses `text` strictly: every family has HELP then TYPE before its samples, names are
/// `nfsguard_*`, counters end in `_total`, every sample belongs to the family just declared, label
/// values are quoted, values are numbers. Returns `(sample name with labels, value)`.
pub fn parse_strict(text: &str) -> Vec<(String, f64)> {
    let mut family: Option<(String, String)> = None;
    let mut help: Option<String> = None;
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line}"));
            assert!(!h.is_empty(), "{line}");
            help = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE: {line}"));
            assert_eq!(help.as_deref(), Some(name), "TYPE without its HELP: {line}");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(name.starts_with("nfsguard_"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            } else {
                assert!(!name.ends_with("_total"), "gauge named like a counter: {line}");
            }
            family = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (name_labels, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line}"));
            let name = name_labels.split('{').next().unwrap_or_default();
            let (fam, _) = family.as_ref().unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            assert_eq!(name, fam, "sample outside its family: {line}");
            if let Some(labels) = name_labels.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner =
                        labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap_or_else(|| panic!("{line}"));
                    for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                        assert!(k.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "label name {k:?}: {line}");
                        assert!(v.starts_with('"'), "unquoted label value: {line}");
                    }
                }
            }
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value is not a number: {line}"));
            samples.push((name_labels.to_owned(), v));
        }
    }
    samples
}

struct FakeQueue;

impl storage::QueueView for FakeQueue {
    fn paths(&self) -> usize {
        7
    }
    fn full_syncs(&self) -> usize {
        1
    }
    fn lag(&self) -> std::time::Duration {
        std::time::Duration::from_millis(2500)
    }
}

fn value(samples: &[(String, f64)], name: &str) -> f64 {
    samples.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no sample {name} in {samples:?}")).1
}

#[test]
fn nothing_is_shown_before_init() {
    assert_eq!(Metrics::new().render(), "");
}

#[test]
fn web_exposition_is_strict_and_follows_a_failover() {
    let m = Metrics::new();
    m.init(Role::Web);
    let mut v = web::View {
        phase: "serving",
        active: Some(Server::Primary),
        hold: false,
        pending_reverse_sync: false,
        up: [true, true],
    };
    m.web.observe(&v, 1_000_000);
    let first = parse_strict(&m.render());
    assert_eq!(value(&first, "nfsguard_web_active_server{server=\"primary\"}"), 1.0);
    assert_eq!(value(&first, "nfsguard_web_failovers_total"), 0.0);
    assert_eq!(value(&first, "nfsguard_build_info{version=\"0.1.0\",role=\"web\"}"), 1.0);
    v = web::View { phase: "mounting", active: None, up: [false, true], ..v };
    m.web.observe(&v, 1_002_000);
    v = web::View { phase: "serving", active: Some(Server::Backup), pending_reverse_sync: true, ..v };
    m.web.observe(&v, 1_003_500);
    m.web.checked("primary", Layer::Rpc, true, std::time::Duration::from_millis(1));
    m.web.checked("primary", Layer::Canary, true, std::time::Duration::from_millis(1));
    m.web.checked("primary", Layer::Rpc, false, std::time::Duration::from_millis(250));
    let after = parse_strict(&m.render());
    assert_eq!(value(&after, "nfsguard_web_active_server{server=\"backup\"}"), 1.0);
    assert_eq!(value(&after, "nfsguard_web_active_server{server=\"primary\"}"), 0.0);
    assert_eq!(value(&after, "nfsguard_web_failovers_total"), 1.0);
    assert_eq!(value(&after, "nfsguard_web_last_failover_duration_seconds"), 1.5);
    assert_eq!(value(&after, "nfsguard_web_last_transition_timestamp_seconds"), 1003.5);
    assert_eq!(value(&after, "nfsguard_web_phase{phase=\"serving\"}"), 1.0);
    assert_eq!(value(&after, "nfsguard_web_phase{phase=\"mounting\"}"), 0.0);
    assert_eq!(value(&after, "nfsguard_web_pending_reverse_sync"), 1.0);
    assert_eq!(value(&after, "nfsguard_web_check_up{server=\"primary\",layer=\"rpc\"}"), 0.0);
    assert_eq!(value(&after, "nfsguard_web_check_duration_seconds{server=\"primary\",layer=\"rpc\"}"), 0.25);
    assert_eq!(value(&after, "nfsguard_web_check_up{server=\"primary\",layer=\"canary\"}"), 0.0, "not reached");
    assert!(!after.iter().any(|(n, _)| n.starts_with("nfsguard_storage")), "web shows no storage families");
}

#[test]
fn storage_exposition_counts_pushes_by_result_and_exit_code() {
    use crate::sys::rsync::{ExitClass, RsyncReport};
    let m = Metrics::new();
    m.init(Role::Storage);
    m.storage.started(0, vec![("backup".into(), std::sync::Arc::new(FakeQueue))]);
    let report = |code: i32, class| RsyncReport {
        code: Some(code),
        class,
        files: 3,
        bytes: 4096,
        elapsed: std::time::Duration::from_millis(5),
        stderr_tail: String::new(),
        timed_out: false,
    };
    m.storage.pushed("backup", storage::PushKind::Batch, &Ok(report(0, ExitClass::Success)));
    m.storage.pushed("backup", storage::PushKind::Batch, &Ok(report(10, ExitClass::Transient)));
    m.storage.overflow();
    m.storage.watches(12);
    m.alerts.outbox(2);
    let s = parse_strict(&m.render());
    let push = |r: &str, c: &str| {
        value(
            &s,
            &format!(
                "nfsguard_storage_pushes_total{{remote=\"backup\",kind=\"batch\",result=\"{r}\",exit_code=\"{c}\"}}"
            ),
        )
    };
    assert_eq!(push("success", "0"), 1.0);
    assert_eq!(push("transient", "10"), 1.0);
    assert_eq!(value(&s, "nfsguard_storage_sent_bytes_total{remote=\"backup\"}"), 8192.0);
    assert_eq!(value(&s, "nfsguard_storage_sent_files_total{remote=\"backup\"}"), 6.0);
    assert_eq!(value(&s, "nfsguard_storage_queue_paths{remote=\"backup\"}"), 7.0);
    assert_eq!(value(&s, "nfsguard_storage_full_sync_pending{remote=\"backup\"}"), 1.0);
    assert_eq!(value(&s, "nfsguard_storage_replication_lag_seconds{remote=\"backup\"}"), 2.5);
    assert_eq!(value(&s, "nfsguard_storage_overflow_rescans_total"), 1.0);
    assert_eq!(value(&s, "nfsguard_storage_watched_directories"), 12.0);
    assert_eq!(value(&s, "nfsguard_alert_outbox_messages"), 2.0);
    assert_eq!(value(&s, "nfsguard_alerts_dead_total"), 0.0);
}

#[test]
fn the_textfile_is_replaced_whole_and_readable_by_the_collector() {
    use std::os::unix::fs::PermissionsExt;
    init(Role::Web);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nfs-guard.prom");
    std::fs::write(&p, "stale").unwrap();
    write_textfile(&p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    parse_strict(&text);
    assert!(text.contains("nfsguard_build_info"), "{text}");
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("nfs-guard.prom")], "no temp file left");
}
