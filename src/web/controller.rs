//! The controller: ONE task owns the state. Every interval it spawns a probe per target (never two at
//! once for the same target), feeds each result through hysteresis into the pure state machine, and
//! spawns the actions it returns as effects that report back as events, each with an outer deadline.
//! It never awaits an effect inline, so a hung mount or a slow rsync never stops it from probing,
//! answering status or taking operator requests. In `--once` mode it runs one probe round, waits for
//! the effects it started, persists and returns.
//!
//! Supervision: probes and effects are in a `JoinSet` the loop watches (a panicked one reports its
//! failure event); the systemd watchdog is pinged by the loop itself, which wakes at least once per
//! watchdog period, so a wedged loop is restarted. Durable state writes (fsync) run on a blocking
//! thread of the persister task; an effect starts only after the state it was decided on is written.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::effects::{Mounter, Prober, SyncStats, Syncer, Target};
use super::fsm::{self, Action, Event, Notice, PerServer, Phase, Policy, Server, Snapshot, SyncKind};
use super::health::{Failure, Health, Hysteresis, Status};
use super::state::{self, Durable, Loaded, Quarantined, Taken};
use crate::alert::notice;
use crate::alert::{AlertEvent, AlertKind, AlertSink, Role};
use crate::config::web::WebConfig;
use crate::timing::Clock;

/// Margin added to an effect's own deadlines before the controller gives up on it.
const EFFECT_GRACE: Duration = Duration::from_secs(10);
/// How long a stopping daemon waits for running effects (under systemd's TimeoutStopSec=20s).
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long the last state write may take when the loop ends.
const FLUSH_GRACE: Duration = Duration::from_secs(3);

enum Msg {
    Probed(Target, Result<(), Failure>),
    Done(Event),
    AfterSwitch(String),
}

/// The failure event of an effect that did not report: `why` is "exceeded its deadline" or "panicked".
type OnFail = Arc<dyn Fn(&str) -> Event + Send + Sync>;

/// What a task in the controller's `JoinSet` is, so one that panics still reports (as a failure).
enum Job {
    Probe(Target),
    Effect(OnFail),
    AfterSwitch,
}

pub struct Controller<P, M, S> {
    cfg: Arc<WebConfig>,
    state_dir: PathBuf,
    policy: Policy,
    /// The servers as alerts name them, e.g. `primary (10.0.0.2:/srv/nfs)`.
    labels: PerServer<String>,
    d: Durable,
    prober: Arc<P>,
    mounter: Arc<M>,
    syncer: Arc<S>,
    alerts: Arc<dyn AlertSink>,
    /// Every probe and effect: the loop watches them; a panicked one reports as a failure.
    tasks: JoinSet<Msg>,
    jobs: HashMap<Id, Job>,
    watchdog: crate::sys::systemd::Watchdog,
    probing: [bool; 3],
    /// A tick found the target's check still running.
    tick_missed: [bool; 3],
    reported: [bool; 3],
    effects: usize,
    clock: Clock,
    last_status: Vec<u8>,
    /// For `nfs-guard status`: when each target was last checked, the last phase change.
    seen: super::observe::Seen,
    last_after_switch: Option<String>,
    /// The running rsync pass (reverse sync, catch-up, reconciliation) and how to abort it.
    pass_cancel: Option<(u64, CancellationToken)>,
    /// The unusable state file this run started without (alerted once the mount table is read).
    quarantined: Option<Quarantined>,
    /// Durable state writes (fsync) go to the persister task, never onto the loop.
    persist_tx: mpsc::UnboundedSender<(u64, Durable)>,
    persist_rx: Option<mpsc::UnboundedReceiver<(u64, Durable)>>,
    /// The generation last written by the persister; effects wait for theirs before they start.
    persisted: watch::Receiver<u64>,
    persisted_tx: Option<watch::Sender<u64>>,
    persist_gen: u64,
    /// `[cluster]`: the farm whose verdict the state machine follows (see `follow`).
    farm: Option<Arc<dyn super::follow::Follow>>,
}

