//! The chaos test's writer and its model: creates, overwrites, appends, renames and deletes files
//! through the web host's mount without pause, and records only what the filesystem acknowledged.
//! The operations run where the mount is ([`Hands`]): in this process on the stand-in's mount, or
//! inside the user-mode-linux guest on Linux's own NFS client (`guest_ops.py`).
//!
//! Every content line is `v=N` (N unique per operation), so a file's version is its largest N and an
//! append's line can be looked for. Each operation runs on its own thread with a deadline: one that
//! hangs on a dead mount is abandoned, its file is "in doubt" (checked only for a version no older
//! than its last acknowledged one) and never touched again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// An operation that takes longer than this is abandoned (in doubt).
const OP_DEADLINE: Duration = Duration::from_secs(4);
/// At most this many live files (keeps reverse-sync passes short).
const MAX_LIVE: usize = 250;
const DIRS: usize = 4;

#[derive(Debug, Clone)]
pub enum FileState {
    /// `lines`: the versions the file must contain (since its last acknowledged overwrite);
    /// `renamed_in_failover`: its name came from a rename made while the farm served the backup
    /// (its content then depends on how renames cross a failback: the storage-agent issue).
    /// `former`: the names it had before renames (a conflict copy may be under one of them).
    Live { version: u64, lines: Vec<u64>, doubt: bool, renamed_in_failover: bool, former: Vec<String> },
    /// Deleted or renamed away; `in_failover`: acknowledged while the farm served the backup.
    Gone { in_failover: bool },
}

#[derive(Debug, Default)]
pub struct Counts {
    pub ops: u64,
    pub acked: u64,
    pub failed: u64,
    pub in_doubt: u64,
}

#[derive(Default)]
pub struct Model {
    pub files: BTreeMap<String, FileState>,
    pub counts: Counts,
    /// Per file: what happened to it (for the report of a loss).
    pub history: BTreeMap<String, Vec<String>>,
}

/// Where the operations run.
pub enum Hands {
    /// In this process, under `root` (the mount as seen from here: the stand-in's).
    Local(PathBuf),
    /// Inside the web guest: `child` runs `guest_ops.py SPOOL MOUNT` there ([`Hands::GUEST_OPS`]);
    /// requests and results pass through `spool`, a directory both sides see.
    Guest { spool: PathBuf, child: Child },
}

/// How long a request to the guest is waited for at most (the writer gives up at `OP_DEADLINE`;
/// this only bounds the thread that waits).
const GUEST_WAIT: Duration = Duration::from_secs(60);

impl Hands {
    pub const GUEST_OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chaos_writer/guest_ops.py");

    /// The spool's directories, made before the guest's `guest_ops.py` starts.
    pub fn make_spool(spool: &Path) {
        fs::create_dir_all(spool.join("req")).unwrap();
        fs::create_dir_all(spool.join("res")).unwrap();
    }

