#!/usr/bin/env bash
# Builds sealbroker's three OCI images into one OCI image layout, without a
# container daemon, reproducibly: the same binaries, pins and commit give
# the same digests (docs/install.md says why and how).
#
#   bash images/build.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds the release binaries `sealbroker` and `sealbroker-operator`
# (images/release-build.sh prints it). OUT_DIR gets:
#   layout/        the OCI image layout, tagged broker, operator, kms-plugin
#   digests.env    each image's manifest digest and the plugin binary's SHA-256
#   sbom/          each image's CycloneDX SBOM (images/sbom.py), named by tag:
#                  broker.cdx.json, operator.cdx.json, kms-plugin.cdx.json
#
# Images (linux/amd64, user 65532:65532, no shell, nothing written to the
# root filesystem):
#   broker     base layer + /usr/local/bin/sealbroker (the daemon, and the
#              binary the operator's init container copies for OpenBao)
#   operator   base layer + /usr/local/bin/sealbroker-operator
#   kms-plugin one layer: /sealbroker at the root, ENTRYPOINT ["/sealbroker"]:
#              the layout OpenBao's `plugin "kms"` stanza downloads
#
# The base layer is glibc, libgcc, libstdc++ and the CA bundle, copied from
# this machine's Debian packages and pinned by their versions in
# images/base-packages.txt: the build stops when an installed version differs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 BIN_DIR OUT_DIR" >&2; exit 2; }
bin_dir=$(cd "$1" && pwd)
out=$2
for tool in umoci tar sha256sum dpkg-query; do
  command -v "$tool" >/dev/null || { echo "images: $tool is missing (bash tests/peers/install.sh installs it)" >&2; exit 1; }
done
python3 -c 'import cyclonedx' 2>/dev/null || {
  echo "images: python3 has no cyclonedx-python-lib for the SBOMs (bash tests/peers/install.sh installs it; source its env)" >&2
  exit 1
}
for bin in sealbroker sealbroker-operator; do
  [ -x "$bin_dir/$bin" ] || { echo "images: $bin_dir/$bin is missing: run images/release-build.sh" >&2; exit 1; }
done

# One time for every timestamp, and the revision label: those of the last
# commit that changed what goes into the images. Not HEAD's: the commit that
# pins the digests in deploy/ must not change them.
inputs=(Cargo.toml Cargo.lock crates backends proto images)
revision=$(git -C "$root" log -1 --format=%H -- "${inputs[@]}")
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct -- "${inputs[@]}")}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
if [ -n "$(git -C "$root" status --porcelain -- "${inputs[@]}")" ]; then
  echo "images: uncommitted changes to ${inputs[*]}: these images are not $revision's" >&2
fi
source_url=${SEALBROKER_SOURCE_URL:-https://github.com/example/sealbroker}

# The pins: every package the base layer copies from, at this exact version.
fail=0
while read -r package version; do
  case $package in '#'* | '') continue ;; esac
  installed=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || echo "not installed")
  if [ "$installed" != "$version" ]; then
    echo "images: base package $package is $installed here, images/base-packages.txt pins $version" >&2
    fail=1
  fi
done <"$here/base-packages.txt"
if [ $fail -ne 0 ]; then
  echo "images: the base layer would differ from the pinned one; update the pins (and so the digests) on purpose: docs/install.md, \"Updating the base layer\"" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out/layout"
mkdir -p "$out"
layout=$out/layout

# A layer tarball from a staging directory: names without "./" (OpenBao
# matches the plugin's name exactly), sorted, one mtime, root-owned.
layer_tar() { # STAGING_DIR OUT_TAR
  (cd "$1" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort) >"$work/list"
  tar --create --file "$2" --directory "$1" --no-recursion --files-from "$work/list" \
    --format=gnu --mtime="@$epoch" --owner=0 --group=0 --numeric-owner
}

# --- the base layer -----------------------------------------------------
base=$work/base
mkdir -p "$base/usr/lib/x86_64-linux-gnu" "$base/usr/lib64" "$base/etc/ssl/certs" \
  "$base/usr/local/bin" "$base/usr/share/sealbroker" "$base/tmp" "$base/var/lib/sealbroker" "$base/run/sealbroker"
# Shared objects of the pinned libraries (merged /usr, as Debian lays them out).
for package in libc6 libgcc-s1 libstdc++6; do
  dpkg-query -L "$package" | grep -E '^(/usr)?/lib/x86_64-linux-gnu/[^/]+\.so[.0-9]*$' | while read -r file; do
    cp -a "$file" "$base/usr/lib/x86_64-linux-gnu/"
  done
