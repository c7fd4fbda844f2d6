#!/usr/bin/env bash
# Benchmark of the web farm (issue 12): failover and failback times of three web nodes agreeing
# through a real 3-member etcd (`[cluster]`) against one web node deciding alone (`[web.agents]`,
# no `[cluster]`), the same faults on the primary, in one run, in the lab.
#
#   sudo scripts/bench-farm.sh                                  # RUNS=5, kill stop-nfs blackhole
#   RUNS=10 FAULTS="stop-nfs blackhole" sudo scripts/bench-farm.sh
#   MODES=farm RUNS=2 sudo scripts/bench-farm.sh
#
# It is the ignored test `bench_farm_three_nodes_vs_one` of tests/farm_bench.rs (lab `fb1`, extra
# web hosts `w2`, `w3`), which holds what is measured and how. Per fault and mode it prints p50, p99
# (nearest rank) and max of: fault -> every node's mount serves the backup (and the first node),
# heal -> every node's mount serves the primary (failback, including rise 2 x 1 s and hold_down 1 s),
# and the ratio farm/single of the p50s. docs/bench-farm.md holds a recorded run.
#
# Cleanup: on exit, failure or Ctrl-C the benchmark process is killed by pid, then everything it may
# have left is removed by name: the processes in the lab's extra hosts' namespaces (web nodes,
# sshfs), those namespaces (their mounts and veths go with them), and the lab (`scripts/lab.sh down`:
# its hosts' processes, including etcd and the agents, namespaces, route and state dir).
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB=fb1                     # fixed: tests/farm_bench.rs names its lab and extra hosts
EXTRA_NS=("ngl-$LAB-w2" "ngl-$LAB-w3")
RUNS=${RUNS:-5}
FAULTS=${FAULTS:-"kill stop-nfs blackhole"}
MODES=${MODES:-"single farm"}
BENCH=

[[ $(id -u) == 0 ]] || { echo "bench-farm.sh: needs root (the lab uses namespaces)" >&2; exit 1; }
[[ -x /usr/bin/etcd ]] || { echo "bench-farm.sh: etcd is missing: run scripts/install-deps.sh" >&2; exit 1; }

cleanup() {
    local rc=$? ns p
    trap - EXIT INT TERM
    if [[ -n $BENCH ]] && kill -0 "$BENCH" 2>/dev/null; then
        kill -TERM "$BENCH" 2>/dev/null || true
        wait "$BENCH" 2>/dev/null || true
    fi
    for ns in "${EXTRA_NS[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns delete "$ns" 2>/dev/null || true
    done
    LAB=$LAB bash "$ROOT/scripts/lab.sh" down >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$ROOT"
# the test binary, built once; run directly so its pid is the benchmark's
exe=$(cargo test --locked --quiet --test farm_bench --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[[ -x $exe ]] || { echo "bench-farm.sh: could not build tests/farm_bench.rs" >&2; exit 1; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(load) at start"
echo "etcd: $(/usr/bin/etcd --version | head -1); runs=$RUNS faults=\"$FAULTS\" modes=\"$MODES\""
started=$(date +%s)
BENCH_RUNS=$RUNS BENCH_FAULTS=$FAULTS BENCH_MODES=$MODES \
    "$exe" --ignored --exact bench_farm_three_nodes_vs_one --nocapture --test-threads 1 &
BENCH=$!
wait "$BENCH"
BENCH=
echo "took $(( $(date +%s) - started )) s; load $(load) at the end"
