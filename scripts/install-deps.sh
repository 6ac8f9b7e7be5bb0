#!/usr/bin/env bash
# Installs the system packages the build needs (librdkafka is compiled from the rdkafka crate,
# with OpenSSL for TLS). Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v cargo >/dev/null || die "cargo is required (install Rust with rustup)"
# libsasl2-dev: SASL GSSAPI (Kerberos); libcurl4-openssl-dev: OAUTHBEARER with the OIDC token fetch.
apt_install build-essential pkg-config libssl-dev zlib1g-dev cmake curl libsasl2-dev libcurl4-openssl-dev
