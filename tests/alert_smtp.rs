//! The real SMTP client (`sys::smtp::SmtpMailer`) and the `alert-test` command against a small
//! scripted SMTP server on loopback: per-recipient results, AUTH, a server that accepts and then
//! stalls, a refused connection, a missing STARTTLS. (TLS and the real aiosmtpd server are covered
//! by the lab tests in `alert_lab.rs`.)
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nfs_guard::sys::smtp::{Mailer, Outgoing, RcptResult, Security, SmtpMailer, SmtpSettings, Stage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// base64("\0alert\0secret"): AUTH PLAIN for user `alert`, password `secret`.
const PLAIN_ALERT_SECRET: &str = "AGFsZXJ0AHNlY3JldA==";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Recipients whose local part starts with `reject` get 550, `later` get 451.
    Normal,
    /// Like Normal, and MAIL FROM needs AUTH PLAIN alert/secret first.
    RequireAuth,
    /// Accepts the connection, never says a word.
    Stall,
}

/// One received message: envelope recipients and data.
type Received = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// Serves SMTP on 127.0.0.1 until the test ends; returns the port and the received messages.
async fn server(behaviour: Behaviour) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let store = store.clone();
            tokio::spawn(async move {
                if behaviour == Behaviour::Stall {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(sock);
                    return;
                }
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let mut authed = false;
                let mut rcpt = Vec::new();
                w.write_all(b"220 test ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: String = if upper.starts_with("EHLO") {
                        "250-test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME".into()
                    } else if upper.starts_with("AUTH PLAIN") {
                        authed = line.ends_with(PLAIN_ALERT_SECRET);
                        if authed { "235 2.7.0 ok" } else { "535 5.7.8 authentication credentials invalid" }.into()
                    } else if upper.starts_with("MAIL FROM") {
                        rcpt.clear();
                        if behaviour == Behaviour::RequireAuth && !authed {
                            "530 5.7.0 authentication required".into()
                        } else {
                            "250 ok".into()
                        }
                    } else if upper.starts_with("RCPT TO:<REJECT") {
                        "550 5.1.1 no such user".into()
                    } else if upper.starts_with("RCPT TO:<LATER") {
                        "451 4.2.0 try later".into()
                    } else if upper.starts_with("RCPT TO:") {
                        rcpt.push(line[9..line.len() - 1].to_owned());
                        "250 ok".into()
                    } else if upper == "DATA" {
                        w.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        store.lock().unwrap().push((rcpt.clone(), data));
                        "250 queued".into()
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        "502 not implemented".into()
                    };
                    w.write_all(format!("{reply}\r\n").as_bytes()).await.unwrap();
                }
            });
        }
    });
    (port, received)
}

fn settings(port: u16, security: Security) -> SmtpSettings {
    SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        security,
        user: None,
        password_file: None,
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(1),
    }
}

fn mail(rcpt: &[&str]) -> Outgoing {
    Outgoing {
        from: "nfs-guard <ng@example.com>".parse().unwrap(),
        to: rcpt.iter().map(|r| r.parse().unwrap()).collect(),
        rcpt: rcpt.iter().map(|r| r.parse().unwrap()).collect(),
        subject: "[nfs-guard] web01 web: failover to backup completed".into(),
        body: "Servers:\n  primary: down\n".into(),
        date: SystemTime::now(),
    }
}

#[tokio::test]
async fn accepted_recipients_get_the_message_and_each_rejection_is_reported() {
    let (port, received) = server(Behaviour::Normal).await;
    let m = SmtpMailer::new(settings(port, Security::None));
    let report = m
        .send(&mail(&["a@example.com", "reject-b@example.com", "later-c@example.com", "d@example.com"]))
        .await
        .unwrap();
    let results: Vec<(String, RcptResult)> = report.rcpt.iter().map(|(a, r)| (a.to_string(), r.clone())).collect();
    assert_eq!(
        results,
        [
            ("a@example.com".to_owned(), RcptResult::Accepted),
            (
                "reject-b@example.com".to_owned(),
                RcptResult::Rejected { permanent: true, reply: "550 5.1.1 no such user".into() }
            ),
            (
                "later-c@example.com".to_owned(),
                RcptResult::Rejected { permanent: false, reply: "451 4.2.0 try later".into() }
            ),
            ("d@example.com".to_owned(), RcptResult::Accepted),
        ]
    );
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, ["a@example.com", "d@example.com"]);
    assert!(got[0].1.contains("Subject: [nfs-guard] web01 web: failover to backup completed\n"), "{}", got[0].1);
    assert!(got[0].1.contains("  primary: down\n"), "{}", got[0].1);
}

