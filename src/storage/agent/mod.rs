//! The storage agent: this storage host knows its role in the cluster (`cluster::Record`), serves
//! the agent API (`api`), and directs replication by it:
//!
//! * **active**: every change of the export is journaled for the peer and pushed (as without an
//!   agent), but only to a peer that has acknowledged this agent's epoch (the fence, [`Agent::admit`]
//!   before every push): a returning old primary learns the newer epoch there and stands down
//!   instead of pushing stale data.
//! * **standby**: changes (the active peer's pushes, or clients of a web node that switched before
//!   telling this agent) are only remembered (`ring`), never pushed, so nothing echoes back. When
//!   promoted, what it saw since the switch is journaled for the peer.
//! * **demoted** with unpushed changes: they are orphans (`orphans`): kept under conflict names
//!   until the next promotion, then delivered or kept as both versions.
//!
//! Who persists what, in order: the agent writes its record (`agent.json`, atomically, fsync'd)
//! BEFORE it acts on it and before it answers; the replicator loop journals the promoted changes
//! before the agent reports itself active; orphans are persisted before their journal entries go.

pub mod api;
pub mod duty;
pub mod health;
pub mod orphans;
pub mod ring;
pub mod unclean;

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::remote::Queue;
use crate::cluster::client::{CallError, Client};
use crate::cluster::secret::{Secret, SecretError};
use crate::cluster::{AgentReport, PruneReport, PruneRequest, Record, RoleChange, Verdict};
use crate::config::agent::StorageAgent;
use crate::domain::Server;
use crate::sys::fsutil;

/// Clocks of the decider and the agents may differ by this much: a promotion journals the changes
/// seen since its `journal_since_ms` minus this margin (an echo of the peer's own pushes costs a
/// no-op rsync; a missed client write would be lost).
pub const CLOCK_MARGIN_MS: u64 = 10_000;

/// How long one export health check answers for.
pub const HEALTH_TTL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read the agent's record {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Tls(#[from] crate::cluster::tls::TlsError),
}

/// What the replicator loop does for the agent (it owns the ring, the batcher and the watchers).
#[derive(Debug)]
pub enum Control {
    /// Journal for the peer what the ring saw since this unix ms (and resolved orphans), then
    /// become active.
    Promote { journal_since_ms: u64, done: oneshot::Sender<()> },
    /// Stop pushing; quarantine what is still queued for the peer (of epoch `epoch`).
    Demote { epoch: u64, done: oneshot::Sender<()> },
    /// Everything seen until now pushed to the peer, before `deadline`.
    Drain { deadline: tokio::time::Instant, done: oneshot::Sender<Result<(), String>> },
}

