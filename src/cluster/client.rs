//! HTTP client of a storage agent's API (blocking `ureq` on the blocking pool, every call under
//! a deadline): used by the web role's decider and by an agent fencing its peer.

use std::sync::Arc;
use std::time::Duration;

use super::secret::Secret;
use super::{
    AgentReport, DrainReport, DrainRequest, ExportHealth, PruneReport, PruneRequest, RoleChange, SECRET_HEADER,
};

/// Why a call did not get the answer asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused, timeout, a broken response.
    #[error("agent {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The agent answered and refused (stale epoch, bad secret, ...); with its report when it sent one.
    #[error("agent {url} refused: {reason}")]
    Refused { url: String, reason: String, report: Option<Box<AgentReport>> },
}

/// The CAs an `https://` agent's certificate must chain to.
pub type Roots = Arc<Vec<ureq::tls::Certificate<'static>>>;

/// One agent's API.
#[derive(Debug, Clone)]
pub struct Client {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    base: String,
    secret: Secret,
    timeout: Duration,
    /// For `https://`: the trusted CAs (without them, none is trusted: the call fails).
    roots: Option<Roots>,
}

impl Client {
    pub fn new(base: &str, secret: Secret, timeout: Duration, roots: Option<Roots>) -> Client {
        Client { base: base.trim_end_matches('/').to_owned(), secret, timeout, roots }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/role`.
    pub async fn report(&self) -> Result<AgentReport, CallError> {
        self.call("/v1/role", None::<&()>, self.timeout).await
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<ExportHealth, CallError> {
        self.call("/v1/health", None::<&()>, self.timeout).await
    }

    /// `POST /v1/role`.
    pub async fn propose(&self, change: &RoleChange) -> Result<AgentReport, CallError> {
        self.call("/v1/role", Some(change), self.timeout).await
    }

    /// `POST /v1/drain`: waits up to `wait` for the agent's journal to its peer to be empty.
    pub async fn drain(&self, epoch: u64, wait: Duration) -> Result<DrainReport, CallError> {
        let timeout_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.call("/v1/drain", Some(&DrainRequest { epoch, timeout_ms }), wait + self.timeout).await
    }

    /// `POST /v1/prune` (a deletion list may take a while on a slow disk: 60 s).
    pub async fn prune(&self, req: &PruneRequest) -> Result<PruneReport, CallError> {
        self.call("/v1/prune", Some(req), Duration::from_secs(60).max(self.timeout)).await
    }

    async fn call<B, T>(&self, path: &str, body: Option<&B>, deadline: Duration) -> Result<T, CallError>
    where
        B: serde::Serialize,
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let secret = self.secret.header();
        let u = url.clone();
        let roots = self.roots.clone();
        let job = tokio::task::spawn_blocking(move || blocking_call(&u, body, &secret, deadline, roots));
        match tokio::time::timeout(deadline + Duration::from_secs(1), job).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(CallError::Unreachable { url, reason: format!("call task failed: {e}") }),
            Err(_) => Err(CallError::Unreachable { url, reason: format!("no answer within {deadline:?}") }),
        }
    }
}

fn blocking_call<T: serde::de::DeserializeOwned>(
    url: &str,
    body: Option<Vec<u8>>,
    secret: &str,
    deadline: Duration,
    roots: Option<Roots>,
) -> Result<T, CallError> {
    // https: only the configured CAs (never the public web's roots: an agent is not a web site)
    let trusted = ureq::tls::RootCerts::Specific(roots.unwrap_or_default());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(deadline))
        .http_status_as_error(false)
        .https_only(false)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(trusted).build())
        .build()
        .into();
    let unreachable = |reason: String| CallError::Unreachable { url: url.to_owned(), reason };
    let resp = match body {
        Some(b) => {
            agent.post(url).header(SECRET_HEADER, secret).header("content-type", "application/json").send(&b[..])
        }
        None => agent.get(url).header(SECRET_HEADER, secret).call(),
    }
    .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let text = resp
        .into_body()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|e| unreachable(format!("unexpected answer ({e}): {text:.200}")));
    }
    let report = serde_json::from_str::<Refusal>(&text).ok();
    Err(CallError::Refused {
        url: url.to_owned(),
        reason: report.as_ref().map_or_else(|| format!("HTTP {status}: {text:.200}"), |r| r.error.clone()),
        report: report.and_then(|r| r.report.map(Box::new)),
    })
}

/// The body of every refusal.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub error: String,
    #[serde(default)]
    pub report: Option<AgentReport>,
}
