//! Property tests of the pure state machine: random event sequences (fastrand with fixed seeds, so every
//! run is the same) driven through a small simulation of the controller (every started effect reports
//! back once, aborted passes may still report late), checking after every step:
//! - the primary is never mounted while the backup holds writes it lacks, unless the operator forced it,
//!   the switch is the staged failback after a successful reverse sync, or those writes were recorded
//!   durably (a reconciliation, persisted before the mount action);
//! - every change of the served server comes with an alert;
//! - work in progress always has its effect running (nothing waits for a report that cannot come), and
//!   a pass the node has moved away from is aborted;
//! - from every reachable state, a healthy world (and an operator releasing holds) leads back to
//!   Serving(primary) with nothing pending;
//! - nothing panics, whatever the counters and clocks hold.

use super::*;

/// An effect the simulated controller is running, and how it can report.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Running {
    Mount(Server),
    Staged { to: Server, from: Option<Server> },
    Resync(u64),
    CatchUp(u64),
    Reconcile(u64),
}

impl Running {
    fn pass(&self) -> Option<u64> {
        match self {
            Running::Resync(p) | Running::CatchUp(p) | Running::Reconcile(p) => Some(*p),
            Running::Mount(_) | Running::Staged { .. } => None,
        }
    }

    fn report(&self, ok: bool) -> Event {
        let err = || "simulated failure".to_owned();
        match *self {
            Running::Mount(server) if ok => Event::MountSucceeded { server, old_mount: Some(1) },
            Running::Mount(server) => Event::MountFailed { server, error: err() },
            Running::Staged { to, .. } if ok => Event::StagedSwitchSucceeded { to, old_mount: Some(2) },
            Running::Staged { to, from } => Event::StagedSwitchFailed { to, error: err(), serving: from },
            Running::Resync(pass) if ok => Event::ReverseSyncSucceeded { pass, files: 1, bytes: 1, elapsed_ms: 1 },
            Running::Resync(pass) => Event::ReverseSyncFailed { pass, error: err() },
            Running::CatchUp(pass) => Event::CatchUpFinished { pass, result: if ok { Ok((1, 1)) } else { Err(err()) } },
            Running::Reconcile(pass) if ok => Event::ReconcileSucceeded { pass, files: 1, bytes: 1, elapsed_ms: 1 },
            Running::Reconcile(pass) => Event::ReconcileFailed { pass, error: err() },
        }
    }
}

#[derive(Debug, Clone)]
struct Sim {
    s: State,
    running: Vec<Running>,
    /// Reports of aborted passes that may still arrive.
    late: Vec<Event>,
    now: u64,
}

impl Sim {
    /// Applies one event, checks the step invariants, and starts/aborts the effects it asks for.
    fn apply(&mut self, ev: &Event, p: &Policy, rng: Option<&mut fastrand::Rng>) -> Result<(), String> {
        let prev = self.s.clone();
        let t = step(&prev, ev.clone(), p, self.now);
        let ctx = || format!("\n  from {prev:?}\n  event {ev:?}\n  to {:?}\n  actions {:?}", t.next, t.actions);
        check_primary_mount(&prev, ev, &t).map_err(|e| format!("{e}{}", ctx()))?;
        if prev.active() != t.next.active() && !t.actions.iter().any(|a| matches!(a, Action::Notify(_))) {
            return Err(format!("the served server changed without an alert{}", ctx()));
        }
        let mut rng = rng;
        for a in &t.actions {
            match *a {
                Action::Mount { server } => self.running.push(Running::Mount(server)),
                Action::StagedSwitch { to, .. } => self.running.push(Running::Staged { to, from: prev.active() }),
                Action::ReverseSync { pass, .. } => self.running.push(Running::Resync(pass)),
                Action::CatchUp { pass } => self.running.push(Running::CatchUp(pass)),
                Action::Reconcile { pass, .. } => self.running.push(Running::Reconcile(pass)),
                Action::AbortPass { pass } => {
                    let Some(i) = self.running.iter().position(|r| r.pass() == Some(pass)) else {
                        return Err(format!("abort of pass {pass}, which is not running{}", ctx()));
                    };
                    let r = self.running.remove(i);
                    if let Some(rng) = rng.as_deref_mut() {
                        if rng.bool() {
                            self.late.push(r.report(rng.bool()));
                        }
                    }
                }
                Action::AfterSwitch { .. } | Action::Notify(_) | Action::Persist => {}
            }
        }
        check_work_in_progress(&t.next, &self.running).map_err(|e| format!("{e}{}", ctx()))?;
        self.s = t.next;
        Ok(())
    }

    /// Removes and returns the report of running effect `i`.
    fn complete(&mut self, i: usize, ok: bool) -> Event {
        self.running.remove(i).report(ok)
    }
}

