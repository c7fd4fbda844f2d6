//! The mount choreography (direct mount, staged switch and its fallbacks, reconciliation staging
//! mount) on an in-memory mount table: every branch, without root.

use super::*;
use crate::web::mounts::mem::{MemMounts, Op};

const WEB: &str = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n";
const PRIMARY: &str = "10.0.0.2:/srv/nfs";
const BACKUP: &str = "10.0.0.3:/srv/nfs";

struct World {
    _dir: tempfile::TempDir,
    inner: Inner<MemMounts>,
}

impl World {
    /// The mount point serves `serving` (if any).
    fn new(serving: Option<&str>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::parse(Path::new("w.toml"), WEB).unwrap().web.unwrap();
        let ops = MemMounts::default();
        if let Some(src) = serving {
            ops.add(src, &cfg.mount_point);
        }
        let inner = Inner { cfg, ops, stage: dir.path().join("stage"), agents: None };
        World { _dir: dir, inner }
    }

    fn mp(&self) -> PathBuf {
        self.inner.cfg.mount_point.clone()
    }

    fn at(&self, dir: &str) -> Option<String> {
        let p = if dir == "mp" { self.mp() } else { self.inner.stage.join(dir) };
        self.inner.ops.top(&p)
    }

    /// The operations done, with the stage dir written `S`.
    fn log(&self) -> Vec<String> {
        let s = self.inner.stage.display().to_string();
        self.inner.ops.log.lock().unwrap().iter().map(|l| l.replace(&s, "S")).collect()
    }

    fn stage(&self, dir: &str) -> PathBuf {
        self.inner.stage.join(dir)
    }
}

#[tokio::test]
async fn a_staged_failback_mounts_new_keeps_old_and_moves_new_into_place() {
    let w = World::new(Some(BACKUP));
    let old_id = w.inner.ops.entries()[0].id;
    assert_eq!(w.inner.staged(Server::Primary, true).await, Ok(Some(old_id)));
    assert_eq!(w.at("mp").as_deref(), Some(PRIMARY));
    assert_eq!(w.at("old").as_deref(), Some(BACKUP), "kept for the catch-up");
    assert_eq!(w.at("new"), None);
    assert_eq!(
        w.log(),
        ["mount 10.0.0.2:/srv/nfs S/new", "bind /mnt/nfs -> S/old", "detach /mnt/nfs", "move S/new -> /mnt/nfs",]
    );
}

#[tokio::test]
async fn without_keep_old_the_old_mount_is_detached_after_the_switch() {
    let w = World::new(Some(PRIMARY));
    assert!(w.inner.staged(Server::Backup, false).await.is_ok());
    assert_eq!(w.at("mp").as_deref(), Some(BACKUP));
    assert_eq!(w.at("old"), None);
    assert_eq!(w.log().last().map(String::as_str), Some("detach S/old"));
}

