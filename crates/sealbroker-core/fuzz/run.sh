#!/usr/bin/env bash
# Fuzzes the blob decoder, the key ring's unwrap and the External Keys
# decoders (ECDSA DER, raw public keys, SPKI DER and PEM, EC params) for a bounded time each,
# for CI. Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# The first build takes a few minutes.
#
#   bash crates/sealbroker-core/fuzz/run.sh [SECONDS] [TARGET...]   # default 60 s, every target
#
# Seeds are blobs from real wraps by software keys (regenerate them with
# `cargo run --manifest-path crates/sealbroker-core/fuzz/Cargo.toml --example seeds`);
# inputs that once failed stay in regressions/ and are replayed first. The corpus the
# fuzzer grows stays in fuzz/corpus (git-ignored). A crash, hang or OOM leaves its input
# in fuzz/artifacts and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(blob_decode keyring_unwrap signing_decode)
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s" >&2
  mkdir -p "corpus/$target" "artifacts/$target"
  regressions=()
  [ -d "regressions/$target" ] && regressions=("regressions/$target")
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" "${regressions[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=4096 -timeout=10 -print_final_stats=1
done
