//! THE child-process runner: every external program (the mount helper, rsync, hook commands, unit
//! restarts) runs through [`run`]. The child leads its own process group (with whatever it starts:
//! rsync's ssh, a mount helper's `mount.nfs`), which is killed whole with SIGKILL at the deadline or
//! when the caller drops the run before the child exited; its TCP connections are reset first, so
//! that what they still had to send is dropped, not delivered after a partition heals
//! ([`super::tcp_abort`]). Arguments are a vector: no shell sees a path. stdout/stderr are kept
//! bounded (their last [`OUTPUT_KEEP`] bytes).

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// How much of a child's stdout and of its stderr is kept: the end, where rsync's `--stats` and the
/// last errors are (a transfer that warns about every one of 10000 files must not fill memory).
pub const OUTPUT_KEEP: usize = 64 * 1024;

/// How long past the deadline a pipe reader may still wait for an EOF.
const READER_SLACK: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("cannot run {program}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: io::Error,
}

/// When the run is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// When the child exited AND its output pipes closed, all within the deadline (rsync: its
    /// `--stats` are needed; a grandchild holding the pipes past the deadline is killed with it).
    OutputClosed,
    /// When the child exited; output still trailing is read for at most this long and the process
    /// group is left alone (a mount helper may leave a daemon, e.g. FUSE, holding the pipe).
    Exited { trailing: Duration },
}

/// What to run.
pub struct Spec {
    pub cmd: Command,
    /// Written to the child's stdin, which is then closed (`None`: stdin is /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// How much of stdout to keep, its last bytes (0: stdout goes to /dev/null); usually
    /// [`OUTPUT_KEEP`], more for a listing that is wanted whole.
    pub stdout_keep: usize,
    pub deadline: Duration,
    pub end: End,
}

/// How a run ended.
#[derive(Debug)]
pub enum Ran {
    Exited {
        status: io::Result<ExitStatus>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// The deadline passed: the child's process group was killed.
    TimedOut,
}

/// Runs `spec.cmd` in its own process group under `spec.deadline` (see the module header).
pub async fn run(spec: Spec) -> Result<Ran, SpawnError> {
    let Spec { mut cmd, stdin, stdout_keep, deadline, end } = spec;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(if stdout_keep > 0 { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().map_err(|source| SpawnError { program, source })?;
    let mut group = Group(child.id().and_then(|p| i32::try_from(p).ok()));
    // Each pipe is read by its own task, so the child's exit (not an EOF) can end the wait; a pipe
    // held open by a daemon the child left behind is given up a minute after the deadline.
    let reader = |mut r: Box<dyn AsyncRead + Send + Unpin>, keep: usize| {
        tokio::spawn(async move {
            let read = read_tail(&mut r, keep);
            tokio::time::timeout(deadline.saturating_add(READER_SLACK), read).await.unwrap_or_default()
        })
    };
    let out = child.stdout.take().map(|o| reader(Box::new(o), stdout_keep));
    let err = child.stderr.take().map(|e| reader(Box::new(e), OUTPUT_KEEP));
    let mut pipe = child.stdin.take();
    let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match h {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let exited = async {
        if let (Some(w), Some(data)) = (pipe.as_mut(), stdin) {
            // A child that exits early closes the pipe; its exit status tells the story.
            let _ = w.write_all(&data).await;
            let _ = w.shutdown().await;
        }
        drop(pipe);
        child.wait().await
    };
    let ran = match end {
        End::OutputClosed => tokio::time::timeout(deadline, async {
            let (status, stdout, stderr) = tokio::join!(exited, collect(out), collect(err));
            Ran::Exited { status, stdout, stderr }
        })
        .await
        .ok(),
        End::Exited { trailing } => match tokio::time::timeout(deadline, exited).await {
            Ok(status) => {
                let trail = |h| async move { tokio::time::timeout(trailing, collect(h)).await.unwrap_or_default() };
                let (stdout, stderr) = tokio::join!(trail(out), trail(err));
                Some(Ran::Exited { status, stdout, stderr })
            }
            Err(_) => None,
        },
    };
    if let Some(ran) = ran {
        // The leader was reaped: its group id may be reused from now on.
        group.0 = None;
        Ok(ran)
    } else {
        group.kill();
        Ok(Ran::TimedOut)
    }
}

/// Reads `r` to its end (or first error), keeping only the last `keep` bytes.
pub async fn read_tail<R: AsyncRead + Unpin>(r: &mut R, keep: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 2 * keep {
                    buf.drain(..buf.len() - keep);
                }
            }
        }
    }
    if buf.len() > keep {
        buf.drain(..buf.len() - keep);
    }
    buf
}

/// The process group of a running child, killed with SIGKILL when dropped while still set.
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let reset = super::tcp_abort::reset_group_connections(pgid);
            if reset > 0 {
                tracing::debug!(pgid, connections = reset, "connections of a killed child reset");
            }
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Is `pid` gone (no such process, or a zombie)? For tests of the group kill.
#[cfg(test)]
pub(crate) fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sh(script: &str, deadline: Duration, end: End) -> Spec {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        Spec { cmd, stdin: None, stdout_keep: OUTPUT_KEEP, deadline, end }
    }

