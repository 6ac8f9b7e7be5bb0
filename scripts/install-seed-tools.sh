#!/usr/bin/env bash
# Installs what the end-to-end test of `kv-writer migrate-seed-topic` makes the original
# service's records with, once, into a virtual environment in the cache folder: Python's
# `cryptography` (AES-256-CBC, PKCS#7) and `kafka-python`, pinned by
# scripts/seed-tools/requirements.txt. Idempotent; a changed pin installs afresh. Prints the
# path of the environment's python on stdout; everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

tools=scripts/seed-tools
python_venv seed-tools "$tools/requirements.txt" "the seed records' Python tools"
echo "$venv/bin/python"
