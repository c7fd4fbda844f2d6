//! `nfs-guard web`: keeps a web node's NFS mount point served by a healthy server, fails over to the
//! backup when the primary dies, and fails back only after the backup's changes are copied back.
//!
//! ```text
//!                 +------------------- controller task (owns State) -------------------+
//!   interval ---> | spawn probe(primary|backup|witness)     request file (--failover-to)|
//!                 |        |                                        |                   |
//!                 |        v  Msg::Probed                           v                   |
//!                 |   health::Health (fall/rise) --Snapshot--> fsm::step(State, Event)  |
//!                 |                                                 | actions           |
//!                 +-------------------------------------------------|-------------------+
//!                        ^  Msg::Done(Event)                        v
//!                        +---- spawned effects, each with a deadline: mount / staged switch /
//!                              reverse sync / catch-up / after-switch; alerts -> AlertSink
//! ```
//!
//! Modules: `fsm` (pure decisions), `health` (pure hysteresis), `check` (the real health check, with
//! per-server timeouts from `rtt`, pure RTT estimation), `state` (durable state and operator requests),
//! `effects` (traits + real implementation), `controller` (the loop). Stopping `web` never unmounts
//! anything. The daemon and `--once` runs hold `<state_dir>/web.lock` (one instance per state
//! directory); an operator request alone only writes the request file. `mount_point` and `state_dir`
//! are canonicalized at start (the mount point through its parent only) to match mountinfo.
//!
//! # Failover (old server dead)
//! A lazy, forced detach of the mount point (`umount -l -f` as a killable child, done when the mount leaves
//! mountinfo; never a stat), then
//! `mount -t FSTYPE -o OPTIONS BACKUP:EXPORT MOUNT_POINT` as a child with a deadline, then a check that
//! /proc/self/mountinfo shows `BACKUP:EXPORT` on top at the mount point (fstype is not compared).
//!
//! # Failback (old server alive): new mount ready before the old one is detached
//! 1. reverse sync pass 1: `rsync -a --update [--delete] MOUNT_POINT/ PRIMARY_TARGET` (the mount serves
//!    the backup), killed at its deadline; failures retry with doubling backoff and alert each time;
//! 2. the primary is mounted at `<state_dir>/stage/new` (the `stage` dir is a private self-bind, so a
//!    mount below it may be moved even when `/` is shared) and verified in mountinfo;
//! 3. the current mount (backup) is bound to `<state_dir>/stage/old`: still reachable, and the way back;
//! 4. lazy detach of the mount point, immediately followed by `MS_MOVE stage/new -> mount point` (two
//!    syscalls back to back: the empty window is microseconds; open files on the backup keep working);
//!    if the move fails, the primary is mounted directly, and if that fails too the kept backup mount is
//!    moved back;
//! 5. catch-up pass `rsync --update stage/old/ PRIMARY_TARGET` for files written during pass 1;
//! 6. lazy detach of `stage/old`.
//!
//! Stacking the new mount over the old one and then detaching the covered one would avoid even the
//! microsecond gap, but a lazy detach of a covered mount takes the mounts above it along, so the
//! detach-then-move order is used.
//!
//! # The backup dies while it is served (reconciliation)
//! If the backup goes DOWN before a reverse sync succeeded and the primary is usable, the node mounts
//! the primary (serving beats waiting) and records `reconcile_epoch` (the failover epoch) in the durable
//! state BEFORE the mount moves; `nfs-guard status` shows it as `pending_reconcile_epoch`. Once the
//! backup is UP again (rise + hold-down), the node (daemon or a `--once` run) mounts the backup at
//! `<state_dir>/stage/reconcile` (with the mount deadline, verified in mountinfo), runs
//! `rsync -a --update STAGE/ PRIMARY_TARGET` (never `--delete`, whatever `delete` says: the primary has
//! been live since) with the reverse sync's retry/backoff and alerts, lazily detaches the staging mount
//! and clears the flag. The mount point is never touched; a failover of the primary meanwhile is not
//! delayed (the late report of the running pass is ignored, and the next failback's pass 1 copies the
//! whole backup tree anyway, which clears the flag). A failed catch-up pass records the same
//! reconciliation.
//!
//! # Several web nodes failing back at once
//! Each node pushes the same backup tree to the same primary with `--update` and no `--delete`: rsync
//! writes every file to a temporary name and renames it, so readers never see a partial file, and two
//! nodes pushing the same file write the same bytes (last rename wins, both identical). `--update` skips
//! files that are newer on the primary, so a node that has already failed back and whose clients write
//! to the primary is not overwritten by a slower node's older copy. What remains is last-writer-wins by
//! mtime for a file changed on BOTH servers during the staggered window (a node still on the backup and
//! a node already on the primary); nothing is deleted unless `delete = true`, which should only be used
//! with a single web node (a node would delete files another node just created on the primary).

