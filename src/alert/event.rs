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

/// Every transition that can send mail. Each kind can be switched off in `[alert]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    // web
    FailoverStarted,
    FailoverCompleted,
    BothDown,
    /// The web node itself lost its network (witness unreachable): no switch.
    NetworkLost,
    PrimaryRecovered,
    ReverseSyncStarted,
    ReverseSyncFailed,
    ReverseSyncSucceeded,
    FailbackCompleted,
    ManualOverride,
    /// A mount or switch of the mount point failed (the mount command's error in the reason).
    SwitchFailed,
    /// The durable state (or an operator request) was unusable: moved aside, rebuilt from mountinfo.
    StateQuarantined,
    // storage
    RemoteUnreachable,
    RemoteRecovered,
    OverflowRescan,
    JournalGrowing,
    // the alert pipeline
    /// Files in the outbox were damaged (unreadable, wrong name) and moved aside.
    OutboxDamaged,
    // alert-test
    Test,
}

impl AlertKind {
    pub const ALL: [AlertKind; 18] = [
        AlertKind::FailoverStarted,
        AlertKind::FailoverCompleted,
        AlertKind::BothDown,
        AlertKind::NetworkLost,
        AlertKind::PrimaryRecovered,
        AlertKind::ReverseSyncStarted,
        AlertKind::ReverseSyncFailed,
        AlertKind::ReverseSyncSucceeded,
        AlertKind::FailbackCompleted,
        AlertKind::ManualOverride,
        AlertKind::SwitchFailed,
        AlertKind::StateQuarantined,
        AlertKind::RemoteUnreachable,
        AlertKind::RemoteRecovered,
        AlertKind::OverflowRescan,
        AlertKind::JournalGrowing,
        AlertKind::OutboxDamaged,
        AlertKind::Test,
    ];

    /// The kebab-case name used in config (`[alert] disabled = [...]`) and logs.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::FailoverStarted => "failover-started",
            AlertKind::FailoverCompleted => "failover-completed",
            AlertKind::BothDown => "both-down",
            AlertKind::NetworkLost => "network-lost",
            AlertKind::PrimaryRecovered => "primary-recovered",
            AlertKind::ReverseSyncStarted => "reverse-sync-started",
            AlertKind::ReverseSyncFailed => "reverse-sync-failed",
            AlertKind::ReverseSyncSucceeded => "reverse-sync-succeeded",
            AlertKind::FailbackCompleted => "failback-completed",
            AlertKind::ManualOverride => "manual-override",
            AlertKind::SwitchFailed => "switch-failed",
            AlertKind::StateQuarantined => "state-quarantined",
            AlertKind::RemoteUnreachable => "remote-unreachable",
            AlertKind::RemoteRecovered => "remote-recovered",
            AlertKind::OverflowRescan => "overflow-rescan",
            AlertKind::JournalGrowing => "journal-growing",
            AlertKind::OutboxDamaged => "outbox-damaged",
            AlertKind::Test => "test",
        }
    }

    /// The kind with this [`AlertKind::name`], if any.
    pub fn from_name(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

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
