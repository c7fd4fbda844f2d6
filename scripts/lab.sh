#!/usr/bin/env bash
# nfs-guard multi-host test lab: network namespaces with real daemons, on one machine.
#
#   LAB=<name> [LAB_WEB=sshfs|uml] scripts/lab.sh up|down|status|env|exec HOST CMD...|fault HOST KIND|heal HOST
#
# <name> (default "ngl"): 1-5 chars of [a-z0-9]. Several labs can be up at once; each gets its own
# subnet 10.203.X.0/24, X allocated under a lock in /var/tmp/nfs-guard-lab/registry (kept across `up`s of
# the same name, freed by `down`).
#
# Hosts (each a network namespace plus a persistent mount namespace held by a `sleep` process, joined
# through veth pairs to a bridge in a switch namespace; IPv6 off):
#   primary  10.203.X.2  storage: rpcbind + nfs-ganesha (NFS v3+v4, TCP) exporting /srv/nfs,
#                        rsync daemon :873 module "data" (user nfsguard), sshd :22 (root, lab key)
#   backup   10.203.X.3  storage: same as primary
#   web      10.203.X.4  client: /mnt/nfs. LAB_WEB (read by `up`, kept in lab.env) says what it is:
#                        sshfs (default): the namespace itself, with a mount.nfs/mount.nfs4 stand-in
#                          (sshfs) on its /usr/sbin;
#                        uml: a user-mode-linux guest (Linux's own NFS client, v3 and v4.1) whose root
#                          is this machine's / read-only; its vec0 is tap0 in the web namespace,
#                          bridged with eth0 there (the namespace itself has no address). Commands
#                          reach it through a spool dir (scripts/lab/uml-exec, uml-init); it sees the
#                          lab's state dir read-write at the same path; console: <state>/run/web/uml.log.
#   mail     10.203.X.5  SMTP (aiosmtpd): 25 plain; 587 STARTTLS + AUTH required; 465 TLS + AUTH required
# Every host has its own tmpfs /run. Storage hosts see <state>/<host>/data at /srv/nfs.
# LAB_DATA_FS=ext4 (read by `up`) gives each storage host's data its own journaled ext4 on a sparse
# image file (<state>/<host>/data.img, LAB_DATA_SIZE, default 8G, one inode per 4 KiB), loop-mounted
# in the root namespace; `down` unmounts it. The benchmarks use it: a fresh journaled ext4, as on an
# NFS server, instead of whatever filesystem /var/tmp happens to be on.
# LAB_RSYNCD_NODELAY=0 (read by `up`) leaves Nagle on in the rsync daemons (rsyncd.conf's default;
# the lab turns it off, as the README recommends): for benchmarks of a daemon configured as shipped.
#
# State: /var/tmp/nfs-guard-lab/<name>/ (see `env`). Faults (fault HOST KIND):
#   freeze       SIGSTOP every process of the host (kernel still answers ping and TCP handshakes)
#   kill         SIGKILL every process of the host except its namespace holder (ports refuse)
#   stop-nfs     SIGKILL nfs-ganesha, and sshd (the web mount stand-in's data path); rpcbind stays
#   stop-rsyncd  SIGKILL the rsync daemon (and its sessions) only
#   blackhole    nftables in the host drops everything on its lab interface (timeouts)
#   reject       nftables rejects everything on its lab interface (TCP RST / ICMP admin-prohibited)
#   unplug       the switch-side veth of the host goes down
# `heal HOST` undoes all of these, restarts the lab daemons and waits until they answer.
#
# Network safety: the lab subnet exists only inside the lab namespaces, and the root namespace gets
# `unreachable 10.203.X.0/24`, so nothing addressed to the lab can leave the machine.
# Pid lists are split on purpose (they are numbers):
# shellcheck disable=SC2046,SC2207
set -eEuo pipefail
# A command that fails without a message of its own still says where (set -E: inside functions too).
trap 'echo "lab.sh[${LAB:-}]: line $LINENO: a command failed (exit $?)" >&2' ERR
# Debian's tools first (a pyenv python3 earlier on PATH lacks aiosmtpd; daemons need /usr/sbin).
export PATH=/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin
export LC_ALL=C

LAB=${LAB:-ngl}
BASE=/var/tmp/nfs-guard-lab
STATE=$BASE/$LAB
RUN=$STATE/run
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOSTS=(primary backup web mail)
STORAGE=(primary backup)
declare -A OCTET=([primary]=2 [backup]=3 [web]=4 [mail]=5)
RSYNC_USER=nfsguard
RSYNC_MODULE=data
SMTP_USER=alert
EXPORT=/srv/nfs
WEB_MOUNT=/mnt/nfs
UP_DEADLINE=${LAB_UP_DEADLINE:-60}
# What the web host is (see the header): from LAB_WEB, else the running lab's lab.env, else sshfs.
WEB_KIND=${LAB_WEB:-}
UML_DEADLINE=${LAB_UML_DEADLINE:-90}   # boot of the web guest on 2 busy cores: 7-13 s measured

die() { echo "lab.sh[$LAB]: error: $*" >&2; exit 1; }
# die_log LOGFILE MESSAGE: die, showing the end of a daemon's log (the state dir may be gone soon).
die_log() {
    local f=$1; shift
    echo "lab.sh[$LAB]: error: $*" >&2
    if [[ -s $f ]]; then echo "--- last lines of $f:" >&2; tail -n 20 "$f" >&2; fi
    exit 1
}
log() { [[ -n ${LAB_QUIET:-} ]] || echo "lab.sh[$LAB]: $*" >&2; }

usage() {
    sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

[[ $LAB =~ ^[a-z0-9]{1,5}$ ]] || die "LAB name '$LAB' must be 1-5 characters of [a-z0-9]"

ns_name() { echo "ngl-$LAB-$1"; }          # network namespace of a host ("sw" = switch)
sw_port() { echo "sw-$1"; }                # switch-side veth of a host (lives in the switch ns)
is_host() { local h; for h in "${HOSTS[@]}"; do [[ $h == "$1" ]] && return 0; done; return 1; }
is_storage() { [[ $1 == primary || $1 == backup ]]; }

now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }

# wait_for DESC SECONDS CMD...: poll CMD (every 50-200 ms) until it succeeds or the deadline passes.
wait_for() {
    local desc=$1 secs=$2; shift 2
    local end=$(( $(now_ms) + secs * 1000 )) delay=0.05
    while ! "$@" >/dev/null 2>&1; do
        if (( $(now_ms) > end )); then
            echo "lab.sh[$LAB]: timed out after ${secs}s waiting for: $desc" >&2
            return 1
        fi
        sleep "$delay"
        [[ $delay == 0.05 ]] && delay=0.1 || delay=0.2
    done
}

# ---------------------------------------------------------------------------------------------------
# Tools

require_root() {
    [[ $EUID -eq 0 ]] || die "must run as root (network namespaces, mounts, nftables); EUID=$EUID"
}