pub struct Agent {
    pub cfg: StorageAgent,
    secret: Secret,
    dir: PathBuf,
    /// Serializes role changes (held across persisting and the loop's action).
    change: tokio::sync::Mutex<()>,
    record: Mutex<Record>,
    /// Pushes to the peer allowed (set by the replicator loop, after it acted on a promotion).
    active: AtomicBool,
    pub covered_since_ms: AtomicU64,
    pub orphans: AtomicU64,
    control: mpsc::Sender<Control>,
    peer: Client,
    peer_queue: Arc<Queue>,
    /// The export's trees (for the health check).
    roots: Vec<PathBuf>,
    last_health: Mutex<Option<(std::time::Instant, health::Health)>>,
    /// The last fence failure logged (to log it once per kind, not per batch).
    last_fence_error: Mutex<String>,
    /// The API speaks https with this.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The record file under the storage state directory.
pub fn record_file(dir: &Path) -> PathBuf {
    dir.join("agent.json")
}

/// `EPOCH UNIX_MS PROMPT`: when this agent adopted its record (its own clock), and whether before
/// any web node moved its clients (a `prompt` promotion).
fn adopted_file(dir: &Path) -> PathBuf {
    dir.join("adopted")
}

/// When this agent adopted epoch `epoch` (unix ms, its clock) and whether promptly, if it recorded it.
fn adopted(dir: &Path, epoch: u64) -> Option<(u64, bool)> {
    let text = fsutil::read_capped_string(&adopted_file(dir), 128).ok()?;
    let mut f = text.split_whitespace();
    if f.next()?.parse::<u64>().ok()? != epoch {
        return None;
    }
    Some((f.next()?.parse().ok()?, f.next() == Some("1")))
}

impl Agent {
    /// Opens the agent's record under `dir` (epoch 0, primary active, when there is none yet).
    pub fn open(
        cfg: &StorageAgent,
        dir: &Path,
        peer_queue: Arc<Queue>,
        roots: Vec<PathBuf>,
    ) -> Result<(Arc<Agent>, mpsc::Receiver<Control>), AgentError> {
        let path = record_file(dir);
        let record = match fsutil::read_capped(&path, 64 * 1024) {
            Ok(b) => serde_json::from_slice::<Record>(&b).map_err(|e| AgentError::Read {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(source) => return Err(AgentError::Read { path, source }),
        };
        let secret = Secret::load(&cfg.secret_file)?;
        let trusted = cfg.tls_ca.as_deref().map(crate::cluster::tls::roots).transpose()?;
        let tls = cfg.tls.as_ref().map(|(cert, key)| crate::cluster::tls::server(cert, key)).transpose()?;
        let (tx, rx) = mpsc::channel(16);
        let orphans = orphans::load(dir).ok().flatten().map_or(0, |o| o.list.len() as u64);
        let agent = Agent {
            peer: Client::new(&cfg.peer_api, secret.clone(), cfg.timeout, trusted),
            tls,
            cfg: cfg.clone(),
            secret,
            dir: dir.to_owned(),
            change: tokio::sync::Mutex::new(()),
            active: AtomicBool::new(record.active == cfg.server),
            record: Mutex::new(record),
            covered_since_ms: AtomicU64::new(crate::cluster::now_ms()),
            orphans: AtomicU64::new(orphans),
            control: tx,
            peer_queue,
            roots,
            last_health: Mutex::new(None),
            last_fence_error: Mutex::new(String::new()),
        };
        tracing::info!(
            server = cfg.server.name(),
            epoch = record.epoch,
            active = record.active.name(),
            "storage agent"
        );
        Ok((Arc::new(agent), rx))
    }

    pub fn record(&self) -> Record {
        *self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Called by the replicator loop only.
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::SeqCst);
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn report(&self) -> AgentReport {
        let (pending, owed) = self.peer_queue.depth();
        AgentReport {
            server: self.cfg.server,
            record: self.record(),
            pending: (pending + self.peer_queue.in_flight()) as u64 + owed.len() as u64,
            drained: self.peer_queue.idle(),
            lag_ms: u64::try_from(self.peer_queue.lag().as_millis()).unwrap_or(u64::MAX),
            covered_since_ms: self.covered_since_ms.load(Ordering::SeqCst),
            orphans: self.orphans.load(Ordering::SeqCst),
        }
    }

    /// Takes a proposed record: refused (with why) when stale, adopted (persisted first, then acted
    /// on by the replicator loop) when newer.
    pub async fn propose(&self, change: &RoleChange) -> Result<AgentReport, String> {
        let _serial = self.change.lock().await;
        let held = self.record();
        let me = self.cfg.server;
        match held.judge(&change.record) {
            Verdict::Refuse => {
                return Err(format!(
                    "refused: epoch {} with {} active, while this agent holds epoch {} with {} active",
                    change.record.epoch,
                    change.record.active.name(),
                    held.epoch,
                    held.active.name()
                ))
            }
            Verdict::Same => {
                if held.active == me && !change.prompt {
                    if let Some(js) = change.journal_since_ms {
                        // taken before, maybe after the sender gave up waiting: clients may have
                        // written since the switch (journaling twice is harmless)
                        let since = js.saturating_sub(CLOCK_MARGIN_MS);
                        self.ask(|done| Control::Promote { journal_since_ms: since, done }).await?;
                    }
                }
                return Ok(self.report());
            }
            Verdict::Adopt => {}
        }
        let bytes = serde_json::to_vec(&change.record).map_err(|e| e.to_string())?;
        let path = record_file(&self.dir);
        fsutil::write_atomic(&path, &bytes)
            .map_err(|e| format!("cannot persist the record {}: {e}", path.display()))?;
        // when (on this host's clock) this epoch began here: a late prune never reaches past it
        let adopted = format!("{} {} {}", change.record.epoch, crate::cluster::now_ms(), u8::from(change.prompt));
        if let Err(e) = fsutil::write_atomic(&adopted_file(&self.dir), adopted.as_bytes()) {
            tracing::warn!(error = %e, "cannot persist when the record was adopted");
        }
        tracing::warn!(
            epoch = change.record.epoch,
            active = change.record.active.name(),
            previous_epoch = held.epoch,
            previous_active = held.active.name(),
            "cluster record changed"
        );
        let (was, now) = (held.active == me, change.record.active == me);
        if now && !was {
            // prompt: nobody wrote here under this record yet (nothing seen before goes back)
            let since = if change.prompt {
                crate::cluster::now_ms()
            } else {
                change.journal_since_ms.unwrap_or(change.record.since_ms).saturating_sub(CLOCK_MARGIN_MS)
            };
            self.ask(|done| Control::Promote { journal_since_ms: since, done }).await?;
        } else if was && !now {
            self.ask(|done| Control::Demote { epoch: held.epoch, done }).await?;
        }
        // Shown (to the peer's fence, to the decider) only once acted on: a peer never pushes into
        // this export before its orphans are quarantined.
        *self.record.lock().unwrap_or_else(PoisonError::into_inner) = change.record;
        Ok(self.report())
    }

    /// Asks the replicator loop to drain the peer's journal before `wait` runs out.
    pub async fn drain(&self, epoch: u64, wait: Duration) -> Result<AgentReport, String> {
        let held = self.record();
        if held.epoch != epoch || held.active != self.cfg.server {
            return Err(format!(
                "refused: drain at epoch {epoch}, while this agent holds epoch {} with {} active",
                held.epoch,
                held.active.name()
            ));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Drain { deadline, done: tx }).await.map_err(|_| "the replicator is stopping")?;
        match tokio::time::timeout(wait + Duration::from_secs(1), rx).await {
            Ok(Ok(Ok(()))) => Ok(self.report()),
            Ok(Ok(Err(e))) => Err(e),
            _ => Err(format!("not drained within {wait:?}")),
        }
    }

    /// Hands `msg` to the replicator loop and waits until it acted, however long a quarantine of
    /// many orphans takes (the caller's own deadline may run out; the change still completes, and
    /// the record is shown once it did). A wedged loop is the watchdog's to end.
    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Control) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.control.send(msg(tx)).await.map_err(|_| "the replicator is stopping".to_owned())?;
        rx.await.map_err(|_| "the replicator stopped before acting on the role change".to_owned())
    }

