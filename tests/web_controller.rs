//! Component tests of the web controller with fake probes, mounts and syncs on paused tokio time: the
//! real state machine, hysteresis, durable state and status file, with scripted servers.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nfs_guard::alert::{AlertEvent, AlertKind, AlertSink};
use nfs_guard::config::Config;
use nfs_guard::web::controller::Controller;
use nfs_guard::web::effects::{Mounter, Prober, SyncStats, Syncer, Target};
use nfs_guard::web::fsm::{Phase, Request, Server};
use nfs_guard::web::health::Failure;
use nfs_guard::web::state;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[web]
mount_point = "/mnt/nfs"
interval = "1s"
fall = 3
rise = 3
hold_down = "5s"
[web.primary]
address = "10.9.0.2"
export = "/srv/nfs"
[web.backup]
address = "10.9.0.3"
export = "/srv/nfs"
[web.reverse_sync]
retry_initial = "2s"
retry_max = "8s"
[web.reverse_sync.target]
host = "10.9.0.2"
module = "data"
"#;

#[derive(Default)]
#[allow(clippy::struct_excessive_bools, reason = "independent fault switches of a fake")]
struct World {
    /// Is the server answering its checks?
    up: HashMap<&'static str, bool>,
    mounted: Option<Server>,
    calls: Vec<String>,
    /// Probes started, per target.
    probes: HashMap<&'static str, usize>,
    /// When set, a mount records the phase and epoch on disk in this state dir when it starts.
    state_dir: Option<PathBuf>,
    on_disk_at_mount: Vec<(Phase, u64)>,
    /// The next mount panics.
    mount_panics: bool,
    /// The next probe call blocks its caller (the controller loop itself) until this receives.
    wedge: Option<std::sync::mpsc::Receiver<()>>,
    wedged: bool,
    /// Mount calls never complete while set.
    mount_hangs: bool,
    /// Staged switches detach the mount point, then never complete, while set.
    staged_hangs: bool,
    /// Results of the next reverse syncs (default: success).
    sync_results: Vec<Result<(), String>>,
    /// Reverse syncs and reconciliations never complete while set (rsync stuck on a dead mount).
    sync_hangs: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Fake {
    fn set_up(&self, who: &'static str, up: bool) {
        self.0.lock().unwrap().up.insert(who, up);
    }
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().calls.clone()
    }
    fn mounted(&self) -> Option<Server> {
        self.0.lock().unwrap().mounted
    }
    fn probes(&self, who: &'static str) -> usize {
        *self.0.lock().unwrap().probes.get(who).unwrap_or(&0)
    }
}

impl Prober for Fake {
    fn probe(&self, target: Target, _canary: bool) -> impl Future<Output = Result<(), Failure>> + Send + 'static {
        let name = match target {
            Target::Primary => "primary",
            Target::Backup => "backup",
            Target::Witness => "witness",
        };
        let wedge = self.0.lock().unwrap().wedge.take();
        if let Some(rx) = wedge {
            // blocks the caller's thread: the controller loop is wedged, not just slow
            self.0.lock().unwrap().wedged = true;
            let _ = rx.recv();
            self.0.lock().unwrap().wedged = false;
        }
        let up = {
            let mut w = self.0.lock().unwrap();
            *w.probes.entry(name).or_default() += 1;
            *w.up.get(name).unwrap_or(&true)
        };
        async move {
            if up {
                Ok(())
            } else {
                // a dead server costs the probe its full timeout
                tokio::time::sleep(Duration::from_millis(800)).await;
                Err(Failure::uncertain(format!("{name}: no RPC reply within 800ms")))
            }
        }
    }
}

impl Mounter for Fake {
    fn mounted(&self) -> Option<Server> {
        self.0.lock().unwrap().mounted
    }
    fn mount(&self, server: Server) -> impl Future<Output = Result<Option<u64>, String>> + Send + 'static {
        let w = self.0.clone();
        let (hangs, panics) = {
            let mut g = w.lock().unwrap();
            g.calls.push(format!("mount {}", server.name()));
            (g.mount_hangs, std::mem::take(&mut g.mount_panics))
        };
        async move {
            assert!(!panics, "scripted panic of the mount effect");
            let dir = w.lock().unwrap().state_dir.clone();
            if let Some(dir) = dir {
                let f = state::load(&dir).unwrap().durable.fsm;
                w.lock().unwrap().on_disk_at_mount.push((f.phase, f.epoch));
            }
            if hangs {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            w.lock().unwrap().mounted = Some(server);
            Ok(Some(40))
        }
    }
    fn staged_switch(
        &self,
        to: Server,
        keep_old: bool,
    ) -> impl Future<Output = Result<Option<u64>, (String, Option<Server>)>> + Send + 'static {
        let w = self.0.clone();
        let hangs = {
            let mut g = w.lock().unwrap();
            g.calls.push(format!("staged {} keep_old={keep_old}", to.name()));
            g.staged_hangs
        };
        async move {
            if hangs {
                w.lock().unwrap().mounted = None;
                std::future::pending::<()>().await;
            }
            w.lock().unwrap().mounted = Some(to);
            Ok(Some(41))
        }
    }
    #[allow(clippy::manual_async_fn, reason = "the trait's signature")]
    fn after_switch(&self, server: Server, _old: Option<u64>) -> impl Future<Output = String> + Send + 'static {
        async move { format!("after switch to {}", server.name()) }
    }
}

