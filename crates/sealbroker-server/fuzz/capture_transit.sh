#!/usr/bin/env bash
# Regenerates seeds/transit_http/ from real clients: hvac (the calls of
# tests/python/transit_hvac.py, and a few more it can make) and OpenBao's stock
# `seal "transit"` (operator init, then a restart that auto-unseals), talking
# to the fixture's transit router served in plaintext by
# `cargo run --example seeds -- capture PORT`, which saves every request.
# Needs the peers venv of tests/peers/install.sh (bao, hvac).
#
#   bash crates/sealbroker-server/fuzz/capture_transit.sh
set -euo pipefail
cd "$(dirname "$0")"
venv=${SEALBROKER_PEERS_VENV:-$HOME/.cache/sealbroker-peers/venv}
work=$(mktemp -d)
capture="" bao=""
cleanup() {
  [ -z "$bao" ] || kill "$bao" 2>/dev/null || true
  [ -z "$capture" ] || kill "$capture" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)

cargo build -q --example seeds
rm -f seeds/transit_http/hvac_* seeds/transit_http/openbao_*
"${CARGO_TARGET_DIR:-target}/debug/examples/seeds" capture "$port" &
capture=$!
until (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.2; done
fixture=${TMPDIR:-/tmp}/sealbroker-server-fuzz
openbao_token=$(head -n1 "$fixture/openbao.token")
ops_token=$(cat "$fixture/ops.token")

echo "== hvac" >&2
"$venv/bin/python" - "http://127.0.0.1:$port" "$openbao_token" "$ops_token" <<'PY'
import base64, sys
import hvac, requests

url, token, ops_token = sys.argv[1:4]
b64 = lambda data: base64.b64encode(data).decode()
client = hvac.Client(url=url, token=token)
ops = hvac.Client(url=url, token=ops_token)
transit = client.secrets.transit

def attempt(name, fn):
    try:
        fn()
        print(f"sent {name}")
    except Exception as e:  # refusals are the point of some calls
        print(f"sent {name} (refused: {type(e).__name__})")

state = {}
def round_trip():
    sealed = transit.encrypt_data(name="unseal", plaintext=b64(b"secret one"), associated_data=b64(b"cluster-a"))
    state["ciphertext"] = sealed["data"]["ciphertext"]
    transit.decrypt_data(name="unseal", ciphertext=state["ciphertext"], associated_data=b64(b"cluster-a"))
attempt("encrypt/decrypt with associated_data", round_trip)
attempt("decrypt with the wrong associated_data", lambda: transit.decrypt_data(
    name="unseal", ciphertext=state["ciphertext"], associated_data=b64(b"other")))
attempt("encrypt with a wrong token", lambda: hvac.Client(url=url, token="hvs.not-a-configured-token")
        .secrets.transit.encrypt_data(name="unseal", plaintext=b64(b"x")))
attempt("encrypt under an unknown key", lambda: transit.encrypt_data(name="no-such-key", plaintext=b64(b"x")))
attempt("encrypt with malformed base64", lambda: transit.encrypt_data(name="unseal", plaintext="not base64!"))
attempt("junk JSON", lambda: requests.post(f"{url}/v1/transit/encrypt/unseal", data=b"{this is not json",
        headers={"X-Vault-Token": token, "Content-Type": "application/json"}, timeout=10))
attempt("malformed ciphertext", lambda: transit.decrypt_data(name="unseal", ciphertext="vault:v1"))
attempt("encrypt with context", lambda: transit.encrypt_data(name="unseal", plaintext=b64(b"x"), context=b64(b"c")))
attempt("encrypt with key_version", lambda: transit.encrypt_data(name="unseal", plaintext=b64(b"x"), key_version=1))
attempt("batch encrypt", lambda: transit.encrypt_data(name="unseal", plaintext="",
        batch_input=[{"plaintext": b64(b"a")}, {"plaintext": b64(b"b")}]))
attempt("is_authenticated", client.is_authenticated)
attempt("lookup-self", client.auth.token.lookup_self)
attempt("renew-self", client.auth.token.renew_self)
attempt("read_key", lambda: transit.read_key(name="unseal"))
attempt("read_key out of scope", lambda: transit.read_key(name="other"))
attempt("health", lambda: hvac.Client(url=url).sys.read_health_status(method="GET"))
def ops_round_trip():
    sealed = ops.secrets.transit.encrypt_data(name="other", plaintext=b64(b"ops secret"))
    ops.secrets.transit.decrypt_data(name="other", ciphertext=sealed["data"]["ciphertext"])
attempt("ops encrypt/decrypt on other", ops_round_trip)
attempt("bearer token", lambda: requests.get(f"{url}/v1/transit/keys/unseal",
        headers={"Authorization": f"Bearer {token}"}, timeout=10))
PY

echo "== OpenBao seal \"transit\": init, then a restart that auto-unseals" >&2
bao_port=$(free_port)
cluster_port=$(free_port)
mkdir -p "$work/raft"
cat >"$work/bao.hcl" <<HCL
storage "raft" {
  path    = "$work/raft"
  node_id = "node1"
}
listener "tcp" {
  address         = "127.0.0.1:$bao_port"
  cluster_address = "127.0.0.1:$cluster_port"
  tls_disable     = true
}
api_addr     = "http://127.0.0.1:$bao_port"
cluster_addr = "http://127.0.0.1:$cluster_port"
disable_mlock = true
seal "transit" {
  address    = "http://127.0.0.1:$port"
  token      = "$openbao_token"
  key_name   = "unseal"
  mount_path = "transit/"
}
HCL
export BAO_ADDR="http://127.0.0.1:$bao_port"
start_bao() {
  "$venv/bin/bao" server -config="$work/bao.hcl" >>"$work/bao.log" 2>&1 &
  bao=$!
  for _ in $(seq 100); do
    code=0
    "$venv/bin/bao" status >/dev/null 2>&1 || code=$?
    [ "$code" -ne 1 ] && return 0
    sleep 0.3
  done
  cat "$work/bao.log" >&2
  return 1
}
wait_unsealed() {
  for _ in $(seq 100); do
    "$venv/bin/bao" status >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  cat "$work/bao.log" >&2
  return 1
}
stop_bao() { kill "$bao"; wait "$bao" || true; bao=""; }
start_bao
"$venv/bin/bao" operator init -recovery-shares=1 -recovery-threshold=1 -format=json >/dev/null
wait_unsealed
stop_bao
start_bao
wait_unsealed
stop_bao
ls seeds/transit_http | sed 's/^/captured /' >&2
