//! The web state file (`web.state.json`) and the request file (`web.request.json`): valid files
//! written by `save` / `put_request`, then damaged (bit flips, truncation, numbers replaced by huge or
//! negative ones, values by wrong types, deep nesting, invalid UTF-8). `load` and `take_request` must
//! never panic or hang; an unusable file is moved aside with its bytes intact (never lost, never read
//! again); a state that loads is within bounds, saves and loads back the same, and the state machine
//! can step from it (no overflow on any event, at any time).

use std::path::Path;

use nfs_guard::web::fsm::{self, Event, Hold, PerServer, Phase, Policy, Request, Server, Snapshot, SyncKind};
use nfs_guard::web::health::Status;
use nfs_guard::web::state::{self, Durable, Taken, MAX_EPOCH};

use super::harness::{chunk, flip_bit, set_byte};

fn bases() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let phases = [
        Phase::Unmounted,
        Phase::Serving { server: Server::Backup },
        Phase::Mounting { to: Server::Primary },
        Phase::Syncing { kind: SyncKind::ReverseSync, attempt: 3 },
        Phase::Staging { to: Server::Primary },
        Phase::CatchingUp,
        Phase::Syncing { kind: SyncKind::Reconcile, attempt: 1 },
    ];
    for (i, phase) in phases.into_iter().enumerate() {
        let mut d = Durable::default();
        d.fsm.phase = phase;
        d.fsm.epoch = i as u64 * 3;
        d.fsm.reconcile_epoch = (i % 2 == 1).then_some(i as u64);
        d.fsm.hold = [Hold::None, Hold::Stay, Hold::Pinned(Server::Backup)][i % 3];
        d.fsm.up_since.primary = Some(1_700_000_000_000);
        d.fsm.resync_failures = u32::try_from(i).unwrap();
        d.fsm.resync_not_before = Some(1_700_000_000_000 + i as u64);
        d.fsm.pass = 40 + i as u64;
        d.fsm.health.witness = Some(Status::Up);
        d.fsm.health.error.primary = Some("connect: timed out \"quoted\"".into());
        d.health.primary.fails = 2;
        d.health.backup.last_error = Some("ümlaut\n".into());
        out.push(serde_json::to_vec_pretty(&d).unwrap());
    }
    out
}

fn requests() -> Vec<Vec<u8>> {
    [Request::FailoverTo(Server::Backup), Request::FailoverTo(Server::Primary), Request::Hold, Request::Release]
        .into_iter()
        .map(|r| {
            let d = super::harness::scratch();
            state::put_request(d.path(), r).unwrap();
            std::fs::read(state::request_path(d.path())).unwrap()
        })
        .collect()
}

const NUMBERS: [&str; 12] = [
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "9007199254740991",
    "-1",
    "-9223372036854775809",
    "1e400",
    "-0",
    "0.5",
    "4294967296",
    "1e3",
    "00",
];
const WRONG: [&str; 10] =
    ["null", "true", "\"x\"", "[]", "{}", "[1,2]", "{\"phase\":\"serving\"}", "\"\\ud800\"", "\"\u{0}\"", "\"backup\""];

