#!/usr/bin/env bash
# `make test`: formatting, lints, module dependency cycles, unit tests, MockCluster tests, and
# end-to-end tests that start a real broker process and the real binaries. Installs what it needs
# on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

install_test_tools

log "deployment files"
scripts/check-deploy.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
log "module dependency cycles"
scripts/check-module-cycles.sh
log "building the binaries the end-to-end tests start"
cargo build --locked --workspace --bins
log "cargo test"
cargo test --locked --workspace
