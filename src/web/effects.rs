//! The side effects the controller spawns, behind three small traits (`Prober`, `Mounter`, `Syncer`) so
//! component tests drive the controller with fakes on paused time; [`SysEffects`] is the real
//! implementation over `sys::{probe, mount, mountinfo, rsync}`. Every method returns a `'static` future
//! with its own deadlines; none of them stats a mount that may be dead.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::agents::Agents;
use super::check::Checker;
use super::freeze::Frozen;
use super::fsm::Server;
use super::guard;
use super::health::Failure;
use super::mounts::{MountOps, SysMountOps};
use crate::config::web::{ServerConfig, WebConfig};
use crate::sys::mount::{self, MountError};
use crate::sys::mountinfo;

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
    Backup,
    Witness,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Primary, Target::Backup, Target::Witness];

    pub fn index(self) -> usize {
        match self {
            Target::Primary => 0,
            Target::Backup => 1,
            Target::Witness => 2,
        }
    }

    pub fn of(s: Server) -> Target {
        match s {
            Server::Primary => Target::Primary,
            Server::Backup => Target::Backup,
        }
    }
}

/// Files and bytes moved by one rsync pass, and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub files: u64,
    pub bytes: u64,
    pub elapsed_ms: u64,
}

pub trait Prober: Send + Sync + 'static {
    /// One health check of `target`; `canary` asks for the read through the current mount too.
    fn probe(&self, target: Target, canary: bool) -> impl Future<Output = Result<(), Failure>> + Send + 'static;
}

pub trait Mounter: Send + Sync + 'static {
    /// Which server the mount point serves now (from mountinfo only).
    fn mounted(&self) -> Option<Server>;
    /// Detach whatever is at the mount point (lazy + force) and mount `server` there; returns the
    /// mountinfo id of the detached mount.
    fn mount(&self, server: Server) -> impl Future<Output = Result<Option<u64>, String>> + Send + 'static;
    /// Mount `to` at a staging dir, verify, keep the old mount at a second staging dir, swap. On error,
    /// also returns what the mount point serves afterwards.
    fn staged_switch(
        &self,
        to: Server,
        keep_old: bool,
    ) -> impl Future<Output = Result<Option<u64>, (String, Option<Server>)>> + Send + 'static;
    /// Restart units, list processes still holding the detached mount; returns a one-line summary.
    fn after_switch(&self, server: Server, old_mount: Option<u64>) -> impl Future<Output = String> + Send + 'static;
}

pub trait Syncer: Send + Sync + 'static {
    /// Pass 1: the mount point (serving the backup) -> the primary's rsync target.
    fn reverse_sync(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static;
    /// Catch-up: the kept backup mount -> the primary, then detach the kept mount.
    fn catch_up(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static;
    /// Reconciliation: mount the backup at a staging dir (deadline), push it to the primary with
    /// `--update` and never `--delete`, then detach the staging mount lazily.
    fn reconcile(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static;
}

/// The real effects.
pub struct SysEffects {
    inner: Arc<Inner>,
    checker: Checker,
}

/// The effects' state; the mount choreography runs over any [`MountOps`] (tests: an in-memory table).
struct Inner<M = SysMountOps> {
    cfg: WebConfig,
    ops: M,
    stage: PathBuf,
    /// `[web.agents]`: the storage agents, driven instead of reverse-syncing the tree.
    agents: Option<Arc<Agents>>,
}

impl SysEffects {
    /// Must run inside the tokio runtime (opens the ICMP sockets). Staging dirs live in
    /// `<state_dir>/stage`.
    /// `agents`: `[web.agents]`, the storage agents to drive.
    pub fn new(cfg: &WebConfig, state_dir: &Path, agents: Option<Arc<Agents>>) -> SysEffects {
        super::freeze::thaw_leftover(&cfg.mount_point, &cfg.options);
        SysEffects {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                ops: SysMountOps::new(PathBuf::from("/proc/self/mountinfo"), cfg),
                stage: state_dir.join("stage"),
                agents,
            }),
            checker: Checker::new(cfg),
        }
    }
}

impl<M: MountOps> Inner<M> {
    fn server(&self, s: Server) -> &ServerConfig {
        match s {
            Server::Primary => &self.cfg.primary,
            Server::Backup => &self.cfg.backup,
        }
    }

