//! After-batch hooks (the general form of sersync's command, socket and CDN-refresh plugins): a
//! command run as an argv (never a shell) with the changed absolute paths NUL-separated on stdin, and/or
//! a JSON POST `{"remote": .., "paths": [..]}` to a URL. Hooks run in their own tasks with a deadline
//! (the command is killed, the POST runs on a blocking thread that is abandoned), so a slow hook never
//! delays replication. At most 4 hooks run at a time; a failure is logged, never retried.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::config::storage::Hook;

#[derive(Clone)]
pub struct Hooks {
    hook: Arc<Hook>,
    slots: Arc<Semaphore>,
}

impl Hooks {
    pub fn new(hook: Hook) -> Hooks {
        Hooks { hook: Arc::new(hook), slots: Arc::new(Semaphore::new(4)) }
    }

    /// Runs the hooks for paths (relative to `root`) just pushed to `remote`, in the background.
    pub fn after_batch(&self, remote: &str, root: &Path, rels: &[PathBuf]) {
        let paths: Vec<PathBuf> = rels.iter().filter(|r| self.hook.include.included(r)).map(|r| root.join(r)).collect();
        if paths.is_empty() {
            return;
        }
        let me = self.clone();
        let remote = remote.to_owned();
        tokio::spawn(async move {
            let Ok(_slot) = me.slots.acquire().await else { return };
            if !me.hook.command.is_empty() {
                run_command(&me.hook, &remote, &paths).await;
            }
            if let Some(url) = me.hook.url.clone() {
                post(&me.hook, url, &remote, &paths).await;
            }
        });
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
    cmd.args(&hook.command[1..])
        .env("NFS_GUARD_REMOTE", remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command = %hook.command[0], error = %e, "hook command cannot start");
            return;
        }
    };
    let data = stdin_bytes(paths);
    let mut stdin = child.stdin.take();
    let run = async {
        if let Some(w) = stdin.as_mut() {
            let _ = w.write_all(&data).await;
        }
        drop(stdin);
        child.wait_with_output().await
    };
    match tokio::time::timeout(hook.timeout, run).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::debug!(command = %hook.command[0], paths = paths.len(), "hook command done");
        }
        Ok(Ok(out)) => tracing::warn!(
            command = %hook.command[0], status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(), "hook command failed"
        ),
        Ok(Err(e)) => tracing::warn!(command = %hook.command[0], error = %e, "hook command failed"),
        Err(_) => tracing::warn!(command = %hook.command[0], timeout = ?hook.timeout, "hook command timed out; killed"),
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
    use std::time::Duration;

    use super::*;
    use crate::storage::filter::Filter;

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
        assert_eq!(std::fs::read(&out).unwrap(), b"/srv/a.html\0/srv/-x\n.html\0");
    }
}