impl<P: Prober, M: Mounter, S: Syncer> Controller<P, M, S> {
    pub fn new(
        cfg: &WebConfig,
        state_dir: PathBuf,
        loaded: Loaded,
        prober: Arc<P>,
        mounter: Arc<M>,
        syncer: Arc<S>,
        alerts: Arc<dyn AlertSink>,
    ) -> Self {
        let (persist_tx, persist_rx) = mpsc::unbounded_channel();
        let (persisted_tx, persisted) = watch::channel(0);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let policy = Policy {
            hold_down_ms: ms(cfg.hold_down),
            failback: cfg.reverse_sync.is_some() || cfg.agents.is_some(),
            retry_initial_ms: cfg.reverse_sync.as_ref().map_or(30_000, |r| ms(r.retry_initial)),
            retry_max_ms: cfg.reverse_sync.as_ref().map_or(600_000, |r| ms(r.retry_max)),
        };
        let labels = PerServer {
            primary: format!("primary ({})", cfg.primary.source()),
            backup: format!("backup ({})", cfg.backup.source()),
        };
        Controller {
            cfg: Arc::new(cfg.clone()),
            state_dir,
            policy,
            labels,
            d: loaded.durable,
            prober,
            mounter,
            syncer,
            alerts,
            tasks: JoinSet::new(),
            jobs: HashMap::new(),
            watchdog: crate::sys::systemd::Watchdog::with(None, || {}),
            probing: [false; 3],
            tick_missed: [false; 3],
            reported: [false; 3],
            effects: 0,
            clock: Clock::start(),
            last_status: Vec::new(),
            seen: super::observe::Seen::default(),
            last_after_switch: None,
            pass_cancel: None,
            quarantined: loaded.quarantined,
            persist_tx,
            persist_rx: Some(persist_rx),
            persisted,
            persisted_tx: Some(persisted_tx),
            persist_gen: 0,
            farm: None,
        }
    }

    /// Follows `farm`'s verdict instead of deciding alone (`[cluster]`).
    #[must_use]
    pub fn with_farm(mut self, farm: Arc<dyn super::follow::Follow>) -> Self {
        self.farm = Some(farm);
        self
    }

