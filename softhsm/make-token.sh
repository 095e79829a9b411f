#!/usr/bin/env bash
# Creates a private SoftHSM2 token for development and tests: its own
# softhsm2.conf and token directory (nothing shared with the system), an
# initialized token, a user PIN in a 0600 file, and a non-extractable
# AES-256 key. Prints the environment and config snippet to use it.
#
# Usage: softhsm/make-token.sh DIR [TOKEN_LABEL] [KEY_LABEL]
#   env PIN / SO_PIN   set the PINs (default: random)
#   env MODULE         PKCS#11 module (default: /usr/lib/softhsm/libsofthsm2.so)
#   env KEY_ID         CKA_ID of the key in hex (default: 01)
#   env NO_KEY=1       initialize the token without creating a key
set -euo pipefail

dir=${1:?usage: softhsm/make-token.sh DIR [TOKEN_LABEL] [KEY_LABEL]}
token=${2:-sealbroker}
key=${3:-sealbroker-key}
module=${MODULE:-/usr/lib/softhsm/libsofthsm2.so}
key_id=${KEY_ID:-01}

for tool in softhsm2-util pkcs11-tool; do
  command -v "$tool" >/dev/null || { echo "make-token: $tool is missing (apt-get install softhsm2 opensc)" >&2; exit 1; }
done
[ -r "$module" ] || { echo "make-token: PKCS#11 module $module not found (apt-get install softhsm2)" >&2; exit 1; }

random_pin() { od -An -N6 -tu8 /dev/urandom | tr -d ' \n' | cut -c1-8; }
pin=${PIN:-$(random_pin)}
so_pin=${SO_PIN:-$(random_pin)}

mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
umask 077
cat > "$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
printf '%s\n' "$pin" > "$dir/pin"
printf '%s\n' "$so_pin" > "$dir/so-pin"
export SOFTHSM2_CONF=$dir/softhsm2.conf

softhsm2-util --init-token --free --label "$token" --so-pin "$so_pin" --pin "$pin" >/dev/null
if [ -z "${NO_KEY:-}" ]; then
  pkcs11-tool --module "$module" --token-label "$token" --login --pin "$pin" \
    --keygen --key-type AES:32 --label "$key" --id "$key_id" --sensitive >/dev/null 2>&1
fi

cat <<OUT
# SoftHSM2 token "$token" in $dir
export SOFTHSM2_CONF=$dir/softhsm2.conf

# sealbroker config:
[backends.hsm]
type = "pkcs11"
lib = "$module"
token_label = "$token"
pin_file = "$dir/pin"

[keys.unseal]
backend = "hsm"
key_label = "$key"
mechanism = "AES_GCM"
OUT
