#!/usr/bin/env bash
# Benchmark of `nfs-guard web` failover and failback in the lab, next to the classic ping loop.
#
#   sudo scripts/bench-failover.sh                 # RUNS=20 per fault kind
#   RUNS=5 FAULTS="freeze kill" sudo scripts/bench-failover.sh
#   SECTIONS=ping FAULTS="blackhole unplug" PING_RUNS=5 sudo scripts/bench-failover.sh
#   SECTIONS=slow SLOW_SECS=60 LAB=dts sudo scripts/bench-failover.sh   # the no-false-failover row
#   LAB_WEB=uml RUNS=5 sudo scripts/bench-failover.sh   # the kernel NFS client (user-mode-linux guest)
#   LAB_WEB=uml OPTIONS=vers=4.1,hard,timeo=50,retrans=2 ...
#
# LAB_WEB (see scripts/lab.sh): uml (default) runs `web` as a user-mode-linux guest with Linux's own NFS
# client and OPTIONS (default vers=3,hard,timeo=50,retrans=2); sshfs uses the stand-in mount with
# OPTIONS vers=3,soft,timeo=10 (ignored by the stand-in).
# What it measures (real binary inside the lab's `web` host, real nfs-ganesha/rsyncd/sshfs stand-in):
#   1. failover: time from the start of `lab.sh fault primary KIND` to the web host's mountinfo showing
#      the backup at /mnt/nfs; RUNS runs per fault kind, p50/p99 (nearest rank) and max. Each run ends
#      with `heal` and nfs-guard's own failback (reverse sync, staged mount), timed from the start of
#      `heal` to "serving the primary, nothing owed", so every run starts from "serving primary".
#   2. failback with FILES (default 10000) changed files: files written to the backup during the
#      failover, then the primary healed; time from heal to mountinfo showing the primary, and the
#      reverse-sync pass duration nfs-guard reports.
#   slow: no false failover: the primary under heavy load for SLOW_SECS (default 60) seconds (an NFS
#      client in its namespace flooding its nfs-ganesha with writes, a disk writer, 2 CPU hogs) and, with
#      LAB_WEB=uml, 150 ms +- 50 ms of latency on the web node's packets to it (netem in the guest);
#      reports failovers (must be 0), DOWN verdicts, failed checks, and the web mount's write+read ops.
#   3. the classic loop `while sleep 10; do ping -c1 -W1 PRIMARY || remount backup; done` on the same
#      faults (PING_RUNS runs, each watched for PING_WATCH seconds): it never notices a frozen host or a
#      dead NFS service, because the kernel still answers ping.
# Figures go to stdout; docs/bench-failover.md holds a recorded run with the machine description.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB=${LAB:-wbnch}
export LAB
LAB_WEB=${LAB_WEB:-uml}
export LAB_WEB
case $LAB_WEB in
    uml) OPTIONS=${OPTIONS:-vers=3,hard,timeo=50,retrans=2} ;;
    sshfs) OPTIONS=${OPTIONS:-vers=3,soft,timeo=10} ;;
    *) echo "bench-failover.sh: LAB_WEB=$LAB_WEB: expected uml or sshfs" >&2; exit 64 ;;
esac
RUNS=${RUNS:-20}
FILES=${FILES:-10000}
FAULTS=${FAULTS:-"freeze kill stop-nfs blackhole reject unplug"}
PING_RUNS=${PING_RUNS:-3}
PING_WATCH=${PING_WATCH:-35}
SECTIONS=${SECTIONS:-"failover slow failback ping"}
SLOW_SECS=${SLOW_SECS:-60}
# Check keys inside [web]; empty = the product's defaults (interval 200ms, fall 3, fall_certain 2, rise 3,
# probe_timeout 1s, probe_timeout_min 200ms). E.g. CHECK_KEYS=$'interval = "1s"\nprobe_timeout = "800ms"'
CHECK_KEYS=${CHECK_KEYS:-}
# Where to copy the daemon's log at the end (the work dir is removed).
KEEP_LOG=${KEEP_LOG:-}
BIN=${BIN:-$ROOT/target/debug/nfs-guard}
LABSH="$ROOT/scripts/lab.sh"
WORK=
DAEMON=

