//! A remote's worker task: takes work from the queue, pushes it (rsync behind [`Push`], a fake in
//! tests), retries with backoff, alerts, and acknowledges in the journal after success.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alert::{AlertEvent, AlertKind, AlertSink, Role};
use crate::config::storage::{Remote, StorageConfig};
use crate::storage::batch::Entry;
use crate::storage::hooks::Hooks;
use crate::storage::journal::{self};
use crate::storage::push;
use crate::storage::status::{now_rfc3339, Board};
use crate::sys::rsync::{self, ExitClass, RsyncReport};
use crate::timing;

use super::queue::{Queue, Work};

/// Retry delay after `attempt` consecutive failures (1-based): `min * 2^(attempt-1)` capped at
/// `max`, then spread by ±20% (`jitter` in 0..1) so workers do not retry in lockstep. Saturates:
/// absurd durations give a long delay, never a panic.
pub fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    timing::jittered(timing::doubling(min, max, attempt), jitter)
}

/// `now + d`, or a year from now when that is beyond what an `Instant` holds.
pub fn later(now: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    now.checked_add(d).or_else(|| now.checked_add(YEAR)).unwrap_or(now)
}

/// Everything a worker needs, built by `storage::run`.
pub struct Worker {
    pub idx: usize,
    pub remote: Remote,
    pub queue: Arc<Queue>,
    pub cfg: Arc<StorageConfig>,
    pub board: Arc<Board>,
    pub alerts: Arc<dyn AlertSink>,
    pub hooks: Option<Hooks>,
    /// Finish the pushes under way (and what is queued), then exit instead of waiting for more.
    pub stop: CancellationToken,
    /// Abandon the pushes under way now (their paths stay in the journal).
    pub hard_stop: CancellationToken,
    /// Pushes are cautious (see `Pusher::cautious`); start with it set when the journal replayed
    /// paths.
    pub cautious: Arc<AtomicBool>,
    /// Asked before every push to this remote (the storage agent's fence); `None`: always pushes.
    pub gate: Option<Arc<dyn Gate>>,
}

/// May this remote be pushed to now? (See `storage::agent::Agent::admit`.)
pub trait Gate: Send + Sync + 'static {
    fn admit(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

/// A closed gate is asked again after this long (or when the queue is woken: a promotion).
const GATE_RETRY: Duration = Duration::from_millis(500);

/// Outcome of one unit of work.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    pub class: ExitClass,
    pub files: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

/// The effect of one unit of work: rsync in production ([`Worker::run`]), a fake in tests, so retry,
/// backoff and alert timing run on paused time.
pub trait Push: Send + Sync + 'static {
    fn perform<'a>(
        &'a self,
        work: &'a Work,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>>;
}

/// A partial transfer (rsync 23) of the same work this many times: given up.
const PARTIAL_TRIES: u32 = 3;

/// What a push task needs, shared by the concurrent pushes of one remote.
struct Pusher {
    remote: Remote,
    cfg: Arc<StorageConfig>,
    hooks: Option<Hooks>,
    /// Pushes are cautious (never overwrite a newer file on the remote) from a failed push or a
    /// replayed journal until the queue is empty again: while the remote was out of reach, the
    /// farm may have failed over to it and clients written there; what this node queued before is
    /// then older than what the remote holds, and must not overwrite it (found by the chaos test:
    /// a returning primary pushed its last unreplicated writes over newer ones made during the
    /// failover). The storage agents' epochs (issue 11) will replace this with exact knowledge.
    cautious: Arc<AtomicBool>,
}

/// Failure bookkeeping of one remote (for backoff and alerts).
#[derive(Default)]
struct Health {
    attempt: u32,
    /// Partial transfers so far, per piece of work (a batch's entries by sequence number, a full
    /// sync by tree): one stubborn batch never counts against another.
    partial: BTreeMap<PartialKey, u32>,
    failing_since: Option<Instant>,
    alerted: bool,
    retry_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PartialKey {
    Seq(u64),
    Tree(u32),
}

fn partial_keys(work: &Work) -> Vec<PartialKey> {
    match work {
        Work::FullSync(t) => vec![PartialKey::Tree(*t)],
        Work::Batch(b) => b.iter().map(|(q, _)| PartialKey::Seq(*q)).collect(),
    }
}

impl Health {
    /// Counts one more partial transfer of `work`; returns how many in a row it has had.
    fn partial_again(&mut self, work: &Work) -> u32 {
        let keys = partial_keys(work);
        let tries = 1 + keys.iter().filter_map(|k| self.partial.get(k)).max().copied().unwrap_or(0);
        if self.partial.len() > 100_000 {
            // Entries covered by a full sync never come back to clear theirs: keep the map bounded.
            self.partial.clear();
        }
        for k in keys {
            self.partial.insert(k, tries);
        }
        tries
    }

