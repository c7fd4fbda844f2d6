//! The farm's pure decisions: what a node feeds its state machine (the followed record over its own
//! checks), whether the primary is unreachable from this node only, and what the leader decides
//! from the live nodes' observations. No I/O, no clock (`now_ms` is a parameter).

use serde::{Deserialize, Serialize};

use crate::config::cluster::Policy;
use crate::domain::{Server, Status};
use crate::web::fsm::Snapshot;

/// The farm's decision: the versioned record every node follows (`<prefix>/record`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmRecord {
    pub active: Server,
    /// The storage cluster's epoch of this decision (the agents' record), so both agree.
    pub epoch: u64,
    /// Unix ms when the leader decided.
    pub since_ms: u64,
    /// The node that decided.
    pub by: String,
    /// A failback under way: the web nodes are moving to the primary while the backup's agent
    /// stays active (what lagging nodes write there is still journaled and pushed); the leader
    /// promotes the primary's agent, and clears this, once every live node serves this record.
    #[serde(default)]
    pub switching: bool,
}

/// What a node reports it serves (`<prefix>/serves/<node>`, under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serves {
    pub serving: Option<Server>,
    /// The record's epoch, when the node serves the record's server.
    pub epoch: Option<u64>,
}

/// One node's verdicts (after its hysteresis), published under its lease (`<prefix>/obs/<node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub primary: Status,
    pub backup: Status,
}

/// What this node knows of the farm, as the controller follows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// The last record read (`None`: never read one, or none was ever written: the primary).
    pub record: Option<FarmRecord>,
    /// etcd answered within the lease TTL.
    pub connected: bool,
    /// `[cluster] autonomy`: decide alone while etcd is lost.
    pub autonomy: bool,
}

impl View {
    /// The server the farm serves: the record's, the primary when none was ever written.
    pub fn active(&self) -> Server {
        self.record.as_ref().map_or(Server::Primary, |r| r.active)
    }
}

/// The snapshot the state machine decides on, given the farm's view: the followed record replaces
/// this node's own verdict on the primary (the farm's decision is the only reason to leave it or go
/// back to it); the backup's verdict, the witness and the errors stay local. A node that lost etcd
/// follows the last record it read (it keeps its mount), or, with autonomy, its own checks; one
/// that never read the farm keeps what it `serving` (a restart while etcd is down moves nothing).
pub fn follow(local: &Snapshot, serving: Option<Server>, view: &View) -> Snapshot {
    if !view.connected && view.autonomy {
        return local.clone();
    }
    let active = match (&view.record, view.connected) {
        (Some(r), _) => r.active,
        (None, true) => Server::Primary,
        (None, false) => serving.unwrap_or(Server::Primary),
    };
    let mut s = local.clone();
    match active {
        // the farm serves the primary: this node stays on it, whatever it sees alone
        Server::Primary => {
            s.status.primary = Status::Up;
            s.failing.primary = false;
        }
        // the farm left the primary: this node leaves it too, and does not go back on its own
        Server::Backup => {
            s.status.primary = Status::Down;
            s.failing.primary = true;
        }
    }
    s
}

/// This node sees the primary DOWN while more than half of the other live nodes see it UP (and the
/// farm serves it): the fault is between this node and the primary. Returns (seeing up, others).
pub fn isolated(me: &str, obs: &[(String, Observation)], view: &View) -> Option<(usize, usize)> {
    let mine = obs.iter().find(|(n, _)| n == me)?;
    if view.active() != Server::Primary || mine.1.primary != Status::Down {
        return None;
    }
    let others: Vec<&Observation> = obs.iter().filter(|(n, _)| n != me).map(|(_, o)| o).collect();
    let up = others.iter().filter(|o| o.primary == Status::Up).count();
    (!others.is_empty() && 2 * up > others.len()).then_some((up, others.len()))
}

/// What the leader does this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Stay,
    /// Make the backup active (the primary is down as the policy counts it).
    FailOver,
    /// Move the web nodes back to the primary (a majority has seen it up for the hold-down): drain
    /// the backup, then record the primary with `switching` set.
    FailBack,
    /// Every live node serves the switching record: drain the backup again, promote the primary's
    /// agent, clear `switching`.
    Settle,
}

/// The leader's memory between rounds (lost with the leadership: a new leader starts the hold-down
/// afresh, which only delays a failback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leader {
    /// Since when a majority of the live nodes has seen the primary UP while the backup is active.
    primary_up_since: Option<u64>,
}

