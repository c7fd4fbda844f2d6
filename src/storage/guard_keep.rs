//! The reverse-sync mode's unpushed changes, kept while a reverse sync writes into their tree.
//!
//! When the farm failed over, the primary's last changes may not have reached the backup. When the
//! failback guard goes on (a web node's reverse sync starts writing into the tree), every file this
//! replicator still has queued or in flight is hard-linked under its conflict name
//! `NAME.nfs-guard-conflict-<unix time>-primary`: the reverse sync may replace `NAME` with the
//! backup's copy (rsync's `--update` compares whole seconds, so a backup copy from the same second
//! as the primary's newer write replaced it; found by the chaos test). When the guard goes off, a
//! link whose file is untouched goes; one whose file was replaced stays, is pushed, and is alerted:
//! both versions kept (`agent::orphans::resolve`, as the storage agents do per epoch).

use std::path::PathBuf;

use super::agent::orphans::{self, Orphans};
use super::batch::Entry;
use crate::domain::Server;

/// Links the files of `entries` under their conflict names.
pub fn keep(roots: &[PathBuf], entries: &[Entry]) -> Orphans {
    let stamp = crate::cluster::now_ms() / 1000;
    orphans::quarantine(roots, entries, stamp, Server::Primary)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::batch::Scope;

    /// A file the reverse sync replaced keeps this server's version beside it; an untouched one
    /// leaves nothing behind.
    #[test]
    fn replaced_files_keep_both_versions_untouched_ones_leave_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::write(root.join("replaced"), "primary's newer write").unwrap();
        std::fs::write(root.join("untouched"), "only here").unwrap();
        let entries = [Entry::new(0, "replaced", Scope::Path), Entry::new(0, "untouched", Scope::Path)];
        let kept = keep(std::slice::from_ref(&root), &entries);
        // the reverse sync: a temporary file renamed over the name
        std::fs::write(root.join(".replaced.tmp"), "backup's copy").unwrap();
        std::fs::rename(root.join(".replaced.tmp"), root.join("replaced")).unwrap();
        let orphans::Resolved { push, conflicts } = orphans::resolve(std::slice::from_ref(&root), &kept);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        let copy = root.join(&conflicts[0]);
        assert_eq!(std::fs::read_to_string(copy).unwrap(), "primary's newer write");
        assert_eq!(std::fs::read_to_string(root.join("replaced")).unwrap(), "backup's copy");
        let names: Vec<String> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 3, "no link left for the untouched file: {names:?}");
        assert!(push.iter().any(|e| e.path.to_string_lossy() == conflicts[0]), "the copy is pushed");
    }
}
