#!/usr/bin/env bash
# Benchmark of `nfs-guard storage` against lsyncd (Debian package), side by side in one run, pushing
# from the lab's `primary` host to the rsync daemon of its `backup` host (see scripts/lab.sh).
#
#   scripts/bench-storage.sh [SCENARIO...]      scenarios: a b c d e f (default: a b)
#
#   a  10,000 small files in 100 new directories: time until the remote equals the source
#   b  a trickle of 200 files 50 ms apart: latency from close() to visible at the remote (p50/p99)
#   c  one 1 GiB file
#   d  2,000 nested new directories with a file each
#   e  renaming 5,000 files (already replicated)
#   f  deleting a 5,000-file tree (already replicated)
#   m  start-up time and memory of nfs-guard watching 1,000,000 files in 100,000 directories, then
#      (g) 100 files changed in that tree: time until the remote has them
#   sN sustained writes: N new files per second (4-16 KiB each) for BENCH_SECS (30) seconds, all in one
#      directory; lag = time from each file's close() to the file complete on the remote (p50/p99/max,
#      and p50 of the first and last third: growing means the tool cannot keep up). E.g. s50 s200 s1000
#
#   BENCH_PREFILL=200000  the export (and the remote) already hold that many files in pre/ (100 per
#                         directory), created once per run; every scenario runs beside them
#   BENCH_TOOLS=a,b       only the tools whose names contain one of these
#   LAB_RSYNCD_NODELAY=0  the backup's rsync daemon without `socket options = TCP_NODELAY` (Nagle on,
#                         as in rsyncd.conf's default): every push with an io timeout waits 40 ms more
#   BENCH_TRACE=1         print (stderr) when each bulk act began and ended and when the trees were
#                         equal, in UTC, to read beside the tools' logs (RUST_LOG=nfs_guard=debug adds
#                         nfs-guard's "batch formed" and "push started" lines, with the planning time)
#
# Tools: nfs-guard with the default config and a tuned one, lsyncd's default.rsync with its default
# config (delay 15 s) and a tuned one (delay 0), and the recipe nfs-guard replaces ("recipe"):
# `inotifywait -mrq -e close_write,create,delete,moved_to,moved_from SRC | while read; do rsync -a
# --delete SRC/ rsync://backup/...; done` (inotify-tools). Floors measured in the same run: the time to write the
# files plus one plain `rsync -a` of the final tree (a, c, d, e, f), and one single-file push (b).
# Printed per tool and scenario: seconds until equal (or latency percentiles), CPU seconds of the tool
# and its children, and the number of rsync processes it spawned (counted by an rsync wrapper). A
# scenario named several times (`e f e f e f`) runs that many rounds, the tools in a rotated order each
# round, and a summary at the end gives each tool's median and, per peer, the median of the per-round
# ratios (first tool / peer) and in how many rounds the first tool was ahead.
# Needs root. Not a test: it prints figures; results with the command go to docs/bench-storage.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin:$HOME/.cargo/bin
[[ $(id -u) -eq 0 ]] || { echo "bench-storage.sh: needs root (lab namespaces)" >&2; exit 1; }
for c in lsyncd inotifywait; do
  command -v $c >/dev/null || { echo "bench-storage.sh: $c is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done

LAB_SH=${LAB_SH:-scripts/lab.sh}
export LAB=${BENCH_LAB:-bench}
# Storage data on a fresh journaled ext4 per host (see lab.sh): steady, like an NFS server's disk.
export LAB_DATA_FS=${LAB_DATA_FS:-ext4}
cargo build --release --quiet
BIN=$PWD/target/release/nfs-guard
"$LAB_SH" up >/dev/null
trap '"$LAB_SH" down >/dev/null 2>&1 || true' EXIT
eval "$("$LAB_SH" env)"
export BIN LAB_SH LAB_PRIMARY_DATA LAB_BACKUP_DATA LAB_BACKUP_IP LAB_RSYNC_PASS LAB_RSYNC_USER LAB_EXPORT
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)," \
     "$(rsync --version | head -1 | cut -c1-30), lsyncd $(lsyncd --version 2>&1 | awk '/Version/ {print $2}')"
