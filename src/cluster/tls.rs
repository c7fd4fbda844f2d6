//! TLS for the agent API (optional): the server's certificate chain and key, and the CA bundle a
//! client trusts, read from PEM files (rustls with ring, no OpenSSL). Without them the API speaks
//! plain HTTP, for a storage network nobody else reaches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certs { path: PathBuf, reason: String },
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the certificate {cert} and the key {key} do not make a TLS server: {reason}")]
    Server { cert: PathBuf, key: PathBuf, reason: String },
}

/// Every certificate of the PEM file `path` (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Certs { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The server side: the chain in `cert` (leaf first) and the key in `key`.
pub fn server(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(cert)?;
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    let bad = |e: rustls::Error| TlsError::Server { cert: cert.to_owned(), key: key.to_owned(), reason: e.to_string() };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(bad)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(bad)?;
    Ok(Arc::new(config))
}

/// The client side: the CAs of the PEM bundle `ca`, as the agent client's trust roots.
pub fn roots(ca: &Path) -> Result<Arc<Vec<ureq::tls::Certificate<'static>>>, TlsError> {
    Ok(Arc::new(certs(ca)?.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect()))
}
