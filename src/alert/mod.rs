//! Alerts: an email on every transition, queued durably, never blocking a role.
//!
//! - [`event`]: the contract roles code against (`AlertEvent`, `AlertSink`).
//! - [`render`] (pure): subject and phone-readable body.
//! - [`policy`] (pure): disabled kinds, flood control (repeats folded into digests).
//! - [`outbox`]: sequence-numbered files under `state_dir/outbox/`.
//! - [`writer`]: applies the outbox's file operations in order, off the callers (fsync included).
//! - [`delivery`]: the sink and the single delivery task that mails the outbox in order.
//! - `sys::smtp`: the SMTP client behind the `Mailer` trait.
//!
//! Roles never wait on SMTP nor on the disk: `emit` queues a file write and returns; only the delivery task talks to the
//! mail server, each send under a hard deadline. `alert-test` bypasses the queue and reports
//! exactly which step failed.

pub mod delivery;
pub mod event;
pub mod notice;
pub mod outbox;
pub mod policy;
pub mod render;
pub mod writer;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use delivery::{DeliverySettings, OutboxSink};
pub use event::{AlertEvent, AlertKind, AlertSink, LogSink, Role};
pub use outbox::OutboxError;

use crate::config::alert::AlertConfig;
use crate::sys::smtp::{Mailer, Outgoing, RcptResult, SmtpMailer};
use crate::timing::Clock;
use delivery::{Control, Shared};
use policy::FloodPolicy;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("alert test failed:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Test {
        /// What was sent to the recipients that accepted it, if any (for the operator).
        sent: Option<String>,
        problems: Vec<String>,
    },
}

/// The running alert pipeline of a process: the sink roles emit into, and its delivery task.
pub struct Alerts {
    pub sink: Arc<dyn AlertSink>,
    delivery: Option<Delivery>,
}

struct Delivery {
    shared: Arc<Mutex<Shared>>,
    control: Arc<Control>,
    handle: JoinHandle<()>,
}

impl Alerts {
    /// Starts delivery for the `[alert]` section `config`, its outbox under `state_dir`, on the current
    /// runtime. Without an `[alert]` section alerts are only logged.
    ///
    /// `_shutdown` is deliberately not watched: alerts raised while a role shuts down must still
    /// go out, so delivery runs until [`Alerts::drain`] ends it.
    pub fn start(
        config: Option<&AlertConfig>,
        state_dir: &Path,
        _shutdown: CancellationToken,
    ) -> Result<Alerts, Error> {
        match config {
            None => Ok(Alerts { sink: Arc::new(LogSink), delivery: None }),
            Some(alert) => Alerts::start_with_mailer(alert, state_dir, SmtpMailer::new(alert.smtp.clone())),
        }
    }

    /// Like [`Alerts::start`] with a given mailer (tests use a fake).
    pub fn start_with_mailer<M: Mailer>(alert: &AlertConfig, state_dir: &Path, mailer: M) -> Result<Alerts, Error> {
        let outbox = outbox::Outbox::open(&state_dir.join("outbox"))?;
        let clock = Clock::start();
        // Flood control carries over from the previous process (`web --once` is one per run):
        // its periods and scheduled digests continue; folded alerts without a digest get one now.
        let mut policy = FloodPolicy::new(alert.flood_period, alert.disabled.clone());
        policy.restore(outbox.load_flood(), clock.now());
        for kind in outbox.folded_kinds() {
            policy.ensure_digest(kind, clock.now());
        }
        if !outbox.is_empty() {
            tracing::info!(waiting = outbox.len(), dir = %outbox.dir().display(), "alerts from a previous run are waiting in the outbox");
        }
        let damaged = damage_alert(outbox.quarantined(), outbox.dir());
        let shared = Arc::new(Mutex::new(Shared { outbox, policy, clock }));
        let control = Arc::new(Control::default());
        let settings = DeliverySettings {
            from: alert.from.clone(),
            to: alert.to.clone(),
            retry_max: alert.retry_max,
            send_deadline: alert.smtp.deadline() + Duration::from_secs(1),
            hostname: hostname(alert),
        };
        let handle = tokio::spawn(delivery::run(shared.clone(), control.clone(), mailer, settings));
        let sink = Arc::new(OutboxSink { shared: shared.clone(), control: control.clone() });
        // Through the sink, so flood control and `disabled` apply: a file that cannot even be moved
        // aside is met again by every `--once` run, but mailed at most once per flood period.
        // Raising it cannot itself quarantine anything, so it cannot loop.
        if let Some(event) = damaged {
            sink.emit(event);
        }
        Ok(Alerts { sink, delivery: Some(Delivery { shared, control, handle }) })
    }

    /// Waits until every outbox file operation so far is on disk (or failed, logged).
    pub async fn flushed(&self) {
        if let Some(d) = &self.delivery {
            let writer = delivery::lock(&d.shared).outbox.writer();
            writer.flushed().await;
        }
    }

    /// Messages queued and not yet accepted by the SMTP server (0 without delivery).
    pub fn pending(&self) -> usize {
        self.delivery.as_ref().map_or(0, |d| delivery::lock(&d.shared).outbox.len())
    }