ensure_tools() {
    # One list of packages for the lab, the tests, the demo and the benchmarks.
    "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" || die "cannot install the lab's packages"
}

# ---------------------------------------------------------------------------------------------------
# Locks and subnet registry

# Per-lab lock, so up/down/fault/heal of one lab never interleave. The lock file is removed by `down`;
# after taking the lock, re-check it is still the file at that path.
lock_lab() {
    mkdir -p "$BASE"
    local f=$BASE/.$LAB.lock
    while :; do
        exec {LABLOCK}>>"$f"
        flock -w 600 "$LABLOCK" || die "timed out waiting for the lock of lab $LAB"
        if [[ -e $f && $(stat -c %i "$f") == $(stat -L -c %i "/proc/self/fd/$LABLOCK") ]]; then
            return 0
        fi
        exec {LABLOCK}>&-
    done
}

registry_locked() { # run "$@" holding the global registry lock
    mkdir -p "$BASE"
    local fd rc=0
    exec {fd}>>"$BASE/registry.lock"
    flock -w 120 "$fd" || die "timed out waiting for $BASE/registry.lock"
    "$@" || rc=$?
    exec {fd}>&-
    return $rc
}

# An entry is stale when its lab has no state dir, no namespace, and nobody holds its lock
# (a lab being brought up holds its lock from before its entry exists until it is up).
_registry_gc() {
    local n x keep=() changed=0 lf
    while read -r n x; do
        [[ -n $n ]] || continue
        if [[ $n != "$LAB" && ! -d $BASE/$n && ! -e /run/netns/ngl-$n-sw ]]; then
            lf=$BASE/.$n.lock
            if [[ ! -e $lf ]] || flock -n "$lf" true; then
                changed=1
                continue
            fi
        fi
        keep+=("$n $x")
    done <"$BASE/registry"
    if (( changed )); then
        printf '%s\n' "${keep[@]}" | grep -v '^$' >"$BASE/registry.new" || true
        mv "$BASE/registry.new" "$BASE/registry"
    fi
}

_alloc_subnet() {
    touch "$BASE/registry"
    _registry_gc
    local x
    x=$(awk -v n="$LAB" '$1 == n { print $2; exit }' "$BASE/registry")
    if [[ -z $x ]]; then
        local used
        used=" $(awk '{ printf "%s ", $2 }' "$BASE/registry")"
        for ((x = 1; x <= 254; x++)); do
            [[ $used == *" $x "* ]] && continue
            # A route inside that subnet (somebody else's, or a crashed lab's) or an address of this
            # machine in it: leave it alone.
            [[ -n $(ip route show root "10.203.$x.0/24" 2>/dev/null) ]] && continue
            [[ -n $(ip -o -4 addr show to "10.203.$x.0/24" 2>/dev/null) ]] && continue
            break
        done
        (( x <= 254 )) || die "no free 10.203.X.0/24 subnet left in $BASE/registry"
        echo "$LAB $x" >>"$BASE/registry"
    fi
    echo "$x"
}

_free_subnet() {
    [[ -f $BASE/registry ]] || return 0
    awk -v n="$LAB" '$1 != n' "$BASE/registry" >"$BASE/registry.new"
    mv "$BASE/registry.new" "$BASE/registry"
}

registered_subnet() {
    [[ -f $BASE/registry ]] && awk -v n="$LAB" '$1 == n { print $2; exit }' "$BASE/registry"
    return 0
}

load_ips() {
    X=$1
    SUBNET=10.203.$X.0/24
    declare -gA IP=()
    local h
    for h in "${HOSTS[@]}"; do IP[$h]=10.203.$X.${OCTET[$h]}; done
}

# After lock_lab: die if the lab is not up, without leaving its lock file behind.
lab_is_up_or_die() {
    if [[ ! -f $STATE/lab.env ]]; then
        rm -f "$BASE/.$LAB.lock"
        die "lab $LAB is not up (no $STATE/lab.env); run: LAB=$LAB $0 up"
    fi
    load_env_or_die
}

load_env_or_die() {
    [[ -f $STATE/lab.env ]] || die "lab $LAB is not up (no $STATE/lab.env); run: LAB=$LAB $0 up"
    local x
    x=$(sed -n 's/^LAB_INDEX=//p' "$STATE/lab.env")
    [[ -n $x ]] || die "corrupt $STATE/lab.env"
    load_ips "$x"
    # The running lab's web host is what it is, whatever LAB_WEB says now.
    WEB_KIND=$(sed -n 's/^LAB_WEB=//p' "$STATE/lab.env")
    WEB_KIND=${WEB_KIND:-sshfs}
}

# For `up`: LAB_WEB, else what the lab was brought up with, else sshfs. Changing it needs a `down`.
resolve_web_kind() {
    local have=
    [[ -f $STATE/lab.env ]] && have=$(sed -n 's/^LAB_WEB=//p' "$STATE/lab.env")
    WEB_KIND=${WEB_KIND:-${have:-sshfs}}
    [[ $WEB_KIND == sshfs || $WEB_KIND == uml ]] || die "LAB_WEB=$WEB_KIND: expected sshfs or uml"
    if [[ -n $have && $have != "$WEB_KIND" ]] && holder_pid web >/dev/null 2>&1; then
        die "lab $LAB is up with LAB_WEB=$have; run: LAB=$LAB $0 down, then up with LAB_WEB=$WEB_KIND"
    fi
}

# ---------------------------------------------------------------------------------------------------
# Processes

# pidfile format: "PID STARTTIME" (starttime = field 22 of /proc/PID/stat, guards against pid reuse)
proc_start() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
proc_state() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; echo "${s%% *}"; }
proc_ppid() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "$2"; }
pid_alive() { # PID alive and not a zombie
    local st
    st=$(proc_state "$1") || return 1
    [[ $st != Z && $st != X ]]
}
pidfile_pid() { # prints the pid if the pidfile's process is alive (same starttime)
    local f=$1 pid start
    [[ -s $f ]] || return 1
    read -r pid start <"$f" || true
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    [[ -z $start || $(proc_start "$pid") == "$start" ]] || return 1
    echo "$pid"
}
write_pidfile() { echo "$2 $(proc_start "$2")" >"$1"; }

holder_pid() { pidfile_pid "$RUN/$1/holder.pid"; }

netns_id() { # "net:[inode]" of a lab namespace, empty if it does not exist
    local f
    f=/run/netns/$(ns_name "$1")
    [[ -e $f ]] && stat -L -c 'net:[%i]' "$f" 2>/dev/null || true
}

# All pids whose network namespace is ID ("net:[inode]").
netns_id_pids() {
    [[ -n $1 ]] || return 0
    # One find for all processes (a readlink per process is far too slow).
    # (processes that exit meanwhile make find fail: not an error)
    { find /proc/[0-9]*/ns/net -maxdepth 0 -printf '%l %h\n' 2>/dev/null || true; } |
        awk -v id="$1" '$1 == id { split($2, a, "/"); print a[3] }'
    return 0
}

