//! The farm's keys in etcd, and one session: a client, this node's lease and the task that keeps
//! it alive. Every call is bounded by [`CALL_LIMIT`]; a failed call ends the session (the next
//! round connects again with a new lease). Knows nothing of decisions.
//!
//! ```text
//!   <prefix>/record          {active, epoch, since_ms, by}   no lease; changed only by compare-and-swap
//!   <prefix>/leader          node name                       under the leader's lease; created if absent
//!   <prefix>/obs/<node>      {primary, backup}               under the node's lease
//!   <prefix>/serves/<node>   {serving, epoch}                under the node's lease
//! ```

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::decide::{FarmRecord, Observation, Serves};
use crate::config::cluster::ClusterConfig;

/// Deadline of one etcd call.
pub const CALL_LIMIT: Duration = Duration::from_secs(3);

/// Everything under the prefix, read in one range request.
#[derive(Debug, Clone, Default)]
pub struct Farm {
    /// The record and its modification revision (0: never written).
    pub record: Option<FarmRecord>,
    pub record_rev: i64,
    /// The leader's node name.
    pub leader: Option<String>,
    /// The leader key is this session's (name AND lease: a second node configured with the same
    /// name never takes itself for the leader).
    pub leading: bool,
    pub obs: Vec<(String, Observation)>,
    pub serves: Vec<(String, Serves)>,
}

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_owned() }
    }
    pub fn record(&self) -> String {
        format!("{}/record", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn obs(&self, node: &str) -> String {
        format!("{}/obs/{node}", self.prefix)
    }
    pub fn serves(&self, node: &str) -> String {
        format!("{}/serves/{node}", self.prefix)
    }
}

pub struct Session {
    client: Client,
    lease: i64,
    lease_kept: bool,
    alive: watch::Receiver<bool>,
    keepalive: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_LIMIT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd {what}: {e}")),
        Err(_) => Err(format!("etcd {what}: no answer within {CALL_LIMIT:?}")),
    }
}

