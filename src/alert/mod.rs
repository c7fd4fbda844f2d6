//! Alerts: an email on every transition, queued durably, never blocking a role.
//! Placeholder: delivery is built by the alerts issue; until then events are only logged.

pub mod event;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use event::{AlertEvent, AlertKind, AlertSink, LogSink, Role};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("alert delivery is not configured")]
    NotConfigured,
}

/// The running alert pipeline of a process: the sink roles emit into, and its delivery task.
pub struct Alerts {
    pub sink: Arc<dyn AlertSink>,
}

impl Alerts {
    /// Starts delivery for `config` on the current runtime.
    pub fn start(_config: &Config, _shutdown: CancellationToken) -> Result<Alerts, Error> {
        Ok(Alerts { sink: Arc::new(LogSink) })
    }

    /// Gives queued alerts up to `grace` to be delivered before the process exits; what is left
    /// stays in the outbox for the next run.
    pub async fn drain(self, _grace: Duration) {}
}

/// `nfs-guard alert-test`.
pub async fn test(_config: &Config) -> Result<(), Error> {
    Err(Error::NotConfigured)
}
