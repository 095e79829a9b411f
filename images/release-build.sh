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
#   SOURCE_DATE_EPOCH        one fixed time, for any build script that stamps one.
#                            It is fixed rather than the commit's time because the
#                            `cc` crate's build scripts rerun when it changes, which
#                            made every new commit a near-full rebuild; the images'
#                            own times come from images/build.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export CARGO_INCREMENTAL=0
# 2000-01-01T00:00:00Z. Nothing we link stamps it into a binary today.
export SOURCE_DATE_EPOCH=946684800
export RUSTFLAGS="--remap-path-prefix=$root=/build/sealbroker --remap-path-prefix=$cargo_home=/cargo"
echo "release-build: cargo build --release --locked -p sealbroker -p sealbroker-operator (RUSTFLAGS=$RUSTFLAGS)" >&2
cargo build --release --locked -p sealbroker -p sealbroker-operator >&2
echo "${CARGO_TARGET_DIR:-$root/target}/release"