    fn forget(&mut self, work: &Work) {
        for k in partial_keys(work) {
            self.partial.remove(&k);
        }
    }
}

impl Worker {
    /// Keeps up to `push_concurrency` pushes of non-overlapping batches under way (a full sync runs
    /// alone); a slow rsync therefore does not hold back the next files, and per-path order holds.
    pub async fn run(self) {
        let cautious = Arc::clone(&self.cautious);
        let pusher = Arc::new(Pusher {
            remote: self.remote.clone(),
            cfg: Arc::clone(&self.cfg),
            hooks: self.hooks.clone(),
            cautious,
        });
        self.run_with(pusher).await;
    }

    /// [`Worker::run`] with the effect given. On exit, everything journaled so far is written
    /// before the worker reports done (the clean-stop marker goes only after that).
    pub async fn run_with(self, pusher: Arc<dyn Push>) {
        let queue = Arc::clone(&self.queue);
        self.work(pusher).await;
        if let Err(e) = queue.flush().wait().await {
            tracing::error!(error = %crate::chain::render_chain(&e), "journal not fully written at stop");
        }
    }

    async fn work(self, pusher: Arc<dyn Push>) {
        let mut tasks: tokio::task::JoinSet<(Work, Outcome)> = tokio::task::JoinSet::new();
        // What each task pushes: a task that panicked or was aborted gives its work back.
        let mut running: std::collections::HashMap<tokio::task::Id, Work> = std::collections::HashMap::new();
        let mut aborts = self.queue.aborts();
        let mut was_cautious = self.cautious.load(Ordering::SeqCst);
        let mut h = Health::default();
        // When the last batch push started: the next starts `window` later at the earliest (see below).
        let mut last_batch: Option<Instant> = None;
        loop {
            let mut paced: Option<Instant> = None;
            // Pushes become cautious when the remote may have served clients meanwhile (a push
            // failed, this process stood still): those under way were started without `--update`
            // and may be stalled by the same fault, to land later over what clients write there
            // (found by the chaos test: a push stalled by a blackhole completed after the heal,
            // over an append made on the backup). They are stopped and go again, cautiously.
            let cautious = self.cautious.load(Ordering::SeqCst);
            let newly_cautious = cautious && !was_cautious;
            was_cautious = cautious;
            if self.queue.aborts() != aborts || newly_cautious {
                aborts = self.queue.aborts();
                if !tasks.is_empty() {
                    tracing::warn!(remote = %self.remote.name, pushes = tasks.len(), "pushes under way stopped");
                    tasks.abort_all();
                }
            }
            self.publish_depth();
            if h.retry_at.is_none_or(|t| t <= Instant::now()) {
                h.retry_at = None;
                if !self.admitted(tasks.len()).await {
                    h.retry_at = Some(Instant::now() + GATE_RETRY);
                }
                while h.retry_at.is_none() && tasks.len() < self.cfg.push_concurrency {
                    // Pushes start at most once per `window`: each costs an rsync process (5-10 ms of
                    // CPU), and under a steady stream of files a push that started at once would
                    // carry one or two of them (a core's worth of rsyncs at 200 files/s, measured);
                    // paced, each carries what arrived meanwhile, for at most `window` more lag.
                    let next_at = last_batch.map(|t| t + self.cfg.window);
                    if next_at.is_some_and(|t| t > Instant::now()) {
                        paced = next_at;
                        break;
                    }
                    let Some(work) = self.queue.next(self.cfg.max_batch) else { break };
                    if matches!(work, Work::Batch(_)) {
                        last_batch = Some(Instant::now());
                    }
                    let state = if matches!(work, Work::FullSync(_)) { "full-sync" } else { "pushing" };
                    self.board.remote(self.idx, |r| r.state = state.into());
                    let p = Arc::clone(&pusher);
                    let mine = work.clone();
                    let handle = tasks.spawn(async move {
                        let o = p.perform(&work).await;
                        (work, o)
                    });
                    running.insert(handle.id(), mine);
                }
            }
            if tasks.is_empty() {
                if h.retry_at.is_none() {
                    self.board.remote(self.idx, |r| r.state = "idle".into());
                    // Caught up: what is queued from now on is newer than anything on the remote.
                    if self.queue.depth().0 == 0 && self.cautious.swap(false, Ordering::SeqCst) {
                        tracing::info!(remote = %self.remote.name, "caught up: pushes overwrite the remote again");
                    }
                }
                if self.stop.is_cancelled() {
                    return;
                }
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => match done {
                    Ok((id, (work, outcome))) => {
                        running.remove(&id);
                        self.account(work, outcome, &mut h);
                    }
                    Err(e) => {
                        // aborted (or panicked): never acknowledged, its paths queued again
                        if e.is_panic() {
                            tracing::error!(remote = %self.remote.name, error = %e, "a push panicked; its paths are queued again");
                        }
                        if let Some(work) = running.remove(&e.id()) {
                            self.queue.done(work, false);
                        }
                    }
                },
                () = self.queue.wake.notified() => {}
                () = timing::sleep_until(h.retry_at) => {}
                () = timing::sleep_until(paced) => {}
                () = self.stop.cancelled(), if !self.stop.is_cancelled() => {}
                () = self.hard_stop.cancelled() => {
                    // The aborted pushes were never acknowledged: the journal still holds them.
                    tasks.abort_all();
                    return;
                }
            }
            if self.stop.is_cancelled() && h.retry_at.is_some() && tasks.is_empty() {
                return;
            }
        }
    }

