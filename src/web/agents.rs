//! The web role as the decider of the storage cluster (`[web.agents]`): it promotes the backup's
//! agent BEFORE mounting the backup, and fails back by draining the backup's journal to the
//! primary, then making the primary active, then switching (see `cluster` for the messages).
//!
//! The decider persists the highest record it made (`<state_dir>/cluster.json`) before sending it,
//! so a restarted decider never reuses an epoch. A failover never waits for an agent longer than
//! one call's deadline and never for the dead server's agent: serving beats waiting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::alert::{AlertEvent, AlertKind, AlertSink, Role};
use crate::cluster::client::{CallError, Client};
use crate::cluster::secret::Secret;
use crate::cluster::{now_ms, AgentReport, Record, RoleChange};
use crate::config::agent::WebAgents;
use crate::domain::{PerServer, Server};
use crate::sys::fsutil;

/// How often, and for how long, an agent that missed its promotion is told again.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub struct Agents {
    alerts: Arc<dyn AlertSink>,
    cfg: WebAgents,
    clients: PerServer<Client>,
    file: PathBuf,
    record: Mutex<Record>,
}

impl Agents {
    /// Reads the secret and the decider's last record under `state_dir`.
    pub fn open(cfg: &WebAgents, state_dir: &Path, alerts: Arc<dyn AlertSink>) -> Result<Agents, String> {
        let secret = Secret::load(&cfg.secret_file).map_err(|e| crate::chain::render_chain(&e))?;
        let roots = cfg.tls_ca.as_deref().map(crate::cluster::tls::roots).transpose().map_err(|e| e.to_string())?;
        let file = state_dir.join("cluster.json");
        let record = match fsutil::read_capped(&file, 64 * 1024) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: not a cluster record: {e}", file.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        Ok(Agents {
            alerts,
            clients: PerServer::from_fn(|s| Client::new(cfg.url(s), secret.clone(), cfg.timeout, roots.clone())),
            cfg: cfg.clone(),
            file,
            record: Mutex::new(record),
        })
    }

    pub fn drain_timeout(&self) -> std::time::Duration {
        self.cfg.drain_timeout
    }

    fn held(&self) -> Record {
        *self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, r: Record) -> Result<(), String> {
        let mut held = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        if r.epoch > held.epoch {
            let bytes = serde_json::to_vec(&r).map_err(|e| e.to_string())?;
            fsutil::write_atomic(&self.file, &bytes)
                .map_err(|e| format!("cannot persist {}: {e}", self.file.display()))?;
            *held = r;
        }
        Ok(())
    }

    /// Makes `s` active (a new epoch) unless its agent already is; asks only `s`'s agent, and tells
    /// the other one in the background. Returns the record `s` holds. `late`: clients may already
    /// write to `s` under the held record (the switch went on without its agent): the agent then
    /// journals what it saw since the switch, even when it already took the record (it may have
    /// taken it after the web node gave up waiting).
    pub async fn promote(self: &Arc<Self>, s: Server, late: bool) -> Result<Record, CallError> {
        self.promote_journaling(s, late, None).await
    }

    /// [`Agents::promote`]; when late, the agent journals what clients wrote there since
    /// `journal_since_ms` (default: the epoch's start), e.g. since the farm's record moved the web
    /// nodes to it (`farm`).
    pub async fn promote_journaling(
        self: &Arc<Self>,
        s: Server,
        late: bool,
        journal_since_ms: Option<u64>,
    ) -> Result<Record, CallError> {
        let local = |reason: String| CallError::Unreachable { url: self.file.display().to_string(), reason };
        let client = &self.clients[s];
        let report = client.report().await;
        if let Ok(r) = &report {
            self.hold(r.record).map_err(local)?;
            if r.record.active == s && r.record.epoch >= self.held().epoch {
                if late {
                    let since = journal_since_ms.unwrap_or(r.record.since_ms);
                    let again = RoleChange { record: r.record, journal_since_ms: Some(since), prompt: false };
                    client.propose(&again).await?;
                }
                return Ok(r.record);
            }
        }
        let held = self.held();
        let agent_epoch = report.as_ref().map_or(0, |r| r.record.epoch);
        // An epoch made for `s` that its agent never took (it did not answer at the switch) is sent
        // again as it was: the agent journals what clients wrote since that switch, not since now.
        let resend = held.active == s && held.epoch > agent_epoch;
        let record = if resend {
            held
        } else {
            Record { epoch: held.epoch.max(agent_epoch) + 1, active: s, since_ms: now_ms() }
        };
        // held (and persisted) even when the agent does not answer: the switch's time is kept
        self.hold(record).map_err(local)?;
        report?;
        // A new record before the switch: nobody wrote under it yet. Sent again, or late: clients
        // may have written since the switch.
        let prompt = !(late || resend);
        let since = journal_since_ms.unwrap_or(record.since_ms);
        let change = RoleChange { record, journal_since_ms: (!prompt).then_some(since), prompt };
        client.propose(&change).await?;
        tracing::warn!(epoch = record.epoch, active = s.name(), "cluster: new epoch");
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.clients[s.other()].propose(&RoleChange::tell(record)).await {
                tracing::info!(error = %e, "the other agent learns the new epoch later (from its peer)");
            }
        });
        Ok(record)
    }

    /// A failover went on without `s`'s agent taking its role (logged and mailed).
    pub fn missed_promotion(&self, s: Server, e: &CallError) {
        let held = self.held();
        tracing::error!(
            error = %e,
            server = s.name(),
            "the agent did not take the new role: switching anyway (serving beats waiting); told again until it \
             takes it, it then journals what clients wrote since this switch"
        );
        self.alerts.emit(
            AlertEvent::new(
                AlertKind::AgentUnreachable,
                Role::Web,
                format!("the {} storage agent did not take epoch {}", s.name(), held.epoch),
                e.to_string(),
            )
            .next_steps(format!(
                "The mount was switched anyway. Start or fix `nfs-guard storage` on the {} host: until its agent \
                 learns its role, what clients write there is only in its memory (see docs/agents.md).",
                s.name()
            )),
        );
    }

    /// Tells `s`'s agent its role again until it takes it, while this decider still wants `s`
    /// active (a failover whose agent did not answer at the switch).
    pub async fn keep_promoting(self: Arc<Self>, s: Server) {
        let end = tokio::time::Instant::now() + RETRY_FOR;
        while tokio::time::Instant::now() < end && self.held().active == s {
            tokio::time::sleep(RETRY_EVERY).await;
            if self.held().active != s {
                return;
            }
            if let Ok(r) = self.promote(s, true).await {
                tracing::warn!(epoch = r.epoch, server = s.name(), "the agent took its role after the switch");
                return;
            }
        }
    }

    /// One more check layer for `s`: its agent's view of the export. An export that went read-only
    /// or full fails the check; an agent that does not answer does not (it says nothing about the
    /// NFS service, which the other layers check).
    pub async fn check_export(&self, s: Server) -> Result<(), String> {
        match self.clients[s].health().await {
            Ok(h) if !h.ok => Err(format!("the agent reports the export unusable: {}", h.problems.join("; "))),
            _ => Ok(()),
        }
    }

    /// Failback, first part: the backup active (promoted now if it never learned it), the primary
    /// told so (it stands down and keeps its unpushed changes as orphans), the backup's journal to
    /// the primary drained.
    pub async fn fence_and_drain(self: &Arc<Self>, wait: std::time::Duration) -> Result<AgentReport, String> {
        // clients have written to the backup: if its agent never took the record, it is late
        let record = self.promote(Server::Backup, true).await.map_err(|e| e.to_string())?;
        let held = self.held();
        if held.active == Server::Backup && held.epoch == record.epoch {
            let b = self.clients.backup.report().await.map_err(|e| e.to_string())?;
            if b.covered_since_ms > held.since_ms {
                tracing::warn!(
                    switch_ms = held.since_ms,
                    covered_since_ms = b.covered_since_ms,
                    "the backup's agent did not see every change since the failover (it restarted or lost events): \
                     changes made before it watched again are not replayed"
                );
            }
        }
        self.clients
            .primary
            .propose(&RoleChange::tell(record))
            .await
            .map_err(|e| format!("the primary's agent must stand down before the drain: {e}"))?;
        let d = self.clients.backup.drain(record.epoch, wait).await.map_err(|e| e.to_string())?;
        tracing::info!(pushed = d.pushed, epoch = record.epoch, "backup's journal to the primary drained");
        Ok(d.report)
    }

    /// Failback, second part (writes to the backup frozen): drained again, then the primary active.
    pub async fn drain_and_promote_primary(self: &Arc<Self>, wait: std::time::Duration) -> Result<Record, String> {
        self.fence_and_drain(wait).await?;
        // writes frozen, clients move only after this answer
        self.promote(Server::Primary, false).await.map_err(|e| e.to_string())
    }

    /// After a switch: the agent of the server no longer served learns the record (best effort;
    /// its peer's fence tells it anyway).
    pub async fn tell(&self, s: Server) {
        let record = self.held();
        if let Err(e) = self.clients[s].propose(&RoleChange::tell(record)).await {
            tracing::info!(error = %e, server = s.name(), "the agent learns the new epoch later");
        }
    }
}
