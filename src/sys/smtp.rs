//! SMTP delivery of one message, behind the small [`Mailer`] trait so the outbox can be tested with
//! a fake. The real [`SmtpMailer`] speaks SMTP through lettre (rustls, no OpenSSL) one step at a
//! time instead of through `AsyncSmtpTransport::send`, for two reasons:
//!
//! - **Per-recipient outcome.** lettre's transport aborts the whole message at the first rejected
//!   `RCPT TO`; we want the accepted recipients to get the alert and each rejection reported alone.
//! - **Exact diagnosis.** Every step (name lookup, TCP connect, greeting, TLS, AUTH, sender,
//!   recipients, data) is tracked, so `alert-test` and the logs say which one failed, and a server
//!   that accepts the connection and then stalls is reported as such.
//!
//! Every step has its own timeout and the whole send a hard deadline ([`SmtpSettings::deadline`]),
//! so no SMTP server can hold the caller longer than that. Secrets (password file, extra CA file)
//! are read at each send, so fixing them needs no restart and a broken file never stops a role.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::{Address, Message};
use tokio::time::timeout;

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS (submission, port 587). Fails if the server does not offer it.
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption: only for a relay on the same host or a trusted network (port 25).
    None,
}

impl Security {
    pub fn name(self) -> &'static str {
        match self {
            Security::StartTls => "starttls",
            Security::Tls => "tls",
            Security::None => "none",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Security::StartTls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }
}

/// Where and how to submit mail (validated from `[alert]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// AUTH user; `password_file` is set exactly when this is.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Extra trust anchor (PEM), added to the built-in web PKI roots, e.g. for a private CA.
    pub ca_file: Option<PathBuf>,
    /// Deadline for the name lookup and for the TCP connect (and, for implicit TLS, the handshake).
    pub connect_timeout: Duration,
    /// Deadline for each SMTP command's reply.
    pub command_timeout: Duration,
}

impl SmtpSettings {
    /// The hard deadline for one whole send: a backstop above the per-step timeouts, so even a
    /// server that trickles bytes cannot hold a delivery longer than this.
    pub fn deadline(&self) -> Duration {
        self.connect_timeout * 2 + self.command_timeout * 6
    }

    /// `host:port (security[, auth as user])`, for messages.
    pub fn describe(&self) -> String {
        let auth = self.user.as_ref().map(|u| format!(", auth as {u}")).unwrap_or_default();
        format!("{}:{} ({}{auth})", self.host, self.port, self.security.name())
    }
}

/// One message to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub from: Mailbox,
    /// The `To:` header (every configured recipient).
    pub to: Vec<Mailbox>,
    /// The envelope recipients for this attempt (those not yet served).
    pub rcpt: Vec<Address>,
    pub subject: String,
    pub body: String,
    pub date: SystemTime,
}

/// What the server said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// Accepted at `RCPT TO` and the message was then accepted at end of `DATA`.
    Accepted,
    /// Refused at `RCPT TO` (5xx: permanent; 4xx: try again later).
    Rejected { permanent: bool, reply: String },
}

/// The outcome of a send that reached the recipients step: one result per envelope recipient.
/// When no recipient was accepted, no message was transferred.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendReport {
    pub rcpt: Vec<(Address, RcptResult)>,
}

impl SendReport {
    pub fn accepted(&self) -> impl Iterator<Item = &Address> {
        self.rcpt.iter().filter(|(_, r)| *r == RcptResult::Accepted).map(|(a, _)| a)
    }
}

/// The step of a send, for diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the password or CA file, building the message.
    Config,
    Lookup,
    Connect,
    /// Server greeting and EHLO.
    Greeting,
    Tls,
    Auth,
    /// `MAIL FROM`.
    Sender,
    Recipients,
    /// `DATA` and the message itself.
    Data,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Config => "preparing the message",
            Stage::Lookup => "name lookup",
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Tls => "TLS",
            Stage::Auth => "authentication",
            Stage::Sender => "sender",
            Stage::Recipients => "recipients",
            Stage::Data => "message data",
        }
    }
}

