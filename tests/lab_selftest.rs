//! Acceptance test of the test lab itself (`scripts/lab.sh` + `tests/common/lab.rs`): every service
//! answers, every fault breaks exactly what it should and nothing else, `heal` restores it, `down`
//! leaves nothing behind, and two labs run side by side. Needs root: it FAILS (never skips) otherwise.
//!
//! Everything that talks to a lab host runs inside `web` (the test process cannot reach the lab), and
//! every probe is bounded (`timeout -s KILL`, rsync `--contimeout/--timeout`). Probes tell a timeout
//! from a refusal by what happened (killed by the timeout vs. an error), not by wall-clock time.
#![allow(clippy::unwrap_used)]

#[path = "common/lab.rs"]
mod lab;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lab::{pid_alive, wait_until, Fault, Host, Lab, WebKind, LAB_BASE};

/// Exit code of `timeout -s KILL` when it had to kill the command.
const KILLED: i32 = 137;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(KILLED)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ------------------------------------------------------------------------------------------------
// Probes (all run from `web`)

#[derive(Debug, Clone, PartialEq)]
enum Conn {
    Open,
    Refused,
    Timeout,
    Other(String),
}

/// TCP connect from `web` to ip:port, 3 s limit.
fn tcp(lab: &Lab, ip: &str, port: u16) -> Conn {
    let out = lab.exec(
        Host::Web,
        &["timeout", "-s", "KILL", "3", "bash", "-c", r#"exec 3<>"/dev/tcp/$0/$1""#, ip, &port.to_string()],
    );
    match code(&out) {
        0 => Conn::Open,
        KILLED => Conn::Timeout,
        _ => {
            let err = text(&out.stderr);
            if err.contains("Connection refused") {
                Conn::Refused
            } else {
                Conn::Other(err)
            }
        }
    }
}

/// First line the server sends after a TCP connect (2 s to send it), or None.
fn banner(lab: &Lab, ip: &str, port: u16) -> Option<String> {
    let script = r#"exec 3<>"/dev/tcp/$0/$1" || exit 2; IFS= read -r -t 2 l <&3 || exit 3; printf %s "$l""#;
    let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "5", "bash", "-c", script, ip, &port.to_string()]);
    (code(&out) == 0).then(|| text(&out.stdout))
}

/// (answered, output) of one ping from `web`.
fn ping(lab: &Lab, ip: &str) -> (bool, String) {
    let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "5", "ping", "-n", "-c1", "-W2", ip]);
    (code(&out) == 0, text(&out.stdout) + &text(&out.stderr))
}

/// Exit code of an authenticated rsync listing of the host's module (3 s connect / 3 s I/O limits).
fn rsync_list(lab: &Lab, host: Host) -> i32 {
    let pass = format!("--password-file={}", s(&lab.rsync_password_file()));
    let url = lab.rsync_url(host);
    code(&lab.exec(Host::Web, &["timeout", "-s", "KILL", "20", "rsync", "--contimeout=3", "--timeout=3", &pass, &url]))
}

/// Exit code of an ONC-RPC NULL call to NFS (program 100003) version `vers` over TCP, 3 s limit.
fn nfs_null(lab: &Lab, host: Host, vers: &str) -> i32 {
    code(&lab.exec(Host::Web, &["timeout", "-s", "KILL", "3", "rpcinfo", "-T", "tcp", &lab.ip(host), "100003", vers]))
}

/// What one storage host looks like from `web`.
#[derive(Debug)]
struct StorageProbe {
    ping: bool,
    ping_out: String,
    tcp_rpcbind: Conn,
    tcp_nfs: Conn,
    tcp_rsync: Conn,
    ssh_banner: Option<String>,
    rsync: i32,
    nfs3: i32,
    nfs4: i32,
}

/// All probes of a storage host, run in parallel (a faulted host costs one timeout, not nine).
fn probe_storage(lab: &Lab, host: Host) -> StorageProbe {
    let ip = lab.ip(host);
    let ip = ip.as_str();
    std::thread::scope(|sc| {
        let ping_t = sc.spawn(|| ping(lab, ip));
        let rpcb = sc.spawn(|| tcp(lab, ip, 111));
        let nfs = sc.spawn(|| tcp(lab, ip, 2049));
        let rsy = sc.spawn(|| tcp(lab, ip, 873));
        let ssh = sc.spawn(|| banner(lab, ip, 22));
        let rsync = sc.spawn(|| rsync_list(lab, host));
        let nfs3 = sc.spawn(|| nfs_null(lab, host, "3"));
        let nfs4 = sc.spawn(|| nfs_null(lab, host, "4"));
        let (ping, ping_out) = ping_t.join().unwrap();
        StorageProbe {
            ping,
            ping_out,
            tcp_rpcbind: rpcb.join().unwrap(),
            tcp_nfs: nfs.join().unwrap(),
            tcp_rsync: rsy.join().unwrap(),
            ssh_banner: ssh.join().unwrap(),
            rsync: rsync.join().unwrap(),
            nfs3: nfs3.join().unwrap(),
            nfs4: nfs4.join().unwrap(),
        }
    })
}

fn assert_storage_healthy(lab: &Lab, host: Host, when: &str) {
    let p = probe_storage(lab, host);
    let ok = p.ping
        && p.tcp_rpcbind == Conn::Open
        && p.tcp_nfs == Conn::Open
        && p.tcp_rsync == Conn::Open
        && p.ssh_banner.as_deref().is_some_and(|b| b.starts_with("SSH-2.0"))
        && p.rsync == 0
        && p.nfs3 == 0
        && p.nfs4 == 0;
    assert!(ok, "{when}: {host:?} should answer everything: {p:#?}\n{}", lab.status());
}

