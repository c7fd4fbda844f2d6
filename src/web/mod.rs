//! `nfs-guard web`. Placeholder until the web issue lands.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::alert::AlertSink;
use crate::cli::WebArgs;
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the web role is not implemented yet")]
    NotImplemented,
}

pub async fn run(
    _config: &Config,
    _args: &WebArgs,
    _alerts: Arc<dyn AlertSink>,
    _shutdown: CancellationToken,
) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
