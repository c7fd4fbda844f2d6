//! Fuzzes every file the daemons read back from disk: the storage journal (versions 2 and 1), the
//! web state and request files, the alert outbox (entries, `flood.json`, `backoff.json`) and the
//! failback guard marker. Valid files are written through the real code, then damaged (bit flips,
//! truncation, duplicated or moved chunks, huge numbers, wrong types, deep nesting, invalid UTF-8,
//! garbage), and each is read back through the public API: never a panic, never a hang; a clean
//! error or a quarantine, never a silent loss. The journal's checks are in `disk_fuzz/journal.rs`.
//!
//! Deterministic (fixed seed) and a few seconds per target by default. A long run (every target
//! with that many cases; `NFS_GUARD_FUZZ_CASE=N` replays one case of a failure report):
//!
//! ```text
//! NFS_GUARD_FUZZ_CASES=100000 NFS_GUARD_FUZZ_SEED=7 cargo test --release --test disk_fuzz -- --nocapture --test-threads 1
//! ```
//!
//! (Overflow checks are on only without `--release`: a long debug run finds arithmetic overflows too.)
#![allow(clippy::unwrap_used)]

#[path = "disk_fuzz/harness.rs"]
mod harness;
#[path = "disk_fuzz/journal.rs"]
mod journal;

use harness::DEFAULT_SEED;

fn seed() -> u64 {
    std::env::var("NFS_GUARD_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SEED)
}

#[test]
fn journal_mutations_replay_only_what_was_written_and_repair_damage() {
    let seed = seed();
    let f = harness::run("journal", 1500, move || journal::Fuzz::new(seed), |f, rng, _| f.case(rng));
    assert!(f.tally.repaired > 0 && f.tally.clean > 0 && f.tally.refused > 0, "{f:?}");
}

#[test]
fn journal_truncated_at_every_offset_loses_only_the_torn_record() {
    let seed = seed();
    // All bases in a long run; a few (each at every offset) by default.
    let long = std::env::var("NFS_GUARD_FUZZ_CASES").is_ok();
    harness::run(
        "journal truncation",
        1,
        move || journal::Fuzz::new(seed),
        move |f, _, _| {
            let n = f.base_count();
            let picked: Vec<usize> = if long { (0..n).collect() } else { vec![0, 1, 2, n - 2, n - 1] };
            for i in picked {
                for cut in 0..=f.base_len(i) {
                    f.truncated(i, cut).map_err(|e| format!("base {i}: {e}"))?;
                }
            }
            Ok(())
        },
    );
}
