//! Shared helpers for the storage tests: a real local rsync daemon, the nfs-guard process, the file
//! scenarios of the storage issue, and the byte-for-byte + metadata comparison of two trees.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nfs-guard");

/// Polls `f` every 50 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// rsyncd.conf of a test daemon: the README's recommended one (so that example cannot rot: every
/// storage test's daemon runs it), serving module `data` from `root` without authentication. The
/// module's comment is `root`, so a test can tell its own daemon from another test's on the same
/// port ([`serves`]).
pub fn daemon_conf(root: &Path) -> String {
    use std::fmt::Write as _;
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("**rsync daemons**")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("README.md: no rsyncd.conf example after **rsync daemons**");
    let mut conf = String::new();
    for line in block.lines() {
        let t = line.trim();
        if t.starts_with("auth users") || t.starts_with("secrets file") {
            continue;
        }
        if t == "path = /srv/nfs" {
            let _ = write!(conf, "    path = {0}\n    comment = {0}\n", root.display());
        } else {
            conf += line;
            conf.push('\n');
        }
    }
    assert!(conf.contains("comment = "), "README.md's rsyncd.conf example has no `path = /srv/nfs`:\n{block}");
    conf
}

/// A tree `src` under a temporary directory `d`, a local rsync daemon, and `cfg`, a default
/// config of `nfs-guard storage` pushing `src` to it (state in `state`).
pub struct Site {
    pub d: tempfile::TempDir,
    pub daemon: Daemon,
    pub src: PathBuf,
    pub state: PathBuf,
    pub cfg: PathBuf,
}

pub fn site() -> Site {
    let d = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(d.path());
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let state = d.path().join("state");
    let cfg = d.path().join("n.toml");
    write_config(&cfg, &state, &src, "127.0.0.1", daemon.port, "", "");
    Site { d, daemon, src, state, cfg }
}

/// Does the rsync daemon on 127.0.0.1:`port` serve `root` (and not some other test's directory)?
pub fn serves(port: u16, root: &Path) -> bool {
    Command::new("rsync")
        .arg(format!("rsync://127.0.0.1:{port}/"))
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&*root.to_string_lossy()))
}

/// Every file scenario of the storage issue in a row: a burst of `files`, `mkdir -p` + writes, renames
/// (into and out of `outside`), deletes, attribute-only changes, links and hostile names.
pub fn all_scenarios(src: &Path, outside: &Path, files: usize) {
    burst(src, "burst", 20, files);
    mkdir_p_and_write(src);
    renames(src, outside);
    deletes(src);
    attributes(src);
    links(src);
    hostile(src);
}

