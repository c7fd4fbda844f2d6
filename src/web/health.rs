//! Per-server hysteresis: consecutive failed checks make a server DOWN, `rise` consecutive good checks
//! make it UP again, so the state machine never sees probe noise. How many failures it takes depends on
//! the evidence: `fall` for any failures (a timeout may be a server that is only slow), `fall_certain`
//! (fewer) when each was certain (the server's host itself refused or reset the connection, or its
//! RPC service answered with an error). Pure; persisted with the durable state so `web --once` counts
//! across timer runs exactly like the daemon.

use serde::{Deserialize, Serialize};

pub use crate::domain::Status;

/// Why a check failed, and whether the evidence is certain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The server's own host answered "no" (connection refused or reset, a closed RPC connection,
    /// an RPC error reply). Timeouts, unreachable routes and resolver errors are never certain: they
    /// may say more about the path or the load than about the server.
    pub certain: bool,
    pub reason: String,
}

impl Failure {
    /// A failure whose cause may be slowness or the path (a timeout).
    pub fn uncertain(reason: impl Into<String>) -> Failure {
        Failure { certain: false, reason: reason.into() }
    }

    /// A failure the server's host itself reported.
    pub fn certain(reason: impl Into<String>) -> Failure {
        Failure { certain: true, reason: reason.into() }
    }
}

/// How many consecutive checks change a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// Failed checks of any kind that make a server DOWN.
    pub fall: u32,
    /// Certain failed checks in a row that make a server DOWN (at most `fall`).
    pub fall_certain: u32,
    /// Good checks that make a DOWN server UP again.
    pub rise: u32,
}

/// Hysteresis counters of one server plus what the last check said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Health {
    pub status: Status,
    /// Consecutive failures (reset by a success).
    pub fails: u32,
    /// Consecutive certain failures (reset by a success and by an uncertain failure).
    #[serde(default)]
    pub certain_fails: u32,
    /// Consecutive successes (reset by a failure).
    pub oks: u32,
    pub last_error: Option<String>,
    /// Wall-clock ms of the last status change.
    pub since_ms: Option<u64>,
}

