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

echo "== test" >&2
cargo nextest run --workspace --locked --profile "${NEXTEST_PROFILE:-default}" "$@"

echo "timing: peers+build $((built - started))s, total $(( $(date +%s) - started ))s" >&2
