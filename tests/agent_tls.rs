//! The agent API over TLS (`tls_cert`/`tls_key`, clients with `tls_ca`): a client that trusts the
//! CA gets answers and can change the role with the secret; one that does not trust it, or speaks
//! plain HTTP to it, gets nothing; a server certificate that does not match its key is a clear
//! error naming both files. Certificates are made by the `openssl` binary (a CA and a server
//! certificate for 127.0.0.1), the API is the real one on loopback.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nfs_guard::cluster::client::{CallError, Client};
use nfs_guard::cluster::secret::Secret;
use nfs_guard::cluster::{tls, Record, RoleChange};
use nfs_guard::config::agent::StorageAgent;
use nfs_guard::domain::Server;
use nfs_guard::storage::agent::{api, Agent};
use nfs_guard::storage::remote::Queue;
use tokio_util::sync::CancellationToken;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`cert.pem`, `key.pem`);
/// a second, unrelated key (`other.key`).
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=lab CA"]]
            .concat(),
    );
    openssl(dir, &[&["req"][..], &ec, &["-keyout", "key.pem", "-out", "req.pem", "-subj", "/CN=agent"]].concat());
    std::fs::write(dir.join("ext.cnf"), "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "req.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=x"]]
            .concat(),
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn agent_config(dir: &Path, port: u16, tls: Option<(PathBuf, PathBuf)>) -> StorageAgent {
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "tls-test-secret-0123456789\n").unwrap();
    StorageAgent {
        server: Server::Backup,
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        secret_file,
        peer: "primary".into(),
        peer_api: "http://127.0.0.1:9".into(),
        timeout: Duration::from_secs(2),
        min_free_bytes: 0,
        min_free_inodes: 0,
        tls,
        tls_ca: None,
        nfs_address: None,
        rsyncd_address: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_api_speaks_tls_to_clients_that_trust_its_ca_only() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    certificates(dir);
    let port = free_port();
    let cfg = agent_config(dir, port, Some((dir.join("cert.pem"), dir.join("key.pem"))));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let queue = Arc::new(Queue::open(&state, "primary", 1000).unwrap());
    let (agent, _control) = Agent::open(&cfg, &state, queue, vec![dir.to_path_buf()]).unwrap();
    let stop = CancellationToken::new();
    let served = api::bind(Arc::clone(&agent), stop.clone()).await.unwrap();

    let secret = Secret::load(&cfg.secret_file).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let trusted =
        Client::new(&url, secret.clone(), Duration::from_secs(5), Some(tls::roots(&dir.join("ca.pem")).unwrap()));
    let report = trusted.report().await.unwrap();
    assert_eq!(report.server, Server::Backup);
    // a role change with the secret goes through TLS too: the standby is told epoch 1, primary active
    let change = RoleChange::tell(Record { epoch: 1, active: Server::Primary, since_ms: 0 });
    assert_eq!(trusted.propose(&change).await.unwrap().record.epoch, 1);

    let untrusted =
        Client::new(&url, secret.clone(), Duration::from_secs(5), Some(tls::roots(&dir.join("other.pem")).unwrap()));
    let e = untrusted.report().await.unwrap_err();
    assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
    let no_roots = Client::new(&url, secret.clone(), Duration::from_secs(5), None);
    assert!(no_roots.report().await.is_err(), "no CA configured: nothing is trusted");
    let plain = Client::new(&format!("http://127.0.0.1:{port}"), secret, Duration::from_secs(5), None);
    assert!(plain.report().await.is_err(), "plain HTTP to the TLS port");
    // the TLS port still answers after the failed handshakes
    assert_eq!(trusted.report().await.unwrap().record.epoch, 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), served).await.unwrap().unwrap();
}

#[test]
fn a_certificate_that_does_not_match_its_key_is_named() {
    let d = tempfile::tempdir().unwrap();
    certificates(d.path());
    let e = tls::server(&d.path().join("cert.pem"), &d.path().join("other.key")).unwrap_err().to_string();
    assert!(e.contains("cert.pem") && e.contains("other.key"), "{e}");
    let e = tls::server(&d.path().join("missing.pem"), &d.path().join("key.pem")).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let e = tls::roots(&d.path().join("ext.cnf")).unwrap_err().to_string();
    assert!(e.contains("ext.cnf") && e.contains("no PEM certificate"), "{e}");
}
