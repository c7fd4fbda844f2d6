//! Recovery of what an ACTIVE agent did not see: the changes of its export between the last event
//! it journaled and its stop (a clean one, or `kill -9`, a crash, a power cut), and while it was
//! down (clients keep writing through the NFS server). At every start of an active agent:
//!
//! 1. **Written paths**: every path of the export whose ctime is in the window is journaled for
//!    the peer before the agent answers anyone ([`changed_since`]). Still active: pushed
//!    (cautiously). Demoted meanwhile: they become orphans like any unpushed change, so a create
//!    made just before the crash is kept, never overwritten nor deleted.
//! 2. **Deleted and renamed-away paths**: a dry run `rsync --delete` to the peer lists what the
//!    peer holds and this server does not; the peer deletes those it has not changed since this
//!    agent's last sign of life (`POST /v1/prune`, [`prune`]): every push of this agent completed
//!    before it, so a copy older than that came from this server, which no longer has the path.
//!    Never the peer's own unreplicated work (orphans, conflict copies). Owed until done
//!    ([`Owed`], persisted): retried, across restarts too.
//!
//! Every [`WATERMARK_EVERY`] the replicator loop persists the **watermark**, a time before which
//! every event has been journaled (the oldest event still waiting in the batcher, or now, minus
//! [`MARGIN_MS`]; not moved while the event channel holds events), with the time it was written
//! (the sign of life). Without one: the start of the previous run, for both. The peer applies
//! the prune's cut-off on its own clock (the request carries an age, not a time), so clock skew
//! between the storage hosts does not matter.
//!
//! Not covered: a web node that moved its clients to the peer while the peer's agent did not know
//! yet (serving beats waiting), and a prune that reaches the peer before it learns the new epoch:
//! paths those clients wrote before this agent's last sign of life would go. When the prune
//! arrives one epoch late, nothing written there since the switch goes (see
//! [`Agent::prune`](super::Agent::prune)); older, it is refused and such deletes come back.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::orphans::CONFLICT_TAG;
use super::Agent;
use crate::cluster::client::CallError;
use crate::cluster::{PruneReport, PruneRequest};
use crate::config::filter::Filter;
use crate::config::storage::StorageConfig;
use crate::storage::batch::{Entry, Scope};
use crate::sys::fsutil;

/// Events reach the batcher within this long of happening while the event channel is empty (the
/// watermark does not move while it is not): inotify's read, the journal's writer.
pub const MARGIN_MS: u64 = 100;
/// How often the watermark is persisted (a small file, not fsync'd).
pub const WATERMARK_EVERY: Duration = Duration::from_millis(WATERMARK_EVERY_MS);
const WATERMARK_EVERY_MS: u64 = 100;
/// The peer widens the window by this much (the request's transit time).
pub const SLACK_MS: u64 = 50;
/// A prune request's paths, at most this many bytes of hex.
const PRUNE_CHUNK_BYTES: usize = 512 * 1024;
/// How long a failed prune waits before it tries again.
const RETRY: Duration = Duration::from_secs(2);

/// The deletions this agent owes its peer: its changes since `since_ms` were never journaled, its
/// last sign of life was at `alive_ms`, and it was active at `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    pub since_ms: u64,
    pub alive_ms: u64,
    pub epoch: u64,
}

fn watermark_file(dir: &Path) -> PathBuf {
    dir.join("watermark")
}

fn owed_file(dir: &Path) -> PathBuf {
    dir.join("unclean.json")
}

/// Persists the watermark `ms` and the sign of life `now_ms` (not fsync'd: it must survive a
/// killed process; a power cut that loses it only makes the next window longer).
pub fn store_watermark(dir: &Path, ms: u64, now_ms: u64) -> std::io::Result<()> {
    fsutil::write_atomic_nosync(&watermark_file(dir), format!("{ms} {now_ms}").as_bytes())
}

/// The persisted watermark and sign of life.
pub fn load_watermark(dir: &Path) -> Option<(u64, u64)> {
    let text = fsutil::read_capped_string(&watermark_file(dir), 64).ok()?;
    let (w, alive) = text.trim().split_once(' ')?;
    Some((w.parse().ok()?, alive.parse().ok()?))
}