fn assert_mail_healthy(lab: &Lab, when: &str) {
    let ip = lab.ip(Host::Mail);
    for port in [25, 587] {
        let b = banner(lab, &ip, port);
        assert!(b.as_deref().is_some_and(|b| b.starts_with("220 ")), "{when}: SMTP banner on {port}: {b:?}");
    }
    assert_eq!(tcp(lab, &ip, 465), Conn::Open, "{when}: port 465");
}

// ------------------------------------------------------------------------------------------------
// SMTP client (Debian's python3 smtplib, inside web)

const SMTP_SCRIPT: &str = r#"
import smtplib, ssl, sys
ip, cafile, passfile, tag = sys.argv[1:5]
pw = open(passfile).read()
ctx = ssl.create_default_context(cafile=cafile)
def msg(n):
    return "From: selftest@lab.example\r\nTo: ops@lab.example\r\nSubject: %s %s\r\n\r\nbody of %s\r\n" % (tag, n, n)
def step(name, f):
    try:
        r = f()
        print("%s: ok %s" % (name, r))
    except smtplib.SMTPRecipientsRefused as e:
        print("%s: rcpt-refused %s" % (name, sorted(c for c, _ in e.recipients.values())))
    except smtplib.SMTPSenderRefused as e:
        print("%s: sender-refused %d" % (name, e.smtp_code))
    except smtplib.SMTPAuthenticationError as e:
        print("%s: auth-failed %d" % (name, e.smtp_code))
    except ssl.SSLCertVerificationError as e:
        print("%s: cert-untrusted" % name)
    except Exception as e:
        print("%s: error %s %s" % (name, type(e).__name__, e))
F = "selftest@lab.example"

def plain():
    s = smtplib.SMTP(ip, 25, timeout=5); s.ehlo()
    step("25-ehlo", lambda: "auth=%s starttls=%s" % (s.has_extn("auth"), s.has_extn("starttls")))
    step("25-send", lambda: s.sendmail(F, ["ops@lab.example"], msg("plain")))
    step("25-reject", lambda: s.sendmail(F, ["reject-me@lab.example"], msg("never")))
    step("25-mixed", lambda: sorted((k, v[0]) for k, v in s.sendmail(F, ["ops2@lab.example", "reject-x@lab.example"], msg("mixed")).items()))
    s.quit()

def submission():
    s = smtplib.SMTP(ip, 587, timeout=5); s.ehlo()
    step("587-ehlo", lambda: "auth=%s starttls=%s" % (s.has_extn("auth"), s.has_extn("starttls")))
    step("587-before-starttls", lambda: s.sendmail(F, ["ops@lab.example"], msg("never")))
    s.close()
    s = smtplib.SMTP(ip, 587, timeout=5)
    step("587-untrusted", lambda: s.starttls(context=ssl.create_default_context()))
    s.close()
    s = smtplib.SMTP(ip, 587, timeout=5); s.starttls(context=ctx); s.ehlo()
    step("587-tls-ehlo", lambda: "auth=%s" % s.has_extn("auth"))
    step("587-before-auth", lambda: s.sendmail(F, ["ops@lab.example"], msg("never")))
    step("587-badpass", lambda: s.login("alert", pw + "x"))
    s.close()
    s = smtplib.SMTP(ip, 587, timeout=5); s.starttls(context=ctx)
    step("587-login", lambda: s.login("alert", pw)[0])
    step("587-send", lambda: s.sendmail(F, ["ops@lab.example"], msg("submission")))
    step("587-reject", lambda: s.sendmail(F, ["reject@lab.example"], msg("never")))
    s.quit()

def smtps():
    s = smtplib.SMTP_SSL(ip, 465, timeout=5, context=ctx)
    step("465-before-auth", lambda: s.sendmail(F, ["ops@lab.example"], msg("never")))
    step("465-login", lambda: s.login("alert", pw)[0])
    step("465-send", lambda: s.sendmail(F, ["ops@lab.example"], msg("smtps")))
    step("465-reject", lambda: s.sendmail(F, ["rejected@lab.example"], msg("never")))
    s.quit()

for part in (plain, submission, smtps):
    try:
        part()
    except Exception as e:
        print("%s: error %s %s" % (part.__name__, type(e).__name__, e))
"#;

const SMTP_EXPECTED: &str = "\
25-ehlo: ok auth=False starttls=False
25-send: ok {}
25-reject: rcpt-refused [550]
25-mixed: ok [('reject-x@lab.example', 550)]
587-ehlo: ok auth=False starttls=True
587-before-starttls: sender-refused 530
587-untrusted: cert-untrusted
587-tls-ehlo: ok auth=True
587-before-auth: sender-refused 530
587-badpass: auth-failed 535
587-login: ok 235
587-send: ok {}
587-reject: rcpt-refused [550]
465-before-auth: sender-refused 530
465-login: ok 235
465-send: ok {}
465-reject: rcpt-refused [550]
";

fn header<'a>(raw: &'a str, name: &str) -> &'a str {
    raw.lines()
        .take_while(|l| !l.trim_end().is_empty())
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
        .unwrap_or("")
}

