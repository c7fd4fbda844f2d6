//! Lab tests of `nfs-guard web` with the real binary inside the lab's `web` host: by default a
//! user-mode-linux guest running Linux's own NFS client (`mount -t nfs`, NFS v3 and v4.1, every test
//! on both), against real probes (ICMP, TCP, ONC-RPC NULL against nfs-ganesha), real rsync daemons and
//! real faults; `LAB_WEB=sshfs` runs them on the sshfs stand-in instead. Root only; a lab (or guest)
//! that cannot come up fails the test.

#![allow(clippy::unwrap_used)]

#[path = "common/lab.rs"]
mod lab;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lab::{output_with_timeout, wait_until, Fault, Host, Lab, WebKind};

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

/// Every test below runs twice, on NFS v3 and on v4.1 (`v3::NAME`, `v41::NAME`): the web node's
/// `options` say `vers=`, and the lab's name ends in the major version.
macro_rules! on_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v3 { $( #[test] fn $name() { super::$name("3"); } )* }
        mod v41 { $( #[test] fn $name() { super::$name("4.1"); } )* }
    };
}
on_both_versions!(
    web_lab_fails_over_on_host_faults,
    web_lab_fails_over_on_network_faults,
    web_lab_failback_after_reverse_sync_retries,
    web_lab_backup_dying_while_served_is_reconciled,
    web_lab_both_down_and_once_mode,
    web_lab_flapping_primary_causes_no_mount_flapping,
    web_lab_lost_network_never_switches,
);

/// The lab for NFS version `vers`, with `LAB_WEB`'s web host: the kernel NFS client in a
/// user-mode-linux guest unless `LAB_WEB=sshfs` (the stand-in, which ignores `vers`).
fn up(name: &str, vers: &str) -> Lab {
    let major = vers.split('.').next().unwrap_or(vers);
    Lab::up_with(&format!("{name}{major}"), WebKind::from_env_or(WebKind::Uml))
}
/// The web node's mount options: what a user runs on the kernel client (hard: a soft mount's
/// timeouts turn a slow server's reads into EIO), and the stand-in's (it ignores them).
fn mount_options(lab: &Lab, vers: &str) -> String {
    match lab.web_kind() {
        WebKind::Uml => format!("vers={vers},hard,timeo=50,retrans=2"),
        WebKind::Sshfs => format!("vers={vers},soft,timeo=10"),
    }
}
const INTERVAL_S: u64 = 1;
const FALL: u64 = 3;
/// `fall_certain` (the product's default): checks refused by the server's host in a row that make it DOWN.
const FALL_CERTAIN: u64 = 2;

/// A config for the lab, with a fresh state dir. `extra` is appended inside `[web]`.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    fn new(lab: &Lab, vers: &str, extra: &str) -> Node {
        // Under the lab's state dir: a uml web guest sees it at the same path (not this machine's /tmp).
        let dir = tempfile::tempdir_in(lab.state_dir()).unwrap();
        let config = dir.path().join("web.toml");
        let text = format!(
            r#"state_dir = "{state}"
[web]
mount_point = "{mp}"
fstype = "nfs"
options = "{options}"
interval = "{INTERVAL_S}s"
fall = {FALL}
rise = 3
probe_timeout = "800ms"
mount_timeout = "10s"
hold_down = "2s"
{extra}
[web.primary]
address = "{p}"
export = "{export}"
[web.backup]
address = "{b}"
export = "{export}"
[web.reverse_sync]
retry_initial = "1s"
retry_max = "2s"
timeout = "60s"
[web.reverse_sync.target]
host = "{p}"
module = "{module}"
user = "{user}"
password_file = "{pass}"
connect_timeout = "2s"
io_timeout = "10s"
"#,
            state = dir.path().join("state").display(),
            mp = Lab::WEB_MOUNT,
            options = mount_options(lab, vers),
            p = lab.ip(Host::Primary),
            b = lab.ip(Host::Backup),
            export = Lab::EXPORT,
            module = Lab::RSYNC_MODULE,
            user = Lab::RSYNC_USER,
            pass = lab.rsync_password_file().display(),
        );
        fs::write(&config, text).unwrap();
        Node { dir, config }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("web.log")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts `nfs-guard web` inside the web host, logging to web.log.
    fn start(&self, lab: &Lab, args: &[&str]) -> Daemon {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let child = lab
            .command(Host::Web, BIN)
            .args(["--config", self.config.to_str().unwrap(), "--log-format", "human", "web"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon(Some(child))
    }

    /// One `web --once` run inside the web host (bounded); its output is appended to web.log.
    fn once(&self, lab: &Lab) {
        let mut c = lab.command(Host::Web, BIN);
        c.args(["--config", self.config.to_str().unwrap(), "--log-format", "human", "web", "--once"]);
        let out = output_with_timeout(&mut c, Duration::from_secs(40)).expect("web --once did not finish in 40 s");
        let mut log = fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        std::io::Write::write_all(&mut log, &out.stdout).unwrap();
        std::io::Write::write_all(&mut log, &out.stderr).unwrap();
        assert!(out.status.success(), "web --once failed: {}", self.log_text());
    }

    /// `nfs-guard status --json` from the root namespace, bounded: it must answer at all times.
    fn status(&self) -> serde_json::Value {
        let mut c = Command::new(BIN);
        c.args(["--config", self.config.to_str().unwrap(), "status", "--json"]);
        let t = Instant::now();
        let out = output_with_timeout(&mut c, Duration::from_secs(3)).expect("status did not answer within 3 s");
        assert!(t.elapsed() < Duration::from_secs(2), "status took {:?}", t.elapsed());
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap_or_default()["web"].clone()
    }

    fn alerts(&self, title_part: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains("alert (no [alert] section") && l.contains(title_part)).count()
    }
}

/// The daemon; SIGTERM + wait on drop.
struct Daemon(Option<Child>);

impl Daemon {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let t = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if t.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("nfs-guard web did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn source(lab: &Lab, h: Host) -> String {
    lab.nfs_source(h)
}

/// Waits until the web host's mount serves `h` AND the daemon has verified it (status `active`).
fn wait_mounted(lab: &Lab, h: Host, within: Duration, node: &Node) {
    let want = source(lab, h);
    let name = if h == Host::Primary { "primary" } else { "backup" };
    let t = Instant::now();
    while lab.web_mount_source().as_deref() != Some(want.as_str()) || node.status()["active"] != name {
        assert!(t.elapsed() < within, "{want} not mounted within {within:?}; log:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Detaches whatever the web host has at the mount point (between scenarios).
fn unmount_all(lab: &Lab) {
    for _ in 0..4 {
        if lab.web_mount_source().is_none() {
            return;
        }
        let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(5));
    }
}

/// Fault the primary, measure the time until the web host's mount serves the backup; the controller's
/// status keeps answering throughout.
fn failover_scenario(lab: &Lab, vers: &str, fault: Fault) -> Duration {
    unmount_all(lab);
    let node = Node::new(lab, vers, "");
    let mut d = node.start(lab, &[]);
    wait_mounted(lab, Host::Primary, Duration::from_secs(15), &node);
    wait_until("primary checks up", Duration::from_secs(5), || node.status()["servers"][1]["state"] == "up");
    let t = Instant::now();
    lab.fault(Host::Primary, fault);
    let backup = source(lab, Host::Backup);
    let limit = Duration::from_secs(FALL * INTERVAL_S + 2);
    while lab.web_mount_source().as_deref() != Some(backup.as_str()) {
        assert!(t.elapsed() < limit + Duration::from_secs(5), "{fault:?}: no failover; log:\n{}", node.log_text());
        let _ = node.status(); // panics if status does not answer
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    assert!(took <= limit, "{fault:?}: failover took {took:?} (limit {limit:?}); log:\n{}", node.log_text());
    wait_until("status shows backup", Duration::from_secs(3), || node.status()["active"] == "backup");
    // the new mount serves the backup's data
    fs::write(lab.data_dir(Host::Backup).join("probe.txt"), "from backup").unwrap();
    let got = lab.exec_timeout(Host::Web, &["cat", "/mnt/nfs/probe.txt"], Duration::from_secs(10)).expect("read hung");
    assert_eq!(String::from_utf8_lossy(&got.stdout), "from backup");
    assert_eq!(node.alerts("failing over to backup"), 1, "{}", node.log_text());
    d.stop();
    lab.heal(Host::Primary);
    eprintln!("{fault:?}: failover in {} ms", took.as_millis());
    took
}

fn web_lab_fails_over_on_host_faults(vers: &str) {
    let lab = up("wfh", vers);
    for fault in [Fault::Freeze, Fault::Kill, Fault::StopNfs] {
        failover_scenario(&lab, vers, fault);
    }
    unmount_all(&lab);
}

fn web_lab_fails_over_on_network_faults(vers: &str) {
    let lab = up("wfn", vers);
    for fault in [Fault::Blackhole, Fault::Reject, Fault::Unplug] {
        failover_scenario(&lab, vers, fault);
    }
    unmount_all(&lab);
}

/// Every file written on the backup during the failover is on the primary after failback, byte for
/// byte; the reverse sync fails twice (the primary's rsync daemon is down while its NFS is up) and the
/// mount moves back only after it succeeds; a restart mid-failover resumes without remounting.
fn web_lab_failback_after_reverse_sync_retries(vers: &str) {
    let lab = up("wfb", vers);
    let node = Node::new(&lab, vers, "");
    let mut d = node.start(&lab, &[]);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(15), &node);
    fs::write(lab.data_dir(Host::Primary).join("old.txt"), "on primary before").unwrap();

    lab.fault(Host::Primary, Fault::StopNfs);
    wait_mounted(&lab, Host::Backup, Duration::from_secs(FALL * INTERVAL_S + 2), &node);

    // restart mid-failover: the new process resumes on the backup, same epoch, no remount
    let mount_id = mount_id(&lab);
    d.kill();
    let mut d = node.start(&lab, &[]);
    wait_until("restarted daemon publishes", Duration::from_secs(5), || node.status()["active"] == "backup");
    assert_eq!(node.status()["epoch"], 1);
    assert_eq!(mount_id, mount_id_now(&lab), "the restart remounted");

    // writes during the failover, names that a shell would mangle included
    let script = r#"set -e
mkdir -p "/mnt/nfs/dir with space/sub"
for i in $(seq 1 40); do head -c $((i * 997)) /dev/urandom > "/mnt/nfs/dir with space/sub/f$i"; done
printf 'x' > "/mnt/nfs/new
line"
printf 'changed on backup' > /mnt/nfs/old.txt
sync"#;
    let out = lab.exec_timeout(Host::Web, &["sh", "-c", script], Duration::from_secs(30)).expect("writes hung");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // primary back, but its rsync daemon stays down: the reverse sync fails, the mount stays
    lab.heal(Host::Primary);
    lab.fault(Host::Primary, Fault::StopRsyncd);
    wait_until("two failed reverse syncs", Duration::from_secs(40), || {
        node.alerts("reverse sync to primary") >= 2 && node.alerts("failed (attempt 2)") >= 1
    });
    assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Backup)), "failed back before a successful sync");
    assert!(!lab.data_dir(Host::Primary).join("dir with space").exists(), "nothing synced yet");

    lab.heal(Host::Primary);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(30), &node);
    wait_until("failback completed", Duration::from_secs(20), || {
        let s = node.status();
        s["active"] == "primary" && s["pending_reverse_sync"] == false && s["phase"]["phase"] == "serving"
    });
    let log = node.log_text();
    assert!(log.contains("reverse sync to primary") && log.contains("succeeded"), "{log}");
    assert!(node.alerts("failed back to primary") == 1, "{log}");
    assert_eq!(same_tree(&lab.data_dir(Host::Backup), &lab.data_dir(Host::Primary)), Vec::<String>::new());
    if let (Some(a), Some(b)) = (log_time(&log, "to=Staging"), log_time(&log, "to=CatchingUp")) {
        eprintln!("staged switch (mount at staging dir, verify, bind old, detach + move, verify): {} ms", b - a);
    }
    // the web host reads the primary now
    fs::write(lab.data_dir(Host::Primary).join("after.txt"), "primary again").unwrap();
    let got = lab.exec_timeout(Host::Web, &["cat", "/mnt/nfs/after.txt"], Duration::from_secs(10)).unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "primary again");
    d.stop();
    // stopping never unmounts
    assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Primary)));
    unmount_all(&lab);
}

