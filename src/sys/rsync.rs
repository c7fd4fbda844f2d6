//! Running the real `rsync` binary: target URLs and transport arguments, exit-code classification,
//! and a runner with a hard deadline. Arguments are always a vector (never a shell); file lists go to
//! rsync NUL-separated on stdin, so every byte sequence Linux allows in a name survives.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::child;

/// How rsync reaches the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `rsync://user@host:port/module/`
    Daemon,
    /// `user@host:/path/` over ssh.
    Ssh,
}

/// A validated remote end for rsync (see `config::rsync`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncTarget {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// Module name (daemon) or absolute directory (ssh).
    pub location: String,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ssh_identity: Option<PathBuf>,
    pub ssh_known_hosts: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

impl RsyncTarget {
    /// A daemon target for unit tests: `rsync://nfsguard@10.0.0.3:873/data/`, 5 s / 30 s timeouts.
    #[cfg(test)]
    pub(crate) fn example() -> RsyncTarget {
        RsyncTarget {
            transport: Transport::Daemon,
            host: "10.0.0.3".into(),
            port: 873,
            location: "data".into(),
            user: Some("nfsguard".into()),
            password_file: Some("/etc/nfs-guard/rsync.pass".into()),
            ssh_identity: None,
            ssh_known_hosts: None,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
        }
    }

    /// The destination (or source) argument for the root of the target, with a trailing slash.
    pub fn url(&self) -> String {
        let user = self.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.transport {
            Transport::Daemon => format!("rsync://{user}{host}:{}/{}/", self.port, self.location),
            Transport::Ssh => format!("{user}{host}:{}/", self.location.trim_end_matches('/')),
        }
    }

    /// Arguments that make a dead remote fail in bounded time, plus authentication.
    pub fn transport_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![format!("--timeout={}", self.io_timeout.as_secs().max(1)).into()];
        match self.transport {
            Transport::Daemon => {
                args.push(format!("--contimeout={}", self.connect_timeout.as_secs().max(1)).into());
                if let Some(p) = &self.password_file {
                    let mut a = OsString::from("--password-file=");
                    a.push(p);
                    args.push(a);
                }
            }
            Transport::Ssh => {
                // -e is parsed by rsync (not a shell) into argv; paths in it must not contain spaces.
                let mut ssh = format!(
                    "ssh -p {} -o BatchMode=yes -o ConnectTimeout={} -o ServerAliveInterval=5 -o ServerAliveCountMax=3",
                    self.port,
                    self.connect_timeout.as_secs().max(1)
                );
                if let Some(id) = &self.ssh_identity {
                    let _ = write!(ssh, " -i {}", id.display());
                }
                if let Some(k) = &self.ssh_known_hosts {
                    let _ = write!(ssh, " -o UserKnownHostsFile={}", k.display());
                }
                args.push("-e".into());
                args.push(ssh.into());
            }
        }
        args
    }

    /// Human name for logs: `rsync://nfsguard@10.0.0.3:873/data/`.
    pub fn display(&self) -> String {
        self.url()
    }
}

/// What an rsync exit code means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// 0, and 24 (some source files vanished before transfer: they are gone, nothing to copy).
    Success,
    /// 23 (partial transfer): some files did not make it. Not a success; retry them.
    Partial,
    /// The remote or the network failed (refused, timeouts, killed, auth): retry with backoff.
    Transient,
    /// Our invocation is wrong (syntax, unsupported option): retrying will not help.
    Fatal,
}

pub fn classify(code: Option<i32>) -> ExitClass {
    match code {
        Some(0 | 24) => ExitClass::Success,
        Some(23) => ExitClass::Partial,
        Some(1 | 4) => ExitClass::Fatal,
        // 5 start-up/auth, 10 socket, 11 file I/O, 12 protocol stream, 14 IPC, 20 signal, 30 I/O timeout,
        // 35 connect timeout, 255 ssh; None = killed by a signal (our deadline).
        _ => ExitClass::Transient,
    }
}

