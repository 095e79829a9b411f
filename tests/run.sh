#!/usr/bin/env bash
# Runs the whole test suite against real peers, installing missing peers
# first. This is the command README.md and .ci/run use.
#
#   bash tests/run.sh            # everything
#   bash tests/run.sh -E 'package(sealbroker-e2e)'   # extra args go to nextest
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
peers_env=$(mktemp)
trap 'rm -f "$peers_env"' EXIT
bash tests/peers/install.sh "$peers_env"
# shellcheck disable=SC1090
source "$peers_env"

if [ "${CI:-}" = "true" ]; then
  # A clean clone builds once, so incremental state (about 2.4 GB) is never
  # reused, and line tables for every dependency only swell the ~400 test and
  # tool binaries. CI machines' disks are not always roomy: one run died with
  # "No space left on device" while linking the tests.
  export CARGO_INCREMENTAL=0
  export CARGO_PROFILE_DEV_DEBUG=false
  echo "disk: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')" >&2
fi

echo "== build" >&2
# --all-targets builds the test binaries too, so nextest below compiles nothing.
cargo build --workspace --all-targets --locked
built=$(date +%s)

if [ "${CI:-}" = "true" ]; then
  echo "== lint" >&2
  cargo fmt --all --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

if [ "${CI:-}" = "true" ]; then
  echo "== deploy: render every kustomize overlay offline" >&2
  bash deploy/render-check.sh
fi

if [ "${CI:-}" = "true" ] || [ -n "${SEALBROKER_IMAGES:-}" ]; then
  # One release build; the images built twice from it must be identical and
  # match deploy/images.env and the Hardened overlay. tests/tests/images.rs
  # then pushes these images (else it builds its own from the debug binaries).
  echo "== images: release build, two image builds, pinned digests" >&2
  images_started=$(date +%s)
  bash images/check.sh target/images
  export SEALBROKER_IMAGES_DIR="$PWD/target/images/a"
  # The release binaries are in the images now; nothing else reads them.
  if [ "${CI:-}" = "true" ]; then rm -rf target/release; fi
  echo "timing: images $(( $(date +%s) - images_started ))s" >&2
fi

if [ "${CI:-}" = "true" ] || [ -n "${SEALBROKER_FUZZ:-}" ]; then
  # Bounded runs of every fuzz target; the long runs are reported in the
  # issues' closing notes.
  seconds=${FUZZ_SECONDS:-15}
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
  echo "== fuzz: KMIP TTLV decoder for ${seconds}s" >&2
  CARGO_TARGET_DIR="$PWD/target/fuzz" bash crates/sealbroker-ttlv/fuzz/run.sh "$seconds" 2>&1 | tail -n 12
  echo "== fuzz: KMIP backend response parser for ${seconds}s" >&2
  CARGO_TARGET_DIR="$PWD/target/fuzz" bash backends/kmip/fuzz/run.sh "$seconds" 2>&1 | tail -n 12
  echo "== fuzz: PKCS#11 helper protocol for ${seconds}s" >&2
  CARGO_TARGET_DIR="$PWD/target/fuzz" bash backends/pkcs11/fuzz/run.sh "$seconds" 2>&1 | tail -n 12
  echo "== fuzz: blob decoder, key ring unwrap, External Keys decoders, ${seconds}s each" >&2
  CARGO_TARGET_DIR="$PWD/target/fuzz" bash crates/sealbroker-core/fuzz/run.sh "$seconds" 2>&1 | tail -n 30
  echo "== fuzz: transit HTTP, KMS v2, KMS plugin, config parser, KMIP door, ${seconds}s each" >&2
  CARGO_TARGET_DIR="$PWD/target/fuzz" bash crates/sealbroker-server/fuzz/run.sh "$seconds" 2>&1 | tail -n 30
  if [ "${CI:-}" = "true" ]; then rm -rf target/fuzz; fi
fi

echo "timing: peers+build $((built - started))s, until tests $(( $(date +%s) - started ))s" >&2
if [ "${CI:-}" = "true" ]; then
  echo "disk: target $(du -sh target | cut -f1), $(df -h . | awk 'NR==2 {print $4}') free" >&2
fi
echo "== test" >&2
# Every log and audit trail the e2e tests produce is kept here and swept for
# the secrets they used (tests/sweep-secrets.sh).
export SEALBROKER_SWEEP_DIR="$PWD/target/secret-sweep/$(date +%Y%m%d-%H%M%S)-$$"
cargo nextest run --workspace --locked --profile "${NEXTEST_PROFILE:-default}" "$@"
if [ $# -eq 0 ]; then
  echo "== secret sweep" >&2
  bash tests/sweep-secrets.sh "$SEALBROKER_SWEEP_DIR"
  # Keeps bench/ working: every scenario for about a second, on the debug
  # build. It fails only if an operation or a scenario fails; its figures
  # mean nothing (docs/performance.md has the real runs).
  echo "== bench smoke" >&2
  target/debug/sealbroker-bench --smoke --sealbroker-bin target/debug/sealbroker >/dev/null
fi
