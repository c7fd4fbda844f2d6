//! Orphaned writes: changes an agent journaled for its peer while active and never pushed, found
//! when it learns that the other server became active (a failover it did not see: it was dead,
//! frozen or cut off). They are neither pushed over the peer's newer data nor dropped:
//!
//! 1. **Quarantine** (at demotion): every orphaned regular file or symlink gets a hard link under
//!    its conflict name `NAME.nfs-guard-conflict-<epoch>-<server>` in the same directory. The peer's
//!    drain then replaces or deletes `NAME` here as it must (rsync writes a temporary file and
//!    renames it, so the link keeps this server's version). The list is persisted before the
//!    journal entries are dropped.
//! 2. **Resolve** (at the next promotion, after the drain): where `NAME` is still the linked inode,
//!    the peer never touched it: the link goes and `NAME` is pushed (the orphan is delivered).
//!    Otherwise both changed it: the conflict copy stays, is pushed too, and an alert names it. An
//!    orphaned deletion or directory is pushed unless the peer re-created the path meanwhile (then
//!    the peer's version is kept: nothing is deleted that someone wrote later).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::Server;
use crate::storage::batch::{Entry, Scope};
use crate::sys::fsutil;

/// The suffix that marks a conflict copy.
pub const CONFLICT_TAG: &str = ".nfs-guard-conflict-";
/// Longest file name Linux allows (bytes).
const NAME_MAX: usize = 255;

/// One orphaned change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    pub tree: u32,
    /// Relative to the tree root, as bytes (names are data: any byte sequence).
    pub path: Vec<u8>,
    pub scope: Scope,
    /// The conflict copy's relative path and the linked inode (device, inode), for files.
    pub copy: Option<(Vec<u8>, u64, u64)>,
}

/// The orphans of one epoch, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphans {
    pub epoch: u64,
    pub list: Vec<Orphan>,
}

/// What resolving found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// To push to the peer.
    pub push: Vec<Entry>,
    /// Conflict copies kept (relative paths, display form), for the log and the alert.
    pub conflicts: Vec<String>,
}

/// `NAME.nfs-guard-conflict-<epoch>-<server>` for `name`, shortened (by bytes of the name, not
/// the tag) to fit in a file name.
pub fn conflict_name(name: &[u8], epoch: u64, server: Server) -> Vec<u8> {
    let tag = format!("{CONFLICT_TAG}{epoch}-{}", server.name());
    let keep = name.len().min(NAME_MAX - tag.len());
    let mut out = name[..keep].to_vec();
    out.extend_from_slice(tag.as_bytes());
    out
}

fn rel(p: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(p.to_vec()))
}

/// Quarantines `entries` (of epoch `epoch`, this agent being `server`); `roots[tree]` is each
/// tree's root. Errors of single paths are logged and the path kept without a copy.
pub fn quarantine(roots: &[PathBuf], entries: &[Entry], epoch: u64, server: Server) -> Orphans {
    let mut list = Vec::new();
    for e in entries {
        let Some(root) = roots.get(e.tree as usize) else { continue };
        let path = e.path.as_os_str().as_bytes().to_vec();
        let full = root.join(&e.path);
        let copy = match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_file() || m.file_type().is_symlink() => {
                let name = e.path.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
                let copy_rel = e.path.with_file_name(OsString::from_vec(conflict_name(name, epoch, server)));
                let copy_full = root.join(&copy_rel);
                // A copy made by an earlier quarantine (a restart in between) is this server's
                // version already: never replace it with what the peer may have written since.
                let linked = match std::fs::symlink_metadata(&copy_full) {
                    Ok(c) => Ok(c),
                    Err(_) => std::fs::hard_link(&full, &copy_full).map(|()| m),
                };
                match linked {
                    Ok(m) => Some((copy_rel.as_os_str().as_bytes().to_vec(), m.dev(), m.ino())),
                    Err(err) => {
                        tracing::error!(path = %full.display(), error = %err, "cannot keep an orphaned write under its conflict name");
                        None
                    }
                }
            }
            _ => None,
        };
        list.push(Orphan { tree: e.tree, path, scope: e.scope, copy });
    }
    Orphans { epoch, list }
}

