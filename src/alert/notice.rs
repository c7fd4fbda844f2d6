//! The web role's alert texts. The state machine (`web::fsm`) emits a [`Notice`]: a small fact plus
//! the state it happened in; this module renders it as the [`AlertEvent`] an operator reads (title,
//! reason, details, next steps). Pure: the time is a parameter.

use std::time::SystemTime;

use super::{AlertEvent, AlertKind, Role};
use crate::domain::{PerServer, Request, Server, Status};

/// What happened, with the state it happened in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub fact: Fact,
    pub ctx: Context,
}

/// The state a notice was raised in (the alert's servers and details).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub epoch: u64,
    pub pending_reverse_sync: bool,
    pub reconcile_epoch: Option<u64>,
    pub status: PerServer<Status>,
    /// The latest check error of each server.
    pub error: PerServer<Option<String>>,
    /// `None` when no witness is configured.
    pub witness: Option<Status>,
}

impl Context {
    fn error(&self, s: Server) -> &str {
        self.error[s].as_deref().unwrap_or("no error recorded")
    }
}

/// An rsync pass of the web node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Reverse sync backup->primary through the mount point (attempt n).
    ReverseSync { attempt: u32 },
    /// Catch-up from the kept backup mount after the failback switch.
    CatchUp,
    /// Reconciliation backup->primary from a staging mount of the backup (attempt n).
    Reconcile { attempt: u32 },
}

/// Why the node fails over to the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverCause {
    /// Nothing is mounted and the primary is not usable.
    PrimaryUnusable,
    /// The served primary is DOWN.
    PrimaryDown,
    /// The operator pinned the backup and the primary is DOWN.
    Pinned,
}

/// The facts the state machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    FailoverStarted {
        cause: FailoverCause,
    },
    /// The backup died: the node moves to the primary without a reverse sync.
    BackupLost,
    /// The direct mount of `server` is verified; `failed_mounts` failed before it.
    Serving {
        server: Server,
        failed_mounts: u32,
    },
    /// The first failed direct mount of an outage; retries wait `first_wait_ms` doubling to `max_wait_ms`.
    MountFailed {
        server: Server,
        error: String,
        first_wait_ms: u64,
        max_wait_ms: u64,
    },
    /// The staged switch to `to` is verified (`catch_up`: a catch-up pass runs now).
    Switched {
        to: Server,
        catch_up: bool,
    },
    /// The staged switch to `to` failed; the mount point serves `serving`.
    SwitchFailed {
        to: Server,
        error: String,
        serving: Option<Server>,
    },
    /// The node will not move to the primary: the dead backup holds writes nothing would copy back.
    Stranded,
    BothDown,
    NetworkLost,
    /// The primary is up again; failback after `hold_down_ms` if `failback`.
    PrimaryRecovered {
        failback: bool,
        hold_down_ms: u64,
    },
    Requested(Request),
    ReverseSyncStarted {
        attempt: u32,
    },
    ReverseSyncSucceeded {
        attempt: u32,
        files: u64,
        bytes: u64,
        elapsed_ms: u64,
    },
    ReverseSyncFailed {
        attempt: u32,
        error: String,
        wait_ms: u64,
    },
    CatchUpFailed {
        error: String,
    },
    ReconcileStarted {
        attempt: u32,
        epoch: u64,
    },
    ReconcileSucceeded {
        attempt: u32,
        epoch: u64,
        files: u64,
        bytes: u64,
        elapsed_ms: u64,
    },
    ReconcileFailed {
        attempt: u32,
        epoch: u64,
        error: String,
        wait_ms: u64,
    },
    /// The running pass was aborted: a server it needs is DOWN.
    PassAborted(Pass),
}