    fn entries(&self) -> Vec<mountinfo::MountEntry> {
        self.ops.entries()
    }

    fn serving(&self, at: &Path) -> Option<Server> {
        let e = self.entries();
        let top = mountinfo::top_at(&e, at)?;
        [Server::Primary, Server::Backup]
            .into_iter()
            .find(|s| mountinfo::same_source(&top.source, &self.server(*s).source()))
    }

    fn top_id(&self, at: &Path) -> Option<u64> {
        mountinfo::top_at(&self.entries(), at).map(|e| e.id)
    }

    fn verify(&self, at: &Path, s: Server) -> Result<(), String> {
        let src = self.server(s).source();
        if mountinfo::serves(&self.entries(), at, &src) {
            Ok(())
        } else {
            Err(format!("{} does not show {src} at {} after mounting", self.ops.table().display(), at.display()))
        }
    }

    async fn mount_at(&self, s: Server, at: &Path) -> Result<(), MountError> {
        self.ops.mount(&self.server(s).source(), at).await
    }

    /// Detaches everything stacked at `at` (bounded), forcing when the server may be dead; an error
    /// unless mountinfo then shows nothing mounted there.
    async fn clear(&self, at: &Path, force: bool) -> Result<(), String> {
        for _ in 0..4 {
            if mountinfo::top_at(&self.entries(), at).is_none() {
                return Ok(());
            }
            self.ops.detach(at, force).await.map_err(|e| crate::chain::render_chain(&e))?;
        }
        match mountinfo::top_at(&self.entries(), at) {
            None => Ok(()),
            Some(m) => Err(format!(
                "{} is still a mount point ({} {}) after 4 detaches",
                at.display(),
                m.fstype,
                m.source.display()
            )),
        }
    }

    /// Makes `dir` (a staging dir) an empty local directory: a leftover mount there (an earlier run
    /// died; its server may be dead) is detached and verified gone in mountinfo BEFORE the directory
    /// is created, so nothing ever stats a path under a mount that may hang.
    async fn prepare_dir(&self, dir: &Path) -> Result<(), String> {
        self.clear(dir, true).await?;
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
    }

