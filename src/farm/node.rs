//! One web node's agreement loop: every interval it publishes its observations and what it serves
//! under its lease, reads the farm, tells the controller what to follow, alerts when the primary is
//! unreachable from this node only or when etcd is lost, and, while it leads, decides and drives
//! the storage agents. The controller never waits on it (it reads the latest [`View`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::decide::{self, Decision, FarmRecord, Observation, Serves, View};
use super::store::{Farm, Keys, Session};
use super::Local;
use crate::alert::{AlertEvent, AlertKind, AlertSink, Role};
use crate::config::cluster::ClusterConfig;
use crate::domain::Server;
use crate::web::agents::Agents;

pub struct Node {
    pub cfg: ClusterConfig,
    pub keys: Keys,
    pub interval: Duration,
    pub hold_down_ms: u64,
    pub agents: Arc<Agents>,
    pub alerts: Arc<dyn AlertSink>,
    pub local: watch::Receiver<Option<Local>>,
    pub view: watch::Sender<View>,
    pub state_dir: PathBuf,
    pub session: Option<Session>,
    /// The lease of the last session dropped after a failure: the next session keeps it if etcd
    /// still has it alive (see `Session::open`).
    pub last_lease: Option<i64>,
    /// The endpoint the next session tries first (moves on after a failed round).
    pub endpoint: usize,
    /// Since when etcd has not answered a whole round (`None`: it answers).
    pub lost_since: Option<tokio::time::Instant>,
    pub lost_alerted: bool,
    pub isolated_alerted: bool,
    pub leader: decide::Leader,
    pub last_status: Vec<u8>,
    /// A leader that could not drive the agents resigned: it does not campaign again before this.
    pub no_campaign_until: Option<tokio::time::Instant>,
    /// The observation and served state this session last put: a key is written only when its
    /// value changes (or a new session's lease needs it): every put is a revision etcd keeps until
    /// compaction, a put per node per interval would fill its quota.
    pub published: (Option<Vec<u8>>, Option<Vec<u8>>),
}

/// What the leader has to do after a round.
struct Duty {
    decision: Decision,
    record: Option<FarmRecord>,
    rev: i64,
}

#[derive(Serialize)]
struct StatusDoc<'a> {
    node: &'a str,
    connected: bool,
    leader: Option<&'a str>,
    record: Option<&'a FarmRecord>,
    nodes: Vec<NodeStatus<'a>>,
}

#[derive(Serialize)]
struct NodeStatus<'a> {
    name: &'a str,
    observation: Option<&'a Observation>,
    serves: Option<&'a Serves>,
}

fn now_ms() -> u64 {
    crate::cluster::now_ms()
}