/// A send that failed before any recipient got the message, with the step it failed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub stage: Stage,
    /// A 5xx reply: retrying the same thing will fail the same way.
    pub permanent: bool,
    /// One line for a human, naming the operands (host, address, user, file).
    pub message: String,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.stage.name(), self.message)
    }
}

impl std::error::Error for SendError {}

impl SendError {
    pub fn new(stage: Stage, message: impl Into<String>) -> Self {
        SendError { stage, permanent: false, message: message.into() }
    }
}

/// Submits one message. Implementations must bound their own run time; callers add a deadline too.
pub trait Mailer: Send + Sync + 'static {
    fn send(&self, mail: &Outgoing) -> impl Future<Output = Result<SendReport, SendError>> + Send;
}

/// The real SMTP client.
#[derive(Debug, Clone)]
pub struct SmtpMailer {
    settings: SmtpSettings,
}

impl SmtpMailer {
    pub fn new(settings: SmtpSettings) -> Self {
        SmtpMailer { settings }
    }

    pub fn settings(&self) -> &SmtpSettings {
        &self.settings
    }

    async fn attempt(&self, stage: &mut Stage, mail: &Outgoing) -> Result<SendReport, SendError> {
        let s = &self.settings;
        let hello = ClientId::default();
        *stage = Stage::Config;
        let credentials = self.credentials()?;
        let tls = self.tls_parameters()?;
        let bytes = build_message(mail)?;

        *stage = Stage::Lookup;
        let addrs = lookup(&s.host, s.port, s.connect_timeout).await?;

        *stage = Stage::Connect;
        let mut conn = match (s.security, tls) {
            (Security::Tls, Some(tls)) => self.connect_implicit_tls(&addrs, &hello, tls, stage).await?,
            (_, tls) => {
                let tcp = connect(&addrs, s.connect_timeout).await?;
                *stage = Stage::Greeting;
                let conn = self
                    .step(Stage::Greeting, AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello))
                    .await?;
                match (s.security, tls) {
                    (Security::StartTls, Some(tls)) => {
                        *stage = Stage::Tls;
                        let mut conn = conn;
                        if !conn.server_info().supports_feature(Extension::StartTls) {
                            return Err(SendError::new(
                                Stage::Tls,
                                format!("{} does not offer STARTTLS (use security = \"tls\" or \"none\")", s.host),
                            ));
                        }
                        self.step(Stage::Tls, conn.starttls(tls, &hello)).await?;
                        conn
                    }
                    _ => conn,
                }
            }
        };