    /// The fence, before every push to the peer: only while active, and only to a peer that holds
    /// this agent's epoch (told so here when it holds an older one). A peer holding a newer epoch
    /// makes this agent adopt it (and stand down).
    pub async fn admit(&self) -> bool {
        if !self.is_active() {
            return false;
        }
        let mine = self.record();
        let peer = match self.peer.report().await {
            Ok(p) => p,
            Err(e) => {
                self.fence_error(&e.to_string());
                return false;
            }
        };
        match mine.judge(&peer.record) {
            Verdict::Same => {
                self.fence_error("");
                true
            }
            Verdict::Adopt => {
                tracing::warn!(
                    peer_epoch = peer.record.epoch,
                    my_epoch = mine.epoch,
                    "the peer holds a newer epoch: standing down"
                );
                if let Err(e) = self.propose(&RoleChange::tell(peer.record)).await {
                    tracing::error!(error = %e, "cannot adopt the peer's newer record");
                }
                false
            }
            Verdict::Refuse if peer.record.epoch < mine.epoch => {
                match self.peer.propose(&RoleChange::tell(mine)).await {
                    Ok(_) => true,
                    Err(CallError::Refused { reason, .. }) => {
                        self.fence_error(&format!("the peer refused this agent's epoch: {reason}"));
                        false
                    }
                    Err(e) => {
                        self.fence_error(&e.to_string());
                        false
                    }
                }
            }
            Verdict::Refuse => {
                self.fence_error(&format!(
                    "the peer holds epoch {} with {} active: two truths at one epoch; nothing is pushed",
                    peer.record.epoch,
                    peer.record.active.name()
                ));
                false
            }
        }
    }

    fn fence_error(&self, e: &str) {
        let mut last = self.last_fence_error.lock().unwrap_or_else(PoisonError::into_inner);
        if *last != e {
            if e.is_empty() {
                tracing::info!("the peer acknowledges this agent's epoch: pushing");
            } else {
                tracing::warn!(error = e, "not pushing to the peer");
            }
            e.clone_into(&mut last);
        }
    }

