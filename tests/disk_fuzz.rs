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
#[path = "disk_fuzz/outbox.rs"]
mod outbox;
#[path = "disk_fuzz/web_state.rs"]
mod web_state;

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
fn web_state_and_request_files_load_or_are_quarantined_whole() {
    let f = harness::run("web state", 1500, web_state::Fuzz::new, |f, rng, _| f.case(rng));
    let t = &f.tally;
    assert!(t.loaded > 0 && t.quarantined > 0 && t.requests_taken > 0 && t.requests_quarantined > 0, "{t:?}");
}

#[test]
fn outbox_files_load_or_are_quarantined_never_dropped() {
    let f = harness::run("outbox", 1000, outbox::Fuzz::new, |f, rng, _| f.case(rng));
    let t = &f.tally;
    assert!(t.loaded > 0 && t.quarantined > 0 && t.temps > 0 && t.flood_loaded > 0 && t.retry_loaded > 0, "{t:?}");
}

/// The failback guard marker's content (read from a file anyone with the rsync module can write).
#[test]
fn failback_marker_decodes_or_is_refused() {
    use nfs_guard::failback_guard::{decode, encode, MAX_LEASE};
    use std::time::Duration;
    harness::run(
        "failback marker",
        20_000,
        || 0u64,
        |ok, rng, _| {
            let mut b = encode(Duration::from_secs(rng.u64(..)));
            match rng.u8(..4) {
                0 => b = harness::random_bytes(rng, 0..64),
                1 => {
                    harness::flip_bit(rng, &mut b, 0);
                }
                2 => {
                    let v =
                        ["18446744073709551616", "-1", "+5", " 7 ", "1e3", "\0", "\u{663}", "99999999999999999999999"];
                    b = format!("lease-secs={}\n", v[rng.usize(..v.len())]).into_bytes();
                }
                _ => b.truncate(rng.usize(..=b.len())),
            }
            if let Some(d) = decode(&b) {
                *ok += 1;
                if d > MAX_LEASE {
                    return Err(format!("{b:?}: lease {d:?} beyond the cap"));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn journal_truncated_at_every_offset_loses_only_the_torn_record() {
    let seed = seed();
    // All bases in a long run; a few (each at every offset) by default.
    let long = std::env::var("NFS_GUARD_FUZZ_CASES").is_ok();
    harness::once(
        "journal truncation",
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

/// Found by the fuzzer: bit rot in the length field of the LAST record (a whole, fdatasync'd one)
/// made it look like a record cut short by a crash, so it was cut silently: a queued path or a
/// requested full sync was lost without any repair asked for.
#[test]
fn journal_last_record_with_a_damaged_length_is_damage_not_a_torn_tail() {
    use nfs_guard::storage::batch::{Entry, Scope};
    use nfs_guard::storage::journal::{Journal, ALL_TREES};
    let dir = harness::scratch();
    for (case, flip) in [("full sync", 1usize), ("path", 1), ("path", 2)] {
        let p = dir.path().join(format!("{case}-{flip}.journal"));
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.full_sync(1, true).wait_blocking().unwrap();
            if case == "path" {
                let e = Entry::new(0, "last/written", Scope::Path);
                j.add(&[(0, &e)]).wait_blocking().unwrap();
            } else {
                j.full_sync(2, true).wait_blocking().unwrap();
            }
        }
        let mut bytes = std::fs::read(&p).unwrap();
        // The last record: `len crc body`; a larger length makes it run past the end of the file.
        let last = bytes.len() - if case == "path" { 8 + 1 + 8 + 4 + 1 + 4 + 12 } else { 8 + 5 };
        bytes[last + flip] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert!(r.full_sync.contains(&ALL_TREES), "{case}, byte {flip} of its length flipped: {r:?}");
    }
}
