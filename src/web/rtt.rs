//! Per-server round-trip estimate and the check timeout derived from it, as Linux's TCP derives its
//! retransmission timeout (RFC 6298, with Linux's floor on the variance term): `srtt + max(4 x rttvar,
//! min)`, capped at `max`. Pure: samples and bounds are passed in, nothing reads a clock.
//!
//! Why: a fixed probe timeout is either slow to detect a dead server (long) or fails a server that is
//! only slow (short). Derived from what each server's answers actually took, the timeout is short for
//! a quick server on a LAN (fast detection) and grows with latency and jitter (a loaded server, a
//! congested link), so a server that keeps answering, however slowly, keeps passing its checks.
//! Answers that arrive after the verdict (a check failed at the timeout) are still sampled, so one
//! sudden slowdown costs at most one failed check before the timeout has grown to cover it.

use std::time::Duration;

/// Smoothing gains of RFC 6298: `alpha = 1/8` for the mean, `beta = 1/4` for the deviation.
const ALPHA_SHIFT: u32 = 3;
const BETA_SHIFT: u32 = 2;
/// The deviation's weight in the timeout (RFC 6298's `K`).
const K: u32 = 4;

/// Bounds of the derived timeout: `min` is the least margin over the smoothed RTT
/// (`web.probe_timeout_min`: on a quiet LAN, the whole timeout), `max` the cap (`web.probe_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: Duration,
    pub max: Duration,
}

/// Smoothed round-trip time and its mean deviation, from the samples seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RttEstimator {
    /// `None` until the first sample: then the timeout is the cap (nothing is known yet).
    est: Option<(Duration, Duration)>,
}

impl RttEstimator {
    /// Adds one measured round trip (an answer, on time or late).
    pub fn sample(&mut self, rtt: Duration) {
        self.est = Some(match self.est {
            None => (rtt, rtt / 2),
            Some((srtt, rttvar)) => {
                let dev = srtt.abs_diff(rtt);
                let rttvar = rttvar.saturating_sub(rttvar / (1 << BETA_SHIFT)).saturating_add(dev / (1 << BETA_SHIFT));
                let srtt = srtt.saturating_sub(srtt / (1 << ALPHA_SHIFT)).saturating_add(rtt / (1 << ALPHA_SHIFT));
                (srtt, rttvar)
            }
        });
    }

    /// `(srtt, rttvar)`, once there is a sample.
    pub fn estimate(&self) -> Option<(Duration, Duration)> {
        self.est
    }

    /// How long a check waits for an answer: `srtt + max(4 x rttvar, min)`, at most `max` (but never
    /// under `min`); the cap before the first sample. The margin's floor is what keeps a steady but
    /// jittery link (small `rttvar`, occasional outliers) from failing checks.
    pub fn timeout(&self, bounds: Bounds) -> Duration {
        match self.est {
            None => bounds.max,
            Some((srtt, rttvar)) => {
                srtt.saturating_add(rttvar.saturating_mul(K).max(bounds.min)).min(bounds.max).max(bounds.min)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { min: Duration::from_millis(200), max: Duration::from_secs(2) };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn before_any_sample_the_cap_applies() {
        assert_eq!(RttEstimator::default().timeout(B), ms(2000));
    }

    #[test]
    fn the_first_sample_sets_srtt_and_half_of_it_as_deviation() {
        let mut e = RttEstimator::default();
        e.sample(ms(100));
        assert_eq!(e.estimate(), Some((ms(100), ms(50))));
        // 100 + max(4 x 50, 200)
        assert_eq!(e.timeout(B), ms(300));
    }

    #[test]
    fn steady_samples_follow_rfc_6298() {
        let mut e = RttEstimator::default();
        e.sample(ms(100));
        e.sample(ms(180));
        // rttvar = 3/4 * 50 + 1/4 * 80 = 57.5; srtt = 7/8 * 100 + 1/8 * 180 = 110
        assert_eq!(e.estimate(), Some((ms(110), Duration::from_micros(57_500))));
        assert_eq!(e.timeout(B), ms(340));
        // steady again: the variance term decays to the floor's margin over srtt
        for _ in 0..100 {
            e.sample(ms(150));
        }
        assert!((ms(349)..=ms(350)).contains(&e.timeout(B)), "{:?}", e.timeout(B));
    }

    #[test]
    fn a_quiet_lan_server_gets_the_floor_as_its_whole_timeout() {
        let mut e = RttEstimator::default();
        e.sample(ms(1));
        for _ in 0..100 {
            e.sample(ms(1));
        }
        assert_eq!(e.timeout(B), ms(201));
    }

    #[test]
    fn jitter_widens_the_timeout_beyond_the_worst_sample() {
        // 150 ms of added latency with +-50 ms of jitter (the no-false-failover lab test's link)
        let mut e = RttEstimator::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut worst = Duration::ZERO;
        for _ in 0..200 {
            let rtt = ms(100 + rng.u64(0..=100));
            worst = worst.max(rtt);
            e.sample(rtt);
        }
        assert!(e.timeout(B) > worst, "{:?} <= {worst:?}", e.timeout(B));
    }

    #[test]
    fn one_late_answer_covers_a_sudden_slowdown() {
        // a LAN server (floor) whose answers suddenly take 600 ms: the first check fails at the floor,
        // its late answer is sampled, and the next timeout covers the new latency
        let mut e = RttEstimator::default();
        for _ in 0..50 {
            e.sample(Duration::from_micros(500));
        }
        assert!(e.timeout(B) < ms(201), "{:?}", e.timeout(B));
        e.sample(ms(600));
        assert!(e.timeout(B) > ms(600), "{:?}", e.timeout(B));
    }

    #[test]
    fn the_cap_bounds_a_hopeless_link_and_a_floor_above_the_cap_wins() {
        let mut e = RttEstimator::default();
        e.sample(ms(5000));
        assert_eq!(e.timeout(B), ms(2000));
        let odd = Bounds { min: ms(300), max: ms(100) };
        assert_eq!(e.timeout(odd), ms(300));
    }

    #[test]
    fn extreme_samples_never_panic() {
        let mut e = RttEstimator::default();
        e.sample(Duration::from_secs(u64::MAX / 16));
        e.sample(Duration::ZERO);
        e.sample(Duration::from_secs(u64::MAX / 16));
        let _ = e.timeout(B);
    }
}