fn check_smtp(lab: &Lab) {
    let ca = s(&lab.smtp_cert());
    let pass = s(&lab.smtp_password_file());
    let ip = lab.ip(Host::Mail);
    let out = lab
        .exec_timeout(
            Host::Web,
            &["/usr/bin/python3", "-c", SMTP_SCRIPT, &ip, &ca, &pass, "selftest"],
            Duration::from_secs(60),
        )
        .expect("the SMTP client script hung");
    assert_eq!(text(&out.stdout), SMTP_EXPECTED, "stderr: {}", text(&out.stderr));

    // Exactly the four accepted messages, one file each, in arrival order, with the lab headers.
    wait_until("4 mails", Duration::from_secs(10), || lab.mails().len() >= 4);
    let mails = lab.mails();
    assert_eq!(mails.len(), 4, "{mails:#?}");
    let got: Vec<(&str, &str, &str, &str, &str)> = mails
        .iter()
        .map(|m| {
            (
                header(m, "Subject"),
                header(m, "X-Lab-Port"),
                header(m, "X-Lab-TLS"),
                header(m, "X-Lab-Auth-User"),
                header(m, "X-Lab-Envelope-To"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("selftest plain", "25", "none", "-", "ops@lab.example"),
            ("selftest mixed", "25", "none", "-", "ops2@lab.example"),
            ("selftest submission", "587", "starttls", "alert", "ops@lab.example"),
            ("selftest smtps", "465", "implicit", "alert", "ops@lab.example"),
        ]
    );
    assert!(mails[0].contains("body of plain"), "{}", mails[0]);
    assert_eq!(header(&mails[0], "X-Lab-Envelope-From"), "selftest@lab.example");
    for f in lab.mail_files() {
        assert!(f.parent().unwrap().ends_with("mail/new"), "{}", f.display());
    }
    let mode = fs::metadata(lab.smtp_password_file()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "smtp.pass mode");
    assert!(!lab.smtp_password().ends_with('\n'), "smtp.pass must have no trailing newline");
}

// ------------------------------------------------------------------------------------------------
// rsync and NFS content checks

/// Pushes a tree with odd owners, modes and a symlink to `host`, checks it arrived as-is in the data
/// dir, pulls it back and compares.
/// `rsync -a --numeric-ids` run on `web` from `from` to `to` (bounded in time); panics on failure.
fn rsync_from_web(lab: &Lab, pass_arg: &str, from: &str, to: &str) {
    let argv = ["timeout", "-s", "KILL", "30", "rsync", "-a", "--numeric-ids", "--contimeout=5", "--timeout=10"];
    lab.run(Host::Web, &[&argv[..], &[pass_arg, from, to]].concat());
}

fn check_rsync_push_pull(lab: &Lab, host: Host) {
    let work = lab.state_dir().join("selftest").join(host.name());
    let src = work.join("src");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("owned.txt"), "owned by 1234:2345\n").unwrap();
    fs::set_permissions(src.join("owned.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(src.join("owned.txt"), Some(1234), Some(2345)).unwrap();
    fs::write(src.join("sub/plain.txt"), "plain\n").unwrap();
    std::os::unix::fs::symlink("owned.txt", src.join("link")).unwrap();

    let pass = format!("--password-file={}", s(&lab.rsync_password_file()));
    let url = lab.rsync_url(host);
    let push_src = format!("{}/", s(&src));
    rsync_from_web(lab, &pass, &push_src, &url);
    let data = lab.data_dir(host);
    let m = fs::metadata(data.join("owned.txt")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 2345, 0o640), "owner/mode replicated to {host:?}");
    assert_eq!(fs::read_link(data.join("link")).unwrap(), PathBuf::from("owned.txt"), "symlink not munged");
    assert_eq!(fs::read_to_string(data.join("sub/plain.txt")).unwrap(), "plain\n");

    let back = work.join("back");
    let pull_dst = format!("{}/", s(&back));
    rsync_from_web(lab, &pass, &url, &pull_dst);
    assert_eq!(fs::read_to_string(back.join("owned.txt")).unwrap(), "owned by 1234:2345\n");
    assert_eq!(fs::metadata(back.join("owned.txt")).unwrap().uid(), 1234);

    // Wrong password: refused (exit 5).
    let bad = work.join("bad.pass");
    fs::write(&bad, "wrong\n").unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
    let bad_arg = format!("--password-file={}", s(&bad));
    let out =
        lab.exec(Host::Web, &["timeout", "-s", "KILL", "20", "rsync", "--contimeout=3", "--timeout=3", &bad_arg, &url]);
    assert_eq!(code(&out), 5, "bad password: {}", text(&out.stderr));
}

fn check_nfs(lab: &Lab, host: Host) {
    fs::write(lab.data_dir(host).join("nfs-visible.txt"), "x").unwrap();
    let ip = lab.ip(host);
    for vers in ["3", "4"] {
        let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "5", "rpcinfo", "-T", "tcp", &ip, "100003", vers]);
        assert_eq!(code(&out), 0, "NFS v{vers} NULL call to {host:?}: {}{}", text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stdout).contains("ready and waiting"), "{}", text(&out.stdout));
    }
    for url in [format!("nfs://{ip}/srv/nfs"), format!("nfs://{ip}/srv/nfs?version=4")] {
        let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "10", "nfs-ls", &url]);
        assert_eq!(code(&out), 0, "nfs-ls {url}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("nfs-visible.txt"), "nfs-ls {url}: {}", text(&out.stdout));
    }

    // No stale content: a file replaced by rsync (new inode) reads new at once over NFS.
    let nfs_cat = |name: &str| {
        let url = format!("nfs://{ip}/srv/nfs/{name}");
        let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "10", "nfs-cat", &url]);
        assert_eq!(code(&out), 0, "nfs-cat {url}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    fs::write(lab.data_dir(host).join("stale.txt"), "v1\n").unwrap();
    assert_eq!(nfs_cat("stale.txt"), "v1\n");
    let src = lab.state_dir().join("selftest").join(format!("nfs-{}", host.name()));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("stale.txt"), "version two\n").unwrap();
    let pass = format!("--password-file={}", s(&lab.rsync_password_file()));
    let push_src = format!("{}/", s(&src));
    lab.run(
        Host::Web,
        &[
            "timeout",
            "-s",
            "KILL",
            "30",
            "rsync",
            "-a",
            "--contimeout=5",
            "--timeout=10",
            &pass,
            &push_src,
            &lab.rsync_url(host),
        ],
    );
    assert_eq!(nfs_cat("stale.txt"), "version two\n", "NFS served stale content after rsync replaced the file");
}