impl Node {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match Box::pin(self.round()).await {
                Ok(duty) => {
                    self.reached();
                    if let Some(d) = duty {
                        Box::pin(self.lead(d)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, node = %self.cfg.name, "farm: etcd round failed");
                    self.drop_session(true);
                    self.unreached(&e);
                }
            }
        }
        if let Some(s) = self.session.take() {
            s.leave().await;
        }
    }

    async fn session(&mut self) -> Result<&mut Session, String> {
        if self.session.as_ref().is_some_and(|s| !s.alive()) {
            // (etcd stopped renewing its lease: it is most likely gone; the next open checks)
            self.drop_session(false);
        }
        let n = self.cfg.endpoints.len();
        let mut errors = Vec::new();
        for i in 0..n {
            if self.session.is_some() {
                break;
            }
            let at = self.endpoint.wrapping_add(i) % n;
            let ep = self.cfg.endpoints[at].clone();
            match Box::pin(Session::open(&self.cfg, &ep, self.last_lease)).await {
                Ok(s) => {
                    let lease = if s.lease_kept() { "lease kept" } else { "lease granted" };
                    tracing::info!(node = %self.cfg.name, endpoint = %ep, "farm: connected to etcd, {lease}");
                    self.endpoint = at;
                    self.last_lease = None;
                    self.session = Some(s);
                    self.published = (None, None);
                }
                Err(e) => errors.push(format!("{ep}: {e}")),
            }
        }
        if self.session.is_none() {
            return Err(errors.join("; "));
        }
        self.session.as_mut().ok_or_else(|| "no session".to_owned())
    }

    async fn round(&mut self) -> Result<Option<Duty>, String> {
        let me = self.cfg.name.clone();
        let local = self.local.borrow().clone();
        let followed = self.view.borrow().record.clone();
        let keys = self.keys.clone();
        let (obs_key, serves_key) = (keys.obs(&me), keys.serves(&me));
        let may_campaign = self.no_campaign_until.is_none_or(|t| tokio::time::Instant::now() >= t);
        Box::pin(self.session()).await?;
        // (the field, not `session()`: `published` is borrowed beside it)
        let s = self.session.as_mut().ok_or_else(|| "no session".to_owned())?;
        if let Some(l) = &local {
            let serves = Serves {
                serving: l.serving,
                epoch: followed.as_ref().filter(|r| Some(r.active) == l.serving).map(|r| r.epoch),
            };
            let obs = serde_json::to_vec(&l.obs).map_err(|e| e.to_string())?;
            let serves = serde_json::to_vec(&serves).map_err(|e| e.to_string())?;
            if self.published.0.as_ref() != Some(&obs) {
                s.put_leased(obs_key, obs.clone()).await?;
                self.published.0 = Some(obs);
            }
            if self.published.1.as_ref() != Some(&serves) {
                s.put_leased(serves_key, serves.clone()).await?;
                self.published.1 = Some(serves);
            }
        }
        let mut farm = s.read(&keys, &me).await?;
        if farm.leader.is_none() && local.is_some() && may_campaign && s.campaign(&keys, &me).await? {
            tracing::warn!(node = %me, "farm: this node leads");
            farm.leader = Some(me.clone());
            farm.leading = true;
        }
        if self.view.borrow().record != farm.record {
            tracing::warn!(node = %me, record = ?farm.record, "farm: following the record");
        }
        let view = View { record: farm.record.clone(), connected: true, autonomy: self.cfg.autonomy };
        self.isolation(&farm, &view);
        self.view.send_replace(view);
        self.publish(&farm, true);
        if !farm.leading {
            self.leader = decide::Leader::default();
            return Ok(None);
        }
        let obs: Vec<Observation> = farm.obs.iter().map(|(_, o)| o.clone()).collect();
        let serves: Vec<Serves> = farm.serves.iter().map(|(_, s)| s.clone()).collect();
        let decision =
            self.leader.step(farm.record.as_ref(), &obs, &serves, self.cfg.policy, self.hold_down_ms, now_ms());
        Ok((decision != Decision::Stay).then_some(Duty { decision, record: farm.record, rev: farm.record_rev }))
    }

    /// Drops the session (`next`: its member failed a call, the next session starts on the next
    /// member), remembering its lease for the next session to keep if it is still alive.
    fn drop_session(&mut self, next: bool) {
        if let Some(s) = self.session.take() {
            self.last_lease = Some(s.lease());
        }
        if next {
            self.endpoint = self.endpoint.wrapping_add(1);
        }
    }

    /// etcd answered a whole round.
    fn reached(&mut self) {
        self.lost_since = None;
        if std::mem::take(&mut self.lost_alerted) {
            tracing::warn!(node = %self.cfg.name, "farm: etcd reachable again, following the record");
        }
    }

    /// etcd did not answer: after one lease TTL the node counts as cut off (its keys are gone by
    /// then, and the others no longer count it): it keeps its mount (or decides alone with
    /// autonomy), alerted once.
    fn unreached(&mut self, error: &str) {
        let since = *self.lost_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < self.cfg.lease_ttl || self.lost_alerted {
            return;
        }
        self.lost_alerted = true;
        self.view.send_modify(|v| v.connected = false);
        let (title, next) = if self.cfg.autonomy {
            (
                format!("{} lost etcd: deciding alone (autonomy)", self.cfg.name),
                "This node fails over on its own checks until etcd answers again; other nodes may serve \
                 another server meanwhile. Check its network to the etcd members.",
            )
        } else {
            (
                format!("{} lost etcd: keeping the current mount", self.cfg.name),
                "This node switches nothing until it reaches etcd again, then follows the farm's record. \
                 Check its network to the etcd members.",
            )
        };
        let e = AlertEvent::new(AlertKind::FarmUnreachable, Role::Web, title, error.to_owned())
            .detail("endpoints", self.cfg.endpoints.join(", "))
            .next_steps(next);
        tracing::warn!(kind = e.kind.name(), reason = %e.reason, "{}", e.title);
        self.alerts.emit(e);
        let farm = Farm::default();
        self.publish(&farm, false);
    }

    /// Alerts once per episode when this node alone sees the primary down.
    fn isolation(&mut self, farm: &Farm, view: &View) {
        match decide::isolated(&self.cfg.name, &farm.obs, view) {
            Some((up, others)) if !self.isolated_alerted => {
                self.isolated_alerted = true;
                let e = AlertEvent::new(
                    AlertKind::PrimaryUnreachableHere,
                    Role::Web,
                    format!("primary unreachable from this node only ({}): not switching", self.cfg.name),
                    format!("{up} of {others} other live nodes see the primary up"),
                )
                .next_steps(
                    "The farm stays on the primary. Check this node's network path to the primary (cable, \
                     firewall, conntrack); its clients may get errors until it is fixed.",
                );
                tracing::warn!(kind = e.kind.name(), reason = %e.reason, "{}", e.title);
                self.alerts.emit(e);
            }
            Some(_) => {}
            None => self.isolated_alerted = false,
        }
    }

    /// The leader's duty: drive the agents, then record the decision (compare-and-swap).
    async fn lead(&mut self, d: Duty) {
        let me = self.cfg.name.clone();
        let held = d.record.as_ref().map_or(0, |r| r.epoch);
        let record = match d.decision {
            Decision::Stay => return,
            Decision::FailOver => {
                tracing::warn!(node = %me, "farm: the live nodes see the primary down: failing over");
                // before the record flips: the nodes move only after this answer
                let epoch = match self.agents.promote(Server::Backup, false).await {
                    Ok(r) => r.epoch.max(held + 1),
                    Err(e) => {
                        // serving beats waiting: the record flips anyway, the agent is told until it takes it
                        self.agents.missed_promotion(Server::Backup, &e);
                        tokio::spawn(Arc::clone(&self.agents).keep_promoting(Server::Backup));
                        held + 1
                    }
                };
                FarmRecord { active: Server::Backup, epoch, since_ms: now_ms(), by: me.clone(), switching: false }
            }
            Decision::FailBack => {
                tracing::warn!(node = %me, "farm: a majority sees the primary up: draining the backup, then moving the nodes");
                if let Err(e) = self.agents.fence_and_drain(self.agents.drain_timeout()).await {
                    tracing::error!(node = %me, error = %e, "farm: failback not started: the backup's journal is not drained");
                    self.resign().await;
                    return;
                }
                FarmRecord {
                    active: Server::Primary,
                    epoch: held + 1,
                    since_ms: now_ms(),
                    by: me.clone(),
                    switching: true,
                }
            }
            Decision::Settle => {
                let Some(r) = d.record.clone() else { return };
                tracing::warn!(node = %me, epoch = r.epoch, "farm: every node serves the primary: last drain, then the primary's agent takes over");
                // what lagging nodes wrote to the backup meanwhile is pushed first; what the moved
                // nodes wrote to the primary since the record flipped is journaled at promotion
                let promoted = match self.agents.fence_and_drain(self.agents.drain_timeout()).await {
                    Ok(_) => self
                        .agents
                        .promote_journaling(Server::Primary, true, Some(r.since_ms))
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match promoted {
                    Ok(a) => FarmRecord { epoch: a.epoch.max(r.epoch), switching: false, by: me.clone(), ..r },
                    Err(e) => {
                        tracing::error!(node = %me, error = %e, "farm: failback not settled");
                        self.resign().await;
                        return;
                    }
                }
            }
        };
        let keys = self.keys.clone();
        let swapped = match Box::pin(self.session()).await {
            Ok(s) => s.swap_record(&keys, &me, d.rev, &record).await,
            Err(e) => Err(e),
        };
        match swapped {
            Ok(true) => {
                tracing::warn!(
                    node = %me,
                    active = record.active.name(),
                    epoch = record.epoch,
                    switching = record.switching,
                    "farm: decision recorded"
                );
                if record.switching {
                    self.alerts.emit(failback_alert(&record));
                }
                self.view.send_modify(|v| v.record = Some(record));
            }
            Ok(false) => tracing::warn!(node = %me, "farm: the record changed or leadership was lost: re-read"),
            Err(e) => {
                tracing::warn!(node = %me, error = %e, "farm: decision not recorded");
                self.drop_session(true);
            }
        }
    }

    /// This leader could not drive the agents (it may be the one node cut off from a storage
    /// host): it hands the lead over, and keeps out of the next elections for two lease TTLs, so a
    /// node that reaches both agents retries. Alone in the farm, it retries after that.
    async fn resign(&mut self) {
        self.leader = decide::Leader::default();
        self.no_campaign_until = Some(tokio::time::Instant::now() + self.cfg.lease_ttl * 2);
        let (keys, me) = (self.keys.clone(), self.cfg.name.clone());
        let resigned = match Box::pin(self.session()).await {
            Ok(s) => s.resign(&keys, &me).await,
            Err(e) => Err(e),
        };
        match resigned {
            Ok(_) => tracing::warn!(node = %me, "farm: resigned the lead (could not drive the agents)"),
            Err(e) => tracing::warn!(node = %me, error = %e, "farm: could not resign: the lead lapses with the lease"),
        }
    }

    /// `<state_dir>/farm.status.json`: the record, the leader, every live node's observation and
    /// served epoch (written when it changes).
    fn publish(&mut self, farm: &Farm, connected: bool) {
        let mut names: Vec<&str> = farm.obs.iter().map(|(n, _)| n.as_str()).collect();
        names.extend(farm.serves.iter().map(|(n, _)| n.as_str()));
        names.sort_unstable();
        names.dedup();
        let view = self.view.borrow().clone();
        let doc = StatusDoc {
            node: &self.cfg.name,
            connected,
            leader: farm.leader.as_deref(),
            record: if connected { farm.record.as_ref() } else { view.record.as_ref() },
            nodes: names
                .iter()
                .map(|n| NodeStatus {
                    name: n,
                    observation: farm.obs.iter().find(|(m, _)| m == n).map(|(_, o)| o),
                    serves: farm.serves.iter().find(|(m, _)| m == n).map(|(_, s)| s),
                })
                .collect(),
        };
        let Ok(bytes) = serde_json::to_vec(&doc) else { return };
        if bytes != self.last_status {
            crate::status::write(&self.state_dir, "farm", &doc);
            self.last_status = bytes;
        }
    }
}

/// The farm's one failback mail, sent by the leader that drained the backup and flipped the record
/// (the nodes' own "primary up again" and "reverse sync" notices are folded into it:
/// `web::follow::FOLDED`).
fn failback_alert(record: &FarmRecord) -> AlertEvent {
    AlertEvent::new(
        AlertKind::PrimaryRecovered,
        Role::Web,
        format!("the farm fails back to the primary (epoch {}, led by {})", record.epoch, record.by),
        "a majority of the live web nodes see the primary up: the backup's journal is drained to it".to_owned(),
    )
    .detail("epoch", record.epoch)
    .detail("leader", &record.by)
    .next_steps(
        "None: every web node moves to the primary now; once all serve it, the leader drains the backup once more \
         and the primary's agent takes over. Each node mails when it has failed back.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_farm_failback_mail_names_the_epoch_and_the_leader() {
        let r = FarmRecord { active: Server::Primary, epoch: 7, since_ms: 1, by: "w2".into(), switching: true };
        let e = failback_alert(&r);
        assert_eq!(e.kind, AlertKind::PrimaryRecovered);
        assert_eq!(e.title, "the farm fails back to the primary (epoch 7, led by w2)");
    }
}
