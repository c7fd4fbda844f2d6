//! The fuzz loop shared by the targets: deterministic per-case seeds, a panic is a failure, a case
//! that does not finish within its deadline is a hang.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const DEFAULT_SEED: u64 = 0x6469_736b_2d66_757a;
/// One case must finish within this (a real one takes milliseconds).
const CASE_DEADLINE: Duration = Duration::from_secs(20);
/// An exhaustive case (every base at every offset in a long run) within this.
const ONCE_DEADLINE: Duration = Duration::from_secs(600);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The generator of case `n`: replayable alone (`NFS_GUARD_FUZZ_CASE=n`) with the run's seed.
pub fn case_rng(seed: u64, n: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A private scratch directory on tmpfs when there is one (the targets fsync a lot).
pub fn scratch() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("nfs-guard-fuzz").tempdir_in(&shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temp dir")
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Runs `default_cases` cases of `target` (`NFS_GUARD_FUZZ_CASES` overrides it; `NFS_GUARD_FUZZ_SEED`
/// the seed; `NFS_GUARD_FUZZ_CASE` runs that one case only), each on `case(rng, n, tally)` on a worker
/// thread. Fails on the first panic, unclean result (`Err`) or hang, naming the seed and the case.
/// Returns the tally.
pub fn run<T, F>(target: &str, default_cases: u64, setup: impl FnOnce() -> T + Send + 'static, case: F) -> T
where
    T: std::fmt::Debug + Send + 'static,
    F: Fn(&mut T, &mut fastrand::Rng, u64) -> Result<(), String> + Send + 'static,
{
    run_cases(target, env_u64("NFS_GUARD_FUZZ_CASES").unwrap_or(default_cases), CASE_DEADLINE, setup, case)
}

/// One case (an exhaustive one: its size, not a case count, grows in a long run), with the hang and
/// panic checks of [`run`].
pub fn once<T, F>(target: &str, setup: impl FnOnce() -> T + Send + 'static, case: F) -> T
where
    T: std::fmt::Debug + Send + 'static,
    F: Fn(&mut T, &mut fastrand::Rng, u64) -> Result<(), String> + Send + 'static,
{
    run_cases(target, 1, ONCE_DEADLINE, setup, case)
}

fn run_cases<T, F>(
    target: &str,
    cases: u64,
    deadline: Duration,
    setup: impl FnOnce() -> T + Send + 'static,
    case: F,
) -> T
where
    T: std::fmt::Debug + Send + 'static,
    F: Fn(&mut T, &mut fastrand::Rng, u64) -> Result<(), String> + Send + 'static,
{
    let seed = env_u64("NFS_GUARD_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let only = env_u64("NFS_GUARD_FUZZ_CASE").filter(|_| cases > 1);
    let range = only.map_or(0..cases, |n| n..n + 1);
    let (tx, rx) = mpsc::channel::<(u64, Option<Result<(), String>>)>();
    let started = Instant::now();
    let worker = std::thread::spawn(move || {
        let mut tally = setup();
        for n in range {
            tx.send((n, None)).expect("the fuzz loop listens");
            let mut rng = case_rng(seed, n);
            let r = catch_unwind(AssertUnwindSafe(|| case(&mut tally, &mut rng, n)))
                .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&*p))));
            let failed = r.is_err();
            tx.send((n, Some(r))).expect("the fuzz loop listens");
            if failed {
                break;
            }
        }
        tally
    });
    let mut current = 0;
    loop {
        match rx.recv_timeout(deadline) {
            Ok((n, None)) => current = n,
            Ok((_, Some(Ok(())))) => {}
            Ok((n, Some(Err(why)))) => panic!(
                "{target}: seed {seed}, case {n} failed (replay: NFS_GUARD_FUZZ_SEED={seed} NFS_GUARD_FUZZ_CASE={n}): {why}"
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{target}: seed {seed}, case {current} still running after {deadline:?} (hang; replay: NFS_GUARD_FUZZ_SEED={seed} NFS_GUARD_FUZZ_CASE={current})"
            ),
        }
    }
    let tally = worker.join().expect("the worker reported its panics");
    eprintln!("{target}: seed {seed}, {} cases in {:?}: {tally:?}", only.map_or(cases, |_| 1), started.elapsed());
    tally
}

/// Byte-level mutations shared by the targets.
pub fn flip_bit(rng: &mut fastrand::Rng, data: &mut [u8], from: usize) -> String {
    if data.len() <= from {
        return "flip: nothing".into();
    }
    let i = rng.usize(from..data.len());
    let bit = rng.u8(..8);
    data[i] ^= 1 << bit;
    format!("flip bit {bit} at {i}")
}

pub fn set_byte(rng: &mut fastrand::Rng, data: &mut [u8], from: usize) -> String {
    if data.len() <= from {
        return "set: nothing".into();
    }
    let i = rng.usize(from..data.len());
    let b = rng.u8(..);
    data[i] = b;
    format!("byte {b:#04x} at {i}")
}

/// Random `(start, end)` within `from..data.len()`, at most `max` long.
pub fn chunk(rng: &mut fastrand::Rng, len: usize, from: usize, max: usize) -> (usize, usize) {
    let a = rng.usize(from.min(len)..=len);
    let b = (a + rng.usize(0..=max)).min(len);
    (a, b)
}

/// Random bytes, as many as a random pick from `len`.
pub fn random_bytes(rng: &mut fastrand::Rng, len: std::ops::Range<usize>) -> Vec<u8> {
    let n = rng.usize(len);
    std::iter::repeat_with(|| rng.u8(..)).take(n).collect()
}
