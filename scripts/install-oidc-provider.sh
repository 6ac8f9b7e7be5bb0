#!/usr/bin/env bash
# Installs the test OpenID provider (oidc-provider from the npm registry, pinned by
# scripts/oidc/package-lock.json) into the cache folder. Idempotent. Prints the script's path.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
dir=$(oidc_provider_dir)
if [ ! -f "$dir/.installed" ]; then
    log "installing the test OpenID provider into $dir"
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    cp scripts/oidc/package.json scripts/oidc/package-lock.json scripts/oidc/provider.mjs "$dir.partial/"
    (cd "$dir.partial" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$dir.partial/.installed"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
fi
echo "$dir/provider.mjs"
