//! The notify adapter: one recursive inotify watcher per tree, feeding a bounded channel.
//!
//! The notify callback runs on notify's thread; it drops event kinds we never push (opens, reads)
//! and `try_send`s the rest. A full channel never blocks inotify and never loses silently: it raises
//! the tree's overflow flag, which the replicator turns into a full sync (like notify's rescan flag
//! for a kernel queue overflow). [`changes`] (pure) maps one notify event to batch entries.
//! Symlinks are never followed (a link to `/` must not make us watch the whole machine).
//!
//! The kernel watch mask leaves out opens and read-only closes ([`kernel_mask`]): every read of an
//! exported file (NFS clients, rsync itself during a full sync) would otherwise queue two events,
//! overflow the kernel queue on a busy or large tree, and trigger full syncs that read every file
//! again: an endless loop. `modify` and `attrib` are subscribed only when enabled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, EventKindMask, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};

use super::batch::Scope;
use crate::config::storage::Events;

/// What the watcher thread hands to the replicator.
#[derive(Debug)]
pub enum Msg {
    Event(u32, Event),
    /// notify reported an error for this tree (e.g. out of watches while adding a new directory).
    Error(u32, notify::Error),
}

/// One change to push, from one event: path (absolute), scope, whether it is a directory's
/// deletion (which subsumes queued paths beneath it), whether it is the creation of a
/// non-directory (which may settle until its close, see [`being_written`]), and whether it is a
/// write to a file's data (`modify`: the file is being written, its close may follow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Push {
        path: PathBuf,
        scope: Scope,
        dir_gone: bool,
        created: bool,
        written: bool,
    },
    /// The kernel queue overflowed: events were lost; the tree needs a full sync.
    Rescan,
}

/// Maps a notify event to the changes it implies under the per-kind toggles.
pub fn changes(ev: &Event, on: &Events) -> Vec<Change> {
    if ev.need_rescan() {
        return vec![Change::Rescan];
    }
    let (scope, dir_gone, enabled) = match ev.kind {
        // A new directory may already hold files created before its watch existed: whole subtree.
        EventKind::Create(CreateKind::Folder) => (Scope::Tree, false, on.create),
        EventKind::Create(_) => (Scope::Path, false, on.create),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => (Scope::Path, false, on.close_write),
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => (Scope::Path, false, on.modify),
        EventKind::Modify(ModifyKind::Metadata(_)) => (Scope::Path, false, on.attrib),
        // Moved away: gone here, so the push deletes it (with everything beneath, if a directory).
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => (Scope::Path, true, on.moves),
        // Moved in or renamed to: possibly a directory with contents no event announced.
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any | RenameMode::Other)) => {
            (Scope::Tree, false, on.moves)
        }
        EventKind::Remove(RemoveKind::File) => (Scope::Path, false, on.delete),
        EventKind::Remove(_) => (Scope::Path, true, on.delete),
        // `Both` repeats the From and To events notify already sent.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both))
        | EventKind::Access(_)
        | EventKind::Any
        | EventKind::Other => return Vec::new(),
    };
    if !enabled {
        return Vec::new();
    }
    let created = matches!(ev.kind, EventKind::Create(CreateKind::File | CreateKind::Any | CreateKind::Other));
    let written = matches!(ev.kind, EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other));
    ev.paths.iter().map(|p| Change::Push { path: p.clone(), scope, dir_gone, created, written }).collect()
}

/// Is a just-created `path` a regular file with one link, i.e. made by `open()` and about to be
/// written and closed? A hard link (more links), a symlink, a device or a FIFO gets no close event
/// and is pushed at once; so is a path that is already gone.
pub fn being_written(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file() && m.nlink() == 1)
}

/// The inotify events to subscribe: creations and moves in (always, to follow new directories),
/// deletions and moves out, renames, `close_write`, and `modify`/`attrib` when enabled. Never opens
/// or read-only closes.
pub fn kernel_mask(on: &Events) -> EventKindMask {
    let mut m =
        EventKindMask::CREATE | EventKindMask::REMOVE | EventKindMask::MODIFY_NAME | EventKindMask::ACCESS_CLOSE;
    if on.modify {
        m |= EventKindMask::MODIFY_DATA;
    }
    if on.attrib {
        m |= EventKindMask::MODIFY_META;
    }
    m
}

/// Cheap pre-filter on notify's thread: kinds that never lead to a push do not cross the channel.
/// A rename's `Both` event repeats its `From` and `To` events: a third of a rename burst's messages.
fn interesting(ev: &Event) -> bool {
    ev.need_rescan()
        || !matches!(
            ev.kind,
            EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read))
                | EventKind::Modify(ModifyKind::Name(RenameMode::Both))
        )
}

