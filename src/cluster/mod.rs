//! The storage cluster's shared truth and the messages that change it: which server is active, at
//! which epoch. Both storage agents (`storage::agent`) and the web role's decider (`web::agents`)
//! speak it; this module holds only the vocabulary and the HTTP client, no policy.
//!
//! ```text
//!  record = { epoch, active: primary|backup, since }      persisted by every agent (and the decider)
//!
//!  decider --POST /v1/role {epoch N+1, active backup, since}--> backup agent   (failover, BEFORE mount)
//!  decider --POST /v1/role {epoch N+1, active backup}--------> primary agent  (failback step 1: fenced)
//!  decider --POST /v1/drain {epoch N+1}----------------------> backup agent   (journal to primary empty)
//!  decider --POST /v1/role {epoch N+2, active primary}-------> primary, then backup (failback switch)
//!  active  --GET  /v1/role, POST /v1/role {its epoch}--------> its peer, before every push (fence)
//! ```
//!
//! An agent refuses a record with a lower epoch, and one with its own epoch but the other server
//! active: a stale node can never act on old authority.

pub mod client;
pub mod secret;
pub mod tls;

use serde::{Deserialize, Serialize};

pub use crate::domain::Server;

/// The header carrying the shared secret on every request that changes something.
pub const SECRET_HEADER: &str = "x-nfs-guard-secret";

/// The cluster record: who is active since when, at which epoch. Epoch 0 is "never decided": the
/// primary is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub epoch: u64,
    pub active: Server,
    /// Unix milliseconds when this epoch began (as the decider's clock saw it).
    pub since_ms: u64,
}

impl Default for Record {
    fn default() -> Self {
        Record { epoch: 0, active: Server::Primary, since_ms: 0 }
    }
}

/// How an agent takes a proposed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same record it holds: nothing to do.
    Same,
    /// A newer epoch: adopt it.
    Adopt,
    /// A lower epoch, or the same epoch with another server active.
    Refuse,
}

impl Record {
    /// What to do with `proposed` while holding `self`.
    pub fn judge(&self, proposed: &Record) -> Verdict {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match proposed.epoch.cmp(&self.epoch) {
            Equal if proposed.active == self.active => Verdict::Same,
            Less | Equal => Verdict::Refuse,
            Greater => Verdict::Adopt,
        }
    }
}

/// What an agent reports about itself (`GET /v1/role`, and the answer to every change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// Which server this agent runs on.
    pub server: Server,
    pub record: Record,
    /// Changes journaled for the peer and not yet acknowledged (pending + being pushed), and full
    /// syncs owed to it.
    pub pending: u64,
    /// Nothing pending, nothing being pushed, no full sync owed, to the peer.
    pub drained: bool,
    /// Replication lag to the peer: how long changes have been waiting (0 when drained).
    #[serde(default)]
    pub lag_ms: u64,
    /// Unix ms since when this agent has seen every change of its export (it watches from start-up;
    /// a lost event moves it forward). Changes made before it and not replicated are not known.
    pub covered_since_ms: u64,
    /// Orphaned changes of an earlier epoch waiting for the next promotion (see `storage::agent`).
    pub orphans: u64,
}

/// The body of `POST /v1/role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange {
    pub record: Record,
    /// When this makes the agent active: it also journals for its peer the changes it saw since
    /// this unix ms (clients may have written there before it learned its role). Default: the
    /// record's `since_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_since_ms: Option<u64>,
    /// The sender switches clients only after this answer (a promotion before the mount): no client
    /// wrote there under this record yet, so nothing seen before is journaled. Without it, what the
    /// agent saw of its peer's last pushes before the switch went back to the peer at failback,
    /// over the peer's newer, unreplicated writes (found by the chaos test).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prompt: bool,
}

impl RoleChange {
    /// Tells an agent the record, nothing more (a stand-down, or news of the peer's epoch).
    pub fn tell(record: Record) -> RoleChange {
        RoleChange { record, journal_since_ms: None, prompt: false }
    }
}

/// The body of `POST /v1/drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// The epoch the decider drains in: an agent holding another epoch refuses.
    pub epoch: u64,
    /// How long the agent may take (it answers "not drained" after that).
    pub timeout_ms: u64,
}

/// The answer to `POST /v1/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    pub report: AgentReport,
    /// Changes pushed to the peer while the drain ran.
    pub pushed: u64,
}

/// What `GET /v1/health` answers: can clients use this server's export?
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHealth {
    pub ok: bool,
    /// Why not ok, one line each, naming the tree.
    pub problems: Vec<String>,
    /// Lowest free bytes (for unprivileged writers) and free inodes over the trees.
    pub free_bytes: u64,
    pub free_inodes: u64,
    /// This host's NFS server and rsync daemon, when the agent is told where they listen: a dead
    /// NFS server makes the export unusable (not ok); a dead rsync daemon only means the peer
    /// cannot push here (reported, still ok).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceState>,
}

/// One local service the health report looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// `nfs` or `rsyncd`.
    pub name: String,
    pub address: String,
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/prune`: an agent that stopped uncleanly while active tells its peer which paths the
/// peer holds and it does not (deleted or renamed away in the changes it never journaled, or
/// never had). The peer deletes those it has not changed for `unchanged_for_ms` (measured on the
/// sender's clock, applied on the peer's: no clock skew), and never a path that is its own
/// unreplicated work (orphans, conflict copies). See `storage::agent::unclean`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRequest {
    /// The sender's epoch when it stopped (it was active in it).
    pub epoch: u64,
    pub from: Server,
    /// Index of the tree (both agents list the same trees, in the same order).
    pub tree: u32,
    /// The sender's unjournaled window began this long ago.
    pub unchanged_for_ms: u64,
    /// Relative paths, hex-encoded bytes (names are data); a directory ends with `/`.
    pub paths: Vec<String>,
}

/// What the peer did with a [`PruneRequest`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub deleted: u64,
    /// Changed since the window began, its own work, or not empty: kept.
    pub kept: u64,
}

/// Lower-case hex of `b` (paths in JSON, where strings must be UTF-8).
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The bytes of [`hex`] output; `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(epoch: u64, active: Server) -> Record {
        Record { epoch, active, since_ms: 7 }
    }

    #[test]
    fn hex_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)), Some(all));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("+1"), None);
    }

    #[test]
    fn lower_epochs_and_a_second_truth_at_one_epoch_are_refused() {
        let held = r(5, Server::Backup);
        assert_eq!(held.judge(&r(4, Server::Primary)), Verdict::Refuse);
        assert_eq!(held.judge(&r(4, Server::Backup)), Verdict::Refuse);
        assert_eq!(held.judge(&r(5, Server::Primary)), Verdict::Refuse);
        assert_eq!(held.judge(&r(5, Server::Backup)), Verdict::Same);
        assert_eq!(held.judge(&r(6, Server::Primary)), Verdict::Adopt);
        assert_eq!(held.judge(&r(6, Server::Backup)), Verdict::Adopt);
    }
}