fn options(cfg: &ClusterConfig) -> Result<ConnectOptions, String> {
    let mut o = ConnectOptions::new().with_connect_timeout(CALL_LIMIT).with_timeout(CALL_LIMIT);
    if let Some((user, file)) = &cfg.auth {
        let pw = crate::sys::fsutil::read_capped_string(file, crate::config::MAX_SECRET_BYTES)
            .map_err(|e| format!("cluster.password_file {}: {e}", file.display()))?;
        o = o.with_user(user.clone(), pw.trim_end_matches(['\n', '\r']).to_owned());
    }
    if let Some(t) = &cfg.tls {
        let read = |key: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cluster.tls.{key} {}: {e}", p.display()))
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca_file", &t.ca_file)?));
        if let Some((cert, key)) = &t.identity {
            tls = tls.identity(Identity::from_pem(read("cert_file", cert)?, read("key_file", key)?));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

impl Session {
    /// Connects to `endpoint` (one member: the client's own balancing kept sending requests to a
    /// dead member, failing most rounds until it came back; the farm moves to the next endpoint
    /// after a failed round instead), grants a lease of `cfg.lease_ttl` and keeps it alive (every
    /// third of the TTL) until the session is dropped or etcd stops renewing it. With `keep`, the
    /// lease of this node's previous session is renewed instead if it is still alive: leases are
    /// the cluster's, so a node whose member failed a round keeps its keys and, if it led, the lead
    /// (a new lease would leave the leader key with the old one until it expires: no leader for a
    /// TTL). [`Session::lease_kept`] says which.
    pub async fn open(cfg: &ClusterConfig, endpoint: &str, keep: Option<i64>) -> Result<Session, String> {
        let opts = options(cfg)?;
        let mut client = bounded("connect", Client::connect([endpoint], Some(opts))).await?;
        let kept = match keep {
            // an expired lease answers with a TTL of 0 or less; any failure: a new lease
            Some(lease) => match bounded("lease keep-alive", client.lease_keep_alive(lease)).await {
                Ok((mut keeper, mut stream)) => {
                    let renewed = async {
                        keeper.keep_alive().await?;
                        stream.message().await
                    };
                    match bounded("lease keep-alive", renewed).await {
                        Ok(Some(r)) if r.ttl() > 0 => Some((lease, keeper, stream)),
                        _ => None,
                    }
                }
                Err(_) => None,
            },
            None => None,
        };
        let lease_kept = kept.is_some();
        let (lease, mut keeper, mut stream) = if let Some(k) = kept {
            k
        } else {
            let ttl = i64::try_from(cfg.lease_ttl.as_secs()).unwrap_or(i64::MAX).max(2);
            let lease = bounded("lease grant", client.lease_grant(ttl, None)).await?.id();
            let (keeper, stream) = bounded("lease keep-alive", client.lease_keep_alive(lease)).await?;
            (lease, keeper, stream)
        };
        let (tx, alive) = watch::channel(true);
        let every = cfg.lease_ttl / 3;
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let renewed = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match tokio::time::timeout(CALL_LIMIT, renewed).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    other => {
                        tracing::warn!(lease, outcome = ?other.map(|r| r.map(|m| m.map(|m| m.ttl()))), "farm: lease not renewed");
                        let _ = tx.send(false);
                        return;
                    }
                }
            }
        });
        Ok(Session { client, lease, lease_kept, alive, keepalive })
    }

    pub fn alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// This session's lease (to keep it in the next session: [`Session::open`]).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease is the previous session's, renewed (not a new grant).
    pub fn lease_kept(&self) -> bool {
        self.lease_kept
    }

    /// The leader key's value for `me` in this session: `<name> <lease>`.
    fn token(&self, me: &str) -> String {
        format!("{me} {:x}", self.lease)
    }

    /// Puts `value` at `key` under this session's lease.
    pub async fn put_leased(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let opts = PutOptions::new().with_lease(self.lease);
        bounded("put", self.client.put(key, value, Some(opts))).await.map(drop)
    }

    /// Becomes leader if nobody is: creates the leader key under this lease if it is absent.
    pub async fn campaign(&mut self, keys: &Keys, me: &str) -> Result<bool, String> {
        let key = keys.leader();
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            self.token(me),
            Some(PutOptions::new().with_lease(self.lease)),
        )]);
        Ok(bounded("campaign", self.client.txn(txn)).await?.succeeded())
    }

    /// Gives up the lead (deletes the leader key if it is still `me`): another node takes it.
    pub async fn resign(&mut self, keys: &Keys, me: &str) -> Result<bool, String> {
        let txn = Txn::new()
            .when([Compare::value(keys.leader(), CompareOp::Equal, self.token(me))])
            .and_then([TxnOp::delete(keys.leader(), None)]);
        Ok(bounded("resign", self.client.txn(txn)).await?.succeeded())
    }

    /// Writes `record` if the record is still at `rev` (0: absent) and `me` still leads.
    pub async fn swap_record(&mut self, keys: &Keys, me: &str, rev: i64, record: &FarmRecord) -> Result<bool, String> {
        let bytes = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(keys.record(), CompareOp::Equal, rev),
                Compare::value(keys.leader(), CompareOp::Equal, self.token(me)),
            ])
            .and_then([TxnOp::put(keys.record(), bytes, None)]);
        Ok(bounded("record compare-and-swap", self.client.txn(txn)).await?.succeeded())
    }

    /// Everything under the prefix (see [`parse`]).
    pub async fn read(&mut self, keys: &Keys, me: &str) -> Result<Farm, String> {
        let prefix = format!("{}/", keys.prefix);
        let resp = bounded("range", self.client.get(prefix.clone(), Some(GetOptions::new().with_prefix()))).await?;
        let entries = resp.kvs().iter().map(|kv| (kv.key(), kv.value(), kv.mod_revision()));
        Ok(parse(&prefix, &self.token(me), entries))
    }

    /// Revokes the lease (a stopping node leaves the farm at once instead of after the TTL).
    pub async fn leave(mut self) {
        let _ = bounded("lease revoke", self.client.lease_revoke(self.lease)).await;
    }
}