#[tokio::test]
async fn a_failed_move_falls_back_to_a_direct_mount() {
    let w = World::new(Some(BACKUP));
    w.inner.ops.fail(Op::Move(w.stage("new")));
    assert!(w.inner.staged(Server::Primary, true).await.is_ok());
    assert_eq!(w.at("mp").as_deref(), Some(PRIMARY), "mounted directly");
    assert_eq!(w.at("new"), None, "the staged mount is cleared");
    assert_eq!(w.at("old").as_deref(), Some(BACKUP));
    let log = w.log();
    assert_eq!(
        log[3..],
        ["move S/new -> /mnt/nfs", "detach S/new", "mount 10.0.0.2:/srv/nfs /mnt/nfs"].map(String::from),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_failed_move_and_direct_mount_move_the_kept_mount_back() {
    let w = World::new(Some(BACKUP));
    w.inner.ops.fail(Op::Move(w.stage("new")));
    w.inner.ops.fail(Op::Mount(w.mp()));
    let (e, serving) = w.inner.staged(Server::Primary, true).await.unwrap_err();
    assert_eq!(e, "move /mnt/nfs; direct mount failed too: mount /mnt/nfs");
    assert_eq!(serving, Some(Server::Backup), "the way back: the kept old mount");
    assert_eq!(w.at("mp").as_deref(), Some(BACKUP));
    assert_eq!(w.log().last().map(String::as_str), Some("move S/old -> /mnt/nfs"));
}

#[tokio::test]
async fn a_failed_detach_of_the_mount_point_leaves_the_old_mount_serving() {
    let w = World::new(Some(BACKUP));
    w.inner.ops.fail(Op::Detach(w.mp()));
    let (e, serving) = w.inner.staged(Server::Primary, true).await.unwrap_err();
    assert_eq!(e, "(in-memory mount table) does not show 10.0.0.2:/srv/nfs at /mnt/nfs after mounting");
    assert_eq!(serving, Some(Server::Backup));
    assert_eq!(w.at("new"), None, "the staged mount is cleared");
    assert!(
        !w.log().iter().any(|l| l.starts_with("mount ") && l.ends_with("/mnt/nfs")),
        "no direct mount over a served one"
    );
}

#[tokio::test]
async fn a_failed_staging_mount_or_bind_leaves_the_mount_point_alone() {
    for fail in ["mount", "bind"] {
        let w = World::new(Some(BACKUP));
        w.inner.ops.fail(if fail == "mount" { Op::Mount(w.stage("new")) } else { Op::Bind(w.stage("old")) });
        let (_, serving) = w.inner.staged(Server::Primary, true).await.unwrap_err();
        assert_eq!(serving, Some(Server::Backup), "{fail}");
        assert_eq!(w.at("mp").as_deref(), Some(BACKUP), "{fail}");
        assert_eq!(w.at("new"), None, "{fail}");
        assert!(!w.log().iter().any(|l| l == "detach /mnt/nfs"), "{fail}: {:?}", w.log());
    }
}

#[tokio::test]
async fn a_staged_switch_from_an_empty_mount_point_binds_nothing() {
    let w = World::new(None);
    assert_eq!(w.inner.staged(Server::Backup, false).await, Ok(None));
    assert_eq!(w.at("mp").as_deref(), Some(BACKUP));
    assert!(!w.log().iter().any(|l| l.starts_with("bind")), "{:?}", w.log());
}

#[tokio::test]
async fn a_direct_mount_replaces_what_is_there_and_names_it() {
    let w = World::new(Some(PRIMARY));
    let old_id = w.inner.ops.entries()[0].id;
    assert_eq!(w.inner.direct_mount(Server::Backup).await, Ok(Some(old_id)));
    assert_eq!(w.at("mp").as_deref(), Some(BACKUP));
    assert_eq!(w.inner.direct_mount(Server::Backup).await, Ok(None), "already serving: nothing done");
    assert_eq!(w.log(), ["detach /mnt/nfs", "mount 10.0.0.3:/srv/nfs /mnt/nfs"]);
}

#[tokio::test]
async fn a_failed_direct_mount_leaves_the_mount_point_empty() {
    let w = World::new(Some(PRIMARY));
    w.inner.ops.fail(Op::Mount(w.mp()));
    assert_eq!(w.inner.direct_mount(Server::Backup).await, Err("mount /mnt/nfs".into()));
    assert_eq!(w.at("mp"), None);
}

#[tokio::test]
async fn a_reconciliation_always_detaches_its_staging_mount() {
    let w = World::new(Some(PRIMARY));
    // mounted and verified; the push fails here (no reverse-sync target): still detached
    assert_eq!(w.inner.reconcile().await, Err("no [web.reverse_sync] configured".into()));
    assert_eq!(w.at("reconcile"), None);
    assert_eq!(w.log(), ["mount 10.0.0.3:/srv/nfs S/reconcile", "detach S/reconcile"]);
    let w = World::new(Some(PRIMARY));
    w.inner.ops.fail(Op::Mount(w.stage("reconcile")));
    let e = w.inner.reconcile().await.unwrap_err();
    assert!(e.starts_with("staging mount of the backup failed: mount "), "{e}");
    assert_eq!(w.at("reconcile"), None);
}