    /// The private self-bind at `<state_dir>/stage` that staging mounts live under (a local dir).
    async fn prepare_stage(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.stage).map_err(|e| format!("cannot create {}: {e}", self.stage.display()))?;
        self.ops.private_self_bind(&self.stage).await.map_err(|e| e.to_string())
    }

    async fn direct_mount(&self, s: Server) -> Result<Option<u64>, String> {
        let mp = &self.cfg.mount_point;
        if self.serving(mp) == Some(s) {
            return Ok(None);
        }
        let old = self.top_id(mp);
        self.promote_best_effort(s).await;
        self.clear(mp, true).await?;
        self.mount_at(s, mp).await.map_err(|e| e.to_string())?;
        self.verify(mp, s)?;
        Ok(old)
    }

    async fn staged(&self, to: Server, keep_old: bool) -> Result<Option<u64>, (String, Option<Server>)> {
        let mp = self.cfg.mount_point.clone();
        let here = |e: String| (e, self.serving(&mp));
        let (new, old) = (self.stage.join("new"), self.stage.join("old"));
        // leftover mounts at the staging dirs are detached before the dirs are touched
        self.prepare_stage().await.map_err(here)?;
        for d in [&new, &old] {
            self.prepare_dir(d).await.map_err(here)?;
        }
        // (1) the new mount, ready and verified before the old one is touched
        if let Err(e) = self.mount_at(to, &new).await {
            let _ = self.clear(&new, true).await;
            return Err(here(e.to_string()));
        }
        if let Err(e) = self.verify(&new, to) {
            let _ = self.clear(&new, true).await;
            return Err(here(e));
        }
        let from = self.serving(&mp);
        let old_id = self.top_id(&mp);
        // (1b) failback: writes to the backup frozen, and what they wrote since pass 1 copied, so
        // clients never work on a primary that lacks it (see `freeze`)
        let failback = to == Server::Primary && from == Some(Server::Backup) && keep_old;
        if !failback {
            self.promote_best_effort(to).await;
        }
        let frozen = if failback {
            match self.final_catch_up(&mp).await {
                Ok(f) => f,
                Err(e) => {
                    let _ = self.clear(&new, true).await;
                    return Err(here(e));
                }
            }
        } else {
            None
        };
        if let Err(e) = self.swap(&mp, to, from, &new, &old).await {
            if failback && self.serving(&mp) != Some(Server::Primary) {
                // still on the backup (writes frozen until this returns): it must be active again
                // before clients write there, or their writes would not be journaled
                self.promote_best_effort(Server::Backup).await;
            }
            return Err(here(e));
        }
        if let Some(f) = frozen {
            f.keep();
        }
        if !keep_old {
            let _ = self.clear(&old, false).await;
        }
        Ok(old_id)
    }

    /// Steps (2) and (3) of a staged switch: keep the old mount reachable (catch-up source, and the
    /// way back if the swap fails), then swap (lazy detach + move, two syscalls back to back), with
    /// a direct mount as the fallback and the kept old mount as the way back.
    async fn swap(&self, mp: &Path, to: Server, from: Option<Server>, new: &Path, old: &Path) -> Result<(), String> {
        if from.is_some() {
            if let Err(e) = self.ops.bind(mp, old).await {
                let _ = self.clear(new, true).await;
                return Err(e.to_string());
            }
        }
        let swapped = match self.ops.detach(mp, false).await {
            Ok(()) => self.ops.move_mount(new, mp).await,
            Err(e) => Err(e),
        };
        if let Err(e) = swapped {
            tracing::warn!(error = %e, "move of the staged mount failed; mounting directly");
            let _ = self.clear(new, true).await;
            if self.serving(mp).is_none() {
                if let Err(e2) = self.mount_at(to, mp).await {
                    if from.is_some() {
                        let _ = self.ops.move_mount(old, mp).await;
                    }
                    return Err(format!("{e}; direct mount failed too: {e2}"));
                }
            }
        }
        self.verify(mp, to)
    }

    /// With agents: makes `s` active before its mount serves clients. Never blocks a switch for
    /// longer than one call to `s`'s agent: an agent that does not answer is logged, and the
    /// failback drains what its agent saw once it is reachable.
    async fn promote_best_effort(&self, s: Server) {
        let Some(a) = &self.agents else { return };
        // before the mount: clients move only after this answer
        match a.promote(s, false).await {
            Ok(r) => tracing::info!(epoch = r.epoch, active = s.name(), "agent promoted before the mount"),
            Err(e) => {
                a.missed_promotion(s, &e);
                tokio::spawn(Arc::clone(a).keep_promoting(s));
            }
        }
    }

    /// Freezes writes on the mount point (the backup) and pushes what changed since pass 1. `None`:
    /// no reverse sync configured (nothing to copy). No switch without the freeze: a client moved
    /// to the primary before the backup's last writes are there builds on old copies, and no copy
    /// made after the switch can tell its newer write from an older one (rsync's `--update` compares
    /// whole seconds; both found by the chaos test). The failback is retried instead.
    async fn final_catch_up(&self, mp: &Path) -> Result<Option<Frozen>, String> {
        if let Some(a) = &self.agents {
            // Without the freeze, the drain could never end while clients keep writing.
            let frozen = Frozen::freeze(mp, FREEZE_PATIENCE)
                .await
                .map_err(|e| format!("cannot freeze writes for the final drain: {e}"))?;
            let r = a
                .drain_and_promote_primary(a.drain_timeout())
                .await
                .map_err(|e| format!("final drain (writes frozen) failed: {e}"))?;
            tracing::info!(epoch = r.epoch, "final drain done, the primary is active");
            return Ok(Some(frozen));
        }
        let Some(rs) = self.cfg.reverse_sync.as_ref() else { return Ok(None) };
        let frozen = Frozen::freeze(mp, FREEZE_PATIENCE).await.map_err(|e| match e {
            MountError::Syscall { source: nix::Error::EBUSY, .. } => {
                format!("files stay open for writing on the backup mount ({e}); the failback is retried")
            }
            e => format!("cannot freeze writes for the final catch-up ({e}); the failback is retried"),
        })?;
        // Guarded like pass 1: should the switch fail after this pass, clients write to the backup
        // again, and the primary's replicator must not push these copies back over their writes.
        let dir = self.stage.with_file_name("guard");
        guard::raise(&self.cfg.rsync, rs, &dir).await.map_err(|e| format!("final catch-up: {e}"))?;
        let pushed = self.push(mp, true).await;
        let lowered = guard::lower(&self.cfg.rsync, rs, &dir).await;
        let s = pushed.map_err(|e| format!("final catch-up (writes frozen) failed: {e}"))?;
        // Clients must not write to the primary while its replicator drops changes.
        lowered.map_err(|e| format!("final catch-up: {e}; the failback is retried"))?;
        tracing::info!(files = s.files, bytes = s.bytes, elapsed_ms = s.elapsed_ms, "final catch-up done");
        Ok(Some(frozen))
    }

    /// Reconciliation from `<stage>/reconcile`. A leftover mount there (an earlier run died) is detached
    /// BEFORE the directory is touched, so a dead staging mount is never stat'ed.
    async fn reconcile(&self) -> Result<SyncStats, String> {
        let dir = self.stage.join("reconcile");
        self.prepare_stage().await?;
        self.prepare_dir(&dir).await?;
        let r = match self.mount_at(Server::Backup, &dir).await {
            Ok(()) => match self.verify(&dir, Server::Backup) {
                Ok(()) => self.push(&dir, false).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(format!("staging mount of the backup failed: {e}")),
        };
        if let Err(e) = self.clear(&dir, false).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot detach the reconciliation staging mount");
        }
        r
    }

    /// Pushes `src` to the primary; `may_delete`: honour `delete = true` (never for a reconciliation).
    async fn push(&self, src: &Path, may_delete: bool) -> Result<SyncStats, String> {
        let rs = self.cfg.reverse_sync.as_ref().ok_or("no [web.reverse_sync] configured")?;
        let args = push_args(src, rs, may_delete && rs.delete);
        let r = crate::sys::rsync::run(&self.cfg.rsync, &args, None, rs.timeout)
            .await
            .map_err(|e| format!("{e}: {}", e.source))?;
        if r.ok() {
            Ok(SyncStats {
                files: r.files,
                bytes: r.bytes,
                elapsed_ms: u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
            })
        } else {
            Err(r.error_text())
        }
    }
}

