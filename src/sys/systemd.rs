//! `sd_notify` integration: READY, STATUS, STOPPING and WATCHDOG pings. All calls are no-ops when not
//! started by systemd (`NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

/// Runs `f`, long start-up work before READY (walking a large tree), telling systemd what it does
/// and extending the start timeout by 30 s every 10 s while it runs: a tree of millions of files on
/// a cold cache must not run out of `TimeoutStartSec` and be restarted into the same walk.
pub fn while_starting<T>(what: &str, f: impl FnOnce() -> T) -> T {
    status(what);
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || loop {
            let _ = sd_notify::notify(false, &[NotifyState::ExtendTimeoutUsec(30_000_000)]);
            if !matches!(wait.recv_timeout(Duration::from_secs(10)), Err(std::sync::mpsc::RecvTimeoutError::Timeout)) {
                break;
            }
        });
        let out = f();
        drop(done);
        out
    })
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// The watchdog as seen by a loop that does the work: it wakes at least every [`Watchdog::period`]
/// and calls [`Watchdog::ping`] after each iteration, so a WEDGED loop (not only a wedged runtime)
/// stops pinging and systemd restarts the service. Pings are rate-limited to two per period.
pub struct Watchdog {
    period: Option<Duration>,
    last: Option<tokio::time::Instant>,
    ping: Box<dyn Fn() + Send + Sync>,
}

impl Watchdog {
    /// Half of `WATCHDOG_USEC` when systemd asked for a watchdog; otherwise never pings.
    pub fn from_env() -> Watchdog {
        let mut usec = 0;
        let period =
            (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec / 2));
        Watchdog::with(period, || {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        })
    }

    /// A watchdog pinging through `ping` (tests count the pings).
    pub fn with(period: Option<Duration>, ping: impl Fn() + Send + Sync + 'static) -> Watchdog {
        Watchdog { period, last: None, ping: Box::new(ping) }
    }

    /// How often the loop must wake up (`None`: no watchdog).
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// Pings if a period has passed since the last ping. Call it from the working loop only.
    pub fn ping(&mut self) {
        let Some(period) = self.period else { return };
        let now = tokio::time::Instant::now();
        // at most two pings per wake-up period, so a wake-up a hair early never skips one and the gap
        // between pings stays about one period (half of WatchdogSec)
        if self.last.is_none_or(|l| now.duration_since(l) >= period / 2) {
            self.last = Some(now);
            (self.ping)();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The start-up work's result comes back as soon as it is done, not at the helper's next
    /// 10 s extension.
    #[test]
    fn while_starting_returns_when_the_work_is_done() {
        let t = std::time::Instant::now();
        assert_eq!(while_starting("counting", || 42), 42);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// Every loop iteration may call `ping`; at most two pings go out per period, and a loop that
    /// wakes once per period never leaves a gap of more than about one period.
    #[tokio::test(start_paused = true)]
    async fn pings_are_rate_limited_but_never_skipped_for_a_period() {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        let mut w = Watchdog::with(Some(Duration::from_secs(10)), move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        for _ in 0..100 {
            w.ping();
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // woken a hair early every period: still one ping per wake-up
        for i in 2..=6 {
            tokio::time::advance(Duration::from_millis(9_990)).await;
            w.ping();
            assert_eq!(n.load(Ordering::SeqCst), i);
        }
        let mut none = Watchdog::with(None, || panic!("no watchdog, no ping"));
        none.ping();
        assert_eq!(none.period(), None);
    }
}
