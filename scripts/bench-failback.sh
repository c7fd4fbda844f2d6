#!/usr/bin/env bash
# Benchmark of failback cost against the size of the export: the storage agents' drain (O(changes))
# next to the web role's reverse sync (O(tree)), side by side in one run, in the lab.
#
#   sudo scripts/bench-failback.sh                          # 10,000 and 1,000,000 files, 100 changes
#   FILES_LIST="10000 100000" MODES=agents sudo scripts/bench-failback.sh
#
# Per export size N (files in directories of 1,000, the same on both servers) and per mode:
#   agents        `nfs-guard storage` as an agent on both storage hosts, `nfs-guard web` with [web.agents]
#   reverse-sync  `nfs-guard storage` on the primary only, `nfs-guard web` with [web.reverse_sync]
# the primary is cut off (blackhole), CHANGES changes are made through the web host's mount of the
# backup (half creates, a quarter deletes, a quarter renames), the primary is healed, and we measure:
#   heal -> serving:  from `lab.sh heal` to the web host's mountinfo showing the primary (includes
#                     rise 3 x 1 s and hold_down 1 s, and the client's reconnect)
#   failback:         from the web node's "to=Resyncing" (rise and hold-down over) to its switch
#                     ("to=CatchingUp"), from its own log
#   replayed:         deleted paths absent on the primary / renamed paths absent under the old name
# A reverse sync longer than LEGACY_MAX seconds (default 900) is reported as a lower bound.
# LAB_WEB (default uml: Linux's NFS client; sshfs: the stand-in). Storage data on a journaled ext4
# (LAB_DATA_FS=ext4, LAB_DATA_SIZE default 16G). Figures go to stdout; docs/bench-failback.md holds a run.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LAB=${LAB:-fbnch}
export LAB_WEB=${LAB_WEB:-uml}
export LAB_DATA_FS=${LAB_DATA_FS:-ext4}
export LAB_DATA_SIZE=${LAB_DATA_SIZE:-16G}
FILES_LIST=${FILES_LIST:-"10000 1000000"}
CHANGES=${CHANGES:-100}
MODES=${MODES:-"agents reverse-sync"}
LEGACY_MAX=${LEGACY_MAX:-900}
OPTIONS=${OPTIONS:-vers=3,hard,timeo=50,retrans=2}
BIN=${BIN:-$ROOT/target/release/nfs-guard}
LABSH="$ROOT/scripts/lab.sh"
PIDS=()
WORK=

[[ $(id -u) == 0 ]] || { echo "bench-failback.sh: needs root (the lab uses namespaces)" >&2; exit 1; }
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --quiet)

