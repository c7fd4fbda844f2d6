//! Per-server hysteresis: `fall` consecutive failed checks make a server DOWN, `rise` consecutive good
//! checks make it UP again, so the state machine never sees probe noise. Pure; persisted with the
//! durable state so `web --once` counts across timer runs exactly like the daemon.

use serde::{Deserialize, Serialize};

pub use crate::domain::Status;

/// Hysteresis counters of one server plus what the last check said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Health {
    pub status: Status,
    /// Consecutive failures (reset by a success).
    pub fails: u32,
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
    pub fn observe(&mut self, result: Result<(), String>, fall: u32, rise: u32, now_ms: u64) -> Option<Status> {
        let before = self.status;
        match result {
            Ok(()) => {
                self.oks = self.oks.saturating_add(1);
                self.fails = 0;
                if self.status == Status::Unknown || (self.status == Status::Down && self.oks >= rise) {
                    self.status = Status::Up;
                }
            }
            Err(e) => {
                self.fails = self.fails.saturating_add(1);
                self.oks = 0;
                self.last_error = Some(e);
                if self.status != Status::Down && self.fails >= fall {
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

    fn bad() -> Result<(), String> {
        Err("timeout".into())
    }

    #[test]
    fn fall_consecutive_failures_make_down() {
        let mut h = Health::default();
        assert_eq!(h.observe(Ok(()), 3, 3, 0), Some(Status::Up));
        assert_eq!(h.observe(bad(), 3, 3, 1), None);
        assert_eq!(h.observe(bad(), 3, 3, 2), None);
        assert_eq!(h.observe(bad(), 3, 3, 3), Some(Status::Down));
        assert_eq!(h.since_ms, Some(3));
        assert_eq!(h.last_error.as_deref(), Some("timeout"));
    }

    #[test]
    fn a_success_resets_the_fall_counter() {
        let mut h = Health::default();
        h.observe(Ok(()), 3, 3, 0);
        h.observe(bad(), 3, 3, 1);
        h.observe(bad(), 3, 3, 2);
        h.observe(Ok(()), 3, 3, 3);
        h.observe(bad(), 3, 3, 4);
        assert_eq!(h.status, Status::Up);
    }

    #[test]
    fn rise_consecutive_successes_make_up_again() {
        let mut h = Health::default();
        for t in 0..3 {
            h.observe(bad(), 3, 2, t);
        }
        assert_eq!(h.status, Status::Down);
        assert_eq!(h.observe(Ok(()), 3, 2, 10), None);
        assert_eq!(h.observe(bad(), 3, 2, 11), None);
        assert_eq!(h.observe(Ok(()), 3, 2, 12), None);
        assert_eq!(h.observe(Ok(()), 3, 2, 13), Some(Status::Up));
    }

    #[test]
    fn counters_at_their_limits_from_a_state_file_never_panic() {
        let mut h = Health { fails: u32::MAX, oks: u32::MAX, ..Health::default() };
        assert_eq!(h.observe(bad(), 3, 3, u64::MAX), Some(Status::Down));
        assert_eq!(h.fails, u32::MAX, "saturates");
        h.oks = u32::MAX;
        h.fails = 0;
        assert_eq!(h.observe(Ok(()), 3, 3, u64::MAX), Some(Status::Up));
        assert_eq!(h.oks, u32::MAX);
    }

    #[test]
    fn unknown_falls_after_fall_failures() {
        let mut h = Health::default();
        assert_eq!(h.observe(bad(), 2, 3, 0), None);
        assert_eq!(h.observe(bad(), 2, 3, 1), Some(Status::Down));
    }
}