/// A real rsync daemon on 127.0.0.1 (no auth) serving module `data` from `root`.
pub struct Daemon {
    pub port: u16,
    pub root: PathBuf,
    child: Child,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Daemon::serving(dir, &dir.join("remote"))
    }

    /// A daemon on a free port serving `root` (e.g. a restart after the first one was killed).
    pub fn serving(dir: &Path, root: &Path) -> Daemon {
        let root = root.to_path_buf();
        fs::create_dir_all(&root).unwrap();
        let conf = dir.join("rsyncd.conf");
        for _ in 0..20 {
            let port = 20000 + u16::try_from(fastrand::u32(0..40000)).unwrap();
            fs::write(&conf, daemon_conf(&root)).unwrap();
            let mut child = Command::new("rsync")
                .args(["--daemon", "--no-detach", "--address=127.0.0.1", &format!("--port={port}")])
                .arg(format!("--config={}", conf.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if serves(port, &root) {
                    return Daemon { port, root, child };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // port taken: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("cannot start a local rsync daemon");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `nfs-guard storage`.
pub struct Node {
    pub child: Child,
    pub log: PathBuf,
}

impl Node {
    /// Starts `cmd` (already pointing at the binary) with `--config cfg storage`, logging to `log`.
    pub fn spawn(mut cmd: Command, cfg: &Path, log: &Path) -> Node {
        let out = fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = cmd
            .arg("--config")
            .arg(cfg)
            .arg("-v")
            .arg("storage")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Node { child, log: log.to_owned() }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "nfs-guard did not stop within {timeout:?}\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` as systemd would see it: the daemon and what it started (its rsyncs). The units
    /// use `KillMode=mixed`: once the main process is gone, the rest of the unit's cgroup is killed
    /// before a restart, so no push of a dead daemon outlives it.
    pub fn kill9(&mut self) {
        let pids = descendants(self.child.id());
        let _ = self.child.kill();
        for p in pids {
            if let Ok(p) = i32::try_from(p) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// The processes below `pid` (children, grandchildren, ...), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let all: Vec<u32> = fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let me = out[i];
        let children: Vec<u32> =
            all.iter().copied().filter(|p| parent_of(*p) == Some(me) && !out.contains(p)).collect();
        out.extend(children);
        i += 1;
    }
    out.remove(0);
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Differences between `src` and `dst` as rsync itemizes them (content by checksum, permissions, owner,
/// group, mtimes, symlinks, hard links, extra files on `dst`). Empty when identical.
pub fn differences(src: &Path, dst: &Path) -> String {
    let out = Command::new("rsync")
        // a storage agent's health canary is per server, never replicated
        .args(["-a", "-H", "-c", "-n", "-i", "--delete", "--numeric-ids", "--exclude=/.nfs-guard-agent-canary"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    if out.status.code() == Some(24) {
        // A file vanished during the comparison (a push in progress): not settled yet.
        return "(files vanished during the comparison)".to_owned();
    }
    assert!(out.status.success(), "comparison rsync failed: {}", String::from_utf8_lossy(&out.stderr));
    // The root directory's own mtime differs harmlessly when the tree root itself was never pushed.
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.ends_with(" ./")).collect::<Vec<_>>().join("\n")
}

/// Is `line` (of [`differences`]) an rsync temporary file only `dst` holds (`*deleting DIR/.NAME.XXXXXX`)?
/// A receiver whose sender was killed -9 mid-file may leave one behind (rsync's own clean-up is
/// best-effort), and a full sync never deletes.
fn is_leftover_rsync_temp(line: &str) -> bool {
    line.strip_prefix("*deleting ").is_some_and(|p| {
        let name = p.rsplit('/').next().unwrap_or(p);
        name.starts_with('.')
            && name.len() > 8
            && name.as_bytes()[name.len() - 7] == b'.'
            && name[name.len() - 6..].bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Waits until `dst` equals `src`; panics with the remaining differences and the node's log.
pub fn wait_same(src: &Path, dst: &Path, timeout: Duration, node: Option<&Node>) {
    wait_same_where(src, dst, timeout, node, false);
}

/// [`wait_same`] after a `kill -9` of the pushing side mid-push: an rsync temporary file left on
/// `dst` by a killed transfer is not a difference (each one is printed).
pub fn wait_same_after_kill(src: &Path, dst: &Path, timeout: Duration, node: Option<&Node>) {
    wait_same_where(src, dst, timeout, node, true);
}

fn wait_same_where(src: &Path, dst: &Path, timeout: Duration, node: Option<&Node>, temps_allowed: bool) {
    let end = Instant::now() + timeout;
    loop {
        let all = differences(src, dst);
        let (temps, rest): (Vec<&str>, Vec<&str>) =
            all.lines().partition(|l| temps_allowed && is_leftover_rsync_temp(l));
        let d = rest.join("\n");
        if d.is_empty() && !temps.is_empty() {
            eprintln!("left on {} by a killed rsync (not a difference): {temps:?}", dst.display());
        }
        if d.is_empty() {
            return;
        }
        if Instant::now() > end {
            let log = node.map(Node::log_text).unwrap_or_default();
            let tail: String =
                log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            panic!(
                "{} and {} still differ after {timeout:?}:\n{d}\n--- nfs-guard log tail:\n{tail}",
                src.display(),
                dst.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a storage config pushing `tree` to the rsync daemon at `host:port` (module `data`).
pub fn write_config(path: &Path, state: &Path, tree: &Path, host: &str, port: u16, extra: &str, remote_extra: &str) {
    fs::write(
        path,
        format!(
            "state_dir = \"{}\"\n[storage]\nwindow = \"50ms\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\n{extra}\n\
             [[storage.trees]]\npath = \"{}\"\n\
             [[storage.remotes]]\nname = \"backup\"\nhost = \"{host}\"\nport = {port}\nmodule = \"data\"\n\
             connect_timeout = \"1s\"\nio_timeout = \"3s\"\n{remote_extra}\n",
            state.display(),
            tree.display()
        ),
    )
    .unwrap();
}

pub fn status_json(state: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&fs::read_to_string(state.join("storage.status.json")).ok()?).ok()
}

/// Waits until the node has installed its watches and its start-up full sync is done (queue idle).
pub fn wait_idle(state: &Path, node: &Node, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = status_json(state) {
            let r = &s["remotes"][0];
            if s["pending"] == 0
                && r["state"] == "idle"
                && r["queue"] == 0
                && r["full_sync_pending"].as_array().is_some_and(Vec::is_empty)
                && r["last_success"].is_string()
            {
                return;
            }
        }
        assert!(Instant::now() < end, "nfs-guard not idle after {timeout:?}\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the status file is idle and settled: written at least 1.2 s ago. The writer writes
/// within a second of any change, so a file that old shows every change made before it.
pub fn wait_status_settled(state: &Path, node: &Node, timeout: Duration) {
    let file = state.join("storage.status.json");
    let end = Instant::now() + timeout;
    loop {
        let old_enough = fs::metadata(&file)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= Duration::from_millis(1200)));
        let idle = status_json(state).is_some_and(|s| {
            let r = &s["remotes"][0];
            r["state"] == "idle" && r["queue"] == 0 && r["full_sync_pending"].as_array().is_some_and(Vec::is_empty)
        });
        if old_enough && idle {
            return;
        }
        assert!(Instant::now() < end, "status not settled and idle after {timeout:?}\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The paths the journal of remote `name` under `state` holds as pending (read from a copy).
pub fn journaled_paths(state: &Path, name: &str, scratch: &Path) -> Vec<PathBuf> {
    let copy = scratch.join(format!("{name}.journal.copy"));
    let _ = fs::remove_file(&copy);
    if fs::copy(state.join("storage").join(format!("{name}.journal")), &copy).is_err() {
        return Vec::new();
    }
    let (_, replayed) = nfs_guard::storage::journal::Journal::open(&copy).unwrap();
    replayed.pending.iter().map(|(_, e)| e.path.clone()).collect()
}

fn write(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
}

/// (a) A burst of `n` small files in `dirs` new directories.
pub fn burst(root: &Path, name: &str, dirs: usize, n: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("{name}/d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..n / dirs {
            write(&dir.join(format!("f{f:05}")), format!("{name} {d} {f}\n").as_bytes());
        }
    }
}

/// `mkdir -p a/b/c` immediately followed by writes inside every level.
pub fn mkdir_p_and_write(root: &Path) {
    let deep = root.join("mk/a/b/c");
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("inner"), b"deep");
    write(&root.join("mk/a/top"), b"top");
    write(&root.join("mk/a/b/mid"), b"mid");
}

/// Renames of files and directories within the tree, into it and out of it. `outside` is a directory
/// on the same filesystem but outside the tree.
pub fn renames(root: &Path, outside: &Path) {
    fs::create_dir_all(root.join("ren/dir/sub")).unwrap();
    write(&root.join("ren/dir/sub/f"), b"f");
    write(&root.join("ren/file"), b"file");
    write(&root.join("ren/leaving"), b"bye");
    fs::create_dir_all(root.join("ren/leaving-dir/x")).unwrap();
    write(&root.join("ren/leaving-dir/x/y"), b"y");
    std::thread::sleep(Duration::from_millis(300));
    fs::rename(root.join("ren/file"), root.join("ren/file2")).unwrap();
    fs::rename(root.join("ren/dir"), root.join("ren/dir2")).unwrap();
    write(&root.join("ren/dir2/sub/after"), b"written after the move");
    fs::rename(root.join("ren/leaving"), outside.join("leaving")).unwrap();
    fs::rename(root.join("ren/leaving-dir"), outside.join("leaving-dir")).unwrap();
    fs::create_dir_all(outside.join("incoming/deep")).unwrap();
    write(&outside.join("incoming/deep/z"), b"z");
    fs::rename(outside.join("incoming"), root.join("ren/incoming")).unwrap();
}

/// Deletes of single files and of a whole populated tree.
pub fn deletes(root: &Path) {
    fs::create_dir_all(root.join("del/tree/a/b")).unwrap();
    for i in 0..50 {
        write(&root.join(format!("del/tree/a/b/f{i}")), b"x");
    }
    write(&root.join("del/single"), b"s");
    write(&root.join("del/keep"), b"k");
}

pub fn deletes_second_half(root: &Path) {
    fs::remove_dir_all(root.join("del/tree")).unwrap();
    fs::remove_file(root.join("del/single")).unwrap();
}

/// Attribute-only changes: mode, owner, mtime (content unchanged).
pub fn attributes(root: &Path) {
    let f = root.join("attr");
    write(&f, b"same content");
    std::thread::sleep(Duration::from_millis(300));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(2345)).unwrap();
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(&f).unwrap().set_modified(t).unwrap();
    fs::create_dir_all(root.join("attrdir")).unwrap();
    fs::set_permissions(root.join("attrdir"), fs::Permissions::from_mode(0o711)).unwrap();
}

/// Symlinks (dangling, to a dir, absolute) and hard links created together.
pub fn links(root: &Path) {
    fs::create_dir_all(root.join("links")).unwrap();
    write(&root.join("links/target"), b"target");
    symlink("target", root.join("links/rel")).unwrap();
    symlink("/nonexistent/dangling", root.join("links/dangling")).unwrap();
    symlink("/etc", root.join("links/to-etc")).unwrap();
    fs::hard_link(root.join("links/target"), root.join("links/hard1")).unwrap();
    fs::hard_link(root.join("links/target"), root.join("links/hard2")).unwrap();
}

/// Names that break shells and naive rsync invocations.
pub fn hostile_names() -> Vec<PathBuf> {
    let names: [&[u8]; 14] = [
        b"with space",
        b"quote'single",
        b"quote\"double",
        b"$(touch pwned)",
        b"`touch pwned2`",
        b"new\nline",
        b"tab\there",
        b"-leading-dash",
        b"--delete",
        b"star*q?[br]",
        b"back\\slash",
        b"invalid-\xff\xfe-utf8",
        b"semi;colon&amp|pipe",
        b".hidden",
    ];
    names.iter().map(|n| PathBuf::from(OsStr::from_bytes(n))).collect()
}

pub fn hostile(root: &Path) {
    let dir = root.join("hostile");
    fs::create_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for n in hostile_names() {
        write(&dir.join(&n), n.as_os_str().as_bytes());
    }
    // A directory with a hostile name holding a file, and a file deleted again.
    let d = dir.join(OsStr::from_bytes(b"dir -x \n[*]"));
    fs::create_dir_all(&d).unwrap();
    write(&d.join("inside"), b"i");
}

pub fn hostile_second_half(root: &Path) {
    fs::remove_file(root.join("hostile").join(OsStr::from_bytes(b"$(touch pwned)"))).unwrap();
    fs::rename(root.join("hostile/-leading-dash"), root.join("hostile/renamed\n-dash")).unwrap();
}

/// Counts the rsync processes started: the `batch pushed` and `full sync` log lines.
pub fn count_in_log(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}