/// Resolves `orphans` after the peer's drain (see the module header).
pub fn resolve(roots: &[PathBuf], orphans: &Orphans) -> Resolved {
    let mut out = Resolved::default();
    for o in &orphans.list {
        let Some(root) = roots.get(o.tree as usize) else { continue };
        let path = rel(&o.path);
        let now = std::fs::symlink_metadata(root.join(&path)).ok();
        match &o.copy {
            Some((copy, dev, ino)) => {
                let copy = rel(copy);
                if now.as_ref().is_some_and(|m| m.dev() == *dev && m.ino() == *ino) {
                    // untouched by the peer: this server's version is the only change
                    if let Err(e) = std::fs::remove_file(root.join(&copy)) {
                        tracing::warn!(path = %root.join(&copy).display(), error = %e, "cannot remove an unneeded conflict copy");
                    }
                    out.push.push(Entry::new(o.tree, path, Scope::Path));
                } else if std::fs::symlink_metadata(root.join(&copy)).is_ok() {
                    out.conflicts.push(copy.display().to_string());
                    out.push.push(Entry::new(o.tree, copy, Scope::Path));
                }
            }
            None if now.is_some() && o.scope == Scope::Gone => {
                tracing::info!(path = %path.display(), "an orphaned deletion is dropped: the path was written again on the other server");
            }
            None => out.push.push(Entry::new(o.tree, path, o.scope)),
        }
    }
    out
}

/// The alert for conflict copies kept (`conflicts`: their relative paths) by `server`; `when`
/// says when its versions were written (e.g. "in epoch 4").
pub fn conflict_alert(server: Server, when: &str, conflicts: &[String]) -> crate::alert::AlertEvent {
    let shown: Vec<&str> = conflicts.iter().take(20).map(String::as_str).collect();
    tracing::warn!(paths = ?shown, when, "conflicts: both servers changed these paths; both versions kept");
    crate::alert::AlertEvent::new(
        crate::alert::AlertKind::Conflict,
        crate::alert::Role::Storage,
        format!("{} conflicting writes kept under conflict names", conflicts.len()),
        format!(
            "{} changed these paths {when} without replicating them, and the other server changed them too \
             meanwhile; this server's versions are kept as: {}",
            server.name(),
            shown.join(", ")
        ),
    )
    .next_steps("Compare each NAME with NAME.nfs-guard-conflict-*, keep the right one, delete the other.")
}

/// The orphans file: `<dir>/orphans.json`.
pub fn file(dir: &Path) -> PathBuf {
    dir.join("orphans.json")
}

/// Reads the persisted orphans (none when the file is missing).
pub fn load(dir: &Path) -> std::io::Result<Option<Orphans>> {
    let p = file(dir);
    match fsutil::read_capped(&p, 1 << 30) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Persists `o` (durably), or removes the file when `o` is `None`.
pub fn store(dir: &Path, o: Option<&Orphans>) -> std::io::Result<()> {
    fsutil::store_json(&file(dir), o)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn conflict_names_fit_in_a_file_name() {
        assert_eq!(conflict_name(b"a.jpg", 3, Server::Primary), b"a.jpg.nfs-guard-conflict-3-primary".to_vec());
        let long = vec![b'x'; 255];
        let c = conflict_name(&long, u64::MAX, Server::Backup);
        assert_eq!(c.len(), 255);
        assert!(c.ends_with(format!("{CONFLICT_TAG}{}-backup", u64::MAX).as_bytes()));
    }

    /// Untouched orphans are delivered without a copy; overwritten ones keep both versions; an
    /// orphaned deletion of a path written again by the peer is dropped; odd names survive.
    #[test]
    fn quarantine_then_resolve_keeps_both_versions_of_a_conflict_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        let odd = OsString::from_vec(b"-n\nwe\xffird #1".to_vec());
        for n in [OsString::from("kept"), OsString::from("both"), odd.clone()] {
            fs::write(root.join(&n), "mine").unwrap();
        }
        let entries = vec![
            Entry::new(0, "kept", Scope::Path),
            Entry::new(0, "both", Scope::Path),
            Entry::new(0, PathBuf::from(&odd), Scope::Path),
            Entry::new(0, "gone", Scope::Gone),
            Entry::new(0, "rewritten", Scope::Gone),
        ];
        let roots = vec![root.clone()];
        let o = quarantine(&roots, &entries, 4, Server::Primary);
        store(&root, Some(&o)).unwrap();
        let o = load(&root).unwrap().unwrap();
        // the peer's drain: replaces "both" (temp file + rename), re-creates "rewritten"
        fs::write(root.join(".both.tmp"), "theirs").unwrap();
        fs::rename(root.join(".both.tmp"), root.join("both")).unwrap();
        fs::write(root.join("rewritten"), "theirs").unwrap();
        let r = resolve(&roots, &o);
        assert_eq!(r.conflicts, vec!["both.nfs-guard-conflict-4-primary".to_owned()]);
        assert_eq!(fs::read_to_string(root.join("both.nfs-guard-conflict-4-primary")).unwrap(), "mine");
        assert_eq!(fs::read_to_string(root.join("both")).unwrap(), "theirs");
        assert!(!root.join("kept.nfs-guard-conflict-4-primary").exists());
        let pushed: Vec<PathBuf> = r.push.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            pushed,
            vec![
                PathBuf::from("kept"),
                PathBuf::from("both.nfs-guard-conflict-4-primary"),
                PathBuf::from(&odd),
                PathBuf::from("gone")
            ]
        );
    }
}