pub fn load_owed(dir: &Path) -> Option<Owed> {
    serde_json::from_slice(&fsutil::read_capped(&owed_file(dir), 4096).ok()?).ok()
}

/// Persists (durably) or clears what is owed.
pub fn store_owed(dir: &Path, o: Option<&Owed>) -> std::io::Result<()> {
    fsutil::store_json(&owed_file(dir), o)
}

/// What a start owes: the window from the persisted watermark (else the previous run's start,
/// `previous_start_ms`, if it stopped uncleanly) and its sign of life, merged with a debt still
/// owed (the older window, the later sign of life). `None` on a first run (nothing to recover).
pub fn owed_after(dir: &Path, previous_start_ms: Option<u64>, epoch: u64) -> Option<Owed> {
    let before = load_owed(dir);
    let (since_ms, alive_ms) = load_watermark(dir)
        .or_else(|| previous_start_ms.map(|p| (p, p)))
        .or_else(|| before.map(|o| (o.since_ms, o.alive_ms)))?;
    let now = Owed { since_ms, alive_ms, epoch };
    Some(before.map_or(now, |o| Owed {
        since_ms: o.since_ms.min(since_ms),
        alive_ms: o.alive_ms.max(alive_ms),
        epoch: o.epoch.min(epoch),
    }))
}

/// At the start of the active `agent`: everything that changed while it did not watch (since
/// the watermark of its previous run, clean or not: clients keep writing through NFS while it is
/// stopped) is owed, persisted before anything else happens; returns the window's start. `None`
/// on its first run here (`previous_start_ms`: when a run that stopped uncleanly began).
pub fn begin(agent: &Agent, previous_start_ms: Option<u64>) -> std::io::Result<Option<u64>> {
    let Some(owed) = owed_after(agent.dir(), previous_start_ms, agent.record().epoch) else { return Ok(None) };
    store_owed(agent.dir(), Some(&owed))?;
    tracing::warn!(
        since_ms = owed.since_ms,
        alive_ms = owed.alive_ms,
        epoch = owed.epoch,
        "active agent starting: what changed since its last journaled event is journaled now, and what it deleted \
         meanwhile is pruned on the peer"
    );
    Ok(Some(owed.since_ms))
}

fn mtime_ms(m: &std::fs::Metadata) -> u64 {
    unix_ms(m.mtime(), m.mtime_nsec())
}

fn ctime_ms(m: &std::fs::Metadata) -> u64 {
    unix_ms(m.ctime(), m.ctime_nsec())
}

fn unix_ms(secs: i64, nsec: i64) -> u64 {
    u64::try_from(secs).unwrap_or(0).saturating_mul(1000).saturating_add(u64::try_from(nsec).unwrap_or(0) / 1_000_000)
}

/// Names the agent and the failback guard own at a tree's root (never replicated, never pruned).
fn reserved(rel: &Path) -> bool {
    rel.parent() == Some(Path::new(""))
        && rel.file_name().is_some_and(|n| {
            n == super::duty::BARRIER
                || n == super::health::CANARY
                || n.as_bytes().starts_with(crate::failback_guard::MARKER.as_bytes())
                || n.as_bytes().starts_with(format!(".{}", crate::failback_guard::MARKER).as_bytes())
        })
}

/// Every path of the trees `roots` changed (ctime) at or after `since_ms`, each as `Path`, except a
/// directory whose entries did not change (mtime older): renamed in the window, it goes as `Tree`
/// (its contents kept their ctimes). A directory whose entries changed goes as `Path` (its own
/// attributes; `Tree` would bring back, as an orphan pushed whole, what the peer deleted beneath
/// it) and is walked. Excluded and reserved paths are left out; unreadable directories are logged
/// and skipped.
pub fn changed_since(roots: &[PathBuf], filter: &Filter, since_ms: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    for (tree, root) in roots.iter().enumerate() {
        let tree = u32::try_from(tree).unwrap_or(u32::MAX);
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(root.join(&dir)) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %root.join(&dir).display(), error = %e, "cannot list a directory after an unclean stop");
                    continue;
                }
            };
            for e in entries.flatten() {
                let rel = dir.join(e.file_name());
                if filter.excluded(&rel) || reserved(&rel) {
                    continue;
                }
                let Ok(m) = e.metadata() else { continue };
                let changed = ctime_ms(&m) >= since_ms;
                if m.is_dir() && changed && mtime_ms(&m) < since_ms {
                    // renamed (or its mode changed), its entries untouched: they go with it
                    out.push(Entry::new(tree, rel, Scope::Tree));
                    continue;
                }
                if changed {
                    out.push(Entry::new(tree, rel.clone(), Scope::Path));
                }
                if m.is_dir() {
                    stack.push(rel);
                }
            }
        }
    }
    out
}