/// rsync argv for a push of `src` (a local directory) to the reverse-sync target: `--update` (never
/// overwrite a newer file on the primary), no `--delete` unless opted in.
pub fn reverse_sync_args(src: &Path, rs: &crate::config::web::ReverseSyncConfig) -> Vec<OsString> {
    push_args(src, rs, rs.delete)
}

/// rsync argv for a reconciliation push of `src` (the backup's staging mount): never `--delete`,
/// whatever the config says, because the primary has been live (and written to) since.
pub fn reconcile_args(src: &Path, rs: &crate::config::web::ReverseSyncConfig) -> Vec<OsString> {
    push_args(src, rs, false)
}

fn push_args(src: &Path, rs: &crate::config::web::ReverseSyncConfig, delete: bool) -> Vec<OsString> {
    // (No `--modify-window=-1` with `--update`: rsync's update test subtracts the window from whole
    // seconds, and a primary file one second newer would be overwritten; see `storage::push`.)
    let mut args: Vec<OsString> = vec!["-a".into(), "--update".into(), "--stats".into()];
    // The failback guard's marker on the primary: never copied, never deleted by `--delete`.
    args.push(format!("--exclude=/{}", crate::failback_guard::MARKER).into());
    args.push(format!("--exclude=/.{}.*", crate::failback_guard::MARKER).into());
    if delete {
        args.push("--delete".into());
    }
    args.extend(rs.target.transport_args());
    let mut s = src.as_os_str().to_owned();
    s.push("/");
    args.push(s);
    args.push(rs.target.url().into());
    args
}

/// How long the failback waits for files open for writing on the backup mount to be closed.
const FREEZE_PATIENCE: Duration = Duration::from_secs(2);
const HOLDERS_SCAN_LIMIT: usize = 200_000;

impl Prober for SysEffects {
    fn probe(&self, target: Target, canary: bool) -> impl Future<Output = Result<(), Failure>> + Send + 'static {
        let check = self.checker.check(target, canary);
        let agents = self.inner.agents.clone();
        let t = self.inner.cfg.probe_timeout;
        async move {
            check.await?;
            let server = match target {
                Target::Primary => Server::Primary,
                Target::Backup => Server::Backup,
                Target::Witness => return Ok(()),
            };
            // The agent's view of the export: read-only or full is a definite "no"; a slow or dead
            // agent says nothing about the server (no verdict within the probe's time).
            if let Some(a) = agents {
                if let Ok(Err(e)) = tokio::time::timeout(t, a.check_export(server)).await {
                    return Err(Failure::certain(e));
                }
            }
            Ok(())
        }
    }
}

