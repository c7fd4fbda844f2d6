//! Component tests of alert delivery: the real outbox (temp dir), policy and delivery task, with a
//! fake Mailer on paused tokio time. They prove the promises that do not need a real SMTP server:
//! order, exactly-once across an outage, restart replay, per-recipient handling, flood control,
//! and that `emit` never waits for SMTP.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nfs_guard::alert::{self, AlertEvent, AlertKind, Alerts, Role};
use nfs_guard::config::Config;
use nfs_guard::sys::smtp::{Mailer, Outgoing, RcptResult, SendError, SendReport, Stage};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Up,
    /// Connection refused.
    Down,
    /// Accepts and never answers.
    Hang,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    /// Every message accepted: (envelope recipients that got it, subject, body).
    delivered: Vec<(Vec<String>, String, String)>,
    attempts: usize,
}

#[derive(Clone, Default)]
struct FakeMailer(Arc<Mutex<State>>);

impl FakeMailer {
    fn new(mode: Mode) -> Self {
        let f = FakeMailer::default();
        f.set(mode);
        f
    }
    fn set(&self, mode: Mode) {
        self.0.lock().unwrap().mode = Some(mode);
    }
    fn delivered(&self) -> Vec<(Vec<String>, String, String)> {
        self.0.lock().unwrap().delivered.clone()
    }
    fn subjects(&self) -> Vec<String> {
        self.delivered().into_iter().map(|(_, s, _)| s).collect()
    }
    fn attempts(&self) -> usize {
        self.0.lock().unwrap().attempts
    }
}

impl Mailer for FakeMailer {
    async fn send(&self, mail: &Outgoing) -> Result<SendReport, SendError> {
        let mode = {
            let mut s = self.0.lock().unwrap();
            s.attempts += 1;
            s.mode.unwrap()
        };
        match mode {
            Mode::Down => Err(SendError::new(Stage::Connect, "127.0.0.1:25: connection refused")),
            Mode::Hang => std::future::pending().await,
            Mode::Up => {
                // Like the lab's server: local parts starting with "reject" get 550; "later" get 452.
                let rcpt: Vec<(lettre::Address, RcptResult)> = mail
                    .rcpt
                    .iter()
                    .map(|a| {
                        let r = if a.user().starts_with("reject") {
                            RcptResult::Rejected { permanent: true, reply: "550 no such user".into() }
                        } else if a.user().starts_with("later") {
                            RcptResult::Rejected { permanent: false, reply: "452 mailbox full".into() }
                        } else {
                            RcptResult::Accepted
                        };
                        (a.clone(), r)
                    })
                    .collect();
                let got: Vec<String> =
                    rcpt.iter().filter(|(_, r)| *r == RcptResult::Accepted).map(|(a, _)| a.to_string()).collect();
                if !got.is_empty() {
                    self.0.lock().unwrap().delivered.push((got, mail.subject.clone(), mail.body.clone()));
                }
                Ok(SendReport { rcpt })
            }
        }
    }
}

fn config(dir: &Path, to: &[&str], extra: &str) -> Config {
    let to: Vec<String> = to.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        "state_dir = {:?}\n[alert]\nsmtp_host = \"mail.test\"\nsecurity = \"none\"\nfrom = \"nfs-guard <ng@example.com>\"\n\
         to = [{}]\nhostname = \"web01\"\nretry_max = \"30s\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"5s\"\n{extra}",
        dir.display().to_string(),
        to.join(", ")
    );
    Config::parse(&dir.join("t.toml"), &text).unwrap()
}

fn event(kind: AlertKind, title: &str) -> AlertEvent {
    AlertEvent::new(kind, Role::Web, title, "because").server("primary", "down")
}

/// Distinct kinds, so flood control does not fold them.
const KINDS: [AlertKind; 5] = [
    AlertKind::FailoverStarted,
    AlertKind::FailoverCompleted,
    AlertKind::PrimaryRecovered,
    AlertKind::ReverseSyncStarted,
    AlertKind::FailbackCompleted,
];

