//! Lab tests of alert mail against the lab's real SMTP server (aiosmtpd on host `mail`: 25 plain,
//! 587 STARTTLS + AUTH, 465 implicit TLS + AUTH, `reject*` recipients get 550), with real faults.
//!
//! The test process cannot reach the lab network, so everything that talks SMTP runs inside the
//! `web` host: the real binary (`nfs-guard alert-test`), and for the outbox a *driver*: this very
//! test executable re-run inside `web` with `--exact lab_driver --ignored`, which starts the
//! library's real alert pipeline (`Alerts::start`: outbox, delivery task, lettre SMTP client) and
//! emits the alerts the test asks for over stdin, reporting how long each `emit` took.
//! Needs root (the lab panics otherwise).
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

#[path = "common/lab.rs"]
mod lab;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab::{wait_until, Fault, Host, Lab};
use nfs_guard::alert::{AlertEvent, AlertKind, Alerts, Role};
use nfs_guard::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");
/// Set (to a config path) when this executable runs as the driver inside the lab.
const DRIVER_ENV: &str = "NFS_GUARD_ALERT_LAB_DRIVER";
/// `emit` must return at once even when SMTP is dead or stalled, or the state disk stuck: it hands
/// one file write to the outbox's writer, while waiting on the stalled server would take its 2 s
/// command timeout. The margin is for a busy CI machine.
const EMIT_BUDGET: Duration = Duration::from_millis(500);

fn p(path: impl AsRef<Path>) -> String {
    path.as_ref().display().to_string()
}

/// The `[alert]` section for the lab's mail host; `extra` overrides/adds keys.
fn alert_config(lab: &Lab, state: &Path, port_security: &str, to: &[&str], extra: &str) -> String {
    let to: Vec<String> = to.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "state_dir = {:?}\n[alert]\nsmtp_host = {:?}\n{port_security}\nfrom = \"nfs-guard <nfs-guard@lab.example>\"\n\
         to = [{}]\nhostname = \"web01\"\nconnect_timeout = \"1s\"\ncommand_timeout = \"2s\"\nretry_max = \"2s\"\n{extra}",
        p(state),
        lab.ip(Host::Mail),
        to.join(", ")
    )
}

fn auth(lab: &Lab) -> String {
    format!("user = {:?}\npassword_file = {:?}\n", Lab::SMTP_USER, p(lab.smtp_password_file()))
}

fn ca(lab: &Lab) -> String {
    format!("ca_file = {:?}\n", p(lab.smtp_cert()))
}

/// Runs `nfs-guard alert-test` inside `web`: (exit code, stdout, stderr, elapsed).
fn alert_test(lab: &Lab, dir: &Path, name: &str, config: &str) -> (Option<i32>, String, String, Duration) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let t = Instant::now();
    let o = lab
        .command(Host::Web, BIN)
        .args(["--config", &p(&path), "-q", "alert-test"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        t.elapsed(),
    )
}

/// A received message: its headers (unfolded) and body.
struct Mail {
    headers: Vec<(String, String)>,
    body: String,
}

impl Mail {
    fn parse(raw: &str) -> Mail {
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Mail { headers, body: body.to_owned() }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or("", |(_, v)| v.as_str())
    }
}

fn mails(lab: &Lab) -> Vec<Mail> {
    lab.mails().iter().map(|m| Mail::parse(m)).collect()
}