/usr/bin/python3 - "$@" <<'PY'
import os, random, shutil, signal, subprocess, sys, threading, time, json, statistics

BIN = os.environ["BIN"]; LAB_SH = os.environ["LAB_SH"]
P = os.environ["LAB_PRIMARY_DATA"]; B = os.environ["LAB_BACKUP_DATA"]
IP = os.environ["LAB_BACKUP_IP"]; PASS = os.environ["LAB_RSYNC_PASS"]; USER = os.environ["LAB_RSYNC_USER"]
EXPORT = os.environ["LAB_EXPORT"]
W = "/var/tmp/nfsguard-bench"
shutil.rmtree(W, ignore_errors=True); os.makedirs(W)
COUNT = W + "/rsync-count"
WRAP = W + "/rsync"
with open(WRAP, "w") as f:
    f.write(f"#!/bin/sh\nprintf . >> {COUNT}\nexec /usr/bin/rsync \"$@\"\n")
os.chmod(WRAP, 0o755)
URL = f"rsync://{USER}@{IP}/data/"
scenarios = sys.argv[1:] or ["a", "b"]

def in_primary(argv, **kw):
    return subprocess.Popen([LAB_SH, "exec", "primary"] + argv, **kw)

PREFILL = int(os.environ.get("BENCH_PREFILL", "0"))
# Every tool's start-up sync reads the prefilled tree: give it time (about 1 s per 5,000 files here).
START_TIMEOUT = 60 + PREFILL // 2000

def clean(d):
    # Entries may still vanish underneath us (a stopped tool's last rsync): tolerate that, then check.
    # The prefilled tree (BENCH_PREFILL) stays.
    for e in os.scandir(d):
        if PREFILL and e.name == "pre": continue
        if e.is_dir(follow_symlinks=False): shutil.rmtree(e.path, ignore_errors=True)
        else:
            try: os.unlink(e.path)
            except FileNotFoundError: pass
    assert set(os.listdir(d)) <= {"pre"} if PREFILL else not os.listdir(d), f"cannot empty {d}"
    # Flush the deletions now, so their writeback does not land in the middle of the next measurement.
    os.sync()

def files_under(d):
    # The prefilled tree never changes during a scenario: not counted, not compared.
    n = 0
    for root, dirs, files in os.walk(d):
        if PREFILL and root == d and "pre" in dirs: dirs.remove("pre")
        n += len(files)
    return n

def same(src, dst):
    out = subprocess.run(["rsync", "-a", "-n", "-i", "--delete"] + (["--exclude=/pre/"] if PREFILL else [])
                         + [src + "/", dst + "/"], capture_output=True, text=True)
    return [l for l in out.stdout.splitlines() if not l.endswith(" ./")]

def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        t = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
        return t / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")

def group_cpu(pgid):
    # A pipeline's processes (and the children they reaped): its rsyncs are not the leader's children.
    t = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            if int(f[2]) == pgid: t += sum(int(x) for x in f[11:15])
        except (OSError, ValueError, IndexError): pass
    return t / os.sysconf("SC_CLK_TCK")

def tool_cpu(tool):
    return group_cpu(tool.p.pid) if isinstance(tool, Recipe) else cpu(tool.p.pid)

def rsync_count():
    try: return os.path.getsize(COUNT)
    except OSError: return 0

def plain_rsync(src_rel="", delete=False):
    t = time.monotonic()
    subprocess.run([LAB_SH, "exec", "primary", "rsync", "-a"] + (["--delete"] if delete else [])
                   + [f"--password-file={PASS}", EXPORT + "/" + src_rel, URL], check=True)
    return time.monotonic() - t