    /// Asks the gate (if any) before new pushes start: only when there is work to start.
    async fn admitted(&self, running: usize) -> bool {
        let Some(gate) = &self.gate else { return true };
        let (pending, owed) = self.queue.depth();
        if running >= self.cfg.push_concurrency || (pending == 0 && owed.is_empty()) {
            return true;
        }
        let open = gate.admit().await;
        if !open {
            self.board.remote(self.idx, |r| r.state = "fenced".into());
        }
        open
    }

    /// Records the outcome of one push: acknowledge or put back, counters, alerts, backoff.
    fn account(&self, work: Work, outcome: Outcome, h: &mut Health) {
        let partial = !outcome.ok && outcome.class == ExitClass::Partial;
        let gave_up = partial && h.partial_again(&work) >= PARTIAL_TRIES;
        if !outcome.ok && !self.cautious.swap(true, Ordering::SeqCst) {
            tracing::info!(remote = %self.remote.name, "push failed: pushes never overwrite a newer file there until caught up");
        }
        if outcome.ok || gave_up {
            h.forget(&work);
            if gave_up {
                self.give_up(&work, &outcome);
            }
            h.attempt = 0;
            if outcome.ok && self.cautious.load(Ordering::SeqCst) && self.cfg.agent.is_none() {
                // `--update` may have left the remote's newer version in place: doubtful (for the
                // reverse-sync mode's failback guard; agents keep orphans per epoch instead)
                self.queue.done_cautiously(&work);
            } else {
                self.queue.done(work.clone(), true);
            }
            if gave_up {
                // Re-running a full sync that keeps failing partially would loop: its alert says so.
                if let Work::Batch(b) = &work {
                    for t in b.iter().map(|(_, e)| e.tree).collect::<BTreeSet<u32>>() {
                        self.queue.request_full_sync(t);
                    }
                }
            }
            let err = outcome.error.clone();
            self.board.remote(self.idx, |r| {
                r.batches += 1;
                r.files += outcome.files;
                r.bytes += outcome.bytes;
                r.last_success = Some(now_rfc3339());
                if err.is_some() {
                    r.last_error = err;
                }
            });
            if h.alerted {
                let down = h.failing_since.map(|s| s.elapsed()).unwrap_or_default();
                self.alerts.emit(
                    AlertEvent::new(
                        AlertKind::RemoteRecovered,
                        Role::Storage,
                        format!("remote {} recovered", self.remote.name),
                        "a push succeeded again; the queued changes are being delivered",
                    )
                    .detail("down for", humantime::format_duration(round_secs(down)))
                    .server(self.remote.name.clone(), "up"),
                );
            }
            h.failing_since = None;
            h.alerted = false;
            return;
        }
        self.queue.done(work, false);
        h.attempt += 1;
        let since = *h.failing_since.get_or_insert_with(Instant::now);
        let error = outcome.error.unwrap_or_default();
        let delay = backoff(h.attempt, self.cfg.retry_min, self.cfg.retry_max, fastrand::f64());
        h.retry_at = Some(later(Instant::now(), delay));
        tracing::warn!(remote = %self.remote.name, attempt = h.attempt, retry_in_ms = ms(delay), error = %error, "push failed");
        let e2 = error.clone();
        self.board.remote(self.idx, |r| {
            r.state = "retrying".into();
            r.retries += 1;
            r.last_error = Some(format!("{}: {e2}", now_rfc3339()));
        });
        if !h.alerted && since.elapsed() >= self.cfg.alert_after {
            h.alerted = true;
            let (queued, _) = self.queue.depth();
            self.alerts.emit(
                AlertEvent::new(
                    AlertKind::RemoteUnreachable,
                    Role::Storage,
                    format!("remote {} unreachable", self.remote.name),
                    error,
                )
                .detail("failing for", humantime::format_duration(round_secs(since.elapsed())))
                .detail("attempts", h.attempt)
                .detail("paths queued (journaled)", queued)
                .server(self.remote.name.clone(), "down")
                .next_steps(format!(
                    "Check the rsync service on {}. Changes stay queued on disk and are pushed when it is back.",
                    self.remote.target.display()
                )),
            );
        }
    }