// ------------------------------------------------------------------------------------------------
// The mount stand-in

fn mount(lab: &Lab, fstype: &str, host: Host, opts: &str) -> (i32, String, Duration) {
    let t = Instant::now();
    let src = lab.nfs_source(host);
    let out =
        lab.exec(Host::Web, &["timeout", "-s", "KILL", "30", "mount", "-t", fstype, &src, Lab::WEB_MOUNT, "-o", opts]);
    (code(&out), text(&out.stdout) + &text(&out.stderr), t.elapsed())
}

fn umount_lazy(lab: &Lab) {
    let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "5", "umount", "-l", Lab::WEB_MOUNT]);
    assert_eq!(code(&out), 0, "umount -l: {}", text(&out.stderr));
    assert_eq!(lab.web_mount_source(), None, "still mounted after umount -l");
}

fn check_mount(lab: &Lab) {
    let primary = lab.data_dir(Host::Primary);
    fs::write(primary.join("hello.txt"), "hello from primary\n").unwrap();
    fs::write(lab.data_dir(Host::Backup).join("hello.txt"), "hello from backup\n").unwrap();
    assert_eq!(lab.web_mount_source(), None);

    // NFS v3-style options are accepted; the mount shows the NFS source in web's mountinfo.
    let (rc, out, _) = mount(lab, "nfs", Host::Primary, "vers=3,soft,timeo=10,retrans=2,proto=tcp,nolock,noatime");
    assert_eq!(rc, 0, "mount -t nfs primary: {out}");
    assert_eq!(lab.web_mount_source(), Some(lab.nfs_source(Host::Primary)));
    let mi = lab.run(Host::Web, &["cat", "/proc/self/mountinfo"]);
    assert!(
        mi.lines().any(|l| l.contains(" /mnt/nfs ") && l.contains(&format!(" {} ", lab.nfs_source(Host::Primary)))),
        "{mi}"
    );
    assert_eq!(
        lab.run(Host::Web, &["timeout", "-s", "KILL", "10", "cat", "/mnt/nfs/hello.txt"]),
        "hello from primary\n"
    );
    // Writes go through to the primary's data dir, and changes there show at once (no caching).
    lab.run(Host::Web, &["timeout", "-s", "KILL", "10", "sh", "-c", "echo written-by-web > /mnt/nfs/from-web.txt"]);
    assert_eq!(fs::read_to_string(primary.join("from-web.txt")).unwrap(), "written-by-web\n");
    fs::write(primary.join("hello.txt"), "changed on primary\n").unwrap();
    assert_eq!(
        lab.run(Host::Web, &["timeout", "-s", "KILL", "10", "cat", "/mnt/nfs/hello.txt"]),
        "changed on primary\n"
    );
    // The root namespace sees none of it.
    assert!(!fs::read_to_string("/proc/self/mountinfo").unwrap().contains(" /mnt/nfs "));

    // Frozen server: access blocks, then fails; the mount stays; umount -l returns at once;
    // a new mount fails within seconds.
    lab.fault(Host::Primary, Fault::Freeze);
    let t = Instant::now();
    let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "20", "stat", "/mnt/nfs/hello.txt"]);
    let took = t.elapsed();
    assert_ne!(code(&out), 0, "stat on a frozen server's mount must not succeed");
    assert!(took >= Duration::from_secs(2), "stat on a frozen server should block first, took {took:?}");
    assert_eq!(lab.web_mount_source(), Some(lab.nfs_source(Host::Primary)), "the dead mount stays, like NFS");
    let t = Instant::now();
    umount_lazy(lab);
    assert!(t.elapsed() < Duration::from_secs(3), "umount -l took {:?}", t.elapsed());
    let (rc, out, took) = mount(lab, "nfs", Host::Primary, "vers=3,soft");
    assert_ne!(rc, 0, "mount of a frozen server must fail: {out}");
    assert!(took < Duration::from_secs(15), "failed mount took {took:?}");
    assert_eq!(lab.web_mount_source(), None);

    // Failover-style: the backup mounts (nfs4 spelling) while the primary is still frozen.
    let (rc, out, _) = mount(lab, "nfs4", Host::Backup, "soft,timeo=10");
    assert_eq!(rc, 0, "mount -t nfs4 backup: {out}");
    assert_eq!(lab.web_mount_source(), Some(lab.nfs_source(Host::Backup)));
    assert_eq!(
        lab.run(Host::Web, &["timeout", "-s", "KILL", "10", "cat", "/mnt/nfs/hello.txt"]),
        "hello from backup\n"
    );
    umount_lazy(lab);
    lab.heal(Host::Primary);

    // Killed server: a mount fails at once; after heal it works again.
    lab.fault(Host::Primary, Fault::Kill);
    let (rc, out, took) = mount(lab, "nfs", Host::Primary, "soft");
    assert_ne!(rc, 0, "mount of a killed server must fail: {out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    lab.heal(Host::Primary);
    let (rc, out, _) = mount(lab, "nfs", Host::Primary, "soft");
    assert_eq!(rc, 0, "mount after heal: {out}");
    // NFS stopped: the mounted share fails at once (EIO), a new mount fails; both work after heal.
    lab.fault(Host::Primary, Fault::StopNfs);
    let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "20", "cat", "/mnt/nfs/hello.txt"]);
    assert_ne!(code(&out), 0, "read through the mount of a stopped NFS server must fail");
    assert_eq!(lab.web_mount_source(), Some(lab.nfs_source(Host::Primary)));
    lab.heal(Host::Primary);
    wait_until("the mount to answer again after heal from stop-nfs", Duration::from_secs(30), || {
        code(&lab.exec(Host::Web, &["timeout", "-s", "KILL", "10", "cat", "/mnt/nfs/hello.txt"])) == 0
    });
    // A blackholed server: the mounted share stops answering, then works again after heal.
    lab.fault(Host::Primary, Fault::Blackhole);
    let out = lab.exec(Host::Web, &["timeout", "-s", "KILL", "20", "cat", "/mnt/nfs/hello.txt"]);
    assert_ne!(code(&out), 0, "read through a blackholed mount must not succeed");
    lab.heal(Host::Primary);
    wait_until("the mount to answer again after heal", Duration::from_secs(30), || {
        code(&lab.exec(Host::Web, &["timeout", "-s", "KILL", "10", "cat", "/mnt/nfs/hello.txt"])) == 0
    });
    umount_lazy(lab);
    // No FUSE daemon left behind once unmounted.
    wait_until("sshfs to exit after umount", Duration::from_secs(10), || {
        !lab.pids(Host::Web)
            .iter()
            .any(|p| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim() == "sshfs")
    });
}