fn queue_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("outbox/queue")).unwrap().count()
}

/// Polls (on paused time, so this only advances the clock) until `cond` holds.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn smtp_down_then_back_every_alert_delivered_once_in_order() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "");
    let mailer = FakeMailer::new(Mode::Down);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    for (i, kind) in KINDS.into_iter().enumerate() {
        alerts.sink.emit(event(kind, &format!("transition {i}")));
    }
    alerts.flushed().await;
    assert_eq!(queue_files(d.path()), 5, "every alert is on disk once the outbox writer has run");

    // Down for 2 minutes: retried with backoff (not hammered), nothing delivered, nothing dropped.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let tries = mailer.attempts();
    assert!((4..=12).contains(&tries), "backoff 1s..30s over 2 minutes gives a handful of attempts, got {tries}");
    assert!(mailer.delivered().is_empty());
    assert_eq!(queue_files(d.path()), 5);

    mailer.set(Mode::Up);
    wait_for("all 5 delivered", Duration::from_secs(60), || mailer.delivered().len() == 5).await;
    let subjects = mailer.subjects();
    let want: Vec<String> = (0..5).map(|i| format!("[nfs-guard] web01 web: transition {i}")).collect();
    assert_eq!(subjects, want, "in order, each once");
    assert_eq!(queue_files(d.path()), 0, "delivered alerts are removed from the outbox");
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(mailer.delivered().len(), 5, "no duplicates");
}

#[tokio::test(start_paused = true)]
async fn smtp_hangs_emit_returns_at_once_and_outbox_survives_restart() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "");
    let hung = FakeMailer::new(Mode::Hang);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, hung.clone()).unwrap();
    alerts.sink.emit(event(KINDS[0], "first"));
    wait_for("the first send to hang", Duration::from_secs(5), || hung.attempts() == 1).await;

    // The delivery task is stuck in a send; a failover path emitting now must not wait for it.
    let virtual_before = tokio::time::Instant::now();
    let real_before = std::time::Instant::now();
    for (i, kind) in KINDS.into_iter().enumerate().skip(1) {
        alerts.sink.emit(event(kind, &format!("during hang {i}")));
    }
    assert_eq!(tokio::time::Instant::now(), virtual_before, "emit never awaits anything");
    assert!(real_before.elapsed() < Duration::from_millis(500), "emit took {:?}", real_before.elapsed());
    alerts.flushed().await;
    assert_eq!(queue_files(d.path()), 5);

    // The hard deadline ends the hung send; it is retried later, still hung.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(hung.attempts() >= 2, "the hung send was abandoned at its deadline and retried");

    // Shutdown with the server still hung: drain gives up after its grace, the outbox keeps it all.
    let before = tokio::time::Instant::now();
    alerts.drain(Duration::from_secs(3)).await;
    assert!(before.elapsed() <= Duration::from_secs(4), "drain is bounded by its grace");
    assert_eq!(queue_files(d.path()), 5);

    // Next start, server fine: everything from the previous run goes out, in order, once the
    // backoff the previous run built up (at most retry_max) has passed.
    let up = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, up.clone()).unwrap();
    wait_for("replay", Duration::from_secs(31), || up.delivered().len() == 5).await;
    let subjects = up.subjects();
    assert_eq!(subjects[0], "[nfs-guard] web01 web: first");
    assert_eq!(subjects[4], "[nfs-guard] web01 web: during hang 4");
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(queue_files(d.path()), 0);
}

#[tokio::test(start_paused = true)]
async fn rejected_recipient_does_not_block_the_others() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["a@example.com", "reject-b@example.com", "c@example.com"], "");
    let mailer = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    alerts.sink.emit(event(KINDS[0], "one"));
    alerts.sink.emit(event(KINDS[1], "two"));
    wait_for("both delivered", Duration::from_secs(10), || mailer.delivered().len() == 2).await;
    for (rcpt, _, _) in mailer.delivered() {
        assert_eq!(rcpt, ["a@example.com", "c@example.com"]);
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(mailer.attempts(), 2, "a permanently rejected recipient is not retried");
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(queue_files(d.path()), 0);
}

