//! Component tests of [`Worker`] with a fake [`Push`] on paused time: retry, give-up and alert
//! timing without rsync.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Push, Queue, Work, Worker};
use crate::alert::{AlertEvent, AlertSink};
use crate::config::storage::StorageConfig;
use crate::config::Config;
use crate::storage::batch::{Batcher, Entry, Scope, Timing};
use crate::storage::status::{Board, RemoteStatus, StorageStatus};
use crate::sys::rsync::ExitClass;

fn config(extra: &str) -> Arc<StorageConfig> {
    let text = format!(
        "state_dir = \"/var/lib/nfs-guard-test\"\n[storage]\nmax_batch = 1\npush_concurrency = 2\n\
         retry_min = \"1s\"\nretry_max = \"4s\"\nalert_after = \"1h\"\n{extra}\n\
         [[storage.trees]]\npath = \"/srv/a\"\n[[storage.trees]]\npath = \"/srv/b\"\n\
         [[storage.remotes]]\nname = \"backup\"\nhost = \"127.0.0.1\"\nmodule = \"data\"\n"
    );
    Arc::new(Config::parse(Path::new("t.toml"), &text).unwrap().storage.unwrap())
}

#[derive(Default)]
struct Alerts(Mutex<Vec<AlertEvent>>);

impl AlertSink for Alerts {
    fn emit(&self, event: AlertEvent) {
        self.0.lock().unwrap().push(event);
    }
}

/// Pushes fail with a partial transfer for the paths in `partial` (as many times as their count
/// says; `u32::MAX`: always); everything else succeeds. Every call is recorded.
#[derive(Default)]
struct FakePush {
    partial: Mutex<BTreeMap<String, u32>>,
    calls: Mutex<Vec<Work>>,
    /// When each call started.
    started: Mutex<Vec<Instant>>,
    /// Pushes started while set never end (a stalled rsync).
    hang: AtomicBool,
    /// Pushes take 1 ms instead of 100 ms.
    quick: AtomicBool,
}

impl FakePush {
    fn outcome(&self, work: &Work) -> Outcome {
        let ok = Outcome { ok: true, class: ExitClass::Success, files: 1, bytes: 1, error: None };
        let Work::Batch(b) = work else { return ok };
        let mut partial = self.partial.lock().unwrap();
        for (_, e) in b {
            if let Some(n) = partial.get_mut(e.path.to_str().unwrap()) {
                if *n > 0 {
                    *n = n.saturating_sub(u32::from(*n != u32::MAX));
                    return Outcome { ok: false, class: ExitClass::Partial, error: Some("exit 23".into()), ..ok };
                }
            }
        }
        ok
    }

    fn pushes_of(&self, path: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|w| matches!(w, Work::Batch(b) if b.iter().any(|(_, e)| e.path == Path::new(path)))).count()
    }

    fn full_syncs(&self) -> Vec<u32> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter_map(|w| if let Work::FullSync(t) = w { Some(*t) } else { None }).collect()
    }
}

impl Push for FakePush {
    fn perform<'a>(
        &'a self,
        work: &'a Work,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(work.clone());
            self.started.lock().unwrap().push(Instant::now());
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let takes = if self.quick.load(Ordering::SeqCst) { 1 } else { 100 };
            tokio::time::sleep(Duration::from_millis(takes)).await;
            self.outcome(work)
        })
    }
}