# All live pids in a host's network namespace (includes processes started with `exec`).
ns_pids() { netns_id_pids "$(netns_id "$1")"; }

# Everything that belongs to a host, even if its netns was deleted behind our back: the processes in
# its netns, in its holder's netns, and those of its pid files.
host_pids() {
    local h=$1 f p hp
    {
        ns_pids "$h"
        if hp=$(holder_pid "$h"); then netns_id_pids "$(readlink "/proc/$hp/ns/net" 2>/dev/null)"; fi
        if [[ -d $RUN/$h ]]; then
            for f in "$RUN/$h"/*.pid; do
                [[ -e $f ]] || continue
                p=$(pidfile_pid "$f") && echo "$p"
            done
        fi
    } | sort -un
    return 0
}

# Pids of the process trees rooted at the given pids (within the host's namespace).
tree_pids() {
    local host=$1; shift
    local -A parent=()
    local p
    for p in $(ns_pids "$host"); do parent[$p]=$(proc_ppid "$p" 2>/dev/null || echo 0); done
    local -A in=()
    for p in "$@"; do in[$p]=1; done
    local changed=1
    while (( changed )); do
        changed=0
        for p in "${!parent[@]}"; do
            if [[ -z ${in[$p]:-} && -n ${in[${parent[$p]}]:-} ]]; then in[$p]=1; changed=1; fi
        done
    done
    for p in "${!in[@]}"; do echo "$p"; done
}

# Kill the given pids and wait (bounded) until they are gone or zombies.
kill_wait() {
    local p
    (( $# )) || return 0
    kill -KILL "$@" 2>/dev/null || true
    kill -CONT "$@" 2>/dev/null || true
    _all_dead() { local q; for q in "$@"; do pid_alive "$q" && return 1; done; return 0; }
    wait_for "pids $* to die" 10 _all_dead "$@" || {
        for p in "$@"; do pid_alive "$p" && echo "  still alive: $p $(cat /proc/$p/cmdline 2>/dev/null | tr '\0' ' ') state=$(proc_state "$p")" >&2; done
        return 1
    }
}

# hx HOST CMD...: run CMD inside the host's network + mount namespaces.
hx() {
    local h=$1; shift
    local pid
    pid=$(holder_pid "$h") || die "host $h of lab $LAB has no live namespace holder (run: LAB=$LAB $0 up)"
    nsenter -t "$pid" -m -n -- "$@"
}

# detached CMD...: run CMD with every fd above 2 closed (our lock fds must never be inherited by a
# daemon: it would hold the lab lock for its whole life).
detached() {
    (
        local fd
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            (( fd > 2 )) && eval "exec $fd>&-" 2>/dev/null
        done
        exec "$@"
    )
}

# spawn HOST NAME CMD...: start a daemon in the host, detached (own session, stdio to a log file),
# pidfile $RUN/HOST/NAME.pid. The daemon writes its own pid (sh execs into it), so it is exact.
spawn() {
    local h=$1 name=$2; shift 2
    local pf=$RUN/$h/$name.pid holder
    holder=$(holder_pid "$h") || die "host $h has no holder"
    rm -f "$pf" "$pf.tmp"
    detached setsid -f nsenter -t "$holder" -m -n -- /bin/sh -c 'echo $$ >"$0.tmp"; exec "$@"' "$pf" "$@" \
        </dev/null >>"$RUN/$h/$name.log" 2>&1
    wait_for "$h/$name to start" 10 test -s "$pf.tmp" || die "$h/$name did not start (log: $RUN/$h/$name.log)"
    local pid
    pid=$(cat "$pf.tmp")
    write_pidfile "$pf" "$pid"
    rm -f "$pf.tmp"
}

daemon_pid() { pidfile_pid "$RUN/$1/$2.pid"; }

daemons_of() {
    case $1 in
        primary|backup) echo "rpcbind ganesha rsyncd sshd" ;;
        mail) echo "smtpd" ;;
        web) [[ $WEB_KIND == uml ]] && echo "uml" || echo "" ;;
    esac
}

# ---------------------------------------------------------------------------------------------------
# Secrets, keys, certificates, configs

gen_secret() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }

ensure_secrets() {
    umask 077
    mkdir -p "$STATE" "$RUN" "$STATE/tls" "$STATE/ssh"
    chmod 755 "$STATE"
    if [[ ! -s $STATE/rsync.pass ]]; then gen_secret >"$STATE/rsync.pass"; echo >>"$STATE/rsync.pass"; fi
    if [[ ! -s $STATE/smtp.pass ]]; then gen_secret >"$STATE/smtp.pass"; fi    # no trailing newline
    chmod 600 "$STATE/rsync.pass" "$STATE/smtp.pass"
    if [[ ! -s $STATE/ssh/id_ed25519 ]]; then
        rm -f "$STATE/ssh/id_ed25519" "$STATE/ssh/id_ed25519.pub"
        ssh-keygen -q -t ed25519 -N '' -C "nfs-guard-lab-$LAB" -f "$STATE/ssh/id_ed25519"
    fi
    cp "$STATE/ssh/id_ed25519.pub" "$STATE/ssh/authorized_keys"
    chmod 600 "$STATE/ssh/authorized_keys"

    # SMTP TLS: a self-signed CA (the cert tests trust, LAB_SMTP_CERT) and a server cert it signed
    # for the mail IP (SAN IP + DNS mail, mail.lab, localhost). ECDSA P-256: fast to generate.
    local tls=$STATE/tls
    if [[ ! -s $tls/server-chain.pem || $(cat "$tls/ip" 2>/dev/null) != "${IP[mail]}" ]]; then
        cat >"$tls/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = nfs-guard lab $LAB CA
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[srv_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:${IP[mail]}, DNS:mail, DNS:mail.lab, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -config "$tls/openssl.cnf" -extensions ca_ext -days 3650 \
            -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -config "$tls/openssl.cnf" -subj "/CN=mail.lab" \
            -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
        openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
            -set_serial "0x$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" -days 3650 \
            -extfile "$tls/openssl.cnf" -extensions srv_ext -out "$tls/server.pem" 2>/dev/null
        cat "$tls/server.pem" "$tls/ca.pem" >"$tls/server-chain.pem"
        echo "${IP[mail]}" >"$tls/ip"
    fi
    chmod 644 "$tls/ca.pem" "$tls/server.pem" "$tls/server-chain.pem"
    umask 022
}

write_lab_env() {
    local f=$STATE/lab.env.tmp h H
    {
        echo "LAB_NAME=$LAB"
        echo "LAB_INDEX=$X"
        echo "LAB_SUBNET=$SUBNET"
        for h in "${HOSTS[@]}"; do
            H=${h^^}
            echo "LAB_${H}_IP=${IP[$h]}"
            echo "LAB_${H}_NETNS=$(ns_name "$h")"
        done
        echo "LAB_SWITCH_NETNS=$(ns_name sw)"
        echo "LAB_STATE=$STATE"
        echo "LAB_RUN=$RUN"
        for h in "${STORAGE[@]}"; do echo "LAB_${h^^}_DATA=$STATE/$h/data"; done
        echo "LAB_EXPORT=$EXPORT"
        echo "LAB_WEB_MOUNT=$WEB_MOUNT"
        echo "LAB_WEB=$WEB_KIND"
        echo "LAB_WEB_SPOOL=$RUN/web/spool"
        echo "LAB_RSYNC_USER=$RSYNC_USER"
        echo "LAB_RSYNC_MODULE=$RSYNC_MODULE"
        echo "LAB_RSYNC_PASS=$STATE/rsync.pass"
        echo "LAB_SMTP_USER=$SMTP_USER"
        echo "LAB_SMTP_PASS=$STATE/smtp.pass"
        echo "LAB_SMTP_CERT=$STATE/tls/ca.pem"
        echo "LAB_SMTP_SERVER_CERT=$STATE/tls/server-chain.pem"
        echo "LAB_MAIL_DIR=$STATE/mail"
        echo "LAB_SSH_KEY=$STATE/ssh/id_ed25519"
    } >"$f"
    mv "$f" "$STATE/lab.env"
}

write_storage_configs() {
    local h=$1 r=$RUN/$1 ip=${IP[$1]}
    mkdir -p "$r" "$r/ganesha-recov" "$STATE/$h/data"
    chmod 755 "$STATE/$h" "$STATE/$h/data"
    umask 077
    printf '%s:%s\n' "$RSYNC_USER" "$(head -n1 "$STATE/rsync.pass")" >"$r/rsyncd.secrets"
    chmod 600 "$r/rsyncd.secrets"
    umask 022
    cat >"$r/rsyncd.conf" <<EOF
# nfs-guard lab rsync daemon on $h ($ip)
log file = $r/rsyncd.log
# every file received or deleted, with its size and mtime (post-mortems of lab runs)
transfer logging = yes
log format = %o %f %l %M
reverse lookup = no
# No Nagle on the daemon's socket: nfs-guard always sets an io timeout (--timeout), so the daemon
# first sends a small MSG_IO_TIMEOUT and its next small write waits for the client's delayed ACK:
# 40 ms of every push (docs/bench-storage.md). Production rsyncd.conf should do the same.
$( [[ ${LAB_RSYNCD_NODELAY:-1} == 0 ]] || echo "socket options = TCP_NODELAY" )
# chroot: a non-chrooted daemon strips the leading / of incoming symlinks, so absolute symlinks
# would not replicate as they are (production rsyncd.conf should do the same).
use chroot = yes
munge symlinks = no
numeric ids = yes
uid = root
gid = root
[${RSYNC_MODULE}]
    path = $EXPORT
    comment = nfs-guard lab export of $h
    read only = no
    list = yes
    auth users = $RSYNC_USER
    secrets file = $r/rsyncd.secrets
    strict modes = yes
EOF
    cat >"$r/ganesha.conf" <<EOF
# nfs-guard lab nfs-ganesha on $h ($ip)
NFS_CORE_PARAM {
    Bind_addr = $ip;
    Protocols = 3, 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    NFS_Port = 2049;
}
NFSv4 {
    Graceless = true;
    RecoveryRoot = "$r/ganesha-recov";
    # Distinct servers, as on two machines: with the same owner (both default to this machine's
    # hostname) a kernel NFSv4.1 client takes the backup for a trunked address of the primary and
    # mounts the primary's export on the backup's superblock.
    Server_Owner = "nfs-guard-lab-$LAB-$h";
    Server_Scope = "nfs-guard-lab-$LAB-$h";
}
NFS_KRB5 {
    Active_krb5 = false;
}
EXPORT {
    Export_Id = 1;
    Path = $EXPORT;
    Pseudo = $EXPORT;
    Protocols = 3, 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Attr_Expiration_Time = 0;
    FSAL {
        Name = VFS;
    }
}
LOG {
    Default_Log_Level = EVENT;
}
EOF
    if [[ ! -s $r/ssh_host_ed25519_key ]]; then
        rm -f "$r/ssh_host_ed25519_key" "$r/ssh_host_ed25519_key.pub"
        ssh-keygen -q -t ed25519 -N '' -C "lab-$LAB-$h" -f "$r/ssh_host_ed25519_key"
    fi
    cat >"$r/sshd_config" <<EOF
# nfs-guard lab sshd on $h ($ip): used by the web host's mount.nfs stand-in (sshfs)
ListenAddress $ip:22
HostKey $r/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $STATE/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
PrintMotd no
MaxStartups 64
MaxSessions 64
LogLevel ERROR
Subsystem sftp internal-sftp
EOF
}

# ---------------------------------------------------------------------------------------------------
# Namespaces and links

_netns_add() { local n; for n in "$@"; do [[ -e /run/netns/$n ]] || ip netns add "$n"; done; }
_netns_del() { local n; for n in "$@"; do [[ -e /run/netns/$n ]] && ip netns delete "$n"; done; return 0; }

nsexec_net() { local n=$1; shift; nsenter --net="/run/netns/$n" -- "$@"; }

ensure_network() {
    local sw h hn
    sw=$(ns_name sw)
    local -a all=("$sw")
    for h in "${HOSTS[@]}"; do all+=("$(ns_name "$h")"); done
    registry_locked _netns_add "${all[@]}"
    for hn in "${all[@]}"; do
        nsexec_net "$hn" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        ip -n "$hn" link set lo up
    done
    if ! ip -n "$sw" link show br0 >/dev/null 2>&1; then
        ip -n "$sw" link add br0 type bridge stp_state 0 forward_delay 0
    fi
    ip -n "$sw" link set br0 up
    for h in "${HOSTS[@]}"; do
        hn=$(ns_name "$h")
        if ! ip -n "$hn" link show eth0 >/dev/null 2>&1 || ! ip -n "$sw" link show "$(sw_port "$h")" >/dev/null 2>&1; then
            ip -n "$hn" link del eth0 2>/dev/null || true
            ip -n "$sw" link del "$(sw_port "$h")" 2>/dev/null || true
            ip link add eth0 netns "$hn" type veth peer name "$(sw_port "$h")" netns "$sw"
            # New MAC address: the other hosts must not keep using the old one from their ARP cache.
            local o
            for o in "${HOSTS[@]}"; do
                [[ $o == "$h" ]] || ip -n "$(ns_name "$o")" neigh flush to "${IP[$h]}" 2>/dev/null || true
            done
        fi
        ip -n "$sw" link set "$(sw_port "$h")" master br0
        ip -n "$sw" link set "$(sw_port "$h")" up
        if [[ $h == web && $WEB_KIND == uml ]]; then
            ensure_web_bridge
        else
            ip -n "$hn" addr replace "${IP[$h]}/24" dev eth0
        fi
        ip -n "$hn" link set eth0 up
    done
    # Safety net: nothing for the lab subnet may leave the root namespace.
    ip route replace unreachable "$SUBNET"
}

# LAB_WEB=uml: the guest owns the web address; its tap0 and eth0 are bridged in the web namespace.
ensure_web_bridge() {
    local hn
    hn=$(ns_name web)
    ip -n "$hn" addr flush dev eth0
    ip -n "$hn" link show br0 >/dev/null 2>&1 || ip -n "$hn" link add br0 type bridge stp_state 0 forward_delay 0
    ip -n "$hn" link show tap0 >/dev/null 2>&1 || ip -n "$hn" tuntap add dev tap0 mode tap
    ip -n "$hn" link set eth0 master br0
    ip -n "$hn" link set tap0 master br0
    ip -n "$hn" link set tap0 up
    ip -n "$hn" link set br0 up
}

# LAB_DATA_FS=ext4: the host's data directory is a loop-mounted ext4 of its own (before its holder
# starts, so the holder's mount namespace binds the mounted filesystem).
ensure_data_fs() {
    local h=$1 d=$STATE/$1/data img=$STATE/$1/data.img
    case ${LAB_DATA_FS:-dir} in
        dir) return 0 ;;
        ext4) ;;
        *) die "LAB_DATA_FS=${LAB_DATA_FS}: expected dir or ext4" ;;
    esac
    mountpoint -q "$d" && return 0
    if [[ ! -f $img ]]; then
        truncate -s "${LAB_DATA_SIZE:-8G}" "$img"
        mkfs.ext4 -q -F -i 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$img" || die "mkfs.ext4 $img failed"
    fi
    mount -o loop "$img" "$d" || die "cannot mount $img on $d"
    chmod 755 "$d"
}

# The holder: `sleep infinity` in the host's netns and its own (private) mount namespace.
ensure_holder() {
    local h=$1 hn pid
    hn=$(ns_name "$h")
    mkdir -p "$RUN/$h"
    if pid=$(holder_pid "$h"); then
        # Alive, but is it still in this host's netns (the netns could have been recreated)?
        if [[ $(readlink "/proc/$pid/ns/net") == "$(netns_id "$h")" ]]; then return 0; fi
    fi
    # No (usable) holder: whatever still runs for this host lives in a lost namespace; start over.
    kill_wait $(host_pids "$h") || true
    rm -f "$RUN/$h"/*.pid
    local pf=$RUN/$h/holder.pid
    rm -f "$pf.tmp"
    detached setsid -f nsenter --net="/run/netns/$hn" -- unshare -m --propagation private -- \
        /bin/sh -c 'echo $$ >"$0.tmp"; exec sleep infinity' "$pf" </dev/null >/dev/null 2>&1
    wait_for "$h namespace holder" 10 test -s "$pf.tmp" || die "holder of $h did not start"
    pid=$(cat "$pf.tmp")
    write_pidfile "$pf" "$pid"
    rm -f "$pf.tmp"
    # Inside the new mount namespace: drop the copies of /run/netns (they would keep other labs'
    # namespaces alive), then give the host its own /run (rpcbind's socket path is fixed).
    local setup="umount -l /run/netns 2>/dev/null || true
mkdir -p /run /srv /mnt
mount -t tmpfs -o mode=0755,size=16m lab-run /run
mkdir -p /run/lock /run/mount /run/sshd /run/rpcbind /run/ganesha
chmod 0755 /run/sshd"
    case $h in
        primary|backup)
            setup="$setup
mount -t tmpfs -o mode=0755,size=1m lab-srv /srv
mkdir -p $EXPORT
mount --bind $STATE/$h/data $EXPORT" ;;
        web)
            setup="$setup
mount -t tmpfs -o mode=0755,size=1m lab-mnt /mnt
mkdir -p $WEB_MOUNT"
            # The uml guest's root is this mount namespace's /: it must see the real mount.nfs.
            [[ $WEB_KIND == uml ]] || setup="$setup
mount -t overlay lab-sbin -o lowerdir=$RUN/web/sbin:/usr/sbin /usr/sbin
if [ ! -L /sbin ]; then mount -t overlay lab-sbin -o lowerdir=$RUN/web/sbin:/sbin /sbin; fi" ;;
    esac
    nsenter -t "$pid" -m -n -- /bin/sh -ec "$setup" || die "setting up the mount namespace of $h failed"
}

install_mount_standin() {
    local d=$RUN/web/sbin
    mkdir -p "$d"
    sed -e "s|@IDENTITY@|$STATE/ssh/id_ed25519|" -e "s|@RUNDIR@|$RUN/web|" \
        "$SCRIPT_DIR/lab/mount.nfs" >"$d/mount.nfs.tmp"
    chmod 755 "$d/mount.nfs.tmp"
    if [[ ! -e $d/mount.nfs ]]; then
        mv "$d/mount.nfs.tmp" "$d/mount.nfs"
    else
        # In place: the file is an overlay lower layer of a running web host; keep its inode.
        cmp -s "$d/mount.nfs.tmp" "$d/mount.nfs" || cat "$d/mount.nfs.tmp" >"$d/mount.nfs"
        rm -f "$d/mount.nfs.tmp"
    fi
    ln -sfn mount.nfs "$d/mount.nfs4"
}

# ---------------------------------------------------------------------------------------------------
# The web host as a user-mode-linux guest (LAB_WEB=uml)

uml_spool() { echo "$RUN/web/spool"; }

# The LD_PRELOAD shim UML 6.1 needs on hosts with a large XSAVE area (AVX-512/AMX; see its source),
# built once per source version into $BASE.
uml_shim() {
    local src=$SCRIPT_DIR/lab/uml-xstate.c so sum
    sum=$(sha256sum "$src" | cut -c1-16)
    so=$BASE/uml-xstate-$sum.so
    if [[ ! -s $so ]]; then
        cc -O2 -Wall -shared -fPIC -o "$so.tmp.$$" "$src" -ldl >&2 || die "cannot build $src (cc)"
        mv "$so.tmp.$$" "$so"
    fi
    echo "$so"
}

# Boot the guest inside the web namespace (its holder's mount namespace: hostfs root = that /).
# Guest RAM is a deleted file in TMPDIR: /dev/shm (a tmpfs). The UML kernel is the pid in uml.pid,
# leader of its own process group (spawn uses setsid), which holds every guest process.
start_uml() {
    local r=$RUN/web spool
    spool=$(uml_spool)
    rm -rf "$spool" "$r/uml"
    mkdir -p "$spool/jobs" "$spool/tmp" "$r/uml"
    cp "$SCRIPT_DIR/lab/uml-init" "$r/uml-init"
    chmod 755 "$r/uml-init"
    : >"$r/uml.log"
    command -v linux.uml >/dev/null || die "linux.uml missing (package user-mode-linux)"
    local shim
    shim=$(uml_shim)
    log "web: booting the user-mode-linux guest (console: $r/uml.log)"
    spawn web uml env HOME="$r/uml" TMPDIR=/dev/shm LD_PRELOAD="$shim" linux.uml mem=256M uml_dir="$r/uml" umid=web \
        root=/dev/root rootfstype=hostfs rootflags=/ ro init="$r/uml-init" \
        con0=fd:0,fd:1 con=null ssl=null vec0:transport=tap,ifname=tap0,gro=1 \
        LAB_SPOOL="$spool" LAB_SHARE="$STATE" LAB_IP="${IP[web]}" LAB_PREFIX=24 LAB_HOSTNAME=web
}

uml_ready() { [[ -e $(uml_spool)/ready ]] && daemon_pid web uml >/dev/null; }

# Wait for the guest's init to report ready; fail loudly with its console log otherwise.
wait_uml() {
    local r=$RUN/web end=$(( $(now_ms) + UML_DEADLINE * 1000 ))
    while ! uml_ready; do
        if ! daemon_pid web uml >/dev/null || [[ -e $(uml_spool)/failed ]] || (( $(now_ms) > end )); then
            echo "lab.sh[$LAB]: error: web: the user-mode-linux guest did not come up within ${UML_DEADLINE}s" \
                "($(cat "$(uml_spool)/failed" 2>/dev/null || echo "uml pid alive: $(daemon_pid web uml || echo no)"))" >&2
            echo "--- console ($r/uml.log), last 60 lines:" >&2
            tail -n 60 "$r/uml.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# Power the guest off (poweroff -f, as a channel job nobody waits for), then SIGKILL the UML kernel's
# process group. Bounded: a frozen guest gets the SIGKILL after 3 s.
stop_uml() {
    local pid spool job
    pid=$(daemon_pid web uml) || return 0
    spool=$(uml_spool)
    if [[ -e $spool/ready ]]; then
        job=$spool/tmp/poweroff.$$
        mkdir -p "$job" && printf '%s\0' poweroff -f >"$job/argv" && printf 'PATH=%s\0' "$PATH" >"$job/env" && echo / >"$job/cwd" &&
            mv "$job" "$spool/jobs/" 2>/dev/null || true
        _uml_gone() { ! pid_alive "$1"; }
        wait_for "the web guest to power off" 3 _uml_gone "$pid" || true
    fi
    rm -f "$spool/ready"
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -CONT -- "-$pid" 2>/dev/null || true
    kill_wait "$pid" || true
    # Host-side clients of the channel (scripts/lab/uml-exec, its watcher and tails) in the root
    # namespace: they exit when `ready` goes; do not let a slow one outlive the lab.
    local p clients=()
    for p in $(grep -lF -- "$spool/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
        [[ $p != "$$" && $p != "$BASHPID" ]] && clients+=("$p")
    done
    (( ${#clients[@]} == 0 )) || kill_wait "${clients[@]}" || true
}

# webx CMD...: run CMD in the web host, whatever it is.
webx() {
    if [[ $WEB_KIND == uml ]]; then
        "$SCRIPT_DIR/lab/uml-exec" "$(uml_spool)" "$@"
    else
        hx web "$@"
    fi
}

# ---------------------------------------------------------------------------------------------------
# Daemons and readiness

check_rpcbind() { hx "$1" timeout -s KILL 3 rpcinfo -T tcp "${IP[$1]}" 100000 4; }
check_nfs() {
    hx "$1" timeout -s KILL 3 rpcinfo -T tcp "${IP[$1]}" 100003 3 &&
    hx "$1" timeout -s KILL 3 rpcinfo -T tcp "${IP[$1]}" 100003 4
}
check_rsyncd() {
    hx "$1" timeout -s KILL 10 rsync --contimeout=3 --timeout=5 --password-file="$STATE/rsync.pass" \
        "rsync://$RSYNC_USER@${IP[$1]}/$RSYNC_MODULE/"
}
check_banner() { # HOST PORT PREFIX
    hx "$1" timeout -s KILL 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && IFS= read -r -t 2 l <&3 && [[ $l == "$2"* ]]' \
        "${IP[$1]}" "$2" "$3"
}
check_tcp() { hx "$1" timeout -s KILL 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "${IP[$1]}" "$2"; }
check_sshd() { check_banner "$1" 22 SSH-2.0; }
check_smtpd() { check_banner "$1" 25 220 && check_banner "$1" 587 220 && check_tcp "$1" 465; }

ensure_daemons() {
    local h=$1 ip=${IP[$1]}
    case $h in
        primary|backup)
            local restarted_rpcbind=
            if ! daemon_pid "$h" rpcbind >/dev/null; then
                log "$h: starting rpcbind"
                rm -f "$RUN/$h/rpcbind.log"
                spawn "$h" rpcbind rpcbind -f
                restarted_rpcbind=1
                wait_for "$h rpcbind" 20 check_rpcbind "$h" || die "rpcbind on $h does not answer"
            fi
            if [[ -n $restarted_rpcbind ]] && daemon_pid "$h" ganesha >/dev/null; then
                # ganesha registered with the old rpcbind: restart it so it registers again.
                kill_wait "$(daemon_pid "$h" ganesha)" || true
            fi
            if ! daemon_pid "$h" ganesha >/dev/null; then
                log "$h: starting nfs-ganesha"
                spawn "$h" ganesha ganesha.nfsd -F -f "$RUN/$h/ganesha.conf" -L "$RUN/$h/ganesha.log" \
                    -p "$RUN/$h/ganesha.ownpid" -N NIV_EVENT
            fi
            if ! daemon_pid "$h" rsyncd >/dev/null; then
                log "$h: starting rsync daemon"
                spawn "$h" rsyncd rsync --daemon --no-detach --address="$ip" --port=873 \
                    --config="$RUN/$h/rsyncd.conf"
            fi
            if ! daemon_pid "$h" sshd >/dev/null; then
                log "$h: starting sshd"
                spawn "$h" sshd /usr/sbin/sshd -D -e -f "$RUN/$h/sshd_config"
            fi
            ;;
        mail)
            if ! daemon_pid "$h" smtpd >/dev/null; then
                log "$h: starting smtpd"
                mkdir -p "$STATE/mail/tmp" "$STATE/mail/new" "$STATE/mail/cur"
                cp "$SCRIPT_DIR/lab/smtpd.py" "$RUN/mail/smtpd.py"
                spawn "$h" smtpd /usr/bin/python3 "$RUN/mail/smtpd.py" --addr "$ip" \
                    --maildir "$STATE/mail" --cert "$STATE/tls/server-chain.pem" \
                    --key "$STATE/tls/server.key" --user "$SMTP_USER" --password-file "$STATE/smtp.pass"
            fi
            ;;
        web)
            if [[ $WEB_KIND == uml ]] && ! daemon_pid web uml >/dev/null; then start_uml; fi
            ;;
    esac
}

# wait until every service of the host answers (checked from inside the host)
wait_ready() {
    local h=$1 d=$UP_DEADLINE
    case $h in
        primary|backup)
            wait_for "$h rpcbind" "$d" check_rpcbind "$h" || die_log "$RUN/$h/rpcbind.log" "$h: rpcbind does not answer"
            wait_for "$h nfs-ganesha (NFS v3+v4 NULL)" "$d" check_nfs "$h" || die_log "$RUN/$h/ganesha.log" "$h: nfs-ganesha does not answer"
            wait_for "$h rsync daemon" "$d" check_rsyncd "$h" || die_log "$RUN/$h/rsyncd.log" "$h: rsync daemon does not answer"
            wait_for "$h sshd" "$d" check_sshd "$h" || die_log "$RUN/$h/sshd.log" "$h: sshd does not answer"
            ;;
        mail)
            wait_for "mail smtpd" "$d" check_smtpd "$h" || die_log "$RUN/mail/smtpd.log" "mail: smtpd does not answer"
            ;;
        web)
            if [[ $WEB_KIND == uml ]]; then
                wait_uml
            else
                hx web test -x /sbin/mount.nfs || die "web: mount.nfs stand-in missing"
            fi
            ;;
    esac
    local daemon
    for daemon in $(daemons_of "$h"); do
        daemon_pid "$h" "$daemon" >/dev/null || die_log "$RUN/$h/$daemon.log" "$h: $daemon died"
    done
}

# The switch port of the host forwards and the host's link is up.
link_ready() {
    local h=$1
    ip -n "$(ns_name "$h")" link show eth0 | grep -q 'LOWER_UP' &&
    bridge -n "$(ns_name sw)" link show dev "$(sw_port "$h")" | grep -q 'state forwarding'
}

faults_file() { echo "$RUN/$1/faults"; }

# ---------------------------------------------------------------------------------------------------
# Commands

cmd_up() {
    require_root
    ensure_tools
    lock_lab
    local x
    x=$(registry_locked _alloc_subnet) || die "could not allocate a subnet"
    load_ips "$x"
    resolve_web_kind
    local t0 h
    t0=$(now_ms)
    mkdir -p "$STATE" "$RUN"
    ensure_secrets
    write_lab_env
    ensure_network
    for h in "${STORAGE[@]}"; do write_storage_configs "$h"; ensure_data_fs "$h"; done
    mkdir -p "$RUN/web" "$RUN/mail" "$STATE/mail/tmp" "$STATE/mail/new" "$STATE/mail/cur"
    install_mount_standin
    for h in "${HOSTS[@]}"; do clear_faults "$h"; done
    for h in "${HOSTS[@]}"; do ensure_holder "$h"; done
    for h in "${HOSTS[@]}"; do ensure_daemons "$h"; done
    # Readiness of all hosts in parallel; then, across the switch, web reaches every host.
    local -A waiters=()
    for h in "${HOSTS[@]}"; do
        (
            wait_for "$h link" 10 link_ready "$h" || die "$h: link not ready"
            wait_ready "$h"
            if [[ $h != web ]]; then
                [[ $WEB_KIND == sshfs ]] || wait_for "the web guest" "$UML_DEADLINE" uml_ready || die "web is not up"
                wait_for "ping web -> $h" 20 webx ping -n -q -c1 -W1 "${IP[$h]}" || die "web cannot ping $h"
            fi
        ) &
        waiters[$h]=$!
    done
    local failed=
    for h in "${HOSTS[@]}"; do wait "${waiters[$h]}" || failed="$failed $h"; done
    [[ -z $failed ]] || die "not ready:$failed (see above)"
    log "up in $(( $(now_ms) - t0 )) ms: primary=${IP[primary]} backup=${IP[backup]} web=${IP[web]} mail=${IP[mail]} state=$STATE"
}

cmd_down() {
    require_root
    lock_lab
    local x h hn p
    x=$(registered_subnet)
    [[ -z $x && -f $STATE/lab.env ]] && x=$(sed -n 's/^LAB_INDEX=//p' "$STATE/lab.env")
    stop_uml
    # 1. every process of every host (holders included), plus anything from our pidfiles
    local -a pids=()
    for h in "${HOSTS[@]}"; do pids+=($(host_pids "$h")); done
    pids+=($(ns_pids sw))
    if (( ${#pids[@]} )); then
        kill_wait "${pids[@]}" || die "could not kill all processes of lab $LAB"
    fi
    # 2. namespaces (their veths and bridge go with them)
    local -a all=("$(ns_name sw)")
    for h in "${HOSTS[@]}"; do all+=("$(ns_name "$h")"); done
    registry_locked _netns_del "${all[@]}"
    # 3. root-namespace route
    if [[ -n $x ]] && ip route show "10.203.$x.0/24" | grep -q '^unreachable'; then
        ip route del unreachable "10.203.$x.0/24" || true
    fi
    # 4. anything mounted under the state dir in the root namespace (should be nothing)
    if [[ -d $STATE ]]; then
        local m
        while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
            awk -v s="$STATE" 'index($2, s) == 1 { print $2 }' /proc/self/mounts | sort -r)
        rm -rf --one-file-system "$STATE"
    fi
    # 5. registry entry and lock
    registry_locked _free_subnet
    rm -f "$BASE/.$LAB.lock"
    log "down"
}

cmd_env() {
    load_env_or_die
    local k v
    while IFS='=' read -r k v; do
        printf '%s=%q\n' "$k" "$v"
    done <"$STATE/lab.env"
}

cmd_status() {
    if [[ ! -f $STATE/lab.env ]]; then echo "lab $LAB: down"; return 0; fi
    load_env_or_die
    echo "lab $LAB: subnet $SUBNET, state $STATE"
    local h d p hp faults n
    for h in "${HOSTS[@]}"; do
        faults=$(cat "$(faults_file "$h")" 2>/dev/null | tr '\n' ' ' || true)
        if hp=$(holder_pid "$h"); then
            n=$(ns_pids "$h" | wc -l)
            printf '  %-8s %-12s holder=%s procs=%s%s\n' "$h" "${IP[$h]}" "$hp" "$n" "${faults:+ faults: $faults}"
        else
            printf '  %-8s %-12s NO HOLDER%s\n' "$h" "${IP[$h]}" "${faults:+ faults: $faults}"
        fi
        for d in $(daemons_of "$h"); do
            if p=$(daemon_pid "$h" "$d"); then
                printf '      %-8s pid %-7s state %s\n' "$d" "$p" "$(proc_state "$p")"
            else
                printf '      %-8s DOWN\n' "$d"
            fi
        done
    done
}

cmd_exec() {
    (( $# >= 2 )) || usage
    local h=$1; shift
    is_host "$h" || die "unknown host '$h' (hosts: ${HOSTS[*]})"
    local pid
    pid=$(holder_pid "$h") || die "host $h of lab $LAB is not up"
    load_env_or_die
    if [[ $h == web && $WEB_KIND == uml ]]; then exec "$SCRIPT_DIR/lab/uml-exec" "$(uml_spool)" "$@"; fi
    exec nsenter -t "$pid" -m -n --wd=. -- "$@"
}

nft_fault() { # HOST drop|reject
    local h=$1 kind=$2 rules
    if [[ $kind == drop ]]; then
        rules='
table inet ngl_fault {
  chain in { type filter hook input priority -300; policy accept; iifname "eth0" drop; }
  chain out { type filter hook output priority -300; policy accept; oifname "eth0" drop; }
}'
    else
        rules='
table inet ngl_fault {
  chain in {
    type filter hook input priority -300; policy accept;
    iifname "eth0" meta l4proto tcp reject with tcp reset
    iifname "eth0" reject with icmpx type admin-prohibited
  }
  chain out {
    type filter hook output priority -300; policy accept;
    # let out the RSTs and ICMP errors generated by the rejects above
    oifname "eth0" tcp flags & rst == rst accept
    oifname "eth0" icmp type destination-unreachable accept
    oifname "eth0" meta l4proto tcp reject with tcp reset
    oifname "eth0" reject with icmpx type admin-prohibited
  }
}'
    fi
    if [[ $h == web && $WEB_KIND == uml ]]; then
        # The guest's frames are bridged (tap0 <-> eth0) in the web namespace: filter them there.
        if [[ $kind == drop ]]; then
            rules='
table bridge ngl_fault {
  chain fwd { type filter hook forward priority -300; policy accept; drop; }
}'
        else
            rules='
table bridge ngl_fault {
  chain fwd {
    type filter hook forward priority -300; policy accept;
    meta l4proto tcp reject with tcp reset
    reject with icmpx type admin-prohibited
  }
}'
        fi
    fi
    nsexec_net "$(ns_name "$h")" nft delete table inet ngl_fault 2>/dev/null || true
    nsexec_net "$(ns_name "$h")" nft delete table bridge ngl_fault 2>/dev/null || true
    nsexec_net "$(ns_name "$h")" nft -f - <<<"$rules"
}

cmd_fault() {
    (( $# == 2 )) || usage
    local h=$1 kind=$2
    is_host "$h" || die "unknown host '$h' (hosts: ${HOSTS[*]})"
    require_root
    lock_lab
    lab_is_up_or_die
    holder_pid "$h" >/dev/null || die "host $h is not up"
    local -a pids
    case $kind in
        freeze)
            if [[ $h == web && $WEB_KIND == uml ]]; then
                # Stop the UML kernel only: a signal-stop of its ptraced children kills the guest
                # ("child stopped with signal 19"); without their tracer they stop at their next trap.
                local up
                up=$(daemon_pid web uml) || die "freeze web: the uml guest is not running"
                kill -STOP "$up"
                echo "$kind" >>"$(faults_file "$h")"
                log "fault $kind on $h"
                return 0
            fi
            # Repeat until no process of the host is left running (a stopped parent cannot fork, but
            # a child forked just before could be missed by one pass).
            local p st left
            for _ in 1 2 3 4 5; do
                left=0
                for p in $(ns_pids "$h"); do
                    st=$(proc_state "$p" 2>/dev/null) || continue
                    [[ $st == T || $st == t || $st == Z || $st == X ]] && continue
                    kill -STOP "$p" 2>/dev/null || true
                    left=1
                done
                (( left )) || break
            done
            ;;
        kill)
            local holder
            holder=$(holder_pid "$h")
            pids=()
            for p in $(ns_pids "$h"); do [[ $p == "$holder" ]] || pids+=("$p"); done
            kill_wait "${pids[@]}" || die "kill on $h: some processes survive"
            ;;
        stop-nfs|stop-rsyncd)
            is_storage "$h" || die "$kind applies to storage hosts (primary, backup) only"
            # sshd is the data path of web's mount stand-in, so it is part of "NFS" here: with
            # ganesha alone gone, mounted shares would keep working.
            local d roots=()
            if [[ $kind == stop-nfs ]]; then d="ganesha sshd"; else d=rsyncd; fi
            for d in $d; do p=$(daemon_pid "$h" "$d") && roots+=("$p"); done
            if (( ${#roots[@]} )); then
                pids=($(tree_pids "$h" "${roots[@]}"))
                kill_wait "${pids[@]}" || die "$kind on $h: some daemons survive"
            fi
            ;;
        blackhole) nft_fault "$h" drop ;;
        reject) nft_fault "$h" reject ;;
        unplug) ip -n "$(ns_name sw)" link set "$(sw_port "$h")" down ;;
        *) die "unknown fault '$kind' (freeze kill stop-nfs stop-rsyncd blackhole reject unplug)" ;;
    esac
    echo "$kind" >>"$(faults_file "$h")"
    log "fault $kind on $h"
}

# Undo every fault of a host: SIGCONT, no nftables fault table, links up.
clear_faults() {
    local h=$1 p
    # Only stopped processes: a SIGCONT to a uml guest's ptraced children kills the guest
    # ("userspace - child stopped with signal 18", then init dies).
    for p in $(ns_pids "$h"); do
        [[ $(proc_state "$p" 2>/dev/null) == T ]] && kill -CONT "$p" 2>/dev/null
    done
    nsexec_net "$(ns_name "$h")" nft delete table inet ngl_fault 2>/dev/null || true
    nsexec_net "$(ns_name "$h")" nft delete table bridge ngl_fault 2>/dev/null || true
    ip -n "$(ns_name sw)" link set "$(sw_port "$h")" up
    ip -n "$(ns_name "$h")" link set eth0 up
    rm -f "$(faults_file "$h")"
}

cmd_heal() {
    (( $# == 1 )) || usage
    local h=$1
    is_host "$h" || die "unknown host '$h' (hosts: ${HOSTS[*]})"
    require_root
    lock_lab
    lab_is_up_or_die
    clear_faults "$h"
    ensure_holder "$h"
    ensure_daemons "$h"
    wait_for "$h link" 10 link_ready "$h" || die "$h: link not ready"
    wait_ready "$h"
    log "healed $h"
}

main() {
    (( $# >= 1 )) || usage
    local cmd=$1; shift
    case $cmd in
        up) (( $# == 0 )) || usage; cmd_up ;;
        down) (( $# == 0 )) || usage; cmd_down ;;
        status) cmd_status ;;
        env) cmd_env ;;
        exec) cmd_exec "$@" ;;
        fault) cmd_fault "$@" ;;
        heal) cmd_heal "$@" ;;
        -h|--help|help) usage ;;
        *) usage ;;
    esac
}

main "$@"