/// The running watchers and their shared overflow flags.
pub struct Watchers {
    inner: Vec<RecommendedWatcher>,
    /// One flag per tree: the channel was full and an event was dropped.
    pub overflowed: Arc<Vec<AtomicBool>>,
    /// Signalled when a flag is raised.
    pub overflow_wake: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "{tree} has {dirs} directories but fs.inotify.max_user_watches is {limit}: raise it, e.g. \
         `sysctl -w fs.inotify.max_user_watches={needed}` (and in /etc/sysctl.d/ to keep it)"
    )]
    TooManyDirs { tree: PathBuf, dirs: u64, limit: u64, needed: u64 },
    #[error(
        "ran out of inotify watches while watching {tree}: raise fs.inotify.max_user_watches \
         (now {limit}) to at least {needed}"
    )]
    OutOfWatches { tree: PathBuf, limit: u64, needed: u64 },
    #[error("cannot count directories under {tree}")]
    Count {
        tree: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {tree}")]
    Watch {
        tree: PathBuf,
        #[source]
        source: notify::Error,
    },
}

pub fn max_user_watches() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches").ok()?.trim().parse().ok()
}

/// A value to suggest: the need plus headroom for growth, rounded up.
pub fn suggested_watches(dirs: u64) -> u64 {
    (dirs.saturating_mul(2).max(8192)).div_ceil(1024) * 1024
}

/// Compares the directory count of every tree with the inotify limit, before any watch is added.
pub fn check_limits(trees: &[PathBuf]) -> Result<u64, WatchError> {
    let mut total = 0;
    for t in trees {
        total += super::push::count_dirs(t).map_err(|source| WatchError::Count { tree: t.clone(), source })?;
    }
    if let Some(limit) = max_user_watches() {
        if total > limit {
            return Err(WatchError::TooManyDirs {
                tree: trees.first().cloned().unwrap_or_default(),
                dirs: total,
                limit,
                needed: suggested_watches(total),
            });
        }
    }
    Ok(total)
}

impl Watchers {
    /// Removes every watch (shutdown): no event is produced after this returns.
    pub fn stop(&mut self) {
        self.inner.clear();
    }

    /// Re-installs the watches of tree `i` after a kernel queue overflow: the lost events may have
    /// announced new directories, which notify then never watched. Walks the tree again.
    pub fn rewatch(&mut self, i: usize, root: &Path) -> notify::Result<()> {
        let Some(w) = self.inner.get_mut(i) else { return Ok(()) };
        let _ = w.unwatch(root);
        w.watch(root, RecursiveMode::Recursive)
    }
}

/// Starts one recursive watcher per tree; events go to `tx` tagged with the tree index.
pub fn start(trees: &[PathBuf], on: &Events, tx: &mpsc::Sender<Msg>, dirs: u64) -> Result<Watchers, WatchError> {
    let overflowed: Arc<Vec<AtomicBool>> = Arc::new(trees.iter().map(|_| AtomicBool::new(false)).collect());
    let overflow_wake = Arc::new(Notify::new());
    let mut watchers = Vec::new();
    for (i, tree) in trees.iter().enumerate() {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let tx = tx.clone();
        let flags = Arc::clone(&overflowed);
        let wake = Arc::clone(&overflow_wake);
        let handler = move |res: notify::Result<Event>| {
            let msg = match res {
                Ok(ev) if interesting(&ev) => Msg::Event(idx, ev),
                Ok(_) => return,
                Err(e) => Msg::Error(idx, e),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg) {
                if let Some(f) = flags.get(i) {
                    f.store(true, Ordering::SeqCst);
                }
                wake.notify_one();
            }
        };
        let config = notify::Config::default().with_follow_symlinks(false).with_event_kinds(kernel_mask(on));
        let mut w = RecommendedWatcher::new(handler, config)
            .map_err(|source| WatchError::Watch { tree: tree.clone(), source })?;
        w.watch(tree, RecursiveMode::Recursive).map_err(|source| match source.kind {
            notify::ErrorKind::MaxFilesWatch => {
                let limit = max_user_watches().unwrap_or(0);
                WatchError::OutOfWatches { tree: tree.clone(), limit, needed: suggested_watches(dirs.max(limit)) }
            }
            _ => WatchError::Watch { tree: tree.clone(), source },
        })?;
        watchers.push(w);
    }
    Ok(Watchers { inner: watchers, overflowed, overflow_wake })
}