impl Leader {
    /// The decision over the live nodes' observations and what they serve. Failover: the policy's
    /// count of nodes that see the primary DOWN and the backup UP (`majority`: more than half;
    /// `any`: one). Failback: always a majority seeing the primary UP, continuously for
    /// `hold_down_ms`. A switching record settles once every live node serves it.
    pub fn step(
        &mut self,
        record: Option<&FarmRecord>,
        obs: &[Observation],
        serves: &[Serves],
        policy: Policy,
        hold_down_ms: u64,
        now_ms: u64,
    ) -> Decision {
        let n = obs.len();
        if n == 0 {
            self.primary_up_since = None;
            return Decision::Stay;
        }
        match record.map_or(Server::Primary, |r| r.active) {
            Server::Primary => {
                self.primary_up_since = None;
                let down = obs.iter().filter(|o| o.primary == Status::Down && o.backup == Status::Up).count();
                let enough = match policy {
                    Policy::Majority => 2 * down > n,
                    Policy::Any => down >= 1,
                };
                if enough {
                    return Decision::FailOver;
                }
                match record {
                    Some(r) if r.switching && all_serve(r, serves) => Decision::Settle,
                    _ => Decision::Stay,
                }
            }
            Server::Backup => {
                let up = obs.iter().filter(|o| o.primary == Status::Up).count();
                if 2 * up <= n {
                    self.primary_up_since = None;
                    return Decision::Stay;
                }
                let since = *self.primary_up_since.get_or_insert(now_ms);
                if now_ms >= since.saturating_add(hold_down_ms) {
                    Decision::FailBack
                } else {
                    Decision::Stay
                }
            }
        }
    }
}

