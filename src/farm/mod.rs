//! The web farm (`[cluster]`): several web nodes agree through etcd on which NFS server they all
//! serve, so a fault between ONE node and the primary never splits the farm, and a failback drains
//! the backup once for every node. See docs/farm.md for the protocol and its failure table.
//!
//! ```text
//!   controller --follow(local snapshot, serving)--> Link --watch--> node loop (every interval)
//!        ^                                                            |  put obs/<me>, serves/<me>  (my lease)
//!        |  decide::follow(local, View)                               |  range <prefix>/            (one read)
//!        +---------------------- View {record, connected} <----------+  leader? -> decide -> agents -> CAS record
//! ```
//!
//! The state machine (`web::fsm`) stays pure and unchanged: it is fed the farm's verdict instead of
//! the node's own ([`decide::follow`]), and a follower's effects (`web::follow::Followed`) never
//! drive the agents. Owns: the etcd session, the leader's decision and its agent calls. Must not:
//! touch mounts (the controller does), or decide anything while etcd is unreachable (unless
//! `autonomy = true`, and then only through the node's own checks).

pub mod decide;
mod node;
pub mod store;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::alert::AlertSink;
use crate::config::cluster::ClusterConfig;
use crate::config::web::WebConfig;
use crate::domain::Server;
use crate::web::agents::Agents;
use crate::web::follow::{FarmStart, Follow};
use crate::web::fsm::Snapshot;
use decide::{Observation, View};

/// What the controller last told the farm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub obs: Observation,
    pub serving: Option<Server>,
}

/// The controller's side of the farm.
pub struct Link {
    local: watch::Sender<Option<Local>>,
    view: watch::Receiver<View>,
}

impl Follow for Link {
    fn follow(&self, local: Snapshot, serving: Option<Server>) -> Snapshot {
        self.local.send_replace(Some(Local {
            obs: Observation { primary: local.status.primary, backup: local.status.backup },
            serving,
        }));
        decide::follow(&local, serving, &self.view.borrow())
    }

    fn primary_released(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut view = self.view.clone();
        Box::pin(async move {
            // a record naming the primary, not an absent one: a record deleted by hand never
            // releases a failback without the leader's drain
            let _ =
                view.wait_for(|v| v.connected && v.record.as_ref().is_some_and(|r| r.active == Server::Primary)).await;
        })
    }
}

/// How `web` starts the farm for `cluster` (called by `app`, the composition root).
pub fn starter(cluster: ClusterConfig) -> FarmStart {
    Box::new(
        move |web: &WebConfig,
              state_dir: &Path,
              agents: Arc<Agents>,
              alerts: Arc<dyn AlertSink>,
              shutdown: CancellationToken| { start(cluster, web, state_dir, agents, alerts, shutdown) },
    )
}

fn start(
    cfg: ClusterConfig,
    web: &WebConfig,
    state_dir: &Path,
    agents: Arc<Agents>,
    alerts: Arc<dyn AlertSink>,
    shutdown: CancellationToken,
) -> Arc<dyn Follow> {
    let (local_tx, local_rx) = watch::channel(None);
    // Not connected until the first round: a node starting while etcd is down keeps what it serves
    // (see `decide::follow`).
    let (view_tx, view_rx) = watch::channel(View { record: None, connected: false, autonomy: cfg.autonomy });
    tracing::info!(node = %cfg.name, endpoints = %cfg.endpoints.join(","), policy = cfg.policy.name(), "farm: joining");
    // nodes start on different members (any member serves the farm)
    let endpoint = cfg.name.bytes().map(usize::from).sum();
    let n = node::Node {
        keys: store::Keys::new(&cfg.prefix),
        interval: web.interval,
        hold_down_ms: u64::try_from(web.hold_down.as_millis()).unwrap_or(u64::MAX),
        cfg,
        agents,
        alerts,
        local: local_rx,
        view: view_tx,
        state_dir: state_dir.to_owned(),
        session: None,
        last_lease: None,
        endpoint,
        lost_since: None,
        lost_alerted: false,
        isolated_alerted: false,
        leader: decide::Leader::default(),
        last_status: Vec::new(),
        no_campaign_until: None,
        published: (None, None),
    };
    tokio::spawn(n.run(shutdown));
    Arc::new(Link { local: local_tx, view: view_rx })
}
