//! What the web role shows its observers: the controller's state as a metrics [`View`] (names, not
//! types, so the metrics module needs nothing of `web`), and what `nfs-guard status` needs beyond the
//! state itself ([`Seen`]: when each target was last checked, the last phase change and why). Pure;
//! the controller feeds it.

use serde::Serialize;

use super::effects::Target;
use super::fsm::{Event, Hold, Phase, SyncKind};
use super::state::Durable;
use crate::domain::{Request, Status};
use crate::metrics::web::View;

/// How often the status file is rewritten when nothing else changed (so the age of the last check
/// can be read from it, and a stalled daemon shows).
pub const STATUS_REFRESH_MS: u64 = 5_000;

/// The last phase change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub at_ms: u64,
    pub from: &'static str,
    pub to: &'static str,
    pub why: String,
}

/// Facts about the controller for `nfs-guard status`, kept in memory (status file fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Wall-clock ms of the last check of primary, backup, witness.
    pub checked_ms: [Option<u64>; 3],
    pub last_transition: Option<Transition>,
    /// When this status was written (wall-clock ms).
    pub written_ms: Option<u64>,
}

impl Seen {
    pub fn transition(&mut self, from: Phase, to: Phase, why: String, now_ms: u64) {
        self.last_transition = Some(Transition { at_ms: now_ms, from: phase_name(from), to: phase_name(to), why });
    }

    /// The status file is due for a refresh.
    pub fn due(&self, now_ms: u64) -> bool {
        self.written_ms.is_none_or(|w| now_ms.saturating_sub(w) >= STATUS_REFRESH_MS)
    }
}

fn down(name: &str, status: Status, error: Option<&String>) -> Option<String> {
    (status == Status::Down).then(|| match error {
        Some(e) => format!("{name} down ({e})"),
        None => format!("{name} down"),
    })
}

/// Why a phase changed, in a few words, from the event that changed it.
pub fn why(event: &Event) -> String {
    match event {
        Event::HealthObserved(s) => {
            let downs: Vec<String> = [
                down("primary", s.status.primary, s.error.primary.as_ref()),
                down("backup", s.status.backup, s.error.backup.as_ref()),
            ]
            .into_iter()
            .flatten()
            .collect();
            if downs.is_empty() {
                format!("health: primary {}, backup {}", s.status.primary.name(), s.status.backup.name())
            } else {
                downs.join(", ")
            }
        }
        Event::Ticked => "hold-down or retry time elapsed".into(),
        Event::MountSucceeded { server, .. } => format!("mounted {}", server.name()),
        Event::MountFailed { server, error } => format!("mount of {} failed: {error}", server.name()),
        Event::ReverseSyncSucceeded { files, .. } => format!("reverse sync done ({files} files)"),
        Event::ReverseSyncFailed { error, .. } => format!("reverse sync failed: {error}"),
        Event::StagedSwitchSucceeded { to, .. } => format!("switched to {}", to.name()),
        Event::StagedSwitchFailed { to, error, .. } => format!("switch to {} failed: {error}", to.name()),
        Event::CatchUpFinished { result: Ok((files, _)), .. } => format!("catch-up done ({files} files)"),
        Event::CatchUpFinished { result: Err(e), .. } => format!("catch-up failed: {e}"),
        Event::ReconcileSucceeded { files, .. } => format!("reconciliation done ({files} files)"),
        Event::ReconcileFailed { error, .. } => format!("reconciliation failed: {error}"),
        Event::Requested(Request::FailoverTo(s)) => format!("operator: --failover-to {}", s.name()),
        Event::Requested(Request::Hold) => "operator: --hold".into(),
        Event::Requested(Request::Release) => "operator: --release".into(),
    }
}

/// The phase's name in metrics and status (one of `metrics::web::PHASES`).
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Unmounted => "unmounted",
        Phase::Serving { .. } => "serving",
        Phase::Mounting { .. } => "mounting",
        Phase::Syncing { kind: SyncKind::ReverseSync, .. } => "reverse-syncing",
        Phase::Syncing { kind: SyncKind::Reconcile, .. } => "reconciling",
        Phase::Staging { .. } => "staging",
        Phase::CatchingUp => "catching-up",
    }
}

pub fn target_name(t: Target) -> &'static str {
    match t {
        Target::Primary => "primary",
        Target::Backup => "backup",
        Target::Witness => "witness",
    }
}

pub fn view(d: &Durable) -> View {
    let f = &d.fsm;
    View {
        phase: phase_name(f.phase),
        active: f.active(),
        hold: f.hold != Hold::None,
        pending_reverse_sync: f.pending_reverse_sync,
        up: [d.health.primary.status == Status::Up, d.health.backup.status == Status::Up],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Server;

    #[test]
    fn every_phase_has_a_metrics_series() {
        let phases = [
            Phase::Unmounted,
            Phase::Serving { server: Server::Primary },
            Phase::Mounting { to: Server::Backup },
            Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 1 },
            Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 },
            Phase::Staging { to: Server::Primary },
            Phase::CatchingUp,
        ];
        for p in phases {
            assert!(crate::metrics::web::PHASES.contains(&phase_name(p)), "{}", phase_name(p));
        }
        let mut d = Durable::default();
        d.fsm.phase = Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 2 };
        d.health.backup.status = Status::Up;
        let v = view(&d);
        assert_eq!((v.phase, v.active, v.up), ("reverse-syncing", Some(Server::Backup), [false, true]));
    }

    #[test]
    fn why_names_the_server_that_went_down_and_its_error() {
        let s = crate::web::fsm::Snapshot {
            status: crate::domain::PerServer { primary: Status::Down, backup: Status::Up },
            error: crate::domain::PerServer { primary: Some("rpc: no reply within 800ms".into()), backup: None },
            ..crate::web::fsm::Snapshot::default()
        };
        assert_eq!(why(&Event::HealthObserved(s)), "primary down (rpc: no reply within 800ms)");
        assert_eq!(why(&Event::Requested(Request::FailoverTo(Server::Backup))), "operator: --failover-to backup");
        let mut seen = Seen::default();
        assert!(seen.due(0));
        seen.written_ms = Some(1_000);
        assert!(!seen.due(5_999) && seen.due(6_000));
    }
}
