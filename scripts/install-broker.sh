#!/usr/bin/env bash
# Installs the local Kafka-compatible broker (Tansu, pinned) into the cache folder.
# Idempotent: a second run with the binary in place does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ -x "$TANSU_BIN" ]; then
    exit 0
fi

apt_install build-essential pkg-config libssl-dev zlib1g-dev cmake
log "building tansu $TANSU_VERSION (first time only, about 12 minutes) into $TANSU_ROOT"
staging="$TANSU_ROOT.partial"
rm -rf "$staging"
cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql --locked \
    --root "$staging" --quiet
mv "$staging" "$TANSU_ROOT"
log "installed $TANSU_BIN"