/// The alert for `n`; `labels` name the servers (e.g. `primary (10.0.0.2:/srv/nfs)`).
#[allow(clippy::too_many_lines, reason = "one arm per fact, the texts side by side")]
pub fn render(notice: &Notice, labels: &PerServer<String>, at: SystemTime) -> AlertEvent {
    let c = &notice.ctx;
    let (p, b) = (&labels.primary, &labels.backup);
    let with_ctx =
        |kind, title: String, reason: String, next: &str| context_event(c, labels, kind, title, reason, next);
    let e = match &notice.fact {
        Fact::FailoverStarted { cause } => {
            let (title, reason, next) = match cause {
                FailoverCause::PrimaryUnusable => (
                    format!("failing over to {b}"),
                    format!("{p} is not usable: {}", c.error(Server::Primary)),
                    "None yet: nfs-guard mounts the backup; a completion alert follows.",
                ),
                FailoverCause::PrimaryDown => (
                    format!("failing over to {b}"),
                    format!("{p} is DOWN: {}", c.error(Server::Primary)),
                    "None yet: nfs-guard detaches the dead mount and mounts the backup; a completion alert follows.",
                ),
                FailoverCause::Pinned => (
                    format!("failing over to {b} (held there)"),
                    format!("operator request; {p} is DOWN: {}", c.error(Server::Primary)),
                    "None yet: nfs-guard detaches the dead mount and mounts the backup; a completion alert follows. Run `nfs-guard web --release` to return to automatic control.",
                ),
            };
            with_ctx(AlertKind::FailoverStarted, title, reason, next)
        }
        Fact::BackupLost => {
            let next = if c.reconcile_epoch.is_some() {
                "None: files written on the backup since the failover are not on the primary yet; when the backup is back (rise + hold-down), nfs-guard mounts it at a staging dir and copies them to the primary (--update, never --delete). `nfs-guard status` shows the pending reconciliation."
            } else {
                "Forced by the operator, and no [web.reverse_sync] is configured: files written on the backup since the failover are not on the primary; copy them by hand (rsync -a --update) when the backup is back."
            };
            with_ctx(
                AlertKind::FailoverStarted,
                format!("backup failed: moving to {p} WITHOUT reverse sync"),
                format!("{b} is DOWN: {}", c.error(Server::Backup)),
                next,
            )
        }
        Fact::Serving { server, failed_mounts } => {
            let next = match server {
                Server::Backup => "Nothing to do now: the web node serves the backup. When the primary is back and stays up for the hold-down period, nfs-guard reverse-syncs and fails back by itself.",
                Server::Primary => "None.",
            };
            let e = with_ctx(
                AlertKind::FailoverCompleted,
                format!("now serving {}", labels[*server]),
                "mount verified in /proc/self/mountinfo".into(),
                next,
            );
            if *failed_mounts > 0 {
                e.detail("failed mount attempts before this one", failed_mounts)
            } else {
                e
            }
        }
        Fact::MountFailed { server, error, first_wait_ms, max_wait_ms } => {
            let next = format!(
                "nfs-guard retries with a backoff ({} s doubling to {} s) and mails again when a mount succeeds, not at every failed retry (each is logged). Check the mount options (`[web] options`, `fstype`) and the server's export (`showmount -e SERVER`); `nfs-guard status` shows what is mounted.",
                first_wait_ms / 1000,
                max_wait_ms / 1000
            );
            let title = format!("mounting {} FAILED: the mount point is empty", labels[*server]);
            with_ctx(AlertKind::SwitchFailed, title, error.clone(), &next).detail("switching to", &labels[*server])
        }
        Fact::Switched { to: Server::Primary, catch_up: true } => with_ctx(
            AlertKind::FailbackCompleted,
            format!("failed back to {p}"),
            "staged switch verified in /proc/self/mountinfo; catch-up pass running".into(),
            "None: a catch-up pass now copies the files written to the backup during the reverse sync (only a failure is mailed).",
        ),
        Fact::Switched { to: Server::Primary, catch_up: false } => with_ctx(
            AlertKind::FailbackCompleted,
            format!("failed back to {p}"),
            "staged switch verified in /proc/self/mountinfo".into(),
            "None.",
        ),
        Fact::Switched { to: Server::Backup, .. } => with_ctx(
            AlertKind::FailoverCompleted,
            format!("now serving {b}"),
            "manual switch verified in /proc/self/mountinfo".into(),
            "Run `nfs-guard web --release` to return to automatic control.",
        ),
        Fact::SwitchFailed { to, error, serving } => {
            let next = match serving {
                Some(s) => format!("The web node keeps serving {}; nfs-guard retries after the backoff. Check the mount options and the export of {}.", labels[*s], labels[*to]),
                None => format!("The mount point is EMPTY: nfs-guard mounts a usable server at the next check. Check the mount options and the export of {}.", labels[*to]),
            };
            let title = format!("switch to {} FAILED at the mount step", labels[*to]);
            with_ctx(AlertKind::SwitchFailed, title, error.clone(), &next).detail("switching to", &labels[*to])
        }
        Fact::Stranded => with_ctx(
            AlertKind::SwitchFailed,
            format!("NOT moving to {p}: the dead backup holds writes it lacks"),
            format!("{b} is DOWN: {}", c.error(Server::Backup)),
            "No [web.reverse_sync] is configured, so nothing would copy the writes made on the backup since the failover back to the primary: nfs-guard does not switch by itself (the mount point stays as it is and clients wait until the backup returns). To serve the primary anyway, copy what you can by hand (rsync -a --update from the backup) and run `nfs-guard web --failover-to primary`.",
        )
        .detail("switching to", p),
        Fact::BothDown => with_ctx(
            AlertKind::BothDown,
            "both NFS servers are DOWN: staying put".into(),
            format!("{p}: {}; {b}: {}", c.error(Server::Primary), c.error(Server::Backup)),
            "Bring either server back; nfs-guard keeps probing and switches as soon as one is up.",
        ),
        Fact::NetworkLost => with_ctx(
            AlertKind::NetworkLost,
            "this web node lost its network (witness unreachable): not switching".into(),
            "the witness address fails its checks too, so the servers are probably fine".into(),
            "Check this node's network link and gateway.",
        ),
        Fact::PrimaryRecovered { failback, hold_down_ms } => {
            let hold = hold_down_ms / 1000;
            let next = if *failback {
                format!("None: after {hold} s of stable health nfs-guard reverse-syncs and fails back.")
            } else {
                "No [web.reverse_sync] is configured: copy the backup's changes to the primary, then run `nfs-guard web --failover-to primary`.".to_owned()
            };
            with_ctx(AlertKind::PrimaryRecovered, format!("{p} is up again"), "all checks pass".into(), &next)
        }
        Fact::Requested(request) => {
            let (title, next) = match request {
                Request::FailoverTo(s) => (
                    format!("manual switch to {} requested (held there)", labels[*s]),
                    "Run `nfs-guard web --release` to return to automatic control.",
                ),
                Request::Hold => (
                    "hold: automatic failover and failback suspended".to_owned(),
                    "Run `nfs-guard web --release` to return to automatic control.",
                ),
                Request::Release => ("released: automatic control resumed".to_owned(), "None."),
            };
            with_ctx(AlertKind::ManualOverride, title, "operator request".into(), next)
        }
        Fact::ReverseSyncStarted { attempt } => AlertEvent::new(
            AlertKind::ReverseSyncStarted,
            Role::Web,
            format!("reverse sync {b} -> {p} started"),
            format!("attempt {attempt}: copying files written during failover epoch {}", c.epoch),
        )
        .detail("attempt", attempt)
        .next_steps("None: the mount moves back only after this sync succeeds."),
        Fact::ReverseSyncSucceeded { attempt, files, bytes, elapsed_ms } => AlertEvent::new(
            AlertKind::ReverseSyncSucceeded,
            Role::Web,
            format!("reverse sync to {p} succeeded"),
            format!("attempt {attempt}: {files} files, {bytes} bytes in {elapsed_ms} ms"),
        )
        .detail("attempt", attempt)
        .detail("files", files)
        .detail("bytes", bytes)
        .detail("duration ms", elapsed_ms)
        .next_steps("None: switching the mount back to the primary now."),
        Fact::ReverseSyncFailed { attempt, error, wait_ms } => servers(
            c,
            labels,
            AlertEvent::new(
                AlertKind::ReverseSyncFailed,
                Role::Web,
                format!("reverse sync to {p} failed (attempt {attempt})"),
                error.clone(),
            )
            .detail("attempt", attempt)
            .detail("next attempt in", format!("{} s", wait_ms / 1000)),
        )
        .next_steps("The web node stays on the backup (no data is lost). Check the primary's rsync daemon/target; nfs-guard retries on its own."),
        Fact::CatchUpFailed { error } => with_ctx(
            AlertKind::ReverseSyncFailed,
            format!("catch-up pass to {p} FAILED"),
            error.clone(),
            "None: the web node serves the primary; files written to the backup during the reverse sync are copied to it by a reconciliation from a staging mount of the backup (retried with backoff; see `nfs-guard status`).",
        ),
        Fact::ReconcileStarted { attempt, epoch } => AlertEvent::new(
            AlertKind::ReverseSyncStarted,
            Role::Web,
            format!("reconciliation {b} -> {p} started"),
            format!(
                "attempt {attempt}: copying files written on the backup during failover epoch {epoch} (the node left the backup without a reverse sync)"
            ),
        )
        .detail("failover epoch", epoch)
        .detail("attempt", attempt)
        .next_steps("None: the backup is mounted at a staging dir and copied with --update (never --delete); the web node keeps serving the primary."),
        Fact::ReconcileSucceeded { attempt, epoch, files, bytes, elapsed_ms } => AlertEvent::new(
            AlertKind::ReverseSyncSucceeded,
            Role::Web,
            format!("reconciliation {b} -> {p} succeeded"),
            format!(
                "attempt {attempt}: the backup's writes from failover epoch {epoch} are on the primary ({files} files, {bytes} bytes in {elapsed_ms} ms)"
            ),
        )
        .detail("failover epoch", epoch)
        .detail("attempt", attempt)
        .detail("files", files)
        .detail("bytes", bytes)
        .detail("duration ms", elapsed_ms)
        .next_steps("None."),
        Fact::ReconcileFailed { attempt, epoch, error, wait_ms } => servers(
            c,
            labels,
            AlertEvent::new(
                AlertKind::ReverseSyncFailed,
                Role::Web,
                format!("reconciliation {b} -> {p} failed (attempt {attempt})"),
                error.clone(),
            )
            .detail("failover epoch", epoch)
            .detail("attempt", attempt)
            .detail("next attempt in", format!("{} s", wait_ms / 1000)),
        )
        .next_steps("The web node keeps serving the primary; the backup's writes stay on the backup until this succeeds. Check the backup's export and the primary's rsync target; nfs-guard retries on its own."),
        Fact::PassAborted(pass) => {
            let (what, next) = match pass {
                Pass::ReverseSync { attempt } => (
                    format!("reverse sync {b} -> {p} (attempt {attempt})"),
                    "None: the reverse sync stays owed; it is retried once the primary has been up for the hold-down, or, if the node has to leave the backup, the backup's writes are reconciled to the primary once the backup is back (the next alert says where the mount goes).",
                ),
                Pass::CatchUp => (
                    "catch-up pass".to_owned(),
                    "None: the files written to the backup during the reverse sync are copied to the primary by a reconciliation from a staging mount of the backup once it is back (retried with backoff; `nfs-guard status` shows it pending).",
                ),
                Pass::Reconcile { attempt } => (
                    format!("reconciliation {b} -> {p} (attempt {attempt})"),
                    "None: the reconciliation stays pending (`nfs-guard status`) and is retried once both servers are up (the backup for the hold-down).",
                ),
            };
            let dead: Vec<String> = Server::BOTH
                .into_iter()
                .filter(|s| c.status[*s] == Status::Down)
                .map(|s| format!("{} is DOWN: {}", labels[s], c.error(s)))
                .collect();
            with_ctx(AlertKind::ReverseSyncFailed, format!("{what} ABORTED"), dead.join("; "), next)
        }
    };
    e.at_time(at)
}