/// The backup dies while it is served, before any reverse sync succeeded (the primary's rsync daemon
/// is down): the node moves to the primary and records a reconciliation of the epoch. After a restart,
/// `--once` timer runs mount the healed backup at a staging dir and copy the writes made during the
/// failover to the primary, byte for byte, without ever moving the mount; the flag clears.
fn web_lab_backup_dying_while_served_is_reconciled(vers: &str) {
    let lab = up("wrc", vers);
    let node = Node::new(&lab, vers, "");
    let mut d = node.start(&lab, &[]);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(15), &node);
    lab.fault(Host::Primary, Fault::Freeze);
    wait_mounted(&lab, Host::Backup, Duration::from_secs(FALL * INTERVAL_S + 8), &node);
    let script = r#"set -e
mkdir -p "/mnt/nfs/during failover/sub"
for i in $(seq 1 20); do head -c $((i * 1531)) /dev/urandom > "/mnt/nfs/during failover/sub/f$i"; done
printf 'y' > "/mnt/nfs/odd
name"
sync"#;
    let out = lab.exec_timeout(Host::Web, &["sh", "-c", script], Duration::from_secs(30)).expect("writes hung");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // the primary is back but refuses rsync: the node stays on the backup...
    lab.heal(Host::Primary);
    lab.fault(Host::Primary, Fault::StopRsyncd);
    wait_until("a failed reverse sync", Duration::from_secs(30), || node.alerts("failed (attempt 1)") >= 1);
    assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Backup)));
    // ...until the backup dies: the node moves to the primary WITHOUT the backup's writes
    lab.fault(Host::Backup, Fault::Kill);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(FALL * INTERVAL_S + 8), &node);
    wait_until("reconciliation recorded", Duration::from_secs(5), || node.status()["pending_reconcile_epoch"] == 1);
    assert!(node.log_text().contains("WITHOUT reverse sync"), "{}", node.log_text());
    assert!(!lab.data_dir(Host::Primary).join("during failover").exists(), "nothing synced yet");
    d.stop();

    // the backup and the primary's rsync daemon come back; `--once` timer runs reconcile
    lab.heal(Host::Backup);
    lab.heal(Host::Primary);
    let t = Instant::now();
    while node.status()["pending_reconcile_epoch"] != serde_json::Value::Null {
        assert!(t.elapsed() < Duration::from_secs(40), "not reconciled; log:\n{}", node.log_text());
        node.once(&lab);
        assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Primary)), "the mount moved");
    }
    let log = node.log_text();
    assert_eq!(node.alerts("reconciliation backup"), 2, "started + succeeded: {log}");
    assert!(log.contains("succeeded"), "{log}");
    assert_eq!(same_tree(&lab.data_dir(Host::Backup), &lab.data_dir(Host::Primary)), Vec::<String>::new());
    assert!(lab.data_dir(Host::Primary).join("during failover/sub/f20").exists());
    let mi = lab.web_mountinfo();
    assert!(!mi.contains("stage/reconcile"), "staging mount left behind: {mi}");
    unmount_all(&lab);
}

