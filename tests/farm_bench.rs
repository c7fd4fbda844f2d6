//! Benchmark of the web farm (docs/bench-farm.md, run by `scripts/bench-farm.sh`): failover and
//! failback times of three web nodes agreeing through etcd (`[cluster]`) against one web node
//! deciding alone (`[web.agents]`, no `[cluster]`), the same faults on the primary in one run.
//!
//! Per run: a fault on the primary at a random point of the check cycle, then the time until EVERY
//! node's mount serves the backup (the last node; the first is printed too), then `heal` and the
//! time until every node's mount serves the primary again (the failback: rise x interval, the
//! hold-down, the drain and the switch). Between runs it waits until the failback settled (every
//! node serving the primary in a steady phase, the primary's agent active, the farm's record no
//! longer `switching`). A fault that kills the primary's processes (`kill`) takes its agent and,
//! in a farm, its etcd member with it: both are restarted right after `heal`, inside the measured
//! failback, as the host's own services would be.
//!
//! Environment: `BENCH_RUNS` (default 5), `BENCH_FAULTS` (default `kill stop-nfs blackhole`),
//! `BENCH_MODES` (default `single farm`). Ignored by `cargo test`: it takes minutes.
#![allow(clippy::unwrap_used)]

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/etcd.rs"]
mod etcd;
#[path = "common/extra_host.rs"]
mod extra_host;
#[path = "common/farm.rs"]
mod farm;
#[path = "common/lab.rs"]
mod lab;
mod storage_common;
#[path = "common/web_node.rs"]
mod web_node;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::Cluster;
use etcd::Etcd;
use extra_host::ExtraHost;
use farm::{switching, tails, wait_all, FarmNode, Place, FALL, INTERVAL};
use lab::{Fault, Host, Lab, WebKind};

/// Bound of one failover or failback of the benchmark (a run beyond it fails the benchmark).
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

fn fault_named(name: &str) -> Fault {
    Fault::ALL.into_iter().find(|f| f.as_str() == name).unwrap_or_else(|| {
        let known: Vec<&str> = Fault::ALL.iter().map(|f| f.as_str()).collect();
        panic!("BENCH_FAULTS: unknown fault {name:?} (known: {})", known.join(" "))
    })
}

/// A small xorshift, seeded from the clock: where in the check cycle the fault lands.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        Jitter(u64::from(nanos) | 1)
    }

    /// A delay in [0, `INTERVAL`).
    fn next(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let ms = u64::try_from(INTERVAL.as_millis()).unwrap();
        Duration::from_millis(self.0 % ms)
    }
}