/// A relative path a prune may touch: not empty, no `..`, no `.`, not absolute.
fn plain(rel: &Path) -> bool {
    rel.components().next().is_some() && rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Deletes under `root` the `paths` (relative bytes; a directory with its trailing `/`) that
/// changed before `cutoff_ms` (ctime, this host's clock) and are not `protected` (by relative
/// path) nor conflict copies nor reserved. Everything is looked at first, then files go, then
/// directories deepest first, each only when empty. Never through a symlink.
///
/// `moved_since`: a directory renamed since then (ctime at or after it, entries older) keeps what
/// is beneath it (moved in with it: its entries kept their ctimes).
pub fn prune(
    root: &Path,
    paths: &[Vec<u8>],
    cutoff_ms: u64,
    moved_since: Option<u64>,
    protected: &dyn Fn(&[u8]) -> bool,
) -> PruneReport {
    let mut r = PruneReport::default();
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for p in paths {
        let bytes = p.strip_suffix(b"/").unwrap_or(p);
        let rel = PathBuf::from(OsString::from_vec(bytes.to_vec()));
        if !plain(&rel)
            || reserved(&rel)
            || protected(bytes)
            || rel
                .file_name()
                .is_some_and(|n| n.as_bytes().windows(CONFLICT_TAG.len()).any(|w| w == CONFLICT_TAG.as_bytes()))
            || !beneath_real_dirs(root, &rel)
            || moved_since.is_some_and(|t| moved_in(root, &rel, t))
        {
            r.kept += 1;
            continue;
        }
        let full = root.join(&rel);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if ctime_ms(&m) >= cutoff_ms => r.kept += 1,
            Ok(m) if m.is_dir() => dirs.push(full),
            Ok(_) => files.push(full),
            Err(_) => {}
        }
    }
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => r.deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %f.display(), error = %e, "cannot delete a path its peer deleted");
                r.kept += 1;
            }
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        match std::fs::remove_dir(&d) {
            Ok(()) => r.deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => r.kept += 1, // not empty: something beneath it is newer or protected
        }
    }
    r
}

/// Did an ancestor directory of `rel` move (rename) at or after `since_ms`: ctime since then, its
/// entries (mtime) older?
fn moved_in(root: &Path, rel: &Path, since_ms: u64) -> bool {
    rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).any(|a| {
        std::fs::symlink_metadata(root.join(a)).is_ok_and(|m| ctime_ms(&m) >= since_ms && mtime_ms(&m) < since_ms)
    })
}

/// Every ancestor of `rel` under `root` is a directory, not a symlink to one.
fn beneath_real_dirs(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_path_buf();
    let mut parts: Vec<_> = rel.components().collect();
    parts.pop();
    parts.into_iter().all(|c| {
        at.push(c);
        std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir())
    })
}

