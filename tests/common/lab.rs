//! The multi-host test lab, from Rust: a thin, std-only wrapper around `scripts/lab.sh`.
//!
//! Include it in an integration test with
//! ```ignore
//! #[path = "common/lab.rs"]
//! mod lab;
//! use lab::{wait_until, Fault, Host, Lab};
//! ```
//!
//! # What a lab is
//! `Lab::up("name")` (name: 1-5 chars of `[a-z0-9]`, unique per test) builds, on this machine, four hosts
//! that are network namespaces joined by a bridge, each with its own persistent mount namespace and
//! its own tmpfs `/run`. Every lab gets its own subnet `10.203.X.0/24` (X allocated in
//! `/var/tmp/nfs-guard-lab/registry`), so labs run side by side. The test process itself stays in the
//! root namespace, which cannot reach the lab (`unreachable 10.203.X.0/24`): anything that talks to a
//! lab host must run inside a host, with [`Lab::exec`], [`Lab::run`] or [`Lab::command`].
//!
//! | host      | ip           | what runs there                                                        |
//! |-----------|--------------|------------------------------------------------------------------------|
//! | `primary` | 10.203.X.2   | nfs-ganesha (NFS v3+v4, TCP 2049, rpcbind 111) exporting `/srv/nfs`;   |
//! |           |              | rsync daemon :873 module `data` (path `/srv/nfs`, user `nfsguard`,     |
//! |           |              | uid/gid root so owners and modes replicate); sshd :22 (root, lab key)  |
//! | `backup`  | 10.203.X.3   | same as primary                                                        |
//! | `web`     | 10.203.X.4   | `/mnt/nfs`; `mount -t nfs|nfs4 SERVER:/srv/nfs /mnt/nfs -o ...` works  |
//! | `mail`    | 10.203.X.5   | SMTP (aiosmtpd): 25 plain, no AUTH; 587 STARTTLS+AUTH required;        |
//! |           |              | 465 implicit TLS + AUTH required. RCPT `reject*@...` gets 550.         |
//!
//! * Storage hosts see their data dir ([`Lab::data_dir`], a root-namespace path the test can read and
//!   write directly) at `/srv/nfs` ([`Lab::EXPORT`]).
//! * The mount "NFS" on `web` is a stand-in (this kernel has no NFS client): `/sbin/mount.nfs` there
//!   mounts sshfs `root@SERVER:/srv/nfs` over the lab network with `fsname=SERVER:/srv/nfs`, so
//!   `/proc/self/mountinfo` in `web` shows source `SERVER:/srv/nfs` at `/mnt/nfs` (fstype
//!   `fuse.sshfs`). NFS options (`vers=`, `soft`, `timeo=`, ...) are accepted and ignored. `mount`
//!   exits 0 when mounted, 32 within ~3 s when the server is down/refusing/frozen/cut off. A mounted
//!   share behaves like a soft mount: while the server is faulted, every access blocks ~3-6 s and then
//!   fails with EIO (ENOTCONN/ECONNABORTED for the first one after a kill); the mount stays in
//!   mountinfo; it works again after `heal`; `umount -l /mnt/nfs` always returns at once.
//! * `LAB_WEB=uml` (or [`Lab::up_with`]`(name, WebKind::Uml)`): `web` is instead a user-mode-linux
//!   guest (kernel 6.1) with Linux's own NFS client (v3 and v4.1, the real `mount.nfs`, `rpc.statd`);
//!   its root is this machine's `/` read-only, with its own tmpfs `/run`, `/tmp`, `/mnt`. It sees the
//!   lab's [`Lab::state_dir`] read-write at the same path: put every file a web-host process must read
//!   or write there (e.g. `tempfile::tempdir_in(lab.state_dir())`), not in this machine's `/tmp`.
//!   [`Lab::command`]/[`Lab::exec`] for `Host::Web` go through a spool directory (about 0.3 s per
//!   command; stdin is /dev/null; stdout/stderr stream; SIGTERM/SIGINT are forwarded and a killed
//!   client kills its guest command); the guest's mountinfo is [`Lab::web_mountinfo`] (published by
//!   its init every ~100 ms); `Lab::holder_pid(Host::Web)` is NOT in the guest. Faults on the
//!   primary/backup are the same; on `web`: freeze/kill stop/kill the whole guest, unplug works,
//!   blackhole/reject filter its bridged frames.
//! * Mail: every accepted message is one file in a Maildir, [`Lab::mail_dir`]`/new/`, named
//!   `<ns-timestamp>.<seq>.<port>.eml` (so sorted names = arrival order; [`Lab::mails`] returns them in
//!   that order). The file is the raw DATA preceded by the headers `X-Lab-Port` (25/587/465),
//!   `X-Lab-Envelope-From`, `X-Lab-Envelope-To` (accepted recipients, comma separated),
//!   `X-Lab-Auth-User` (`-` if none) and `X-Lab-TLS` (`none`, `starttls` or `implicit`).
//! * TLS: [`Lab::smtp_cert`] is the lab's self-signed CA certificate (PEM); the server presents a
//!   certificate signed by it for IP `10.203.X.5` and DNS `mail`, `mail.lab`, `localhost`. Trust
//!   `smtp_cert()` and connect by IP.
//! * Secrets: [`Lab::rsync_password_file`] (0600, one line, for `rsync --password-file`),
//!   [`Lab::smtp_password_file`] (0600, no trailing newline).
//!
//! # Faults ([`Lab::fault`], undone by [`Lab::heal`])
//! * `Freeze`: SIGSTOP every process of the host (daemons AND whatever a test started there). The
//!   kernel still answers: ping works, TCP connects succeed, nothing ever replies.
//! * `Kill`: SIGKILL every process of the host (daemons and test processes; not the namespace
//!   holder). Ping works, every port refuses. `heal` restarts the lab daemons only.
//! * `StopNfs`: SIGKILL nfs-ganesha and sshd (rpcbind stays): NFS NULL calls fail at once, and so does
//!   web's mounted share (sshd is the stand-in mount's data path); ping and rsync keep working.
//! * `StopRsyncd`: SIGKILL the rsync daemon (and its sessions) only: port 873 refuses.
//! * `Blackhole`: nftables in the host drops everything on its lab interface: ping and connects time
//!   out (use `rsync --contimeout`, or rsync hangs).
//! * `Reject`: nftables rejects everything on its lab interface: TCP RST ("connection refused") and
//!   ICMP admin-prohibited, at once, in both directions.
//! * `Unplug`: the host's switch port goes down: like a pulled cable (timeouts, ARP fails).
//!
//! Faults apply to every host (`mail` frozen = an SMTP server that accepts and then stalls).
//!
//! # Rules for tests
//! * Root only: [`Lab::up`] panics otherwise (lab tests must fail loudly, never pass silently).
//! * Bound every command that may touch a faulted host (`timeout -s KILL`, `rsync --contimeout/--timeout`,
//!   or [`Lab::exec_timeout`]); poll with [`wait_until`], never sleep.
//! * `rpcinfo` masks signals during a call: wrap it in `timeout -s KILL`, never plain `timeout`.
//! * Use `/usr/bin/python3` in hosts (a `python3` earlier on PATH may lack aiosmtpd/smtplib extras).
//! * The lab is torn down when the `Lab` is dropped, even after a panic. Set `NFS_GUARD_LAB_KEEP=1` to
//!   keep it for debugging (then `LAB=<name> scripts/lab.sh status|exec|down`).
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Root of all lab state on this machine.
pub const LAB_BASE: &str = "/var/tmp/nfs-guard-lab";
/// A sane PATH for processes started inside hosts (Debian's tools first).
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A lab host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Primary,
    Backup,
    Web,
    Mail,
}

