#!/usr/bin/env bash
# THE test command (README, CI): installs what it needs, builds, then runs every tier:
# unit and component tests (in src/), binary tests (tests/cli.rs, tests/units.rs), and lab tests
# (tests/lab_*.rs, tests/storage_*.rs, tests/web_*.rs, tests/alert_*.rs) against real rsync daemons,
# nfs-ganesha, an SMTP server and real mounts in network namespaces. Lab tests need root; as a normal
# user this script re-runs itself with sudo, and it fails (never skips) when that is impossible.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -E "$0" "$@"; fi
  echo "test.sh: the lab tests need root (network namespaces, mounts); run as root" >&2
  exit 1
fi

scripts/install-deps.sh
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== format and lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
echo "== build"
cargo build --locked --all-targets
echo "== tests (unit, component, binary, lab)"
# Lab tests bring up their own uniquely named labs, so test binaries may run tests in parallel.
cargo test --locked --no-fail-fast -- "$@"