        if let Some(creds) = credentials {
            *stage = Stage::Auth;
            let user = s.user.clone().unwrap_or_default();
            self.step(Stage::Auth, conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds))
                .await
                .map_err(|e| SendError { message: format!("as user {user:?}: {}", e.message), ..e })?;
        }

        *stage = Stage::Sender;
        let mut params = Vec::new();
        if !bytes.is_ascii() {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        self.step(Stage::Sender, conn.command(Mail::new(Some(mail.from.email.clone()), params)))
            .await
            .map_err(|e| SendError { message: format!("{} refused: {}", mail.from.email, e.message), ..e })?;

        *stage = Stage::Recipients;
        let mut report = SendReport::default();
        for rcpt in &mail.rcpt {
            let result = match timeout(s.command_timeout, conn.command(Rcpt::new(rcpt.clone(), Vec::new()))).await {
                Ok(Ok(_)) => RcptResult::Accepted,
                Ok(Err(e)) if e.is_permanent() || e.is_transient() => {
                    RcptResult::Rejected { permanent: e.is_permanent(), reply: reply_text(&e) }
                }
                Ok(Err(e)) => return Err(SendError::new(Stage::Recipients, format!("{rcpt}: {}", chain(&e)))),
                Err(_) => return Err(self.no_reply(Stage::Recipients)),
            };
            report.rcpt.push((rcpt.clone(), result));
        }
        if report.accepted().next().is_none() {
            let _ = timeout(s.command_timeout, conn.quit()).await;
            return Ok(report);
        }

        *stage = Stage::Data;
        self.step(Stage::Data, conn.command(Data)).await?;
        self.step(Stage::Data, conn.message(&bytes)).await?;
        // The message is accepted; a failing QUIT changes nothing.
        let _ = timeout(s.command_timeout, conn.quit()).await;
        Ok(report)
    }

    /// Implicit TLS: lettre connects and handshakes in one call, so tell connect from TLS
    /// failures by the I/O error kind (a refused or timed-out connect vs anything else).
    async fn connect_implicit_tls(
        &self,
        addrs: &[SocketAddr],
        hello: &ClientId,
        tls: TlsParameters,
        stage: &mut Stage,
    ) -> Result<AsyncSmtpConnection, SendError> {
        let s = &self.settings;
        let mut last = SendError::new(Stage::Connect, format!("{}: no address", s.host));
        for addr in addrs {
            let fut =
                AsyncSmtpConnection::connect_tokio1(*addr, Some(s.connect_timeout), hello, Some(tls.clone()), None);
            match timeout(s.connect_timeout + s.command_timeout, fut).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => {
                    let stage_of = if e.is_response() || e.is_permanent() || e.is_transient() {
                        Stage::Greeting
                    } else if is_connect_error(&e) {
                        Stage::Connect
                    } else {
                        Stage::Tls
                    };
                    *stage = stage_of;
                    let text = if stage_of == Stage::Tls { tls_text(&e) } else { chain(&e) };
                    last = SendError::new(stage_of, format!("{addr}: {text}"));
                    if stage_of != Stage::Connect {
                        return Err(last);
                    }
                }
                Err(_) => {
                    last = SendError::new(
                        Stage::Tls,
                        format!(
                            "{addr}: connected but no TLS handshake and greeting within {}",
                            human(s.connect_timeout + s.command_timeout)
                        ),
                    );
                }
            }
        }
        Err(last)
    }

    /// Runs one SMTP step under the command timeout, mapping lettre's error.
    async fn step<T>(
        &self,
        stage: Stage,
        fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, SendError> {
        match timeout(self.settings.command_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if stage == Stage::Tls => {
                Err(SendError::new(stage, format!("{}: {}", self.settings.host, tls_text(&e))))
            }
            Ok(Err(e)) => Err(SendError { stage, permanent: e.is_permanent(), message: chain(&e) }),
            Err(_) => Err(self.no_reply(stage)),
        }
    }

    fn no_reply(&self, stage: Stage) -> SendError {
        SendError::new(
            stage,
            format!("{} sent no reply within {}", self.settings.host, human(self.settings.command_timeout)),
        )
    }

    fn credentials(&self) -> Result<Option<Credentials>, SendError> {
        let (Some(user), Some(file)) = (&self.settings.user, &self.settings.password_file) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| SendError::new(Stage::Config, format!("cannot read password file {}: {e}", file.display())))?;
        let password = text.trim_end_matches(['\r', '\n']).to_owned();
        Ok(Some(Credentials::new(user.clone(), password)))
    }

    fn tls_parameters(&self) -> Result<Option<TlsParameters>, SendError> {
        let s = &self.settings;
        if s.security == Security::None {
            return Ok(None);
        }
        let mut builder = TlsParameters::builder(s.host.clone());
        if let Some(ca) = &s.ca_file {
            let cert = read_ca_file(ca).map_err(|m| SendError::new(Stage::Config, m))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build_rustls()
            .map(Some)
            .map_err(|e| SendError::new(Stage::Tls, format!("cannot set up TLS: {}", chain(&e))))
    }
}

impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Outgoing) -> Result<SendReport, SendError> {
        let deadline = self.settings.deadline();
        let mut stage = Stage::Config;
        let result = timeout(deadline, self.attempt(&mut stage, mail)).await;
        match result {
            Ok(result) => result,
            Err(_) => Err(SendError::new(
                stage,
                format!("{} did not finish within {} (hard deadline)", self.settings.describe(), human(deadline)),
            )),
        }
    }
}

/// Reads an extra CA certificate (PEM). Used by config validation and by each send.
pub fn read_ca_file(path: &std::path::Path) -> Result<Certificate, String> {
    // Bounded and non-blocking: a FIFO or /dev/zero here must not hang check-config or a send.
    let pem = crate::sys::fsutil::read_capped(path, 1 << 20)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    Certificate::from_pem(&pem).map_err(|e| format!("{} is not a PEM certificate: {}", path.display(), chain(&e)))
}

