#!/usr/bin/env bash
# Fuzzes the KMIP backend's response parser for a bounded time, for CI.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The
# first build takes several minutes.
#
#   bash backends/kmip/fuzz/run.sh [SECONDS]     # default 60
#
# Seeds are the PyKMIP-encoded responses the TTLV decoder's target uses
# (crates/sealbroker-ttlv/fuzz/seeds/ttlv_decode); the corpus the fuzzer
# grows stays in fuzz/corpus (git-ignored). A crash leaves its input in
# fuzz/artifacts and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
mkdir -p corpus/kmip_response
exec cargo +nightly fuzz run kmip_response corpus/kmip_response ../../../crates/sealbroker-ttlv/fuzz/seeds/ttlv_decode -- \
  -max_total_time="$seconds" -rss_limit_mb=512 -max_len=4096 -print_final_stats=1
