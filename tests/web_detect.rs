//! Detection that is fast must not be trigger-happy: with the product's default check settings, a
//! primary that is only slow is never failed over. Lab test on Linux's own NFS client (the lab's
//! `web` host is a user-mode-linux guest, hard `NFSv3` mount) against nfs-ganesha: for 60 s the primary
//! is under heavy load (an NFS client in its own namespace flooding its nfs-ganesha with writes, a
//! local writer saturating its disk, CPU hogs) and its link from the web node has 150 ms +- 50 ms of
//! added latency (netem in the guest, on the packets to the primary only). Zero failovers, the primary
//! never judged DOWN, and the web mount keeps answering reads and writes throughout. Root only; a lab
//! or a guest that cannot come up fails the test.

#![allow(clippy::unwrap_used)]

#[path = "common/lab.rs"]
mod lab;
#[path = "common/web_node.rs"]
mod web_node;

use std::fs;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

use lab::{Host, Lab, WebKind};
use web_node::WebNode;

/// How long the primary stays loaded and slow.
const LOAD: Duration = Duration::from_secs(60);
/// The longest one small write + read through the mount may take under that load (hard mount:
/// a slow answer is waited for; the command channel into the guest costs ~1 s on its own).
const MOUNT_OP_BOUND: Duration = Duration::from_secs(20);

/// Latency on the guest's packets to `ip` only: a prio qdisc whose third band is netem, and a u32
/// filter sending the primary's packets there. Modules from the UML kernel's tree (no kmod in the
/// guest, as in its init).
fn netem_script(ip: &str) -> String {
    format!(
        r"set -e
M=/usr/lib/uml/modules/$(uname -r)/kernel/net/sched
for m in sch_prio sch_netem cls_u32; do
    grep -q ^$m' ' /proc/modules || busybox insmod $M/$m.ko
done
tc qdisc replace dev vec0 root handle 1: prio
tc qdisc replace dev vec0 parent 1:3 handle 30: netem delay 150ms 50ms distribution normal
tc filter add dev vec0 parent 1:0 protocol ip prio 1 u32 match ip dst {ip}/32 flowid 1:3
tc qdisc show dev vec0"
    )
}

/// The load in the primary's namespace. Each loop is its own process (pid = the shell's own, the
/// lab's nsenter execs), killed with its children on drop.
struct Load(Vec<Child>);

