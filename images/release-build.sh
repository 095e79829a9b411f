#!/usr/bin/env bash
# Builds the release binaries the images carry (sealbroker, which is also
# the KMS plugin, and sealbroker-operator), reproducibly: the same commit
# and toolchain give the same bytes wherever the checkout and the cargo
# home are. Prints the directory holding them.
#
#   bash images/release-build.sh        # → target/release (or $CARGO_TARGET_DIR/release)
#
# What makes it reproducible (docs/install.md, "Reproducible builds"):
#   --locked                 the dependency versions of Cargo.lock;
#   --remap-path-prefix      the checkout and $CARGO_HOME paths (they reach the
#                            binary through panic locations and line tables)
#                            become /build/sealbroker and /cargo;
#   CARGO_INCREMENTAL=0      no incremental state;
#   SOURCE_DATE_EPOCH        the last input commit's time, for any build script that stamps one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export CARGO_INCREMENTAL=0
# The time of the last commit that changed an input, as images/build.sh
# takes it: a commit that only pins digests in deploy/ (or touches docs or
# tests) changes neither the binaries nor the time, so nothing rebuilds.
inputs=(Cargo.toml Cargo.lock crates backends proto images)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct -- "${inputs[@]}" 2>/dev/null || echo 0)}
export RUSTFLAGS="--remap-path-prefix=$root=/build/sealbroker --remap-path-prefix=$cargo_home=/cargo"
echo "release-build: cargo build --release --locked -p sealbroker -p sealbroker-operator (RUSTFLAGS=$RUSTFLAGS)" >&2
cargo build --release --locked -p sealbroker -p sealbroker-operator >&2
echo "${CARGO_TARGET_DIR:-$root/target}/release"
