//! After-batch hooks (the general form of sersync's command, socket and CDN-refresh plugins): a
//! command run as an argv (never a shell) with the changed absolute paths NUL-separated on stdin, and/or
//! a JSON POST `{"remote": .., "paths": [..]}` to a URL. Hooks run in their own task with a deadline
//! (the command is killed, the POST runs on a blocking thread that is abandoned), so a slow hook never
//! delays replication. A failure is logged, never retried.
//!
//! Bounded: ONE run at a time; the paths of batches that finish meanwhile wait, merged per remote
//! and tree, and go in the next run. Past [`MAX_WAITING`] paths for one remote and tree, they
//! collapse into the tree root itself ("everything beneath changed"), so a hook slower than
//! replication costs neither unbounded tasks nor unbounded memory.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::storage::Hook;
use crate::sys::child;

/// Paths that may wait for the hook per remote and tree before they collapse into the tree root.
pub const MAX_WAITING: usize = 100_000;

/// What waits for the next run: remote -> tree root -> paths (`None`: everything beneath the root).
type Waiting = BTreeMap<String, BTreeMap<PathBuf, Option<BTreeSet<PathBuf>>>>;

#[derive(Default)]
struct State {
    waiting: Waiting,
    /// A task is running the hook (and will take what waits before it ends).
    running: bool,
}

#[derive(Clone)]
pub struct Hooks {
    hook: Arc<Hook>,
    state: Arc<Mutex<State>>,
    max_waiting: usize,
}

impl Hooks {
    pub fn new(hook: Hook) -> Hooks {
        Hooks::with_limit(hook, MAX_WAITING)
    }

    /// Like [`Hooks::new`] with another cap on waiting paths (tests).
    pub fn with_limit(hook: Hook, max_waiting: usize) -> Hooks {
        Hooks { hook: Arc::new(hook), state: Arc::default(), max_waiting }
    }

    /// Runs the hooks for paths (relative to `root`) just pushed to `remote`, in the background:
    /// now when no run is under way, else merged into the next one.
    pub fn after_batch(&self, remote: &str, root: &Path, rels: &[PathBuf]) {
        let paths = rels.iter().filter(|r| self.hook.include.included(r)).map(|r| root.join(r));
        let mut paths = paths.peekable();
        if paths.peek().is_none() {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = st
            .waiting
            .entry(remote.to_owned())
            .or_default()
            .entry(root.to_path_buf())
            .or_insert_with(|| Some(BTreeSet::new()));
        if let Some(set) = slot {
            set.extend(paths);
            if set.len() > self.max_waiting {
                tracing::warn!(remote, tree = %root.display(), paths = set.len(),
                    "hook slower than replication: it gets the tree root instead of the paths");
                *slot = None;
            }
        }
        if !st.running {
            st.running = true;
            tokio::spawn(self.clone().drain());
        }
    }

    /// Runs the hook for what waits, one remote at a time, until nothing does.
    async fn drain(self) {
        loop {
            let next = {
                let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                let next = st.waiting.pop_first();
                st.running = next.is_some();
                next
            };
            let Some((remote, trees)) = next else { return };
            let paths: Vec<PathBuf> = trees
                .into_iter()
                .flat_map(|(root, set)| set.map_or_else(|| vec![root], |s| s.into_iter().collect()))
                .collect();
            if !self.hook.command.is_empty() {
                run_command(&self.hook, &remote, &paths).await;
            }
            if let Some(url) = self.hook.url.clone() {
                post(&self.hook, url, &remote, &paths).await;
            }
        }
    }
}

/// The NUL-separated stdin of the hook command.
pub fn stdin_bytes(paths: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(p.as_os_str().as_bytes());
        out.push(0);
    }
    out
}

/// The JSON body of the POST (names that are not UTF-8 are sent lossily: JSON cannot hold raw bytes).
pub fn json_body(remote: &str, paths: &[PathBuf]) -> serde_json::Value {
    let list: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    serde_json::json!({ "remote": remote, "paths": list })
}

async fn run_command(hook: &Hook, remote: &str, paths: &[PathBuf]) {
    let mut cmd = tokio::process::Command::new(&hook.command[0]);
    cmd.args(&hook.command[1..]).env("NFS_GUARD_REMOTE", remote);
    let spec = child::Spec {
        cmd,
        stdin: Some(stdin_bytes(paths)),
        stdout_keep: 0,
        deadline: hook.timeout,
        end: child::End::OutputClosed,
    };
    match child::run(spec).await {
        Err(e) => tracing::warn!(command = %hook.command[0], error = %e.source, "hook command cannot start"),
        Ok(child::Ran::Exited { status: Ok(status), .. }) if status.success() => {
            tracing::debug!(command = %hook.command[0], paths = paths.len(), "hook command done");
        }
        Ok(child::Ran::Exited { status: Ok(status), stderr, .. }) => tracing::warn!(
            command = %hook.command[0], status = %status,
            stderr = %String::from_utf8_lossy(&stderr).trim(), "hook command failed"
        ),
        Ok(child::Ran::Exited { status: Err(e), .. }) => {
            tracing::warn!(command = %hook.command[0], error = %e, "hook command failed");
        }
        Ok(child::Ran::TimedOut) => {
            tracing::warn!(command = %hook.command[0], timeout = ?hook.timeout, "hook command timed out; killed");
        }
    }
}

