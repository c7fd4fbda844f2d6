//! What the web role shows its metrics: the controller's state as a [`View`] (names, not types, so
//! the metrics module needs nothing of `web`). Pure; the controller calls it after each step.

use super::effects::Target;
use super::fsm::{Hold, Phase, SyncKind};
use super::state::Durable;
use crate::domain::Status;
use crate::metrics::web::View;

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
}
