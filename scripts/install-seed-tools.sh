#!/usr/bin/env bash
# Installs what the end-to-end test of `kv-writer migrate-seed-topic` makes the original
# service's records with, once, into a virtual environment in the cache folder: Python's
# `cryptography` (AES-256-CBC, PKCS#7) and `kafka-python`, pinned by
# scripts/seed-tools/requirements.txt. Idempotent; a changed pin installs afresh. Prints the
# path of the environment's python on stdout; everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

command -v python3 >/dev/null || apt_install python3 python3-venv
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

tools=scripts/seed-tools
# Named after the pins and the Python that built it, so either changing makes a new one.
hash=$( (cat "$tools/requirements.txt"; python3 -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)
venv="$KV_CACHE_DIR/seed-tools-python-$hash"
if [ ! -f "$venv/.installed" ]; then
    log "installing the seed records' Python tools into $venv"
    rm -rf "$venv.partial"
    mkdir -p "$KV_CACHE_DIR"
    python3 -m venv "$venv.partial" >&2
    "$venv.partial/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -r "$tools/requirements.txt" >&2
    "$venv.partial/bin/python" -m pip check >&2
    touch "$venv.partial/.installed"
    rm -rf "$venv"
    mv "$venv.partial" "$venv"
fi
echo "$venv/bin/python"
