//! The outbox sink roles emit into, and the one delivery task that mails the outbox in order.
//!
//! ```text
//!  roles ──emit()──▶ OutboxSink ──(flood policy)──▶ outbox ◀──head/remove── delivery task ──▶ Mailer (SMTP)
//!                                                    └──file ops, in order──▶ writer (blocking pool, fsync)
//!                         └──────────── wake (Notify) ───────────────────────────────────▶┘
//! ```
//!
//! `emit` only decides (pure policy) and hands one file write to the outbox's ordered writer; it
//! never waits for the network nor the disk.
//! The delivery task is the only thing that talks to SMTP: it sends the oldest message, each send
//! under a hard deadline, and while the server is down retries with exponential backoff and
//! jitter. The shared state is behind a mutex that is never held across an await.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone, Utc};
use lettre::message::Mailbox;
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::event::{AlertEvent, AlertSink};
use super::outbox::{Outbox, Queued, RetryState};
use super::policy::{Admit, FloodPolicy};
use super::render::{render, RenderContext};
use crate::sys::smtp::{Mailer, Outgoing, RcptResult, SendError, Stage};
use crate::timing::{self, Backoff, Clock};

/// First retry delay after a failed send; doubles up to `retry_max`.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// A recipient that keeps answering 4xx is given up after this many attempts, so one full mailbox
/// cannot hold every later alert back forever.
const MAX_TRANSIENT_ATTEMPTS: u32 = 10;

/// How delivery addresses and paces mail.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub retry_max: Duration,
    /// Hard deadline for one send (above the mailer's own timeouts).
    pub send_deadline: Duration,
    /// Name shown in subjects.
    pub hostname: String,
}

pub(crate) struct Shared {
    pub(crate) outbox: Outbox,
    pub(crate) policy: FloodPolicy,
    pub(crate) clock: Clock,
}

