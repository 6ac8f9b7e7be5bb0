#!/usr/bin/env bash
# `make test`: formatting, lints, unit tests, MockCluster tests, and end-to-end tests that start
# a real broker process and the real binaries. Installs what it needs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-deps.sh
scripts/install-broker.sh
export TANSU_BIN
KV_OIDC_PROVIDER=$(scripts/install-oidc-provider.sh)
export KV_OIDC_PROVIDER

log "deployment files"
scripts/check-deploy.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
log "building the binaries the end-to-end tests start"
cargo build --locked --workspace --bins
log "cargo test"
cargo test --locked --workspace
