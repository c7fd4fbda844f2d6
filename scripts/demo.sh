#!/usr/bin/env bash
# THE main job, end to end, in a local lab (root): replication, failover and failback.
#
#   1. brings up the lab: primary + backup storage hosts (rsyncd, nfs-ganesha), a web host, a mail host
#   2. runs `nfs-guard storage` as a storage agent on both storage hosts (the active one pushes every
#      change to the other) and `nfs-guard web` on web, driving them (docs/agents.md)
#   3. writes files through the web server's mount; shows them replicated to the backup
#   4. freezes the primary (SIGSTOP: it still answers ping!) and times the failover to the backup
#      (the backup's agent is made active at a new epoch before the mount)
#   5. writes, deletes and renames files during the failover (on the backup, journaled for the primary)
#   6. heals the primary; it stands down, the backup's journal drains to it, then the web switches back
#   7. checks every change is on the primary (nothing deleted came back, nothing renamed exists twice),
#      and lists the alert mails received
# Everything it starts is stopped and the lab removed on exit, even on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null && exec sudo -E "$0" "$@"
  echo "demo.sh: needs root (network namespaces, mounts)" >&2; exit 1
fi

export LAB=${LAB:-demo}
scripts/install-deps.sh
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now_ms() { date +%s%3N; }

say "building nfs-guard"
cargo build --locked --quiet
BIN=$ROOT/target/debug/nfs-guard

PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/lab.sh down >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT INT TERM

say "bringing up lab '$LAB'"
scripts/lab.sh up
eval "$(scripts/lab.sh env)"
lab() { scripts/lab.sh exec "$@"; }
D=$LAB_STATE/demo
mkdir -p "$D"

# --- configs (the same keys as config/*.toml) ---
ALERT="[alert]
smtp_host = \"$LAB_MAIL_IP\"
smtp_port = 25
security = \"none\"
from = \"nfs-guard <nfs-guard@demo.lab>\"
to = [\"ops@demo.lab\"]
flood_period = \"1s\""

# How both nfs-guard roles reach a storage host's rsync daemon (after `host = ...`).
RSYNC_AUTH="module = \"$LAB_RSYNC_MODULE\"
user = \"$LAB_RSYNC_USER\"
password_file = \"$LAB_RSYNC_PASS\"
connect_timeout = \"2s\"
io_timeout = \"5s\""

head -c 24 /dev/urandom | base64 >"$D/agent.secret"
chmod 600 "$D/agent.secret"
agent_toml() { # ME MY_IP PEER PEER_IP: a storage agent (as config/agent-primary.toml)
  cat <<CONF
state_dir = "$D/$1-state"
[storage]
window = "100ms"
[storage.agent]
server = "$1"
listen = "$2:7451"
secret_file = "$D/agent.secret"
peer = "$3"
peer_api = "http://$4:7451"
[[storage.trees]]
path = "$LAB_EXPORT"
[[storage.remotes]]
name = "$3"
host = "$4"
$RSYNC_AUTH
$ALERT
CONF
}
agent_toml primary "$LAB_PRIMARY_IP" backup "$LAB_BACKUP_IP" >"$D/primary.toml"
agent_toml backup "$LAB_BACKUP_IP" primary "$LAB_PRIMARY_IP" >"$D/backup.toml"

cat >"$D/web.toml" <<CONF
state_dir = "$D/web-state"
[web]
mount_point = "$LAB_WEB_MOUNT"
fstype = "nfs"
options = "vers=3,hard"
interval = "1s"
fall = 3
rise = 3
hold_down = "5s"
[web.primary]
address = "$LAB_PRIMARY_IP"
export = "$LAB_EXPORT"
[web.backup]
address = "$LAB_BACKUP_IP"
export = "$LAB_EXPORT"
[web.agents]
primary = "http://$LAB_PRIMARY_IP:7451"
backup = "http://$LAB_BACKUP_IP:7451"
secret_file = "$D/agent.secret"
$ALERT
CONF
"$BIN" --config "$D/primary.toml" check-config
"$BIN" --config "$D/backup.toml" check-config
"$BIN" --config "$D/web.toml" check-config

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  local deadline=$(( $(now_ms) + secs * 1000 ))
  until "$@" >/dev/null 2>&1; do
    (( $(now_ms) < deadline )) || { echo "timed out after ${secs}s waiting for: $what" >&2; return 1; }
    sleep 0.1
  done
}
mounted_from() { lab web grep -q " $LAB_WEB_MOUNT .* $1:$LAB_EXPORT " /proc/self/mountinfo; }
same_tree() { diff -r -x .nfs-guard-agent-canary "$1" "$2"; }  # the agents' health canary is per server

