//! The journal's writer thread: every write and fdatasync of a journal happens here, never on the
//! async runtime. Group commit: the requests that queued up while the previous group was being
//! written go out as one write and at most one fdatasync, and each requester learns its outcome
//! only after that fdatasync returned.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use crate::sys::fsutil::write_atomic;

/// What to do with the file.
pub(super) enum Op {
    /// Append these bytes; `sync`: fdatasync before the requester is told.
    Append { buf: Vec<u8>, sync: bool },
    /// Replace the whole file (compaction), atomically and durably.
    Replace { buf: Vec<u8> },
}

pub(super) struct Req {
    pub op: Op,
    pub done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// Shared with the handle: counters for tests and a gate tests hold to make requests queue up.
#[derive(Default)]
pub(super) struct Shared {
    pub syncs: AtomicU64,
    pub gate: Mutex<()>,
}

/// Runs the writer until every sender is gone (then everything queued has been written).
pub(super) fn run(path: &Path, mut file: File, rx: &mpsc::Receiver<Req>, shared: &Arc<Shared>) {
    while let Ok(first) = rx.recv() {
        let _gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let result = write_group(path, &mut file, &mut group, shared).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot write journal");
            e.to_string()
        });
        for r in group {
            if let Some(done) = r.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn write_group(path: &Path, file: &mut File, group: &mut [Req], shared: &Shared) -> io::Result<()> {
    // A compaction holds everything requested before it: earlier appends of the group are moot.
    let start = match group.iter().rposition(|r| matches!(r.op, Op::Replace { .. })) {
        Some(i) => {
            if let Op::Replace { buf } = &group[i].op {
                write_atomic(path, buf)?;
                *file = super::open_private(path)?;
                file.seek(io::SeekFrom::End(0))?;
            }
            i + 1
        }
        None => 0,
    };
    let mut buf = Vec::new();
    let mut sync = false;
    for r in &group[start..] {
        if let Op::Append { buf: b, sync: s } = &r.op {
            buf.extend_from_slice(b);
            sync |= s;
        }
    }
    if buf.is_empty() {
        return Ok(());
    }
    let before = file.stream_position()?;
    if let Err(e) = file.write_all(&buf) {
        // Never leave half a record for the next append to follow.
        let _ = file.set_len(before).and_then(|()| file.seek(io::SeekFrom::Start(before)).map(|_| ()));
        return Err(e);
    }
    if sync {
        file.sync_data()?;
        shared.syncs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Resolves once the request is written (and fdatasync'd, if it asked for it).
#[must_use = "a journal write is durable only once this resolves"]
pub struct Durable {
    rx: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    /// The outcome, once [`Durable::is_done`] saw it.
    ready: Option<Result<(), String>>,
    path: PathBuf,
}

impl Default for Durable {
    /// Nothing to wait for.
    fn default() -> Self {
        Durable { rx: None, ready: None, path: PathBuf::new() }
    }
}

impl Durable {
    pub(super) fn new(rx: tokio::sync::oneshot::Receiver<Result<(), String>>, path: &Path) -> Durable {
        Durable { rx: Some(rx), ready: None, path: path.to_owned() }
    }

    fn result(&self, r: Result<Result<(), String>, ()>) -> Result<(), super::JournalError> {
        let err = |msg: String| super::JournalError { path: self.path.clone(), source: io::Error::other(msg) };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(err(msg)),
            Err(()) => Err(err("the journal writer stopped".into())),
        }
    }

    pub async fn wait(mut self) -> Result<(), super::JournalError> {
        if let Some(r) = self.ready.take() {
            return self.result(Ok(r));
        }
        match self.rx.take() {
            None => Ok(()),
            Some(rx) => self.result(rx.await.map_err(|_| ())),
        }
    }

    /// [`Durable::wait`] for threads outside the runtime (tests, start-up).
    pub fn wait_blocking(mut self) -> Result<(), super::JournalError> {
        if let Some(r) = self.ready.take() {
            return self.result(Ok(r));
        }
        match self.rx.take() {
            None => Ok(()),
            Some(rx) => self.result(rx.blocking_recv().map_err(|_| ())),
        }
    }

    /// Already written (without waiting)?
    pub fn is_done(&mut self) -> bool {
        use tokio::sync::oneshot::error::TryRecvError;
        let Some(rx) = self.rx.as_mut() else { return true };
        match rx.try_recv() {
            Err(TryRecvError::Empty) => false,
            Ok(r) => {
                self.ready = Some(r);
                self.rx = None;
                true
            }
            Err(TryRecvError::Closed) => {
                self.ready = Some(Err("the journal writer stopped".into()));
                self.rx = None;
                true
            }
        }
    }
}