/// Polls every node's mountinfo (never the mount) until all serve `server`; the time each node got
/// there, in node order.
fn until_all_mount(lab: &Lab, nodes: &[FarmNode], server: Host, t0: Instant) -> Vec<Duration> {
    let want = lab.nfs_source(server);
    let mut at: Vec<Option<Duration>> = vec![None; nodes.len()];
    while at.iter().any(Option::is_none) {
        for (i, n) in nodes.iter().enumerate() {
            if at[i].is_none() && n.place.mount_source().as_deref() == Some(want.as_str()) {
                at[i] = Some(t0.elapsed());
            }
        }
        assert!(
            t0.elapsed() < RUN_LIMIT,
            "not every node on the {} after {RUN_LIMIT:?}\n{}",
            server.name(),
            tails(nodes)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    at.into_iter().map(Option::unwrap).collect()
}

/// `name n p50 p99 max` of `ms` (nearest rank, as scripts/bench-failover.sh prints them).
fn stats(ms: &[u128]) -> (u128, u128, u128) {
    let mut v = ms.to_vec();
    v.sort_unstable();
    let rank = |p: usize| v[(v.len() * p).div_ceil(100).max(1) - 1];
    (rank(50), rank(99), *v.last().unwrap())
}

fn ms(d: &[Duration]) -> Vec<u128> {
    d.iter().map(Duration::as_millis).collect()
}

/// The times of one mode: per fault, the failovers (last node, first node) and the failbacks.
#[derive(Default)]
struct Times {
    failover: Vec<Duration>,
    first: Vec<Duration>,
    failback: Vec<Duration>,
}

/// Everything of one mode (agents, the nodes, etcd for a farm) runs the faults, then stops.
fn bench_mode(
    lab: &Lab,
    farm_mode: bool,
    extra: [&ExtraHost; 2],
    faults: &[Fault],
    runs: usize,
) -> BTreeMap<&'static str, Times> {
    let dir = tempfile::tempdir_in(lab.state_dir()).unwrap();
    let mut storage = Cluster::new(lab, dir.path(), "", "");
    storage.start_agent(lab, Host::Primary);
    storage.start_agent(lab, Host::Backup);
    let mut etcd = farm_mode.then(|| Etcd::start(lab, dir.path()));
    let nodes: Vec<FarmNode> = if farm_mode {
        farm::start_farm(lab, dir.path(), etcd.as_ref().unwrap(), &storage, extra, "")
    } else {
        let mut n = FarmNode::new(lab, dir.path(), "w1", Place::LabWeb(lab), &storage.secret, None, "");
        n.start();
        vec![n]
    };
    let mode = if farm_mode { "farm" } else { "single" };
    let settled = |nodes: &[FarmNode], etcd: &Option<Etcd>| {
        wait_all("the failback to settle", RUN_LIMIT, nodes, |n| n.serves(lab, Host::Primary));
        lab::wait_until("the primary's agent active, the record settled", RUN_LIMIT, || {
            Cluster::report(lab, Host::Primary).is_some_and(|r| r["record"]["active"] == "primary")
                && etcd.as_ref().is_none_or(|e| !switching(lab, e))
        });
    };
    settled(&nodes, &etcd);
    let mut jitter = Jitter::new();
    let mut out = BTreeMap::new();
    for fault in faults {
        let mut t = Times::default();
        for run in 1..=runs {
            std::thread::sleep(jitter.next());
            let t0 = Instant::now();
            lab.fault(Host::Primary, *fault);
            let at = until_all_mount(lab, &nodes, Host::Backup, t0);
            t.failover.push(*at.iter().max().unwrap());
            t.first.push(*at.iter().min().unwrap());
            let t1 = Instant::now();
            lab.heal(Host::Primary);
            if *fault == Fault::Kill {
                // the host's own services come back with it
                storage.start_agent(lab, Host::Primary);
                if let Some(e) = etcd.as_mut() {
                    e.restart(lab, Host::Primary);
                }
            }
            let back = until_all_mount(lab, &nodes, Host::Primary, t1);
            t.failback.push(*back.iter().max().unwrap());
            eprintln!(
                "bench-farm: {mode} {} run {run}/{runs}: failover {} ms (first node {} ms), failback {} ms",
                fault.as_str(),
                t.failover.last().unwrap().as_millis(),
                t.first.last().unwrap().as_millis(),
                t.failback.last().unwrap().as_millis()
            );
            settled(&nodes, &etcd);
        }
        out.insert(fault.as_str(), t);
    }
    // the next mode starts from nothing mounted (stopping `web` does not unmount)
    let mut nodes = nodes;
    for n in &mut nodes {
        n.kill9();
        n.place.sh(&format!("umount -l {} || true", Lab::WEB_MOUNT));
    }
    drop(nodes);
    drop(etcd);
    out
}

#[test]
#[ignore = "benchmark (minutes): run by scripts/bench-farm.sh"]
fn bench_farm_three_nodes_vs_one() {
    let runs: usize = env_or("BENCH_RUNS", "5").parse().expect("BENCH_RUNS: a number of runs");
    assert!(runs > 0, "BENCH_RUNS must be at least 1");
    let faults: Vec<Fault> =
        env_or("BENCH_FAULTS", "kill stop-nfs blackhole").split_whitespace().map(fault_named).collect();
    let modes: Vec<String> = env_or("BENCH_MODES", "single farm").split_whitespace().map(str::to_owned).collect();
    for m in &modes {
        assert!(m == "single" || m == "farm", "BENCH_MODES: {m:?} is neither single nor farm");
    }
    let lab = Lab::up_with("fb1", WebKind::Sshfs);
    let (w2, w3) = (ExtraHost::new(&lab, "w2", 6), ExtraHost::new(&lab, "w3", 7));
    eprintln!(
        "bench-farm: interval {}s, fall {FALL}, rise 2, hold_down 1s, lease_ttl 3s (farm), sshfs stand-in mounts; \
         {runs} runs per fault and mode",
        INTERVAL.as_secs()
    );
    let mut results = BTreeMap::new();
    for m in &modes {
        results.insert(m.clone(), bench_mode(&lab, m == "farm", [&w2, &w3], &faults, runs));
    }
    println!("== failover: fault -> every node's mount serves the backup (ms; nearest-rank p50/p99)");
    print_table(&results, &faults, |t| ms(&t.failover));
    println!("   first node to serve the backup:");
    print_table(&results, &faults, |t| ms(&t.first));
    println!("== failback: heal -> every node's mount serves the primary (ms; includes rise 2 x 1 s + hold_down 1 s)");
    print_table(&results, &faults, |t| ms(&t.failback));
}

fn print_table(
    results: &BTreeMap<String, BTreeMap<&str, Times>>,
    faults: &[Fault],
    pick: impl Fn(&Times) -> Vec<u128>,
) {
    for f in faults {
        let mut p50s = BTreeMap::new();
        for (mode, per_fault) in results {
            let v = pick(&per_fault[f.as_str()]);
            let (p50, p99, max) = stats(&v);
            p50s.insert(mode.as_str(), p50);
            println!("{:<10} {mode:<6} runs={:<3} p50={p50:>6}  p99={p99:>6}  max={max:>6}", f.as_str(), v.len());
        }
        if let (Some(s), Some(f3)) = (p50s.get("single"), p50s.get("farm")) {
            #[allow(clippy::cast_precision_loss)] // milliseconds of a benchmark
            let ratio = *f3 as f64 / (*s).max(1) as f64;
            println!("{:<10} farm/single (p50): {ratio:.2}", f.as_str());
        }
    }
}