impl Host {
    pub const ALL: [Host; 4] = [Host::Primary, Host::Backup, Host::Web, Host::Mail];
    pub const STORAGE: [Host; 2] = [Host::Primary, Host::Backup];

    /// The host's name in `scripts/lab.sh` ("primary", "backup", "web", "mail").
    pub fn name(self) -> &'static str {
        match self {
            Host::Primary => "primary",
            Host::Backup => "backup",
            Host::Web => "web",
            Host::Mail => "mail",
        }
    }

    /// Last octet of the host's address.
    pub fn octet(self) -> u8 {
        match self {
            Host::Primary => 2,
            Host::Backup => 3,
            Host::Web => 4,
            Host::Mail => 5,
        }
    }
}

/// A fault `scripts/lab.sh fault HOST KIND` can inject (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    Freeze,
    Kill,
    StopNfs,
    StopRsyncd,
    Blackhole,
    Reject,
    Unplug,
}

impl Fault {
    pub const ALL: [Fault; 7] =
        [Fault::Freeze, Fault::Kill, Fault::StopNfs, Fault::StopRsyncd, Fault::Blackhole, Fault::Reject, Fault::Unplug];

    /// The KIND argument of `lab.sh fault`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Freeze => "freeze",
            Fault::Kill => "kill",
            Fault::StopNfs => "stop-nfs",
            Fault::StopRsyncd => "stop-rsyncd",
            Fault::Blackhole => "blackhole",
            Fault::Reject => "reject",
            Fault::Unplug => "unplug",
        }
    }
}