// ------------------------------------------------------------------------------------------------
// Faults

fn check_fault(lab: &Lab, fault: Fault) {
    lab.fault(Host::Primary, fault);
    let p = probe_storage(lab, Host::Primary);
    let ctx = format!("{fault:?} on primary: {p:#?}");
    match fault {
        Fault::Freeze => {
            // The kernel still answers; no process does.
            assert!(p.ping, "{ctx}");
            assert_eq!(p.tcp_rsync, Conn::Open, "{ctx}");
            assert_eq!(p.tcp_nfs, Conn::Open, "{ctx}");
            assert_eq!(p.ssh_banner, None, "{ctx}");
            assert!(matches!(p.rsync, 30 | 35), "rsync must time out (30/35): {ctx}");
            assert_eq!((p.nfs3, p.nfs4), (KILLED, KILLED), "NFS NULL call must time out: {ctx}");
        }
        Fault::Kill => {
            assert!(p.ping, "{ctx}");
            for c in [&p.tcp_rpcbind, &p.tcp_nfs, &p.tcp_rsync] {
                assert_eq!(*c, Conn::Refused, "{ctx}");
            }
            assert_eq!(p.ssh_banner, None, "{ctx}");
            assert_eq!(p.rsync, 10, "rsync: connection refused (10): {ctx}");
            assert!(p.nfs3 != 0 && p.nfs3 != KILLED, "NFS must fail at once, not time out: {ctx}");
        }
        Fault::StopNfs => {
            assert!(p.ping, "{ctx}");
            assert_eq!(p.tcp_nfs, Conn::Refused, "{ctx}");
            assert_eq!(p.tcp_rpcbind, Conn::Open, "rpcbind stays: {ctx}");
            assert!(p.nfs3 != 0 && p.nfs3 != KILLED, "NFS must fail at once: {ctx}");
            assert!(p.nfs4 != 0 && p.nfs4 != KILLED, "NFS must fail at once: {ctx}");
            assert_eq!(p.rsync, 0, "rsync unaffected: {ctx}");
            assert_eq!(p.tcp_rsync, Conn::Open, "{ctx}");
            assert_eq!(p.ssh_banner, None, "sshd (the mount stand-in's data path) is stopped too: {ctx}");
        }
        Fault::StopRsyncd => {
            assert!(p.ping, "{ctx}");
            assert_eq!(p.tcp_rsync, Conn::Refused, "{ctx}");
            assert_eq!(p.rsync, 10, "{ctx}");
            assert_eq!((p.nfs3, p.nfs4), (0, 0), "NFS unaffected: {ctx}");
            assert!(p.ssh_banner.is_some(), "sshd unaffected: {ctx}");
        }
        Fault::Blackhole | Fault::Unplug => {
            assert!(!p.ping, "{ctx}");
            for c in [&p.tcp_rpcbind, &p.tcp_nfs, &p.tcp_rsync] {
                assert_eq!(*c, Conn::Timeout, "{ctx}");
            }
            assert_eq!(p.rsync, 35, "rsync: connect timeout (35): {ctx}");
            assert_eq!((p.nfs3, p.nfs4), (KILLED, KILLED), "NFS NULL call must time out: {ctx}");
        }
        Fault::Reject => {
            assert!(!p.ping, "{ctx}");
            assert!(p.ping_out.contains("filtered"), "ICMP admin-prohibited expected: {ctx}");
            for c in [&p.tcp_rpcbind, &p.tcp_nfs, &p.tcp_rsync] {
                assert_eq!(*c, Conn::Refused, "{ctx}");
            }
            assert_eq!(p.rsync, 10, "{ctx}");
            assert!(p.nfs3 != 0 && p.nfs3 != KILLED, "NFS must fail at once: {ctx}");
        }
    }
    // Exactly the primary is hit: the backup and the mail host do not notice.
    assert_storage_healthy(lab, Host::Backup, &format!("during {fault:?} on primary"));
    let t = Instant::now();
    lab.heal(Host::Primary);
    eprintln!("lab selftest: {fault:?}: heal took {:?}", t.elapsed());
    assert_storage_healthy(lab, Host::Primary, &format!("after heal from {fault:?}"));
}

