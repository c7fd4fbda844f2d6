#!/usr/bin/env bash
# Builds the Debian package target/debian/nfs-guard_VERSION-1_ARCH.deb with cargo-deb
# ([package.metadata.deb] in Cargo.toml): the binary, the systemd units (installed, not enabled), the
# commented example configs under /usr/share/doc/nfs-guard/examples, a man page and shell completions
# generated from the clap definitions (`nfs-guard generate`), and the state dir made by postinst.
# Then lintian checks it (errors fail the build; warnings are shown).
#
#   scripts/package.sh          release build, package, lintian
#   scripts/package.sh --dev    package the debug binary already built (tests/package.rs: no release
#                               build, no lintian), into target/debian-dev/
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

dev=0
[[ ${1:-} == --dev ]] && dev=1

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi

if ((dev)); then
    profile=dev
    bin=${CARGO_TARGET_DIR:-target}/debug/nfs-guard
    out=target/debian-dev
    [[ -x $bin ]] || cargo build --locked
else
    profile=release
    bin=${CARGO_TARGET_DIR:-target}/release/nfs-guard
    out=target/debian
    scripts/install-deps.sh   # the build needs protoc (etcd-client) on a fresh machine
    cargo build --release --locked
fi

assets=target/package-assets
rm -rf "$assets"
mkdir -p "$assets" "$out"
"$bin" generate man | gzip -9n >"$assets/nfs-guard.1.gz"
"$bin" generate completions bash >"$assets/nfs-guard.bash"
"$bin" generate completions zsh >"$assets/_nfs-guard"
"$bin" generate completions fish >"$assets/nfs-guard.fish"

# release: the binary stripped, its debug info (line tables) in a separate nfs-guard-dbgsym .ddeb;
# a test package (--dev): speed over size
opts=(--dbgsym)
((dev)) && opts=(--fast --no-dbgsym)
deb=$(cargo deb --no-build --profile "$profile" "${opts[@]}" --output "$out" | grep '\.deb$' | tail -1)
echo "package: $deb" >&2

if ((!dev)); then
    if ! command -v lintian >/dev/null; then
        echo "package: installing lintian" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lintian >&2
    fi
    # Errors fail; warnings and infos are printed for the record.
    lintian --fail-on error --info "$deb"
fi
echo "$deb"