    #[tokio::test]
    async fn stdin_is_fed_and_both_outputs_kept() {
        let mut spec = sh("cat; echo oops >&2; exit 3", Duration::from_secs(10), End::OutputClosed);
        spec.stdin = Some(b"a\nb\0c".to_vec());
        match run(spec).await.unwrap() {
            Ran::Exited { status, stdout, stderr } => {
                assert_eq!(status.unwrap().code(), Some(3));
                assert_eq!(stdout, b"a\nb\0c");
                assert_eq!(stderr, b"oops\n");
            }
            Ran::TimedOut => panic!("timed out"),
        }
    }

    #[tokio::test]
    async fn a_spawn_failure_names_the_program() {
        let spec = Spec {
            cmd: Command::new("/nonexistent/prog"),
            stdin: None,
            stdout_keep: 0,
            deadline: Duration::from_secs(1),
            end: End::OutputClosed,
        };
        assert_eq!(run(spec).await.unwrap_err().to_string(), "cannot run /nonexistent/prog");
    }

    /// A child that leaves a grandchild holding its stderr (a daemonizing mount helper): with
    /// `End::Exited` the exit ends the run (the trailing output is waited for only briefly) and the
    /// grandchild is left alone; with `End::OutputClosed` the deadline kills the whole group.
    #[tokio::test]
    async fn a_grandchild_holding_the_pipe_ends_the_run_only_as_asked() {
        let d = tempfile::tempdir().unwrap();
        let pid_file = d.path().join("pid");
        let script = format!("sleep 300 & echo $! > '{}'; echo started >&2; exit 0", pid_file.display());
        let t0 = std::time::Instant::now();
        let spec = sh(&script, Duration::from_secs(30), End::Exited { trailing: Duration::from_millis(100) });
        match run(spec).await.unwrap() {
            Ran::Exited { status, .. } => assert!(status.unwrap().success()),
            Ran::TimedOut => panic!("timed out"),
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(!gone(pid), "the daemon survives");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);

        let spec = sh(&script, Duration::from_millis(300), End::OutputClosed);
        assert!(matches!(run(spec).await.unwrap(), Ran::TimedOut));
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        wait_gone(pid).await;
    }

    async fn wait_gone(pid: i32) {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !gone(pid) {
            assert!(std::time::Instant::now() < end, "{pid} still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_group() {
        let d = tempfile::tempdir().unwrap();
        let pids = d.path().join("pids");
        let script = format!("sleep 300 & echo $$ $! > '{}.tmp'; mv '{0}.tmp' '{0}'; wait", pids.display());
        let started = async {
            while !Path::new(&pids).exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = run(sh(&script, Duration::from_secs(60), End::Exited { trailing: Duration::ZERO })) => panic!("ended"),
            () = started => {}
        }
        for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
            wait_gone(pid.parse().unwrap()).await;
        }
    }

    /// A killed child's TCP connections are reset, not closed: what it had not sent yet is dropped
    /// (a push stalled by a partition must not complete after the heal). The peer sees the reset;
    /// without it, an orderly end of stream.
    #[tokio::test]
    async fn a_killed_childs_connections_are_reset_not_closed() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 300"));
        let spec = Spec { cmd, stdin: None, stdout_keep: 0, deadline: Duration::from_secs(60), end: End::OutputClosed };
        let accept = tokio::task::spawn_blocking(move || listener.accept().unwrap().0);
        let mut peer = tokio::select! {
            _ = run(spec) => panic!("ended"),
            s = accept => s.unwrap(),
        };
        // The run was dropped: its group is gone.
        peer.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let got = peer.read(&mut [0u8; 16]);
        assert_eq!(got.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset), "the connection was not reset");
    }
}
