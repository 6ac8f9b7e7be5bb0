#!/usr/bin/env bash
# Installs the load generators and peers `make bench` compares against (Debian packages), once.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-deps.sh
scripts/install-broker.sh
apt_install wrk redis-server redis-tools nginx curl
