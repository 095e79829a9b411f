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

echo "== build" >&2
cargo build --workspace --locked
built=$(date +%s)

if [ "${CI:-}" = "true" ]; then
  echo "== lint" >&2
  cargo fmt --all --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

if [ "${CI:-}" = "true" ] || [ -n "${SEALBROKER_FUZZ:-}" ]; then
  echo "== fuzz: KMIP TTLV decoder for ${FUZZ_SECONDS:-30}s" >&2
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
  bash backends/kmip/fuzz/run.sh "${FUZZ_SECONDS:-30}" 2>&1 | tail -n 12
fi

echo "timing: peers+build $((built - started))s, until tests $(( $(date +%s) - started ))s" >&2
echo "== test" >&2
# Every log and audit trail the e2e tests produce is kept here and swept for
# the secrets they used (tests/sweep-secrets.sh).
export SEALBROKER_SWEEP_DIR="$PWD/target/secret-sweep/$(date +%Y%m%d-%H%M%S)-$$"
cargo nextest run --workspace --locked --profile "${NEXTEST_PROFILE:-default}" "$@"
if [ $# -eq 0 ]; then
  echo "== secret sweep" >&2
  bash tests/sweep-secrets.sh "$SEALBROKER_SWEEP_DIR"
fi