/// Every live node reports serving `record`'s server under its epoch.
pub fn all_serve(record: &FarmRecord, serves: &[Serves]) -> bool {
    !serves.is_empty() && serves.iter().all(|s| s.serving == Some(record.active) && s.epoch == Some(record.epoch))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::PerServer;
    use Status::{Down, Unknown, Up};

    fn o(primary: Status, backup: Status) -> Observation {
        Observation { primary, backup }
    }

    fn view(active: Server, connected: bool, autonomy: bool) -> View {
        let record = FarmRecord { active, epoch: 3, since_ms: 1, by: "w1".into(), switching: false };
        View { record: Some(record), connected, autonomy }
    }

    fn on_backup() -> FarmRecord {
        FarmRecord { active: Server::Backup, epoch: 4, since_ms: 1, by: "w1".into(), switching: false }
    }

    fn local(primary: Status) -> Snapshot {
        Snapshot {
            status: PerServer { primary, backup: Up },
            failing: PerServer { primary: primary == Down, backup: false },
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_node_follows_the_record_not_its_own_view_of_the_primary() {
        let s = follow(&local(Down), None, &view(Server::Primary, true, false));
        assert_eq!((s.status.primary, s.failing.primary, s.status.backup), (Up, false, Up));
        let s = follow(&local(Up), Some(Server::Primary), &view(Server::Backup, true, false));
        assert_eq!((s.status.primary, s.failing.primary), (Down, true));
        // no record ever written: the primary
        let empty = View { record: None, connected: true, autonomy: false };
        assert_eq!(follow(&local(Down), Some(Server::Backup), &empty).status.primary, Up);
        // the farm never read (etcd down at start): what the node serves
        let unread = View { record: None, connected: false, autonomy: false };
        assert_eq!(follow(&local(Up), Some(Server::Backup), &unread).status.primary, Down);
        assert_eq!(follow(&local(Down), Some(Server::Primary), &unread).status.primary, Up);
        assert_eq!(follow(&local(Down), None, &unread).status.primary, Up);
    }

    #[test]
    fn a_node_that_lost_etcd_keeps_the_last_record_unless_autonomous() {
        let s = follow(&local(Down), Some(Server::Primary), &view(Server::Primary, false, false));
        assert_eq!(s.status.primary, Up, "no failover alone");
        let s = follow(&local(Down), Some(Server::Primary), &view(Server::Primary, false, true));
        assert_eq!(s, local(Down), "autonomy: its own checks");
        let s = follow(&local(Down), Some(Server::Primary), &view(Server::Primary, true, true));
        assert_eq!(s.status.primary, Up, "autonomy only matters while etcd is lost");
    }

    #[test]
    fn primary_unreachable_from_this_node_only() {
        let obs = |mine: Status, others: &[Status]| {
            let mut v = vec![("me".to_owned(), o(mine, Up))];
            v.extend(others.iter().enumerate().map(|(i, s)| (format!("n{i}"), o(*s, Up))));
            v
        };
        let on_primary = view(Server::Primary, true, false);
        assert_eq!(isolated("me", &obs(Down, &[Up, Up]), &on_primary), Some((2, 2)));
        assert_eq!(isolated("me", &obs(Down, &[Up, Down]), &on_primary), None, "half is not most");
        assert_eq!(isolated("me", &obs(Up, &[Up, Up]), &on_primary), None);
        assert_eq!(isolated("me", &obs(Down, &[]), &on_primary), None, "alone: nobody to compare with");
        assert_eq!(isolated("me", &obs(Down, &[Up, Up]), &view(Server::Backup, true, false)), None);
        assert_eq!(isolated("x", &obs(Down, &[Up, Up]), &on_primary), None, "not published yet");
    }

    #[test]
    fn failover_needs_the_policy_count_of_nodes_seeing_primary_down_and_backup_up() {
        let mut l = Leader::default();
        let one_down = [o(Down, Up), o(Up, Up), o(Up, Up)];
        assert_eq!(l.step(None, &one_down, &[], Policy::Majority, 0, 0), Decision::Stay);
        assert_eq!(l.step(None, &one_down, &[], Policy::Any, 0, 0), Decision::FailOver);
        let two_down = [o(Down, Up), o(Down, Up), o(Up, Up)];
        assert_eq!(l.step(None, &two_down, &[], Policy::Majority, 0, 0), Decision::FailOver);
        let backup_unseen = [o(Down, Unknown), o(Down, Down), o(Down, Up)];
        assert_eq!(l.step(None, &backup_unseen, &[], Policy::Majority, 0, 0), Decision::Stay);
        assert_eq!(l.step(None, &[], &[], Policy::Any, 0, 0), Decision::Stay, "no live node");
    }

    #[test]
    fn failback_needs_a_majority_seeing_the_primary_up_for_the_hold_down() {
        let mut l = Leader::default();
        let up = [o(Up, Up), o(Up, Up), o(Down, Up)];
        assert_eq!(l.step(Some(&on_backup()), &up, &[], Policy::Any, 1000, 10), Decision::Stay);
        assert_eq!(l.step(Some(&on_backup()), &up, &[], Policy::Any, 1000, 1009), Decision::Stay);
        assert_eq!(l.step(Some(&on_backup()), &up, &[], Policy::Any, 1000, 1010), Decision::FailBack);
        // a flap restarts the hold-down
        let flap = [o(Up, Up), o(Down, Up), o(Down, Up)];
        assert_eq!(l.step(Some(&on_backup()), &flap, &[], Policy::Any, 1000, 1011), Decision::Stay);
        assert_eq!(l.step(Some(&on_backup()), &up, &[], Policy::Any, 1000, 1500), Decision::Stay);
        assert_eq!(l.step(Some(&on_backup()), &up, &[], Policy::Any, 1000, 2500), Decision::FailBack);
        // `any` never fails back on one node's word
        let mut l = Leader::default();
        let one = [o(Up, Up), o(Down, Up), o(Down, Up)];
        assert_eq!(l.step(Some(&on_backup()), &one, &[], Policy::Any, 0, 0), Decision::Stay);
    }

    #[test]
    fn a_switching_record_settles_once_every_live_node_serves_it() {
        let mut l = Leader::default();
        let r = FarmRecord { active: Server::Primary, epoch: 5, since_ms: 1, by: "w1".into(), switching: true };
        let up = [o(Up, Up), o(Up, Up)];
        let on = |epoch| Serves { serving: Some(Server::Primary), epoch: Some(epoch) };
        let lagging = Serves { serving: Some(Server::Backup), epoch: None };
        assert_eq!(l.step(Some(&r), &up, &[on(5), lagging], Policy::Majority, 0, 0), Decision::Stay);
        assert_eq!(l.step(Some(&r), &up, &[on(5), on(4)], Policy::Majority, 0, 0), Decision::Stay);
        assert_eq!(l.step(Some(&r), &up, &[on(5), on(5)], Policy::Majority, 0, 0), Decision::Settle);
        assert_eq!(l.step(Some(&r), &up, &[], Policy::Majority, 0, 0), Decision::Stay, "nobody reported");
        // the primary dies again mid-switch: back to the backup
        let down = [o(Down, Up), o(Down, Up)];
        assert_eq!(l.step(Some(&r), &down, &[on(5), on(5)], Policy::Majority, 0, 0), Decision::FailOver);
        let settled = FarmRecord { switching: false, ..r };
        assert_eq!(l.step(Some(&settled), &up, &[on(5), on(5)], Policy::Majority, 0, 0), Decision::Stay);
    }
}
