//! Fuzzes the config loader: the example configs under `config/`, mutated thousands of times (byte
//! flips, values replaced by huge/negative/NUL/very long/odd-unit ones, lines dropped, duplicated,
//! moved or uncommented, tables inserted), must each load to `Ok` or to a clean error: never a
//! panic, never a hang. Deterministic (fixed seed) and a few seconds long by default; for a long run:
//!
//! ```text
//! NFS_GUARD_FUZZ_CASES=500000 NFS_GUARD_FUZZ_SEED=7 cargo test --release --test config_fuzz -- --nocapture
//! ```
//!
//! A failure prints the seed, the case number and the mutated text, so it can be replayed.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nfs_guard::config::{Config, ConfigError};

const DEFAULT_CASES: u64 = 2500;
const DEFAULT_SEED: u64 = 0x6e66_732d_6775_6172;
/// One load must finish within this (a real one takes well under a millisecond).
const CASE_DEADLINE: Duration = Duration::from_secs(10);

/// Values that broke or could break a loader: overflowing, negative, NUL, very long, odd units, wrong
/// types, paths to special files.
fn nasty_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "18446744073709551615",
        "9223372036854775807",
        "-9223372036854775808",
        "-1",
        "0",
        "1e400",
        "nan",
        "-inf",
        "1.5",
        "true",
        "1979-05-27T07:32:00Z",
        "[]",
        "{}",
        "[[]]",
        "[1, \"a\"]",
        "{ a = 1 }",
        "\"\"",
        "\" \"",
        "\"\\u0000\"",
        "\"/srv/\\u0000nfs\"",
        "\"a\\nb\"",
        "\"\\t-rf\"",
        "\"-\"",
        "\"--delete\"",
        "\"ä/ß/\u{1F600}\"",
        "\"../../etc/passwd\"",
        "\"/\"",
        "\"//\"",
        "\"/dev/zero\"",
        "\"/dev/stdin\"",
        "\"/proc/self/mem\"",
        "\"/etc\"",
        "\"18446744073709551615s\"",
        "\"18446744073709551616s\"",
        "\"200000000000y\"",
        "\"99999999999999999999999ns\"",
        "\"-5s\"",
        "\"0s\"",
        "\"0\"",
        "\"1ns\"",
        "\"1.5s\"",
        "\"1 s\"",
        "\"5 fortnights\"",
        "\"1s 1s 1s\"",
        "\"1µs\"",
        "\"1h 61m\"",
        "\"365d\"",
        "\"366d\"",
        "\"10.0.0.300\"",
        "\"::1\"",
        "\"[::1]:0\"",
        "\"host:99999\"",
        "\"a@\"",
        "\"<>\"",
        "\"**\"",
        "\"[\"",
        "\"{a,b\"",
        "\"!x\"",
        "\"http://\"",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push(format!("\"{}\"", "a".repeat(5000)));
    v.push(format!("\"/{}\"", "d/".repeat(3000)));
    v.push(format!("\"{}s\"", "9".repeat(400)));
    v.push(format!("[{}]", vec!["\"x\""; 2000].join(",")));
    v.push(format!("[{}]", vec!["\"*.tmp\""; 100].join(",")));
    v
}

const HEADERS: [&str; 15] = [
    "[web]",
    "[web.checks]",
    "[web.primary]",
    "[web.backup]",
    "[web.reverse_sync]",
    "[web.reverse_sync.target]",
    "[storage]",
    "[storage.events]",
    "[storage.full_sync]",
    "[storage.hook]",
    "[[storage.trees]]",
    "[[storage.remotes]]",
    "[alert]",
    "[[web.restart_units]]",
    "[web.primary.x]",
];

/// The examples, and each with its commented-out keys and tables switched on (the ssh remote, the
/// hook, ...), so every key the examples document gets mutated.
fn bases() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let mut on = String::new();
        for l in text.lines() {
            let switched = l
                .strip_prefix("# ")
                .filter(|rest| rest.starts_with('[') || rest.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')));
            on.push_str(switched.unwrap_or(l));
            on.push('\n');
        }
        out.push((format!("{name} (uncommented)"), on));
        out.push((name, text));
    }
    assert!(out.len() >= 8, "examples missing under {}", dir.display());
    out
}

struct Mutator {
    rng: fastrand::Rng,
    values: Vec<String>,
    bases: Vec<(String, String)>,
}