    /// Ends delivery: sends what this process queued (and what is ahead of it), giving up to
    /// `grace`, and returns at once when the mail server's backoff (kept across processes) is in
    /// force or there is nothing of this process's to send. What is left (and alerts folded for a
    /// digest not yet due) stays in the outbox for the next run.
    pub async fn drain(self, grace: Duration) {
        let Some(mut d) = self.delivery else { return };
        d.control.draining.store(true, Ordering::SeqCst);
        d.control.wake.notify_one();
        if tokio::time::timeout(grace, &mut d.handle).await.is_err() {
            d.control.stop.cancel();
            let _ = d.handle.await;
        }
        // Everything decided must reach the disk before the process ends.
        let writer = delivery::lock(&d.shared).outbox.writer();
        if tokio::time::timeout(grace, writer.flushed()).await.is_err() {
            tracing::error!(
                unwritten = writer.pending(),
                "the state disk did not finish the alert outbox's writes; alerts not yet mailed may be lost"
            );
        }
        let s = delivery::lock(&d.shared);
        let left = s.outbox.len() + s.outbox.folded();
        if left > 0 {
            tracing::warn!(
                left,
                dir = %s.outbox.dir().display(),
                "alerts not yet mailed stay in the outbox for the next start"
            );
        }
    }
}

/// Most damaged files listed in one alert (the log has every one).
const DAMAGE_LISTED: usize = 20;

/// The alert telling the operator what [`outbox::Outbox::open`] moved aside, if anything.
fn damage_alert(quarantined: &[outbox::Quarantined], dir: &std::path::Path) -> Option<AlertEvent> {
    let n = quarantined.len();
    if n == 0 {
        return None;
    }
    let mut lines: Vec<String> = quarantined
        .iter()
        .take(DAMAGE_LISTED)
        .map(|q| match &q.to {
            Some(to) => format!("- {}: {} (now {})", shown(&q.from), q.why, shown(to)),
            None => format!("- {}: {} (could not be moved aside)", shown(&q.from), q.why),
        })
        .collect();
    if n > DAMAGE_LISTED {
        lines.push(format!("- and {} more (see the log)", n - DAMAGE_LISTED));
    }
    let files = if n == 1 { "file" } else { "files" };
    let event = AlertEvent::new(
        AlertKind::OutboxDamaged,
        Role::Alert,
        format!("{n} damaged {files} in the alert outbox moved aside"),
        lines.join("\n"),
    )
    .detail("outbox", shown(dir))
    .next_steps(format!(
        "An alert in these files may never have been mailed: read them in {}.\n\
         Then look for the cause: a crash during a write, a full or failing disk (dmesg), or \
         something else writing into the outbox.",
        shown(&dir.join("dead"))
    ));
    Some(event)
}

/// A path for a message: odd bytes (newline, invalid UTF-8) escaped, without quotes.
#[allow(clippy::unnecessary_debug_formatting)] // Debug's escaping is the point
fn shown(path: &std::path::Path) -> String {
    let debug = format!("{:?}", path.as_os_str());
    debug.strip_prefix('"').and_then(|d| d.strip_suffix('"')).map_or_else(|| debug.clone(), str::to_owned)
}

/// The name shown in subjects: `[alert] hostname`, else the system host name.
fn hostname(alert: &AlertConfig) -> String {
    alert.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
    })
}

/// `nfs-guard alert-test`: sends a test message now, directly (not through the outbox), and
/// reports every problem, one line each: name lookup, connect, TLS, authentication, sender, each
/// rejected recipient. Returns what to tell the operator when a recipient accepted it.
pub async fn test(alert: &AlertConfig) -> Result<Option<String>, Error> {
    test_with_mailer(alert, &SmtpMailer::new(alert.smtp.clone())).await
}

/// [`test`] with a given mailer.
pub async fn test_with_mailer<M: Mailer>(alert: &AlertConfig, mailer: &M) -> Result<Option<String>, Error> {
    let host = hostname(alert);
    let recipients: Vec<String> = alert.to.iter().map(ToString::to_string).collect();
    let event = AlertEvent::new(
        AlertKind::Test,
        Role::Test,
        "test message",
        format!("`nfs-guard alert-test` was run on {host} to check that alert mail arrives"),
    )
    .detail("mail server", alert.smtp.describe())
    .detail("recipients", recipients.join(", "))
    .next_steps("Nothing to do: this node's alerts reach you.");
    let at = SystemTime::now();
    let utc = chrono::DateTime::<chrono::Utc>::from(at);
    let offset = chrono::Offset::fix(&chrono::TimeZone::offset_from_utc_datetime(&chrono::Local, &utc.naive_utc()));
    let rendered = render::render(&[event.at_time(at)], 0, &render::RenderContext { hostname: host, offset });
    let mail = Outgoing {
        from: alert.from.clone(),
        to: alert.to.clone(),
        rcpt: alert.to.iter().map(|m| m.email.clone()).collect(),
        subject: rendered.subject,
        body: rendered.body,
        date: at,
    };
    let report = mailer.send(&mail).await.map_err(|e| Error::Test { sent: None, problems: vec![e.to_string()] })?;
    let mut problems = Vec::new();
    let mut accepted = Vec::new();
    for (addr, r) in &report.rcpt {
        match r {
            RcptResult::Accepted => accepted.push(addr.to_string()),
            RcptResult::Rejected { permanent, reply } => problems.push(format!(
                "recipient rejected{}: {addr}: {reply}",
                if *permanent { "" } else { " for now (try again later)" }
            )),
        }
    }
    let sent = (!accepted.is_empty())
        .then(|| format!("test alert sent via {} to {}", alert.smtp.describe(), accepted.join(", ")));
    if problems.is_empty() {
        Ok(sent)
    } else {
        Err(Error::Test { sent, problems })
    }
}