#[test]
fn lab_alert_test_reports_tls_auth_and_each_failure() {
    let lab = Lab::up("altst");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ip = lab.ip(Host::Mail);
    let ops = ["ops@lab.example"];

    // STARTTLS on 587 with AUTH, trusting the lab's self-signed CA through ca_file.
    let cfg = alert_config(&lab, &state, "security = \"starttls\"", &ops, &(auth(&lab) + &ca(&lab)));
    let (code, out, err, _) = alert_test(&lab, dir.path(), "starttls", &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("test alert sent via {ip}:587 (starttls, auth as alert) to ops@lab.example\n"));
    wait_until("the starttls test mail", Duration::from_secs(10), || lab.mails().len() == 1);
    let m = &mails(&lab)[0];
    assert_eq!(m.header("X-Lab-Port"), "587");
    assert_eq!(m.header("X-Lab-TLS"), "starttls");
    assert_eq!(m.header("X-Lab-Auth-User"), "alert");
    assert_eq!(m.header("Subject"), "[nfs-guard] web01 test: test message");
    assert!(m.body.contains("Nothing to do: this node's alerts reach you."), "{}", m.body);

    // Implicit TLS on 465.
    let cfg = alert_config(&lab, &state, "security = \"tls\"", &ops, &(auth(&lab) + &ca(&lab)));
    let (code, out, err, _) = alert_test(&lab, dir.path(), "tls", &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_until("the implicit TLS test mail", Duration::from_secs(10), || lab.mails().len() == 2);
    assert_eq!(mails(&lab)[1].header("X-Lab-TLS"), "implicit");

    // Plain relay on 25: a rejected recipient is named; the other one still gets the message.
    let cfg = alert_config(&lab, &state, "security = \"none\"", &["ops@lab.example", "reject-x@lab.example"], "");
    let (code, out, err, _) = alert_test(&lab, dir.path(), "reject", &cfg);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        err,
        "nfs-guard: alert test failed:\n  recipient rejected: reject-x@lab.example: 550 5.1.1 <reject-x@lab.example>: \
         recipient rejected by lab (local part starts with 'reject')\n"
    );
    wait_until("the plain test mail", Duration::from_secs(10), || lab.mails().len() == 3);
    assert_eq!(mails(&lab)[2].header("X-Lab-Envelope-To"), "ops@lab.example");

    // Each failure names its step, one line, exit 1.
    let bad_pw = dir.path().join("bad.pass");
    std::fs::write(&bad_pw, "wrong").unwrap();
    std::fs::set_permissions(&bad_pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let failures = [
        (
            "badpass",
            alert_config(
                &lab,
                &state,
                "security = \"starttls\"",
                &ops,
                &format!("user = \"alert\"\npassword_file = {:?}\n{}", p(&bad_pw), ca(&lab)),
            ),
            "authentication failed: as user \"alert\": permanent error (535): 5.7.8 Authentication credentials invalid"
                .to_owned(),
        ),
        ("noca", alert_config(&lab, &state, "security = \"starttls\"", &ops, &auth(&lab)), "TLS failed: ".to_owned()),
        (
            "noauth",
            alert_config(&lab, &state, "security = \"starttls\"", &ops, &ca(&lab)),
            "sender failed: nfs-guard@lab.example refused: permanent error (530)".to_owned(),
        ),
        (
            "refused",
            alert_config(&lab, &state, "security = \"none\"\nsmtp_port = 2525", &ops, ""),
            format!("connect failed: {ip}:2525: connection refused (nothing listens there)"),
        ),
        (
            "lookup",
            alert_config(&lab, &state, "security = \"none\"", &ops, "")
                .replace(&format!("smtp_host = {ip:?}"), "smtp_host = \"nosuch.invalid\""),
            "name lookup failed: ".to_owned(),
        ),
    ];
    for (name, cfg, want) in &failures {
        let (code, out, err, _) = alert_test(&lab, dir.path(), name, cfg);
        assert_eq!(code, Some(1), "{name}: {out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{name}: one line per problem: {err}");
        assert_eq!(lines[0], "nfs-guard: alert test failed:", "{name}");
        assert!(lines[1].starts_with(&format!("  {want}")), "{name}: {err}");
    }

    // A server that accepts the connection and then stalls: reported within the deadline.
    lab.fault(Host::Mail, Fault::Freeze);
    let cfg = alert_config(&lab, &state, "security = \"none\"", &ops, "")
        .replace("command_timeout = \"2s\"", "command_timeout = \"1s\"");
    let (code, out, err, took) = alert_test(&lab, dir.path(), "frozen", &cfg);
    lab.heal(Host::Mail);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(err, format!("nfs-guard: alert test failed:\n  greeting failed: {ip} sent no reply within 1s\n"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(lab.mails().len(), 3, "failed tests sent nothing");
}

/// Drives the real alert pipeline inside the `web` host.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl Driver {
    fn start(lab: &Lab, config: &Path, log: &Path) -> Driver {
        let exe = std::env::current_exe().unwrap();
        let mut child = lab
            .command(Host::Web, exe.to_str().unwrap())
            .args(["--exact", "lab_driver", "--ignored", "--nocapture", "--test-threads=1"])
            .env(DRIVER_ENV, config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap()))
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print "test lab_driver ... " on the same line before our first reply.
                if let Some(at) = line.find("DRIVER ") {
                    let _ = tx.send(line[at + 7..].to_owned());
                }
            }
        });
        let mut d = Driver { child, stdin, lines, log: log.to_owned() };
        assert_eq!(d.reply(), "ready");
        d
    }

    fn reply(&mut self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(e) => panic!(
                "driver did not answer ({e}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    /// Emits one alert; returns how long `emit` took inside the driver.
    fn emit(&mut self, kind: AlertKind, title: &str) -> Duration {
        writeln!(self.stdin, "emit {} {title}", kind.name()).unwrap();
        let r = self.reply();
        let micros: u64 = r.strip_prefix("emitted ").unwrap().parse().unwrap();
        Duration::from_micros(micros)
    }

    fn drain(mut self, grace_secs: u64) {
        writeln!(self.stdin, "drain {grace_secs}").unwrap();
        assert_eq!(self.reply(), "drained");
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The alert each kind stands for in the lab run (what the roles would send, in brief).
fn lab_event(kind: AlertKind, title: &str) -> AlertEvent {
    let role = match kind {
        AlertKind::RemoteUnreachable
        | AlertKind::RemoteRecovered
        | AlertKind::OverflowRescan
        | AlertKind::JournalGrowing => Role::Storage,
        AlertKind::Test => Role::Test,
        _ => Role::Web,
    };
    AlertEvent::new(kind, role, title, format!("lab reason for {}", kind.name()))
        .detail("elapsed", "1.5s")
        .server("primary 10.203.0.2", "down")
        .server("backup 10.203.0.3", "up")
        .next_steps(format!("lab next step for {}", kind.name()))
}

/// Not a test: the driver process, run by the lab tests inside the `web` host (see the module
/// docs). Run directly it only says so.
#[test]
#[ignore = "helper process for the lab tests; run by them inside the lab"]
fn lab_driver() {
    let Ok(config) = std::env::var(DRIVER_ENV) else {
        eprintln!("lab_driver: not a test; alert_lab tests run it inside the lab with {DRIVER_ENV} set");
        return;
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_env_filter("nfs_guard=debug").init();
    let config = Config::load(Path::new(&config)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let alerts =
            Alerts::start(config.alert.as_ref(), &config.state_dir, tokio_util::sync::CancellationToken::new())
                .unwrap();
        let say = |s: String| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "DRIVER {s}").unwrap();
            out.flush().unwrap();
        };
        say("ready".into());
        // Commands arrive on stdin, read by a plain thread (the runtime stays free for delivery).
        let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = commands.recv().await {
            let (cmd, rest) = line.split_once(' ').unwrap_or((&line, ""));
            match cmd {
                "emit" => {
                    let (kind, title) = rest.split_once(' ').unwrap();
                    let event = lab_event(AlertKind::from_name(kind).unwrap(), title);
                    let t = Instant::now();
                    alerts.sink.emit(event);
                    say(format!("emitted {}", t.elapsed().as_micros()));
                }
                "drain" => {
                    alerts.drain(Duration::from_secs(rest.parse().unwrap())).await;
                    say("drained".into());
                    return;
                }
                other => panic!("driver: unknown command {other:?}"),
            }
        }
    });
}

fn queued(state: &Path) -> usize {
    std::fs::read_dir(state.join("outbox/queue")).map_or(0, Iterator::count)
}

#[test]
fn lab_outbox_delivers_every_alert_once_in_order_through_outage_stall_and_restart() {
    let lab = Lab::up("alout");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("driver.toml");
    let to = ["ops@lab.example", "reject-me@lab.example", "second@lab.example"];
    std::fs::write(&config, alert_config(&lab, &state, "security = \"starttls\"", &to, &(auth(&lab) + &ca(&lab))))
        .unwrap();
    let log = dir.path().join("driver.log");
    let kinds: Vec<AlertKind> = AlertKind::ALL.into_iter().filter(|k| *k != AlertKind::Test).collect();
    let title = |i: usize| format!("lab alert {i:02} {}", kinds[i].name());
    let emit_times = std::cell::RefCell::new(Vec::new());
    let fast = |took: Duration, what: &str| {
        assert!(took < EMIT_BUDGET, "emit {what} took {took:?}");
        emit_times.borrow_mut().push(took);
    };

    // Server up: delivered at once.
    let mut d = Driver::start(&lab, &config, &log);
    for i in 0..4 {
        fast(d.emit(kinds[i], &title(i)), "(server up)");
    }
    wait_until("4 mails", Duration::from_secs(20), || lab.mails().len() == 4);

    // Server killed (connections refused): emits still return at once, alerts wait on disk.
    lab.fault(Host::Mail, Fault::Kill);
    for i in 4..8 {
        fast(d.emit(kinds[i], &title(i)), "(server killed)");
    }
    wait_until("a failed delivery attempt", Duration::from_secs(20), || d.log().contains("alert not delivered"));
    assert_eq!(lab.mails().len(), 4);
    lab.heal(Host::Mail);
    wait_until("8 mails after the server came back", Duration::from_secs(30), || lab.mails().len() == 8);

    // Server frozen (accepts TCP, never answers): the delivery task is stuck in a send, and an
    // emit on the failover path still returns at once.
    lab.fault(Host::Mail, Fault::Freeze);
    fast(d.emit(kinds[8], &title(8)), "(server frozen, first)");
    wait_until("a stalled delivery attempt", Duration::from_secs(20), || d.log().contains("sent no reply within 2s"));
    for i in 9..11 {
        fast(d.emit(kinds[i], &title(i)), "(server frozen, delivery stuck)");
    }
    lab.heal(Host::Mail);
    wait_until("11 mails after the freeze", Duration::from_secs(30), || lab.mails().len() == 11);

    // Server down across a restart: the outbox keeps the alerts and the next start sends them.
    lab.fault(Host::Mail, Fault::Kill);
    for i in 11..kinds.len() {
        fast(d.emit(kinds[i], &title(i)), "(before restart)");
    }
    d.drain(1);
    assert_eq!(queued(&state), kinds.len() - 11, "unsent alerts stay in the outbox");
    lab.heal(Host::Mail);
    let d = Driver::start(&lab, &config, &log);
    wait_until("all mails after the restart", Duration::from_secs(30), || lab.mails().len() == kinds.len());
    d.drain(3);
    assert_eq!(queued(&state), 0);

    // Every alert exactly once, in the order raised, with its content, to the accepted recipients.
    let got = mails(&lab);
    let subjects: Vec<&str> = got.iter().map(|m| m.header("Subject")).collect();
    let want: Vec<String> = (0..kinds.len())
        .map(|i| format!("[nfs-guard] web01 {}: {}", lab_event(kinds[i], "").role.name(), title(i)))
        .collect();
    assert_eq!(subjects, want);
    for (i, m) in got.iter().enumerate() {
        let kind = kinds[i].name();
        assert_eq!(m.header("X-Lab-Envelope-To"), "ops@lab.example,second@lab.example", "{kind}");
        assert_eq!((m.header("X-Lab-TLS"), m.header("X-Lab-Auth-User")), ("starttls", "alert"), "{kind}");
        for needle in [
            format!("Reason: lab reason for {kind}\n"),
            " UTC\n".to_owned(),
            " local\n".to_owned(),
            "Details:\n  elapsed: 1.5s\n".to_owned(),
            "Servers:\n  primary 10.203.0.2: down\n  backup 10.203.0.3: up\n".to_owned(),
            format!("What to do next:\n  lab next step for {kind}\n"),
            format!("({kind})\n"),
        ] {
            assert!(m.body.contains(&needle), "{kind}: body lacks {needle:?}:\n{}", m.body);
        }
    }
    let mut times = emit_times.into_inner();
    times.sort();
    eprintln!(
        "emit times over {} alerts (server up, killed, frozen): median {:?}, max {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let refused = d_log_count(&log, "recipient refused the alert for good");
    assert_eq!(refused, kinds.len(), "reject-me is refused once per alert, never retried");
}

fn d_log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(needle).count()
}

/// A loop-mounted ext4 that can be frozen (`fsfreeze`: every write on it blocks, like a stuck
/// disk). Dropping it thaws and unmounts it, also when the test fails.
struct FreezableDisk {
    dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
}

impl FreezableDisk {
    fn new() -> FreezableDisk {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        run_ok("mkfs.ext4", &["-q".as_ref(), img.as_os_str()]);
        run_ok("mount", &["-o".as_ref(), "loop".as_ref(), img.as_os_str(), mnt.as_os_str()]);
        FreezableDisk { dir, mnt }
    }
    fn freeze(&self, frozen: bool) {
        run_ok("fsfreeze", &[if frozen { "-f" } else { "-u" }.as_ref(), self.mnt.as_os_str()]);
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze").arg("-u").arg(&self.mnt).status();
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = &self.dir;
    }
}

fn run_ok(program: &str, args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A stuck state disk never blocks a role that raises an alert (`emit` on the failover path), not
/// even while the delivery task is busy with the disk too; the alerts reach the disk, in order, once
/// it is back.
#[test]
fn lab_a_frozen_state_disk_never_blocks_emit() {
    lab::require_root();
    // The runtime first, so the disk (dropped first) is thawed before the runtime's drop waits for
    // a worker that might be stuck on it.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let disk = FreezableDisk::new();
    let state = disk.mnt.join("state");
    let text = format!(
        "state_dir = {:?}\n[alert]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 1\nsecurity = \"none\"\n\
         from = \"ng@example.com\"\nto = [\"ops@example.com\"]\nhostname = \"web01\"\nretry_max = \"1s\"\n",
        p(&state)
    );
    let config = Config::parse(&disk.mnt.join("t.toml"), &text).unwrap();
    let alerts = rt.block_on(async {
        Alerts::start(config.alert.as_ref(), &config.state_dir, tokio_util::sync::CancellationToken::new()).unwrap()
    });
    let kinds = [AlertKind::FailoverStarted, AlertKind::FailoverCompleted, AlertKind::BothDown];
    rt.block_on(async { alerts.sink.emit(lab_event(kinds[0], "before the freeze")) });

    disk.freeze(true);
    let (tx, rx) = mpsc::channel();
    let sink = alerts.sink.clone();
    // From a runtime task, as the web controller does; delivery keeps failing (port 1) meanwhile.
    rt.spawn(async move {
        for (i, kind) in kinds.into_iter().enumerate().skip(1) {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let t = Instant::now();
            sink.emit(lab_event(kind, &format!("during the freeze {i}")));
            tx.send(t.elapsed()).unwrap();
        }
    });
    for i in 1..3 {
        let took =
            rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("emit {i} blocked on the frozen disk"));
        assert!(took < EMIT_BUDGET, "emit {i} took {took:?}");
    }
    disk.freeze(false);
    rt.block_on(alerts.drain(Duration::from_secs(3)));
    let mut names: Vec<String> = std::fs::read_dir(state.join("outbox/queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["00000000000000000001.json", "00000000000000000002.json", "00000000000000000003.json"]);
    let last = std::fs::read_to_string(state.join("outbox/queue/00000000000000000003.json")).unwrap();
    assert!(last.contains("during the freeze 2"), "{last}");
}