/// An alert with the servers' states, the epoch and the pending flags.
fn context_event(
    c: &Context,
    labels: &PerServer<String>,
    kind: AlertKind,
    title: String,
    reason: String,
    next: &str,
) -> AlertEvent {
    let mut e = servers(c, labels, AlertEvent::new(kind, Role::Web, title, reason))
        .detail("failover epoch", c.epoch)
        .detail("pending reverse sync", c.pending_reverse_sync)
        .next_steps(next);
    if let Some(epoch) = c.reconcile_epoch {
        e = e.detail("pending reconciliation of epoch", epoch);
    }
    if let Some(w) = c.witness {
        e = e.server("witness", w.name());
    }
    e
}

/// `e` with the state of both servers.
fn servers(c: &Context, labels: &PerServer<String>, e: AlertEvent) -> AlertEvent {
    e.server(labels.primary.clone(), c.status.primary.name()).server(labels.backup.clone(), c.status.backup.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            epoch: 3,
            pending_reverse_sync: true,
            reconcile_epoch: Some(2),
            status: PerServer { primary: Status::Down, backup: Status::Up },
            error: PerServer { primary: Some("rpc timeout".into()), backup: None },
            witness: Some(Status::Up),
        }
    }

    fn labels() -> PerServer<String> {
        PerServer { primary: "primary (p:/e)".into(), backup: "backup (b:/e)".into() }
    }

    #[test]
    fn a_notice_renders_with_its_context_and_the_given_time() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7);
        let n = Notice { fact: Fact::FailoverStarted { cause: FailoverCause::PrimaryDown }, ctx: ctx() };
        let e = render(&n, &labels(), at);
        assert_eq!((e.kind, e.role, e.at), (AlertKind::FailoverStarted, Role::Web, at));
        assert_eq!(e.title, "failing over to backup (b:/e)");
        assert_eq!(e.reason, "primary (p:/e) is DOWN: rpc timeout");
        assert_eq!(
            e.servers,
            [("primary (p:/e)", "down"), ("backup (b:/e)", "up"), ("witness", "up")].map(|(a, b)| (a.into(), b.into()))
        );
        assert_eq!(
            e.details,
            [("failover epoch", "3"), ("pending reverse sync", "true"), ("pending reconciliation of epoch", "2")]
                .map(|(a, b)| (a.into(), b.into()))
        );
    }

    #[test]
    fn an_aborted_pass_names_every_dead_server_and_its_error() {
        let mut c = ctx();
        c.status.backup = Status::Down;
        let n = Notice { fact: Fact::PassAborted(Pass::Reconcile { attempt: 2 }), ctx: c };
        let e = render(&n, &labels(), SystemTime::UNIX_EPOCH);
        assert_eq!(e.title, "reconciliation backup (b:/e) -> primary (p:/e) (attempt 2) ABORTED");
        assert_eq!(e.reason, "primary (p:/e) is DOWN: rpc timeout; backup (b:/e) is DOWN: no error recorded");
    }
}
