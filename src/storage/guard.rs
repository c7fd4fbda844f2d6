//! The replicator's side of the failback guard (see [`crate::failback_guard`]): per tree, whether a
//! reverse sync is writing into it, decided from the tree's own event stream, in order.
//!
//! While a tree's guard is on, its changes are not pushed: they are the reverse sync's copies of
//! what the backup already holds. The marker's deletion ends the guard exactly; a lease that runs
//! out ends it too and asks for a full sync of the tree, since changes were dropped.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use notify::event::{EventKind, ModifyKind, RemoveKind, RenameMode};
use notify::Event;
use tokio::time::Instant;

use crate::failback_guard::{decode, is_marker_name, DEFAULT_LEASE, MARKER};
use crate::sys::fsutil;

/// What one event means for the guard.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// The event concerns the marker (or rsync's temporary file for it) only: consumed.
    Marker,
    /// The tree's guard is on: the change is a reverse-sync copy, not pushed.
    Dropped,
    /// An ordinary change.
    Pass,
}

#[derive(Debug, Default)]
struct TreeGuard {
    until: Option<Instant>,
    dropped: u64,
}

/// The guards of every tree.
#[derive(Debug)]
pub struct Guards {
    trees: Vec<TreeGuard>,
}

impl Guards {
    /// Guards for trees rooted at `roots`; a marker already there (a restart during a failback)
    /// turns the guard on at once.
    pub fn new(roots: &[&Path], now: Instant) -> Guards {
        let mut g = Guards { trees: roots.iter().map(|_| TreeGuard::default()).collect() };
        for (i, root) in roots.iter().enumerate() {
            let marker = root.join(MARKER);
            if std::fs::symlink_metadata(&marker).is_ok() {
                g.on(i, &marker, now);
            }
        }
        g
    }

    fn on(&mut self, tree: usize, marker: &Path, now: Instant) {
        let lease = fsutil::read_capped(marker, 4096).ok().and_then(|c| decode(&c)).unwrap_or(DEFAULT_LEASE);
        let Some(g) = self.trees.get_mut(tree) else { return };
        if g.until.is_none() {
            tracing::info!(
                tree = %marker.parent().unwrap_or(marker).display(),
                lease_s = lease.as_secs(),
                "failback guard on: a reverse sync writes here; its copies are not pushed back"
            );
        }
        g.until = Some(now + lease);
    }

    fn off(&mut self, tree: usize, root: &Path) {
        let Some(g) = self.trees.get_mut(tree) else { return };
        if g.until.take().is_some() {
            tracing::info!(tree = %root.display(), dropped = g.dropped, "failback guard off");
        }
        g.dropped = 0;
    }

    /// Classifies one event of tree `tree` (rooted at `root`).
    pub fn observe(&mut self, tree: usize, root: &Path, ev: &Event, now: Instant) -> Seen {
        if ev.need_rescan() {
            return Seen::Pass;
        }
        let is_marker =
            |p: &Path| p.parent() == Some(root) && p.file_name().is_some_and(|n| is_marker_name(n.as_bytes()));
        let is_the_marker =
            |p: &Path| p.parent() == Some(root) && p.file_name().is_some_and(|n| n.as_bytes() == MARKER.as_bytes());
        if !ev.paths.is_empty() && ev.paths.iter().all(|p| is_marker(p)) {
            if let Some(target) = ev.paths.iter().rev().find(|p| is_the_marker(p)) {
                match ev.kind {
                    EventKind::Remove(RemoveKind::File | RemoveKind::Any | RemoveKind::Other)
                    | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => self.off(tree, root),
                    // `Both` repeats the From and To events already seen.
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) | EventKind::Access(_) => {}
                    _ => self.on(tree, target, now),
                }
            }
            return Seen::Marker;
        }
        match self.trees.get_mut(tree) {
            Some(g) if g.until.is_some_and(|u| now < u) => {
                g.dropped += 1;
                Seen::Dropped
            }
            _ => Seen::Pass,
        }
    }

    /// Is tree `tree`'s guard on?
    pub fn is_on(&self, tree: usize) -> bool {
        self.trees.get(tree).is_some_and(|g| g.until.is_some())
    }

    /// When the next lease runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.trees.iter().filter_map(|g| g.until).min()
    }

    /// Ends the guards whose lease ran out by `now`; returns their trees (each needs a full sync:
    /// changes were dropped and the marker was never deleted).
    pub fn expire(&mut self, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, g) in self.trees.iter_mut().enumerate() {
            if g.until.is_some_and(|u| u <= now) {
                tracing::warn!(
                    tree = i,
                    dropped = g.dropped,
                    "failback guard lease ran out without the marker's deletion"
                );
                g.until = None;
                g.dropped = 0;
                out.push(i);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange};
    use std::path::PathBuf;
    use std::time::Duration;

    fn ev(kind: EventKind, paths: &[&Path]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(p.to_path_buf());
        }
        e
    }

    #[test]
    fn marker_events_bracket_dropped_changes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let t0 = Instant::now();
        let mut g = Guards::new(&[root], t0);
        let file: PathBuf = root.join("a");
        let write = ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &[&file]);
        assert_eq!(g.observe(0, root, &write, t0), Seen::Pass);
        // rsync's upload: a temporary file renamed onto the marker
        let tmp = root.join("..nfs-guard-failback.x1Y2z3");
        let marker = root.join(MARKER);
        std::fs::write(&marker, crate::failback_guard::encode(Duration::from_secs(60))).unwrap();
        assert_eq!(g.observe(0, root, &ev(EventKind::Create(CreateKind::File), &[&tmp]), t0), Seen::Marker);
        assert_eq!(
            g.observe(0, root, &ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &[&tmp]), t0),
            Seen::Marker
        );
        assert_eq!(
            g.observe(0, root, &ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[&marker]), t0),
            Seen::Marker
        );
        assert_eq!(g.observe(0, root, &write, t0), Seen::Dropped);
        // a marker-named file deeper in the tree is an ordinary file
        let deep = root.join("d").join(MARKER);
        assert_eq!(g.observe(0, root, &ev(EventKind::Create(CreateKind::File), &[&deep]), t0), Seen::Dropped);
        assert_eq!(g.observe(0, root, &ev(EventKind::Remove(RemoveKind::File), &[&marker]), t0), Seen::Marker);
        assert_eq!(g.observe(0, root, &write, t0), Seen::Pass);
        assert!(g.expire(t0 + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn a_lease_that_runs_out_ends_the_guard_and_asks_for_a_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join(MARKER), crate::failback_guard::encode(Duration::from_secs(60))).unwrap();
        let t0 = Instant::now();
        // found at start (a restart in the middle of a failback)
        let mut g = Guards::new(&[root], t0);
        let write = ev(EventKind::Create(CreateKind::File), &[&root.join("x")]);
        assert_eq!(g.observe(0, root, &write, t0), Seen::Dropped);
        assert_eq!(g.next_expiry(), Some(t0 + Duration::from_secs(60)));
        assert!(g.expire(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(g.expire(t0 + Duration::from_secs(60)), [0]);
        assert_eq!(g.observe(0, root, &write, t0 + Duration::from_secs(61)), Seen::Pass);
        assert_eq!(g.next_expiry(), None);
    }
}
