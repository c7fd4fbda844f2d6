//! Prometheus metrics (text format 0.0.4, with the `prometheus-client` crate): what a role records,
//! how it is served (`GET /metrics`) and written for `node_exporter`'s textfile collector (`--once`).
//!
//! Recording is one call at the place an event happens (`metrics::web().observe(..)`,
//! `metrics::storage().pushed(..)`), into process-wide handles that cost an atomic add and exist
//! whether or not metrics are enabled; only [`init`] (by the composition root, for the role that
//! runs) decides which families a scrape shows. Nothing here decides anything: the web state
//! machine stays pure, the controller reports its state after each step.
//!
//! Names: `nfsguard_` prefix, base units in the name (`_seconds`, `_bytes`), counters end in `_total`.

pub mod alerts;
pub mod storage;
pub mod web;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{LazyLock, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use alerts::AlertMetrics;
pub use storage::StorageMetrics;
pub use web::WebMetrics;

/// A gauge of seconds (or any fractional value).
pub type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Which role's families a process shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Web,
    Storage,
}

/// Every metric handle of one process, and the registry [`init`] builds from them.
pub struct Metrics {
    pub web: WebMetrics,
    pub storage: StorageMetrics,
    pub alerts: AlertMetrics,
    registry: OnceLock<Registry>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    role: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            web: WebMetrics::default(),
            storage: StorageMetrics::default(),
            alerts: AlertMetrics::default(),
            registry: OnceLock::new(),
        }
    }

    /// Builds the registry of `role` (the first call wins; later ones are ignored).
    pub fn init(&self, role: Role) {
        self.registry.get_or_init(|| {
            let mut r = Registry::default();
            let build: Family<BuildLabels, Gauge> = Family::default();
            let name = match role {
                Role::Web => "web",
                Role::Storage => "storage",
            };
            build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into(), role: name.into() }).set(1);
            r.register("nfsguard_build_info", "Always 1; the labels name the version and the role", build);
            match role {
                Role::Web => self.web.register(&mut r),
                Role::Storage => self.storage.register(&mut r),
            }
            self.alerts.register(&mut r);
            r
        });
    }

    /// The text exposition of everything registered (empty before [`init`]).
    pub fn render(&self) -> String {
        let Some(r) = self.registry.get() else { return String::new() };
        self.storage.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

pub fn web() -> &'static WebMetrics {
    &METRICS.web
}

pub fn storage() -> &'static StorageMetrics {
    &METRICS.storage
}

pub fn alerts() -> &'static AlertMetrics {
    &METRICS.alerts
}

/// Registers `role`'s families in the process's registry.
pub fn init(role: Role) {
    METRICS.init(role);
}

/// `GET /metrics` for an axum router (the storage agent's, or [`serve`]'s own).
/// 404 while metrics are off (no `[storage.metrics]` on an agent host).
pub async fn handler() -> axum::response::Response {
    use axum::response::IntoResponse;
    if get().registry.get().is_none() {
        return (
            axum::http::StatusCode::NOT_FOUND,
            "metrics are off: add a [web.metrics] or [storage.metrics] table\n",
        )
            .into_response();
    }
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], get().render()).into_response()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` now (a clear error at start) and serves `GET /metrics` until `stop`.
pub async fn serve(addr: SocketAddr, stop: CancellationToken) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })?;
    tracing::info!(%addr, "metrics listening");
    let app = axum::Router::new().route("/metrics", axum::routing::get(handler));
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }))
}

/// Writes the metrics to `path` for `node_exporter`'s textfile collector: a temp file beside it
/// (not `*.prom`, so never read half written), renamed over it, readable by the collector's user.
pub fn write_textfile(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    crate::sys::fsutil::write_atomic_nosync(path, get().render().as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
// exact values: small integers and halves
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests;
