//! The web role as the decider of the storage cluster (`[web.agents]`): it promotes the backup's
//! agent BEFORE mounting the backup, and fails back by draining the backup's journal to the
//! primary, then making the primary active, then switching (see `cluster` for the messages).
//!
//! The decider persists the highest record it made (`<state_dir>/cluster.json`) before sending it,
//! so a restarted decider never reuses an epoch. A failover never waits for an agent longer than
//! one call's deadline and never for the dead server's agent: serving beats waiting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::cluster::client::{CallError, Client};
use crate::cluster::secret::Secret;
use crate::cluster::{now_ms, AgentReport, Record, RoleChange};
use crate::config::agent::WebAgents;
use crate::domain::{PerServer, Server};
use crate::sys::fsutil;

pub struct Agents {
    cfg: WebAgents,
    clients: PerServer<Client>,
    file: PathBuf,
    record: Mutex<Record>,
}

impl Agents {
    /// Reads the secret and the decider's last record under `state_dir`.
    pub fn open(cfg: &WebAgents, state_dir: &Path) -> Result<Agents, String> {
        let secret = Secret::load(&cfg.secret_file).map_err(|e| crate::chain::render_chain(&e))?;
        let file = state_dir.join("cluster.json");
        let record = match fsutil::read_capped(&file, 64 * 1024) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: not a cluster record: {e}", file.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        Ok(Agents {
            clients: PerServer::from_fn(|s| Client::new(cfg.url(s), secret.clone(), cfg.timeout)),
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
    /// the other one in the background. Returns the record `s` holds.
    pub async fn promote(self: &Arc<Self>, s: Server) -> Result<Record, CallError> {
        let client = &self.clients[s];
        let report = client.report().await?;
        self.hold(report.record).map_err(|reason| CallError::Unreachable { url: String::new(), reason })?;
        let held = self.held();
        if report.record.active == s && report.record.epoch >= held.epoch {
            return Ok(report.record);
        }
        let now = now_ms();
        let record = Record { epoch: held.epoch.max(report.record.epoch) + 1, active: s, since_ms: now };
        self.hold(record).map_err(|reason| CallError::Unreachable { url: String::new(), reason })?;
        let change = RoleChange { record, journal_since_ms: Some(now) };
        client.propose(&change).await?;
        tracing::warn!(epoch = record.epoch, active = s.name(), "cluster: new epoch");
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.clients[s.other()].propose(&RoleChange { record, journal_since_ms: None }).await {
                tracing::info!(error = %e, "the other agent learns the new epoch later (from its peer)");
            }
        });
        Ok(record)
    }

    /// Failback, first part: the backup active (promoted now if it never learned it), the primary
    /// told so (it stands down and keeps its unpushed changes as orphans), the backup's journal to
    /// the primary drained.
    pub async fn fence_and_drain(self: &Arc<Self>, wait: std::time::Duration) -> Result<AgentReport, String> {
        let record = self.promote(Server::Backup).await.map_err(|e| e.to_string())?;
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
            .propose(&RoleChange { record, journal_since_ms: None })
            .await
            .map_err(|e| format!("the primary's agent must stand down before the drain: {e}"))?;
        let d = self.clients.backup.drain(record.epoch, wait).await.map_err(|e| e.to_string())?;
        tracing::info!(pushed = d.pushed, epoch = record.epoch, "backup's journal to the primary drained");
        Ok(d.report)
    }

    /// Failback, second part (writes to the backup frozen): drained again, then the primary active.
    pub async fn drain_and_promote_primary(self: &Arc<Self>, wait: std::time::Duration) -> Result<Record, String> {
        self.fence_and_drain(wait).await?;
        self.promote(Server::Primary).await.map_err(|e| e.to_string())
    }

    /// After a switch: the agent of the server no longer served learns the record (best effort;
    /// its peer's fence tells it anyway).
    pub async fn tell(&self, s: Server) {
        let record = self.held();
        if let Err(e) = self.clients[s].propose(&RoleChange { record, journal_since_ms: None }).await {
            tracing::info!(error = %e, server = s.name(), "the agent learns the new epoch later");
        }
    }
}
