//! The alert outbox (`alert::outbox`): a valid outbox written through the real API (queued messages,
//! folded alerts, `flood.json`, `backoff.json`), then files damaged (the JSON mutations of
//! `web_state`), renamed to names no entry has, replaced by a directory, a FIFO or a link to
//! `/dev/zero`, or copied under another entry's name. `Outbox::open` must never panic or hang; every
//! file of `queue/` and `fold/` is loaded, or moved to `dead/` with its bytes and counted (or is the
//! temp file of an interrupted write): none is silently dropped. The flood and backoff state load to
//! something usable or to nothing, and a reopen finds the same outbox.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nfs_guard::alert::outbox::{Outbox, RetryState};
use nfs_guard::alert::policy::FloodPolicy;
use nfs_guard::alert::{AlertEvent, AlertKind, Role};

use super::harness::scratch;

/// Relative path -> bytes of a healthy outbox.
fn base() -> BTreeMap<PathBuf, Vec<u8>> {
    let d = scratch();
    let now = SystemTime::now();
    {
        let mut o = Outbox::open(d.path()).unwrap();
        for i in 0..4 {
            let e = AlertEvent::new(AlertKind::FailoverStarted, Role::Web, format!("t{i} \"q\"\n"), "why ü")
                .detail("attempt", i)
                .server("primary", "down");
            o.enqueue(vec![e.clone(), e]);
        }
        for i in 0..3 {
            o.fold(AlertEvent::new(AlertKind::BothDown, Role::Storage, format!("f{i}"), "r"));
        }
        let mut p = FloodPolicy::new(Duration::from_secs(600), vec![]);
        p.admit(AlertKind::BothDown, now);
        p.admit(AlertKind::BothDown, now + Duration::from_secs(1));
        o.save_flood(&p.snapshot());
        o.save_retry(Some(&RetryState { failures: 3, next_attempt: now + Duration::from_secs(60) }));
    }
    let mut out = BTreeMap::new();
    for sub in ["queue", "fold", ""] {
        for e in std::fs::read_dir(d.path().join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                out.insert(e.path().strip_prefix(d.path()).unwrap().to_owned(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    assert_eq!(out.len(), 9, "{:?}", out.keys());
    out
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    ["queue", "fold"].iter().flat_map(|s| std::fs::read_dir(dir.join(s)).unwrap().map(|e| e.unwrap().path())).collect()
}

#[derive(Debug, Default)]
pub struct Tally {
    pub loaded: u64,
    pub quarantined: u64,
    pub temps: u64,
    pub flood_loaded: u64,
    pub retry_loaded: u64,
}

pub struct Fuzz {
    base: BTreeMap<PathBuf, Vec<u8>>,
    pub tally: Tally,
}

impl std::fmt::Debug for Fuzz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.tally)
    }
}

impl Fuzz {
    pub fn new() -> Fuzz {
        Fuzz { base: base(), tally: Tally::default() }
    }

    #[allow(clippy::too_many_lines, reason = "one case: setup, mutation, checks in order")]
    pub fn case(&mut self, rng: &mut fastrand::Rng) -> Result<(), String> {
        let tmp = scratch();
        let d = tmp.path().join("outbox");
        for sub in ["queue", "fold", "dead"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for (rel, bytes) in &self.base {
            std::fs::write(d.join(rel), bytes).unwrap();
        }
        let names: Vec<PathBuf> = self.base.keys().cloned().collect();
        let mut what = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            let rel = &names[rng.usize(..names.len())];
            let p = d.join(rel);
            // Only a regular file (an earlier round may have left a FIFO or a link to /dev/zero).
            if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let mut bytes = std::fs::read(&p).unwrap();
            let sub = p.parent().unwrap().to_owned();
            what.push(match rng.u8(..8) {
                0..=3 => {
                    let w = super::web_state::mutate(rng, &mut bytes);
                    std::fs::write(&p, &bytes).unwrap();
                    format!("{}: {w}", rel.display())
                }
                4 => {
                    let odd: &[u8] = [
                        &b"00000000000000000001.json.bak"[..],
                        b"1.json",
                        b"\xff\xfe.json",
                        b"99999999999999999999.json",
                        b"18446744073709551615.json",
                        b"0000000000000000000\n.json",
                        b"-00000000000000000001.json",
                        b"00000000000000000009.json.tmp.",
                    ][rng.usize(..8)];
                    let to = sub.join(std::ffi::OsStr::from_bytes(odd));
                    std::fs::rename(&p, &to).unwrap();
                    format!("{} renamed to {}", rel.display(), to.display())
                }
                5 => {
                    // Under another entry's number: its content does not match its name.
                    let to = sub.join(format!("{:020}.json", rng.u64(10..1000)));
                    std::fs::rename(&p, &to).unwrap();
                    format!("{} renamed to {}", rel.display(), to.display())
                }
                6 => {
                    std::fs::remove_file(&p).unwrap();
                    match rng.u8(..3) {
                        0 => std::fs::create_dir(&p).unwrap(),
                        1 => nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap(),
                        _ => std::os::unix::fs::symlink("/dev/zero", &p).unwrap(),
                    }
                    format!("{} replaced by a directory, FIFO or link to /dev/zero", rel.display())
                }
                _ => {
                    let to = sub.join(format!("00000000000000000042.json.tmp.{}", rng.u32(..)));
                    std::fs::rename(&p, &to).unwrap();
                    format!("{} renamed to a temp name", rel.display())
                }
            });
        }
        let fail = |e: String| format!("{what:?}: {e}");
        let before = entries(&d);
        let contents: BTreeMap<PathBuf, Option<Vec<u8>>> = before
            .iter()
            .map(|p| (p.clone(), std::fs::symlink_metadata(p).unwrap().is_file().then(|| std::fs::read(p).unwrap())))
            .collect();
        let mut o = Outbox::open(&d).map_err(|e| fail(nfs_guard::chain::render_chain(&e)))?;
        let q = o.quarantined().to_vec();
        let after = entries(&d);
        let temps = before.iter().filter(|p| !after.contains(p) && !q.iter().any(|x| &x.from == *p)).count();
        if o.len() + o.folded() + q.len() + temps != before.len() || after.len() != o.len() + o.folded() {
            return Err(fail(format!(
                "{} files, {} queued, {} folded, {} quarantined, {temps} gone, {} left",
                before.len(),
                o.len(),
                o.folded(),
                q.len(),
                after.len()
            )));
        }
        for gone in before.iter().filter(|p| !after.contains(p) && !q.iter().any(|x| &x.from == *p)) {
            if !gone.to_string_lossy().contains(".json.tmp.") {
                return Err(fail(format!("{} vanished without a quarantine", gone.display())));
            }
        }
        for x in &q {
            let to = x.to.as_ref().ok_or_else(|| fail(format!("not moved aside: {x:?}")))?;
            if let Some(Some(b)) = contents.get(&x.from) {
                if std::fs::read(to).ok().as_ref() != Some(b) {
                    return Err(fail(format!("{} lost its bytes when moved aside", x.from.display())));
                }
            }
        }
        self.tally.loaded += (o.len() + o.folded()) as u64;
        self.tally.quarantined += q.len() as u64;
        self.tally.temps += temps as u64;
        let flood = o.load_flood();
        self.tally.flood_loaded += u64::from(!flood.is_empty());
        self.tally.retry_loaded += u64::from(o.load_retry().is_some());
        let now = SystemTime::now();
        let mut p = FloodPolicy::new(Duration::from_secs(600), vec![]);
        p.restore(flood, now);
        for kind in o.folded_kinds() {
            p.ensure_digest(kind, now);
        }
        let _ = p.admit(AlertKind::BothDown, now);
        let _ = p.due(now + Duration::from_secs(86_400 * 365));
        let _ = p.next_due();
        // Numbers are never reused: not those of loaded entries, nor of dead or quarantined ones.
        let seq = o.enqueue(vec![AlertEvent::new(AlertKind::OutboxDamaged, Role::Web, "t", "r")]);
        let taken = std::fs::read_dir(d.join("dead"))
            .unwrap()
            .chain(std::fs::read_dir(d.join("queue")).unwrap())
            .chain(std::fs::read_dir(d.join("fold")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .any(|n| {
                n.split('.').next().and_then(|s| s.parse::<u64>().ok()) == Some(seq) && n != format!("{seq:020}.json")
            });
        if taken {
            return Err(fail(format!("sequence number {seq} reused")));
        }
        let (len, folded) = (o.len(), o.folded());
        drop(o);
        let o = Outbox::open(&d).map_err(|e| fail(nfs_guard::chain::render_chain(&e)))?;
        if !o.quarantined().is_empty() || o.len() != len || o.folded() != folded {
            return Err(fail(format!("the reopen differs: {:?}", o.quarantined())));
        }
        Ok(())
    }
}
