#!/usr/bin/env bash
# The whole-run secret sweep: greps every daemon and OpenBao log and audit
# trail the e2e tests kept in DIR for every secret they used. Secrets are
# those the harness listed in DIR/secrets.txt (PINs, tokens, unseal keys,
# stored secrets) plus the literal PINs, tokens and plaintexts in the test
# sources. Any hit fails, naming the file and the secret's first characters.
#
#   bash tests/sweep-secrets.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: sweep-secrets.sh DIR}

list=$(mktemp)
trap 'rm -f "$list"' EXIT
{
  [ -f "$dir/secrets.txt" ] && cat "$dir/secrets.txt"
  # Byte-string literals (plaintexts, canaries), and PIN/TOKEN/SECRET constants.
  grep -hoE 'b"[^"\\]{8,}"' tests/tests/*.rs | grep -vE '\(|HTTP/' | sed -E 's/^b"(.*)"$/\1/'
  grep -hoE 'const [A-Z_]*(PIN|TOKEN|SECRET)[A-Z_]*: &str = "[^"]{6,}"' tests/tests/*.rs tests/src/*.rs \
    | sed -E 's/.*= "(.*)"$/\1/'
} | awk 'length($0) >= 6' | sort -u >"$list"

files=$(find "$dir" -type f ! -name secrets.txt | wc -l)
secrets=$(wc -l <"$list")
if [ "$files" -eq 0 ]; then
  echo "sweep: no logs were kept in $dir; is SEALBROKER_SWEEP_DIR reaching the tests?" >&2
  exit 1
fi
hits=$(grep -rlF -f "$list" "$dir" --exclude=secrets.txt || true)
if [ -n "$hits" ]; then
  echo "sweep: secrets found in logs or audit trails:" >&2
  for file in $hits; do
    while IFS= read -r secret; do
      if grep -qF -- "$secret" "$file"; then
        echo "  $file: ${secret:0:4}…" >&2
      fi
    done <"$list"
  done
  exit 1
fi
echo "sweep: $secrets secrets, $files logs and audit trails, 0 hits" >&2