impl Shared {
    /// Saves the flood-control state for the next process; failing only weakens flood control.
    fn save_flood(&self) {
        self.outbox.save_flood(&self.policy.snapshot());
    }
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic elsewhere ends the process anyway (panic = restart); keep delivering meanwhile.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Signals between the [`super::Alerts`] handle, the sink and the delivery task.
#[derive(Default)]
pub(crate) struct Control {
    /// Something was queued or folded, or drain began.
    pub(crate) wake: Notify,
    /// Shutting down: unless the backoff is in force, send up to the newest message this process
    /// queued, stopping at the first failure; then stop. Open digests are not sent early: their
    /// alerts stay folded on disk and the next process mails the digest when the period ends.
    pub(crate) draining: AtomicBool,
    /// Stop now (grace is over); an in-flight send is abandoned, its file stays.
    pub(crate) stop: CancellationToken,
}

/// The sink the roles hold: policy decision plus one durable write, then a wake-up.
pub struct OutboxSink {
    pub(crate) shared: Arc<Mutex<Shared>>,
    pub(crate) control: Arc<Control>,
}

impl AlertSink for OutboxSink {
    fn emit(&self, event: AlertEvent) {
        let kind = event.kind.name();
        let title = event.title.clone();
        let mut s = lock(&self.shared);
        let now = s.clock.now();
        let before = s.policy.kind_state(event.kind);
        let admitted = s.policy.admit(event.kind, now);
        let changed = s.policy.kind_state(event.kind) != before;
        match admitted {
            Admit::Drop => {
                tracing::info!(kind, reason = %event.reason, "alert not mailed ({kind} is in [alert] disabled): {title}");
            }
            Admit::Send => {
                let seq = s.outbox.enqueue(vec![event]);
                tracing::info!(seq, kind, "alert queued: {title}");
            }
            Admit::Fold => {
                let seq = s.outbox.fold(event);
                tracing::info!(seq, kind, "alert folded into the next digest (flood control): {title}");
            }
        }
        if changed {
            s.save_flood();
        }
        drop(s);
        self.control.wake.notify_one();
    }
}

/// What one attempt on the head message came to.
enum Outcome {
    /// Removed from the queue (delivered, or dead-lettered).
    Finished,
    /// Still queued; try again after a backoff.
    Retry,
    /// Stopped mid-send by the grace deadline.
    Stopped,
}

/// The delivery task: runs until drained or stopped.
///
/// Draining (the role returned) never forces an attempt: with the backoff in force it stops at
/// once, and otherwise it sends the queue up to the newest message this process queued (older ones
/// go first, to keep the order), stopping at the first failure. So a `--once` run waits for a dead
/// mail server at most once per backoff period, not on every run.
pub(crate) async fn run<M: Mailer>(
    shared: Arc<Mutex<Shared>>,
    control: Arc<Control>,
    mailer: M,
    cfg: DeliverySettings,
) {
    let mut retry = Retry::restore(&shared, &cfg);
    loop {
        let draining = control.draining.load(Ordering::SeqCst);
        let now = Instant::now();
        let head = {
            let mut s = lock(&shared);
            let wall = s.clock.now();
            let kinds = s.policy.due(wall);
            for kind in &kinds {
                if let Some(seq) = s.outbox.seal_digest(*kind) {
                    tracing::info!(seq, kind = kind.name(), "alert queued: digest of folded alerts");
                }
            }
            if !kinds.is_empty() {
                s.save_flood();
            }
            crate::metrics::alerts().outbox(s.outbox.len());
            let head = s.outbox.head().cloned().filter(|_| retry.due(now));
            if draining {
                let newest = s.outbox.newest_queued_here();
                if !retry.due(now) && !s.outbox.is_empty() {
                    tracing::info!(
                        waiting = s.outbox.len(),
                        "mail server backoff in force: queued alerts wait for a later attempt"
                    );
                }
                head.filter(|q| newest.is_some_and(|n| q.seq <= n))
            } else {
                head
            }
        };
        if let Some(q) = head {
            match attempt(&shared, &control, &mailer, &cfg, q).await {
                Outcome::Finished => {
                    retry.succeeded(&shared);
                    continue;
                }
                Outcome::Retry => {
                    let delay = retry.failed(&shared);
                    let shown = Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    let waiting = lock(&shared).outbox.len();
                    tracing::info!(waiting, "next alert delivery attempt in {}", humantime::format_duration(shown));
                    if draining {
                        break;
                    }
                }
                Outcome::Stopped => {
                    // The grace ended mid-send: as good as a failure for the next run's backoff.
                    retry.failed(&shared);
                    break;
                }
            }
        } else if draining {
            break;
        }
        let next_digest = {
            let s = lock(&shared);
            s.policy.next_due().map(|d| s.clock.instant(d))
        };
        let wake_at = match (retry.at, next_digest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            () = control.wake.notified() => {}
            () = timing::sleep_until(wake_at) => {}
            () = control.stop.cancelled() => break,
        }
    }
}

/// The backoff while the mail server fails: failures in a row and the next attempt's time, kept
/// in the outbox (`backoff.json`) so the next process honours it.
struct Retry {
    backoff: Backoff,
    failures: u32,
    /// No attempt before this; `None`: any time.
    at: Option<Instant>,
}

impl Retry {
    /// Resumes the previous process's backoff. Its next attempt is capped at `retry_max` from now,
    /// so a clock set back or a damaged file cannot hold alerts back longer than that.
    fn restore(shared: &Mutex<Shared>, cfg: &DeliverySettings) -> Retry {
        let max = cfg.retry_max.max(RETRY_MIN);
        let s = lock(shared);
        let (failures, at) = match s.outbox.load_retry() {
            Some(r) => {
                let wall = r.next_attempt.min(s.clock.now() + max);
                (r.failures, Some(s.clock.instant(wall)))
            }
            None => (0, None),
        };
        Retry { backoff: Backoff::new(RETRY_MIN, max), failures, at }
    }

    fn due(&self, now: Instant) -> bool {
        self.at.is_none_or(|t| now >= t)
    }

    /// Counts a failed attempt, saves the backoff, and returns the delay until the next attempt.
    fn failed(&mut self, shared: &Mutex<Shared>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        crate::metrics::alerts().failed();
        // spread, so several nodes that lost the same SMTP server do not retry in lockstep
        let delay = self.backoff.jittered(self.failures, fastrand::f64());
        self.at = Some(Instant::now() + delay);
        let s = lock(shared);
        let state = RetryState { failures: self.failures, next_attempt: s.clock.now() + delay };
        s.outbox.save_retry(Some(&state));
        delay
    }