/// The farm from the `(key, value, mod revision)` entries under `prefix` (with its trailing `/`);
/// `token` is this session's leader value. Values that do not parse are logged and skipped, and
/// keys the farm does not know are ignored (a key written by hand must not stop the farm).
pub fn parse<'a>(prefix: &str, token: &str, entries: impl Iterator<Item = (&'a [u8], &'a [u8], i64)>) -> Farm {
    let mut farm = Farm::default();
    for (key, value, rev) in entries {
        let Some(name) = key.strip_prefix(prefix.as_bytes()) else { continue };
        let name = String::from_utf8_lossy(name);
        let parsed = match name.split_once('/') {
            None if name == "record" => serde_json::from_slice(value).map(|r| {
                farm.record = Some(r);
                farm.record_rev = rev;
            }),
            None if name == "leader" => {
                let v = String::from_utf8_lossy(value);
                farm.leading = v == token;
                farm.leader = Some(v.split(' ').next().unwrap_or_default().to_owned());
                Ok(())
            }
            Some(("obs", node)) if !node.is_empty() => {
                serde_json::from_slice(value).map(|o| farm.obs.push((node.to_owned(), o)))
            }
            Some(("serves", node)) if !node.is_empty() => {
                serde_json::from_slice(value).map(|s| farm.serves.push((node.to_owned(), s)))
            }
            _ => Ok(()),
        };
        if let Err(e) = parsed {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "farm: unreadable value skipped");
        }
    }
    farm
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::{Server, Status};

    fn farm(entries: &[(&str, &str)], token: &str) -> Farm {
        parse(
            "/f/",
            token,
            entries.iter().enumerate().map(|(i, (k, v))| (k.as_bytes(), v.as_bytes(), i64::try_from(i).unwrap() + 7)),
        )
    }

    #[test]
    fn every_key_of_the_farm_is_read() {
        let f = farm(
            &[
                ("/f/record", r#"{"active":"backup","epoch":3,"since_ms":5,"by":"w1"}"#),
                ("/f/leader", "w1 6f"),
                ("/f/obs/w1", r#"{"primary":"down","backup":"up"}"#),
                ("/f/serves/w1", r#"{"serving":"backup","epoch":3}"#),
            ],
            "w1 6f",
        );
        let r = f.record.unwrap();
        assert_eq!((r.active, r.epoch, r.switching, f.record_rev), (Server::Backup, 3, false, 7));
        assert_eq!((f.leader.as_deref(), f.leading), (Some("w1"), true));
        assert_eq!(f.obs, [("w1".to_owned(), Observation { primary: Status::Down, backup: Status::Up })]);
        assert_eq!(f.serves, [("w1".to_owned(), Serves { serving: Some(Server::Backup), epoch: Some(3) })]);
    }

    #[test]
    fn a_second_node_with_the_same_name_is_not_the_leader() {
        let f = farm(&[("/f/leader", "w1 6f")], "w1 70");
        assert_eq!((f.leader.as_deref(), f.leading), (Some("w1"), false));
    }

    #[test]
    fn garbage_and_foreign_keys_are_skipped_not_fatal() {
        let f = farm(
            &[
                ("/f/record", "{not json"),
                ("/f/obs/w2", "[]"),
                ("/f/obs/", r#"{"primary":"up","backup":"up"}"#),
                ("/f/serves/w\n3", r#"{"serving":null,"epoch":null}"#),
                ("/f/other/thing", "x"),
                ("/elsewhere/record", r#"{"active":"backup","epoch":3,"since_ms":5,"by":"w1"}"#),
            ],
            "w1 6f",
        );
        assert_eq!((f.record, f.record_rev, f.leader, f.leading), (None, 0, None, false));
        assert!(f.obs.is_empty());
        assert_eq!(f.serves, [("w\n3".to_owned(), Serves { serving: None, epoch: None })]);
    }
}