impl Mutator {
    fn line_index(&mut self, lines: &[String]) -> Option<usize> {
        (!lines.is_empty()).then(|| self.rng.usize(..lines.len()))
    }

    /// A line with `key = value` (not a comment), if any.
    fn assignment(&mut self, lines: &[String]) -> Option<usize> {
        let idx: Vec<usize> =
            (0..lines.len()).filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains(" = ")).collect();
        (!idx.is_empty()).then(|| idx[self.rng.usize(..idx.len())])
    }

    fn mutate_once(&mut self, text: &str) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        match self.rng.u8(..12) {
            // A value replaced by a nasty one.
            0..=5 => {
                if let Some(i) = self.assignment(&lines) {
                    let key = lines[i].split(" = ").next().unwrap().to_owned();
                    let v = self.values[self.rng.usize(..self.values.len())].clone();
                    lines[i] = format!("{key} = {v}");
                }
            }
            // A line dropped.
            6 => {
                if let Some(i) = self.line_index(&lines) {
                    lines.remove(i);
                }
            }
            // A line duplicated (duplicate key) or moved elsewhere (key in the wrong table).
            7 => {
                if let (Some(i), Some(j)) = (self.line_index(&lines), self.line_index(&lines)) {
                    let l = lines[i].clone();
                    if self.rng.bool() {
                        lines.remove(i);
                    }
                    lines.insert(j.min(lines.len()), l);
                }
            }
            // A table header inserted.
            8 => {
                let h = HEADERS[self.rng.usize(..HEADERS.len())].to_owned();
                let j = self.rng.usize(..=lines.len());
                lines.insert(j, h);
            }
            // A line from another example (another section's keys).
            9 => {
                let other = self.bases[self.rng.usize(..self.bases.len())].1.clone();
                let other: Vec<&str> = other.lines().filter(|l| l.contains(" = ")).collect();
                if !other.is_empty() {
                    let l = other[self.rng.usize(..other.len())].to_owned();
                    let j = self.rng.usize(..=lines.len());
                    lines.insert(j, l);
                }
            }
            // Byte flips (kept valid UTF-8 here; `load` cases below take raw bytes).
            _ => {
                let mut bytes = lines.join("\n").into_bytes();
                for _ in 0..self.rng.usize(1..4) {
                    if !bytes.is_empty() {
                        let i = self.rng.usize(..bytes.len());
                        bytes[i] = self.rng.u8(..);
                    }
                }
                return String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    /// One case: a base (sometimes two concatenated), mutated 1 to 4 times.
    fn case(&mut self) -> String {
        let mut text = self.bases[self.rng.usize(..self.bases.len())].1.clone();
        if self.rng.u8(..8) == 0 {
            text.push_str(&self.bases[self.rng.usize(..self.bases.len())].1);
        }
        for _ in 0..self.rng.usize(1..=4) {
            text = self.mutate_once(&text);
        }
        text
    }
}

/// What a valid config is used for at start must not overflow: every duration can be added to
/// `now` and multiplied by the factors the roles use.
fn assert_usable(c: &Config) {
    let mut ds = Vec::new();
    if let Some(w) = &c.web {
        ds.extend([w.interval, w.probe_timeout, w.mount_timeout, w.hold_down, w.restart_timeout]);
        ds.push(w.checks.canary_timeout);
        if let Some(r) = &w.reverse_sync {
            ds.extend([r.timeout, r.retry_initial, r.retry_max, r.target.connect_timeout, r.target.io_timeout]);
        }
    }
    if let Some(s) = &c.storage {
        ds.extend([s.window, s.max_delay, s.settle, s.retry_min, s.retry_max, s.alert_after, s.batch_timeout]);
        ds.extend(s.full_sync.interval);
        ds.push(s.full_sync.timeout);
        ds.extend(s.hook.as_ref().map(|h| h.timeout));
        for r in &s.remotes {
            ds.extend([r.target.connect_timeout, r.target.io_timeout]);
        }
    }
    if let Some(a) = &c.alert {
        ds.extend([a.flood_period, a.retry_max, a.smtp.connect_timeout, a.smtp.command_timeout]);
        let _ = a.smtp.deadline();
    }
    let now = Instant::now();
    for d in ds {
        assert!(now.checked_add(d * 64).is_some(), "{d:?} overflows an Instant");
        assert!(tokio::time::Instant::now().checked_add(d * 64).is_some(), "{d:?} overflows a tokio Instant");
    }
}

#[derive(Default, Debug)]
struct Tally {
    /// Loaded.
    ok: u64,
    /// Refused by the TOML parser or by serde (syntax, type, unknown or duplicate key).
    toml: u64,
    /// Refused by validation (a key path is named).
    invalid: u64,
    /// Refused on reading (`load` cases with invalid UTF-8).
    read: u64,
    /// The longest load and its case number.
    slowest: (Duration, u64),
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Loads one case; `Err` is a panic (with its message).
fn load_one(text: &str, raw_file: Option<&Path>, tally: &mut Tally) -> Result<(), String> {
    let path = Path::new("/etc/nfs-guard/fuzz.toml");
    let r = catch_unwind(AssertUnwindSafe(|| match raw_file {
        Some(f) => Config::load(f),
        None => Config::parse(path, text),
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })?;
    match r {
        Ok(c) => {
            catch_unwind(AssertUnwindSafe(|| assert_usable(&c)))
                .map_err(|_| "accepted an unusable config".to_owned())?;
            tally.ok += 1;
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            if problems.iter().all(|p| p.key.is_empty()) {
                tally.toml += 1;
            } else {
                tally.invalid += 1;
            }
            let msg = ConfigError::Invalid { path: path.to_owned(), problems }.to_string();
            if msg.contains('\0') || msg.len() > 64 * 1024 {
                let start: String = msg.chars().take(2000).collect();
                return Err(format!("unclean error ({} bytes, NUL: {}): {start:?}", msg.len(), msg.contains('\0')));
            }
        }
        Err(_) => tally.read += 1,
    }
    Ok(())
}

#[test]
fn mutated_examples_load_or_fail_cleanly() {
    let cases = env_u64("NFS_GUARD_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_u64("NFS_GUARD_FUZZ_SEED", DEFAULT_SEED);
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("raw.toml");
    let (tx, rx) = mpsc::channel::<(u64, String, Option<Result<(), String>>)>();
    let started = Instant::now();
    let worker = std::thread::spawn(move || {
        let mut m = Mutator { rng: fastrand::Rng::with_seed(seed), values: nasty_values(), bases: bases() };
        let mut tally = Tally::default();
        for n in 0..cases {
            let text = m.case();
            // Every 16th case goes through `load` from a file, with raw byte flips (invalid UTF-8).
            let raw = if n % 16 == 0 {
                let mut bytes = text.clone().into_bytes();
                if !bytes.is_empty() {
                    let i = m.rng.usize(..bytes.len());
                    bytes[i] = m.rng.u8(..);
                }
                std::fs::write(&raw_path, bytes).unwrap();
                Some(raw_path.as_path())
            } else {
                None
            };
            tx.send((n, text.clone(), None)).unwrap();
            let t0 = Instant::now();
            let r = load_one(&text, raw, &mut tally);
            tally.slowest = tally.slowest.max((t0.elapsed(), n));
            tx.send((n, text, Some(r))).unwrap();
        }
        tally
    });
    let mut failures = Vec::new();
    let mut current = (0, String::new());
    loop {
        match rx.recv_timeout(CASE_DEADLINE) {
            Ok((n, text, None)) => current = (n, text),
            Ok((n, text, Some(Err(why)))) => failures.push((n, why, text)),
            Ok((_, _, Some(Ok(())))) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "seed {seed}: case {} still loading after {CASE_DEADLINE:?} (hang):\n{}",
                current.0,
                shown(&current.1)
            ),
        }
    }
    let tally = worker.join().unwrap();
    eprintln!("config fuzz: seed {seed}, {cases} cases in {:?}: {tally:?}", started.elapsed());
    if let Some((n, why, text)) = failures.first() {
        panic!(
            "seed {seed}: {} of {cases} cases panicked or failed uncleanly; first, case {n}: {why}\n{}",
            failures.len(),
            shown(text)
        );
    }
    // The mutations must reach validation, not just the TOML parser.
    assert!(tally.invalid > cases / 10, "too few cases reached validation: {tally:?}");
    assert!(tally.ok > 0, "no mutated case was valid: {tally:?}");
}

/// `text` for a failure message, long lines cut.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for l in text.lines() {
        if l.len() > 200 {
            let cut = (0..=200).rev().find(|&i| l.is_char_boundary(i)).unwrap_or(0);
            writeln!(out, "{}… ({} bytes)", &l[..cut], l.len()).unwrap();
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}