struct Harness {
    queue: Arc<Queue>,
    cautious: Arc<AtomicBool>,
    fake: Arc<FakePush>,
    alerts: Arc<Alerts>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start(cfg: &Arc<StorageConfig>, fake: FakePush) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), "backup", 1000).unwrap());
    let fake = Arc::new(fake);
    let alerts = Arc::new(Alerts::default());
    let stop = CancellationToken::new();
    let cautious = Arc::new(AtomicBool::new(false));
    let board = Board::new(StorageStatus {
        remotes: vec![RemoteStatus { name: "backup".into(), ..RemoteStatus::default() }],
        ..StorageStatus::default()
    });
    let worker = Worker {
        idx: 0,
        remote: cfg.remotes[0].clone(),
        queue: Arc::clone(&queue),
        cfg: Arc::clone(cfg),
        board,
        alerts: Arc::clone(&alerts) as Arc<dyn AlertSink>,
        hooks: None,
        stop: stop.clone(),
        hard_stop: CancellationToken::new(),
        cautious: Arc::clone(&cautious),
        gate: None,
    };
    let push: Arc<dyn Push> = Arc::clone(&fake) as Arc<dyn Push>;
    let task = tokio::spawn(worker.run_with(push));
    Harness { queue, cautious, fake, alerts, stop, task, _dir: dir }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(Duration::from_secs(3600), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(polled.await.is_ok(), "timed out waiting for {what}");
}

impl Harness {
    async fn finish(self) {
        self.stop.cancel();
        self.queue.wake();
        self.task.await.unwrap();
    }
}

/// Two batches fail partially at the same time: each is counted on its own. `a` keeps failing and
/// is given up after its third try, which queues a full sync of its tree and sends one alert; `b`
/// succeeds on its third try and is never given up.
#[tokio::test(start_paused = true)]
async fn a_partial_transfer_is_given_up_per_batch_into_a_full_sync_and_an_alert() {
    let cfg = config("");
    let fake = FakePush::default();
    fake.partial.lock().unwrap().extend([("a".to_owned(), u32::MAX), ("b".to_owned(), 2)]);
    let h = start(&cfg, fake);
    h.queue.enqueue(&[Entry::new(0, "a", Scope::Path), Entry::new(1, "b", Scope::Path)]);
    wait_until("the full sync after a's give-up, and an empty queue", || {
        h.fake.full_syncs() == [0] && h.queue.depth() == (0, vec![])
    })
    .await;
    assert_eq!(h.fake.pushes_of("a"), 3, "given up after exactly three partial transfers");
    // b starts `window` after a (pushes are paced), so a's failure may stop it under way once
    // (pushes go cautiously from then on): an abort is not a failure of b's.
    let b = h.fake.pushes_of("b");
    assert!((3..=4).contains(&b), "b had its own count: two partial transfers, then success ({b} pushes)");
    let alerts = h.alerts.0.lock().unwrap().clone();
    let gave_up: Vec<&AlertEvent> = alerts.iter().filter(|a| a.title.contains("could not all be pushed")).collect();
    assert_eq!(gave_up.len(), 1, "{alerts:#?}");
    assert!(gave_up[0].title.contains("/srv/a") && gave_up[0].reason.contains("exit 23"), "{:#?}", gave_up[0]);
    h.finish().await;
}

/// Pushes under way are stopped on request (an agent standing down: nothing it admitted before
/// may land on its peer afterwards); their paths are queued again, never dropped.
#[tokio::test(start_paused = true)]
async fn aborted_pushes_queue_their_paths_again() {
    let cfg = config("");
    let fake = FakePush { hang: AtomicBool::new(true), ..FakePush::default() };
    let h = start(&cfg, fake);
    h.queue.enqueue(&[Entry::new(0, "a", Scope::Path)]);
    wait_until("a push under way", || h.queue.in_flight() == 1).await;
    h.fake.hang.store(false, Ordering::SeqCst);
    h.queue.abort_pushes();
    wait_until("the path queued again and pushed again", || h.fake.pushes_of("a") == 2 && h.queue.idle()).await;
    assert!(!h.cautious.load(Ordering::SeqCst), "an abort is not a failed push");
    h.finish().await;
}