impl Mounter for SysEffects {
    fn mounted(&self) -> Option<Server> {
        self.inner.serving(&self.inner.cfg.mount_point)
    }

    fn mount(&self, server: Server) -> impl Future<Output = Result<Option<u64>, String>> + Send + 'static {
        let inner = self.inner.clone();
        async move { inner.direct_mount(server).await }
    }

    fn staged_switch(
        &self,
        to: Server,
        keep_old: bool,
    ) -> impl Future<Output = Result<Option<u64>, (String, Option<Server>)>> + Send + 'static {
        let inner = self.inner.clone();
        async move { inner.staged(to, keep_old).await }
    }

    fn after_switch(&self, server: Server, old_mount: Option<u64>) -> impl Future<Output = String> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let mut out = Vec::new();
            let units = &inner.cfg.restart_units;
            if !units.is_empty() {
                let mut cmd = tokio::process::Command::new("systemctl");
                cmd.arg("try-restart").arg("--").args(units);
                let text = format!("systemctl try-restart {}", units.join(" "));
                match mount::run_child(cmd, text, inner.cfg.restart_timeout).await {
                    Ok(()) => out.push(format!("restarted {}", units.join(", "))),
                    Err(e) => out.push(e.to_string()),
                }
            }
            if let Some(id) = old_mount {
                let scan =
                    tokio::task::spawn_blocking(move || mount::holders(Path::new("/proc"), id, HOLDERS_SCAN_LIMIT));
                let scanned = tokio::time::timeout(Duration::from_secs(5), scan).await;
                if let Ok(Ok(h)) = &scanned {
                    crate::metrics::web().holders(h.len());
                }
                match scanned {
                    Ok(Ok(h)) if h.is_empty() => out.push("no process holds files on the detached mount".into()),
                    Ok(Ok(h)) => out.push(format!(
                        "processes still holding files on the detached mount (they get errors until restarted): {}",
                        h.iter()
                            .map(|h| format!("{} [{}] ({} files)", h.command, h.pid, h.files))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    _ => out.push("holder scan did not finish".into()),
                }
            }
            format!(
                "after switch to {}: {}",
                server.name(),
                if out.is_empty() { "nothing to do".into() } else { out.join("; ") }
            )
        }
    }
}