/// Both servers down: no switch, one alert. Then `--once` across several timer runs behaves like the
/// daemon: the failover happens on the `fall_certain`-th failed run (a stopped NFS service refuses:
/// certain evidence), not before.
fn web_lab_both_down_and_once_mode(vers: &str) {
    let lab = up("wbo", vers);
    let node = Node::new(&lab, vers, "");
    node.once(&lab);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(1), &node);

    lab.fault(Host::Primary, Fault::StopNfs);
    for run in 1..FALL_CERTAIN {
        node.once(&lab);
        assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Primary)), "switched after {run} run(s)");
    }
    node.once(&lab);
    assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Backup)), "{}", node.log_text());
    assert_eq!(node.status()["epoch"], 1);

    // both down, daemon mode: stays on the backup, one both-down alert
    lab.fault(Host::Backup, Fault::StopNfs);
    let mut d = node.start(&lab, &[]);
    wait_until("both-down alert", Duration::from_secs(15), || node.alerts("both NFS servers are DOWN") == 1);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Backup)));
        let _ = node.status();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(node.alerts("both NFS servers are DOWN"), 1, "{}", node.log_text());
    d.stop();
    unmount_all(&lab);
}

/// A primary that keeps coming back and dying again while the node is on the backup never moves the
/// mount: every recovery restarts the hold-down, no reverse sync starts, the backup mount stays the
/// same; when it finally stays up, the node fails back once.
fn web_lab_flapping_primary_causes_no_mount_flapping(vers: &str) {
    let lab = up("wfl", vers);
    let node = Node::new(&lab, vers, "");
    // a longer hold-down than each "up" phase below
    let text = fs::read_to_string(&node.config).unwrap().replace("hold_down = \"2s\"", "hold_down = \"6s\"");
    fs::write(&node.config, text).unwrap();
    let mut d = node.start(&lab, &[]);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(15), &node);
    lab.fault(Host::Primary, Fault::StopNfs);
    wait_mounted(&lab, Host::Backup, Duration::from_secs(FALL * INTERVAL_S + 2), &node);
    let id = mount_id_now(&lab);
    for round in 0..3 {
        lab.heal(Host::Primary);
        wait_until("primary up", Duration::from_secs(10), || node.status()["servers"][0]["state"] == "up");
        lab.fault(Host::Primary, Fault::StopNfs);
        let t = Instant::now();
        while node.status()["servers"][0]["state"] != "down" {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "round {round}: primary not down within 10 s; status {}; log:\n{}",
                node.status(),
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(mount_id_now(&lab), id, "round {round}: the mount moved; log:\n{}", node.log_text());
    }
    assert_eq!(node.alerts("reverse sync backup"), 0, "{}", node.log_text());
    assert_eq!(node.alerts("is up again"), 3, "one recovery alert per recovery: {}", node.log_text());
    lab.heal(Host::Primary);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(40), &node);
    assert_eq!(node.alerts("failing over to backup"), 1);
    assert_eq!(node.alerts("reverse sync backup"), 1, "{}", node.log_text());
    d.stop();
    unmount_all(&lab);
}

