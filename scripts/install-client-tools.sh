#!/usr/bin/env bash
# Installs what the end-to-end tests drive the services with beside their own clients, once,
# into the cache folder:
#   - Debian: nginx (the gateway of compose/ and the chart, run in front of the real binaries);
#   - Python (pinned by scripts/client-tools/requirements.txt, in a virtual environment):
#     redis-py, a real Redis client library, against the reader's Redis-protocol port.
# Idempotent; a changed pin installs afresh. Prints shell `export` lines naming the tools:
#   eval "$(scripts/install-client-tools.sh)"
# exports KV_NGINX (the nginx binary) and KV_CLIENT_PYTHON (the environment's python).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

apt_install nginx
nginx=$(command -v nginx || true)
[ -n "$nginx" ] || nginx=/usr/sbin/nginx
[ -x "$nginx" ] || die "no nginx binary although the Debian package nginx is installed"
tools=scripts/client-tools
python_venv client-tools "$tools/requirements.txt" "the end-to-end tests' Python clients"

printf 'export KV_NGINX=%q KV_CLIENT_PYTHON=%q\n' "$nginx" "$venv/bin/python"