# ---- tools
def ng_config(name, extra):
    d = f"{W}/{name}"; os.makedirs(d, exist_ok=True)
    cfg = f"{d}/n.toml"
    with open(cfg, "w") as f:
        f.write(f'state_dir = "{d}/state"\n[storage]\nrsync = "{WRAP}"\n{extra}\n'
                f'[[storage.trees]]\npath = "{EXPORT}"\n'
                f'[[storage.remotes]]\nname = "backup"\nhost = "{IP}"\nmodule = "data"\nuser = "{USER}"\n'
                f'password_file = "{PASS}"\n')
    return cfg

class NfsGuard:
    def __init__(self, name, extra):
        self.name = name; self.cfg = ng_config(name, extra); self.dir = f"{W}/{name}"
        self.push_at_start = "at_start = false" not in extra
    def start(self, tag="", timeout=60):
        shutil.rmtree(self.dir + "/state", ignore_errors=True)
        self.log = open(f"{self.dir}/log{tag}", "w")
        self.p = in_primary([BIN, "--config", self.cfg, "storage"], stdout=self.log, stderr=self.log)
        st = self.dir + "/state/storage.status.json"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                r = json.load(open(st))["remotes"][0]
                if r["state"] == "idle" and (r["last_success"] or not self.push_at_start) \
                        and not r["full_sync_pending"]: return
            except (OSError, ValueError, KeyError): pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not become ready")
    def stop(self):
        self.p.send_signal(signal.SIGTERM); self.p.wait(30)

LSYNCD = """settings {{ logfile = "{d}/log", statusFile = "{d}/status", nodaemon = true, insist = true }}
sync {{ default.rsync, source = "{src}", target = "{target}", delay = {delay},
  rsync = {{ binary = "{wrap}", password_file = "{pw}", archive = true, compress = false {extra} }} }}
"""