impl Health {
    /// Records one check result; returns the new status when it changed. From `Unknown` a single good
    /// check is enough for UP (there is no flapping history to damp at start-up); `rise` applies when
    /// coming back from DOWN.
    pub fn observe(&mut self, result: Result<(), Failure>, h: Hysteresis, now_ms: u64) -> Option<Status> {
        let before = self.status;
        match result {
            Ok(()) => {
                self.oks = self.oks.saturating_add(1);
                self.fails = 0;
                self.certain_fails = 0;
                if self.status == Status::Unknown || (self.status == Status::Down && self.oks >= h.rise) {
                    self.status = Status::Up;
                }
            }
            Err(Failure { certain, reason }) => {
                self.fails = self.fails.saturating_add(1);
                self.certain_fails = if certain { self.certain_fails.saturating_add(1) } else { 0 };
                self.oks = 0;
                self.last_error = Some(reason);
                if self.status != Status::Down && (self.fails >= h.fall || self.certain_fails >= h.fall_certain) {
                    self.status = Status::Down;
                }
            }
        }
        (self.status != before).then(|| {
            self.since_ms = Some(now_ms);
            self.status
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bad() -> Result<(), Failure> {
        Err(Failure::uncertain("timeout"))
    }

    fn refused() -> Result<(), Failure> {
        Err(Failure::certain("connection refused"))
    }

    const H33: Hysteresis = Hysteresis { fall: 3, fall_certain: 3, rise: 3 };
    const H32: Hysteresis = Hysteresis { fall: 3, fall_certain: 3, rise: 2 };
    const H2: Hysteresis = Hysteresis { fall: 2, fall_certain: 2, rise: 3 };
    const FAST: Hysteresis = Hysteresis { fall: 3, fall_certain: 2, rise: 3 };

    #[test]
    fn fall_consecutive_failures_make_down() {
        let mut h = Health::default();
        assert_eq!(h.observe(Ok(()), H33, 0), Some(Status::Up));
        assert_eq!(h.observe(bad(), H33, 1), None);
        assert_eq!(h.observe(bad(), H33, 2), None);
        assert_eq!(h.observe(bad(), H33, 3), Some(Status::Down));
        assert_eq!(h.since_ms, Some(3));
        assert_eq!(h.last_error.as_deref(), Some("timeout"));
    }

    #[test]
    fn a_success_resets_the_fall_counter() {
        let mut h = Health::default();
        h.observe(Ok(()), H33, 0);
        h.observe(bad(), H33, 1);
        h.observe(bad(), H33, 2);
        h.observe(Ok(()), H33, 3);
        h.observe(bad(), H33, 4);
        assert_eq!(h.status, Status::Up);
    }

    #[test]
    fn rise_consecutive_successes_make_up_again() {
        let mut h = Health::default();
        for t in 0..3 {
            h.observe(bad(), H32, t);
        }
        assert_eq!(h.status, Status::Down);
        assert_eq!(h.observe(Ok(()), H32, 10), None);
        assert_eq!(h.observe(bad(), H32, 11), None);
        assert_eq!(h.observe(Ok(()), H32, 12), None);
        assert_eq!(h.observe(Ok(()), H32, 13), Some(Status::Up));
    }

    #[test]
    fn counters_at_their_limits_from_a_state_file_never_panic() {
        let mut h = Health { fails: u32::MAX, oks: u32::MAX, ..Health::default() };
        assert_eq!(h.observe(bad(), H33, u64::MAX), Some(Status::Down));
        assert_eq!(h.fails, u32::MAX, "saturates");
        h.oks = u32::MAX;
        h.fails = 0;
        assert_eq!(h.observe(Ok(()), H33, u64::MAX), Some(Status::Up));
        assert_eq!(h.oks, u32::MAX);
    }

    #[test]
    fn unknown_falls_after_fall_failures() {
        let mut h = Health::default();
        assert_eq!(h.observe(bad(), H2, 0), None);
        assert_eq!(h.observe(bad(), H2, 1), Some(Status::Down));
    }

    #[test]
    fn certain_failures_fall_after_fall_certain() {
        let mut h = Health::default();
        h.observe(Ok(()), FAST, 0);
        assert_eq!(h.observe(refused(), FAST, 1), None);
        assert_eq!(h.observe(refused(), FAST, 2), Some(Status::Down));
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn a_timeout_between_refusals_means_fall_applies() {
        // refused, timeout, refused: not two certain failures in a row, and fewer than `fall` failures
        let mut h = Health::default();
        h.observe(Ok(()), FAST, 0);
        assert_eq!(h.observe(refused(), FAST, 1), None);
        assert_eq!(h.observe(bad(), FAST, 2), None);
        assert_eq!(h.certain_fails, 0);
        assert_eq!(h.observe(refused(), FAST, 3), Some(Status::Down), "the third failure of any kind");
    }

    #[test]
    fn timeouts_need_fall_and_a_success_resets_the_certain_count() {
        let mut h = Health::default();
        h.observe(Ok(()), FAST, 0);
        assert_eq!(h.observe(bad(), FAST, 1), None);
        assert_eq!(h.observe(bad(), FAST, 2), None);
        assert_eq!(h.observe(Ok(()), FAST, 3), None);
        assert_eq!(h.observe(refused(), FAST, 4), None);
        assert_eq!(h.observe(Ok(()), FAST, 5), None);
        assert_eq!(h.observe(refused(), FAST, 6), None, "a refusal, a recovery, a refusal: a flap");
        assert_eq!(h.status, Status::Up);
    }

    #[test]
    fn a_state_file_without_the_certain_counter_loads() {
        let h: Health =
            serde_json::from_str(r#"{"status":"up","fails":1,"oks":0,"last_error":null,"since_ms":null}"#).unwrap();
        assert_eq!((h.fails, h.certain_fails), (1, 0));
    }
}