/// A failed push makes the pushes still under way (started without `--update`, maybe stalled by
/// the same fault) stop and go again, cautiously.
#[tokio::test(start_paused = true)]
async fn pushes_under_way_go_again_cautiously_when_a_push_fails() {
    let cfg = config("");
    let fake = FakePush { hang: AtomicBool::new(true), ..FakePush::default() };
    let h = start(&cfg, fake);
    h.queue.enqueue(&[Entry::new(0, "stalled", Scope::Path)]);
    wait_until("the first push under way", || h.queue.in_flight() == 1).await;
    h.fake.hang.store(false, Ordering::SeqCst);
    h.fake.partial.lock().unwrap().insert("failing".to_owned(), 1);
    h.queue.enqueue(&[Entry::new(1, "failing", Scope::Path)]);
    wait_until("the stalled push stopped and pushed again", || h.fake.pushes_of("stalled") == 2 && h.queue.idle())
        .await;
    h.finish().await;
}

/// Huge retry durations: the worker waits (saturated), it does not panic after the first failure.
#[tokio::test(start_paused = true)]
async fn huge_retry_durations_do_not_panic_the_worker() {
    let cfg = config("");
    let mut cfg = (*cfg).clone();
    cfg.retry_min = Duration::MAX;
    cfg.retry_max = Duration::MAX;
    let cfg = Arc::new(cfg);
    let fake = FakePush::default();
    fake.partial.lock().unwrap().insert("a".to_owned(), 1);
    let h = start(&cfg, fake);
    h.queue.enqueue(&[Entry::new(0, "a", Scope::Path)]);
    wait_until("the first failure", || h.fake.pushes_of("a") == 1).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!h.task.is_finished(), "the worker died");
    assert_eq!(h.queue.depth(), (1, vec![]), "still queued, waiting to retry");
    h.finish().await;
}

/// A failed push makes the following pushes cautious (never overwrite a newer file on the remote)
/// until the queue is empty again.
#[tokio::test(start_paused = true)]
async fn after_a_failed_push_pushes_are_cautious_until_caught_up() {
    let cfg = config("");
    let fake = FakePush::default();
    fake.partial.lock().unwrap().insert("a".to_owned(), 1);
    let h = start(&cfg, fake);
    assert!(!h.cautious.load(Ordering::SeqCst));
    h.queue.enqueue(&[Entry::new(0, "a", Scope::Path)]);
    wait_until("a failed push makes pushes cautious", || h.cautious.load(Ordering::SeqCst)).await;
    assert_eq!(h.fake.pushes_of("a"), 1);
    h.queue.enqueue(&[Entry::new(0, "n", Scope::Path)]);
    wait_until("caught up", || h.fake.pushes_of("a") == 2 && h.queue.depth() == (0, vec![])).await;
    wait_until("cautious mode ends once caught up", || !h.cautious.load(Ordering::SeqCst)).await;
    // what the cautious pushes acknowledged may not be on the remote (`--update` left a newer
    // file there): still this server's to keep when a reverse sync writes here
    let doubtful: Vec<_> = h.queue.unpushed(0).into_iter().map(|e| e.path).collect();
    assert_eq!(doubtful, [Path::new("a"), Path::new("n")]);
    // a push that overwrites settles one; the end of a failback guard settles the rest
    h.queue.enqueue(&[Entry::new(0, "a", Scope::Path)]);
    wait_until("an overwriting push of a", || {
        h.fake.pushes_of("a") == 3 && h.queue.depth() == (0, vec![]) && h.queue.in_flight() == 0
    })
    .await;
    let doubtful: Vec<_> = h.queue.unpushed(0).into_iter().map(|e| e.path).collect();
    assert_eq!(doubtful, [Path::new("n")]);
    h.queue.forget_doubtful(0);
    assert!(h.queue.unpushed(0).is_empty());
    h.finish().await;
}

