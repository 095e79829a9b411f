#!/usr/bin/env bash
# Fuzzes the TTLV decoder and framing check for a bounded time, for CI.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The
# first build takes several minutes.
#
#   bash crates/sealbroker-ttlv/fuzz/run.sh [SECONDS]     # default 60
#
# Seeds are KMIP responses encoded by PyKMIP (regenerate them with
# backends/kmip/tests/golden/pykmip_seeds.py); the corpus the fuzzer grows
# stays in fuzz/corpus (git-ignored). A crash leaves its input in
# fuzz/artifacts and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
mkdir -p corpus/ttlv_decode
exec cargo +nightly fuzz run ttlv_decode corpus/ttlv_decode seeds/ttlv_decode -- \
  -max_total_time="$seconds" -rss_limit_mb=512 -max_len=4096 -print_final_stats=1