class Lsyncd:
    def __init__(self, name, delay, extra=""):
        self.name = name; self.dir = f"{W}/{name}"; os.makedirs(self.dir, exist_ok=True)
        self.cfg = self.dir + "/lsyncd.lua"
        with open(self.cfg, "w") as f:
            f.write(LSYNCD.format(d=self.dir, src=EXPORT, target=f"{USER}@{IP}::data", delay=delay, wrap=WRAP,
                                  pw=PASS, extra=extra))
    def start(self, tag="", timeout=60):
        try: os.unlink(self.dir + "/log")
        except OSError: pass
        self.p = in_primary(["lsyncd", self.cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if "finished" in open(self.dir + "/log").read(): return
            except OSError: pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not become ready")
    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try: self.p.wait(30)
        except subprocess.TimeoutExpired: self.p.kill(); self.p.wait()

def watches_of_group(pgid):
    # inotify watches held by the processes of one process group (inotifywait's, once established).
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[2]) != pgid: continue
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                n += sum(1 for l in open(f"/proc/{pid}/fdinfo/{fd}") if l.startswith("inotify wd:"))
        except (OSError, ValueError, IndexError): pass
    return n

class Recipe:
    """The shell recipe nfs-guard replaces: one whole-tree rsync per inotify event line."""
    def __init__(self, name):
        self.name = name; self.dir = f"{W}/{name}"; os.makedirs(self.dir, exist_ok=True)
        rs = f"{WRAP} -a --delete --password-file={PASS} {EXPORT}/ {URL}"
        self.script = (f"{rs}; inotifywait -mrq -e close_write,create,delete,moved_to,moved_from {EXPORT} "
                       f"| while read -r _; do {rs}; done")
    def start(self, tag="", timeout=60):
        self.log = open(f"{self.dir}/log{tag}", "w")
        self.p = in_primary(["bash", "-c", self.script], stdout=self.log, stderr=self.log, start_new_session=True)
        dirs = sum(1 for _ in os.walk(P))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if watches_of_group(self.p.pid) >= dirs: return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not become ready")
    def stop(self):
        # Its backlog of event lines would keep it running for minutes: the whole group goes.
        try: os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: self.p.wait(30)
        except subprocess.TimeoutExpired: os.killpg(self.p.pid, signal.SIGKILL); self.p.wait()
        end = time.monotonic() + 30
        while watches_of_group(self.p.pid) and time.monotonic() < end: time.sleep(0.05)

tools = [
    NfsGuard("nfs-guard-default", ""),
    NfsGuard("nfs-guard-tuned", 'window = "5ms"\nmax_delay = "250ms"\nrsync_args = ["-a", "--numeric-ids", "--whole-file"]'),
    Lsyncd("lsyncd-default", 15),
    Lsyncd("lsyncd-tuned", 0, ', whole_file = true'),
    Recipe("recipe"),
]

if os.environ.get("BENCH_TOOLS"):
    tools = [t for t in tools if any(o in t.name for o in os.environ["BENCH_TOOLS"].split(","))]

# ---- scenarios: prepare(P) before the tool starts, act(P) -> (t_start, t_written), done() -> bool
def write_tree(root, dirs, per_dir, size=64, nested=False):
    for d in range(dirs):
        dd = os.path.join(root, *(f"n{i}" for i in range(d + 1))) if nested else os.path.join(root, f"d{d:03}")
        os.makedirs(dd, exist_ok=True)
        for i in range(per_dir):
            with open(os.path.join(dd, f"f{i:05}"), "wb") as f: f.write(os.urandom(size))

def sc_a_act():
    write_tree(P + "/a", 100, 100)
def sc_c_act():
    with open(P + "/big", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(1024): f.write(chunk)
def sc_d_act():
    # 2,000 nested directories: 40 chains of 50 levels, one file in each directory.
    for c in range(40):
        d = P + f"/d/c{c:02}"
        for lvl in range(50):
            d = os.path.join(d, f"l{lvl:02}")
            os.makedirs(d)
            with open(d + "/f", "wb") as f: f.write(b"x")
def sc_e_prepare():
    write_tree(P + "/e", 50, 100)
def sc_e_act():
    for root, _, files in os.walk(P + "/e"):
        for n in files: os.rename(os.path.join(root, n), os.path.join(root, "r" + n))
def sc_f_prepare():
    write_tree(P + "/f", 50, 100)
def sc_f_act():
    shutil.rmtree(P + "/f")

SCEN = {
    "a": ("10,000 small files in 100 new dirs", None, sc_a_act),
    "c": ("one 1 GiB file", None, sc_c_act),
    "d": ("2,000 nested new dirs with a file each", None, sc_d_act),
    "e": ("rename 5,000 files", sc_e_prepare, sc_e_act),
    "f": ("delete a 5,000-file tree", sc_f_prepare, sc_f_act),
}

def until_equal(deadline_s=600):
    # Cheap poll on file counts first, then an exact rsync comparison.
    want = files_under(P)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if files_under(B) == want and not same(P, B):
            return time.monotonic()
        time.sleep(0.02)
    return float("nan")

# (scenario, tool) -> figures of each round, for the summary: bulk seconds, or lag/latency p99.
results = {}
rounds = {}
def record(key, tool, value):
    results.setdefault(key, {}).setdefault(tool, []).append(value)
def rotated(key):
    # The tools in a different order each round of a scenario (no tool always runs right after the floor).
    k = rounds.get(key, 0); rounds[key] = k + 1
    k %= len(tools)
    return tools[k:] + tools[:k]
def trace(msg):
    # BENCH_TRACE=1: when each act began and ended and the trees were equal (UTC, to read beside the
    # tools' logs, which RUST_LOG=nfs_guard=debug makes detailed).
    if os.environ.get("BENCH_TRACE"):
        now = time.time(); mono = time.monotonic()
        print(f"trace {time.strftime('%H:%M:%S', time.gmtime(now))}.{int(now % 1 * 1000):03} mono {mono:.3f} {msg}",
              file=sys.stderr, flush=True)
def row(*cols): print("  ".join(str(c).ljust(w) for c, w in zip(cols, (20, 38, 12, 10, 9, 9, 12))), flush=True)

def run_bulk(key):
    title, prepare, act = SCEN[key]
    def reset():
        # Both sides empty, then (e, f) the tree to rename or delete, replicated.
        clean(P); clean(B)
        if prepare:
            prepare(); plain_rsync(); os.sync()
    def measure_floor():
        reset()
        # Floor: write, then one plain rsync of the final tree (with --delete for renames/deletes).
        t0 = time.monotonic(); act(); tw = time.monotonic() - t0
        return tw, plain_rsync(delete=key in "ef")
    # Twice, keeping the second: like every tool's run, it then starts right after the previous run's
    # tree was deleted (filesystems differ in what that costs; see docs/bench-storage.md).
    measure_floor(); tw, tr = measure_floor()
    floor = tw + tr
    row(f"({key}) floor", title, f"{floor:.2f}s", f"(write {tw:.2f}s + rsync {tr:.2f}s)", "", "")
    record(f"({key}) {title}", "floor", floor)
    for tool in rotated(key):
        reset()
        tool.start(f"-{key}", timeout=START_TIMEOUT)
        open(COUNT, "w").close()
        c0 = tool_cpu(tool)
        t0 = time.monotonic(); act()
        trace(f"({key}) {tool.name}: act {t0:.3f}-{time.monotonic():.3f}")
        t1 = until_equal()
        trace(f"({key}) {tool.name}: equal {t1:.3f}")
        el = t1 - t0
        c1 = tool_cpu(tool); n = rsync_count()
        tool.stop()
        row(f"({key}) {tool.name}", title, f"{el:.2f}s", f"{el / floor:.2f}x floor", f"cpu {c1 - c0:.2f}s", f"rsync {n}")
        record(f"({key}) {title}", tool.name, el)

def run_trickle():
    clean(P); clean(B)
    os.makedirs(P + "/t"); plain_rsync()
    lat = []
    for i in range(20):
        fn = P + f"/t/floor{i}"
        with open(fn, "wb") as f: f.write(b"x" * 100)
        lat.append(plain_rsync(f"t/floor{i}"))
    lat.sort()
    fp50, fp99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1 if len(lat) < 100 else int(len(lat) * 0.99)]
    row("(b) floor", "single-file push", f"p50 {fp50*1000:.0f}ms", f"p99 {max(lat)*1000:.0f}ms", "", "")
    for tool in rotated("b"):
        clean(P); clean(B); os.makedirs(P + "/t"); plain_rsync()
        tool.start("-b", timeout=START_TIMEOUT)
        open(COUNT, "w").close()
        c0 = tool_cpu(tool)
        closed = [0.0] * 200; seen = [None] * 200
        stop = threading.Event()
        def poll():
            nxt = 0
            while not stop.is_set() and nxt < 200:
                for i in range(nxt, 200):
                    if seen[i] is None and closed[i] and os.path.exists(B + f"/t/f{i:03}"):
                        seen[i] = time.monotonic()
                while nxt < 200 and seen[nxt] is not None: nxt += 1
                time.sleep(0.001)
        th = threading.Thread(target=poll); th.start()
        start = time.monotonic()
        for i in range(200):
            target = start + i * 0.05
            d = target - time.monotonic()
            if d > 0: time.sleep(d)
            with open(P + f"/t/f{i:03}", "wb") as f: f.write(b"y" * 100)
            closed[i] = time.monotonic()
        end = time.monotonic() + 60
        while any(s is None for s in seen) and time.monotonic() < end: time.sleep(0.01)
        stop.set(); th.join()
        c1 = tool_cpu(tool); n = rsync_count()
        tool.stop()
        ls = sorted((s - c) for s, c in zip(seen, closed) if s is not None)
        missing = sum(1 for s in seen if s is None)
        p50 = statistics.median(ls) if ls else float("nan"); p99 = ls[int(len(ls) * 0.99) - 1] if ls else float("nan")
        row(f"(b) {tool.name}", "trickle 200 files 50ms apart", f"p50 {p50*1000:.0f}ms", f"p99 {p99*1000:.0f}ms",
            f"cpu {c1 - c0:.2f}s", f"rsync {n}" + (f" MISSING {missing}" if missing else ""))
        record("(b) trickle, latency p99", tool.name, p99 if not missing else float("inf"))

def pct(xs, q):
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")

def run_rate(rate, secs=float(os.environ.get("BENCH_SECS", "30"))):
    n = int(rate * secs)
    blob = os.urandom(1 << 20)
    rnd = random.Random(rate)
    sizes = [rnd.randint(4096, 16384) for _ in range(n)]
    for tool in rotated(f"s{rate}"):
        clean(P); clean(B); os.makedirs(P + "/s"); plain_rsync()
        tool.start(f"-s{rate}", timeout=START_TIMEOUT)
        open(COUNT, "w").close()
        c0 = tool_cpu(tool)
        closed = [0.0] * n; seen = [None] * n
        written = [0]  # files closed so far (the poller looks at those only)
        stop = threading.Event()
        def poll():
            lo = 0
            while not stop.is_set() and lo < n:
                for i in range(lo, written[0]):
                    if seen[i] is None and os.path.exists(B + f"/s/f{i:06}"):
                        seen[i] = time.monotonic()
                while lo < n and seen[lo] is not None: lo += 1
                time.sleep(0.001)
        th = threading.Thread(target=poll); th.start()
        start = time.monotonic()
        for i in range(n):
            d = start + i / rate - time.monotonic()
            if d > 0: time.sleep(d)
            off = (i * 4099) % ((1 << 20) - 16384)
            with open(P + f"/s/f{i:06}", "wb") as f: f.write(blob[off:off + sizes[i]])
            closed[i] = time.monotonic(); written[0] = i + 1
        took = time.monotonic() - start
        end = time.monotonic() + 60
        while any(s is None for s in seen) and time.monotonic() < end: time.sleep(0.01)
        stop.set(); th.join()
        c1 = tool_cpu(tool); nr = rsync_count()
        tool.stop()
        lag = [(s - c) if s is not None else float("inf") for s, c in zip(seen, closed)]
        third = n // 3
        early, late = sorted(lag[:third]), sorted(lag[-third:])
        ls = sorted(lag); missing = sum(1 for s in seen if s is None)
        ms = lambda x: f"{x*1000:.0f}ms"
        row(f"(s{rate}) {tool.name}", f"{n / took:.0f} files/s for {took:.0f}s, lag", f"p50 {ms(pct(ls, .5))}",
            f"p99 {ms(pct(ls, .99))}", f"max {ms(ls[-1])}", f"cpu {c1 - c0:.2f}s",
            f"rsync {nr}  p50 first/last third {ms(pct(early, .5))}/{ms(pct(late, .5))}"
            + (f"  MISSING {missing} after 60s" if missing else ""))
        record(f"(s{rate}) {rate} files/s, lag p99", tool.name, pct(ls, .99))

def rss_mib(pid):
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024

def run_big():
    clean(P); clean(B)
    t = time.monotonic()
    for d in range(100_000):
        dd = P + f"/big/{d // 1000:03}/{d % 1000:03}"
        os.makedirs(dd)
        for i in range(10):
            with open(f"{dd}/f{i}", "wb") as f: f.write(b"x")
    os.sync()
    row("(m) setup", "1,000,000 files in 100,000 dirs", f"{time.monotonic() - t:.0f}s to create", "", "", "")
    row("(m) floor", "plain rsync -a of that tree", f"{plain_rsync():.1f}s", "", "", "")
    tool = NfsGuard("nfs-guard-big", "[storage.full_sync]\nat_start = false")
    t0 = time.monotonic(); tool.start("-m"); ready = time.monotonic() - t0
    row("(m) nfs-guard", "start-up until watching + idle", f"{ready:.1f}s", f"RSS {rss_mib(tool.p.pid):.0f} MiB", "", "")
    g = change_100(tool, "nfs-guard")
    row("(m) nfs-guard", "memory after the changes", f"RSS {rss_mib(tool.p.pid):.0f} MiB", "", "", "")
    tool.stop()
    row("(g) nfs-guard-big", "100 files changed among 1,000,000", *g)
    # (g) for every tool with its own start-up (each runs a full sync of the tree first).
    for t in tools:
        t0 = time.monotonic(); t.start("-g", timeout=1800); ready = time.monotonic() - t0
        row(f"(g) {t.name}", "100 files changed among 1,000,000", *change_100(t, t.name),
            f"start-up {ready:.0f}s")
        t.stop()
    clean(P); clean(B)

def change_100(tool, tag):
    # Writes 100 files (one per directory) with new content; seconds until the remote has them all.
    open(COUNT, "w").close()
    data = f"changed by {tag}".encode()
    c0 = tool_cpu(tool); t0 = time.monotonic()
    for i in range(100):
        with open(P + f"/big/{i:03}/{i:03}/f0", "wb") as f: f.write(data)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if all(open(B + f"/big/{i:03}/{i:03}/f0", "rb").read() == data for i in range(100)): break
        time.sleep(0.01)
    el = time.monotonic() - t0
    return f"{el:.2f}s", "", f"cpu {tool_cpu(tool) - c0:.2f}s", f"rsync {rsync_count()}"

def prefill():
    # BENCH_PREFILL files in pre/ (100 per directory), replicated: the export is no longer small.
    if not PREFILL: return
    t = time.monotonic()
    for root in (P, B): clean(root)
    if not os.path.isdir(P + "/pre") or files_under(P + "/pre") != PREFILL:
        shutil.rmtree(P + "/pre", ignore_errors=True)
        for i in range(PREFILL):
            if i % 100 == 0: os.makedirs(P + f"/pre/{i // 100:05}")
            with open(P + f"/pre/{i // 100:05}/f{i % 100:02}", "wb") as f: f.write(b"p" * 100)
    plain_rsync(delete=True); os.sync()
    row("prefill", f"{PREFILL} files in pre/, replicated", f"{time.monotonic() - t:.0f}s", "", "", "")

row("scenario/tool", "what", "result", "", "", "")
prefill()
for s in scenarios:
    if s.startswith("s") and s[1:].isdigit(): run_rate(int(s[1:]))
    elif s == "b": run_trickle()
    elif s == "m": run_big()
    elif s in SCEN: run_bulk(s)
    else: print(f"unknown scenario {s}", file=sys.stderr)
def summary():
    # Only scenarios that ran more than one round; the first tool (in BENCH_TOOLS order) against each peer.
    if not any(len(v) > 1 for by in results.values() for v in by.values()): return
    print("summary: median over the rounds; 'vs' = median of the per-round ratios first tool / peer, "
          "and the rounds in which the first tool was ahead", flush=True)
    fmt = lambda x: f"{x:.2f}s" if x < 30 else "inf"
    for key, by in results.items():
        names = [t.name for t in tools if t.name in by]
        if not names: continue
        first = by[names[0]]
        cols = [f"{n} {fmt(statistics.median(v))}" for n, v in by.items()]
        vs = []
        for peer in names[1:]:
            pairs = list(zip(first, by[peer]))
            ahead = sum(1 for a, b in pairs if a < b)
            vs.append(f"vs {peer} {statistics.median(a / b for a, b in pairs):.2f} ahead {ahead}/{len(pairs)}")
        print(f"  {key} ({len(first)} rounds): " + ", ".join(cols) + ("; " + ", ".join(vs) if vs else ""), flush=True)

summary()
if os.environ.get("BENCH_IDLE", "1") == "1":
  # Idle CPU: nfs-guard watching the (now populated) tree for 10 s with no changes.
  t = tools[0]; t.start(); c0 = cpu(t.p.pid); time.sleep(10); c1 = cpu(t.p.pid); t.stop()
  row("idle", "nfs-guard, 10 s without changes", f"cpu {c1 - c0:.3f}s", "", "", "")
PY
