#!/usr/bin/env bash
# Installs what nfs-guard's build, tests, lab and demo need on a Debian machine: the apt packages
# (only those missing) and a Rust toolchain check. Idempotent; safe to run on every test run.
set -euo pipefail

# binary-to-check:package pairs; a package is installed only when its binary is missing.
NEEDS=(
  rsync:rsync
  ganesha.nfsd:nfs-ganesha
  /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so:nfs-ganesha-vfs
  rpcbind:rpcbind
  rpcinfo:rpcbind
  nfs-ls:libnfs-utils
  sshfs:sshfs
  sshd:openssh-server
  ssh:openssh-client
  fusermount3:fuse3
  ip:iproute2
  nft:nftables
  fuser:psmisc
  pkill:procps
  ping:iputils-ping
  unshare:util-linux
  nsenter:util-linux
  openssl:openssl
  lsyncd:lsyncd
  systemd-analyze:systemd
  flock:util-linux
)

missing=()
for pair in "${NEEDS[@]}"; do
  bin=${pair%%:*} pkg=${pair#*:}
  if [[ $bin == /* ]]; then [[ -e $bin ]] && continue
  else PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 && continue; fi
  missing+=("$pkg")
done
# aiosmtpd is a Python module of Debian's python3, not a binary.
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(python3-aiosmtpd)

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages ${missing[*]} and not root; run as root" >&2
    exit 1
  fi
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: installing Debian's cargo (no rustup toolchain found)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo >/dev/null
fi
