#!/usr/bin/env bash
# Fuzzes the transit HTTP door, the KMS v2 and KMS plugin services, the KMIP
# door's request path, the
# config parser and the unix-socket :authority rewriter for a bounded time
# each, for CI. Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). The first build takes several minutes.
#
#   bash crates/sealbroker-server/fuzz/run.sh [SECONDS] [TARGET...]   # default 60 s, every target
#
# Seeds are real traffic: transit requests from hvac and OpenBao's
# `seal "transit"` (capture_transit.sh), KMS v2 and plugin requests encoded
# from the real protos, and the TOML blocks of the docs (`cargo run
# --manifest-path crates/sealbroker-server/fuzz/Cargo.toml --example seeds`).
# Inputs that once failed stay in regressions/ and are replayed first. The corpus
# the fuzzer grows stays in fuzz/corpus (git-ignored). A crash, hang or OOM leaves
# its input in fuzz/artifacts and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(transit_http kms_v2 kms_plugin config_parse h2_authority kmip_request)
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s" >&2
  mkdir -p "corpus/$target" "artifacts/$target"
  regressions=()
  [ -d "regressions/$target" ] && regressions=("regressions/$target")
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" "${regressions[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=8192 -timeout=10 -print_final_stats=1
done
