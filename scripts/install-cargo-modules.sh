#!/usr/bin/env bash
# Installs what scripts/check-module-cycles.sh runs: cargo-modules (pinned in scripts/lib.sh),
# built once into the cache folder, and Debian's graphviz. Idempotent: a second run with both in
# place does nothing; an interrupted build leaves no half-installed folder behind.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

apt_install graphviz
if [ -x "$CARGO_MODULES_BIN" ]; then
    exit 0
fi

command -v cargo >/dev/null || die "cargo is required (install Rust with rustup)"
log "building cargo-modules $CARGO_MODULES_VERSION (first time only) into $CARGO_MODULES_ROOT"
staging="$CARGO_MODULES_ROOT.partial"
rm -rf "$staging"
# Its own build folder, not the project's: a tool build must not evict the project's artefacts.
CARGO_TARGET_DIR="$staging/target" cargo install cargo-modules --version "$CARGO_MODULES_VERSION" \
    --locked --root "$staging" --quiet
rm -rf "$staging/target"
mv "$staging" "$CARGO_MODULES_ROOT"
log "installed $CARGO_MODULES_BIN"