#[tokio::test(start_paused = true)]
async fn message_no_recipient_accepts_is_dead_lettered_not_retried_forever() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["reject-a@example.com"], "");
    let mailer = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    alerts.sink.emit(event(KINDS[0], "one"));
    alerts.sink.emit(event(KINDS[1], "two"));
    wait_for("both tried", Duration::from_secs(10), || mailer.attempts() == 2).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(mailer.attempts(), 2);
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(queue_files(d.path()), 0);
    assert_eq!(std::fs::read_dir(d.path().join("outbox/dead")).unwrap().count(), 2, "kept for the operator");
}

#[tokio::test(start_paused = true)]
async fn repeats_are_folded_into_one_digest_and_disabled_kinds_dropped() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "flood_period = \"10m\"\ndisabled = [\"overflow-rescan\"]\n");
    let mailer = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    alerts.sink.emit(event(AlertKind::BothDown, "both down 1"));
    alerts.sink.emit(event(AlertKind::OverflowRescan, "rescan"));
    for i in 2..=4 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        alerts.sink.emit(event(AlertKind::BothDown, &format!("both down {i}")));
    }
    alerts.sink.emit(event(AlertKind::FailoverStarted, "another kind is not held back"));
    wait_for("first two", Duration::from_secs(10), || mailer.delivered().len() == 2).await;
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert_eq!(mailer.delivered().len(), 2, "repeats are held until the period ends");

    wait_for("the digest", Duration::from_secs(6 * 60), || mailer.delivered().len() == 3).await;
    let delivered = mailer.delivered();
    assert_eq!(delivered[0].1, "[nfs-guard] web01 web: both down 1");
    assert_eq!(delivered[1].1, "[nfs-guard] web01 web: another kind is not held back");
    assert_eq!(delivered[2].1, "[nfs-guard] web01 web: 3 x both-down (digest), latest: both down 4");
    for i in 2..=4 {
        assert!(delivered[2].2.contains(&format!("both down {i}\n")), "{}", delivered[2].2);
    }
    assert!(!mailer.subjects().iter().any(|s| s.contains("rescan")), "disabled kind not mailed");
    alerts.drain(Duration::from_secs(3)).await;
}

/// `web --once` is a new process per check: flood control (periods, folded alerts, digests due)
/// must carry over from one process to the next.
#[tokio::test(start_paused = true)]
async fn flood_control_carries_over_to_the_next_process() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "flood_period = \"10m\"\n");
    let mailer = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    alerts.sink.emit(event(AlertKind::BothDown, "both down 1"));
    alerts.sink.emit(event(AlertKind::BothDown, "both down 2"));
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(mailer.subjects(), ["[nfs-guard] web01 web: both down 1"]);
    assert_eq!(std::fs::read_dir(d.path().join("outbox/fold")).unwrap().count(), 1, "the repeat waits on disk");

    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    alerts.sink.emit(event(AlertKind::BothDown, "both down 3"));
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert_eq!(mailer.delivered().len(), 1, "the next process keeps folding within the period");
    wait_for("the digest", Duration::from_secs(6 * 60), || mailer.delivered().len() == 2).await;
    assert_eq!(mailer.subjects()[1], "[nfs-guard] web01 web: 2 x both-down (digest), latest: both down 3");
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_dir(d.path().join("outbox/fold")).unwrap().count(), 0);
}

#[tokio::test(start_paused = true)]
async fn folded_alerts_without_flood_state_get_their_digest_at_start() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "flood_period = \"1h\"\n");
    let mailer = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    alerts.sink.emit(event(AlertKind::BothDown, "both down 1"));
    alerts.sink.emit(event(AlertKind::BothDown, "both down 2"));
    alerts.drain(Duration::from_secs(3)).await;
    std::fs::remove_file(d.path().join("outbox/flood.json")).unwrap();

    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    wait_for("the digest", Duration::from_secs(10), || mailer.delivered().len() == 2).await;
    assert_eq!(mailer.subjects()[1], "[nfs-guard] web01 web: both down 2");
    alerts.drain(Duration::from_secs(3)).await;
}