impl Fake {
    /// Records `call`, then takes 500 ms and returns the next scripted result (success if none left).
    fn scripted_sync(
        &self,
        call: &str,
        stats: SyncStats,
    ) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        let (r, hangs) = {
            let mut g = self.0.lock().unwrap();
            g.calls.push(call.into());
            let r = if g.sync_results.is_empty() { Ok(()) } else { g.sync_results.remove(0) };
            (r, g.sync_hangs)
        };
        async move {
            if hangs {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            r.map(|()| stats)
        }
    }
}

impl Syncer for Fake {
    fn reverse_sync(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        self.scripted_sync("reverse-sync", SyncStats { files: 3, bytes: 300, elapsed_ms: 500 })
    }
    fn catch_up(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        self.0.lock().unwrap().calls.push("catch-up".into());
        async move { Ok(SyncStats { files: 1, bytes: 10, elapsed_ms: 5 }) }
    }
    fn reconcile(&self) -> impl Future<Output = Result<SyncStats, String>> + Send + 'static {
        self.scripted_sync("reconcile", SyncStats { files: 4, bytes: 400, elapsed_ms: 500 })
    }
}

#[derive(Default)]
struct Sink(Mutex<Vec<AlertEvent>>);

impl AlertSink for Sink {
    fn emit(&self, e: AlertEvent) {
        self.0.lock().unwrap().push(e);
    }
}

impl Sink {
    fn kinds(&self) -> Vec<AlertKind> {
        self.0.lock().unwrap().iter().map(|e| e.kind).collect()
    }
    fn count(&self, k: AlertKind) -> usize {
        self.kinds().iter().filter(|x| **x == k).count()
    }
}

struct Rig {
    fake: Fake,
    sink: Arc<Sink>,
    dir: tempfile::TempDir,
    cfg: nfs_guard::config::web::WebConfig,
}

impl Rig {
    fn new(config: &str) -> Rig {
        let cfg = Config::parse(Path::new("t.toml"), config).unwrap().web.unwrap();
        Rig { fake: Fake::default(), sink: Arc::new(Sink::default()), dir: tempfile::tempdir().unwrap(), cfg }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    fn controller(&self) -> Controller<Fake, Fake, Fake> {
        let d = state::load(self.dir.path()).unwrap();
        let f = Arc::new(self.fake.clone());
        Controller::new(&self.cfg, self.state_dir(), d, f.clone(), f.clone(), f, self.sink.clone())
    }

    /// Starts the daemon loop; returns its stop token and handle.
    fn spawn(&self) -> (CancellationToken, tokio::task::JoinHandle<state::Durable>) {
        let stop = CancellationToken::new();
        let c = self.controller();
        let s = stop.clone();
        (stop, tokio::spawn(async move { c.run(false, s).await }))
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read_to_string(self.dir.path().join("web.status.json"))
            .map_or(serde_json::Value::Null, |t| serde_json::from_str(&t).unwrap())
    }

    fn phase(&self) -> Phase {
        state::load(self.dir.path()).unwrap().durable.fsm.phase
    }
}

/// Advances paused time in small steps until `cond` holds; returns the time it took.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn primary_down_three_times_unmount_mount_backup_one_alert() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (stop, h) = rig.spawn();
    until("serving primary", Duration::from_secs(3), || rig.status()["phase"]["phase"] == "serving").await;
    rig.fake.set_up("primary", false);
    let took = until("backup mounted", Duration::from_secs(10), || rig.fake.mounted() == Some(Server::Backup)).await;
    assert!(took <= Duration::from_secs(5), "failover took {took:?}, more than fall x interval + 2s");
    assert_eq!(rig.fake.calls(), vec!["mount backup"]);
    until("status updated", Duration::from_secs(2), || rig.status()["active"] == "backup").await;
    // stays put: no more mounts, one alert of each kind
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(rig.fake.calls(), vec!["mount backup"]);
    assert_eq!(rig.sink.count(AlertKind::FailoverStarted), 1, "{:?}", rig.sink.kinds());
    assert_eq!(rig.sink.count(AlertKind::FailoverCompleted), 1);
    let st = rig.status();
    assert_eq!(st["epoch"], 1);
    assert_eq!(st["pending_reverse_sync"], true);
    assert_eq!(st["servers"][0]["state"], "down");
    assert!(st["servers"][0]["last_error"].as_str().unwrap().contains("no RPC reply"), "{st}");
    stop.cancel();
    let d = h.await.unwrap();
    assert_eq!(d.fsm.phase, Phase::Serving { server: Server::Backup });
}