    /// A partial transfer of the same work, [`PARTIAL_TRIES`] times: logged and alerted; a batch
    /// becomes a full sync of its trees (queued by the caller) so no change is dropped.
    fn give_up(&self, work: &Work, outcome: &Outcome) {
        let error = outcome.error.clone().unwrap_or_default();
        let (what, trees, paths) = match work {
            Work::FullSync(t) => ("full sync", BTreeSet::from([*t]), 0),
            Work::Batch(b) => ("batch", b.iter().map(|(_, e)| e.tree).collect(), b.len()),
        };
        let names: Vec<String> = trees
            .iter()
            .map(|t| {
                self.cfg
                    .trees
                    .get(*t as usize)
                    .map_or_else(|| "every tree".to_owned(), |t| t.path.display().to_string())
            })
            .collect();
        let names = names.join(", ");
        tracing::error!(remote = %self.remote.name, tries = PARTIAL_TRIES, paths, trees = %names, error = %error,
            "partial transfer {PARTIAL_TRIES} times: {what} given up");
        let next = match work {
            Work::Batch(_) => {
                "A full sync of the tree is queued so no change is lost. rsync exit 23 usually \
                               means a file the replicator cannot read or the remote cannot write: check the error."
            }
            Work::FullSync(_) => {
                "The full sync transferred what it could. rsync exit 23 usually means a file the \
                                  replicator cannot read or the remote cannot write: fix it; the next full sync \
                                  (periodic, or at restart) completes the copy."
            }
        };
        self.alerts.emit(
            AlertEvent::new(
                AlertKind::OverflowRescan,
                Role::Storage,
                format!("changes to {} could not all be pushed ({names})", self.remote.name),
                error,
            )
            .detail("partial transfers", PARTIAL_TRIES)
            .detail("paths in the batch", paths)
            .server(self.remote.name.clone(), "partial")
            .next_steps(next),
        );
    }

    fn publish_depth(&self) {
        let (queue, trees) = self.queue.depth();
        let names: Vec<String> = trees
            .iter()
            .filter_map(|t| match self.cfg.trees.get(*t as usize) {
                Some(tree) => Some(tree.path.display().to_string()),
                None => (*t == journal::ALL_TREES).then(|| "(every tree)".to_owned()),
            })
            .collect();
        let behind = crate::status::behind_since_ms(self.queue.lag());
        self.board.remote(self.idx, |r| {
            r.queue = queue;
            r.full_sync_pending = names;
            r.behind_since_ms = behind;
        });
    }
}

impl Push for Pusher {
    fn perform<'a>(
        &'a self,
        work: &'a Work,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.push(work))
    }
}

impl Pusher {
    async fn full_sync(&self, tree: &crate::config::storage::Tree) -> Outcome {
        // Never `--delete` unless configured, agents included: a delete an agent's journal missed
        // (a kill -9 right after it) then comes back on the standby, but with `--delete` a restarted
        // active agent deleted files its peer had created and never journaled (the chaos test lost
        // four acknowledged creates that way). A deletion is recoverable; lost data is not.
        let args = push::full_sync_args(
            &self.cfg.rsync_args,
            &self.remote.target,
            tree,
            &self.cfg.full_sync,
            &self.cfg.filter,
        );
        tracing::info!(remote = %self.remote.name, tree = %tree.path.display(), "full sync started");
        let r = rsync::run(&self.cfg.rsync, &args, None, self.cfg.full_sync.timeout).await;
        crate::metrics::storage().pushed(&self.remote.name, crate::metrics::storage::PushKind::FullSync, &r);
        let o = outcome(r);
        if o.ok {
            tracing::info!(remote = %self.remote.name, tree = %tree.path.display(), files = o.files, bytes = o.bytes, "full sync done");
        }
        o
    }