/// Meaning of the common codes, for logs and alerts.
pub fn describe(code: Option<i32>) -> &'static str {
    match code {
        Some(0) => "success",
        Some(1) => "syntax or usage error",
        Some(2) => "protocol incompatibility",
        Some(3) => "errors selecting input/output files",
        Some(4) => "requested action not supported",
        Some(5) => "error starting client-server protocol (authentication?)",
        Some(10) => "error in socket I/O (connection refused?)",
        Some(11) => "error in file I/O",
        Some(12) => "error in rsync protocol data stream (remote died?)",
        Some(20) => "received SIGUSR1 or SIGINT",
        Some(23) => "partial transfer due to error",
        Some(24) => "partial transfer due to vanished source files",
        Some(30) => "timeout in data send/receive",
        Some(35) => "timeout waiting for daemon connection",
        Some(255) => "ssh failed",
        None => "killed (deadline exceeded)",
        Some(_) => "rsync error",
    }
}

/// The result of one rsync run.
#[derive(Debug, Clone)]
pub struct RsyncReport {
    pub code: Option<i32>,
    pub class: ExitClass,
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Last lines of stderr (for errors and alerts).
    pub stderr_tail: String,
    pub timed_out: bool,
}

impl RsyncReport {
    pub fn ok(&self) -> bool {
        self.class == ExitClass::Success
    }

    /// One-line error text: `exit 10 (error in socket I/O ...): <stderr tail>`.
    pub fn error_text(&self) -> String {
        let code = self.code.map_or_else(|| "killed".to_owned(), |c| format!("exit {c}"));
        format!("{code} ({}): {}", describe(self.code), self.stderr_tail.trim())
    }
}

pub use super::child::{SpawnError, OUTPUT_KEEP};

/// Encodes relative paths for `--files-from=- --from0`: raw bytes, NUL-terminated, each behind
/// `./`. rsync skips a list line that starts with `#` or `;` as a comment, even with `--from0`, and
/// still exits 0; it strips the `./` itself, so every name arrives as it is.
pub fn nul_list<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        let bytes = p.as_os_str().as_bytes();
        if !bytes.starts_with(b"/") {
            out.extend_from_slice(b"./");
        }
        out.extend_from_slice(bytes);
        out.push(0);
    }
    out
}

/// Runs `rsync` with `args`, feeding `stdin` (if any), killing it and its process group (the ssh it
/// started) when `deadline` passes or when the returned future is dropped before rsync ended.
/// `--stats` output is parsed for files and bytes, so callers should pass `--stats`.
pub async fn run(
    rsync: &Path,
    args: &[OsString],
    stdin: Option<Vec<u8>>,
    deadline: Duration,
) -> Result<RsyncReport, SpawnError> {
    run_keeping(rsync, args, stdin, deadline, OUTPUT_KEEP).await.map(|(r, _)| r)
}

/// How much of a listing's output [`run_listing`] keeps: a dry run that lists a million paths.
const LISTING_KEEP: usize = 256 << 20;

/// [`run`] for a dry run whose whole stdout is wanted (e.g. `--info=del1`): the report and the
/// output (its last 256 MiB).
pub async fn run_listing(
    rsync: &Path,
    args: &[OsString],
    deadline: Duration,
) -> Result<(RsyncReport, Vec<u8>), SpawnError> {
    run_keeping(rsync, args, None, deadline, LISTING_KEEP).await
}

async fn run_keeping(
    rsync: &Path,
    args: &[OsString],
    stdin: Option<Vec<u8>>,
    deadline: Duration,
    stdout_keep: usize,
) -> Result<(RsyncReport, Vec<u8>), SpawnError> {
    let started = Instant::now();
    let mut cmd = Command::new(rsync);
    cmd.args(args).env("LC_ALL", "C");
    let spec = child::Spec { cmd, stdin, stdout_keep, deadline, end: child::End::OutputClosed };
    let (code, raw, stderr, timed_out) = match child::run(spec).await? {
        child::Ran::Exited { status, stdout, stderr } => (status.ok().and_then(|s| s.code()), stdout, stderr, false),
        child::Ran::TimedOut => (None, Vec::new(), b"deadline exceeded; rsync killed".to_vec(), true),
    };
    let stdout = String::from_utf8_lossy(&raw);
    let (files, bytes) = parse_stats(&stdout);
    let report = RsyncReport {
        code,
        class: classify(code),
        files,
        bytes,
        elapsed: started.elapsed(),
        stderr_tail: tail(&String::from_utf8_lossy(&stderr), 5),
        timed_out,
    };
    Ok((report, raw))
}

