//! The kinds of alert: what `[alert] disabled` names in the config and what the alert pipeline
//! mails. A leaf, so the config can validate kinds without depending on the alert pipeline.

use serde::{Deserialize, Serialize};

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
    /// Both servers changed a path in different epochs: both versions kept, under a conflict name.
    Conflict,
    /// A storage agent did not take a role change (unreachable, or refused it).
    AgentUnreachable,
    // the web farm (`[cluster]`)
    /// This web node sees the primary down while most other nodes see it up: it does not switch.
    PrimaryUnreachableHere,
    /// This web node lost etcd: it keeps its current mount (unless `autonomy = true`).
    FarmUnreachable,
    // the alert pipeline
    /// Files in the outbox were damaged (unreadable, wrong name) and moved aside.
    OutboxDamaged,
    // alert-test
    Test,
}

impl AlertKind {
    pub const ALL: [AlertKind; 22] = [
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
        AlertKind::Conflict,
        AlertKind::AgentUnreachable,
        AlertKind::PrimaryUnreachableHere,
        AlertKind::FarmUnreachable,
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
            AlertKind::Conflict => "conflict",
            AlertKind::AgentUnreachable => "agent-unreachable",
            AlertKind::PrimaryUnreachableHere => "primary-unreachable-here",
            AlertKind::FarmUnreachable => "farm-unreachable",
            AlertKind::OutboxDamaged => "outbox-damaged",
            AlertKind::Test => "test",
        }
    }

    /// The kind with this [`AlertKind::name`], if any.
    pub fn from_name(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.name() == name)
    }
}