/// Runs the owed prune until it is done (or `stop`): for each tree, the dry run lists what the
/// peer holds and this server does not, and the peer is asked to delete what it has not changed
/// since the window began. Then the debt is cleared.
pub async fn settle(cfg: Arc<StorageConfig>, peer: usize, agent: Arc<Agent>, owed: Owed, stop: CancellationToken) {
    let mut last_error = String::new();
    loop {
        match prune_peer(&cfg, peer, &agent, owed).await {
            Ok(r) => {
                tracing::warn!(
                    deleted = r.deleted,
                    kept = r.kept,
                    "after the unclean stop: the peer deleted what this server deleted or renamed away unjournaled"
                );
                if let Err(e) = store_owed(agent.dir(), None) {
                    tracing::warn!(error = %e, "cannot clear the owed prune (it runs again at the next start)");
                }
                return;
            }
            Err(Failed::ForGood(e)) => {
                tracing::error!(
                    error = %e,
                    "after the unclean stop: the peer moved on more than one epoch; what this server deleted unjournaled \
                     may come back there"
                );
                if let Err(e) = store_owed(agent.dir(), None) {
                    tracing::warn!(error = %e, "cannot clear the owed prune");
                }
                return;
            }
            Err(Failed::ForNow(e)) => {
                if e != last_error {
                    tracing::warn!(error = %e, "after the unclean stop: cannot prune the peer yet; retrying");
                    last_error = e;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}

enum Failed {
    ForNow(String),
    /// The peer holds an epoch more than one past the owed one: it refuses for good.
    ForGood(String),
}

async fn prune_peer(cfg: &StorageConfig, peer: usize, agent: &Agent, owed: Owed) -> Result<PruneReport, Failed> {
    let remote = cfg.remotes.get(peer).ok_or_else(|| Failed::ForGood("no peer remote".into()))?;
    let mut total = PruneReport::default();
    for (i, tree) in cfg.trees.iter().enumerate() {
        let args = crate::storage::push::deletion_list_args(&cfg.rsync_args, &remote.target, tree, &cfg.filter);
        let (r, out) = crate::sys::rsync::run_listing(&cfg.rsync, &args, cfg.full_sync.timeout)
            .await
            .map_err(|e| Failed::ForNow(crate::chain::render_chain(&e)))?;
        if !r.ok() {
            return Err(Failed::ForNow(format!("listing {} on the peer: {}", tree.path.display(), r.error_text())));
        }
        let listed = crate::sys::rsync::deleted_paths(&out);
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for (n, p) in listed.iter().enumerate() {
            bytes += p.len() * 2;
            chunk.push(crate::cluster::hex(p));
            if bytes >= PRUNE_CHUNK_BYTES || n + 1 == listed.len() {
                let req = PruneRequest {
                    epoch: owed.epoch,
                    from: agent.server(),
                    tree: u32::try_from(i).unwrap_or(u32::MAX),
                    // its pushes all ended before it died, within one watermark period of its last sign
                    unchanged_for_ms: crate::cluster::now_ms().saturating_sub(owed.alive_ms + WATERMARK_EVERY_MS),
                    paths: std::mem::take(&mut chunk),
                };
                bytes = 0;
                let got = agent.peer().prune(&req).await.map_err(|e| match &e {
                    CallError::Refused { report: Some(r), .. } if r.record.epoch > owed.epoch + 1 => {
                        Failed::ForGood(e.to_string())
                    }
                    _ => Failed::ForNow(e.to_string()),
                })?;
                total.deleted += got.deleted;
                total.kept += got.kept;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    /// Old paths go (files, then emptied directories); newer ones, protected ones, conflict
    /// copies, reserved names, and anything reached through a symlink stay; odd names work.
    #[test]
    fn prune_deletes_only_what_is_older_than_the_window_and_not_protected() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("export");
        let outside = d.path().join("outside");
        fs::create_dir_all(root.join("gone-dir/sub")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let odd = b"-n\nwe\xffird #1".to_vec();
        for p in ["old", "gone-dir/sub/f", "orphan", "x.nfs-guard-conflict-3-primary", ".nfs-guard-barrier"] {
            fs::write(root.join(p), "x").unwrap();
        }
        fs::write(root.join(OsString::from_vec(odd.clone())), "x").unwrap();
        fs::write(outside.join("victim"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        // ctime cannot be set: "old" is anything before a cut-off taken after the set-up
        std::thread::sleep(Duration::from_millis(20));
        let cutoff = crate::cluster::now_ms();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(root.join("new"), "written after the window began").unwrap();
        let paths: Vec<Vec<u8>> = [
            &b"old"[..],
            b"gone-dir/sub/f",
            b"gone-dir/sub/",
            b"gone-dir/",
            b"orphan",
            b"x.nfs-guard-conflict-3-primary",
            b".nfs-guard-barrier",
            b"link/victim",
            b"../outside/victim",
            b"new",
            b"never-there",
        ]
        .iter()
        .map(|p| p.to_vec())
        .chain([odd.clone()])
        .collect();
        let r = prune(&root, &paths, cutoff, None, &|p| p == b"orphan");
        assert!(!root.join("old").exists() && !root.join("gone-dir").exists());
        assert!(!root.join(OsString::from_vec(odd)).exists());
        for kept in ["orphan", "x.nfs-guard-conflict-3-primary", ".nfs-guard-barrier", "new"] {
            assert!(root.join(kept).exists(), "{kept}");
        }
        assert!(outside.join("victim").exists(), "never through a symlink or out of the root");
        assert_eq!(r, PruneReport { deleted: 5, kept: 6 });
    }

    #[test]
    fn a_directory_with_something_newer_beneath_it_stays() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/old"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let cutoff = crate::cluster::now_ms();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(root.join("d/new"), "x").unwrap();
        // the directory itself changed (an entry was added) after the cut-off: kept as a whole
        let r = prune(root, &[b"d/old".to_vec(), b"d/".to_vec()], cutoff, None, &|_| false);
        assert!(root.join("d/new").exists());
        assert_eq!(r.kept, 1);
    }

    /// One epoch late: a directory the peer's clients renamed since the switch keeps its
    /// contents, although they are old (found by `kill_9_of_agents_and_web_node_at_each_step`:
    /// `newdir/inner` was pruned on the backup).
    #[test]
    fn what_moved_in_with_a_renamed_directory_stays() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("olddir")).unwrap();
        fs::write(root.join("olddir/inner"), "x").unwrap();
        fs::write(root.join("gone"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let switched = crate::cluster::now_ms();
        std::thread::sleep(Duration::from_millis(20));
        fs::rename(root.join("olddir"), root.join("newdir")).unwrap();
        let paths = [b"newdir/inner".to_vec(), b"newdir/".to_vec(), b"gone".to_vec()];
        let r = prune(root, &paths, switched, Some(switched), &|_| false);
        assert!(root.join("newdir/inner").exists());
        assert!(!root.join("gone").exists());
        assert_eq!(r, PruneReport { deleted: 1, kept: 2 });
    }

    #[test]
    fn changed_since_lists_what_changed_in_the_window() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        fs::create_dir_all(root.join("old-dir/deep")).unwrap();
        fs::write(root.join("old-dir/deep/f"), "x").unwrap();
        fs::write(root.join("untouched"), "x").unwrap();
        fs::create_dir_all(root.join("keep")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let since = crate::cluster::now_ms();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(root.join("keep/created"), "x").unwrap();
        fs::rename(root.join("old-dir"), root.join("new-dir")).unwrap();
        fs::write(root.join(".nfs-guard-barrier"), "x").unwrap();
        let mut got = changed_since(&[root], &Filter::default(), since);
        got.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            got,
            vec![
                Entry::new(0, "keep", Scope::Path),
                Entry::new(0, "keep/created", Scope::Path),
                Entry::new(0, "new-dir", Scope::Tree)
            ],
            "a directory that gained an entry changed too; a renamed one goes whole; the barrier is the agent's"
        );
    }

    #[test]
    fn the_debt_starts_at_the_watermark_or_the_previous_start_and_keeps_what_is_owed() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(owed_after(d.path(), None, 3), None, "a first run owes nothing");
        assert_eq!(owed_after(d.path(), Some(500), 3), Some(Owed { since_ms: 500, alive_ms: 500, epoch: 3 }));
        store_watermark(d.path(), 900, 950).unwrap();
        assert_eq!(owed_after(d.path(), None, 3), Some(Owed { since_ms: 900, alive_ms: 950, epoch: 3 }));
        store_owed(d.path(), Some(&Owed { since_ms: 700, alive_ms: 720, epoch: 2 })).unwrap();
        assert_eq!(owed_after(d.path(), Some(500), 3), Some(Owed { since_ms: 700, alive_ms: 950, epoch: 2 }));
        assert_eq!(load_owed(d.path()), Some(Owed { since_ms: 700, alive_ms: 720, epoch: 2 }));
        store_owed(d.path(), None).unwrap();
        assert_eq!(load_owed(d.path()), None);
        std::fs::write(d.path().join("watermark"), "garbage").unwrap();
        assert_eq!(
            owed_after(d.path(), Some(500), 3).map(|o| o.since_ms),
            Some(500),
            "an unreadable watermark is none"
        );
    }
}