#[tokio::test(start_paused = true)]
async fn alert_test_reports_each_problem_on_its_own_line() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["a@example.com", "reject-b@example.com", "reject-c@example.com"], "");
    let up = FakeMailer::new(Mode::Up);
    let e = alert::test_with_mailer(cfg.alert.as_ref().unwrap(), &up).await.unwrap_err().to_string();
    assert_eq!(
        e,
        "alert test failed:\n  recipient rejected: reject-b@example.com: 550 no such user\n  \
         recipient rejected: reject-c@example.com: 550 no such user"
    );
    let (rcpt, subject, body) = up.delivered().pop().unwrap();
    assert_eq!(rcpt, ["a@example.com"], "the good recipient still gets the test message");
    assert_eq!(subject, "[nfs-guard] web01 test: test message");
    assert!(body.contains("mail server: mail.test:25 (none)"), "{body}");

    let down = FakeMailer::new(Mode::Down);
    let e = alert::test_with_mailer(cfg.alert.as_ref().unwrap(), &down).await.unwrap_err().to_string();
    assert_eq!(e, "alert test failed:\n  connect failed: 127.0.0.1:25: connection refused");
    assert!(!d.path().join("outbox").exists(), "alert-test does not go through the outbox");
}

#[tokio::test(start_paused = true)]
async fn a_recipient_refused_for_now_is_retried_alone_then_given_up() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["a@example.com", "later-b@example.com"], "");
    let mailer = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    alerts.sink.emit(event(KINDS[0], "one"));
    alerts.sink.emit(event(KINDS[1], "two"));
    wait_for("both alerts done", Duration::from_secs(60 * 60), || alerts.pending() == 0).await;
    let delivered = mailer.delivered();
    assert_eq!(delivered[0].0, ["a@example.com"], "the accepting recipient got it at the first attempt");
    assert_eq!(delivered[1].0, ["a@example.com"]);
    assert_eq!(delivered.len(), 2, "no duplicates for the recipient that already has it");
    // 10 attempts on the first alert (a 4xx recipient is given up after that), then 10 on the second.
    assert_eq!(mailer.attempts(), 20);
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_dir(d.path().join("outbox/dead")).unwrap().count(), 0, "a got them: not dead letters");
}

#[tokio::test(start_paused = true)]
async fn an_outbox_write_failure_still_delivers_from_memory() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "");
    let mailer = FakeMailer::new(Mode::Down);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
    let queue = d.path().join("outbox/queue");
    std::fs::remove_dir(&queue).unwrap();
    std::fs::write(&queue, b"in the way").unwrap();
    alerts.sink.emit(event(KINDS[0], "not on disk"));
    assert_eq!(alerts.pending(), 1);
    mailer.set(Mode::Up);
    wait_for("delivery", Duration::from_secs(60), || mailer.delivered().len() == 1).await;
    assert_eq!(alerts.pending(), 0);
    alerts.drain(Duration::from_secs(3)).await;
}