/// Group commit on paused time: a stream of new files 5 ms apart (one push slot, pushes of 100 ms,
/// `window` 20 ms, `max_delay` 500 ms). The first file goes alone one window after its close, not
/// at `max_delay`; what arrives while a push is under way goes as ONE next batch when the slot frees;
/// no file waits longer than a window and two pushes. (The old batcher restarted one window for the
/// whole batch at every event: nothing left before `max_delay`, 500 ms.)
#[tokio::test(start_paused = true)]
async fn a_free_slot_sends_at_once_and_a_busy_one_gathers_the_next_batch() {
    const MS: Duration = Duration::from_millis(1);
    let mut cfg = (*config("")).clone();
    (cfg.max_batch, cfg.push_concurrency) = (10_000, 1);
    let cfg = Arc::new(cfg);
    let h = start(&cfg, FakePush::default());
    let mut b = Batcher::new(Timing {
        window: 20 * MS,
        max_delay: 500 * MS,
        max_batch: 10_000,
        settle: 5000 * MS,
        quiet: 200 * MS,
    });
    let t0 = Instant::now();
    let closed: Vec<Instant> = (0..60u32).map(|i| t0 + i * 5 * MS).collect();
    // The replicator's loop: events as they come, due entries to the queue when due.
    let mut next = 0;
    while next < closed.len() || !b.is_empty() {
        let event = closed.get(next).copied();
        let at = match (b.due(), event) {
            (Some(d), Some(e)) => d.min(e),
            (d, e) => d.or(e).unwrap(),
        };
        tokio::time::sleep_until(at).await;
        if event == Some(at) {
            b.add(at, Entry::new(0, format!("f{next:03}"), Scope::Path), false);
            next += 1;
        }
        while let Some(batch) = b.take_due(Instant::now()) {
            h.queue.enqueue(&batch);
        }
    }
    wait_until("everything taken", || h.queue.depth() == (0, vec![])).await;
    tokio::time::sleep(200 * MS).await;
    let calls = h.fake.calls.lock().unwrap().clone();
    let started = h.fake.started.lock().unwrap().clone();
    let names = |w: &Work| match w {
        Work::Batch(b) => b.iter().map(|(_, e)| e.path.to_str().unwrap().to_owned()).collect::<Vec<_>>(),
        Work::FullSync(_) => panic!("no full sync expected"),
    };
    assert_eq!(
        (started[0] - t0, names(&calls[0])),
        (20 * MS, vec!["f000".to_owned()]),
        "sent one window after its close"
    );
    assert_eq!(started[1] - t0, 120 * MS, "the next push starts when the slot frees");
    let second = names(&calls[1]);
    assert_eq!(second.first().map(String::as_str), Some("f001"));
    assert!(second.len() >= 19, "what arrived meanwhile goes as one batch: {second:?}");
    assert!(calls.len() <= 5, "one push per slot turn, not per file: {} pushes", calls.len());
    // Every file's lag: from its close to the end of the push that carried it.
    for (w, at) in calls.iter().zip(&started) {
        for n in names(w) {
            let i: usize = n[1..].parse().unwrap();
            let lag = *at + 100 * MS - closed[i];
            assert!(lag <= 20 * MS + 200 * MS + 5 * MS, "{n} waited {lag:?}");
        }
    }
    h.finish().await;
}

/// Under a steady stream of files, batch pushes start at most once per `window` (20 ms here), each
/// with what arrived meanwhile: a push that started at once would carry a file or two, an rsync
/// process each (fails without: a push every 2 ms). Nothing is left behind.
#[tokio::test(start_paused = true)]
async fn pushes_start_at_most_once_per_window_under_a_steady_stream() {
    let mut batched = (*config("")).clone();
    batched.max_batch = 1000;
    let cfg = Arc::new(batched);
    let fake = FakePush { quick: AtomicBool::new(true), ..FakePush::default() };
    let h = start(&cfg, fake);
    for i in 0..100 {
        h.queue.enqueue(&[Entry::new(0, format!("f{i}"), Scope::Path)]);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_until("every file pushed", || h.queue.idle()).await;
    let started = h.fake.started.lock().unwrap().clone();
    for pair in started.windows(2) {
        assert!(pair[1] - pair[0] >= cfg.window, "pushes {:?} apart: {started:?}", pair[1] - pair[0]);
    }
    assert!(started.len() <= 12, "{} pushes for 200 ms of files", started.len());
    for i in 0..100 {
        assert_eq!(h.fake.pushes_of(&format!("f{i}")), 1, "f{i}");
    }
    h.finish().await;
}