fn check_mail_freeze(lab: &Lab) {
    let ip = lab.ip(Host::Mail);
    lab.fault(Host::Mail, Fault::Freeze);
    assert!(ping(lab, &ip).0, "a frozen mail host still answers ping");
    assert_eq!(tcp(lab, &ip, 25), Conn::Open, "a frozen SMTP server still accepts TCP");
    assert_eq!(banner(lab, &ip, 25), None, "a frozen SMTP server sends no greeting");
    lab.heal(Host::Mail);
    assert_mail_healthy(lab, "after heal of mail");

    lab.fault(Host::Mail, Fault::Kill);
    assert_eq!(tcp(lab, &ip, 25), Conn::Refused);
    assert_eq!(tcp(lab, &ip, 587), Conn::Refused);
    lab.heal(Host::Mail);
    assert_mail_healthy(lab, "after heal of mail from kill");
}

// ------------------------------------------------------------------------------------------------
// Teardown checks

struct Footprint {
    name: String,
    index: u8,
    state: PathBuf,
    netns: Vec<String>,
    pids: Vec<u32>,
}

fn footprint(lab: &Lab) -> Footprint {
    let mut netns: Vec<String> = Host::ALL.iter().map(|h| lab.netns(*h)).collect();
    netns.push(lab.switch_netns());
    let mut pids = Vec::new();
    for h in Host::ALL {
        pids.extend(lab.pids(h));
    }
    pids.extend(lab::netns_pids(&format!("/run/netns/{}", lab.switch_netns())));
    Footprint { name: lab.name().to_owned(), index: lab.index(), state: lab.state_dir(), netns, pids }
}

fn assert_nothing_left(fp: &Footprint) {
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = text(&list.stdout);
    for ns in &fp.netns {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(ns)), "namespace {ns} left: {list}");
        assert!(!Path::new("/run/netns").join(ns).exists(), "/run/netns/{ns} left");
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let state = s(&fp.state);
    let prefix = format!("ngl-{}-", fp.name);
    assert!(!mounts.lines().any(|l| l.contains(&state) || l.contains(&prefix)), "mounts left:\n{mounts}");
    for pid in &fp.pids {
        assert!(!pid_alive(*pid), "process {pid} of lab {} still alive", fp.name);
    }
    // Nor any process (anywhere) still running from the lab's state dir.
    for e in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !(cmdline.contains(&state) && pid_alive(pid)),
            "process {pid} still runs from {state}: {}",
            cmdline.replace('\0', " ")
        );
    }
    let route = Command::new("ip").args(["route", "show", &format!("10.203.{}.0/24", fp.index)]).output().unwrap();
    assert_eq!(text(&route.stdout).trim(), "", "route left");
    assert!(!fp.state.exists(), "state dir {state} left");
    let registry = fs::read_to_string(Path::new(LAB_BASE).join("registry")).unwrap_or_default();
    assert!(!registry.lines().any(|l| l.split_whitespace().next() == Some(fp.name.as_str())), "registry: {registry}");
    assert!(!Path::new(LAB_BASE).join(format!(".{}.lock", fp.name)).exists(), "lock file left");
}

// ------------------------------------------------------------------------------------------------
// Tests