done
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$base/usr/lib64/ld-linux-x86-64.so.2"
ln -s usr/lib "$base/lib"
ln -s usr/lib64 "$base/lib64"
# The CA bundle as ca-certificates builds it from its own files.
cat /usr/share/ca-certificates/mozilla/*.crt >"$base/etc/ssl/certs/ca-certificates.crt"
cat >"$base/etc/passwd" <<'EOF'
root:x:0:0:root:/nonexistent:/usr/sbin/nologin
sealbroker:x:65532:65532:sealbroker:/nonexistent:/usr/sbin/nologin
EOF
cat >"$base/etc/group" <<'EOF'
root:x:0:
sealbroker:x:65532:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$base/etc/nsswitch.conf"
cp "$here/base-packages.txt" "$base/usr/share/sealbroker/base-packages.txt"
# Modes do not depend on this machine's umask; /tmp is sticky (mount an
# emptyDir there on a read-only root filesystem).
find "$base" -type d -exec chmod 0755 {} +
find "$base" -type f -exec chmod 0644 {} +
find "$base/usr/lib/x86_64-linux-gnu" -type f -name '*.so*' -exec chmod 0755 {} +
chmod 1777 "$base/tmp"
chown -R 0:0 "$base"
layer_tar "$base" "$work/base.tar"

# One app layer: BIN at DEST, mode 0755.
app_layer() { # BIN DEST OUT_TAR
  local staging=$work/app-$(basename "$2")
  rm -rf "$staging"
  mkdir -p "$staging$(dirname "$2")"
  install -m 0755 "$1" "$staging$2"
  find "$staging" -type d -exec chmod 0755 {} +
  layer_tar "$staging" "$3"
}
app_layer "$bin_dir/sealbroker" /usr/local/bin/sealbroker "$work/broker.tar"
app_layer "$bin_dir/sealbroker-operator" /usr/local/bin/sealbroker-operator "$work/operator.tar"
app_layer "$bin_dir/sealbroker" /sealbroker "$work/plugin.tar"

# --- the images -----------------------------------------------------------
umoci init --layout "$layout"
history=(--history.created "$created" --history.author sealbroker)
image() { # TAG TITLE then the layers, then -- and umoci config arguments
  local tag=$1 title=$2
  shift 2
  umoci new --image "$layout:$tag"
  while [ "$1" != -- ]; do
    umoci raw add-layer --image "$layout:$tag" "${history[@]}" \
      --history.created_by "layer $(basename "$1" .tar)" "$1"
    shift
  done
  shift
  umoci config --image "$layout:$tag" --no-history --created "$created" --author sealbroker \
    --architecture amd64 --os linux \
    --config.label "org.opencontainers.image.title=$title" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.source=$source_url" \
    --config.label "org.opencontainers.image.created=$created" \
    "$@"
}
image broker sealbroker "$work/base.tar" "$work/broker.tar" -- \
  --config.user 65532:65532 --config.workingdir /var/lib/sealbroker \
  --config.entrypoint /usr/local/bin/sealbroker --config.cmd serve
image operator sealbroker-operator "$work/base.tar" "$work/operator.tar" -- \
  --config.user 65532:65532 --config.workingdir / \
  --config.entrypoint /usr/local/bin/sealbroker-operator --config.cmd run
image kms-plugin sealbroker-kms-plugin "$work/plugin.tar" -- \
  --config.user 65532:65532 --config.workingdir / \
  --config.entrypoint /sealbroker --config.cmd kms-plugin
# umoci leaves the blobs of replaced manifests and configs behind.
umoci gc --layout "$layout"

manifest_digest() { # TAG
  python3 - "$layout" "$1" <<'EOF'
import json, sys
index = json.load(open(sys.argv[1] + "/index.json"))
tags = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == sys.argv[2]]
assert len(tags) == 1, f"tag {sys.argv[2]} found {len(tags)} times"
print(tags[0]["digest"])
EOF
}
# --- the SBOMs, one per image, naming it by digest ----------------------------
rm -rf "$out/sbom"
mkdir -p "$out/sbom"
sbom() { # TAG TITLE then sbom.py arguments
  local tag=$1 title=$2
  shift 2
  python3 "$here/sbom.py" --out "$out/sbom/$tag.cdx.json" --image "$title" --digest "$(manifest_digest "$tag")" \
    --created "$created" --revision "$revision" --source "$source_url" "$@"
}
sbom broker sealbroker --base "$here/base-packages.txt" --binary /usr/local/bin/sealbroker "$bin_dir/sealbroker" sealbroker
sbom operator sealbroker-operator --base "$here/base-packages.txt" \
  --binary /usr/local/bin/sealbroker-operator "$bin_dir/sealbroker-operator" sealbroker-operator
sbom kms-plugin sealbroker-kms-plugin --binary /sealbroker "$bin_dir/sealbroker" sealbroker

{
  echo "# Written by images/build.sh; deploy/images.env is a copy (images/pin.sh)."
  echo "SEALBROKER_IMAGE_DIGEST=$(manifest_digest broker)"
  echo "SEALBROKER_OPERATOR_IMAGE_DIGEST=$(manifest_digest operator)"
  echo "SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST=$(manifest_digest kms-plugin)"
  echo "SEALBROKER_PLUGIN_SHA256=$(sha256sum "$bin_dir/sealbroker" | cut -d' ' -f1)"
} >"$out/digests.env"
cat "$out/digests.env" >&2