    /// A message went out (or was dead-lettered): the server answers, the backoff ends.
    fn succeeded(&mut self, shared: &Mutex<Shared>) {
        let was = std::mem::replace(&mut self.failures, 0);
        self.at = None;
        if was > 0 {
            lock(shared).outbox.save_retry(None);
        }
    }
}

/// One send of the head message and the bookkeeping of its result.
async fn attempt<M: Mailer>(
    shared: &Mutex<Shared>,
    control: &Control,
    mailer: &M,
    cfg: &DeliverySettings,
    mut q: Queued,
) -> Outcome {
    let served = |a: &str| q.sent_to.iter().chain(&q.refused).any(|d| d == a);
    let rcpt: Vec<lettre::Address> = cfg.to.iter().map(|m| m.email.clone()).filter(|a| !served(a.as_ref())).collect();
    if rcpt.is_empty() {
        // Every configured recipient is served (e.g. the list changed since): nothing left to do.
        return finish(shared, &q);
    }
    let latest = q.events.last().map_or(std::time::SystemTime::UNIX_EPOCH, |e| e.at);
    let rendered = render(&q.events, q.seq, &render_context(&cfg.hostname, latest));
    let mail = Outgoing {
        from: cfg.from.clone(),
        to: cfg.to.clone(),
        rcpt,
        subject: rendered.subject,
        body: rendered.body,
        date: latest,
    };
    let started = Instant::now();
    let result = tokio::select! {
        r = timeout(cfg.send_deadline, mailer.send(&mail)) => r,
        () = control.stop.cancelled() => return Outcome::Stopped,
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let seq = q.seq;
    match result {
        Ok(Ok(report)) => {
            q.attempts += 1;
            let accepted: Vec<String> = report.accepted().map(ToString::to_string).collect();
            if !accepted.is_empty() {
                tracing::info!(seq, to = %accepted.join(", "), elapsed_ms, "alert mailed: {}", mail.subject);
            }
            for (addr, r) in &report.rcpt {
                match r {
                    RcptResult::Accepted => q.sent_to.push(addr.to_string()),
                    RcptResult::Rejected { permanent: true, reply } => {
                        tracing::error!(seq, recipient = %addr, "recipient refused the alert for good, not retried: {reply}");
                        q.refused.push(addr.to_string());
                    }
                    RcptResult::Rejected { permanent: false, reply } if q.attempts >= MAX_TRANSIENT_ATTEMPTS => {
                        tracing::error!(
                            seq,
                            recipient = %addr,
                            attempts = q.attempts,
                            "recipient kept refusing the alert, giving up on it: {reply}"
                        );
                        q.refused.push(addr.to_string());
                    }
                    RcptResult::Rejected { permanent: false, reply } => {
                        tracing::warn!(seq, recipient = %addr, "recipient refused the alert for now, will retry: {reply}");
                    }
                }
            }
            let pending =
                mail.rcpt.iter().any(|a| !q.sent_to.contains(&a.to_string()) && !q.refused.contains(&a.to_string()));
            if pending {
                lock(shared).outbox.update(q);
                Outcome::Retry
            } else {
                finish(shared, &q)
            }
        }
        Ok(Err(e)) if e.stage == Stage::Data && e.permanent => {
            tracing::error!(seq, "the SMTP server refused the alert message itself: {e}");
            dead_letter(shared, seq)
        }
        Ok(Err(e)) => {
            log_failure(seq, &e);
            Outcome::Retry
        }
        Err(_) => {
            tracing::warn!(
                seq,
                "alert not delivered: the mail server did not finish within {}, will retry",
                humantime::format_duration(cfg.send_deadline)
            );
            Outcome::Retry
        }
    }
}

fn log_failure(seq: u64, e: &SendError) {
    tracing::warn!(seq, stage = e.stage.name(), "alert not delivered, will retry: {e}");
}

/// Every recipient is served: remove the message, or dead-letter it when nobody took it.
fn finish(shared: &Mutex<Shared>, q: &Queued) -> Outcome {
    if q.sent_to.is_empty() {
        tracing::error!(seq = q.seq, refused = ?q.refused, "no recipient accepted the alert; moving it to the dead letters");
        return dead_letter(shared, q.seq);
    }
    lock(shared).outbox.remove(q.seq);
    crate::metrics::alerts().sent();
    Outcome::Finished
}

fn dead_letter(shared: &Mutex<Shared>, seq: u64) -> Outcome {
    lock(shared).outbox.dead_letter(seq);
    crate::metrics::alerts().dead();
    Outcome::Finished
}

/// Host name plus the local offset at the time of the alert (so DST is right).
fn render_context(hostname: &str, at: std::time::SystemTime) -> RenderContext {
    let utc = DateTime::<Utc>::from(at);
    let offset = chrono::Local.offset_from_utc_datetime(&utc.naive_utc()).fix();
    RenderContext { hostname: hostname.to_owned(), offset }
}