[[ $(id -u) == 0 ]] || { echo "bench-failover.sh: needs root (the lab uses namespaces)" >&2; exit 1; }
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --quiet)

cleanup() {
    [[ -n $DAEMON ]] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    [[ -z $KEEP_LOG || -z $WORK ]] || cp "$WORK/web.log" "$KEEP_LOG" 2>/dev/null || true
    bash "$LABSH" down >/dev/null 2>&1 || true
    [[ -z $WORK ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=lab/bench-web.sh
source "$ROOT/scripts/lab/bench-web.sh"

lab up
eval "$(lab env)"
bench_web_init
P=$LAB_PRIMARY_IP B=$LAB_BACKUP_IP
# Under the lab's state dir: the uml guest sees it read-write at the same path (not this /tmp).
WORK=$(mktemp -d "$LAB_STATE/bench.XXXXXX")

web() { "${WEB[@]}" "$@"; }
# the web document's top-level keys (indented 4 under "web" in `status --json`, schema 1)
status_field() { "$BIN" --config "$WORK/web.toml" status --json 2>/dev/null | sed -n "s/^    \"$1\": \\(.*\\),\$/\\1/p" | head -1; }
wait_failed_back() {
    local end=$(( $(now_ms) + $1 * 1000 ))
    until [[ $(mount_src) == "$P:/srv/nfs" && $(status_field pending_reverse_sync) == false && $(status_field active) == '"primary"' ]]; do
        (( $(now_ms) < end )) || return 1
        sleep 0.1
    done
}

cat >"$WORK/web.toml" <<EOF
state_dir = "$WORK/state"
[web]
mount_point = "/mnt/nfs"
fstype = "nfs"
options = "$OPTIONS"
$CHECK_KEYS
mount_timeout = "10s"
hold_down = "1s"
[web.primary]
address = "$P"
export = "/srv/nfs"
[web.backup]
address = "$B"
export = "/srv/nfs"
[web.reverse_sync]
retry_initial = "1s"
retry_max = "2s"
timeout = "10m"
[web.reverse_sync.target]
host = "$P"
module = "$LAB_RSYNC_MODULE"
user = "$LAB_RSYNC_USER"
password_file = "$LAB_RSYNC_PASS"
connect_timeout = "2s"
io_timeout = "30s"
EOF

# -v: failed checks are logged (debug), for the "slow" section's count
"${WEB[@]}" "$BIN" --config "$WORK/web.toml" --log-format human -v web >"$WORK/web.log" 2>&1 &
DAEMON=$!
wait_src "$P:/srv/nfs" 20 || { echo "nfs-guard did not mount the primary" >&2; tail "$WORK/web.log" >&2; exit 1; }
wait_failed_back 20 || true

stats() { # NAME values... -> "NAME n p50 p99 max" (nearest rank)
    local name=$1; shift
    local sorted n p50 p99
    sorted=$(printf '%s\n' "$@" | sort -n)
    n=$#
    p50=$(sed -n "$(( (n * 50 + 99) / 100 ))p" <<<"$sorted")
    p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" <<<"$sorted")
    printf '%-10s runs=%-3s p50=%6s ms  p99=%6s ms  max=%6s ms\n' "$name" "$n" "$p50" "$p99" "$(tail -1 <<<"$sorted")"
}

section() { [[ " $SECTIONS " == *" $1 "* ]]; }

# ms of the day of a human log line's UTC stamp (the daemon's own clock: both ends of a difference
# come from it, so the guest's clock offset cancels out)
log_ms() { sed -n 's/^[0-9-]*T\([0-9]*\):\([0-9]*\):\([0-9.]*\)Z.*/\1 \2 \3/p' | awk '{printf "%d\n", ($1*3600+$2*60+$3)*1000}'; }
# split of the failover that starts at log line $1: "detected_ms switched_ms" = primary DOWN -> the
# backup mount verified (state change to Serving backup), both from the daemon's log
switch_split() {
    local tail down serving end=$(( $(now_ms) + 3000 ))
    # the daemon logs the state change just after the mount the bench already saw
    until tail=$(tail -n +"$1" "$WORK/web.log") && grep -aq 'to=Serving { server: Backup }' <<<"$tail"; do
        (( $(now_ms) < end )) || return 1
        sleep 0.05
    done
    down=$(grep -a 'health changed' <<<"$tail" | grep -a 'Primary' | grep -a 'down' | head -1 | log_ms)
    serving=$(grep -a 'state change' <<<"$tail" | grep -a 'to=Serving { server: Backup }' | head -1 | log_ms)
    [[ -n $down && -n $serving ]] && echo $((serving - down))
}

if section failover; then
echo "== nfs-guard failover: fault injection -> mount serves the backup (check keys: ${CHECK_KEYS:-defaults})" | tr '\n' ' '
echo
echo "   and failback: heal -> serving the primary, nothing owed (hold_down 1s); web=$LAB_WEB -o $OPTIONS"
echo "   'switch' = the daemon's own log: primary DOWN -> backup mounted and verified"
for fault in $FAULTS; do
    times=() backs=() splits=()
    wait_failed_back 120 || { echo "not back on the primary" >&2; tail -20 "$WORK/web.log" >&2; exit 1; }
    for ((i = 1; i <= RUNS; i++)); do
        # the fault lands at a random point of the check cycle
        sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
        line=$(( $(wc -l <"$WORK/web.log") + 1 ))
        t0=$(now_ms)
        lab fault primary "$fault"
        wait_src "$B:/srv/nfs" 30 || { echo "$fault run $i: no failover within 30 s" >&2; tail -20 "$WORK/web.log" >&2; exit 1; }
        times+=($(( $(now_ms) - t0 )))
        sp=$(switch_split "$line") && splits+=("$sp")
        t0=$(now_ms)
        lab heal primary
        wait_failed_back 180 || { echo "$fault run $i: no failback within 180 s" >&2; tail -20 "$WORK/web.log" >&2; exit 1; }
        backs+=($(( $(now_ms) - t0 )))
    done
    stats "$fault" "${times[@]}"
    echo "           each: $(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')"
    if ((${#splits[@]})); then stats "  switch" "${splits[@]}"; fi
    stats "  failback" "${backs[@]}"
done
fi

if section failback; then
echo "== nfs-guard failback with $FILES changed files (hold_down 1s)"
wait_failed_back 60
lab fault primary stop-nfs
wait_src "$B:/srv/nfs" 30
mkdir -p "$LAB_BACKUP_DATA/bench"
for ((i = 0; i < FILES; i++)); do printf 'file %d\n' "$i" >"$LAB_BACKUP_DATA/bench/f$i"; done
t0=$(now_ms)
lab heal primary
wait_src "$P:/srv/nfs" 600 || { echo "no failback within 600 s" >&2; tail -20 "$WORK/web.log" >&2; exit 1; }
t1=$(now_ms)
wait_failed_back 120
n=$(find "$LAB_PRIMARY_DATA/bench" -type f | wc -l)
sync_line=$(grep -a "reverse sync to primary" "$WORK/web.log" | grep -a succeeded | tail -1 | grep -o 'attempt [0-9]*: [0-9]* files, [0-9]* bytes in [0-9]* ms' || true)
echo "heal -> mount serves the primary: $(( t1 - t0 )) ms (includes rise x interval + hold_down 1s); files on primary: $n/$FILES"
echo "reverse sync pass: $sync_line"
fi

if section slow; then
echo "== no false failover: the primary loaded (NFS writer, disk writer, 2 CPU hogs) for ${SLOW_SECS}s"
if [[ $LAB_WEB == uml ]]; then
    echo "   and 150 ms +- 50 ms (normal) of latency on the web node's packets to it (netem in the guest)"
else
    echo "   (no added latency: this kernel has no netem; LAB_WEB=uml adds it inside the guest)"
fi
wait_failed_back 120 || { echo "not back on the primary" >&2; tail -20 "$WORK/web.log" >&2; exit 1; }
epoch0=$(status_field epoch)
line=$(( $(wc -l <"$WORK/web.log") + 1 ))
if [[ $LAB_WEB == uml ]]; then
    web bash -c "set -e; M=/usr/lib/uml/modules/\$(uname -r)/kernel/net/sched
        for m in sch_prio sch_netem cls_u32; do grep -q ^\$m' ' /proc/modules || busybox insmod \$M/\$m.ko; done
        tc qdisc replace dev vec0 root handle 1: prio
        tc qdisc replace dev vec0 parent 1:3 handle 30: netem delay 150ms 50ms distribution normal
        tc filter add dev vec0 parent 1:0 protocol ip prio 1 u32 match ip dst $P/32 flowid 1:3"
    rtt=$(web ping -c 5 -i 0.2 "$P" | sed -n 's|.* = [0-9.]*/\([0-9.]*\)/.*|\1|p')
    echo "   ping to the primary from the web node: avg $rtt ms"
fi
head -c $((32 << 20)) /dev/zero >"$WORK/flood.src"
loads=()
for l in "while :; do nfs-cp $WORK/flood.src nfs://$P/srv/nfs/flood-nfs.bin >/dev/null 2>&1; done" \
         "while :; do dd if=/dev/zero of=$LAB_PRIMARY_DATA/flood-disk.bin bs=1M count=64 conv=fsync 2>/dev/null; done" \
         "while :; do :; done" "while :; do :; done"; do
    setsid bash "$LABSH" exec primary bash -c "$l" >/dev/null 2>&1 &
    loads+=($!)
done
ops=0 fails=0 slowest=0
end=$(( $(now_ms) + SLOW_SECS * 1000 ))
while (( $(now_ms) < end )); do
    ops=$((ops + 1)); t0=$(now_ms)
    if out=$(timeout -s KILL 20 "${WEB[@]}" sh -c "echo op $ops >/mnt/nfs/slow-alive && cat /mnt/nfs/slow-alive" 2>/dev/null) &&
        [[ $out == "op $ops" ]]; then :; else fails=$((fails + 1)); fi
    el=$(( $(now_ms) - t0 )); (( el > slowest )) && slowest=$el
    sleep 0.5
done
for p in "${loads[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
[[ $LAB_WEB == uml ]] && web tc qdisc del dev vec0 root 2>/dev/null || true
failed=$(tail -n +"$line" "$WORK/web.log" | grep -a 'check failed' | grep -ac 'Primary' || true)
echo "failovers: $(( $(status_field epoch) - epoch0 ))   primary judged DOWN: $(tail -n +"$line" "$WORK/web.log" | grep -a 'health changed' | grep -a Primary | grep -ac down || true) times   failed checks of the primary: $failed"
echo "web mount ops (write + read back, every ~0.5 s + the command's own cost): $ops, failed $fails, slowest $slowest ms"
fi

kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=
sleep 0.5

if section ping; then
echo "== classic ping loop (every 10 s: ping -c1 -W1 primary || remount backup), watched ${PING_WATCH}s per run"
cat >"$WORK/pingloop.sh" <<EOF
#!/bin/sh
while sleep 10; do
    if ! ping -c 1 -W 1 $P >/dev/null 2>&1; then
        umount -l /mnt/nfs; mount -t nfs -o vers=3,soft $B:/srv/nfs /mnt/nfs
    fi
done
EOF
chmod +x "$WORK/pingloop.sh"
for fault in $FAULTS; do
    times=() missed=0
    for ((i = 1; i <= PING_RUNS; i++)); do
        web umount -l /mnt/nfs 2>/dev/null || true
        web mount -t nfs "$P:/srv/nfs" /mnt/nfs
        "${WEB[@]}" "$WORK/pingloop.sh" &
        loop=$!
        sleep "$((RANDOM % 10)).$((RANDOM % 10))" # the fault lands anywhere in the 10 s cycle
        t0=$(now_ms)
        lab fault primary "$fault"
        if wait_src "$B:/srv/nfs" "$PING_WATCH"; then times+=($(( $(now_ms) - t0 ))); else missed=$((missed + 1)); fi
        kill "$loop" 2>/dev/null; wait "$loop" 2>/dev/null || true
        lab heal primary
    done
    if ((${#times[@]})); then stats "$fault" "${times[@]}"; fi
    echo "$fault: ping loop never switched in $missed of $PING_RUNS runs (watched ${PING_WATCH}s each)"
done
web umount -l /mnt/nfs 2>/dev/null || true
fi
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