async fn lookup(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, SendError> {
    match timeout(limit, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(SendError::new(Stage::Lookup, format!("{host} has no address")))
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(SendError::new(Stage::Lookup, format!("cannot resolve {host}: {e}"))),
        Err(_) => Err(SendError::new(Stage::Lookup, format!("no answer resolving {host} within {}", human(limit)))),
    }
}

/// Connects to the first address that answers.
async fn connect(addrs: &[SocketAddr], limit: Duration) -> Result<tokio::net::TcpStream, SendError> {
    let mut problems = Vec::new();
    for addr in addrs {
        match timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => problems.push(format!("{addr}: {}", io_text(&e))),
            Err(_) => problems.push(format!("{addr}: timed out after {}", human(limit))),
        }
    }
    Err(SendError::new(Stage::Connect, problems.join("; ")))
}

fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused (nothing listens there)".to_owned(),
        _ => e.to_string(),
    }
}

fn is_connect_error(e: &lettre::transport::smtp::Error) -> bool {
    use std::io::ErrorKind::{AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable, TimedOut};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            );
        }
        cur = err.source();
    }
    false
}

fn build_message(mail: &Outgoing) -> Result<Vec<u8>, SendError> {
    let mut builder = Message::builder().from(mail.from.clone()).subject(mail.subject.clone()).date(mail.date);
    for to in &mail.to {
        builder = builder.to(to.clone());
    }
    let message = builder
        .header(ContentType::TEXT_PLAIN)
        .body(mail.body.clone())
        .map_err(|e| SendError::new(Stage::Config, format!("cannot build the message: {e}")))?;
    Ok(message.formatted())
}

/// The server's reply text for a negative response, e.g. `550 5.1.1 <x@y>: user unknown`.
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    let code = e.status().map(|c| c.to_string()).unwrap_or_default();
    let text = std::error::Error::source(e).map(ToString::to_string).unwrap_or_default();
    format!("{code} {text}").trim().to_owned()
}

/// A TLS failure in words: lettre nests its connection errors, the innermost one says what went
/// wrong (e.g. `invalid peer certificate: UnknownIssuer`); add the usual fix for certificate trouble.
fn tls_text(e: &lettre::transport::smtp::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    if text.contains("certificate") {
        format!("{text} (ca_file must hold the CA that signed the server's certificate, which must name smtp_host)")
    } else {
        text
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    crate::chain::render_chain(e)
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_follow_security() {
        assert_eq!(Security::StartTls.default_port(), 587);
        assert_eq!(Security::Tls.default_port(), 465);
        assert_eq!(Security::None.default_port(), 25);
    }

    #[test]
    fn describe_names_host_port_security_and_user() {
        let s = SmtpSettings {
            host: "mail.example.com".into(),
            port: 587,
            security: Security::StartTls,
            user: Some("alert".into()),
            password_file: Some("/etc/pw".into()),
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
        };
        assert_eq!(s.describe(), "mail.example.com:587 (starttls, auth as alert)");
        assert_eq!(s.deadline(), Duration::from_secs(70));
    }

    #[test]
    fn message_is_plain_text_with_every_recipient_in_to() {
        let mail = Outgoing {
            from: "nfs-guard <ng@example.com>".parse().unwrap(),
            to: vec!["a@example.com".parse().unwrap(), "b@example.com".parse().unwrap()],
            rcpt: vec!["a@example.com".parse().unwrap()],
            subject: "[nfs-guard] web01 web: test".into(),
            body: "hello\n".into(),
            date: SystemTime::UNIX_EPOCH,
        };
        let text = String::from_utf8(build_message(&mail).unwrap()).unwrap();
        assert!(text.contains("Subject: [nfs-guard] web01 web: test\r\n"), "{text}");
        assert!(text.contains("To: a@example.com, b@example.com\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\n"), "{text}");
        assert!(text.ends_with("hello\r\n"), "{text}");
    }
}
