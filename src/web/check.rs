//! The real health check of one target (primary, backup, witness): the layers of `sys::probe`, each
//! waited for no longer than the target's own timeout derived from its measured round trips
//! ([`RttEstimator`]), with ICMP in parallel with TCP + RPC. Owns the per-target estimators; must not
//! decide anything (the verdict and its certainty go to `health`).
//!
//! Each exchange runs in its own task bounded by the cap (`web.probe_timeout`); the check waits for it
//! only until the derived timeout. An answer that arrives after the check failed, but before the cap,
//! is still sampled: a server that became slow costs one failed check, after which its timeout covers
//! its new latency. Nothing here touches the mount except the canary read (on an abandonable thread).

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::effects::Target;
use super::health::Failure;
use super::rtt::{Bounds, RttEstimator};
use crate::config::web::WebConfig;
use crate::sys::probe::{self, Icmp, Layer, ProbeError};

/// Checks targets with per-target adaptive timeouts. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Checker {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: WebConfig,
    icmp: Icmp,
    canary_busy: Arc<AtomicBool>,
    rtt: [Mutex<RttEstimator>; 3],
}

impl Checker {
    /// Must run inside the tokio runtime (opens the ICMP sockets when a layer needs them).
    pub fn new(cfg: &WebConfig) -> Checker {
        let icmp = if cfg.checks.icmp || cfg.witness.as_ref().is_some_and(|w| w.port.is_none()) {
            Icmp::open()
        } else {
            Icmp::none()
        };
        Checker::with_icmp(cfg, icmp)
    }

    fn with_icmp(cfg: &WebConfig, icmp: Icmp) -> Checker {
        Checker {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                icmp,
                canary_busy: Arc::new(AtomicBool::new(false)),
                rtt: Default::default(),
            }),
        }
    }

    /// `(srtt, rttvar)` of `target`, once one of its exchanges has answered.
    pub fn estimate(&self, target: Target) -> Option<(Duration, Duration)> {
        self.inner.estimator(target).estimate()
    }

    /// One check of `target`; `canary` adds the read through the current mount.
    pub fn check(&self, target: Target, canary: bool) -> impl Future<Output = Result<(), Failure>> + Send + 'static {
        let inner = self.inner.clone();
        async move { inner.check(target, canary).await.map_err(|e| Failure { certain: e.certain, reason: e.to_string() }) }
    }
}