/// The primary is mounted only when nothing is owed to it, or what is owed is recorded durably first.
fn check_primary_mount(prev: &State, ev: &Event, t: &Transition) -> Result<(), String> {
    for (i, a) in t.actions.iter().enumerate() {
        if !matches!(a, Action::Mount { server: Server::Primary } | Action::StagedSwitch { to: Server::Primary, .. }) {
            continue;
        }
        let forced = t.next.hold == Hold::Pinned(Server::Primary);
        let nothing_owed = !prev.pending_reverse_sync;
        let staged_failback = matches!(prev.phase, Phase::Syncing { kind: SyncKind::ReverseSync, .. })
            && matches!(ev, Event::ReverseSyncSucceeded { .. })
            && t.next.pending_reverse_sync;
        let recorded = !t.next.pending_reverse_sync
            && t.next.reconcile_epoch.is_some()
            && t.actions[..i].contains(&Action::Persist);
        if !(forced || nothing_owed || staged_failback || recorded) {
            return Err("the primary is mounted while the backup's writes are owed to it and not recorded".into());
        }
    }
    Ok(())
}

/// Work in progress has its effect running: nothing waits for a report that cannot come. And no pass
/// runs that the phase does not wait for: a pass left behind was aborted.
fn check_work_in_progress(s: &State, running: &[Running]) -> Result<(), String> {
    if running.iter().filter_map(Running::pass).any(|p| Some(p) != s.running_pass()) {
        return Err("a pass left behind still runs (no AbortPass)".into());
    }
    let want = match s.phase {
        Phase::Unmounted | Phase::Serving { .. } => None,
        Phase::Mounting { to } => Some(Running::Mount(to)),
        Phase::Staging { to } => {
            return check(running.iter().any(|r| matches!(r, Running::Staged { to: t, .. } if *t == to)))
        }
        Phase::Syncing { kind: SyncKind::ReverseSync, .. } => Some(Running::Resync(s.pass)),
        Phase::CatchingUp => Some(Running::CatchUp(s.pass)),
        Phase::Syncing { kind: SyncKind::Reconcile, .. } => Some(Running::Reconcile(s.pass)),
    };
    check(want.is_none_or(|w| running.contains(&w)))
}

fn check(ok: bool) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err("work in progress without its effect running".into())
    }
}

fn policy(rng: &mut fastrand::Rng) -> Policy {
    Policy {
        hold_down_ms: rng.u64(0..30_000),
        failback: rng.u8(0..4) != 0,
        retry_initial_ms: rng.u64(1..5_000),
        retry_max_ms: rng.u64(5_000..60_000),
    }
}

/// What the probes see: each server flips between alive and dead now and then; the verdicts lag a bit
/// (Unknown, a failing check below `fall`).
struct Weather {
    primary: bool,
    backup: bool,
    witness: Option<bool>,
}

impl Weather {
    fn observe(&mut self, rng: &mut fastrand::Rng) -> Snapshot {
        for up in [&mut self.primary, &mut self.backup] {
            if rng.u8(0..8) == 0 {
                *up = !*up;
            }
        }
        if let Some(w) = &mut self.witness {
            *w = rng.u8(0..10) != 0;
        }
        let status = |rng: &mut fastrand::Rng, up: bool| match rng.u8(0..10) {
            0 => Status::Unknown,
            _ if up => Status::Up,
            _ => Status::Down,
        };
        let primary = status(rng, self.primary);
        let backup = status(rng, self.backup);
        Snapshot {
            status: PerServer { primary, backup },
            witness: self.witness.map(|w| if w { Status::Up } else { Status::Down }),
            error: PerServer { primary: Some("rpc timeout".into()), backup: None },
            failing: PerServer {
                primary: !self.primary || rng.u8(0..10) == 0,
                backup: !self.backup || rng.u8(0..10) == 0,
            },
            witness_failing: self.witness == Some(false),
        }
    }
}

fn healthy(witness: bool) -> Snapshot {
    Snapshot {
        status: PerServer { primary: Status::Up, backup: Status::Up },
        witness: witness.then_some(Status::Up),
        ..Snapshot::default()
    }
}

fn request(rng: &mut fastrand::Rng) -> Request {
    match rng.u8(0..4) {
        0 => Request::FailoverTo(Server::Primary),
        1 => Request::FailoverTo(Server::Backup),
        2 => Request::Hold,
        _ => Request::Release,
    }
}

/// Back at the start: serving the primary, nothing owed, automatic control. Without a reverse-sync
/// target the pending flag left by a forced move to the primary is the operator's record (nothing
/// automatic can clear it).
fn home(s: &State, p: &Policy) -> bool {
    s.phase == (Phase::Serving { server: Server::Primary })
        && (!s.pending_reverse_sync || !p.failback)
        && (s.reconcile_epoch.is_none() || !p.failback)
        && s.hold == Hold::None
}