stop_daemons() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop_daemons
    bash "$LABSH" down >/dev/null 2>&1 || true
    [[ -z $WORK ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=lab/bench-web.sh
source "$ROOT/scripts/lab/bench-web.sh"

lab up
eval "$(lab env)"
P=$LAB_PRIMARY_IP B=$LAB_BACKUP_IP
bench_web_init
WORK=$(mktemp -d "$LAB_STATE/bench.XXXXXX")
SECRET=$WORK/agent.secret
head -c 24 /dev/urandom | base64 >"$SECRET"
chmod 600 "$SECRET"
# Run in host $1 (exec: started with `&`, $! is the command itself, so stop_daemons stops it).
in_host() { local h=$1; shift; exec nsenter -t "$(cut -d' ' -f1 "$LAB_RUN/$h/holder.pid")" -m -n -- "$@"; }

settled() { # the web node serves the primary with nothing owed (its status, as JSON)
    "$BIN" --config "$RUN/web.toml" status --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin).get("web") or {}
sys.exit(0 if s.get("active") == "primary" and s.get("pending_reverse_sync") is False and "serving" in json.dumps(s.get("phase")) else 1)'
}
wait_settled() { # SECONDS: serving the primary, nothing owed
    local end=$(( $(now_ms) + $1 * 1000 ))
    until [[ $(mount_src) == "$P:/srv/nfs" ]] && settled; do
        (( $(now_ms) < end )) || return 1
        sleep 0.1
    done
}

# N files in directories of 1,000 under tree/, written on the primary, copied to the backup.
populate() {
    local n=$1
    rm -rf "$LAB_PRIMARY_DATA/tree" "$LAB_BACKUP_DATA/tree"
    /usr/bin/python3 - "$LAB_PRIMARY_DATA/tree" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%07d" % i), "w") as f:
        f.write("file %d\n" % i)
PY
    rsync -a "$LAB_PRIMARY_DATA/tree" "$LAB_BACKUP_DATA/"
}

storage_toml() { # HOST PEER_IP AGENT(yes|no) -> config on stdout
    local me=$1 peer_ip=$2 agent=$3 peer
    peer=$([[ $me == primary ]] && echo backup || echo primary)
    cat <<EOF
state_dir = "$RUN/$me-state"
[storage]
[storage.full_sync]
at_start = false
EOF
    [[ $agent == yes ]] && cat <<EOF
[storage.agent]
server = "$me"
listen = "$([[ $me == primary ]] && echo "$P" || echo "$B"):7451"
secret_file = "$SECRET"
peer = "$peer"
peer_api = "http://$peer_ip:7451"
EOF
    cat <<EOF
[[storage.trees]]
path = "/srv/nfs"
[[storage.remotes]]
name = "$peer"
host = "$peer_ip"
module = "$LAB_RSYNC_MODULE"
user = "$LAB_RSYNC_USER"
password_file = "$LAB_RSYNC_PASS"
connect_timeout = "2s"
io_timeout = "30s"
EOF
}

web_toml() { # MODE
    cat <<EOF
state_dir = "$RUN/web-state"
[web]
mount_point = "/mnt/nfs"
fstype = "nfs"
options = "$OPTIONS"
interval = "1s"
fall = 3
rise = 3
probe_timeout = "800ms"
mount_timeout = "10s"
hold_down = "1s"
[web.primary]
address = "$P"
export = "/srv/nfs"
[web.backup]
address = "$B"
export = "/srv/nfs"
EOF
    if [[ $1 == agents ]]; then
        cat <<EOF
[web.agents]
primary = "http://$P:7451"
backup = "http://$B:7451"
secret_file = "$SECRET"
drain_timeout = "30m"
EOF
    else
        cat <<EOF
[web.reverse_sync]
retry_initial = "1s"
retry_max = "2s"
timeout = "${LEGACY_MAX}s"
[web.reverse_sync.target]
host = "$P"
module = "$LAB_RSYNC_MODULE"
user = "$LAB_RSYNC_USER"
password_file = "$LAB_RSYNC_PASS"
connect_timeout = "2s"
io_timeout = "60s"
EOF
    fi
}

# The changes, through the web host's mount of the backup: creates, deletes, renames of tree files.
# Run number `off` (0, 1, ...) works on files of its own, so runs on one tree never collide.
make_changes() {
    local c=$1 n=$2 off=$3 script="set -e; cd /mnt/nfs/tree; mkdir -p new"
    local i k
    for ((i = 0; i < c / 2; i++)); do script+="; echo new$i > new/n$off-$i"; done
    for ((i = 0; i < c / 4; i++)); do script+="; rm d0000/f$(printf %07d $((off * c / 4 + i)))"; done
    for ((i = 0; i < c / 4; i++)); do
        k=$(( n - 1 - off * c / 4 - i ))
        script+="; mv d$(printf %04d $((k / 1000)))/f$(printf %07d "$k") d0000/renamed$off-$i"
    done
    script+="; sync"
    "${WEB[@]}" sh -c "$script"
}

# ms between the first log line matching A and the first later one matching B in the web log
log_gap() {
    /usr/bin/python3 - "$RUN/web.log" "$1" "$2" <<'PY'
import re, sys, datetime
path, a, b = sys.argv[1:4]
t = lambda l: datetime.datetime.strptime(l[:26], "%Y-%m-%dT%H:%M:%S.%f")
start = None
for line in open(path, errors="replace"):
    if start is None and a in line:
        start = t(line)
    elif start is not None and b in line:
        print(int((t(line) - start).total_seconds() * 1000)); break
else:
    print("-")
PY
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), web=$LAB_WEB -o $OPTIONS, data=$LAB_DATA_FS"
printf '%-9s %-13s %-8s %-16s %-14s %s\n' files mode changes "heal->serving" failback replayed
for n in $FILES_LIST; do
    populate "$n"
    off=0
    for mode in $MODES; do
        # a directory per run: a daemon of the previous run may still be on its way out
        RUN=$WORK/run-$n-$mode
        mkdir -p "$RUN"
        web_toml "$mode" >"$RUN/web.toml"
        storage_toml primary "$B" "$([[ $mode == agents ]] && echo yes || echo no)" >"$RUN/primary.toml"
        in_host primary "$BIN" --config "$RUN/primary.toml" storage >"$RUN/primary.log" 2>&1 &
        PIDS+=($!)
        if [[ $mode == agents ]]; then
            storage_toml backup "$P" yes >"$RUN/backup.toml"
            in_host backup "$BIN" --config "$RUN/backup.toml" storage >"$RUN/backup.log" 2>&1 &
            PIDS+=($!)
        fi
        "${WEB[@]}" "$BIN" --config "$RUN/web.toml" --log-format human web >"$RUN/web.log" 2>&1 &
        PIDS+=($!)
        wait_settled 120 || { echo "$mode: not serving the primary" >&2; tail -20 "$RUN/web.log" >&2; exit 1; }
        lab fault primary blackhole
        wait_src "$B:/srv/nfs" 60 || { echo "$mode: no failover" >&2; tail -20 "$RUN/web.log" >&2; exit 1; }
        make_changes "$CHANGES" "$n" "$off"
        t0=$(now_ms)
        lab heal primary
        if wait_src "$P:/srv/nfs" $(( LEGACY_MAX + 120 )); then
            heal=$(( $(now_ms) - t0 ))
            wait_settled 120 || true
            fb=$(log_gap "to=Resyncing" "to=CatchingUp")
        else
            heal=">$(( LEGACY_MAX + 120 ))000" fb="> ${LEGACY_MAX}000"
        fi
        gone=0 moved=0
        for ((i = 0; i < CHANGES / 4; i++)); do
            [[ -e $LAB_PRIMARY_DATA/tree/d0000/f$(printf %07d $((off * CHANGES / 4 + i))) ]] || gone=$((gone + 1))
            k=$(( n - 1 - off * CHANGES / 4 - i ))
            [[ -e $LAB_PRIMARY_DATA/tree/d$(printf %04d $((k / 1000)))/f$(printf %07d "$k") ]] || moved=$((moved + 1))
        done
        printf '%-9s %-13s %-8s %-16s %-14s %s\n' "$n" "$mode" "$CHANGES" "${heal} ms" "${fb} ms" \
            "deletes $gone/$((CHANGES / 4)), renames $moved/$((CHANGES / 4))"
        stop_daemons
        "${WEB[@]}" umount -l /mnt/nfs 2>/dev/null || true
        # the next mode starts from equal trees again
        rsync -a --delete "$LAB_PRIMARY_DATA/tree/" "$LAB_BACKUP_DATA/tree/"
        off=$((off + 1))
    done
done