    /// Performs `op` (request number `n`): `Ok(true)` acknowledged, `Ok(false)` an error, `Err` no
    /// answer within [`GUEST_WAIT`].
    fn exec(&self, n: u64, op: &Op, data: &[u8]) -> Result<bool, ()> {
        match self {
            Hands::Local(root) => Ok(exec(root, op, data).is_ok()),
            Hands::Guest { spool, .. } => {
                let (kind, names): (&str, Vec<&str>) = match op {
                    Op::Create(a) | Op::Overwrite(a) => ("write", vec![a]),
                    Op::Append(a) => ("append", vec![a]),
                    Op::Rename(a, b) => ("rename", vec![a, b]),
                    Op::Delete(a) => ("delete", vec![a]),
                    Op::Mkdir(a) => ("mkdir", vec![a]),
                };
                let mut body = kind.as_bytes().to_vec();
                for name in names {
                    body.push(0);
                    body.extend_from_slice(name.as_bytes());
                }
                body.push(0);
                body.extend_from_slice(data);
                let tmp = spool.join("req").join(format!(".{n}"));
                fs::write(&tmp, body).unwrap();
                fs::rename(&tmp, spool.join("req").join(n.to_string())).unwrap();
                let res = spool.join("res").join(n.to_string());
                let t = Instant::now();
                while t.elapsed() < GUEST_WAIT {
                    if let Ok(answer) = fs::read(&res) {
                        let _ = fs::remove_file(&res);
                        return Ok(answer == b"ok");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(())
            }
        }
    }

    fn stop(self) {
        if let Hands::Guest { spool, mut child } = self {
            fs::write(spool.join("stop"), b"").unwrap();
            let t = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The writer; `stop()` ends it and returns the model.
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Model>>,
    hands: Arc<Hands>,
}

impl Writer {
    /// Starts writing with `hands`. `in_failover` tells the model how to label deletes and renames.
    pub fn start(hands: Hands, seed: u64, in_failover: Arc<AtomicBool>) -> Writer {
        for d in 0..DIRS {
            let dir = format!("d{d}");
            assert_eq!(hands.exec(0, &Op::Mkdir(dir.clone()), b""), Ok(true), "the writer cannot make {dir}");
        }
        let hands = Arc::new(hands);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, h) = (Arc::clone(&stop), Arc::clone(&hands));
        let thread = std::thread::spawn(move || run(&h, seed, &s, &in_failover));
        Writer { stop, thread: Some(thread), hands }
    }

    pub fn stop(mut self) -> Model {
        self.stop.store(true, Ordering::SeqCst);
        let model = self.thread.take().unwrap().join().unwrap();
        // the per-operation threads still waiting hold clones: stop the guest's side regardless
        match Arc::try_unwrap(self.hands) {
            Ok(hands) => hands.stop(),
            Err(shared) => {
                if let Hands::Guest { spool, .. } = &*shared {
                    fs::write(spool.join("stop"), b"").unwrap();
                }
            }
        }
        model
    }
}

#[derive(Clone)]
enum Op {
    Create(String),
    Overwrite(String),
    Append(String),
    Rename(String, String),
    Delete(String),
    Mkdir(String),
}

fn line(v: u64, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut l = format!("v={v} ").into_bytes();
    l.extend(std::iter::repeat_n(b'x', rng.usize(0..2000)));
    l.push(b'\n');
    l
}

fn exec(root: &Path, op: &Op, data: &[u8]) -> std::io::Result<()> {
    let write = |name: &str, append: bool| -> std::io::Result<()> {
        let mut o = fs::OpenOptions::new();
        if append {
            o.append(true);
        } else {
            o.write(true).create(true).truncate(true);
        }
        let mut f = o.open(root.join(name))?;
        f.write_all(data)?;
        f.sync_all()
    };
    match op {
        Op::Create(n) | Op::Overwrite(n) => write(n, false),
        Op::Append(n) => write(n, true),
        Op::Rename(a, b) => fs::rename(root.join(a), root.join(b)),
        Op::Delete(n) => fs::remove_file(root.join(n)),
        Op::Mkdir(n) => fs::create_dir_all(root.join(n)),
    }
}

fn run(hands: &Arc<Hands>, seed: u64, stop: &AtomicBool, in_failover: &AtomicBool) -> Model {
    let t0 = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut m = Model::default();
    let next = AtomicU64::new(1);
    while !stop.load(Ordering::SeqCst) {
        let live: Vec<String> = m
            .files
            .iter()
            .filter(|(_, s)| matches!(s, FileState::Live { doubt: false, .. }))
            .map(|(n, _)| n.clone())
            .collect();
        let v = next.fetch_add(1, Ordering::SeqCst);
        let fresh = || format!("d{}/f{v}", v % DIRS as u64);
        let op = match (rng.u8(0..100), live.is_empty()) {
            (_, true) => Op::Create(fresh()),
            (0..30, _) if live.len() < MAX_LIVE => Op::Create(fresh()),
            (0..50, _) => Op::Overwrite(live[rng.usize(..live.len())].clone()),
            (50..75, _) => Op::Append(live[rng.usize(..live.len())].clone()),
            (75..88, _) => Op::Rename(live[rng.usize(..live.len())].clone(), fresh()),
            _ => Op::Delete(live[rng.usize(..live.len())].clone()),
        };
        let data = line(v, &mut rng);
        let failover = in_failover.load(Ordering::SeqCst);
        m.counts.ops += 1;
        let (tx, rx) = mpsc::channel();
        {
            let (hands, op, data) = (Arc::clone(hands), op.clone(), data.clone());
            std::thread::spawn(move || {
                if let Ok(acked) = hands.exec(v, &op, &data) {
                    let _ = tx.send(acked);
                }
            });
        }
        let started = t0.elapsed().as_secs_f64();
        let outcome = rx.recv_timeout(OP_DEADLINE);
        let what = match &op {
            Op::Create(n) => vec![(n.clone(), "create")],
            Op::Overwrite(n) => vec![(n.clone(), "overwrite")],
            Op::Append(n) => vec![(n.clone(), "append")],
            Op::Rename(a, b) => vec![(a.clone(), "rename away"), (b.clone(), "rename to")],
            Op::Delete(n) => vec![(n.clone(), "delete")],
            Op::Mkdir(_) => Vec::new(), // set-up only
        };
        for (n, kind) in what {
            let res = match outcome {
                Ok(true) => "acked",
                Ok(false) => "failed",
                Err(_) => "in doubt",
            };
            m.history.entry(n).or_default().push(format!(
                "{started:.2}-{:.2}s v={v} {kind} {res}{}",
                t0.elapsed().as_secs_f64(),
                if failover { " (failover)" } else { "" }
            ));
        }
        match outcome {
            Ok(true) => {
                m.counts.acked += 1;
                apply(&mut m, &op, v, failover);
            }
            Ok(false) => {
                m.counts.failed += 1;
                // A failed operation may still have taken effect (a write cut short): in doubt.
                doubt(&mut m, &op);
            }
            Err(_) => {
                m.counts.in_doubt += 1;
                doubt(&mut m, &op);
            }
        }
    }
    m
}

fn apply(m: &mut Model, op: &Op, v: u64, in_failover: bool) {
    match op {
        Op::Create(n) | Op::Overwrite(n) => {
            m.files.insert(
                n.clone(),
                FileState::Live {
                    version: v,
                    lines: vec![v],
                    doubt: false,
                    renamed_in_failover: false,
                    former: Vec::new(),
                },
            );
        }
        Op::Append(n) => {
            if let Some(FileState::Live { version, lines, .. }) = m.files.get_mut(n) {
                *version = v;
                lines.push(v);
            }
        }
        Op::Rename(from, to) => {
            if let Some(mut state) = m.files.insert(from.clone(), FileState::Gone { in_failover }) {
                if let FileState::Live { renamed_in_failover, former, .. } = &mut state {
                    *renamed_in_failover |= in_failover;
                    former.push(from.clone());
                }
                m.files.insert(to.clone(), state);
            }
        }
        Op::Delete(n) => {
            m.files.insert(n.clone(), FileState::Gone { in_failover });
        }
        Op::Mkdir(_) => {}
    }
}

/// The outcome is unknown (or an error that may have taken effect): the file(s) may hold this
/// version or the previous one, and a delete or rename may or may not have happened.
fn doubt(m: &mut Model, op: &Op) {
    let mark = |m: &mut Model, n: &String, may_be_gone: bool| match m.files.get_mut(n) {
        Some(FileState::Live { doubt, version, .. }) => {
            *doubt = true;
            if may_be_gone {
                *version = 0;
            }
        }
        Some(FileState::Gone { .. }) | None => {
            // A create or the target of a rename: it may or may not exist; no version is owed.
            m.files.insert(
                n.clone(),
                FileState::Live {
                    version: 0,
                    lines: Vec::new(),
                    doubt: true,
                    renamed_in_failover: false,
                    former: Vec::new(),
                },
            );
        }
    };
    match op {
        // An append cut short leaves what was there; a truncating write or a delete may have
        // destroyed it (the client's own unacknowledged operation): nothing is owed then.
        Op::Append(n) => mark(m, n, false),
        Op::Create(n) | Op::Overwrite(n) | Op::Delete(n) => mark(m, n, true),
        Op::Rename(from, to) => {
            mark(m, from, true);
            mark(m, to, true);
        }
        Op::Mkdir(_) => {}
    }
}

/// The versions a file's content holds.
pub fn versions(content: &[u8]) -> Vec<u64> {
    content
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(b"v="))
        .filter_map(|l| std::str::from_utf8(l.split(|b| *b == b' ').next()?).ok()?.parse().ok())
        .collect()
}

/// What the check found on one server.
#[derive(Debug, Default)]
pub struct Findings {
    /// Acknowledged writes missing or older than acknowledged (must be zero).
    pub lost: Vec<String>,
    /// Files deleted or renamed away while serving the backup that exist again.
    pub resurrected_failover: Vec<String>,
    /// Files deleted or renamed away while serving the primary that exist again.
    pub resurrected_other: Vec<String>,
    /// Files named by a rename made during a failover whose content is not the last acknowledged
    /// (the rename crossed a failback: the storage-agent issue).
    pub renamed_mismatch: Vec<String>,
    /// Acknowledged versions not in the file but kept in a conflict copy beside it
    /// (`NAME.nfs-guard-conflict-*`: both servers changed it; both versions kept and alerted).
    pub conflicts: Vec<String>,
}

/// The versions in the conflict copies of `name` under `root` (`NAME.nfs-guard-conflict-*`).
fn conflict_versions(root: &Path, name: &str) -> Vec<Vec<u64>> {
    let path = root.join(name);
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else { return Vec::new() };
    let prefix = format!("{}.nfs-guard-conflict-", base.to_string_lossy());
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| fs::read(e.path()).ok())
        .map(|c| versions(&c))
        .collect()
}

/// Checks the tree at `root` (a server's export) against the model.
pub fn check(m: &Model, root: &Path) -> Findings {
    let mut f = Findings::default();
    for (name, s) in &m.files {
        let content = fs::read(root.join(name)).ok();
        match s {
            FileState::Live { version, lines, doubt, renamed_in_failover, former } => {
                let lost = if *renamed_in_failover { &mut f.renamed_mismatch } else { &mut f.lost };
                let Some(c) = content else {
                    if *version > 0 {
                        lost.push(format!("{name}: missing (acknowledged v={version})"));
                    }
                    continue;
                };
                let have = versions(&c);
                let max = have.iter().copied().max().unwrap_or(0);
                let (problem, needed) = if max < *version {
                    (format!("{name}: holds v={max}, acknowledged v={version}"), vec![*version])
                } else if !doubt {
                    let missing: Vec<u64> = lines.iter().filter(|l| !have.contains(l)).copied().collect();
                    if missing.is_empty() {
                        continue;
                    }
                    (format!("{name}: acknowledged appends {missing:?} missing (holds {have:?})"), missing)
                } else {
                    continue;
                };
                // kept beside it when both servers changed it: every missing version in a conflict copy
                let copies: Vec<Vec<u64>> =
                    std::iter::once(name).chain(former).flat_map(|n| conflict_versions(root, n)).collect();
                let kept = needed.iter().all(|v| copies.iter().any(|c| c.contains(v)));
                if kept {
                    f.conflicts.push(problem);
                } else {
                    lost.push(problem);
                }
            }
            FileState::Gone { in_failover, .. } => {
                if content.is_some() {
                    if *in_failover {
                        f.resurrected_failover.push(name.clone());
                    } else {
                        f.resurrected_other.push(name.clone());
                    }
                }
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(versions(b"v=3 xx\nv=12 \n"), [3, 12]);
        assert!(versions(b"").is_empty());
    }
}
