//! The web role as a member of a farm (`[cluster]`, implemented in `farm`): the interface the
//! controller follows, and the effects a follower runs. The state machine stays as it is and pure:
//! the controller feeds it the farm's verdict ([`Follow::follow`]) instead of its own, and a
//! follower never drives the storage agents nor copies the backup back itself (the farm's leader
//! drains the backup's journal once for every node before it flips the record to the primary).
//! Without `[cluster]` none of this is built: a single node runs exactly as before.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::agents::Agents;
use super::effects::{Mounter, Prober, SyncStats, Syncer, SysEffects, Target};
use super::fsm::{Server, Snapshot};
use super::health::Failure;
use crate::alert::{AlertEvent, AlertKind, AlertSink};
use crate::config::web::WebConfig;

/// The farm as the controller sees it.
pub trait Follow: Send + Sync + 'static {
    /// The snapshot the state machine decides on, from this node's own (published to the farm,
    /// with the server the node serves).
    fn follow(&self, local: Snapshot, serving: Option<Server>) -> Snapshot;
    /// Resolves once the farm's record names the primary (the leader drained the backup first).
    fn primary_released(&self) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Starts the farm for this node: `(web config, state dir, the storage agents, alerts, shutdown)`.
pub type FarmStart =
    Box<dyn FnOnce(&WebConfig, &Path, Arc<Agents>, Arc<dyn AlertSink>, CancellationToken) -> Arc<dyn Follow> + Send>;

/// What a farm node's state machine notices on its way back while it only waits for the record
/// (the primary is up again, its "reverse sync" started and succeeded with 0 files): the leader's
/// drain is the farm's failback, mailed once by the leader (`farm::node`), not by every node.
pub const FOLDED: [AlertKind; 3] =
    [AlertKind::PrimaryRecovered, AlertKind::ReverseSyncStarted, AlertKind::ReverseSyncSucceeded];

/// The alerts of a farm node's controller: everything goes to `inner` except the [`FOLDED`] kinds,
/// which the controller has logged already.
pub struct FollowerAlerts {
    inner: Arc<dyn AlertSink>,
}

impl FollowerAlerts {
    pub fn new(inner: Arc<dyn AlertSink>) -> FollowerAlerts {
        FollowerAlerts { inner }
    }
}

impl AlertSink for FollowerAlerts {
    fn emit(&self, event: AlertEvent) {
        if FOLDED.contains(&event.kind) {
            tracing::info!(kind = event.kind.name(), "not mailed: the farm's leader mails the failback");
        } else {
            self.inner.emit(event);
        }
    }
}

/// A follower's effects: the real mounts and checks of a node without agents or reverse sync (so
/// nothing here calls an agent or pushes a tree); the failback's "reverse sync" is waiting for the
/// leader's drain, and its switch keeps no old mount (there is nothing left to catch up).
pub struct Followed {
    inner: SysEffects,
    farm: Arc<dyn Follow>,
}

impl Followed {
    pub fn new(cfg: &WebConfig, state_dir: &Path, farm: Arc<dyn Follow>) -> Followed {
        let mut local = cfg.clone();
        local.agents = None;
        local.reverse_sync = None;
        Followed { inner: SysEffects::new(&local, state_dir, None), farm }
    }
}

fn nothing() -> SyncStats {
    SyncStats { files: 0, bytes: 0, elapsed_ms: 0 }
}

impl Prober for Followed {
    fn probe(&self, target: Target, canary: bool) -> impl Future<Output = Result<(), Failure>> + Send + 'static {
        self.inner.probe(target, canary)
    }
}

impl Mounter for Followed {
    fn mounted(&self) -> Option<Server> {
        self.inner.mounted()
    }

    fn mount(&self, server: Server) -> impl Future<Output = Result<Option<u64>, String>> + Send + 'static {
        self.inner.mount(server)
    }

    fn staged_switch(
        &self,
        to: Server,
        _keep_old: bool,
    ) -> impl Future<Output = Result<Option<u64>, (String, Option<Server>)>> + Send + 'static {
        self.inner.staged_switch(to, false)
    }

    fn after_switch(&self, server: Server, old_mount: Option<u64>) -> impl Future<Output = String> + Send + 'static {
        self.inner.after_switch(server, old_mount)
    }
}

impl Syncer for Followed {
    fn reverse_sync(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        let released = self.farm.primary_released();
        async move {
            released.await;
            Ok(nothing())
        }
    }

    fn catch_up(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        std::future::ready(Ok(nothing()))
    }

    fn reconcile(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        // As with agents: the backup's agent keeps what it could not push, delivered at its next
        // promotion; nothing is copied blindly over the primary.
        std::future::ready(Ok(nothing()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::alert::Role;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<AlertKind>>);

    impl AlertSink for Recorder {
        fn emit(&self, event: AlertEvent) {
            self.0.lock().expect("recorder lock").push(event.kind);
        }
    }

    #[test]
    fn a_farm_node_mails_everything_but_the_failback_notices_the_leader_folds() {
        let rec = Arc::new(Recorder::default());
        let sink = FollowerAlerts::new(rec.clone());
        for kind in AlertKind::ALL {
            sink.emit(AlertEvent::new(kind, Role::Web, "t", "r"));
        }
        let passed = rec.0.lock().expect("recorder lock").clone();
        let want: Vec<AlertKind> = AlertKind::ALL.into_iter().filter(|k| !FOLDED.contains(k)).collect();
        assert_eq!(passed, want);
        // the failures of a failback are still every node's to mail
        assert!(passed.contains(&AlertKind::ReverseSyncFailed) && passed.contains(&AlertKind::FailbackCompleted));
    }
}
