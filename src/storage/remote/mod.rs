//! One remote: its durable queue ([`Queue`], journal-backed) and its worker task ([`Worker`]).
//!
//! Each remote has its own queue and worker, so a slow or dead remote never delays another. The
//! worker takes up to `max_batch` pending paths (or a pending full sync), runs ONE rsync per tree
//! in the batch, and acknowledges the paths in the journal only after rsync succeeded; on failure
//! the paths go back in place and the worker waits with exponential backoff and jitter. A queue that
//! outgrows `max_pending` (a remote down for hours) collapses into "full sync needed", so memory and
//! journal stay bounded.
//!
//! [`queue`] holds the queue, [`worker`] the worker (its effects behind [`Push`]: rsync in
//! production, a fake in the paused-time tests).

mod queue;
mod worker;

pub use queue::{overlaps, Enqueued, Queue, Work};
pub use worker::{backoff, later, Gate, Outcome, Push, Worker};

#[cfg(test)]
#[path = "../remote_worker_tests.rs"]
mod worker_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::batch::{Entry, Scope};
    use std::path::Path;
    use std::time::Duration;
    use tokio::time::Instant;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff(1, S, 60 * S, 0.5), S);
        assert_eq!(backoff(2, S, 60 * S, 0.5), 2 * S);
        assert_eq!(backoff(4, S, 60 * S, 0.5), 8 * S);
        assert_eq!(backoff(30, S, 60 * S, 0.5), 60 * S);
        assert_eq!(backoff(1, S, 60 * S, 0.0), S.mul_f64(0.8));
        assert_eq!(backoff(1, S, 60 * S, 1.0), S.mul_f64(1.2));
    }

    #[test]
    fn huge_retry_durations_saturate_instead_of_panicking() {
        let huge = Duration::MAX;
        assert!(backoff(1, huge, huge, 1.0) >= Duration::from_secs(u64::from(u32::MAX)));
        assert!(backoff(40, S, huge, 1.0) > S);
        let now = Instant::now();
        assert!(later(now, huge) > now);
    }

    fn e(p: &str) -> Entry {
        Entry::new(0, p, Scope::Path)
    }

    #[test]
    fn replaced_directories_go_in_batches_of_their_own_and_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let paths = |w: Option<Work>| match w {
            Some(Work::Batch(b)) => b.iter().map(|(_, e)| e.path.to_str().unwrap().to_owned()).collect::<Vec<_>>(),
            _ => panic!("expected a batch"),
        };
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            // `d` deleted, then made again: one Replace entry, journaled as its two records.
            q.enqueue(&[e("a"), Entry::new(0, "d", Scope::Gone), e("c")]);
            q.enqueue(&[Entry::new(0, "d", Scope::Tree)]);
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(paths(q.next(10)), ["a", "c"]);
        let Some(Work::Batch(b)) = q.next(10) else { panic!() };
        assert_eq!((b[0].1.path.to_str(), b[0].1.scope, b.len()), (Some("d"), Scope::Replace, 1));
    }

    #[test]
    fn failed_batches_go_back_and_acked_ones_stay_gone_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            q.enqueue(&[e("a"), e("b"), e("c")]);
            let w = q.next(2).unwrap();
            q.done(w, false);
            let Some(Work::Batch(b)) = q.next(2) else { panic!() };
            assert_eq!(b.iter().map(|(_, e)| e.path.to_str().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
            q.done(Work::Batch(b), true);
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (1, vec![]));
        let Some(Work::Batch(b)) = q.next(10) else { panic!() };
        assert_eq!(b[0].1.path, Path::new("c"));
    }

    /// What a cautious push acknowledged stays live in the journal until a push overwrites it or a
    /// failback guard ends: a restart in between queues it again (to be pushed again cautiously),
    /// so the guard still keeps this server's version (fails without: gone after the restart).
    #[test]
    fn doubtful_changes_survive_a_restart_until_settled() {
        let d = tempfile::tempdir().unwrap();
        let unpushed = |q: &Queue| q.unpushed(0).into_iter().map(|e| e.path).collect::<Vec<_>>();
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            q.enqueue(&[e("a"), e("b"), e("c")]);
            let w = q.next(10).unwrap();
            q.done_cautiously(&w);
            assert_eq!((q.depth(), unpushed(&q).len()), ((0, vec![]), 3));
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (3, vec![]), "queued again after the restart");
        let w = q.next(10).unwrap();
        q.done_cautiously(&w);
        // a push that overwrites settles a; the end of a failback guard settles the rest
        q.enqueue(&[e("a")]);
        let w = q.next(10).unwrap();
        q.done(w, true);
        assert_eq!(unpushed(&q), [Path::new("b"), Path::new("c")]);
        drop(q);
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (2, vec![]), "b and c still doubtful after a second restart");
        let w = q.next(10).unwrap();
        q.done_cautiously(&w);
        q.forget_doubtful(0);
        assert!(unpushed(&q).is_empty());
        drop(q);
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (0, vec![]), "settled for good");
    }

    /// A drain waits for what was queued before it, not for changes queued after.
    #[test]
    fn drained_before_ignores_later_changes() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100).unwrap();
        q.enqueue(&[e("a"), e("b")]);
        let upto = q.next_seq();
        q.enqueue(&[e("c"), e("a")]);
        assert!(!q.drained_before(upto));
        let w = q.next(1).unwrap();
        assert!(!q.drained_before(upto), "a batch in flight is not pushed yet");
        q.done(w, true);
        assert!(!q.drained_before(upto), "b is still queued");
        let w = q.next(1).unwrap();
        q.done(w, true);
        assert!(q.drained_before(upto), "c, queued later, does not count");
        assert!(!q.idle());
        q.enqueue(&[]);
        assert!(!q.drained_before(q.next_seq()), "c is queued before now");
    }

    /// The lag is zero while idle, grows while changes wait, and is zero again once they are acked.
    #[test]
    fn lag_counts_from_the_first_waiting_change_until_the_queue_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.lag(), Duration::ZERO);
        let _ = q.enqueue(&[e("a")]);
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while q.lag().is_zero() {
            assert!(std::time::Instant::now() < end, "the lag never grew");
            std::thread::yield_now();
        }
        let w = q.next(10).unwrap();
        assert!(!q.lag().is_zero(), "in flight is still behind");
        q.done(w, true);
        assert_eq!(q.lag(), Duration::ZERO);
    }

    #[test]
    fn overgrown_queue_collapses_into_a_durable_full_sync() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 3).unwrap();
            let many: Vec<Entry> = (0..5).map(|i| e(&format!("f{i}"))).collect();
            assert_eq!(q.enqueue(&many).collapsed, [0]);
            assert_eq!(q.depth(), (0, vec![0]));
        }
        let q = Queue::open(d.path(), "r", 3).unwrap();
        assert_eq!(q.next(10), Some(Work::FullSync(0)));
        q.done(Work::FullSync(0), true);
        assert_eq!(q.next(10), None);
        drop(q);
        let q = Queue::open(d.path(), "r", 3).unwrap();
        assert_eq!(q.depth(), (0, vec![]));
    }

    #[test]
    fn overlapping_paths_wait_for_the_push_under_way() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100).unwrap();
        q.enqueue(&[e("a/x"), e("b")]);
        let first = q.next(1).unwrap();
        // Same path again, its parent, a child, the root: all must wait; an unrelated path may go.
        q.enqueue(&[e("a/x"), e("a"), e("a/x/y"), e("."), e("c")]);
        let Some(Work::Batch(second)) = q.next(10) else { panic!() };
        let names: Vec<_> = second.iter().map(|(_, e)| e.path.to_str().unwrap()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(q.next(10), None, "everything left overlaps the batch under way");
        q.done(first, true);
        let Some(Work::Batch(third)) = q.next(10) else { panic!() };
        let names: Vec<_> = third.iter().map(|(_, e)| e.path.to_str().unwrap()).collect();
        assert_eq!(names, ["a/x", "a", "a/x/y"], "the root still overlaps b and c");
        // A full sync waits until no batch is under way, and runs alone.
        q.request_full_sync(0);
        assert_eq!(q.next(10), None);
        q.done(Work::Batch(second), true);
        q.done(Work::Batch(third), true);
        assert_eq!(q.next(10), Some(Work::FullSync(0)));
        q.enqueue(&[e("z")]);
        assert_eq!(q.next(10), None);
    }

    /// A burst beneath a directory being pushed: every wake of the worker used to re-check every
    /// waiting entry against the batches in flight (quadratic in the burst; the worker's largest CPU
    /// cost in a 10,000-file burst). Entries already found waiting are not checked again until a
    /// batch ends; what goes out is unchanged.
    #[test]
    fn entries_waiting_for_a_push_are_not_checked_again_until_it_ends() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 100_000).unwrap();
        q.enqueue(&[Entry::new(0, "a", Scope::Tree)]);
        let walk = q.next(10).unwrap();
        for i in 0..1000 {
            q.enqueue(&[e(&format!("a/f{i}"))]);
            assert_eq!(q.next(10), None, "beneath the push under way");
        }
        q.enqueue(&[e("b")]);
        let Some(Work::Batch(b)) = q.next(10) else { panic!("b overlaps nothing") };
        assert_eq!(b[0].1.path, Path::new("b"));
        assert!(q.lock().overlap_checks < 3000, "{} checks for 1,000 waiting entries", q.lock().overlap_checks);
        // Once the push ends they go, oldest first, as before.
        q.done(walk, true);
        let Some(Work::Batch(rest)) = q.next(10) else { panic!() };
        assert_eq!(rest.iter().map(|(_, e)| e.path.to_str().unwrap()).collect::<Vec<_>>()[..2], ["a/f0", "a/f1"]);
        q.done(Work::Batch(b), false);
        let Some(Work::Batch(back)) = q.next(100_000) else { panic!("put back: looked at again") };
        assert_eq!((back.len(), back.last().map(|(_, e)| e.path.as_path())), (991, Some(Path::new("b"))));
    }

    #[test]
    fn a_change_queued_while_the_same_path_is_pushed_survives_the_ack_and_a_restart() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            q.enqueue(&[e("a")]);
            let first = q.next(10).unwrap();
            q.enqueue(&[e("a")]);
            q.done(first, true);
            assert_eq!(q.depth(), (1, vec![]));
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (1, vec![]), "the newer change of `a` must survive the older batch's ack");
        let w = q.next(10).unwrap();
        q.done(w, true);
        drop(q);
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (0, vec![]));
    }

    #[test]
    fn widened_and_put_back_entries_leave_nothing_behind_after_their_ack() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(d.path(), "r", 100).unwrap();
            // Widened while queued: one entry, acked once.
            q.enqueue(&[e("w")]);
            q.enqueue(&[Entry::new(0, "w", Scope::Tree)]);
            let w = q.next(10).unwrap();
            q.done(w, true);
            // Failed, queued again meanwhile, put back: the two merge; one push acks both.
            q.enqueue(&[Entry::new(0, "p", Scope::Gone)]);
            let w = q.next(10).unwrap();
            q.enqueue(&[Entry::new(0, "p", Scope::Tree)]);
            q.done(w, false);
            let Some(Work::Batch(b)) = q.next(10) else { panic!() };
            assert_eq!((b.len(), b[0].1.scope), (1, Scope::Replace));
            q.done(Work::Batch(b), true);
        }
        let q = Queue::open(d.path(), "r", 100).unwrap();
        assert_eq!(q.depth(), (0, vec![]), "nothing pushed is pushed again after a restart");
    }

    #[test]
    fn a_rescan_during_a_full_sync_runs_another() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), "r", 10).unwrap();
        q.request_full_sync(0);
        let w = q.next(1).unwrap();
        q.request_full_sync(0);
        q.done(w, true);
        assert_eq!(q.next(1), Some(Work::FullSync(0)));
    }
}