    /// The export's health (see `health`), within the agent's call deadline. A result younger than
    /// [`HEALTH_TTL`] is answered again: every web node asks with every check (5 times a second by
    /// default), and each check is an fsync'd write on the export.
    pub async fn health(&self) -> health::Health {
        if let Some((at, h)) = &*self.last_health.lock().unwrap_or_else(PoisonError::into_inner) {
            if at.elapsed() < HEALTH_TTL {
                return h.clone();
            }
        }
        let limits =
            health::Limits { min_free_bytes: self.cfg.min_free_bytes, min_free_inodes: self.cfg.min_free_inodes };
        let services = health::Services { nfs: self.cfg.nfs_address, rsyncd: self.cfg.rsyncd_address };
        let h = health::check(self.roots.clone(), limits, services, self.cfg.timeout).await;
        *self.last_health.lock().unwrap_or_else(PoisonError::into_inner) = Some((std::time::Instant::now(), h.clone()));
        h
    }

    /// This agent's server.
    pub fn server(&self) -> Server {
        self.cfg.server
    }

    /// The peer's API.
    pub fn peer(&self) -> &Client {
        &self.peer
    }

    /// Deletes what the peer deleted or renamed away in changes it never journaled (its unclean
    /// stop, see `unclean`): only paths unchanged here since its window began, and, when a switch
    /// came between (the prune is one epoch late), since that switch began too; never this
    /// agent's orphans. Refused when the peer claims a newer epoch (it must tell its record
    /// first), a second truth at this epoch, or an epoch older than the previous one.
    pub async fn prune(&self, req: &PruneRequest) -> Result<PruneReport, String> {
        let held = self.record();
        let now = crate::cluster::now_ms();
        let mut cutoff = now.saturating_sub(req.unchanged_for_ms).saturating_sub(unclean::SLACK_MS);
        if req.from == self.cfg.server {
            return Err("refused: a prune from this agent's own server".into());
        }
        let mut moved_since = None;
        if req.epoch == held.epoch {
            if held.active != req.from {
                return Err(format!(
                    "refused: prune from {} as active at epoch {}, where {} is active",
                    req.from.name(),
                    req.epoch,
                    held.active.name()
                ));
            }
        } else if req.epoch.checked_add(1) == Some(held.epoch) {
            // Clients may have written here since the switch: nothing from then on goes, nor
            // what moved in with a directory they renamed. A prompt promotion came before any web
            // node moved (this host's clock); otherwise the decider's switch time counts too (its
            // clock: the margin). What they changed and this agent has not pushed yet stays too.
            let switched = held.since_ms.saturating_sub(CLOCK_MARGIN_MS);
            let since = match adopted(&self.dir, held.epoch) {
                Some((at, true)) => at.saturating_sub(unclean::SLACK_MS),
                Some((at, false)) => at.min(switched),
                None => switched,
            };
            cutoff = cutoff.min(since);
            moved_since = Some(since);
        } else {
            return Err(format!(
                "refused: prune at epoch {}, while this agent holds epoch {} (too old, or tell the record first)",
                req.epoch, held.epoch
            ));
        }
        let root = self.roots.get(req.tree as usize).cloned().ok_or_else(|| format!("no tree {}", req.tree))?;
        let paths: Vec<Vec<u8>> = req
            .paths
            .iter()
            .map(|p| crate::cluster::unhex(p).ok_or_else(|| format!("not a hex path: {p:.80}")))
            .collect::<Result<_, _>>()?;
        let mut own = std::collections::HashSet::new();
        if let Ok(Some(o)) = orphans::load(&self.dir) {
            for x in o.list.into_iter().filter(|x| x.tree == req.tree) {
                own.extend(x.copy.map(|(c, _, _)| c));
                own.insert(x.path);
            }
        }
        // this agent's own changes not pushed yet (a renamed directory's contents go with it)
        let mut whole = Vec::new();
        for e in self.peer_queue.unpushed(req.tree) {
            if e.scope.recursive() {
                whole.push(e.path.clone());
            }
            own.insert(e.path.into_os_string().into_vec());
        }
        let mine = move |p: &[u8]| {
            own.contains(p) || whole.iter().any(|w| Path::new(std::ffi::OsStr::from_bytes(p)).starts_with(w))
        };
        let from = req.from;
        let done = tokio::task::spawn_blocking(move || unclean::prune(&root, &paths, cutoff, moved_since, &mine))
            .await
            .map_err(|e| format!("the prune failed: {e}"))?;
        tracing::warn!(
            from = from.name(),
            deleted = done.deleted,
            kept = done.kept,
            "pruned what the peer deleted without journaling it (its unclean stop)"
        );
        Ok(done)
    }
}

impl super::remote::Gate for Agent {
    fn admit(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(Agent::admit(self))
    }
}