/// The web node itself loses its network (its switch port goes down): every server AND the witness
/// fail, nfs-guard says so once and does not switch.
fn web_lab_lost_network_never_switches(vers: &str) {
    let lab = up("wnl", vers);
    let node = Node::new(&lab, vers, &format!("witness = \"{}\"", lab.ip(Host::Mail)));
    let mut d = node.start(&lab, &[]);
    wait_mounted(&lab, Host::Primary, Duration::from_secs(15), &node);
    lab.fault(Host::Web, Fault::Unplug);
    wait_until("network-lost alert", Duration::from_secs(15), || node.alerts("lost its network") == 1);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Primary)), "switched: {}", node.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.alerts("lost its network"), 1);
    assert_eq!(node.alerts("failing over"), 0, "{}", node.log_text());
    lab.heal(Host::Web);
    wait_until("servers up again", Duration::from_secs(15), || node.status()["servers"][0]["state"] == "up");
    assert_eq!(lab.web_mount_source(), Some(source(&lab, Host::Primary)));
    d.stop();
    unmount_all(&lab);
}

/// Milliseconds of the day of the first log line containing `what` (human log format, UTC stamps).
fn log_time(log: &str, what: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let t = line.split('T').nth(1)?.split('Z').next()?;
    let mut it = t.split(':');
    let (h, m, s): (u64, u64, f64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((h * 3600 + m * 60) * 1000 + (s * 1000.0) as u64)
}

fn mount_id(lab: &Lab) -> u64 {
    mount_id_now(lab)
}

fn mount_id_now(lab: &Lab) -> u64 {
    let mi = lab.web_mountinfo();
    mi.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(Lab::WEB_MOUNT))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .expect("nothing mounted")
}

/// Relative paths whose content differs (or that are missing) in `b` compared with `a`.
fn same_tree(a: &Path, b: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(a.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            } else if fs::read(a.join(&r)).ok() != fs::read(b.join(&r)).ok() {
                diffs.push(r.display().to_string());
            }
        }
    }
    diffs
}