#[test]
fn lab_services_faults_and_teardown() {
    let t = Instant::now();
    let lab = Lab::up("slft");
    eprintln!("lab selftest: up took {:?} (subnet {})", t.elapsed(), lab.subnet());

    // Layout.
    assert_eq!(lab.ip(Host::Primary), format!("10.203.{}.2", lab.index()));
    assert_eq!(lab.state_dir(), Path::new("/var/tmp/nfs-guard-lab/slft"));
    assert_eq!(lab.data_dir(Host::Backup), Path::new("/var/tmp/nfs-guard-lab/slft/backup/data"));
    assert_eq!(fs::metadata(lab.rsync_password_file()).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(fs::read_to_string(lab.smtp_cert()).unwrap().contains("BEGIN CERTIFICATE"));
    let route = Command::new("ip").args(["route", "show", &lab.subnet()]).output().unwrap();
    assert!(text(&route.stdout).starts_with("unreachable"), "safety route: {}", text(&route.stdout));
    assert!(lab.run(Host::Web, &["test", "-d", Lab::WEB_MOUNT, "-a", "-x", "/sbin/mount.nfs"]).is_empty());
    assert!(
        !Path::new("/sbin/mount.nfs").exists()
            || !fs::read_to_string("/sbin/mount.nfs").unwrap_or_default().contains("nfs-guard lab"),
        "the stand-in must exist only inside web"
    );
    for h in Host::STORAGE {
        assert_eq!(lab.run(h, &["sh", "-c", "test -S /run/rpcbind.sock && echo ok"]), "ok\n", "{h:?} has its own /run");
    }

    // Reachability from web.
    for h in [Host::Primary, Host::Backup, Host::Mail] {
        let (ok, out) = ping(&lab, &lab.ip(h));
        assert!(ok, "ping {h:?}: {out}");
    }
    // The root namespace cannot reach the lab (the unreachable route).
    let out = Command::new("timeout")
        .args(["-s", "KILL", "5", "ping", "-n", "-c1", "-W1", &lab.ip(Host::Primary)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the root namespace must not reach the lab");

    for h in Host::STORAGE {
        assert_storage_healthy(&lab, h, "after up");
        check_rsync_push_pull(&lab, h);
        check_nfs(&lab, h);
    }
    assert_mail_healthy(&lab, "after up");
    check_smtp(&lab);
    check_mount(&lab);

    for fault in Fault::ALL {
        let t = Instant::now();
        check_fault(&lab, fault);
        eprintln!("lab selftest: {fault:?} checked in {:?}", t.elapsed());
    }
    check_mail_freeze(&lab);

    // `up` again repairs: daemons killed behind the lab's back and a fault left active.
    for d in ["rsyncd", "ganesha"] {
        let pidfile = fs::read_to_string(lab.run_dir(Host::Backup).join(format!("{d}.pid"))).unwrap();
        let pid = pidfile.split_whitespace().next().unwrap();
        assert!(Command::new("kill").args(["-KILL", pid]).status().unwrap().success());
    }
    lab.fault(Host::Primary, Fault::Blackhole);
    let t = Instant::now();
    lab.repair();
    eprintln!("lab selftest: repair took {:?}", t.elapsed());
    assert_storage_healthy(&lab, Host::Backup, "after repair");
    assert_storage_healthy(&lab, Host::Primary, "after repair");

    // ... and a namespace deleted and a holder killed behind its back (nothing of the old ones left).
    let old_backup = lab.pids(Host::Backup);
    let status = Command::new("ip").args(["netns", "delete", &lab.netns(Host::Backup)]).status().unwrap();
    assert!(status.success());
    let mail_holder = lab.holder_pid(Host::Mail).to_string();
    assert!(Command::new("kill").args(["-KILL", &mail_holder]).status().unwrap().success());
    lab.repair();
    for pid in old_backup {
        assert!(!pid_alive(pid), "process {pid} of the deleted backup namespace survived the repair");
    }
    assert_storage_healthy(&lab, Host::Backup, "after repair of a deleted namespace");
    assert_mail_healthy(&lab, "after repair of a killed holder");

    // Processes started in a host (like the product under test) die with the lab.
    let mut child = lab.command(Host::Web, "sleep").arg("600").spawn().unwrap();
    let pid = child.id();
    wait_until("command() to run inside web with its own pid", Duration::from_secs(10), || {
        lab.pids(Host::Web).contains(&pid)
    });

    let fp = footprint(&lab);
    assert!(fp.pids.len() >= 12, "expected the lab's processes: {:?}", fp.pids);
    let t = Instant::now();
    lab.down();
    eprintln!("lab selftest: down took {:?}", t.elapsed());
    assert!(child.wait().is_ok());
    assert_nothing_left(&fp);
    lab.down(); // idempotent
}

#[test]
fn two_labs_side_by_side() {
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| Lab::up("slfa"));
        let b = sc.spawn(|| Lab::up("slfb"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.index(), b.index(), "each lab has its own subnet");
    assert_ne!(a.subnet(), b.subnet());
    for lab in [&a, &b] {
        assert!(ping(lab, &lab.ip(Host::Primary)).0, "{} web -> primary", lab.name());
        assert_eq!(rsync_list(lab, Host::Backup), 0, "{} rsync", lab.name());
        assert_eq!(nfs_null(lab, Host::Primary, "3"), 0, "{} nfs", lab.name());
    }
    // Isolated: lab a's web cannot reach lab b's hosts.
    assert!(!ping(&a, &b.ip(Host::Primary)).0, "labs must not reach each other");
    // A fault in one lab does not touch the other.
    a.fault(Host::Primary, Fault::Kill);
    assert_eq!(rsync_list(&b, Host::Primary), 0, "lab b unaffected by lab a's fault");
    let fa = footprint(&a);
    a.down();
    assert_nothing_left(&fa);
    assert_storage_healthy(&b, Host::Primary, "lab b after lab a went down");
    let fb = footprint(&b);
    b.down();
    assert_nothing_left(&fb);
}

/// `LAB_WEB=uml`: the web host is a user-mode-linux guest whose `mount -t nfs` is Linux's own NFS
/// client. `NFSv3` and `NFSv4.1` mount the primary's export, and a file written on either side shows on
/// the other. The command channel behaves like a local command (exit codes, stdout/stderr, env, cwd,
/// SIGTERM forwarded, a killed client kills its guest command), and `down` leaves nothing behind.
#[test]
fn web_guest_runs_the_kernel_nfs_client() {
    let t = Instant::now();
    let lab = Lab::up_with("slfu", WebKind::Uml);
    eprintln!("lab selftest (uml): up took {:?}", t.elapsed());
    assert_eq!(lab.web_kind(), WebKind::Uml);
    let kernel = lab.run(Host::Web, &["uname", "-r"]);
    assert!(kernel.starts_with("6.1."), "not the uml guest: {kernel}");
    assert!(lab.run(Host::Web, &["cat", "/proc/filesystems"]).contains("\tnfs4\n"));
    assert!(ping(&lab, &lab.ip(Host::Primary)).0, "guest -> primary");

    // The command channel.
    let out = lab.exec(Host::Web, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!((code(&out), text(&out.stdout), text(&out.stderr)), (7, "out\n".into(), "err\n".into()));
    let out = lab.command(Host::Web, "sh").args(["-c", "echo $X; pwd"]).env("X", "a b;$c").current_dir("/usr").output();
    assert_eq!(text(&out.unwrap().stdout), "a b;$c\n/usr\n");
    let mut child = lab.command(Host::Web, "sleep").arg("600").spawn().unwrap();
    wait_until("the guest runs sleep 600", Duration::from_secs(10), || {
        lab.run(Host::Web, &["ps", "-eo", "args"]).contains("sleep 600")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the guest's sleep 600 killed with its client", Duration::from_secs(10), || {
        !lab.run(Host::Web, &["ps", "-eo", "args"]).contains("sleep 600")
    });
    // The marker is written after the trap is set: a process listed by ps may not have set it yet.
    let child = lab
        .command(Host::Web, "sh")
        .args(["-c", "trap 'exit 3' TERM; touch /tmp/trap-set; while :; do sleep 0.1; done"])
        .spawn();
    let mut child = child.unwrap();
    wait_until("the guest runs the trap loop", Duration::from_secs(10), || {
        lab.exec(Host::Web, &["test", "-e", "/tmp/trap-set"]).status.success()
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(3), "SIGTERM forwarded to the guest command");

    // The kernel client, both protocol versions, data both ways.
    let source = lab.nfs_source(Host::Primary);
    for (vers, fstype) in [("3", "nfs"), ("4.1", "nfs4")] {
        let t = Instant::now();
        let out = lab
            .exec_timeout(
                Host::Web,
                &[
                    "timeout",
                    "-s",
                    "KILL",
                    "30",
                    "mount",
                    "-t",
                    "nfs",
                    "-o",
                    &format!("vers={vers}"),
                    &source,
                    Lab::WEB_MOUNT,
                ],
                Duration::from_secs(40),
            )
            .expect("mount hung");
        assert!(out.status.success(), "mount vers={vers}: {}", text(&out.stderr));
        eprintln!("lab selftest (uml): mount vers={vers} took {:?}", t.elapsed());
        // the guest publishes its mountinfo every ~100 ms: the new mount shows up within that
        let at_mount = |mi: &str| mi.lines().find(|l| l.split(' ').nth(4) == Some(Lab::WEB_MOUNT)).map(str::to_owned);
        wait_until("the guest's mountinfo to show the mount", Duration::from_secs(5), || {
            at_mount(&lab.web_mountinfo()).is_some()
        });
        let line = at_mount(&lab.web_mountinfo()).unwrap_or_default();
        assert!(line.contains(&format!(" - {fstype} {source} ")) && line.contains(&format!("vers={vers}")), "{line}");
        assert_eq!(lab.web_mount_source(), Some(source.clone()));
        let name = format!("from-guest-v{vers}");
        lab.run(Host::Web, &["sh", "-c", &format!("echo guest > /mnt/nfs/{name} && sync")]);
        assert_eq!(fs::read_to_string(lab.data_dir(Host::Primary).join(&name)).unwrap(), "guest\n");
        fs::write(lab.data_dir(Host::Primary).join("from-primary"), format!("primary {vers}")).unwrap();
        assert_eq!(lab.run(Host::Web, &["cat", "/mnt/nfs/from-primary"]), format!("primary {vers}"));
        lab.run(Host::Web, &["umount", Lab::WEB_MOUNT]);
        wait_until("the guest's mountinfo without the mount", Duration::from_secs(5), || {
            lab.web_mount_source().is_none()
        });
    }

    // A hard mount of a blackholed server hangs its callers; a lazy unmount always returns.
    lab.run(Host::Web, &["timeout", "-s", "KILL", "30", "mount", "-t", "nfs", "-o", "vers=3", &source, Lab::WEB_MOUNT]);
    lab.fault(Host::Primary, Fault::Blackhole);
    let out = lab.exec_timeout(
        Host::Web,
        &["timeout", "-s", "KILL", "3", "stat", "-f", Lab::WEB_MOUNT],
        Duration::from_secs(20),
    );
    assert_eq!(out.map(|o| code(&o)), Some(KILLED), "stat on a hard mount of a blackholed server must hang");
    let out = lab
        .exec_timeout(Host::Web, &["umount", "-l", Lab::WEB_MOUNT], Duration::from_secs(20))
        .expect("umount -l hung");
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the guest's mountinfo without the mount", Duration::from_secs(5), || lab.web_mount_source().is_none());
    lab.heal(Host::Primary);

    let mut child = lab.command(Host::Web, "sleep").arg("600").spawn().unwrap();
    let fp = footprint(&lab);
    assert!(!lab.pids(Host::Web).is_empty(), "the uml kernel runs in the web namespace");
    let t = Instant::now();
    lab.down();
    eprintln!("lab selftest (uml): down took {:?}", t.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    assert_nothing_left(&fp);
}