impl Syncer for SysEffects {
    fn reverse_sync(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            if let Some(a) = &inner.agents {
                let started = std::time::Instant::now();
                let r = a.fence_and_drain(a.drain_timeout()).await?;
                return Ok(SyncStats {
                    files: r.pending,
                    bytes: 0,
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            // Pass 1 writes into the primary's export: its replicator must not push those copies
            // back over newer writes on the backup (see `failback_guard`). No guard, no pass.
            let rs = inner.cfg.reverse_sync.as_ref().ok_or("no [web.reverse_sync] configured")?;
            let dir = inner.stage.with_file_name("guard");
            guard::raise(&inner.cfg.rsync, rs, &dir).await?;
            let r = inner.push(&inner.cfg.mount_point.clone(), true).await;
            if let Err(e) = guard::lower(&inner.cfg.rsync, rs, &dir).await {
                tracing::warn!(error = %e, "the failback guard stays up on the primary until its lease runs out");
            }
            r
        }
    }

    fn catch_up(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let old = inner.stage.join("old");
            // Everything was copied (or drained) with the backup's writes frozen, before the
            // switch: nothing on the kept mount is newer than the primary's copy. A copy now could
            // only overwrite clients' writes on the primary made in the same second (`--update`
            // compares whole seconds; found by the chaos test).
            if let Some(a) = &inner.agents {
                // the backup's agent only learns it is standby now
                a.tell(Server::Backup).await;
            }
            let _ = inner.clear(&old, false).await;
            Ok(SyncStats { files: 0, bytes: 0, elapsed_ms: 0 })
        }
    }

    fn reconcile(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            if inner.agents.is_some() && inner.cfg.reverse_sync.is_none() {
                // The backup's agent keeps what it could not push as orphans, delivered when it
                // is active again; nothing is copied blindly over the primary.
                tracing::warn!("left the backup without a drain: its unpushed changes stay journaled there as orphans");
                return Ok(SyncStats { files: 0, bytes: 0, elapsed_ms: 0 });
            }
            inner.reconcile().await
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const WEB: &str = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n";

    /// Real effects whose mountinfo is the crafted file `mountinfo` (listing leftover mounts that
    /// cannot be detached here, so they stay "mounted" whatever is tried).
    fn inner_with(state_dir: &Path, mountinfo: &Path) -> Inner {
        let cfg = crate::config::Config::parse(Path::new("w.toml"), WEB).unwrap().web.unwrap();
        Inner { ops: SysMountOps::new(mountinfo.to_owned(), &cfg), cfg, stage: state_dir.join("stage"), agents: None }
    }

    /// A leftover (maybe dead) NFS mount at a staging dir is detached and verified gone BEFORE the
    /// directory is created or stat'ed: `create_dir_all` on a dead mount blocks the runtime worker.
    #[tokio::test]
    async fn staging_dirs_are_never_touched_while_a_leftover_mount_is_listed() {
        let d = tempfile::tempdir().unwrap();
        let stage = d.path().join("stage");
        let mi = d.path().join("mountinfo");
        std::fs::write(
            &mi,
            format!(
                "22 1 0:21 / / rw - ext4 /dev/vda1 rw\n50 22 0:40 / {s} rw - ext4 /dev/vda1 rw\n\
                 51 50 0:41 / {s}/new rw - nfs4 10.0.0.9:/dead rw\n52 50 0:42 / {s}/old rw - nfs4 10.0.0.9:/dead rw\n",
                s = stage.display()
            ),
        )
        .unwrap();
        let inner = inner_with(d.path(), &mi);
        assert!(inner.staged(Server::Primary, false).await.is_err());
        assert!(!stage.join("new").exists() && !stage.join("old").exists(), "touched under a listed mount");
        // a detach that "succeeds" (here: nothing is really mounted) but leaves the entry listed is an
        // error, not a directory created under the mount
        std::fs::create_dir_all(stage.join("old")).unwrap();
        let e = inner.prepare_dir(&stage.join("old")).await.unwrap_err();
        assert_eq!(e, format!("{}/old is still a mount point (nfs4 10.0.0.9:/dead) after 4 detaches", stage.display()));
    }

    /// A mount point whose name is not UTF-8 (and has a space) is recognised in mountinfo, even
    /// when another entry is not UTF-8 either.
    #[test]
    fn a_non_utf8_mount_point_is_verified_byte_exact() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let mi = d.path().join("mountinfo");
        std::fs::write(
            &mi,
            b"22 1 0:21 / / rw - ext4 /dev/vda1 rw\n23 22 0:22 / /srv/\xe9t\xe9 rw - ext4 /dev/vdb rw\n\
              40 22 0:35 / /mnt/\xff\\040web rw - nfs4 10.0.0.3:/srv/nfs rw\n",
        )
        .unwrap();
        let mut inner = inner_with(d.path(), &mi);
        inner.cfg.mount_point = PathBuf::from(std::ffi::OsStr::from_bytes(b"/mnt/\xff web"));
        assert_eq!(inner.serving(&inner.cfg.mount_point.clone()), Some(Server::Backup));
        assert!(inner.verify(&inner.cfg.mount_point.clone(), Server::Backup).is_ok());
    }

    #[test]
    fn reverse_sync_never_deletes_by_default() {
        let t = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n[web.reverse_sync]\n[web.reverse_sync.target]\nhost = \"10.0.0.2\"\nmodule = \"data\"\nuser = \"nfsguard\"\n";
        let c = crate::config::Config::parse(Path::new("w.toml"), t).unwrap();
        let rs = c.web.unwrap().reverse_sync.unwrap();
        let a: Vec<String> =
            reverse_sync_args(Path::new("/mnt/nfs"), &rs).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(&a[..3], ["-a", "--update", "--stats"]);
        assert!(!a.iter().any(|x| x == "--delete"));
        assert_eq!(a[a.len() - 2], "/mnt/nfs/");
        assert_eq!(a[a.len() - 1], "rsync://nfsguard@10.0.0.2:873/data/");
        let mut rs = rs;
        rs.delete = true;
        assert!(reverse_sync_args(Path::new("/m"), &rs).iter().any(|x| x == "--delete"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "effects_mount_tests.rs"]
mod mount_tests;
