//! The agent's HTTP API (axum, HTTP/1.1, JSON):
//!
//! | request | auth | answer |
//! |---|---|---|
//! | `GET /v1/role` | none | [`AgentReport`]: server, record, pending, drained, coverage, orphans |
//! | `POST /v1/role` [`RoleChange`] | secret | 200 report; 409 stale epoch or a second truth at one epoch |
//! | `POST /v1/drain` [`DrainRequest`] | secret | 200 when the journal to the peer is empty; 409 not active at that epoch; 504 not in time |
//! | `POST /v1/prune` [`PruneRequest`] | secret | 200 [`PruneReport`](crate::cluster::PruneReport); 409 stale or newer epoch |
//!
//! Changes need the shared secret in the `x-nfs-guard-secret` header (compared in constant time):
//! 401 otherwise. Every refusal carries `{"error": "...", "report": {...}}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::Agent;
use crate::cluster::client::Refusal;
use crate::cluster::{DrainReport, DrainRequest, PruneRequest, RoleChange, SECRET_HEADER};

/// Longest drain a request may ask for.
const MAX_DRAIN: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the agent API")]
pub struct BindError {
    addr: std::net::SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds the API's address now (a clear error at start), serves until `stop`.
pub async fn bind(agent: Arc<Agent>, stop: CancellationToken) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let addr = agent.cfg.listen;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })?;
    tracing::info!(%addr, "agent API listening");
    let app = router(Arc::clone(&agent));
    Ok(tokio::spawn(async move {
        let until = stop.clone();
        let shutdown = async move { until.cancelled().await };
        let served = match agent.tls.clone() {
            Some(tls) => {
                let tls = TlsListener::new(listener, tls, addr, stop);
                axum::serve(tls, app).with_graceful_shutdown(shutdown).await
            }
            None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "agent API stopped");
        }
    }))
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The https API's listener: accepts TCP connections and completes each TLS handshake in a task of
/// its own (a client that never finishes one holds nobody up), then hands the stream to axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn new(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> TlsListener {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    () = stop.cancelled() => return,
                };
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "agent API: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(sock)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "agent API: TLS handshake failed"),
                        Err(_) => tracing::warn!(%peer, "agent API: TLS handshake not done within {HANDSHAKE:?}"),
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/role", get(role).post(change_role))
        .route("/v1/drain", post(drain))
        .route("/v1/prune", post(prune).layer(axum::extract::DefaultBodyLimit::max(8 << 20)))
        .route("/v1/health", get(health))
        .route("/metrics", get(crate::metrics::handler))
        .with_state(agent)
}

fn refuse(agent: &Agent, status: StatusCode, error: String) -> Response {
    (status, Json(Refusal { error, report: Some(agent.report()) })).into_response()
}

fn authorized(agent: &Agent, headers: &HeaderMap) -> bool {
    headers.get(SECRET_HEADER).is_some_and(|v| agent.secret().matches(v.as_bytes()))
}

/// A change request's body as `T`, once the secret matched; the refusal to answer otherwise (401
/// without the secret, 400 for a body that is not a `what`).
fn request<T: serde::de::DeserializeOwned>(
    agent: &Agent,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<T, Box<Response>> {
    if !authorized(agent, headers) {
        tracing::warn!("{what} refused: missing or wrong secret");
        return Err(Box::new(refuse(agent, StatusCode::UNAUTHORIZED, "missing or wrong secret".into())));
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new(refuse(agent, StatusCode::BAD_REQUEST, format!("not a {what}: {e}"))))
}

async fn role(State(agent): State<Arc<Agent>>) -> Response {
    Json(agent.report()).into_response()
}

async fn health(State(agent): State<Arc<Agent>>) -> Response {
    Json(agent.health().await).into_response()
}

async fn change_role(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let change: RoleChange = match request(&agent, &headers, &body, "role change") {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    // In a task of its own: a caller that gives up (its deadline) must not cancel a change half done.
    let a = Arc::clone(&agent);
    let done = tokio::spawn(async move { a.propose(&change).await }).await;
    match done.unwrap_or_else(|e| Err(format!("the role change failed: {e}"))) {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "role change refused");
            refuse(&agent, StatusCode::CONFLICT, e)
        }
    }
}

async fn drain(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let req: DrainRequest = match request(&agent, &headers, &body, "drain request") {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let before = agent.report().pending;
    let wait = Duration::from_millis(req.timeout_ms).min(MAX_DRAIN);
    match agent.drain(req.epoch, wait).await {
        Ok(report) => Json(DrainReport { pushed: before.saturating_sub(report.pending), report }).into_response(),
        Err(e) if e.starts_with("refused") => refuse(&agent, StatusCode::CONFLICT, e),
        Err(e) => refuse(&agent, StatusCode::GATEWAY_TIMEOUT, e),
    }
}

async fn prune(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let req: PruneRequest = match request(&agent, &headers, &body, "prune request") {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    match agent.prune(&req).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "prune refused");
            refuse(&agent, StatusCode::CONFLICT, e)
        }
    }
}