    /// Pings `watchdog` from the loop (the daemon uses systemd's; default: none).
    #[must_use]
    pub fn with_watchdog(mut self, watchdog: crate::sys::systemd::Watchdog) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// Runs until `shutdown` (daemon) or until one cycle is complete (`once`). Never unmounts on exit.
    pub async fn run(mut self, once: bool, shutdown: CancellationToken) -> Durable {
        if let (Some(rx), Some(done)) = (self.persist_rx.take(), self.persisted_tx.take()) {
            tokio::spawn(persister(self.state_dir.clone(), rx, done));
        }
        self.reconcile();
        if let Some(q) = self.quarantined.take() {
            let e = self.rebuilt_alert(&q);
            self.alert(e);
        }
        self.publish();
        if !once {
            crate::sys::systemd::ready(&self.summary());
        }
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The loop wakes at least every watchdog period and pings after each iteration: the ping
        // proves THIS loop makes progress (no independent timer task keeps a wedged loop alive).
        let mut wake = tokio::time::interval(self.watchdog.period().unwrap_or(Duration::from_secs(3600)));
        wake.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticked = false;
        loop {
            self.watchdog.ping();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = self.tasks.join_next_with_id() => {
                    let msg = self.finished(done);
                    self.handle(msg);
                }
                _ = tick.tick(), if !(once && ticked) => {
                    ticked = true;
                    self.on_tick();
                }
                _ = wake.tick() => {}
            }
            if once && ticked && self.effects == 0 && self.round_complete() {
                break;
            }
        }
        if shutdown.is_cancelled() && self.effects > 0 {
            // A switch half done is worse than a slow stop: let running effects report (bounded), but
            // start nothing new. Nothing is unmounted because we stop.
            tracing::info!(effects = self.effects, "stopping: waiting for running effects");
            crate::sys::systemd::stopping();
            let grace = tokio::time::sleep(STOP_GRACE);
            tokio::pin!(grace);
            while self.effects > 0 {
                self.watchdog.ping();
                tokio::select! {
                    () = &mut grace => break,
                    Some(done) = self.tasks.join_next_with_id() => {
                        let msg = self.finished(done);
                        self.settle(msg);
                    }
                    _ = wake.tick() => {}
                }
            }
            if self.effects > 0 {
                tracing::error!(
                    effects = self.effects,
                    "stopping with effects still running after {STOP_GRACE:?}: abandoned"
                );
            }
        }
        // probes, and effects past the grace, are aborted here (mount helpers are killed with them)
        self.tasks.abort_all();
        self.persist();
        self.flush().await;
        self.publish();
        if !once {
            crate::sys::systemd::stopping();
        }
        self.d
    }

    /// Waits (bounded) until the persister has written the latest state.
    async fn flush(&mut self) {
        let gen = self.persist_gen;
        if tokio::time::timeout(FLUSH_GRACE, self.persisted.wait_for(|g| *g >= gen)).await.is_err() {
            tracing::error!(state_dir = %self.state_dir.display(), "the web state was not written within {FLUSH_GRACE:?}");
        }
    }

    /// Turns a finished task into its report. A task that panicked (or was aborted) is an ERROR:
    /// a probe reports a failed check, an effect its failure event; never silence.
    fn finished(&mut self, done: Result<(Id, Msg), JoinError>) -> Msg {
        let (id, outcome) = match done {
            Ok((id, msg)) => (id, Ok(msg)),
            Err(e) => (e.id(), Err(e)),
        };
        match (outcome, self.jobs.remove(&id)) {
            (Ok(msg), _) => msg,
            (Err(e), job) => {
                let why = if e.is_panic() { "panicked" } else { "was cancelled" };
                tracing::error!(task = %id, error = %e, "a web role task {why}");
                match job {
                    Some(Job::Probe(t)) => Msg::Probed(t, Err(Failure::uncertain(format!("the check task {why}")))),
                    Some(Job::Effect(on_fail)) => Msg::Done(on_fail(why)),
                    Some(Job::AfterSwitch) | None => Msg::AfterSwitch(format!("after-switch actions {why}")),
                }
            }
        }
    }

    fn spawn_job(&mut self, job: Job, fut: impl Future<Output = Msg> + Send + 'static) {
        let handle = self.tasks.spawn(fut);
        self.jobs.insert(handle.id(), job);
    }

    /// Records an effect's completion while stopping, without starting follow-up actions.
    fn settle(&mut self, msg: Msg) {
        match msg {
            Msg::Probed(t, _) => self.probing[t.index()] = false,
            Msg::AfterSwitch(_) => self.effects = self.effects.saturating_sub(1),
            Msg::Done(event) => {
                self.effects = self.effects.saturating_sub(1);
                let now = self.clock.now_ms();
                let t = fsm::step(&self.d.fsm, event, &self.policy, now);
                self.d.fsm = t.next;
                for a in t.actions {
                    if let Action::Notify(n) = a {
                        self.alerts.emit(self.render(&n));
                    }
                }
            }
        }
    }

    fn round_complete(&self) -> bool {
        Target::ALL.iter().all(|t| self.reported[t.index()] || !self.wants(*t))
    }

    fn wants(&self, t: Target) -> bool {
        t != Target::Witness || self.cfg.witness.is_some()
    }

    /// Makes the persisted phase agree with what mountinfo shows: work that was in progress when the
    /// process stopped is re-decided from what is actually mounted.
    fn reconcile(&mut self) {
        let mounted = self.mounter.mounted();
        let before = self.d.fsm.phase;
        let serving = mounted.map_or(Phase::Unmounted, |server| Phase::Serving { server });
        let mut resume_catch_up = false;
        let phase = match before {
            Phase::Serving { server } if mounted == Some(server) => before,
            Phase::CatchingUp | Phase::Staging { to: Server::Primary }
                if mounted == Some(Server::Primary) && self.d.fsm.pending_reverse_sync =>
            {
                // A failback that got as far as its switch: the switch only happens after the final
                // catch-up (or drain) with the backup's writes frozen, so nothing is left to copy;
                // finish it (the kept mount detached, the backup's agent told). A reconciliation
                // here would copy the backup's old copies over the primary's newer writes.
                tracing::info!("finishing the failback interrupted after its switch");
                resume_catch_up = true;
                Phase::CatchingUp
            }
            Phase::Unmounted
            | Phase::CatchingUp
            | Phase::Serving { .. }
            | Phase::Mounting { .. }
            | Phase::Syncing { .. }
            | Phase::Staging { .. } => serving,
        };
        if phase == (Phase::Serving { server: Server::Primary }) {
            // On the primary with the backup's writes not synced (an interrupted catch-up, a crash
            // mid-switch): record the reconciliation, so it runs once the backup is healthy.
            self.d.fsm.leave_backup_unsynced(self.policy.failback);
        }
        if mounted == Some(Server::Backup) && !self.d.fsm.pending_reverse_sync {
            // Someone (or an interrupted failover) left the backup mounted: assume writes happened there.
            self.d.fsm.pending_reverse_sync = true;
        }
        if phase != before {
            tracing::info!(from = ?before, to = ?phase, "resuming from the mount table");
        }
        self.d.fsm.phase = phase;
        self.persist();
        if resume_catch_up {
            self.act(Action::CatchUp { pass: self.d.fsm.pass });
        }
    }

    fn on_tick(&mut self) {
        match state::take_request(&self.state_dir) {
            Taken::Nothing => {}
            Taken::Request(r) => {
                tracing::info!(request = ?r, "operator request");
                self.step(Event::Requested(r));
            }
            Taken::Unreadable(q) => {
                let e = AlertEvent::new(
                    AlertKind::StateQuarantined,
                    Role::Web,
                    format!("operator request {} IGNORED: unreadable", q.path.display()),
                    q.problem.clone(),
                )
                .next_steps(format!(
                    "Nothing was switched. Repeat the command (nfs-guard web --failover-to/--hold/--release).{}",
                    moved_text(&q)
                ));
                self.alert(e);
            }
        }
        for t in Target::ALL {
            if !self.wants(t) {
                continue;
            }
            if self.probing[t.index()] {
                // still running (a timeout longer than the interval): the next starts when it ends
                self.tick_missed[t.index()] = true;
                continue;
            }
            self.spawn_probe(t);
        }
        self.step(Event::Ticked);
    }

    fn spawn_probe(&mut self, t: Target) {
        self.probing[t.index()] = true;
        let canary = self.d.fsm.active().is_some_and(|s| Target::of(s) == t);
        let fut = self.prober.probe(t, canary);
        self.spawn_job(Job::Probe(t), async move { Msg::Probed(t, fut.await) });
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Probed(t, result) => {
                self.probing[t.index()] = false;
                self.reported[t.index()] = true;
                let now = self.clock.now_ms();
                self.seen.checked_ms[t.index()] = Some(now);
                let hysteresis =
                    Hysteresis { fall: self.cfg.fall, fall_certain: self.cfg.fall_certain, rise: self.cfg.rise };
                let h = match t {
                    Target::Primary => &mut self.d.health.primary,
                    Target::Backup => &mut self.d.health.backup,
                    Target::Witness => &mut self.d.health.witness,
                };
                if let Err(e) = &result {
                    tracing::debug!(target = ?t, error = %e.reason, certain = e.certain, "check failed");
                }
                let was = h.status;
                if let Some(status) = h.observe(result, hysteresis, now) {
                    tracing::info!(target = ?t, status = status.name(), last_error = ?h.last_error, "health changed");
                    if t == Target::Witness && was == Status::Down && status == Status::Up {
                        // Our own network is back: the servers' DOWN verdicts date from the outage and
                        // say nothing about them. Judge them afresh, or the first to climb back to UP
                        // (through `rise`) would look like the only live server and trigger a switch.
                        tracing::info!("network back: server verdicts from the outage discarded");
                        for s in [&mut self.d.health.primary, &mut self.d.health.backup] {
                            *s = Health { last_error: s.last_error.take(), since_ms: Some(now), ..Health::default() };
                        }
                    }
                }
                let mut snap = self.snapshot();
                if let Some(farm) = &self.farm {
                    snap = farm.follow(snap, self.d.fsm.active());
                }
                self.step(Event::HealthObserved(snap));
                // a tick came while this check ran: the next one now, not an interval late (starts
                // stay at least one interval apart)
                if std::mem::take(&mut self.tick_missed[t.index()]) {
                    self.spawn_probe(t);
                }
            }
            Msg::Done(event) => {
                self.effects = self.effects.saturating_sub(1);
                self.step(event);
            }
            Msg::AfterSwitch(summary) => {
                self.effects = self.effects.saturating_sub(1);
                tracing::info!("{summary}");
                self.last_after_switch = Some(summary);
                self.publish();
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let h = &self.d.health;
        Snapshot {
            status: PerServer { primary: h.primary.status, backup: h.backup.status },
            witness: self.cfg.witness.as_ref().map(|_| h.witness.status),
            error: PerServer { primary: h.primary.last_error.clone(), backup: h.backup.last_error.clone() },
            failing: PerServer { primary: h.primary.fails > 0, backup: h.backup.fails > 0 },
            witness_failing: self.cfg.witness.is_some() && h.witness.fails > 0,
        }
    }

    fn step(&mut self, event: Event) {
        let now = self.clock.now_ms();
        let why = super::observe::why(&event);
        let t = fsm::step(&self.d.fsm, event, &self.policy, now);
        if t.next.phase != self.d.fsm.phase {
            self.seen.transition(self.d.fsm.phase, t.next.phase, why, now);
            tracing::info!(from = ?self.d.fsm.phase, to = ?t.next.phase, epoch = t.next.epoch, "state change");
            crate::sys::systemd::status(&format!("{:?}", t.next.phase));
        }
        self.d.fsm = t.next;
        for a in t.actions {
            self.act(a);
        }
        self.publish();
    }

    /// Spawns an effect; at `limit` it is abandoned and `on_fail("exceeded its deadline")` (called
    /// then, so it can look at mountinfo as it is at that moment) reports instead; a panic reports
    /// `on_fail("panicked")`.
    fn spawn_effect<F, T>(&mut self, limit: Duration, fut: F, on_fail: T)
    where
        F: Future<Output = Event> + Send + 'static,
        T: Fn(&str) -> Event + Send + Sync + 'static,
    {
        self.effects += 1;
        let on_fail: OnFail = Arc::new(on_fail);
        let on_timeout = on_fail.clone();
        let persisted = self.persisted_gate();
        // the state the action was decided on is durable before the effect touches anything
        let run = async move {
            persisted.await;
            fut.await
        };
        self.spawn_job(Job::Effect(on_fail), async move {
            Msg::Done(tokio::time::timeout(limit, run).await.unwrap_or_else(|_| on_timeout("exceeded its deadline")))
        });
    }

    /// `spawn_effect` for an rsync pass the state machine may abort ([`Action::AbortPass`]): cancelled,
    /// the pass's future is dropped (its rsync is killed on drop) and `on_fail("aborted")` reports at once; the
    /// state machine ignores it (the pass id is no longer current), and the effect count stays exact.
    fn spawn_pass<F, T>(&mut self, pass: u64, limit: Duration, fut: F, on_fail: T)
    where
        F: Future<Output = Event> + Send + 'static,
        T: Fn(&str) -> Event + Send + Sync + 'static,
    {
        let cancel = CancellationToken::new();
        self.pass_cancel = Some((pass, cancel.clone()));
        let on_fail = Arc::new(on_fail);
        let on_abort = Arc::clone(&on_fail);
        let fut = async move {
            tokio::select! {
                ev = fut => ev,
                () = cancel.cancelled() => on_abort("aborted"),
            }
        };
        self.spawn_effect(limit, fut, move |why| on_fail(why));
    }

    /// Spawns backup->primary pass `pass` of `kind`, whose outcome `fut` reports.
    fn spawn_sync(
        &mut self,
        kind: SyncKind,
        pass: u64,
        limit: Duration,
        fut: impl Future<Output = Result<SyncStats, String>> + Send + 'static,
    ) {
        let finished = move |r: Result<SyncStats, String>| match (kind, r) {
            (SyncKind::ReverseSync, Ok(SyncStats { files, bytes, elapsed_ms })) => {
                Event::ReverseSyncSucceeded { pass, files, bytes, elapsed_ms }
            }
            (SyncKind::ReverseSync, Err(error)) => Event::ReverseSyncFailed { pass, error },
            (SyncKind::Reconcile, Ok(SyncStats { files, bytes, elapsed_ms })) => {
                Event::ReconcileSucceeded { pass, files, bytes, elapsed_ms }
            }
            (SyncKind::Reconcile, Err(error)) => Event::ReconcileFailed { pass, error },
        };
        let what = match kind {
            SyncKind::ReverseSync => "reverse sync",
            SyncKind::Reconcile => "reconciliation",
        };
        self.spawn_pass(pass, limit, async move { finished(fut.await) }, move |why| {
            finished(Err(format!("{what} {why}")))
        });
    }

    fn abort_pass(&mut self, pass: u64) {
        match self.pass_cancel.take() {
            Some((running, cancel)) if running == pass => {
                tracing::warn!(pass, "aborting the running rsync pass");
                cancel.cancel();
            }
            other => {
                tracing::debug!(pass, "pass to abort is not running");
                self.pass_cancel = other;
            }
        }
    }

    fn act(&mut self, a: Action) {
        let mount_limit = self.cfg.mount_timeout * 2 + EFFECT_GRACE;
        let sync_limit = match (&self.cfg.agents, &self.cfg.reverse_sync) {
            (Some(a), _) => a.drain_timeout * 2 + a.timeout * 8,
            (None, Some(r)) => r.timeout,
            (None, None) => Duration::from_secs(3600),
        } + EFFECT_GRACE;
        match a {
            Action::Mount { server } => {
                tracing::info!(server = server.name(), mount_point = %self.cfg.mount_point.display(), "detaching and mounting");
                let fut = self.mounter.mount(server);
                self.spawn_effect(
                    mount_limit,
                    async move {
                        match fut.await {
                            Ok(old_mount) => Event::MountSucceeded { server, old_mount },
                            Err(error) => Event::MountFailed { server, error },
                        }
                    },
                    move |why| Event::MountFailed { server, error: format!("mount effect {why} (abandoned)") },
                );
            }
            Action::StagedSwitch { to, keep_old } => {
                tracing::info!(to = to.name(), "staged switch");
                let fut = self.mounter.staged_switch(to, keep_old);
                let mounter = self.mounter.clone();
                // A failback switch runs the final catch-up (writes frozen) inside it.
                let limit =
                    if to == Server::Primary && keep_old { mount_limit * 2 + sync_limit } else { mount_limit * 2 };
                self.spawn_effect(
                    limit,
                    async move {
                        match fut.await {
                            Ok(old_mount) => Event::StagedSwitchSucceeded { to, old_mount },
                            Err((error, serving)) => Event::StagedSwitchFailed { to, error, serving },
                        }
                    },
                    // what the mount point serves NOW (the switch may have stopped anywhere), never
                    // what the state machine believed before it started
                    move |why| Event::StagedSwitchFailed {
                        to,
                        error: format!("staged switch {why} (abandoned)"),
                        serving: mounter.mounted(),
                    },
                );
            }
            Action::ReverseSync { attempt, pass } => {
                tracing::info!(attempt, pass, "reverse sync backup -> primary");
                let fut = self.syncer.reverse_sync();
                self.spawn_sync(SyncKind::ReverseSync, pass, sync_limit, fut);
            }
            Action::CatchUp { pass } => {
                tracing::info!(pass, "catch-up pass from the kept backup mount");
                let fut = self.syncer.catch_up();
                self.spawn_pass(
                    pass,
                    sync_limit,
                    async move { Event::CatchUpFinished { pass, result: fut.await.map(|s| (s.files, s.bytes)) } },
                    move |why| Event::CatchUpFinished { pass, result: Err(format!("catch-up {why}")) },
                );
            }
            Action::Reconcile { attempt, pass } => {
                tracing::info!(attempt, pass, "reconciliation backup -> primary from a staging mount of the backup");
                let fut = self.syncer.reconcile();
                self.spawn_sync(SyncKind::Reconcile, pass, sync_limit + mount_limit, fut);
            }
            Action::AbortPass { pass } => self.abort_pass(pass),
            Action::AfterSwitch { server, old_mount } => {
                self.effects += 1;
                let fut = self.mounter.after_switch(server, old_mount);
                let limit = self.cfg.restart_timeout + EFFECT_GRACE;
                self.spawn_job(Job::AfterSwitch, async move {
                    Msg::AfterSwitch(
                        tokio::time::timeout(limit, fut)
                            .await
                            .unwrap_or_else(|_| "after-switch actions timed out".into()),
                    )
                });
            }
            Action::Notify(n) => self.alert(self.render(&n)),
            Action::Persist => self.persist(),
        }
    }

    fn render(&self, n: &Notice) -> AlertEvent {
        notice::render(n, &self.labels, SystemTime::now())
    }

    fn alert(&self, e: AlertEvent) {
        tracing::warn!(kind = e.kind.name(), reason = %e.reason, "{}", e.title);
        self.alerts.emit(e);
    }

    /// The alert for a run that started without its state file: what it found unusable, and what it
    /// rebuilt from the mount table (by [`Controller::reconcile`]).
    fn rebuilt_alert(&self, q: &Quarantined) -> AlertEvent {
        let f = &self.d.fsm;
        let rebuilt = match f.active() {
            Some(Server::Backup) => {
                "the backup is mounted: a reverse sync backup -> primary is pending before any failback"
            }
            Some(Server::Primary) => "the primary is mounted",
            None => "nothing of ours is mounted: the first usable server is mounted",
        };
        AlertEvent::new(
            AlertKind::StateQuarantined,
            Role::Web,
            format!("web state {} unusable: rebuilt from the mount table", q.path.display()),
            q.problem.clone(),
        )
        .detail("rebuilt state", format!("{:?}; {rebuilt}", f.phase))
        .next_steps(format!(
            "Automatic failover and failback continue. Lost with the file: an operator hold (repeat \
             --hold or --failover-to if one was set), retry backoff, and whether the backup holds writes \
             from an earlier failover that the primary lacks (if the node served the backup before, \
             check and copy them with `rsync -a --update`). Check the disk of the state directory.{}",
            moved_text(q)
        ))
    }

    /// Hands the state to the persister (a blocking thread does the fsync); effects spawned from now
    /// on start only once it is written.
    fn persist(&mut self) {
        self.persist_gen += 1;
        if self.persist_tx.send((self.persist_gen, self.d.clone())).is_err() {
            tracing::error!("the web state persister has stopped: state not written");
        }
    }

    /// Resolves once everything persisted so far is written (or the persister is gone).
    fn persisted_gate(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.persisted.clone();
        let gen = self.persist_gen;
        async move {
            let _ = rx.wait_for(|g| *g >= gen).await;
        }
    }

    fn summary(&self) -> String {
        let f = &self.d.fsm;
        match f.active() {
            Some(s) => format!("serving {} ({:?}, epoch {})", s.name(), f.phase, f.epoch),
            None => format!("{:?} (epoch {})", f.phase, f.epoch),
        }
    }

    fn publish(&mut self) {
        crate::metrics::web().observe(&super::observe::view(&self.d), self.clock.now_ms());
        let f = &self.d.fsm;
        let h = &self.d.health;
        let rise = self.cfg.rise;
        let server = |name: &str, c: &crate::config::web::ServerConfig, h: &super::health::Health| ServerStatus {
            name: name.to_owned(),
            source: c.source(),
            state: h.status,
            consecutive_failures: h.fails.min(1000),
            // capped at `rise`: an ever-growing counter would rewrite the status file every interval
            consecutive_successes: h.oks.min(rise),
            last_error: h.last_error.clone(),
            state_since_ms: h.since_ms,
        };
        let doc = StatusDoc {
            active: f.active().map_or("none", Server::name),
            phase: f.phase,
            mount_point: self.cfg.mount_point.display().to_string(),
            hold: f.hold,
            epoch: f.epoch,
            pending_reverse_sync: f.pending_reverse_sync,
            pending_reconcile_epoch: f.reconcile_epoch,
            reverse_sync_failures: f.resync_failures,
            servers: vec![
                server("primary", &self.cfg.primary, &h.primary),
                server("backup", &self.cfg.backup, &h.backup),
            ],
            witness: self.cfg.witness.as_ref().map(|_| h.witness.status),
            last_after_switch: self.last_after_switch.clone(),
            // what changes every check is left out of the comparison (refreshed below)
            seen: super::observe::Seen { checked_ms: [None; 3], written_ms: None, ..self.seen.clone() },
        };
        let Ok(bytes) = serde_json::to_vec(&doc) else { return };
        // On a change, and at least every few seconds so readers can tell the age of the last check
        // (and that the daemon still runs); never an fsync.
        let now = self.clock.now_ms();
        if bytes != self.last_status || self.seen.due(now) {
            self.seen.written_ms = Some(now);
            crate::status::write(&self.state_dir, "web", &StatusDoc { seen: self.seen.clone(), ..doc });
            self.last_status = bytes;
        }
    }
}

