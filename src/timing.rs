//! Timing shared by every role: the one backoff (doubling, capped, optionally spread), the one wait
//! on an optional deadline, and the one clock. Pure arithmetic plus tokio's clock (paused-time tests
//! control it). A leaf: imports nothing from the crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The wait after `failures` failures in a row (1-based; 0 counts as 1): `initial`, doubled for every
/// failure after the first, capped at `max`. Saturates: absurd inputs give a long wait, never a panic.
pub fn doubling(initial: Duration, max: Duration, failures: u32) -> Duration {
    initial.saturating_mul(1 << failures.saturating_sub(1).min(31)).min(max)
}

/// `d` spread by ±20% (`jitter` in 0..1, 0.5 = unchanged), so nodes or workers that failed together
/// do not retry in lockstep. Saturates at `Duration::MAX`.
pub fn jittered(d: Duration, jitter: f64) -> Duration {
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// The one backoff: [`doubling`] from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    pub const fn from_ms(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(Duration::from_millis(initial_ms), Duration::from_millis(max_ms))
    }

    /// The wait after `failures` failures in a row (see [`doubling`]).
    pub fn delay(&self, failures: u32) -> Duration {
        doubling(self.initial, self.max, failures)
    }

    /// [`Backoff::delay`] in milliseconds (saturating).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        u64::try_from(self.delay(failures).as_millis()).unwrap_or(u64::MAX)
    }

    /// [`Backoff::delay`] spread by [`jittered`], for retries several nodes or workers may share.
    pub fn jittered(&self, failures: u32, jitter: f64) -> Duration {
        jittered(self.delay(failures), jitter)
    }
}

/// Wall-clock time that advances with tokio's clock: read from the real wall clock once, at
/// [`Clock::start`] (so times persisted for the next process mean what they say), then moved only by
/// tokio's monotonic clock, so a wall-clock jump during the run disturbs nothing and paused-time tests
/// drive it like every other timer. The web controller and the alert delivery both keep one.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall0: SystemTime,
    mono0: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { wall0: SystemTime::now(), mono0: Instant::now() }
    }

    pub fn now(&self) -> SystemTime {
        self.wall0 + self.mono0.elapsed()
    }

    /// [`Clock::now`] in milliseconds since the Unix epoch (0 before it, saturating far after it).
    pub fn now_ms(&self) -> u64 {
        let since = self.now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// The monotonic instant of wall time `at` (now, if `at` is before the start).
    pub fn instant(&self, at: SystemTime) -> Instant {
        self.mono0 + at.duration_since(self.wall0).unwrap_or_default()
    }
}

/// Sleeps until `at`; never returns when there is no deadline (a `select!` arm that is off).
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubling_starts_at_initial_doubles_and_caps() {
        let got: Vec<Duration> = [0, 1, 2, 3, 4, 5, 40, u32::MAX].map(|n| doubling(S, 8 * S, n)).to_vec();
        assert_eq!(got, [1, 1, 2, 4, 8, 8, 8, 8].map(|s| s * S));
    }

    #[test]
    fn backoff_is_the_doubling_in_ms_and_spreads_only_when_asked() {
        let b = Backoff::from_ms(5_000, 60_000);
        assert_eq!([0, 1, 2, 5, 6].map(|n| b.delay_ms(n)), [5_000, 5_000, 10_000, 60_000, 60_000]);
        assert_eq!(Backoff::from_ms(u64::MAX, u64::MAX).delay_ms(u32::MAX), u64::MAX);
        assert_eq!(b.delay(3), doubling(b.initial, b.max, 3));
        assert_eq!(b.jittered(3, 1.0), jittered(b.delay(3), 1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_moves_with_tokio_time_from_the_wall_clock_at_start() {
        let before = SystemTime::now();
        let c = Clock::start();
        assert!(c.now() >= before && c.now() <= SystemTime::now());
        let (t0, ms0) = (c.now(), c.now_ms());
        tokio::time::advance(90 * S).await;
        assert_eq!(c.now(), t0 + 90 * S, "paused time drives it, the wall clock does not");
        assert_eq!(c.now_ms(), ms0 + 90_000);
        assert_eq!(c.instant(t0 + 10 * S), c.mono0 + 10 * S);
        assert_eq!(c.instant(UNIX_EPOCH), c.mono0, "before the start: the start");
    }

    #[test]
    fn jitter_spreads_by_a_fifth_and_saturates() {
        assert_eq!(jittered(10 * S, 0.5), 10 * S);
        assert_eq!(jittered(10 * S, 0.0), 8 * S);
        assert_eq!(jittered(10 * S, 1.0), 12 * S);
        assert_eq!(jittered(10 * S, 7.0), 12 * S, "clamped");
        assert_eq!(jittered(Duration::MAX, 1.0), Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_waits_for_the_deadline_or_forever() {
        let at = Instant::now() + 3 * S;
        sleep_until(Some(at)).await;
        assert!(Instant::now() >= at);
        assert!(tokio::time::timeout(3600 * S, sleep_until(None)).await.is_err());
    }
}
