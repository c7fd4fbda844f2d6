#!/usr/bin/env bash
# Installs what nfs-guard's build, tests, lab, demo and benchmarks need on a Debian machine: the
# Debian packages whose binaries are missing, and a Rust toolchain check. Idempotent and cheap when
# everything is present; serialised across parallel callers (several labs starting at once).
set -euo pipefail

# "binary package" pairs: the package is installed only when its binary is missing.
NEED=(
  "ip iproute2" "bridge iproute2" "nsenter util-linux" "unshare util-linux" "flock util-linux"
  "setsid util-linux" "mount mount" "rsync rsync" "ganesha.nfsd nfs-ganesha" "rpcbind rpcbind"
  "rpcinfo rpcbind" "nfs-ls libnfs-utils" "sshfs sshfs" "sshd openssh-server"
  "ssh openssh-client" "ssh-keygen openssh-client" "fusermount3 fuse3" "nft nftables"
  "ping iputils-ping" "fuser psmisc" "openssl openssl" "timeout coreutils" "ps procps"
  "lsyncd lsyncd" "inotifywait inotify-tools" "systemd-analyze systemd"
  "mkfs.ext4 e2fsprogs" "mountpoint util-linux"
  # The web host as a user-mode-linux guest (a real kernel NFS client; the host kernel has none):
  # its kernel and NFS modules, busybox's insmod (the host has no kmod), mount.nfs and rpc.statd.
  "linux.uml user-mode-linux" "busybox busybox-static" "mount.nfs nfs-common" "rpc.statd nfs-common"
  "cc gcc"  # builds scripts/lab/uml-xstate.c, which UML 6.1 needs on AVX-512/AMX hosts
  # tests/metrics_lab.rs checks every scrape with `promtool check metrics` (its daemon is not started)
  "promtool prometheus"
  # The web farm's agreement (tests/farm_lab.rs): a real etcd cluster, and protoc for the
  # etcd-client crate's build script (it compiles etcd's .proto files).
  "etcd etcd-server"
  "etcdctl etcd-client"
  "protoc protobuf-compiler"
  # tests/agent_tls.rs makes a CA and a server certificate for the agent API's TLS
  "openssl openssl"
)
export PATH="$PATH:/usr/sbin:/sbin"

missing_packages() {
  local e
  for e in "${NEED[@]}"; do command -v "${e%% *}" >/dev/null 2>&1 || echo "${e#* }"; done
  compgen -G '/usr/lib/*/ganesha/libfsalvfs.so' >/dev/null \
    || compgen -G '/usr/lib/ganesha/libfsalvfs.so' >/dev/null || echo nfs-ganesha-vfs
  # aiosmtpd must be importable by Debian's python3 (a pyenv python3 earlier on PATH may lack it).
  [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || echo python3-aiosmtpd
}

mapfile -t missing < <(missing_packages | sort -u)
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] || { echo "install-deps: missing ${missing[*]} and not root" >&2; exit 1; }
  mkdir -p /var/tmp/nfs-guard-lab
  exec {lock}>>/var/tmp/nfs-guard-lab/install.lock
  flock -w 900 "$lock" || { echo "install-deps: timed out waiting for another install" >&2; exit 1; }
  mapfile -t missing < <(missing_packages | sort -u)   # another caller may have installed them
  if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    # Do not start the packages' own daemons in the root namespace: the lab runs its own.
    policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy=1
    fi
    rc=0
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"; } >&2 || rc=$?
    [[ -n $policy ]] && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || { echo "install-deps: apt-get install ${missing[*]} failed (exit $rc)" >&2; exit 1; }
    still=$(missing_packages)
    [[ -z $still ]] || { echo "install-deps: still missing after install: $still" >&2; exit 1; }
  fi
  exec {lock}>&-
fi

if ! command -v cargo >/dev/null 2>&1 && [[ ! -x $HOME/.cargo/bin/cargo ]]; then
  echo "install-deps: no Rust toolchain; installing Debian's cargo" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q cargo >&2
fi

# The test command checks formatting and lints too.
for c in clippy rustfmt; do
  sub=${c/rustfmt/fmt}
  if ! cargo "$sub" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    rustup component add "$c" >&2
  fi
done
