//! Retry timing shared by every role: the one backoff (doubling, capped, optionally spread) and the
//! one wait on an optional deadline. Pure arithmetic plus tokio's clock (paused-time tests control it).
//! A leaf: imports nothing from the crate.

use std::time::Duration;

use tokio::time::Instant;

/// The wait after `failures` failures in a row (1-based; 0 counts as 1): `initial`, doubled for every
/// failure after the first, capped at `max`. Saturates: absurd inputs give a long wait, never a panic.
pub fn doubling(initial: Duration, max: Duration, failures: u32) -> Duration {
    initial.saturating_mul(1 << failures.saturating_sub(1).min(31)).min(max)
}

/// [`doubling`] in milliseconds.
pub fn doubling_ms(initial_ms: u64, max_ms: u64, failures: u32) -> u64 {
    let d = doubling(Duration::from_millis(initial_ms), Duration::from_millis(max_ms), failures);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` spread by ±20% (`jitter` in 0..1, 0.5 = unchanged), so nodes or workers that failed together
/// do not retry in lockstep. Saturates at `Duration::MAX`.
pub fn jittered(d: Duration, jitter: f64) -> Duration {
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
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
        assert_eq!(doubling_ms(5_000, 60_000, 5), 60_000);
        assert_eq!(doubling_ms(u64::MAX, u64::MAX, u32::MAX), u64::MAX);
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