/// What the lab's `web` host is (`LAB_WEB` of `scripts/lab.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebKind {
    /// The web namespace itself, with the sshfs stand-in for mount.nfs.
    Sshfs,
    /// A user-mode-linux guest with the kernel's own NFS client.
    Uml,
}

impl WebKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WebKind::Sshfs => "sshfs",
            WebKind::Uml => "uml",
        }
    }

    /// `LAB_WEB` from the environment (`sshfs` or `uml`), sshfs when unset; panics on anything else.
    pub fn from_env() -> WebKind {
        Self::from_env_or(WebKind::Sshfs)
    }

    /// `LAB_WEB` from the environment, `default` when unset or empty; panics on anything else.
    pub fn from_env_or(default: WebKind) -> WebKind {
        match std::env::var("LAB_WEB").as_deref() {
            Err(_) | Ok("") => default,
            Ok("sshfs") => WebKind::Sshfs,
            Ok("uml") => WebKind::Uml,
            Ok(other) => panic!("LAB_WEB={other:?}: expected sshfs or uml"),
        }
    }
}

/// A running lab. Dropping it tears it down.
#[derive(Debug)]
pub struct Lab {
    name: String,
    index: u8,
    web: WebKind,
    state: PathBuf,
    script: PathBuf,
    down: AtomicBool,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Fails the test unless it runs as root (effective uid 0).
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_owned();
    assert!(
        euid == "0",
        "lab tests need root (network namespaces, mounts, nftables): effective uid is {euid}. \
         Run them as root (CI does); they must never be skipped silently."
    );
}

/// The repository's `scripts/lab.sh`.
pub fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab.sh")
}

