#!/usr/bin/env bash
# Installs PyKMIP (the KMIP server tests/pykmip.rs runs against) into the
# shared peers venv. Idempotent. Until tests/peers/install.sh installs it,
# run this once before `cargo test` in backends/kmip.
set -euo pipefail

peers_dir=${SEALBROKER_PEERS_DIR:-$HOME/.cache/sealbroker-peers}
venv=${SEALBROKER_PEERS_VENV:-$peers_dir/venv}
# Tested together on Python 3.11: PyKMIP 0.11.0 works with SQLAlchemy 2.x and
# cryptography 50 (it only warns about deprecated ciphers it never uses here).
python_packages=(pykmip==0.11.0 sqlalchemy==2.1.9 cryptography==50.0.2)

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${python_packages[@]}"
"$venv/bin/pykmip-server" --help >/dev/null
echo "pykmip: ready at $venv/bin/pykmip-server" >&2
