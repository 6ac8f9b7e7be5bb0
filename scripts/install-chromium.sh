#!/usr/bin/env bash
# Installs Debian's chromium, once, for the end-to-end test that renders the reader's status
# page in a real headless browser. Idempotent. Prints the browser's path on stdout; everything
# else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

apt_install chromium
browser=$(command -v chromium) \
    || die "no chromium although the Debian package is known to dpkg (removed but not purged?)"
echo "$browser"
