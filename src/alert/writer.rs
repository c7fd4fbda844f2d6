//! The outbox's file writes, taken off the callers: one ordered writer on tokio's blocking pool.
//!
//! `emit` runs on the roles' tasks (the failover loop). A write with fsync there would stall that
//! task, and a worker thread, for as long as the disk takes; on a stuck disk, forever. So the outbox
//! changes its in-memory index at once and hands each file operation to this writer, which applies
//! them strictly in the order they were made: a message's file is written before its removal, a
//! digest before the fold files it replaces ("duplicate, never lose" holds on disk as before).
//! No lock of the outbox is held while a file operation runs.
//!
//! The writer is a `spawn_blocking` task that exists only while operations are waiting, so paused
//! tokio time in tests waits for it instead of racing it. Without a runtime (unit tests, `open`),
//! operations run inline.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::sys::fsutil;

/// One file operation of the outbox.
#[derive(Debug)]
pub enum FileOp {
    /// Atomic write (temp file, rename), with fsync when `durable`. `what` names it in a log line.
    Write { path: PathBuf, bytes: Vec<u8>, durable: bool, what: String },
    /// Removal; a missing file is fine.
    Remove { path: PathBuf },
    /// Moves a message to `dir/name` without overwriting (a suffix if taken); writes `bytes` there
    /// when the message never reached the disk.
    DeadLetter { from: PathBuf, dir: PathBuf, name: OsString, bytes: Vec<u8>, seq: u64 },
}

impl FileOp {
    /// Runs it; a failure is logged with its path (the alert stays in memory and is still mailed).
    pub fn apply(self) {
        match self {
            FileOp::Write { path, bytes, durable, what } => {
                let written = if durable {
                    fsutil::write_atomic(&path, &bytes)
                } else {
                    fsutil::write_atomic_nosync(&path, &bytes)
                };
                if let Err(e) = written {
                    tracing::error!(
                        path = %path.display(),
                        "{what} not written to the alert outbox, kept in memory only (lost if the process dies first): {e}"
                    );
                }
            }
            FileOp::Remove { path } => match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::error!(path = %path.display(), "cannot remove from the alert outbox, it may be sent again: {e}");
                }
                _ => {}
            },
            FileOp::DeadLetter { from, dir, name, bytes, seq } => {
                let moved = match super::outbox::move_aside(&from, &dir, &name) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let to = dir.join(&name);
                        fsutil::write_atomic(&to, &bytes).map(|()| to)
                    }
                    r => r,
                };
                match moved {
                    Ok(to) => tracing::error!(seq, path = %to.display(), "alert kept as a dead letter"),
                    Err(e) => {
                        tracing::error!(seq, path = %from.display(), "cannot keep the alert as a dead letter: {e}");
                    }
                }
            }
        }
    }
}

/// Applies file operations in order, off the caller's thread.
pub struct Writer {
    state: Mutex<State>,
    idle: Notify,
    runtime: Option<Handle>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<FileOp>,
    running: bool,
}

impl Writer {
    /// A writer on the current tokio runtime, or an inline one outside a runtime.
    pub fn new() -> Arc<Writer> {
        Arc::new(Writer { state: Mutex::default(), idle: Notify::new(), runtime: Handle::try_current().ok() })
    }

    /// Queues `op` behind every earlier one; never waits for the disk.
    pub fn submit(self: &Arc<Self>, op: FileOp) {
        let Some(runtime) = &self.runtime else { return op.apply() };
        let mut s = self.lock();
        s.queue.push_back(op);
        if !s.running {
            s.running = true;
            let me = self.clone();
            drop(runtime.spawn_blocking(move || me.run()));
        }
    }

    fn run(&self) {
        loop {
            let op = {
                let mut s = self.lock();
                let Some(op) = s.queue.pop_front() else {
                    s.running = false;
                    drop(s);
                    self.idle.notify_waiters();
                    return;
                };
                op
            };
            op.apply();
        }
    }

    /// Operations not yet applied.
    pub fn pending(&self) -> usize {
        let s = self.lock();
        s.queue.len() + usize::from(s.running)
    }

    /// Waits until every operation submitted so far has been applied.
    pub async fn flushed(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !self.lock().running {
                return;
            }
            idle.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
