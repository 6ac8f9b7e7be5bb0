#!/usr/bin/env bash
# Installs schemathesis (from PyPI, pinned below) into a virtual environment in the cache folder,
# for the HTTP abuse drill (docs/reliability.md). Idempotent. Prints the path of a command that
# runs schemathesis's CLI (`st`) on stdout; everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SCHEMATHESIS_VERSION="4.32.5"
dir="$KV_CACHE_DIR/schemathesis-$SCHEMATHESIS_VERSION"

if [ ! -f "$dir/.installed" ]; then
    command -v python3 >/dev/null || apt_install python3 python3-venv
    # Debian's python3 ships venv's pip bootstrap separately, in python3-venv.
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    log "installing schemathesis $SCHEMATHESIS_VERSION into $dir"
    rm -rf "$dir.partial"
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir.partial" >&2
    "$dir.partial/bin/python" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" >&2
    # The venv's own scripts (bin/st) name the folder they were installed in, which is renamed
    # below; the venv's python finds its packages wherever the folder is, so this command runs
    # the CLI through it.
    printf '%s\n' '#!/bin/sh' \
        'exec "$(dirname "$0")/bin/python" -m schemathesis.cli "$@"' >"$dir.partial/st"
    chmod +x "$dir.partial/st"
    "$dir.partial/st" --version >&2
    touch "$dir.partial/.installed"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
fi
echo "$dir/st"
