#!/usr/bin/env bash
# Build the Debian package leasehold_VERSION_ARCH.deb into target/debian/:
# release binaries of the CLI, the daemon and the libvirt lock plugin, man
# pages and completions generated from their clap definitions, then
# cargo-deb (installed from crates.io if missing). Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO_DEB_VERSION=3.8.0
if ! command -v cargo-deb >/dev/null; then
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet >&2
fi
cargo build --release --quiet >&2 \
    -p leasehold-tools -p leasehold-daemon -p leasehold-lockdriver
rm -rf target/package-docs
target/release/leasehold-docgen target/package-docs
# (cargo-deb prints the path too: only ours goes to stdout.)
cargo deb -p leasehold-tools --no-build --strip --quiet --output target/debian/ >&2
realpath "$(ls -t target/debian/leasehold_*.deb | head -n 1)"