/// One mutation of JSON text `t` (one to three of them per case).
pub fn mutate(rng: &mut fastrand::Rng, t: &mut Vec<u8>) -> String {
    let len = t.len();
    match rng.u8(..10) {
        0 => flip_bit(rng, t, 0),
        1 => set_byte(rng, t, 0),
        2 => {
            let cut = rng.usize(..=len);
            t.truncate(cut);
            format!("cut at {cut}")
        }
        3 | 4 => {
            // A number, or any scalar or string value, replaced.
            let starts: Vec<usize> = (0..len)
                .filter(|&i| {
                    (t[i].is_ascii_digit() || t[i] == b'"' || t[i] == b'n' || t[i] == b't' || t[i] == b'f')
                        && i > 0
                        && matches!(t[i - 1], b' ' | b':' | b'[' | b',')
                })
                .collect();
            if starts.is_empty() {
                return "no value".into();
            }
            let a = starts[rng.usize(..starts.len())];
            let mut b = a + 1;
            if t[a] == b'"' {
                while b < len && t[b] != b'"' {
                    b += if t[b] == b'\\' { 2 } else { 1 };
                }
                b = (b + 1).min(len);
            } else {
                while b < len && !matches!(t[b], b',' | b'}' | b']' | b'\n') {
                    b += 1;
                }
            }
            let v = if rng.bool() { NUMBERS[rng.usize(..NUMBERS.len())] } else { WRONG[rng.usize(..WRONG.len())] };
            t.splice(a..b, v.bytes());
            format!("value at {a}..{b} replaced by {v}")
        }
        5 => {
            let n = [1000usize, 100_000, 129, 128][rng.usize(..4)];
            let at = rng.usize(..=len);
            let open = if rng.bool() { b'[' } else { b'{' };
            let nest: Vec<u8> = if open == b'[' {
                std::iter::repeat_n(b'[', n).chain(std::iter::repeat_n(b']', if rng.bool() { n } else { 0 })).collect()
            } else {
                std::iter::repeat_n(&b"{\"a\":"[..], n).flatten().copied().collect()
            };
            t.splice(at..at, nest);
            format!("{n} nested {} at {at}", open as char)
        }
        6 => {
            // Invalid UTF-8 inside a string.
            let quotes: Vec<usize> = (0..len).filter(|&i| t[i] == b'"').collect();
            let at = quotes.get(rng.usize(..quotes.len().max(1))).map_or(0, |q| q + 1);
            let bad: &[u8] = [&b"\xff"[..], b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"][rng.usize(..5)];
            t.splice(at..at, bad.iter().copied());
            format!("{bad:?} at {at}")
        }
        7 => {
            let (a, b) = chunk(rng, len, 0, 64);
            let at = rng.usize(..=len);
            let c = t[a..b].to_vec();
            t.splice(at..at, c);
            format!("{a}..{b} duplicated at {at}")
        }
        8 => {
            let (a, b) = chunk(rng, len, 0, 64);
            t.drain(a..b);
            format!("{a}..{b} deleted")
        }
        _ => {
            let n = rng.usize(..300);
            t.clear();
            t.extend(std::iter::repeat_with(|| rng.u8(..)).take(n));
            format!("{n} random bytes")
        }
    }
}

fn policy(failback: bool) -> Policy {
    Policy { hold_down_ms: 10_000, failback, retry_initial_ms: 1_000, retry_max_ms: 60_000 }
}

/// The state machine steps from `s` on every kind of event, at the epoch, now and the end of time.
fn steps(s: &fsm::State) {
    let both =
        |s| Snapshot { status: PerServer { primary: s, backup: s }, witness: Some(Status::Up), ..Snapshot::default() };
    let (up, down) = (both(Status::Up), both(Status::Down));
    let pass = s.pass;
    let events = [
        Event::Ticked,
        Event::HealthObserved(up),
        Event::HealthObserved(down),
        Event::MountSucceeded { server: Server::Primary, old_mount: Some(u64::MAX) },
        Event::MountFailed { server: Server::Backup, error: "e".into() },
        Event::ReverseSyncSucceeded { pass, files: u64::MAX, bytes: u64::MAX, elapsed_ms: u64::MAX },
        Event::ReverseSyncFailed { pass, error: "e".into() },
        Event::StagedSwitchSucceeded { to: Server::Primary, old_mount: None },
        Event::StagedSwitchFailed { to: Server::Primary, error: "e".into(), serving: None },
        Event::CatchUpFinished { pass, result: Ok((1, 2)) },
        Event::ReconcileSucceeded { pass, files: 1, bytes: 2, elapsed_ms: 3 },
        Event::ReconcileFailed { pass, error: "e".into() },
        Event::Requested(Request::FailoverTo(Server::Backup)),
        Event::Requested(Request::Release),
    ];
    let now = u64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
    for failback in [true, false] {
        let p = policy(failback);
        for e in &events {
            for t in [0, now, u64::MAX] {
                let mut st = s.clone();
                // A few steps in a row, each from where the last left.
                for _ in 0..3 {
                    st = fsm::step(&st, e.clone(), &p, t).next;
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Tally {
    pub loaded: u64,
    pub quarantined: u64,
    pub requests_taken: u64,
    pub requests_quarantined: u64,
}

/// Every file in `dir` but `keep`'s, with its bytes.
fn moved_aside(dir: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, p)| (n, std::fs::read(p).unwrap()))
        .collect()
}

pub struct Fuzz {
    states: Vec<Vec<u8>>,
    requests: Vec<Vec<u8>>,
    pub tally: Tally,
}

impl std::fmt::Debug for Fuzz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.tally)
    }
}

impl Fuzz {
    pub fn new() -> Fuzz {
        Fuzz { states: bases(), requests: requests(), tally: Tally::default() }
    }

    pub fn case(&mut self, rng: &mut fastrand::Rng) -> Result<(), String> {
        let dir = super::harness::scratch();
        let d = dir.path();
        let request = rng.u8(..3) == 0;
        let pool = if request { &self.requests } else { &self.states };
        let mut bytes = pool[rng.usize(..pool.len())].clone();
        let rounds = if rng.bool() { 1 } else { rng.usize(1..=3) };
        let what: Vec<String> = (0..rounds).map(|_| mutate(rng, &mut bytes)).collect();
        let fail = |e: String| format!("{what:?}: {e}");
        if request {
            std::fs::write(state::request_path(d), &bytes).unwrap();
            match state::take_request(d) {
                Taken::Nothing => return Err(fail("a request file was not seen".into())),
                Taken::Request(_) => self.tally.requests_taken += 1,
                Taken::Unreadable(q) => {
                    let to = q.moved_to.ok_or_else(|| fail(format!("not moved aside: {}", q.problem)))?;
                    if std::fs::read(&to).unwrap() != bytes {
                        return Err(fail("the moved-aside request lost its bytes".into()));
                    }
                    self.tally.requests_quarantined += 1;
                }
            }
            if state::take_request(d) != Taken::Nothing {
                return Err(fail("the request was taken twice".into()));
            }
            return Ok(());
        }
        std::fs::write(state::state_path(d), &bytes).unwrap();
        let loaded = state::load(d).map_err(|e| fail(nfs_guard::chain::render_chain(&e)))?;
        if let Some(q) = loaded.quarantined {
            if loaded.durable != Durable::default() {
                return Err(fail("a quarantined state was used".into()));
            }
            let kept = moved_aside(d, "web.state.json.corrupt-");
            if kept.len() != 1 || kept[0].1 != bytes || q.moved_to.is_none() {
                return Err(fail(format!("the unusable state was not kept aside whole: {q:?}")));
            }
            if state::state_path(d).exists() {
                return Err(fail("the unusable state is still in place".into()));
            }
            self.tally.quarantined += 1;
        } else {
            let s = &loaded.durable;
            if s.fsm.epoch > MAX_EPOCH || s.fsm.reconcile_epoch.is_some_and(|r| r > s.fsm.epoch) {
                return Err(fail(format!("accepted out-of-bounds numbers: {s:?}")));
            }
            state::save(d, s).unwrap();
            let again = state::load(d).unwrap();
            if again.quarantined.is_some() || again.durable != *s {
                return Err(fail(format!("saved and loaded back differently: {again:?}")));
            }
            steps(&s.fsm);
            self.tally.loaded += 1;
        }
        Ok(())
    }
}