/// Runs `cmd` with stdout/stderr going to temporary files (so a daemonized grandchild keeping them
/// open can never block us) and kills it after `timeout`. `Err(partial output)` on timeout.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, Output> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir();
    let base = format!("nfs-guard-lab-{}-{n}", std::process::id());
    let out_path = dir.join(format!("{base}.out"));
    let err_path = dir.join(format!("{base}.err"));
    let out_f = fs::File::create(&out_path).expect("create temp stdout file");
    let err_f = fs::File::create(&err_path).expect("create temp stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out_f)
        .stderr(err_f)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    let (status, timed_out): (ExitStatus, bool) = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break (st, false);
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            break (child.wait().expect("wait after kill"), true);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    };
    let read = |p: &Path| {
        let mut v = Vec::new();
        if let Ok(mut f) = fs::File::open(p) {
            let _ = f.read_to_end(&mut v);
        }
        let _ = fs::remove_file(p);
        v
    };
    let out = Output { status, stdout: read(&out_path), stderr: read(&err_path) };
    if timed_out {
        Err(out)
    } else {
        Ok(out)
    }
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Lab {
    pub const EXPORT: &'static str = "/srv/nfs";
    pub const RSYNC_MODULE: &'static str = "data";
    pub const RSYNC_USER: &'static str = "nfsguard";
    pub const SMTP_USER: &'static str = "alert";
    pub const WEB_MOUNT: &'static str = "/mnt/nfs";

    /// Brings lab `name` up, FRESH: a leftover lab of that name (say from a crashed run) is torn down
    /// first, so data dirs and the mailbox start empty and no fault is active. Returns once every
    /// service answers. Panics (with lab.sh's output) if not root, if a tool is missing and cannot be
    /// installed, or if anything does not come up.
    pub fn up(name: &str) -> Lab {
        Self::up_with(name, WebKind::from_env())
    }

    /// [`Lab::up`] with the web host of the given kind. A web guest that cannot boot fails here, with
    /// its console log (never a fallback).
    pub fn up_with(name: &str, web: WebKind) -> Lab {
        require_root();
        assert!(
            !name.is_empty() && name.len() <= 5 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "lab name {name:?} must be 1-5 characters of [a-z0-9]"
        );
        let script = lab_script();
        assert!(script.is_file(), "{} is missing", script.display());
        // From here on, Drop tears the lab down even if `up` fails half-way.
        let mut lab = Lab {
            name: name.to_owned(),
            index: 0,
            web,
            state: Path::new(LAB_BASE).join(name),
            script,
            down: AtomicBool::new(false),
        };
        lab.script_ok(&["down"], Duration::from_secs(120));
        lab.script_ok(&["up"], Duration::from_secs(900)); // may apt-get install on a fresh machine
        lab.index = lab.read_index();
        lab
    }

    /// Runs `lab.sh up` again on this lab: repairs whatever is missing (dead daemon, missing
    /// namespace), clears every active fault, waits until every service answers. Keeps data and mail.
    pub fn repair(&self) {
        self.script_ok(&["up"], Duration::from_secs(300));
    }

    fn read_index(&self) -> u8 {
        let env = fs::read_to_string(self.state.join("lab.env"))
            .unwrap_or_else(|e| panic!("lab {}: cannot read lab.env: {e}", self.name));
        env.lines()
            .find_map(|l| l.strip_prefix("LAB_INDEX="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("lab {}: no LAB_INDEX in lab.env:\n{env}", self.name))
    }

    fn script_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(&self.script).args(args).env("LAB", &self.name).env("LAB_WEB", self.web.as_str());
        c
    }

    /// What the web host is.
    pub fn web_kind(&self) -> WebKind {
        self.web
    }

    /// The web guest's command spool (`LAB_WEB=uml`).
    fn web_spool(&self) -> PathBuf {
        self.run_dir(Host::Web).join("spool")
    }

    /// Runs `LAB=<name> scripts/lab.sh ARGS...` and returns its output; panics on failure or timeout.
    pub fn script_ok(&self, args: &[&str], timeout: Duration) -> Output {
        let what = format!("LAB={} {} {}", self.name, self.script.display(), args.join(" "));
        match output_with_timeout(&mut self.script_cmd(args), timeout) {
            Ok(out) if out.status.success() => out,
            Ok(out) => panic!("{}", describe(&format!("{what} failed"), &out)),
            Err(out) => panic!("{}", describe(&format!("{what} timed out after {timeout:?}"), &out)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// X of the lab's subnet 10.203.X.0/24.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// "10.203.X.0/24"
    pub fn subnet(&self) -> String {
        format!("10.203.{}.0/24", self.index)
    }

    /// e.g. "10.203.7.2"
    pub fn ip(&self, host: Host) -> String {
        format!("10.203.{}.{}", self.index, host.octet())
    }

    /// Name of the host's network namespace (`ip netns` name).
    pub fn netns(&self, host: Host) -> String {
        format!("ngl-{}-{}", self.name, host.name())
    }

    /// Name of the switch namespace.
    pub fn switch_netns(&self) -> String {
        format!("ngl-{}-sw", self.name)
    }

    /// /var/tmp/nfs-guard-lab/<name>
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    /// Per-host runtime dir (pid files, daemon configs and logs): <state>/run/<host>.
    pub fn run_dir(&self, host: Host) -> PathBuf {
        self.state.join("run").join(host.name())
    }

    /// Root-namespace path of a storage host's exported directory (seen as /srv/nfs inside it).
    pub fn data_dir(&self, host: Host) -> PathBuf {
        assert!(matches!(host, Host::Primary | Host::Backup), "{host:?} is not a storage host");
        self.state.join(host.name()).join("data")
    }

    /// `SERVER:/srv/nfs` for a storage host: what `mount -t nfs` takes and mountinfo shows.
    pub fn nfs_source(&self, host: Host) -> String {
        format!("{}:{}", self.ip(host), Self::EXPORT)
    }

    /// `rsync://nfsguard@IP/data/` for a storage host.
    pub fn rsync_url(&self, host: Host) -> String {
        format!("rsync://{}@{}/{}/", Self::RSYNC_USER, self.ip(host), Self::RSYNC_MODULE)
    }

    pub fn rsync_password_file(&self) -> PathBuf {
        self.state.join("rsync.pass")
    }

    pub fn rsync_password(&self) -> String {
        fs::read_to_string(self.rsync_password_file()).expect("read rsync.pass").trim_end().to_owned()
    }

    pub fn smtp_password_file(&self) -> PathBuf {
        self.state.join("smtp.pass")
    }

    pub fn smtp_password(&self) -> String {
        fs::read_to_string(self.smtp_password_file()).expect("read smtp.pass")
    }

    /// PEM of the lab's self-signed CA certificate, the one to trust for ports 587 and 465.
    pub fn smtp_cert(&self) -> PathBuf {
        self.state.join("tls/ca.pem")
    }

    /// PEM chain the SMTP server presents (server certificate, then the CA).
    pub fn smtp_server_cert(&self) -> PathBuf {
        self.state.join("tls/server-chain.pem")
    }

    /// Private key (ed25519) that storage hosts' sshd accept for root.
    pub fn ssh_key(&self) -> PathBuf {
        self.state.join("ssh/id_ed25519")
    }

    /// The Maildir (messages are in `new/`).
    pub fn mail_dir(&self) -> PathBuf {
        self.state.join("mail")
    }

    /// Paths of received messages, in arrival order.
    pub fn mail_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = match fs::read_dir(self.mail_dir().join("new")) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }

    /// Raw received messages (lab headers + DATA), in arrival order.
    pub fn mails(&self) -> Vec<String> {
        self.mail_files()
            .iter()
            .filter_map(|p| fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Deletes every received message.
    pub fn clear_mails(&self) {
        for p in self.mail_files() {
            let _ = fs::remove_file(p);
        }
    }

    /// Pid of the process holding the host's namespaces (what `nsenter -t` enters).
    pub fn holder_pid(&self, host: Host) -> u32 {
        let f = self.run_dir(host).join("holder.pid");
        let s = fs::read_to_string(&f).unwrap_or_else(|e| {
            panic!("lab {} host {host:?}: cannot read {}: {e} (is the lab up?)", self.name, f.display())
        });
        s.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("lab {}: bad pid file {}: {s:?}", self.name, f.display()))
    }

    /// Pids of every live process in the host's network namespace (daemons, the namespace holder and
    /// anything started with exec/command). Empty if the namespace does not exist.
    pub fn pids(&self, host: Host) -> Vec<u32> {
        netns_pids(&format!("/run/netns/{}", self.netns(host)))
    }

    /// Builds a Command that runs `program args...` inside the host's network and mount namespaces,
    /// in the caller's working directory (or the Command's `current_dir`), with PATH = [`HOST_PATH`]
    /// (override with `.env("PATH", ..)`). The spawned pid is the program's own pid (nsenter execs).
    pub fn command(&self, host: Host, program: &str) -> Command {
        if host == Host::Web && self.web == WebKind::Uml {
            let mut c = Command::new("bash");
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab/uml-exec"))
                .arg(self.web_spool())
                .arg(program)
                .env("PATH", HOST_PATH);
            return c;
        }
        let nsenter = if Path::new("/usr/bin/nsenter").exists() { "/usr/bin/nsenter" } else { "nsenter" };
        let mut c = Command::new(nsenter);
        c.arg("-t")
            .arg(self.holder_pid(host).to_string())
            .args(["-m", "-n", "--wd=.", "--"])
            .arg(program)
            .env("PATH", HOST_PATH);
        c
    }

    /// Runs argv inside the host, waits, returns its Output (does not panic on a non-zero exit).
    /// Stdin is /dev/null. Nothing bounds the time: use `timeout -s KILL` or [`Lab::exec_timeout`]
    /// for anything that can touch a faulted host.
    pub fn exec(&self, host: Host, argv: &[&str]) -> Output {
        assert!(!argv.is_empty(), "exec needs a program");
        let mut c = self.command(host, argv[0]);
        c.args(&argv[1..]);
        c.output().unwrap_or_else(|e| panic!("cannot run {argv:?} in {host:?}: {e}"))
    }

    /// Like [`Lab::exec`] but kills the program after `timeout`: `None` if it had to be killed.
    pub fn exec_timeout(&self, host: Host, argv: &[&str], timeout: Duration) -> Option<Output> {
        assert!(!argv.is_empty(), "exec needs a program");
        let mut c = self.command(host, argv[0]);
        c.args(&argv[1..]);
        output_with_timeout(&mut c, timeout).ok()
    }

    /// Like [`Lab::exec`] but panics with stdout/stderr if the exit status is not 0; returns stdout.
    pub fn run(&self, host: Host, argv: &[&str]) -> String {
        let out = self.exec(host, argv);
        assert!(out.status.success(), "{}", describe(&format!("{argv:?} in {host:?} failed"), &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Injects a fault (see the module docs); returns once it is in effect.
    pub fn fault(&self, host: Host, fault: Fault) {
        self.script_ok(&["fault", host.name(), fault.as_str()], Duration::from_secs(60));
    }

    /// Undoes every fault of the host and returns when all of its services answer again.
    pub fn heal(&self, host: Host) {
        self.script_ok(&["heal", host.name()], Duration::from_secs(120));
    }

    /// `lab.sh status` output (what runs, active faults).
    pub fn status(&self) -> String {
        let out = self.script_ok(&["status"], Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Source of what is mounted at /mnt/nfs in `web` (e.g. "10.203.7.2:/srv/nfs"), from its mountinfo;
    /// None if nothing is mounted there. Never touches the mount itself.
    pub fn web_mount_source(&self) -> Option<String> {
        let mi = self.web_mountinfo();
        let mut source = None;
        for line in mi.lines() {
            // id parent major:minor root MOUNTPOINT options [optional...] - fstype SOURCE superoptions
            let f: Vec<&str> = line.split(' ').collect();
            let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
            if f.get(4) == Some(&Self::WEB_MOUNT) {
                source = f.get(sep + 2).map(|s| (*s).to_owned()); // the last (topmost) mount wins
            }
        }
        source
    }

    /// The web host's `/proc/self/mountinfo` (for the uml guest: the copy its init publishes every
    /// ~100 ms). Never touches a mount. Panics if the guest stopped publishing (it is not up).
    pub fn web_mountinfo(&self) -> String {
        if self.web == WebKind::Sshfs {
            let p = format!("/proc/{}/mountinfo", self.holder_pid(Host::Web));
            return fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {p}: {e}"));
        }
        let p = self.web_spool().join("mountinfo");
        let start = Instant::now();
        loop {
            // Rewritten in place by the guest: a complete copy ends with "#end".
            let text = fs::read_to_string(&p).unwrap_or_default();
            if let Some(body) = text.strip_suffix("#end\n") {
                return body.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "lab {}: no complete {} within 5 s (is the web guest up? console: {})",
                self.name,
                p.display(),
                self.run_dir(Host::Web).join("uml.log").display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Tears the lab down: kills every process, removes namespaces, route, state dir, subnet.
    /// Idempotent; also done on Drop.
    pub fn down(&self) {
        if self.down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.script_ok(&["down"], Duration::from_secs(120));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.down.load(Ordering::SeqCst) {
            return;
        }
        if std::env::var_os("NFS_GUARD_LAB_KEEP").is_some() {
            eprintln!("NFS_GUARD_LAB_KEEP set: leaving lab {} up (LAB={} scripts/lab.sh down)", self.name, self.name);
            return;
        }
        if std::thread::panicking() {
            // A second panic would abort the test binary: report instead.
            self.down.store(true, Ordering::SeqCst);
            match output_with_timeout(&mut self.script_cmd(&["down"]), Duration::from_secs(120)) {
                Ok(out) if out.status.success() => {}
                Ok(out) | Err(out) => eprintln!("{}", describe(&format!("lab {}: down failed", self.name), &out)),
            }
        } else {
            self.down();
        }
    }
}

/// Live (non-zombie) pids whose network namespace is the one bound at `netns_path`.
pub fn netns_pids(netns_path: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(netns_path) else { return Vec::new() };
    let want = format!("net:[{}]", meta.ino());
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else { return pids };
    for e in rd.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(link) = fs::read_link(e.path().join("ns/net")) else { continue };
        if link.to_string_lossy() == want && pid_alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// True if the process exists and is not a zombie (`kill -0` succeeds on zombies; this does not).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next().unwrap_or('?'));
    !matches!(state, Some('Z' | 'X') | None)
}

/// Polls `cond` every 50 ms until true or `deadline` elapses; panics with `what` on timeout.
pub fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