#[tokio::test]
async fn no_accepted_recipient_means_no_message() {
    let (port, received) = server(Behaviour::Normal).await;
    let m = SmtpMailer::new(settings(port, Security::None));
    let report = m.send(&mail(&["reject-a@example.com"])).await.unwrap();
    assert_eq!(report.accepted().count(), 0);
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn auth_with_the_password_file() {
    let (port, received) = server(Behaviour::RequireAuth).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    let mut s = settings(port, Security::None);
    s.user = Some("alert".into());
    s.password_file = Some(pw.clone());
    let m = SmtpMailer::new(s.clone());
    let e = m.send(&mail(&["a@example.com"])).await.unwrap_err();
    assert_eq!(e.stage, Stage::Auth);
    assert!(e.permanent);
    assert_eq!(
        e.to_string(),
        "authentication failed: as user \"alert\": permanent error (535): 5.7.8 authentication credentials invalid"
    );

    // Read at each send: fixing the file needs no restart.
    std::fs::write(&pw, "secret\n").unwrap();
    m.send(&mail(&["a@example.com"])).await.unwrap();
    assert_eq!(received.lock().unwrap().len(), 1);

    std::fs::remove_file(&pw).unwrap();
    let e = m.send(&mail(&["a@example.com"])).await.unwrap_err();
    assert_eq!(e.stage, Stage::Config);
    assert!(e.to_string().contains(&format!("cannot read password file {}", pw.display())), "{e}");

    // No AUTH at all: the sender is refused with the server's reason.
    let e = SmtpMailer::new(settings(port, Security::None)).send(&mail(&["a@example.com"])).await.unwrap_err();
    assert_eq!(e.stage, Stage::Sender);
    assert!(e.to_string().contains("ng@example.com refused: permanent error (530)"), "{e}");
}

#[tokio::test]
async fn a_server_that_accepts_and_stalls_is_abandoned_at_the_deadline() {
    let (port, _) = server(Behaviour::Stall).await;
    let m = SmtpMailer::new(settings(port, Security::None));
    let t = Instant::now();
    let e = m.send(&mail(&["a@example.com"])).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert_eq!(e.stage, Stage::Greeting);
    assert_eq!(e.to_string(), "greeting failed: 127.0.0.1 sent no reply within 1s");
}

#[tokio::test]
async fn refused_connection_and_missing_starttls_are_named() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = SmtpMailer::new(settings(port, Security::None)).send(&mail(&["a@example.com"])).await.unwrap_err();
    assert_eq!(e.to_string(), format!("connect failed: 127.0.0.1:{port}: connection refused (nothing listens there)"));

    let (port, _) = server(Behaviour::Normal).await;
    let e = SmtpMailer::new(settings(port, Security::StartTls)).send(&mail(&["a@example.com"])).await.unwrap_err();
    assert_eq!(e.stage, Stage::Tls);
    assert!(e.to_string().starts_with("TLS failed: 127.0.0.1 does not offer STARTTLS"), "{e}");
}

fn alert_test(port: u16, to: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    // private, as a state directory should be (else check-config warns on stderr)
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let cfg = dir.path().join("n.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[alert]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsecurity = \"none\"\n\
             from = \"ng@example.com\"\nto = [{to}]\nhostname = \"web01\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"2s\"\n",
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_nfs-guard"))
        .args(["--config", cfg.to_str().unwrap(), "-q", "alert-test"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_test_command_reports_success_and_each_problem() {
    let (port, received) = server(Behaviour::Normal).await;
    let (code, out, err) =
        tokio::task::spawn_blocking(move || alert_test(port, "\"a@example.com\", \"reject-b@example.com\""))
            .await
            .unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out, format!("test alert sent via 127.0.0.1:{port} (none) to a@example.com\n"));
    assert_eq!(
        err,
        "nfs-guard: alert test failed:\n  recipient rejected: reject-b@example.com: 550 5.1.1 no such user\n"
    );
    let got = received.lock().unwrap().clone();
    assert!(got[0].1.contains("Subject: [nfs-guard] web01 test: test message"), "{}", got[0].1);

    let (code, _, _) = tokio::task::spawn_blocking(move || alert_test(port, "\"a@example.com\"")).await.unwrap();
    assert_eq!(code, Some(0));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, out, err) = tokio::task::spawn_blocking(move || alert_test(closed, "\"a@example.com\"")).await.unwrap();
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!("nfs-guard: alert test failed:\n  connect failed: 127.0.0.1:{closed}: connection refused (nothing listens there)\n")
    );
}
