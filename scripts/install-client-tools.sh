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
command -v python3 >/dev/null || apt_install python3 python3-venv
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

tools=scripts/client-tools
# Named after the pins and the Python that built it, so either changing makes a new one.
venv_hash=$( (cat "$tools/requirements.txt"; python3 -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)
venv="$KV_CACHE_DIR/client-tools-python-$venv_hash"
if [ ! -f "$venv/.installed" ]; then
    log "installing the end-to-end tests' Python clients into $venv"
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

printf 'export KV_NGINX=%q KV_CLIENT_PYTHON=%q\n' "$nginx" "$venv/bin/python"