say "starting nfs-guard storage (agents) on primary and backup, and nfs-guard web on web"
lab primary "$BIN" --config "$D/primary.toml" storage >"$D/primary.log" 2>&1 & PIDS+=($!)
lab backup "$BIN" --config "$D/backup.toml" storage >"$D/backup.log" 2>&1 & PIDS+=($!)
lab web "$BIN" --config "$D/web.toml" web >"$D/web.log" 2>&1 & PIDS+=($!)
wait_for "web to mount the primary" 30 mounted_from "$LAB_PRIMARY_IP"
echo "web: $LAB_WEB_MOUNT is served by primary ($LAB_PRIMARY_IP:$LAB_EXPORT)"

say "writing 200 files (hostile names included) through the web mount"
lab web bash -c 'cd "$1" && mkdir -p uploads/2026 && for i in $(seq 1 200); do echo "upload $i" > "uploads/2026/file $i.txt"; done
  printf x > "uploads/quote'"'"'s \$(reboot) \`id\`.txt"; printf y > "uploads/-leading dash"; printf z > "uploads/new
line"' _ "$LAB_WEB_MOUNT"
t0=$(now_ms)
wait_for "replication to the backup" 30 same_tree "$LAB_PRIMARY_DATA" "$LAB_BACKUP_DATA"
echo "backup equals primary $(( $(now_ms) - t0 )) ms after the last write ($(find "$LAB_BACKUP_DATA" -type f | wc -l) files)"

say "FAULT: freezing the primary (every process SIGSTOPped; the host still answers ping)"
t0=$(now_ms)
scripts/lab.sh fault primary freeze
wait_for "failover to the backup" 30 mounted_from "$LAB_BACKUP_IP"
echo "failover: web mount served by backup $(( $(now_ms) - t0 )) ms after the freeze"
rc=0; lab web "$BIN" --config "$D/web.toml" status || rc=$?
(( rc == 2 )) || { echo "nfs-guard status should exit 2 (failed over), not $rc" >&2; exit 1; }

echo "cluster record on the backup's agent: $(lab backup curl -s "http://$LAB_BACKUP_IP:7451/v1/role")"

say "during the failover: 50 files written, 20 uploads deleted, a directory renamed (all on the backup)"
lab web bash -c 'cd "$1" && mkdir -p during && for i in $(seq 1 50); do echo "written during failover $i" > "during/f$i"; done
  for i in $(seq 1 20); do rm "uploads/2026/file $i.txt"; done; mv uploads/2026 uploads/archive-2026' _ "$LAB_WEB_MOUNT"

say "HEAL: primary back; it stands down, the backup's journal drains to it (hold-down first), then the switch"
t0=$(now_ms)
scripts/lab.sh heal primary
wait_for "failback to the primary" 90 mounted_from "$LAB_PRIMARY_IP"
echo "failback: web mount served by primary $(( $(now_ms) - t0 )) ms after heal (hold-down 5s included)"
for i in $(seq 1 50); do
  cmp -s "$LAB_BACKUP_DATA/during/f$i" "$LAB_PRIMARY_DATA/during/f$i" || { echo "LOST: during/f$i not on primary" >&2; exit 1; }
done
echo "all 50 files written during the failover are on the primary, byte for byte"
[[ ! -e $LAB_PRIMARY_DATA/uploads/2026 ]] || { echo "the renamed directory exists twice on the primary" >&2; exit 1; }
for i in $(seq 1 20); do
  [[ ! -e "$LAB_PRIMARY_DATA/uploads/archive-2026/file $i.txt" ]] || { echo "deleted upload $i came back" >&2; exit 1; }
done
cmp -s "$LAB_PRIMARY_DATA/uploads/archive-2026/file 21.txt" "$LAB_BACKUP_DATA/uploads/archive-2026/file 21.txt" \
  || { echo "the renamed directory's files are not on the primary" >&2; exit 1; }
echo "the 20 deletes and the directory rename made during the failover are on the primary (nothing came back)"
wait_for "the backup equal to the primary again" 30 same_tree "$LAB_PRIMARY_DATA" "$LAB_BACKUP_DATA"
echo "primary == backup"
lab web "$BIN" --config "$D/web.toml" status

say "alerts received by the mail host"
wait_for "alert mails" 20 bash -c "grep -rlq '^Subject:' '$LAB_MAIL_DIR'"
grep -rh '^Subject:' "$LAB_MAIL_DIR" | sort | uniq -c
say "demo complete: replication, failover on a frozen primary, failback that replays writes, deletes and renames"