/// Writes the durable state (write + fsync + rename + fsync) on blocking threads, latest first, and
/// reports each written generation. A failed write is logged and counted as done: the loop goes on
/// with the state in memory, as it always did.
async fn persister(state_dir: PathBuf, mut rx: mpsc::UnboundedReceiver<(u64, Durable)>, done: watch::Sender<u64>) {
    while let Some((mut gen, mut d)) = rx.recv().await {
        while let Ok((g, newer)) = rx.try_recv() {
            (gen, d) = (g, newer);
        }
        let dir = state_dir.clone();
        match tokio::task::spawn_blocking(move || state::save(&dir, &d)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %crate::chain::render_chain(&e), "cannot persist web state"),
            Err(e) => tracing::error!(error = %e, "the web state writer died"),
        }
        let _ = done.send(gen);
    }
}

fn moved_text(q: &Quarantined) -> String {
    q.moved_to.as_ref().map_or_else(String::new, |to| format!(" The unusable file was kept as {}.", to.display()))
}

#[derive(Serialize)]
struct ServerStatus {
    name: String,
    source: String,
    state: Status,
    consecutive_failures: u32,
    consecutive_successes: u32,
    last_error: Option<String>,
    /// Wall-clock ms of the last change of `state`.
    state_since_ms: Option<u64>,
}

#[derive(Serialize)]
struct StatusDoc {
    active: &'static str,
    phase: Phase,
    mount_point: String,
    hold: fsm::Hold,
    epoch: u64,
    pending_reverse_sync: bool,
    /// The failover epoch whose backup writes still await reconciliation to the primary, if any.
    pending_reconcile_epoch: Option<u64>,
    reverse_sync_failures: u32,
    servers: Vec<ServerStatus>,
    witness: Option<Status>,
    last_after_switch: Option<String>,
    #[serde(flatten)]
    seen: super::observe::Seen,
}
