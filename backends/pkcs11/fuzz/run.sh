#!/usr/bin/env bash
# Fuzzes the PKCS#11 helper protocol's decoders (backends/pkcs11/src/wire.rs)
# for a bounded time, for CI. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`).
#
#   bash backends/pkcs11/fuzz/run.sh [SECONDS]     # default 60
#
# Seeds are frame bodies of each message (seeds/make_seeds.py writes them);
# the corpus the fuzzer grows stays in fuzz/corpus (git-ignored). A crash
# leaves its input in fuzz/artifacts and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
mkdir -p corpus/wire_decode
# Inputs that once failed (regressions/) run first, every time.
exec cargo +nightly fuzz run wire_decode corpus/wire_decode seeds/wire_decode regressions/wire_decode -- \
  -max_total_time="$seconds" -rss_limit_mb=512 -max_len=4096 -print_final_stats=1