/// Damaged files in the outbox (torn by a crash, planted, wrong names) are moved aside, and the
/// operator gets one alert naming them; the next start, with nothing new damaged, raises none.
#[tokio::test(start_paused = true)]
async fn damaged_outbox_entries_are_moved_aside_and_reported_by_one_alert() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "");
    let down = FakeMailer::new(Mode::Down);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, down.clone()).unwrap();
    alerts.sink.emit(event(KINDS[0], "lost to a torn write"));
    alerts.drain(Duration::from_secs(3)).await;
    let queue = d.path().join("outbox/queue");
    std::fs::write(queue.join("00000000000000000001.json"), b"{ torn").unwrap();
    std::fs::write(queue.join("notes\n.txt"), b"planted").unwrap();

    let up = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, up.clone()).unwrap();
    wait_for("the damage alert", Duration::from_secs(10), || up.delivered().len() == 1).await;
    let (_, subject, body) = up.delivered().pop().unwrap();
    assert_eq!(subject, "[nfs-guard] web01 alert: 2 damaged files in the alert outbox moved aside");
    assert!(body.contains("00000000000000000001.json: "), "{body}");
    assert!(body.contains("notes\\n.txt"), "the odd name is shown escaped: {body}");
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(queue_files(d.path()), 0);

    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, up.clone()).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    alerts.drain(Duration::from_secs(3)).await;
    assert_eq!(up.delivered().len(), 1, "no further alert: the damage was reported once");
}

/// `web --once` under a systemd timer is one process per check. While the mail server is dead,
/// each run must honour the backoff the previous runs built up (persisted in the outbox) and not
/// wait at all: a run neither forces a send attempt nor spends its drain grace on a dead server.
#[tokio::test(start_paused = true)]
async fn once_runs_honour_the_persisted_backoff_and_do_not_wait_for_a_dead_server() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "");
    let hung = FakeMailer::new(Mode::Hang);
    let once = |mailer: &FakeMailer, i: usize| {
        let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, mailer.clone()).unwrap();
        alerts.sink.emit(event(KINDS[i], &format!("run {i}")));
        alerts
    };

    // Run 0: the send hangs; the run waits at most its grace, and the failure is remembered.
    let before = tokio::time::Instant::now();
    once(&hung, 0).drain(Duration::from_secs(5)).await;
    assert!(before.elapsed() <= Duration::from_secs(5));
    assert_eq!(hung.attempts(), 1);
    assert!(d.path().join("outbox/backoff.json").exists(), "the backoff is kept for the next run");

    // The next runs, within the backoff: no attempt, no waiting, every alert kept.
    for i in 1..3 {
        let before = tokio::time::Instant::now();
        once(&hung, i).drain(Duration::from_secs(5)).await;
        assert_eq!(before.elapsed(), Duration::ZERO, "run {i} does not wait for the dead server");
        assert_eq!(hung.attempts(), 1, "run {i} honours the backoff");
    }
    assert_eq!(queue_files(d.path()), 3);

    // The server is back; a run after the backoff has passed mails everything, in order.
    let up = FakeMailer::new(Mode::Up);
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, up.clone()).unwrap();
    wait_for("all 3 delivered", Duration::from_secs(30), || up.delivered().len() == 3).await;
    assert_eq!(up.subjects(), ["run 0", "run 1", "run 2"].map(|t| format!("[nfs-guard] web01 web: {t}")));
    alerts.drain(Duration::from_secs(5)).await;
    assert!(!d.path().join("outbox/backoff.json").exists(), "a delivery ends the backoff");
}

/// A damaged or absurd backoff file (a clock set back, a planted file) cannot stop alerts for
/// longer than `retry_max`.
#[tokio::test(start_paused = true)]
async fn a_persisted_backoff_is_capped_at_retry_max() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &["ops@example.com"], "");
    let up = FakeMailer::new(Mode::Up);
    std::fs::create_dir_all(d.path().join("outbox")).unwrap();
    std::fs::write(
        d.path().join("outbox/backoff.json"),
        br#"{"failures": 4294967295, "next_attempt": {"secs_since_epoch": 9999999999, "nanos_since_epoch": 0}}"#,
    )
    .unwrap();
    let alerts = Alerts::start_with_mailer(cfg.alert.as_ref().unwrap(), &cfg.state_dir, up.clone()).unwrap();
    alerts.sink.emit(event(KINDS[0], "held back at most 30s"));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(up.delivered().is_empty(), "the backoff is honoured");
    wait_for("delivery within retry_max", Duration::from_secs(11), || up.delivered().len() == 1).await;
    alerts.drain(Duration::from_secs(5)).await;
}