/// The paths a `--delete --info=del1` run printed as `deleting PATH` (a directory with its
/// trailing `/`), decoded: rsync writes each byte it will not print as `\#ooo` (octal), a backslash
/// before `#` included, so every name comes back byte for byte.
pub fn deleted_paths(stdout: &[u8]) -> Vec<Vec<u8>> {
    stdout.split(|b| *b == b'\n').filter_map(|l| l.strip_prefix(b"deleting ")).map(unescape).collect()
}

/// Decodes rsync's `\#ooo` escapes of one printed name.
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if let [b'\\', b'#', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] = s[i..] {
            out.push((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'));
            i += 5;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// Extracts (files transferred, total bytes sent) from `--stats` output.
pub fn parse_stats(stdout: &str) -> (u64, u64) {
    let num = |line: &str| -> u64 {
        line.split(':')
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .map(|v| v.replace([',', '.'], ""))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut files = 0;
    let mut bytes = 0;
    for line in stdout.lines() {
        if line.starts_with("Number of regular files transferred:") {
            files = num(line);
        } else if line.starts_with("Total bytes sent:") {
            bytes = num(line);
        }
    }
    (files, bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::child::{gone, read_tail};

    fn daemon() -> RsyncTarget {
        RsyncTarget::example()
    }

    /// Every byte sequence a name may hold comes back from a real dry run's deletion list as it
    /// is: newlines, a literal `\#012`, bytes above 127, a name that itself reads `deleting x`.
    #[tokio::test]
    async fn deletion_lists_give_back_every_name() {
        use std::os::unix::ffi::OsStringExt;
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        std::fs::create_dir_all(dst.join("sub")).unwrap();
        std::fs::create_dir_all(&src).unwrap();
        let names: Vec<Vec<u8>> = vec![
            b"new\nline".to_vec(),
            b"back\\#012slash".to_vec(),
            b"\xff\xfehi".to_vec(),
            b"deleting x".to_vec(),
            b"sub/f".to_vec(),
            b"tab\there \\ #".to_vec(),
        ];
        for n in &names {
            std::fs::write(dst.join(OsString::from_vec(n.clone())), "x").unwrap();
        }
        std::fs::write(src.join("kept"), "x").unwrap();
        std::fs::write(dst.join("kept"), "x").unwrap();
        let args: Vec<OsString> = ["-r", "-n", "--delete", "--info=del1,name0"]
            .into_iter()
            .map(OsString::from)
            .chain([format!("{}/", src.display()).into(), format!("{}/", dst.display()).into()])
            .collect();
        let (r, out) = run_listing(Path::new("rsync"), &args, Duration::from_secs(20)).await.unwrap();
        assert!(r.ok(), "{}", r.error_text());
        let mut got = deleted_paths(&out);
        got.sort();
        let mut want = names.clone();
        want.push(b"sub/".to_vec());
        want.sort();
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&out));
        assert!(dst.join("kept").exists() && dst.join("sub/f").exists(), "a dry run deletes nothing");
    }

    #[test]
    fn daemon_url_and_args() {
        let t = daemon();
        assert_eq!(t.url(), "rsync://nfsguard@10.0.0.3:873/data/");
        assert_eq!(
            t.transport_args(),
            vec![
                OsString::from("--timeout=30"),
                "--contimeout=5".into(),
                "--password-file=/etc/nfs-guard/rsync.pass".into()
            ]
        );
    }

    #[test]
    fn ssh_url_and_args() {
        let t = RsyncTarget {
            transport: Transport::Ssh,
            port: 22,
            location: "/srv/nfs/".into(),
            password_file: None,
            ssh_identity: Some("/etc/nfs-guard/id".into()),
            ssh_known_hosts: Some("/etc/nfs-guard/known_hosts".into()),
            ..daemon()
        };
        assert_eq!(t.url(), "nfsguard@10.0.0.3:/srv/nfs/");
        let a = t.transport_args();
        assert_eq!(a[1], OsString::from("-e"));
        let e = a[2].to_string_lossy();
        assert!(e.contains("ConnectTimeout=5") && e.contains(" -i /etc/nfs-guard/id"), "{e}");
        assert!(e.contains(" -o UserKnownHostsFile=/etc/nfs-guard/known_hosts"), "{e}");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let t = RsyncTarget { host: "fd00::3".into(), ..daemon() };
        assert_eq!(t.url(), "rsync://nfsguard@[fd00::3]:873/data/");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(classify(Some(0)), ExitClass::Success);
        assert_eq!(classify(Some(24)), ExitClass::Success);
        assert_eq!(classify(Some(23)), ExitClass::Partial);
        for c in [5, 10, 12, 30, 35, 255] {
            assert_eq!(classify(Some(c)), ExitClass::Transient, "{c}");
        }
        assert_eq!(classify(None), ExitClass::Transient);
        assert_eq!(classify(Some(1)), ExitClass::Fatal);
    }

    #[test]
    fn nul_list_keeps_raw_bytes() {
        use std::ffi::OsStr;
        let weird = Path::new(OsStr::from_bytes(b"a\nb\xff"));
        let list = nul_list([Path::new("x y"), weird, Path::new("#c"), Path::new(";s"), Path::new(".")]);
        assert_eq!(list, b"./x y\0./a\nb\xff\0./#c\0./;s\0./.\0");
    }

    #[test]
    fn stats_parsing() {
        let s = "Number of files: 3\nNumber of regular files transferred: 1,234\nTotal bytes sent: 56,789\n";
        assert_eq!(parse_stats(s), (1234, 56789));
    }

    #[tokio::test]
    async fn output_is_kept_bounded_and_stats_still_parse() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let kept = read_tail(&mut &data[..], 1000).await;
        assert_eq!(kept, &data[data.len() - 1000..]);
        assert_eq!(read_tail(&mut &b"short"[..], 1000).await, b"short");
        let script = "head -c 20000000 /dev/zero; head -c 20000000 /dev/zero >&2; \
                      printf '\\nNumber of regular files transferred: 7\\nTotal bytes sent: 9\\n'; echo last >&2";
        let r = run(Path::new("/bin/sh"), &["-c".into(), script.into()], None, Duration::from_secs(60)).await.unwrap();
        assert_eq!((r.files, r.bytes), (7, 9));
        assert!(r.stderr_tail.ends_with("last"), "{}", r.stderr_tail.len());
        assert!(r.stderr_tail.len() <= OUTPUT_KEEP);
    }

    /// Runs a fake rsync (a shell that starts a child, like rsync starting ssh), abandoning the run
    /// as soon as both are up when `abandon`, else letting `deadline` pass; then both must be gone.
    async fn fake_rsync_group_dies(abandon: bool, deadline: Duration) {
        let d = tempfile::tempdir().unwrap();
        let pids = d.path().join("pids");
        let script = format!("sleep 300 & echo $$ $! > '{}.tmp'; mv '{0}.tmp' '{0}'; wait", pids.display());
        let args = ["-c".into(), script.into()];
        let started = async {
            while !(abandon && pids.exists()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            r = run(Path::new("/bin/sh"), &args, None, deadline) => assert!(r.unwrap().timed_out),
            () = started => {}
        }
        let text = std::fs::read_to_string(&pids).unwrap();
        let both: Vec<i32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !both.iter().all(|p| gone(*p)) {
            assert!(
                std::time::Instant::now() < end,
                "still running: {both:?} {:?}",
                both.iter()
                    .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_abandoned_run_kills_rsync_and_its_children() {
        // The caller drops the run (shutdown, a cancelled task) while rsync and its "ssh" run.
        fake_rsync_group_dies(true, Duration::from_secs(60)).await;
    }

    #[tokio::test]
    async fn the_deadline_kills_rsync_and_its_children() {
        fake_rsync_group_dies(false, Duration::from_millis(500)).await;
    }

    #[tokio::test]
    async fn deadline_kills_rsync() {
        // `rsync --daemon --no-detach` with a bogus config never exits by itself quickly; use sleep via a
        // path that is not rsync to test the deadline mechanism on any machine.
        let r = run(Path::new("/bin/sleep"), &["10".into()], None, Duration::from_millis(200)).await.unwrap();
        assert!(r.timed_out);
        assert_eq!(r.class, ExitClass::Transient);
        assert!(r.elapsed < Duration::from_secs(5));
    }
}
