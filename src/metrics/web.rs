//! Web role metrics, recorded from what the controller already knows: its state after each step
//! ([`WebMetrics::observe`]), each check layer's result ([`WebMetrics::checked`]), the holder scan
//! after a switch. Failovers and failbacks are counted here, from the changes of the served server,
//! so the state machine needs no counters of its own.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::FGauge;
use crate::domain::Server;
use crate::sys::probe::Layer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub server: String,
    pub layer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// What the web controller shows after each step (built by `web::observe` from its state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// One of [`PHASES`].
    pub phase: &'static str,
    /// The server the mount point serves, if any.
    pub active: Option<Server>,
    pub hold: bool,
    pub pending_reverse_sync: bool,
    /// Judged UP (after fall/rise): primary, backup.
    pub up: [bool; 2],
}

/// Every phase name, so each has a series (0 or 1) from the first scrape on.
pub const PHASES: [&str; 7] =
    ["unmounted", "serving", "mounting", "reverse-syncing", "reconciling", "staging", "catching-up"];

/// The check layers in the order a check runs them.
const LAYERS: [Layer; 5] = [Layer::Resolve, Layer::Icmp, Layer::Tcp, Layer::Rpc, Layer::Canary];

pub fn layer_name(l: Layer) -> &'static str {
    match l {
        Layer::Resolve => "resolve",
        Layer::Icmp => "icmp",
        Layer::Tcp => "tcp",
        Layer::Rpc => "rpc",
        Layer::Canary => "canary",
    }
}

/// A change of the served server, found by [`Tracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// Now serving the backup; `ms` since the primary stopped being served.
    Failover { ms: u64 },
    /// Serving the primary again.
    Failback { ms: u64 },
}

/// Pure: follows the served server and the phase over successive observations.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tracker {
    served: Option<Server>,
    /// When the last served server stopped being served (a switch under way).
    left_ms: Option<u64>,
    phase: Option<&'static str>,
    /// Wall-clock ms of the last phase change seen (not the first observation: that is a start).
    pub last_transition_ms: Option<u64>,
}

impl Tracker {
    /// Records the state at `now_ms`; returns the switch it completes, if any.
    pub fn observe(&mut self, phase: &'static str, active: Option<Server>, now_ms: u64) -> Option<Switch> {
        if self.phase.is_some_and(|p| p != phase) {
            self.last_transition_ms = Some(now_ms);
        }
        self.phase = Some(phase);
        match (self.served, active) {
            (Some(was), Some(now)) if was != now => {
                let ms = now_ms.saturating_sub(self.left_ms.take().unwrap_or(now_ms));
                self.served = Some(now);
                Some(match now {
                    Server::Backup => Switch::Failover { ms },
                    Server::Primary => Switch::Failback { ms },
                })
            }
            (Some(_), Some(_)) => {
                self.left_ms = None;
                None
            }
            (Some(_), None) => {
                self.left_ms.get_or_insert(now_ms);
                None
            }
            (None, now) => {
                self.served = now;
                None
            }
        }
    }
}

#[derive(Default)]
pub struct WebMetrics {
    server_up: Family<ServerLabel, Gauge>,
    check_up: Family<CheckLabel, Gauge>,
    check_seconds: Family<CheckLabel, FGauge>,
    active: Family<ServerLabel, Gauge>,
    phase: Family<PhaseLabel, Gauge>,
    hold: Gauge,
    failovers: Counter,
    failbacks: Counter,
    last_transition: FGauge,
    last_failover_seconds: FGauge,
    pending_reverse_sync: Gauge,
    holders: Gauge,
    tracker: Mutex<Tracker>,
}

fn label(server: &str) -> ServerLabel {
    ServerLabel { server: server.to_owned() }
}

