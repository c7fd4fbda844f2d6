//! `nfs-guard storage`. Placeholder until the storage issue lands.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::alert::AlertSink;
use crate::cli::StorageArgs;
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the storage role is not implemented yet")]
    NotImplemented,
}

pub async fn run(
    _config: &Config,
    _args: &StorageArgs,
    _alerts: Arc<dyn AlertSink>,
    _shutdown: CancellationToken,
) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