/// Heals the world (both servers up, every effect succeeds, the operator releases holds and, without
/// a reverse-sync target, forces the way back) and requires the node to get home.
fn way_home(mut sim: Sim, p: &Policy, witness: bool) -> Result<(), String> {
    let start = sim.s.clone();
    sim.late.clear();
    for _ in 0..200 {
        if home(&sim.s, p) && sim.running.is_empty() {
            return Ok(());
        }
        let s = &sim.s;
        let ev = if !sim.running.is_empty() {
            sim.complete(0, true)
        } else if s.health != healthy(witness) {
            Event::HealthObserved(healthy(witness))
        } else if matches!(s.hold, Hold::Stay | Hold::Pinned(Server::Backup))
            || (s.hold == Hold::Pinned(Server::Primary) && s.active() == Some(Server::Primary))
        {
            Event::Requested(Request::Release)
        } else if !p.failback && s.active() == Some(Server::Backup) && s.hold == Hold::None {
            // without a reverse-sync target the operator copies by hand, then forces the way back
            Event::Requested(Request::FailoverTo(Server::Primary))
        } else {
            sim.now = sim.now.saturating_add(p.hold_down_ms.max(p.retry_max_ms).max(MOUNT_RETRY_MAX_MS));
            Event::Ticked
        };
        sim.apply(&ev, p, None)?;
    }
    Err(format!("no way home from {start:?}\n  stuck in {:?}", sim.s))
}

/// A random state a restart may resume from, counters anywhere in their range. The controller first
/// aligns it with the mount table (`Controller::reconcile`): only steady phases, the backup's writes
/// recorded when the primary is mounted, an epoch open when the backup is.
fn resumed(rng: &mut fastrand::Rng, p: &Policy) -> State {
    let mut s = random_state(rng, p);
    match s.phase {
        Phase::Serving { server: Server::Primary } => s.leave_backup_unsynced(p.failback),
        Phase::Serving { server: Server::Backup } => s.pending_reverse_sync = true,
        _ => {}
    }
    s
}

fn random_state(rng: &mut fastrand::Rng, p: &Policy) -> State {
    let any_time = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
        0 => None,
        1 => Some(u64::MAX),
        _ => Some(rng.u64(0..100_000)),
    };
    State {
        phase: match rng.u8(0..3) {
            0 => Phase::Unmounted,
            1 => Phase::Serving { server: Server::Primary },
            _ => Phase::Serving { server: Server::Backup },
        },
        epoch: if rng.bool() { u64::MAX - rng.u64(0..2) } else { rng.u64(0..5) },
        pending_reverse_sync: rng.bool(),
        reconcile_epoch: (p.failback && rng.bool()).then(|| rng.u64(..)),
        hold: match rng.u8(0..4) {
            0 => Hold::Stay,
            1 => Hold::Pinned(if rng.bool() { Server::Primary } else { Server::Backup }),
            _ => Hold::None,
        },
        health: Snapshot::default(),
        up_since: PerServer { primary: any_time(rng), backup: any_time(rng) },
        resync_failures: if rng.bool() { u32::MAX } else { rng.u32(0..4) },
        resync_not_before: any_time(rng),
        mount_failures: if rng.bool() { u32::MAX } else { rng.u32(0..4) },
        mount_not_before: any_time(rng),
        both_down_alerted: rng.bool(),
        network_lost_alerted: rng.bool(),
        recovered_alerted: rng.bool(),
        stranded_alerted: rng.bool(),
        pass: if rng.bool() { u64::MAX } else { rng.u64(0..3) },
    }
}

fn walk(seed: u64, steps: usize) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = policy(&mut rng);
    let witness = rng.bool();
    let s = if seed.is_multiple_of(2) { State::default() } else { resumed(&mut rng, &p) };
    let now = if rng.bool() { rng.u64(0..1_000) } else { u64::MAX - 10_000_000 };
    let mut sim = Sim { s, running: Vec::new(), late: Vec::new(), now };
    let mut weather = Weather { primary: true, backup: true, witness: witness.then_some(true) };
    for i in 0..steps {
        let ev = match rng.u8(0..20) {
            0..=6 => Event::HealthObserved(weather.observe(&mut rng)),
            7..=10 => {
                sim.now = sim.now.saturating_add(rng.u64(0..20_000));
                Event::Ticked
            }
            11..=16 if !sim.running.is_empty() => {
                let i = rng.usize(0..sim.running.len());
                let ok = rng.u8(0..4) != 0;
                sim.complete(i, ok)
            }
            17 if !sim.late.is_empty() => {
                let i = rng.usize(0..sim.late.len());
                sim.late.remove(i)
            }
            18 => Event::Requested(request(&mut rng)),
            _ => Event::Ticked,
        };
        sim.apply(&ev, &p, Some(&mut rng)).map_err(|e| format!("seed {seed}, step {i}: {e}"))?;
        if i % 5 == 0 {
            way_home(sim.clone(), &p, witness).map_err(|e| format!("seed {seed}, step {i}: {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn random_event_sequences_keep_every_invariant() {
    for seed in 0..1_500 {
        if let Err(e) = walk(seed, 200) {
            panic!("{e}");
        }
    }
}