async fn post(hook: &Hook, url: String, remote: &str, paths: &[PathBuf]) {
    let body = json_body(remote, paths);
    let timeout = hook.timeout;
    let u = url.clone();
    let call = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).build().into();
        agent.post(&u).send_json(&body).map(|r| r.status().as_u16())
    });
    match tokio::time::timeout(timeout + std::time::Duration::from_secs(1), call).await {
        Ok(Ok(Ok(code))) => tracing::debug!(url = %url, code, "hook POST done"),
        Ok(Ok(Err(e))) => tracing::warn!(url = %url, error = %e, "hook POST failed"),
        Ok(Err(e)) => tracing::warn!(url = %url, error = %e, "hook POST task failed"),
        Err(_) => tracing::warn!(url = %url, "hook POST timed out; abandoned"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::config::filter::Filter;

    #[test]
    fn payloads_keep_names_safe() {
        let p = [PathBuf::from("/srv/a b"), PathBuf::from("/srv/$(x)\n")];
        assert_eq!(stdin_bytes(&p), b"/srv/a b\0/srv/$(x)\n\0");
        assert_eq!(json_body("b", &p).to_string(), r#"{"paths":["/srv/a b","/srv/$(x)\n"],"remote":"b"}"#);
    }

    #[tokio::test]
    async fn url_gets_a_json_post() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = c.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
                        return text;
                    }
                }
                if n == 0 {
                    return text;
                }
            }
        });
        let hook = Hook {
            command: Vec::new(),
            url: Some(format!("http://127.0.0.1:{port}/changed")),
            include: Filter::default(),
            timeout: Duration::from_secs(5),
        };
        Hooks::new(hook).after_batch("backup", Path::new("/srv"), &[PathBuf::from("a b/$(c)")]);
        let req = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap();
        assert!(req.starts_with("POST /changed HTTP/1.1"), "{req}");
        let body: serde_json::Value = serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, serde_json::json!({"remote": "backup", "paths": ["/srv/a b/$(c)"]}));
    }

    #[tokio::test]
    async fn command_gets_filtered_paths_on_stdin() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let hook = Hook {
            command: vec!["/bin/sh".into(), "-c".into(), format!("cat > '{}'", out.display())],
            url: None,
            include: Filter::new(&[], &["*.html"]).unwrap(),
            timeout: Duration::from_secs(5),
        };
        let hooks = Hooks::new(hook);
        hooks.after_batch(
            "backup",
            Path::new("/srv"),
            &[PathBuf::from("a.html"), PathBuf::from("-x\n.html"), "b.css".into()],
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read(&out).map_or(0, |b| b.len()) < 20 {
            assert!(std::time::Instant::now() < deadline, "hook did not run");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Sorted: paths that wait for a run are merged in a set.
        assert_eq!(std::fs::read(&out).unwrap(), b"/srv/-x\n.html\0/srv/a.html\0");
    }

    /// Waits (polling, with a deadline) until `f` holds.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A hook that appends its stdin to `out`, a line to `runs`, and then waits for `go` to exist.
    fn slow_hook(d: &Path) -> Hook {
        let script = format!(
            "cat >> '{0}/out'; echo run >> '{0}/runs'; while [ ! -e '{0}/go' ]; do sleep 0.02; done",
            d.display()
        );
        Hook {
            command: vec!["/bin/sh".into(), "-c".into(), script],
            url: None,
            include: Filter::default(),
            timeout: Duration::from_secs(30),
        }
    }

    fn runs(d: &Path) -> usize {
        std::fs::read_to_string(d.join("runs")).map_or(0, |s| s.lines().count())
    }

    #[tokio::test]
    async fn a_slow_hook_runs_once_at_a_time_and_coalesces_what_arrives_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let hooks = Hooks::new(slow_hook(d.path()));
        hooks.after_batch("backup", Path::new("/srv"), &[PathBuf::from("first")]);
        until("the first run", || runs(d.path()) == 1).await;
        for i in 0..500 {
            hooks.after_batch("backup", Path::new("/srv"), &[PathBuf::from(format!("f{i}")), "dup".into()]);
        }
        std::fs::write(d.path().join("go"), "").unwrap();
        let want: usize = 1 + 500 + 1;
        until("every path delivered", || {
            std::fs::read(d.path().join("out")).is_ok_and(|b| b.split(|c| *c == 0).count() > want)
        })
        .await;
        assert_eq!(runs(d.path()), 2, "one run in flight, everything that arrived meanwhile in one more");
        let out = std::fs::read(d.path().join("out")).unwrap();
        let got: BTreeSet<&[u8]> = out.split(|c| *c == 0).filter(|p| !p.is_empty()).collect();
        assert_eq!(got.len(), want);
        assert!(got.contains(&b"/srv/f499"[..]) && got.contains(&b"/srv/dup"[..]));
    }

    #[tokio::test]
    async fn past_the_cap_the_hook_gets_the_tree_root() {
        let d = tempfile::tempdir().unwrap();
        let hooks = Hooks::with_limit(slow_hook(d.path()), 10);
        hooks.after_batch("backup", Path::new("/srv"), &[PathBuf::from("first")]);
        until("the first run", || runs(d.path()) == 1).await;
        for i in 0..11 {
            hooks.after_batch("backup", Path::new("/srv"), &[PathBuf::from(format!("f{i}"))]);
        }
        hooks.after_batch("backup", Path::new("/other"), &[PathBuf::from("x")]);
        std::fs::write(d.path().join("go"), "").unwrap();
        until("the second run", || runs(d.path()) == 2).await;
        until("its paths", || std::fs::read(d.path().join("out")).is_ok_and(|b| b.ends_with(b"/srv\0"))).await;
        assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"/srv/first\0/other/x\0/srv\0");
    }
}
