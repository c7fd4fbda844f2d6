//! The contract between the roles and alert delivery: roles describe a transition as an
//! [`AlertEvent`] and hand it to an [`AlertSink`], which must return at once (queueing durably);
//! delivery never blocks or delays the caller.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Which role raised the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Web,
    Storage,
    Test,
    /// The alert pipeline itself (e.g. damaged outbox files), whichever role runs it.
    Alert,
}

impl Role {
    /// The name used in subjects and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Storage => "storage",
            Role::Test => "test",
            Role::Alert => "alert",
        }
    }
}

pub use crate::alert_kind::AlertKind;

/// One transition, described for a human reading it on a phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub kind: AlertKind,
    pub role: Role,
    pub at: SystemTime,
    /// Short transition for the subject, e.g. "failover to backup (10.0.0.3) completed".
    pub title: String,
    /// Why: which check failed, with its error; or what succeeded.
    pub reason: String,
    /// Durations, counts, attempt numbers: `(label, value)`.
    pub details: Vec<(String, String)>,
    /// The state of every server/remote: `(name, state)`.
    pub servers: Vec<(String, String)>,
    /// What the operator should do next.
    pub next_steps: String,
}

impl AlertEvent {
    pub fn new(kind: AlertKind, role: Role, title: impl Into<String>, reason: impl Into<String>) -> Self {
        AlertEvent {
            kind,
            role,
            at: SystemTime::now(),
            title: title.into(),
            reason: reason.into(),
            details: Vec::new(),
            servers: Vec::new(),
            next_steps: String::new(),
        }
    }

    #[must_use]
    #[allow(clippy::needless_pass_by_value)] // builder ergonomics: `.detail("files", 12)`
    pub fn detail(mut self, label: impl Into<String>, value: impl ToString) -> Self {
        self.details.push((label.into(), value.to_string()));
        self
    }

    #[must_use]
    pub fn server(mut self, name: impl Into<String>, state: impl Into<String>) -> Self {
        self.servers.push((name.into(), state.into()));
        self
    }

    /// Sets when it happened (default: when it was built); for tests and replays.
    #[must_use]
    pub fn at_time(mut self, at: SystemTime) -> Self {
        self.at = at;
        self
    }

    #[must_use]
    pub fn next_steps(mut self, text: impl Into<String>) -> Self {
        self.next_steps = text.into();
        self
    }
}

/// Where roles send alerts. `emit` must not block: it queues (durably) and returns.
pub trait AlertSink: Send + Sync + 'static {
    fn emit(&self, event: AlertEvent);
}

/// A sink that only logs; used when the config has no `[alert]` section.
pub struct LogSink;

impl AlertSink for LogSink {
    fn emit(&self, event: AlertEvent) {
        tracing::warn!(kind = event.kind.name(), reason = %event.reason, "alert (no [alert] section, not mailed): {}", event.title);
    }
}