    async fn push(&self, work: &Work) -> Outcome {
        match work {
            Work::FullSync(t) => {
                // Every tree when the journal was damaged (the lost records' trees are unknown).
                let all = u32::try_from(self.cfg.trees.len()).unwrap_or(u32::MAX);
                let trees = if *t == journal::ALL_TREES { 0..all } else { *t..t.saturating_add(1) };
                let mut total = Outcome { ok: true, class: ExitClass::Success, files: 0, bytes: 0, error: None };
                for tree in trees.filter_map(|t| self.cfg.trees.get(t as usize)) {
                    let o = self.full_sync(tree).await;
                    total.files += o.files;
                    total.bytes += o.bytes;
                    if !o.ok {
                        return Outcome { files: total.files, bytes: total.bytes, ..o };
                    }
                    total.error = total.error.or(o.error);
                }
                total
            }
            Work::Batch(batch) => {
                let mut total = Outcome { ok: true, class: ExitClass::Success, files: 0, bytes: 0, error: None };
                let trees: BTreeSet<u32> = batch.iter().map(|(_, e)| e.tree).collect();
                for t in trees {
                    let Some(tree) = self.cfg.trees.get(t as usize) else { continue };
                    let entries: Vec<Entry> =
                        batch.iter().filter(|(_, e)| e.tree == t).map(|(_, e)| e.clone()).collect();
                    let root = tree.path.clone();
                    let filter = self.cfg.filter.clone();
                    let planning = Instant::now();
                    let planned = tokio::task::spawn_blocking(move || {
                        let plan = push::plan(&root, &entries, &filter);
                        (plan, entries)
                    })
                    .await;
                    // A panic while listing must not pass for an empty, successful batch.
                    let Ok((plan, entries)) = planned else {
                        return Outcome {
                            ok: false,
                            class: ExitClass::Fatal,
                            files: 0,
                            bytes: 0,
                            error: Some(format!("listing the batch of {} failed", tree.path.display())),
                        };
                    };
                    if plan.is_empty() {
                        continue;
                    }
                    let started = Instant::now();
                    let paths = plan.len();
                    tracing::debug!(remote = %self.remote.name, entries = entries.len(), paths,
                        plan_ms = ms(started.duration_since(planning)), "push started");
                    let (c, target) = (&self.cfg, &self.remote.target);
                    let opts =
                        push::RunOpts { deadline: c.batch_timeout, cautious: self.cautious.load(Ordering::SeqCst) };
                    let r = push::run(&c.rsync, &c.rsync_args, target, tree, &plan, &c.filter, opts).await;
                    crate::metrics::storage().pushed(&self.remote.name, crate::metrics::storage::PushKind::Batch, &r);
                    let o = outcome(r);
                    if o.ok || o.class == ExitClass::Partial {
                        tracing::info!(remote = %self.remote.name, tree = %tree.path.display(), paths,
                            roots = !matches!(plan, push::Plan::List(_)), replace = matches!(plan, push::Plan::Replace(_)),
                            files = o.files, bytes = o.bytes,
                            elapsed_ms = ms(started.elapsed()), ok = o.ok, "batch pushed");
                    }
                    if o.ok {
                        if let Some(h) = &self.hooks {
                            // Hooks get every path; rsync walked the roots itself.
                            let list = match plan {
                                push::Plan::List(l) => l,
                                push::Plan::Roots(_) | push::Plan::Replace(_) => {
                                    let (root, filter) = (tree.path.clone(), self.cfg.filter.clone());
                                    tokio::task::spawn_blocking(move || push::expand(&root, &entries, &filter))
                                        .await
                                        .unwrap_or_default()
                                }
                            };
                            h.after_batch(&self.remote.name, &tree.path, &list);
                        }
                    }
                    total.files += o.files;
                    total.bytes += o.bytes;
                    if !o.ok {
                        total.ok = false;
                        total.class = o.class;
                        total.error = o.error;
                        break;
                    }
                }
                total
            }
        }
    }
}

fn outcome(r: Result<RsyncReport, rsync::SpawnError>) -> Outcome {
    match r {
        Ok(r) => Outcome {
            ok: r.ok(),
            class: r.class,
            files: r.files,
            bytes: r.bytes,
            error: (!r.ok()).then(|| r.error_text()).or_else(|| (r.code == Some(24)).then(|| r.error_text())),
        },
        Err(e) => Outcome {
            ok: false,
            class: ExitClass::Fatal,
            files: 0,
            bytes: 0,
            error: Some(crate::chain::render_chain(&e)),
        },
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
