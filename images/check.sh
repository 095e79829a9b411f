#!/usr/bin/env bash
# CI's check of the images (#24), on one release build:
#   1. builds the images twice from the same binaries: the two OCI layouts
#      must be identical, blob for blob;
#   2. the digests must be the ones committed in deploy/images.env;
#   3. the rendered Hardened overlay must name the sealbroker images by
#      exactly those digests (and the plugin by its SHA-256), nothing else.
# Leaves the layout in OUT_DIR/a for the e2e tests (SEALBROKER_IMAGES_DIR).
#
#   bash images/check.sh OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

started=$(date +%s)
bin_dir=$(bash "$here/release-build.sh")
built=$(date +%s)
bash "$here/build.sh" "$bin_dir" "$out/a" 2>"$out/build-a.log" || { cat "$out/build-a.log" >&2; exit 1; }
bash "$here/build.sh" "$bin_dir" "$out/b" 2>"$out/build-b.log" || { cat "$out/build-b.log" >&2; exit 1; }
if ! diff -r "$out/a" "$out/b" >"$out/twice.diff"; then
  echo "images: two builds from the same binaries differ:" >&2
  head -n 20 "$out/twice.diff" >&2
  exit 1
fi
echo "images: built twice, identical: $(grep -c '^SEALBROKER' "$out/a/digests.env") digests" >&2
echo "timing: release build $((built - started))s, two image builds $(( $(date +%s) - built ))s" >&2

if ! diff <(grep -v '^#' "$root/deploy/images.env") <(grep -v '^#' "$out/a/digests.env") >&2; then
  echo "images: deploy/images.env (<) is not what this commit builds (>): run" >&2
  echo "  bash images/pin.sh $out/a/digests.env" >&2
  echo "and commit deploy/ on its own (docs/install.md, \"Upgrading\")" >&2
  exit 1
fi

# shellcheck disable=SC1091
source "$out/a/digests.env"
bash "$root/deploy/render-check.sh" "$out/rendered" 2>"$out/render.log" || { cat "$out/render.log" >&2; exit 1; }
rendered=$out/rendered/hardened.yaml
fail=0
# Every `image:` (containers, and the SealBroker's spec.image) naming a sealbroker image.
refs=$(grep -E '^ *(- )?image: ' "$rendered" | awk '{print $NF}' | tr -d '"' | grep -E '(^|/)sealbroker[^/]*$' | sort -u || true)
[ -n "$refs" ] || { echo "images: the Hardened overlay names no sealbroker image" >&2; exit 1; }
while read -r ref; do
  case $ref in
    */sealbroker-operator@"$SEALBROKER_OPERATOR_IMAGE_DIGEST") ;;
    */sealbroker@"$SEALBROKER_IMAGE_DIGEST") ;;
    */sealbroker-kms-plugin@"$SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST") ;;
    *) echo "images: the Hardened overlay names $ref, which is not a digest this commit builds" >&2; fail=1 ;;
  esac
done <<<"$refs"
if ! grep -qE "^  pluginSha256: \"?$SEALBROKER_PLUGIN_SHA256\"?$" "$rendered"; then
  echo "images: the Hardened SealBroker's pluginSha256 is not $SEALBROKER_PLUGIN_SHA256: $(grep pluginSha256: "$rendered" | tail -1)" >&2
  fail=1
fi
[ $fail -eq 0 ] || exit 1
echo "images: the Hardened overlay pins $(wc -l <<<"$refs") sealbroker image references, all this build's" >&2
