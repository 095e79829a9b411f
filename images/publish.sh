#!/usr/bin/env bash
# Publishes one build of the images to a registry, signed: what a release
# does after images/build.sh (docs/install.md, "Publishing a release").
#
#   bash images/publish.sh [--plain-http] [--tag TAG] [--assets DIR] OUT_DIR REGISTRY KEY PASSPHRASE_FILE
#
#   OUT_DIR          images/build.sh's output (layout/, digests.env, sbom/)
#   REGISTRY         host[:port][/path] the repositories go under
#   KEY              the release key (images/sign.py keygen), ECDSA P-256
#   --plain-http     the registry speaks plain HTTP (loopback test registries)
#   --tag TAG        the tag pushed beside each digest (default: rev-<12 hex>
#                    of the images' revision label)
#   --assets DIR     where the plugin release assets go (default OUT_DIR/release)
#
# For each image (REGISTRY/sealbroker, /sealbroker-operator,
# /sealbroker-kms-plugin) it pushes, digest preserved:
#   :TAG                   the image, checked to have digests.env's digest;
#   :sha256-<hex>.sig      its signature (images/sign.py sign);
#   :sha256-<hex>.sbom     its CycloneDX SBOM (images/sign.py attach-sbom),
#                          and that attachment's own signature.
# and writes the plugin release assets to OUT_DIR/release/ (or --assets):
#   sealbroker             the plugin binary, taken out of the plugin image
#                          and checked against SEALBROKER_PLUGIN_SHA256;
#   sealbroker.sig         its detached signature (images/sign.py sign-blob);
#   sealbroker.sha256      its SHA-256, for OpenBao's `sha256sum`;
#   sealbroker.cdx.json    its SBOM (the plugin image's).
# Prints every reference it pushed, one per line: NAME REFERENCE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tls=(--dest-tls-verify=true)
tag=""
release=""
while [ $# -gt 0 ]; do
  case $1 in
    --plain-http) tls=(--dest-tls-verify=false); shift ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --assets) release=${2:?--assets needs a directory}; shift 2 ;;
    --) shift; break ;;
    -*) echo "publish: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -eq 4 ] || { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$(cd "$1" && pwd)
registry=${2%/}
key=$3
passphrase=$4
for tool in skopeo python3 sha256sum tar; do
  command -v "$tool" >/dev/null || { echo "publish: $tool is missing (bash tests/peers/install.sh installs it)" >&2; exit 1; }
done
[ -f "$out/digests.env" ] && [ -d "$out/layout" ] && [ -d "$out/sbom" ] ||
  { echo "publish: $out is not images/build.sh output (layout/, digests.env, sbom/)" >&2; exit 1; }
# shellcheck disable=SC1091
source "$out/digests.env"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The JSON blob of the layout's manifest (or config) with this digest.
blob() { cat "$out/layout/blobs/sha256/${1#sha256:}"; }
if [ -z "$tag" ]; then
  config=$(blob "$SEALBROKER_IMAGE_DIGEST" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])')
  revision=$(blob "$config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["Labels"]["org.opencontainers.image.revision"])')
  tag=rev-${revision:0:12}
fi

# skopeo copy, digest preserved; fails unless the registry got DIGEST.
push() { # SOURCE_LAYOUT SOURCE_TAG REPO DEST_TAG DIGEST
  skopeo copy --quiet --preserve-digests "${tls[@]}" --digestfile "$work/digest" \
    "oci:$1:$2" "docker://$registry/$3:$4" >&2
  local pushed
  pushed=$(cat "$work/digest")
  [ "$pushed" = "$5" ] || { echo "publish: $registry/$3:$4 is $pushed, not $5" >&2; exit 1; }
}
sign_py() { python3 "$here/sign.py" "$@"; }
# Signs DIGEST as REPO's and pushes the signature beside it.
signature() { # REPO DIGEST
  local layout=$work/sig-${2#sha256:} sig_tag
  sig_tag=$(sign_py sign "$key" "$passphrase" "$registry/$1" "$2" "$layout")
  push "$layout" "$sig_tag" "$1" "$sig_tag" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$layout/index.json")"
  echo "signature $registry/$1:$sig_tag"
}

for entry in broker:sealbroker:SEALBROKER_IMAGE_DIGEST \
  operator:sealbroker-operator:SEALBROKER_OPERATOR_IMAGE_DIGEST \
  kms-plugin:sealbroker-kms-plugin:SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST; do
  IFS=: read -r image repo variable <<<"$entry"
  digest=${!variable}
  push "$out/layout" "$image" "$repo" "$tag" "$digest"
  echo "image $registry/$repo@$digest"
  signature "$repo" "$digest"
  read -r sbom_tag sbom_digest < <(sign_py attach-sbom "$digest" "$out/sbom/$image.cdx.json" "$work/sbom-$image")
  push "$work/sbom-$image" "$sbom_tag" "$repo" "$sbom_tag" "$sbom_digest"
  echo "sbom $registry/$repo@$sbom_digest"
  signature "$repo" "$sbom_digest"
done

# The plugin binary, byte for byte the one in the plugin image.
release=${release:-$out/release}
rm -rf "$release"
mkdir -p "$release"
layer=$(blob "$SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST" | python3 -c 'import json,sys; m=json.load(sys.stdin); assert len(m["layers"]) == 1; print(m["layers"][0]["digest"])')
tar --extract --gzip --to-stdout --file "$out/layout/blobs/sha256/${layer#sha256:}" sealbroker >"$release/sealbroker"
chmod 0755 "$release/sealbroker"
(cd "$release" && sha256sum sealbroker) >"$release/sealbroker.sha256"
sha=$(cut -d' ' -f1 "$release/sealbroker.sha256")
[ "$sha" = "$SEALBROKER_PLUGIN_SHA256" ] ||
  { echo "publish: the plugin image's binary is $sha, digests.env says $SEALBROKER_PLUGIN_SHA256" >&2; exit 1; }
sign_py sign-blob "$key" "$passphrase" "$release/sealbroker" "$release/sealbroker.sig" >/dev/null
cp "$out/sbom/kms-plugin.cdx.json" "$release/sealbroker.cdx.json"
echo "plugin-binary $release/sealbroker sha256:$sha"
echo "plugin-signature $release/sealbroker.sig"