pub mod agents;
pub mod check;
pub mod controller;
pub mod effects;
pub mod follow;
pub mod freeze;
pub mod fsm;
pub mod guard;
pub mod health;
pub mod mounts;
pub mod observe;
pub mod rtt;
pub mod state;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::alert::AlertSink;
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("another nfs-guard web runs with this state directory (one instance per state directory){}", if *.recorded { "; the request is recorded and that instance carries it out" } else { "" })]
    Locked {
        #[source]
        source: crate::sys::lockfile::LockError,
        /// An operator request was recorded before the lock was found held.
        recorded: bool,
    },
    #[error("web.agents: {0}")]
    Agents(String),
    #[error("cluster: {0}")]
    Farm(String),
    #[error("web.mount_point: {0}")]
    MountPoint(String),
    #[error("cannot resolve the state directory {path}")]
    StateDirPath {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the web role runs (from the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode {
    /// One check cycle, act on it, persist and return (systemd timers).
    pub once: bool,
    /// An operator request to record (`--failover-to/--hold/--release`).
    pub request: Option<fsm::Request>,
}

/// Runs the web role: a manual request (recorded for the daemon), one cycle (`--once`), or the daemon.
/// `tell` receives what the operator who typed the command should read (the role never prints).
pub async fn run(
    config: &Config,
    mode: Mode,
    alerts: Arc<dyn AlertSink>,
    shutdown: CancellationToken,
    tell: &(dyn Fn(&str) + Sync),
    farm: Option<follow::FarmStart>,
) -> Result<(), Error> {
    let cfg = config.web()?;
    if farm.is_some() && mode.once {
        return Err(Error::Farm(
            "`web --once` decides alone: a farm node runs as the daemon, which follows the farm's record".into(),
        ));
    }
    let state_dir = config.state_dir.clone();
    crate::sys::fsutil::ensure_private_dir(&state_dir)
        .map_err(|source| Error::StateDir { path: state_dir.clone(), source })?;
    let (cfg, state_dir) = &canonical(cfg, &state_dir)?;
    let state_dir = state_dir.clone();
    let request = mode.request;
    if let Some(request) = request {
        // A request alone only writes the request file: it works beside the running daemon.
        state::put_request(&state_dir, request)?;
        if !mode.once {
            tell(&explain(cfg, request, false));
            return Ok(());
        }
    }
    // The daemon and `--once` runs decide on the same durable state: one at a time.
    let _lock = match crate::sys::lockfile::LockFile::acquire(&state::lock_path(&state_dir)) {
        Ok(lock) => lock,
        Err(source) => {
            if let Some(request) = request {
                tell(&explain(cfg, request, false));
            }
            return Err(Error::Locked { source, recorded: request.is_some() });
        }
    };
    if let Some(request) = request {
        tell(&explain(cfg, request, true));
    }
    let loaded = match state::load(&state_dir) {
        Ok(l) => l,
        Err(e) => {
            // cannot even move it aside: this run stops, and says so by mail, not only in the journal
            let text = crate::chain::render_chain(&e);
            alerts.emit(
                crate::alert::AlertEvent::new(
                    crate::alert::AlertKind::StateQuarantined,
                    crate::alert::Role::Web,
                    "web role NOT RUNNING: its state file is unusable",
                    text,
                )
                .next_steps("Failover is OFF on this node. Fix or remove the file named above."),
            );
            return Err(e.into());
        }
    };
    let agents = match &cfg.agents {
        Some(a) => Some(Arc::new(agents::Agents::open(a, &state_dir, Arc::clone(&alerts)).map_err(Error::Agents)?)),
        None => None,
    };
    if let Some(start) = farm {
        let agents = agents.ok_or_else(|| Error::Farm("needs [web.agents]".into()))?;
        let link = start(cfg, &state_dir, agents, Arc::clone(&alerts), shutdown.clone());
        let fx = Arc::new(follow::Followed::new(cfg, &state_dir, Arc::clone(&link)));
        // The leader waits the hold-down for the farm; a node follows the record at once.
        let follower = crate::config::web::WebConfig { hold_down: std::time::Duration::ZERO, ..cfg.clone() };
        let alerts = Arc::new(follow::FollowerAlerts::new(alerts));
        let c = controller::Controller::new(&follower, state_dir, loaded, fx.clone(), fx.clone(), fx, alerts);
        drive(c.with_farm(link), mode.once, shutdown).await;
        return Ok(());
    }
    let fx = Arc::new(effects::SysEffects::new(cfg, &state_dir, agents));
    let c = controller::Controller::new(cfg, state_dir, loaded, fx.clone(), fx.clone(), fx, alerts);
    drive(c, mode.once, shutdown).await;
    Ok(())
}

async fn drive<P: effects::Prober, M: effects::Mounter, S: effects::Syncer>(
    mut c: controller::Controller<P, M, S>,
    once: bool,
    shutdown: CancellationToken,
) {
    if !once {
        c = c.with_watchdog(crate::sys::systemd::Watchdog::from_env());
    }
    c.run(once, shutdown).await;
}

/// The config and state dir with the paths the kernel lists in mountinfo (symlinks and `..`
/// resolved), so verifications compare like with like. The mount point itself is never stat'ed (it
/// may be a dead NFS mount): only its parent is resolved. The state dir is local and exists.
fn canonical(
    cfg: &crate::config::web::WebConfig,
    state_dir: &std::path::Path,
) -> Result<(crate::config::web::WebConfig, std::path::PathBuf), Error> {
    let mut cfg = cfg.clone();
    cfg.mount_point = crate::sys::mountinfo::canonical_mount_point(&cfg.mount_point).map_err(Error::MountPoint)?;
    let state_dir = std::fs::canonicalize(state_dir)
        .map_err(|source| Error::StateDirPath { path: state_dir.to_owned(), source })?;
    Ok((cfg, state_dir))
}

/// What the running daemon will do with `request`, for the operator who typed it.
fn explain(cfg: &crate::config::web::WebConfig, request: fsm::Request, once: bool) -> String {
    let when = if once {
        "now (this --once run)".to_owned()
    } else {
        format!(
            "within {} by the running `nfs-guard web` (or at the next `nfs-guard web --once`)",
            humantime::format_duration(cfg.interval)
        )
    };
    let mp = cfg.mount_point.display();
    match request {
        fsm::Request::FailoverTo(fsm::Server::Backup) => format!(
            "Recorded: switch {mp} to backup {} and hold there, {when}.\n\
             If the primary is healthy the backup is mounted at a staging dir first and moved into place \
             (no gap); if the primary is dead the old mount is detached and the backup mounted directly.\n\
             Automatic failover/failback is off until `nfs-guard web --release`.",
            cfg.backup.source()
        ),
        fsm::Request::FailoverTo(fsm::Server::Primary) => format!(
            "Recorded: switch {mp} to primary {} and hold there, {when}.\n{}\n\
             Automatic failover/failback is off until `nfs-guard web --release`.",
            cfg.primary.source(),
            if cfg.reverse_sync.is_some() {
                "If writes are pending on the backup, they are reverse-synced to the primary first (no hold-down wait); the mount moves only after that succeeds."
            } else {
                "No [web.reverse_sync] is configured: the mount moves WITHOUT copying the backup's changes back."
            }
        ),
        fsm::Request::Hold => format!("Recorded: hold {mp} on its current server, {when}. No automatic failover or failback until `nfs-guard web --release`."),
        fsm::Request::Release => format!("Recorded: release the hold, {when}. Automatic failover and failback resume."),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A symlink or `..` in `mount_point` or `state_dir` would make every mountinfo verification fail
    /// (and self-binds of the staging dir stack up): both are resolved at start.
    #[test]
    fn paths_are_compared_as_the_kernel_lists_them() {
        let d = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(real.join("mnt/a")).unwrap();
        std::fs::create_dir_all(real.join("var/state")).unwrap();
        std::os::unix::fs::symlink(real.join("mnt"), real.join("m")).unwrap();
        let text = format!(
            "state_dir = \"{0}/var/../var/state\"\n[web]\nmount_point = \"{0}/m/a/../nfs\"\n\
             [web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n\
             [web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n",
            d.path().display()
        );
        let c = Config::parse(std::path::Path::new("w.toml"), &text).unwrap();
        let (cfg, state_dir) = canonical(c.web().unwrap(), &c.state_dir).unwrap();
        assert_eq!(cfg.mount_point, real.join("mnt/nfs"));
        assert_eq!(state_dir, real.join("var/state"));
    }
}