/// A reverse sync stuck on the backup's dead hard mount does not hold the farm there until the
/// pass deadline (1 h): the backup's death aborts it and the primary is served within the
/// failover bound; the backup's writes stay owed (a reconciliation).
#[tokio::test(start_paused = true)]
async fn the_backup_dying_during_a_stuck_reverse_sync_moves_to_the_primary_in_seconds() {
    let rig = Rig::new(CONFIG);
    {
        let mut w = rig.fake.0.lock().unwrap();
        w.mounted = Some(Server::Primary);
        w.sync_hangs = true;
    }
    let (stop, h) = rig.spawn();
    rig.fake.set_up("primary", false);
    until("backup mounted", Duration::from_secs(10), || rig.fake.mounted() == Some(Server::Backup)).await;
    rig.fake.set_up("primary", true);
    until("reverse sync started", Duration::from_secs(30), || rig.fake.calls().contains(&"reverse-sync".to_owned()))
        .await;
    rig.fake.set_up("backup", false);
    let took = until("primary served", Duration::from_secs(120), || rig.fake.mounted() == Some(Server::Primary)).await;
    assert!(took <= Duration::from_secs(6), "took {took:?}: the stuck pass held the failover");
    assert!(rig.sink.count(AlertKind::ReverseSyncFailed) >= 1, "{:?}", rig.sink.kinds());
    until("status updated", Duration::from_secs(3), || rig.status()["active"] == "primary").await;
    assert!(rig.status().to_string().contains("reconcile"), "the backup's writes stay owed: {}", rig.status());
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hung_mount_never_stops_the_controller() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    rig.fake.0.lock().unwrap().mount_hangs = true;
    let (stop, h) = rig.spawn();
    rig.fake.set_up("primary", false);
    until("mount started", Duration::from_secs(10), || !rig.fake.calls().is_empty()).await;
    // the controller keeps probing and publishing while the mount hangs
    let before = rig.status()["servers"][0]["consecutive_failures"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rig.status()["servers"][0]["consecutive_failures"].as_u64().unwrap();
    assert!(after >= before + 4, "probes stalled: {before} -> {after}");
    assert_eq!(rig.status()["phase"]["phase"], "mounting");
    // and an operator request is still taken
    state::put_request(&rig.state_dir(), Request::Hold).unwrap();
    until("hold recorded", Duration::from_secs(3), || rig.status()["hold"] == "stay").await;
    // the outer deadline (2 x mount_timeout + 10 s) ends the hung mount as a failure
    rig.fake.0.lock().unwrap().mount_hangs = false;
    until("mount abandoned", Duration::from_secs(60), || rig.sink.kinds().contains(&AlertKind::SwitchFailed)).await;
    assert!(rig.sink.0.lock().unwrap().iter().any(|e| e.kind == AlertKind::SwitchFailed
        && e.title.contains("FAILED")
        && e.reason.contains("exceeded its deadline")));
    assert_eq!(rig.sink.count(AlertKind::FailoverCompleted), 0, "a failed mount is not a completed failover");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failback_only_after_a_successful_reverse_sync_then_catch_up() {
    let rig = Rig::new(CONFIG);
    {
        let mut w = rig.fake.0.lock().unwrap();
        w.mounted = Some(Server::Backup);
        w.sync_results = vec![Err("exit 10 (connection refused)".into()), Err("exit 10 (connection refused)".into())];
    }
    let mut d = state::Durable::default();
    d.fsm.phase = Phase::Serving { server: Server::Backup };
    d.fsm.epoch = 1;
    d.fsm.pending_reverse_sync = true;
    state::save(&rig.state_dir(), &d).unwrap();
    let (stop, h) = rig.spawn();
    until("failed back", Duration::from_secs(60), || rig.fake.mounted() == Some(Server::Primary)).await;
    assert_eq!(
        rig.fake.calls(),
        vec!["reverse-sync", "reverse-sync", "reverse-sync", "staged primary keep_old=true", "catch-up"]
    );
    until("serving primary", Duration::from_secs(5), || rig.phase() == Phase::Serving { server: Server::Primary })
        .await;
    let k = rig.sink.kinds();
    assert_eq!(rig.sink.count(AlertKind::ReverseSyncFailed), 2, "{k:?}");
    assert_eq!(rig.sink.count(AlertKind::ReverseSyncSucceeded), 1);
    assert_eq!(rig.sink.count(AlertKind::FailbackCompleted), 1);
    let failed: Vec<String> = rig
        .sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == AlertKind::ReverseSyncFailed)
        .map(|e| e.title.clone())
        .collect();
    assert!(failed[0].contains("attempt 1") && failed[1].contains("attempt 2"), "{failed:?}");
    assert_eq!(rig.status()["pending_reverse_sync"], false);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn both_down_stays_put_with_one_alert() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.fake.set_up("primary", false);
    rig.fake.set_up("backup", false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(rig.fake.calls().is_empty(), "{:?}", rig.fake.calls());
    assert_eq!(rig.sink.kinds(), vec![AlertKind::BothDown]);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_flapping_primary_causes_no_mount_flapping() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes_before = rig.fake.probes("primary");
    // fails 2 checks out of every 3: never `fall` in a row
    for _ in 0..10 {
        rig.fake.set_up("primary", false);
        tokio::time::sleep(Duration::from_millis(1900)).await;
        rig.fake.set_up("primary", true);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // the test means something only if the primary was checked all along (one probe per 1 s interval,
    // a failing one taking 0.8 s) and did fail: 29 s of flapping
    let probed = rig.fake.probes("primary") - probes_before;
    assert!(probed >= 25, "only {probed} probes of the primary in 29 s");
    let st = rig.status();
    assert_eq!(st["servers"][0]["state"], "up", "{st}");
    assert!(st["servers"][0]["last_error"].as_str().is_some_and(|e| e.contains("no RPC reply")), "never failed: {st}");
    assert!(rig.sink.kinds().is_empty(), "{:?}", rig.sink.kinds());
    assert!(rig.fake.calls().is_empty(), "{:?}", rig.fake.calls());
    stop.cancel();
    h.await.unwrap();
}

/// Checks that outlast the interval (a dead server costs each one its timeout) follow each other back
/// to back: the tick missed while one ran starts the next as soon as it ends, not a whole interval
/// later, so detection takes `fall` timeouts, not `fall` x 2 intervals. Starts stay >= one interval
/// apart.
#[tokio::test(start_paused = true)]
async fn failing_checks_longer_than_the_interval_run_back_to_back() {
    let rig = Rig::new(&CONFIG.replace("interval = \"1s\"", "interval = \"500ms\""));
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (stop, h) = rig.spawn();
    // ticks at 0, 0.5, 1.0, ...: the primary dies just after the tick at 2.0 s checked it
    tokio::time::sleep(Duration::from_millis(2010)).await;
    rig.fake.set_up("primary", false);
    // failing checks (0.8 s each) start at 2.5, 3.3, 4.1: DOWN and the mount at 4.9 s
    // (one check per tick would start them at 2.5, 3.5, 4.5: 5.3 s)
    let took = until("mount backup", Duration::from_secs(10), || rig.fake.calls() == vec!["mount backup"]).await;
    assert!(took <= Duration::from_millis(2950), "{took:?}");
    assert!(took >= Duration::from_millis(2850), "{took:?}: fewer than fall failed checks");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn once_mode_counts_failures_across_runs() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    rig.controller().run(true, CancellationToken::new()).await;
    rig.fake.set_up("primary", false);
    for run in 1..=2 {
        let d = rig.controller().run(true, CancellationToken::new()).await;
        assert_eq!(d.health.primary.fails, run);
        assert!(rig.fake.calls().is_empty(), "run {run} switched too early");
    }
    let d = rig.controller().run(true, CancellationToken::new()).await;
    assert_eq!(rig.fake.calls(), vec!["mount backup"]);
    assert_eq!(d.fsm.phase, Phase::Serving { server: Server::Backup }, "the run waits for its mount");
    assert_eq!(rig.sink.count(AlertKind::FailoverStarted), 1);
}

#[tokio::test(start_paused = true)]
async fn restart_mid_failover_resumes_from_the_mount_table() {
    let rig = Rig::new(CONFIG);
    // a previous process died after detaching the primary and before the backup mount finished
    let mut d = state::Durable::default();
    d.fsm.phase = Phase::Mounting { to: Server::Backup };
    d.fsm.epoch = 1;
    d.fsm.pending_reverse_sync = true;
    state::save(&rig.state_dir(), &d).unwrap();
    rig.fake.set_up("primary", false);
    let (stop, h) = rig.spawn();
    until("backup mounted", Duration::from_secs(10), || rig.fake.mounted() == Some(Server::Backup)).await;
    assert_eq!(rig.fake.calls(), vec!["mount backup"]);
    until("serving backup", Duration::from_secs(3), || rig.phase() == Phase::Serving { server: Server::Backup }).await;
    assert_eq!(state::load(&rig.state_dir()).unwrap().durable.fsm.epoch, 1, "the same episode, not a new failover");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn restart_during_catch_up_finishes_the_pass() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let mut d = state::Durable::default();
    d.fsm.phase = Phase::CatchingUp;
    d.fsm.epoch = 1;
    d.fsm.pending_reverse_sync = true;
    state::save(&rig.state_dir(), &d).unwrap();
    let (stop, h) = rig.spawn();
    // the failback was mailed at the switch (before the restart); the finished catch-up is logged
    until("catch-up finished", Duration::from_secs(5), || rig.phase() == Phase::Serving { server: Server::Primary })
        .await;
    assert_eq!(rig.fake.calls(), vec!["catch-up"]);
    assert!(rig.sink.kinds().is_empty(), "{:?}", rig.sink.kinds());
    let d = state::load(&rig.state_dir()).unwrap().durable;
    assert_eq!(d.fsm.phase, Phase::Serving { server: Server::Primary });
    assert!(!d.fsm.pending_reverse_sync);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn network_loss_and_recovery_never_switch() {
    let rig = Rig::new(&CONFIG.replace("hold_down = \"5s\"", "hold_down = \"5s\"\nwitness = \"10.9.0.1\""));
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for who in ["primary", "backup", "witness"] {
        rig.fake.set_up(who, false);
    }
    until("network-lost alert", Duration::from_secs(10), || rig.sink.count(AlertKind::NetworkLost) == 1).await;
    // the link comes back; the backup and the witness answer a little before the primary does
    rig.fake.set_up("backup", true);
    rig.fake.set_up("witness", true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    rig.fake.set_up("primary", true);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(rig.fake.calls().is_empty(), "{:?} {:?}", rig.fake.calls(), rig.sink.kinds());
    assert_eq!(rig.sink.kinds(), vec![AlertKind::NetworkLost]);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn manual_failover_and_release() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    state::put_request(&rig.state_dir(), Request::FailoverTo(Server::Backup)).unwrap();
    until("switched", Duration::from_secs(3), || rig.fake.mounted() == Some(Server::Backup)).await;
    assert_eq!(rig.fake.calls(), vec!["staged backup keep_old=false"]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(rig.fake.calls().len(), 1, "held: no failback");
    state::put_request(&rig.state_dir(), Request::Release).unwrap();
    until("failed back", Duration::from_secs(30), || rig.fake.mounted() == Some(Server::Primary)).await;
    assert_eq!(rig.sink.count(AlertKind::ManualOverride), 2);
    stop.cancel();
    h.await.unwrap();
}

/// The backup dies while it is served and before any reverse sync succeeded: the node moves to the
/// primary and records a reconciliation of the epoch (durably); after a restart, in `--once` runs, the
/// reconciliation waits for the backup (rise + hold-down), fails once, backs off, succeeds, and clears
/// the flag, all without moving the mount.
#[tokio::test(start_paused = true)]
async fn a_backup_dying_while_served_is_reconciled_once_it_is_back() {
    let rig = Rig::new(CONFIG);
    {
        let mut w = rig.fake.0.lock().unwrap();
        w.mounted = Some(Server::Backup);
        w.sync_results = vec![Err("exit 10 (connection refused)".into()); 8];
    }
    let mut d = state::Durable::default();
    d.fsm.phase = Phase::Serving { server: Server::Backup };
    d.fsm.epoch = 1;
    d.fsm.pending_reverse_sync = true;
    state::save(&rig.state_dir(), &d).unwrap();
    let (stop, h) = rig.spawn();
    until("a failed reverse sync", Duration::from_secs(30), || rig.sink.count(AlertKind::ReverseSyncFailed) >= 1).await;
    rig.fake.set_up("backup", false);
    until("moved to the primary", Duration::from_secs(30), || rig.fake.mounted() == Some(Server::Primary)).await;
    until("serving primary", Duration::from_secs(5), || rig.phase() == Phase::Serving { server: Server::Primary })
        .await;
    let s = rig.status();
    assert_eq!(s["pending_reconcile_epoch"], 1, "{s}");
    assert_eq!(s["pending_reverse_sync"], false);
    assert_eq!(state::load(&rig.state_dir()).unwrap().durable.fsm.reconcile_epoch, Some(1), "durable");
    stop.cancel();
    h.await.unwrap();

    // restart; the backup comes back; one failed reconciliation, then success
    {
        let mut w = rig.fake.0.lock().unwrap();
        w.sync_results = vec![Err("rsync exit 5 (auth failed)".into())];
        w.calls.clear();
    }
    rig.fake.set_up("backup", true);
    let titles = |part: &str| {
        rig.sink.0.lock().unwrap().iter().filter(|e| e.title.contains(part)).map(|e| e.kind).collect::<Vec<_>>()
    };
    let (stop, h) = rig.spawn();
    // rise (3 checks) + hold-down (5 s) + a failed attempt + backoff (2 s) + the second attempt
    let took = until("reconciled", Duration::from_secs(30), || rig.status()["pending_reconcile_epoch"].is_null()).await;
    assert!(took >= Duration::from_secs(9), "reconciled after {took:?}: before rise + hold-down + backoff");
    stop.cancel();
    h.await.unwrap();
    assert_eq!(rig.fake.calls(), vec!["reconcile", "reconcile"], "the mount never moved");
    assert_eq!(rig.fake.mounted(), Some(Server::Primary));
    assert_eq!(
        titles("reconciliation"),
        vec![
            AlertKind::ReverseSyncStarted,
            AlertKind::ReverseSyncFailed,
            AlertKind::ReverseSyncStarted,
            AlertKind::ReverseSyncSucceeded
        ]
    );
    assert_eq!(rig.phase(), Phase::Serving { server: Server::Primary });
    assert_eq!(state::load(&rig.state_dir()).unwrap().durable.fsm.reconcile_epoch, None);
}

/// A `--once` run that finds the reconciliation due starts it and waits for it before returning.
#[tokio::test(start_paused = true)]
async fn once_mode_runs_a_due_reconciliation_to_completion() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let mut d = state::Durable::default();
    d.fsm.phase = Phase::Serving { server: Server::Primary };
    d.fsm.epoch = 2;
    d.fsm.reconcile_epoch = Some(2);
    d.fsm.up_since.backup = Some(0); // up for ages (wall clock)
    for h in [&mut d.health.primary, &mut d.health.backup] {
        h.status = nfs_guard::web::health::Status::Up;
        h.oks = 3;
    }
    d.fsm.health.status.primary = nfs_guard::web::health::Status::Up;
    d.fsm.health.status.backup = nfs_guard::web::health::Status::Up;
    state::save(&rig.state_dir(), &d).unwrap();
    let d = rig.controller().run(true, CancellationToken::new()).await;
    assert_eq!(rig.fake.calls(), vec!["reconcile"]);
    assert_eq!(d.fsm.reconcile_epoch, None);
    assert_eq!(d.fsm.phase, Phase::Serving { server: Server::Primary });
    assert_eq!(state::load(&rig.state_dir()).unwrap().durable.fsm.reconcile_epoch, None);
    assert_eq!(rig.sink.count(AlertKind::ReverseSyncSucceeded), 1);
}

/// A staged switch that is abandoned at its deadline after it detached the mount point: the state
/// machine learns what mountinfo shows (nothing), not what it believed before (the primary), and the
/// mount point is mounted again at once instead of being left empty while "serving".
#[tokio::test(start_paused = true)]
async fn an_abandoned_staged_switch_reports_what_mountinfo_shows() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    rig.fake.0.lock().unwrap().staged_hangs = true;
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    state::put_request(&rig.state_dir(), Request::FailoverTo(Server::Backup)).unwrap();
    until("staged switch started", Duration::from_secs(3), || !rig.fake.calls().is_empty()).await;
    rig.fake.0.lock().unwrap().staged_hangs = false;
    until("switch abandoned", Duration::from_secs(120), || rig.sink.count(AlertKind::SwitchFailed) == 1).await;
    let failed = rig.sink.0.lock().unwrap().iter().find(|e| e.kind == AlertKind::SwitchFailed).cloned().unwrap();
    assert!(failed.next_steps.contains("EMPTY"), "{failed:?}");
    until("mounted again", Duration::from_secs(5), || rig.fake.mounted().is_some()).await;
    assert_eq!(rig.fake.calls()[1..], ["mount backup"], "{:?}", rig.fake.calls());
    stop.cancel();
    h.await.unwrap();
}

/// A corrupt state file never disables HA: it is moved aside, the state is rebuilt from the mount table
/// (the backup is mounted, so its writes must go back before any failback), one alert says so, and the
/// node goes on: the failback waits for a reverse sync.
#[tokio::test(start_paused = true)]
async fn a_corrupt_state_file_is_moved_aside_alerted_and_rebuilt_from_the_mount_table() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Backup);
    std::fs::write(state::state_path(&rig.state_dir()), "{\"fsm\": {\"phase\": ").unwrap();
    let (stop, h) = rig.spawn();
    until("alerted", Duration::from_secs(1), || rig.sink.count(AlertKind::StateQuarantined) == 1).await;
    let e = rig.sink.0.lock().unwrap()[0].clone();
    assert!(e.title.ends_with("web.state.json unusable: rebuilt from the mount table"), "{e:?}");
    assert!(e.reason.starts_with("not valid web state JSON: "), "{e:?}");
    assert!(e.details[0].1.contains("a reverse sync backup -> primary is pending"), "{e:?}");
    assert!(e.next_steps.contains("web.state.json.corrupt-"), "{e:?}");
    until("failed back", Duration::from_secs(30), || rig.fake.mounted() == Some(Server::Primary)).await;
    assert_eq!(rig.fake.calls()[..2], ["reverse-sync", "staged primary keep_old=true"]);
    stop.cancel();
    h.await.unwrap();
    let kept: Vec<_> = std::fs::read_dir(rig.state_dir())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with("web.state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(rig.state_dir().join(&kept[0])).unwrap(),
        "{\"fsm\": {\"phase\": ",
        "kept as it was"
    );
}

/// An unreadable operator request (here a FIFO: reading it must not block the loop) is moved aside and
/// alerted, never acted on; the loop goes on probing.
#[tokio::test(start_paused = true)]
async fn an_unreadable_request_is_alerted_and_never_blocks() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nix::unistd::mkfifo(&state::request_path(&rig.state_dir()), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap();
    until("alerted", Duration::from_secs(3), || rig.sink.count(AlertKind::StateQuarantined) == 1).await;
    let e = rig.sink.0.lock().unwrap()[0].clone();
    assert!(e.title.contains("web.request.json IGNORED"), "{e:?}");
    assert_eq!(e.reason, "is a FIFO, not a regular file");
    let probes = rig.fake.probes("primary");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(rig.fake.probes("primary") >= probes + 4, "the loop goes on");
    assert_eq!(rig.sink.count(AlertKind::StateQuarantined), 1, "once");
    assert!(rig.fake.calls().is_empty(), "{:?}", rig.fake.calls());
    stop.cancel();
    h.await.unwrap();
}

/// The durable state is written off the loop (fsync on a blocking thread), yet an effect still starts
/// only after the state it was decided on is on disk: a crash mid-mount resumes the right episode.
#[tokio::test(start_paused = true)]
async fn an_effect_starts_only_after_its_state_is_durable() {
    let rig = Rig::new(CONFIG);
    {
        let mut w = rig.fake.0.lock().unwrap();
        w.mounted = Some(Server::Primary);
        w.state_dir = Some(rig.state_dir());
    }
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.fake.set_up("primary", false);
    until("backup mounted", Duration::from_secs(10), || rig.fake.mounted() == Some(Server::Backup)).await;
    assert_eq!(rig.fake.0.lock().unwrap().on_disk_at_mount, vec![(Phase::Mounting { to: Server::Backup }, 1)]);
    stop.cancel();
    let d = h.await.unwrap();
    assert_eq!(state::load(&rig.state_dir()).unwrap().durable, d, "the last state is flushed on stop");
}

/// A panicked effect is a failure the state machine hears about (alert, retry), not silence that
/// leaves the node "mounting" forever.
#[tokio::test(start_paused = true)]
async fn a_panicked_effect_is_a_failure_not_silence() {
    let rig = Rig::new(CONFIG);
    {
        let mut w = rig.fake.0.lock().unwrap();
        w.mounted = Some(Server::Primary);
        w.mount_panics = true;
    }
    let (stop, h) = rig.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.fake.set_up("primary", false);
    until("switch failed", Duration::from_secs(10), || rig.sink.count(AlertKind::SwitchFailed) == 1).await;
    assert!(rig
        .sink
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.kind == AlertKind::SwitchFailed && e.reason.contains("panicked")));
    until("mounted on retry", Duration::from_secs(10), || rig.fake.mounted() == Some(Server::Backup)).await;
    assert_eq!(rig.fake.calls(), ["mount backup", "mount backup"]);
    stop.cancel();
    h.await.unwrap();
}

fn counting_watchdog(period: Duration) -> (Arc<std::sync::atomic::AtomicUsize>, nfs_guard::sys::systemd::Watchdog) {
    let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = pings.clone();
    let w = nfs_guard::sys::systemd::Watchdog::with(Some(period), move || {
        p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    (pings, w)
}

/// The loop pings at least once per watchdog period even when the check interval is longer and an
/// effect runs for minutes.
#[tokio::test(start_paused = true)]
async fn the_loop_pings_the_watchdog_every_period_whatever_it_waits_for() {
    let rig = Rig::new(&CONFIG.replace("interval = \"1s\"", "interval = \"60s\""));
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    rig.fake.0.lock().unwrap().mount_hangs = true;
    let (pings, w) = counting_watchdog(Duration::from_secs(5));
    let stop = CancellationToken::new();
    let c = rig.controller().with_watchdog(w);
    let h = tokio::spawn(c.run(false, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = pings.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let n = pings.load(std::sync::atomic::Ordering::SeqCst) - start;
    assert!(n >= 120 / 5, "{n} pings in 120 s with a 5 s period");
    stop.cancel();
    h.await.unwrap();
}

/// A WEDGED loop (blocked inside an iteration) stops pinging, so systemd restarts the unit; it pings
/// again once it moves. Real time on two worker threads: the loop blocks one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_loop_stops_pinging_the_watchdog() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let period = Duration::from_millis(50);
    let (pings, w) = counting_watchdog(period);
    let stop = CancellationToken::new();
    let c = rig.controller().with_watchdog(w);
    let h = tokio::spawn(c.run(false, stop.clone()));
    let count = || pings.load(std::sync::atomic::Ordering::SeqCst);
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait("first pings", &|| count() >= 3);
    let (unwedge, rx) = std::sync::mpsc::channel();
    rig.fake.0.lock().unwrap().wedge = Some(rx);
    wait("the loop wedged", &|| rig.fake.0.lock().unwrap().wedged);
    let at_wedge = count();
    // a negative needs an observation window: 10 watchdog periods
    std::thread::sleep(period * 10);
    assert!(count() <= at_wedge + 1, "pinged while wedged: {at_wedge} -> {}", count());
    unwedge.send(()).unwrap();
    wait("pings again", &|| count() >= at_wedge + 3);
    stop.cancel();
    h.await.unwrap();
}

/// A farm whose record the test sets (`[cluster]`; the real one is `farm`, lab-tested in
/// `tests/farm_lab.rs`): the controller follows it through `farm::decide::follow`.
struct FakeFarm(tokio::sync::watch::Sender<nfs_guard::farm::decide::View>);

impl FakeFarm {
    fn record(&self, active: Server) {
        let r =
            nfs_guard::farm::decide::FarmRecord { active, epoch: 1, since_ms: 0, by: "w1".into(), switching: false };
        self.0.send_modify(|v| v.record = Some(r));
    }
}

impl nfs_guard::web::follow::Follow for FakeFarm {
    fn follow(&self, local: nfs_guard::web::fsm::Snapshot, serving: Option<Server>) -> nfs_guard::web::fsm::Snapshot {
        nfs_guard::farm::decide::follow(&local, serving, &self.0.borrow())
    }
    fn primary_released(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.0.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|v| v.connected && v.active() == Server::Primary).await;
        })
    }
}

/// In a farm the node follows the record, not its own checks: the primary down from here alone
/// moves nothing; the record naming the backup moves the node even while it sees the primary up;
/// the record naming the primary again brings it back.
#[tokio::test(start_paused = true)]
async fn a_farm_node_follows_the_record_not_its_own_checks() {
    let rig = Rig::new(CONFIG);
    rig.fake.0.lock().unwrap().mounted = Some(Server::Primary);
    let (tx, _) =
        tokio::sync::watch::channel(nfs_guard::farm::decide::View { record: None, connected: true, autonomy: false });
    let farm = Arc::new(FakeFarm(tx));
    let stop = CancellationToken::new();
    let c = rig.controller().with_farm(farm.clone());
    let h = tokio::spawn({
        let s = stop.clone();
        async move { c.run(false, s).await }
    });
    until("serving primary", Duration::from_secs(3), || rig.status()["phase"]["phase"] == "serving").await;
    rig.fake.set_up("primary", false);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(rig.fake.calls(), Vec::<String>::new(), "the farm serves the primary: no switch alone");
    rig.fake.set_up("primary", true);
    farm.record(Server::Backup);
    until("backup mounted", Duration::from_secs(5), || rig.fake.mounted() == Some(Server::Backup)).await;
    assert_eq!(rig.fake.calls(), vec!["mount backup"]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(rig.fake.mounted(), Some(Server::Backup), "the primary up from here does not bring it back");
    farm.record(Server::Primary);
    until("primary mounted", Duration::from_secs(15), || rig.fake.mounted() == Some(Server::Primary)).await;
    stop.cancel();
    let d = h.await.unwrap();
    assert_eq!(d.fsm.phase, Phase::Serving { server: Server::Primary });
}