/// The path relative to `root` as the batch wants it (`.` for the root itself), or `None` when the
/// event is not under `root`.
pub fn relative(root: &Path, abs: &Path) -> Option<PathBuf> {
    let rel = abs.strip_prefix(root).ok()?;
    Some(if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel.to_path_buf() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use notify::event::{DataChange, MetadataKind};

    use super::*;

    fn ev(kind: EventKind, p: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(p))
    }

    fn push(p: &str, scope: Scope, dir_gone: bool) -> Vec<Change> {
        vec![Change::Push { path: p.into(), scope, dir_gone, created: false, written: false }]
    }

    #[test]
    fn event_kinds_map_to_scopes() {
        let on = Events::default();
        assert_eq!(changes(&ev(EventKind::Create(CreateKind::Folder), "/t/d"), &on), push("/t/d", Scope::Tree, false));
        assert_eq!(
            changes(&ev(EventKind::Create(CreateKind::File), "/t/f"), &on),
            [Change::Push { path: "/t/f".into(), scope: Scope::Path, dir_gone: false, created: true, written: false }]
        );
        assert_eq!(
            changes(&ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/t/f"), &on),
            [Change::Push { path: "/t/f".into(), scope: Scope::Path, dir_gone: false, created: false, written: true }]
        );
        assert_eq!(
            changes(&ev(EventKind::Access(AccessKind::Close(AccessMode::Write)), "/t/f"), &on),
            push("/t/f", Scope::Path, false)
        );
        assert_eq!(
            changes(&ev(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)), "/t/f"), &on),
            push("/t/f", Scope::Path, false)
        );
        assert_eq!(
            changes(&ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)), "/t/d"), &on),
            push("/t/d", Scope::Path, true)
        );
        assert_eq!(
            changes(&ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/t/d2"), &on),
            push("/t/d2", Scope::Tree, false)
        );
        assert_eq!(changes(&ev(EventKind::Remove(RemoveKind::Folder), "/t/d"), &on), push("/t/d", Scope::Path, true));
        assert!(changes(&ev(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/t/f"), &on).is_empty());
        assert!(changes(&ev(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), "/t/f"), &on).is_empty());
        assert!(!interesting(&ev(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), "/t/f")), "not even sent");
        assert!(interesting(&ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/t/f")));
    }

    #[test]
    fn only_a_fresh_regular_file_waits_for_its_close() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(being_written(&f));
        std::fs::hard_link(&f, d.path().join("link")).unwrap();
        assert!(!being_written(&f), "a hard link gets no close event");
        std::os::unix::fs::symlink("f", d.path().join("sym")).unwrap();
        assert!(!being_written(&d.path().join("sym")));
        assert!(!being_written(d.path()));
        assert!(!being_written(&d.path().join("gone")));
    }

    #[test]
    fn toggles_and_rescan() {
        let on = Events::default();
        let data = ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/t/f");
        assert_eq!(changes(&data, &on).len(), 1, "modify is on by default: an NFS server may never close");
        assert!(changes(&data, &Events { modify: false, ..on }).is_empty());
        let off = Events { delete: false, ..on };
        assert!(changes(&ev(EventKind::Remove(RemoveKind::File), "/t/f"), &off).is_empty());
        let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(changes(&rescan, &on), [Change::Rescan]);
    }

    #[test]
    fn kernel_mask_never_includes_reads() {
        let m = kernel_mask(&Events::default());
        assert!(!m.intersects(EventKindMask::ACCESS_OPEN | EventKindMask::ACCESS_CLOSE_NOWRITE));
        assert!(m.contains(EventKindMask::ACCESS_CLOSE | EventKindMask::MODIFY_META | EventKindMask::CREATE));
        assert!(m.contains(EventKindMask::MODIFY_DATA), "modify is on by default");
        assert!(!kernel_mask(&Events { modify: false, ..Events::default() }).intersects(EventKindMask::MODIFY_DATA));
    }

    #[test]
    fn relative_paths_and_limits() {
        assert_eq!(relative(Path::new("/t"), Path::new("/t/a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("/t"), Path::new("/t")), Some(PathBuf::from(".")));
        assert_eq!(relative(Path::new("/t"), Path::new("/u/x")), None);
        assert_eq!(suggested_watches(100_000), 200_704);
        let e = WatchError::TooManyDirs { tree: "/srv".into(), dirs: 10, limit: 5, needed: 8192 };
        assert!(e.to_string().contains("sysctl -w fs.inotify.max_user_watches=8192"), "{e}");
    }
}