impl WebMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "nfsguard_web_server_up",
            "1 while the server is judged UP (after fall/rise), 0 while DOWN or not yet known",
            self.server_up.clone(),
        );
        r.register(
            "nfsguard_web_check_up",
            "1 if this layer answered in the last check; 0 if it failed or was not reached",
            self.check_up.clone(),
        );
        r.register(
            "nfsguard_web_check_duration_seconds",
            "How long the last check of this layer took (until its answer or its deadline)",
            self.check_seconds.clone(),
        );
        r.register("nfsguard_web_active_server", "1 for the server the mount point serves", self.active.clone());
        r.register("nfsguard_web_phase", "1 for the controller's current phase", self.phase.clone());
        r.register("nfsguard_web_hold", "1 while an operator hold or manual failover is in force", self.hold.clone());
        r.register("nfsguard_web_failovers", "Switches to the backup completed", self.failovers.clone());
        r.register("nfsguard_web_failbacks", "Switches back to the primary completed", self.failbacks.clone());
        r.register(
            "nfsguard_web_last_transition_timestamp_seconds",
            "Unix time of the last phase change (0: none since the start)",
            self.last_transition.clone(),
        );
        r.register(
            "nfsguard_web_last_failover_duration_seconds",
            "Last failover: from detaching the primary's mount until serving the backup",
            self.last_failover_seconds.clone(),
        );
        r.register(
            "nfsguard_web_pending_reverse_sync",
            "1 while the backup holds writes the primary lacks (a reverse sync is due before failback)",
            self.pending_reverse_sync.clone(),
        );
        r.register(
            "nfsguard_web_old_mount_holder_processes",
            "Processes that still held files on the mount detached by the last switch",
            self.holders.clone(),
        );
        for s in ["primary", "backup"] {
            drop(self.active.get_or_create(&label(s)));
        }
        for p in PHASES {
            drop(self.phase.get_or_create(&PhaseLabel { phase: p.into() }));
        }
    }

    /// The controller's state after a step (or at start), at wall-clock `now_ms`.
    pub fn observe(&self, v: &View, now_ms: u64) {
        let switch = self.tracker.lock().unwrap_or_else(PoisonError::into_inner).observe(v.phase, v.active, now_ms);
        match switch {
            Some(Switch::Failover { ms }) => {
                self.failovers.inc();
                #[allow(clippy::cast_precision_loss)]
                self.last_failover_seconds.set(ms as f64 / 1000.0);
            }
            Some(Switch::Failback { .. }) => {
                self.failbacks.inc();
            }
            None => {}
        }
        if let Some(at) = self.tracker.lock().unwrap_or_else(PoisonError::into_inner).last_transition_ms {
            #[allow(clippy::cast_precision_loss)]
            self.last_transition.set(at as f64 / 1000.0);
        }
        for s in [Server::Primary, Server::Backup] {
            self.active.get_or_create(&label(s.name())).set(i64::from(v.active == Some(s)));
        }
        for p in PHASES {
            self.phase.get_or_create(&PhaseLabel { phase: p.into() }).set(i64::from(p == v.phase));
        }
        self.hold.set(i64::from(v.hold));
        self.pending_reverse_sync.set(i64::from(v.pending_reverse_sync));
        for (name, up) in [("primary", v.up[0]), ("backup", v.up[1])] {
            self.server_up.get_or_create(&label(name)).set(i64::from(up));
        }
    }

    /// One check layer of `target` (primary, backup, witness) finished (`ok`) after `took`.
    pub fn checked(&self, target: &str, layer: Layer, ok: bool, took: Duration) {
        let l = CheckLabel { server: target.into(), layer: layer_name(layer).into() };
        self.check_up.get_or_create(&l).set(i64::from(ok));
        self.check_seconds.get_or_create(&l).set(took.as_secs_f64());
        if !ok {
            // the layers after a failed one are not reached: not up either (never a stale 1)
            for later in LAYERS.iter().skip_while(|l| **l != layer).skip(1) {
                let l = CheckLabel { server: target.into(), layer: layer_name(*later).into() };
                if let Some(g) = self.check_up.get(&l) {
                    g.set(0);
                }
            }
        }
    }

    /// The holder scan after a switch found `n` processes on the detached mount.
    pub fn holders(&self, n: usize) {
        self.holders.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Option<Server> = Some(Server::Primary);
    const B: Option<Server> = Some(Server::Backup);

    #[test]
    fn a_failover_and_a_failback_are_counted_once_with_their_duration() {
        let mut t = Tracker::default();
        // start: serving the primary; no transition, no switch
        assert_eq!(t.observe("serving", P, 1_000), None);
        assert_eq!(t.last_transition_ms, None);
        // detached, mounting the backup: the switch starts
        assert_eq!(t.observe("mounting", None, 5_000), None);
        assert_eq!(t.observe("mounting", None, 6_000), None);
        assert_eq!(t.observe("serving", B, 7_500), Some(Switch::Failover { ms: 2_500 }));
        assert_eq!(t.last_transition_ms, Some(7_500));
        // the same state observed again counts nothing
        assert_eq!(t.observe("serving", B, 8_000), None);
        // reverse sync (still serving the backup), staging, then the primary
        assert_eq!(t.observe("reverse-syncing", B, 9_000), None);
        assert_eq!(t.observe("staging", B, 10_000), None);
        assert_eq!(t.observe("catching-up", P, 10_200), Some(Switch::Failback { ms: 0 }));
        assert_eq!(t.observe("serving", P, 11_000), None);
        assert_eq!(t.last_transition_ms, Some(11_000));
    }

    #[test]
    fn starting_unmounted_then_mounting_is_no_switch() {
        let mut t = Tracker::default();
        assert_eq!(t.observe("unmounted", None, 0), None);
        assert_eq!(t.observe("mounting", None, 10), None);
        assert_eq!(t.observe("serving", P, 20), None);
        assert_eq!(t.last_transition_ms, Some(20));
    }
}