impl Inner {
    fn estimator(&self, t: Target) -> RttEstimator {
        *self.rtt[t.index()].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bounds(&self) -> Bounds {
        Bounds { min: self.cfg.probe_timeout_min, max: self.cfg.probe_timeout }
    }

    /// Runs `exchange` (which bounds itself by the cap) in its own task; waits for it at most the
    /// target's derived timeout. A success, on time or late, is sampled as a round trip.
    async fn timed<T: Send + 'static>(
        self: &Arc<Self>,
        t: Target,
        layer: Layer,
        what: &str,
        exchange: impl Future<Output = Result<T, ProbeError>> + Send + 'static,
    ) -> Result<T, ProbeError> {
        let est = self.estimator(t);
        let wait = est.timeout(self.bounds());
        let start = Instant::now();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let r = exchange.await;
            if r.is_ok() {
                let rtt = start.elapsed();
                me.rtt[t.index()].lock().unwrap_or_else(std::sync::PoisonError::into_inner).sample(rtt);
            }
            r
        });
        let result = match tokio::time::timeout(wait, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                Err(ProbeError { layer, target: what.to_owned(), reason: format!("check task: {e}"), certain: false })
            }
            Err(_) => Err(ProbeError {
                layer,
                target: what.to_owned(),
                reason: match est.estimate() {
                    Some((srtt, rttvar)) => {
                        format!("no answer within {wait:?} (srtt {srtt:?}, rttvar {rttvar:?})")
                    }
                    None => format!("no answer within {wait:?}"),
                },
                certain: false,
            }),
        };
        crate::metrics::web().checked(super::observe::target_name(t), layer, result.is_ok(), start.elapsed());
        result
    }

    async fn check(self: &Arc<Self>, target: Target, canary: bool) -> Result<(), ProbeError> {
        let c = &self.cfg;
        let cap = c.probe_timeout;
        if target == Target::Witness {
            let Some(w) = c.witness.clone() else { return Ok(()) };
            let ip = probe::resolve(&w.host, cap).await?;
            return match w.port {
                Some(port) => {
                    let addr = std::net::SocketAddr::from((ip, port));
                    self.timed(target, Layer::Tcp, &addr.to_string(), async move {
                        probe::tcp_connect(addr, cap).await.map(drop)
                    })
                    .await
                }
                None => self.ping(target, ip).await,
            };
        }
        let s = match target {
            Target::Primary => &c.primary,
            Target::Backup | Target::Witness => &c.backup,
        };
        let ip = probe::resolve(&s.address, cap).await?;
        let ping = async {
            if c.checks.icmp {
                self.ping(target, ip).await
            } else {
                Ok(())
            }
        };
        let service = async {
            if !(c.checks.tcp || c.checks.rpc) {
                return Ok(());
            }
            let addr = std::net::SocketAddr::from((ip, s.nfs_port));
            let what = addr.to_string();
            let stream =
                self.timed(target, Layer::Tcp, &what, async move { probe::tcp_connect(addr, cap).await }).await?;
            if c.checks.rpc {
                let (version, w) = (c.checks.nfs_version, what.clone());
                self.timed(target, Layer::Rpc, &what, async move {
                    let mut stream = stream;
                    probe::rpc_null(&mut stream, &w, probe::NFS_PROGRAM, version, cap).await.map(drop)
                })
                .await?;
            }
            Ok(())
        };
        // the first failure (a refusal is immediate) ends the check; both must pass
        tokio::try_join!(ping, service)?;
        if let (true, Some(rel)) = (canary, &c.checks.canary) {
            probe::canary(c.mount_point.join(rel), c.checks.canary_timeout, self.canary_busy.clone()).await?;
        }
        Ok(())
    }

    async fn ping(self: &Arc<Self>, target: Target, ip: IpAddr) -> Result<(), ProbeError> {
        if !self.icmp.available() {
            return Ok(());
        }
        let me = self.clone();
        let cap = self.cfg.probe_timeout;
        self.timed(target, Layer::Icmp, &ip.to_string(), async move { me.icmp.ping(ip, cap).await.map(drop) }).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// A config whose primary is `127.0.0.1:port`, TCP + RPC only.
    fn cfg(port: u16) -> WebConfig {
        let text = format!(
            "[web]\nmount_point = \"/mnt/nfs\"\nprobe_timeout = \"2s\"\nprobe_timeout_min = \"200ms\"\n\
             [web.checks]\nicmp = false\n\
             [web.primary]\naddress = \"127.0.0.1\"\nexport = \"/srv/nfs\"\nnfs_port = {port}\n\
             [web.backup]\naddress = \"127.0.0.2\"\nexport = \"/srv/nfs\"\n"
        );
        Config::parse(Path::new("w.toml"), &text).unwrap().web.unwrap()
    }

    /// An exchange that answers after `d` (paused time: no real socket, whose wait would let the
    /// paused clock jump to the timeout).
    async fn answer_after(d: Duration) -> Result<(), ProbeError> {
        tokio::time::sleep(d).await;
        Ok(())
    }

    /// A quick server's timeout drops from the cap to the floor; a sudden 700 ms slowdown fails one
    /// exchange at the floor, its late answer is sampled, and the next exchanges wait long enough.
    #[tokio::test(start_paused = true)]
    async fn the_timeout_adapts_to_the_servers_latency() {
        let c = Checker::with_icmp(&cfg(2049), Icmp::none());
        let i = &c.inner;
        assert_eq!(i.estimator(Target::Primary).timeout(i.bounds()), Duration::from_secs(2), "cap before samples");
        for _ in 0..5 {
            i.timed(Target::Primary, Layer::Rpc, "p", answer_after(Duration::from_micros(300))).await.unwrap();
        }
        let floor = i.estimator(Target::Primary).timeout(i.bounds());
        assert!(
            (Duration::from_millis(200)..=Duration::from_millis(201)).contains(&floor),
            "about the floor: {floor:?}"
        );
        let t = Instant::now();
        let e = i.timed(Target::Primary, Layer::Rpc, "p", answer_after(Duration::from_millis(700))).await.unwrap_err();
        assert_eq!(t.elapsed(), floor);
        assert!(!e.certain, "{e:?}");
        assert!(e.reason.starts_with(&format!("no answer within {floor:?} (srtt ")), "{}", e.reason);
        // the late answer arrives and is sampled
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(i.estimator(Target::Primary).timeout(i.bounds()) > Duration::from_millis(700));
        for _ in 0..10 {
            i.timed(Target::Primary, Layer::Rpc, "p", answer_after(Duration::from_millis(700))).await.unwrap();
        }
        // the backup's estimate is its own
        assert_eq!(c.estimate(Target::Backup), None);
    }

    /// A dead server costs the derived timeout, not the cap; nothing is sampled.
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_fails_at_the_derived_timeout() {
        let c = Checker::with_icmp(&cfg(2049), Icmp::none());
        let i = &c.inner;
        i.timed(Target::Primary, Layer::Rpc, "p", answer_after(Duration::from_millis(1))).await.unwrap();
        let before = c.estimate(Target::Primary);
        let t = Instant::now();
        i.timed(Target::Primary, Layer::Rpc, "p", std::future::pending::<Result<(), ProbeError>>()).await.unwrap_err();
        // srtt 1 ms + max(4 x 0.5 ms, the floor)
        assert_eq!(t.elapsed(), Duration::from_millis(201));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(c.estimate(Target::Primary), before);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_certain_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = Checker::with_icmp(&cfg(port), Icmp::none());
        let e = c.check(Target::Primary, false).await.unwrap_err();
        assert!(e.certain, "{e:?}");
    }
}