impl Load {
    fn start(lab: &Lab) -> Load {
        let p = lab.ip(Host::Primary);
        let data = lab.data_dir(Host::Primary);
        let scratch = lab.state_dir().join("dtl-flood.src");
        fs::write(&scratch, vec![0x5a_u8; 32 << 20]).unwrap();
        let loops = [
            // an NFS client writing 32 MiB files to its nfs-ganesha as fast as it takes them
            format!(
                "while :; do nfs-cp {} nfs://{p}{}/flood-nfs.bin >/dev/null 2>&1; done",
                scratch.display(),
                Lab::EXPORT
            ),
            // the export's disk saturated with synced writes
            format!(
                "while :; do dd if=/dev/zero of={}/flood-disk.bin bs=1M count=64 conv=fsync 2>/dev/null; done",
                data.display()
            ),
            // CPU hogs, one per core of this machine
            "while :; do :; done".to_owned(),
            "while :; do :; done".to_owned(),
        ];
        let children = loops
            .iter()
            .map(|l| {
                lab.command(Host::Primary, "setsid")
                    .args(["bash", "-c", l])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        Load(children)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // setsid made the shell a process-group leader: end the loop and what it runs now
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The daemon, killed when the test ends (or fails).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The average RTT `ping` reports from the guest to `ip`, in ms.
fn ping_avg_ms(lab: &Lab, ip: &str) -> f64 {
    let out = lab.exec_timeout(Host::Web, &["ping", "-c", "5", "-i", "0.2", ip], Duration::from_secs(20)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // rtt min/avg/max/mdev = 101.2/153.4/201.0/35.1 ms
    text.lines()
        .find_map(|l| l.split_once(" = ").and_then(|(_, v)| v.split('/').nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no rtt in ping output: {text}"))
}

#[test]
fn web_detect_a_loaded_slow_primary_is_never_failed_over() {
    let lab = Lab::up_with("dtl", WebKind::Uml);
    // under the lab's state dir: the guest sees it read-write at the same path
    let dir = tempfile::tempdir_in(lab.state_dir()).unwrap();
    let n = WebNode::new(&lab, dir.path(), "");
    // the product's defaults for every check key, and the kernel client with a hard mount
    let text = fs::read_to_string(&n.config).unwrap();
    let mut text: String = text
        .lines()
        .filter(|l| !["interval", "fall", "rise", "probe_timeout"].iter().any(|k| l.starts_with(&format!("{k} ="))))
        .fold(String::new(), |mut t, l| {
            t.push_str(l);
            t.push('\n');
            t
        });
    let soft = r#"options = "vers=3,soft,timeo=10""#;
    assert!(text.contains(soft), "WebNode's config changed: {text}");
    text = text.replace(soft, r#"options = "vers=3,hard,timeo=50,retrans=2""#);
    fs::write(&n.config, text).unwrap();
    // -v: every failed check is logged (debug), so the test can say how close the primary came
    let log = fs::OpenOptions::new().create(true).append(true).open(&n.log).unwrap();
    let daemon = Daemon(
        lab.command(Host::Web, BIN)
            .args(["--config", n.config.to_str().unwrap(), "--log-format", "human", "-v", "web"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !n.serving_primary_settled() {
        assert!(t.elapsed() < Duration::from_secs(60), "not serving the primary after 60 s; log:\n{}", n.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }

    let p = lab.ip(Host::Primary);
    let base = ping_avg_ms(&lab, &p);
    let out = lab.exec_timeout(Host::Web, &["bash", "-c", &netem_script(&p)], Duration::from_secs(30)).unwrap();
    assert!(out.status.success(), "netem in the guest: {}", String::from_utf8_lossy(&out.stderr));
    let slow = ping_avg_ms(&lab, &p);
    assert!(slow > 100.0, "netem not in effect: ping {base:.1} ms before, {slow:.1} ms after");

    let load = Load::start(&lab);
    let t = Instant::now();
    let (mut ops, mut op_max, mut polls) = (0_u32, Duration::ZERO, 0_u32);
    while t.elapsed() < LOAD {
        // the web mount keeps answering: a small write and its read back
        ops += 1;
        let cmd = format!("echo op {ops} >/mnt/nfs/dtl-alive && cat /mnt/nfs/dtl-alive");
        let op = Instant::now();
        let out = lab.exec_timeout(Host::Web, &["sh", "-c", &cmd], MOUNT_OP_BOUND).unwrap_or_else(|| {
            panic!("op {ops}: the mount did not answer within {MOUNT_OP_BOUND:?}; log:\n{}", n.log_tail())
        });
        op_max = op_max.max(op.elapsed());
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("op {ops}\n"), "op {ops}: {out:?}");
        // and the node stays on the primary, which it never judges DOWN
        let s = n.status();
        polls += 1;
        assert_eq!(s["active"], "primary", "failed over after {:?} of load: {s}\nlog:\n{}", t.elapsed(), n.log_tail());
        assert_eq!(s["epoch"], 0, "{s}");
        assert_ne!(s["servers"][0]["state"], "down", "primary judged DOWN after {:?}: {s}", t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    // the load really ran: every loop is still going, and both writers wrote
    let mut load = load;
    for c in &mut load.0 {
        assert!(c.try_wait().unwrap().is_none(), "a load loop ended early: {:?}", c.try_wait());
    }
    // (existence, not size: each loop truncates its file when it starts over, at any moment)
    for f in ["flood-nfs.bin", "flood-disk.bin"] {
        assert!(lab.data_dir(Host::Primary).join(f).exists(), "{f} was never written: the load did not run");
    }
    drop(load);
    let log = n.log_text();
    assert!(!log.contains("failing over"), "{log}");
    assert!(!log.contains("status=\"down\""), "a server was judged DOWN: {log}");
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("check failed") && l.contains("Primary")).collect();
    eprintln!(
        "web_detect: {:?} of load, ping to the primary {base:.1} ms -> {slow:.1} ms, {ops} mount ops (slowest {op_max:?}), \
         {polls} status polls; {} failed checks of the primary, the last: {}",
        t.elapsed(),
        failed.len(),
        failed.last().unwrap_or(&"none")
    );
    assert!(fs::read_to_string(lab.data_dir(Host::Primary).join("dtl-alive")).unwrap().starts_with("op "));
    drop(daemon);
    let _ = lab.exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(10));
}
