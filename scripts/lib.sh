# Shared settings for the project's scripts; sourced, never run.
# Everything the scripts install lives under one cache folder so CI can keep it warm.
KV_CACHE_DIR="${KV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-kv}"
TANSU_VERSION="0.6.0"
TANSU_ROOT="$KV_CACHE_DIR/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
# The module-cycle check's tool (scripts/check-module-cycles.sh). 0.27 needs Rust 1.95; 0.28
# needs 1.98, newer than the stable toolchain the project builds with.
CARGO_MODULES_VERSION="0.27.0"
CARGO_MODULES_ROOT="$KV_CACHE_DIR/cargo-modules-$CARGO_MODULES_VERSION"
CARGO_MODULES_BIN="$CARGO_MODULES_ROOT/bin/cargo-modules"
KV_RUN_DIR="${KV_RUN_DIR:-$PWD/target/kv-run}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# apt_install PKG... installs Debian packages that are missing, once.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# python_venv NAME REQUIREMENTS WHAT: a virtual environment in the cache folder with the pinned
# REQUIREMENTS installed (no dependency resolution: every package is pinned), named after the
# pins and the Python that built it, so either changing makes a new one; built whole or not at
# all. Sets `venv` to its folder; logs go to stderr.
python_venv() {
    command -v python3 >/dev/null || apt_install python3 python3-venv
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    local hash
    hash=$( (cat "$2"; python3 -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)
    venv="$KV_CACHE_DIR/$1-python-$hash"
    [ -f "$venv/.installed" ] && return 0
    log "installing $3 into $venv"
    rm -rf "$venv.partial"
    mkdir -p "$KV_CACHE_DIR"
    python3 -m venv "$venv.partial" >&2
    "$venv.partial/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -r "$2" >&2
    "$venv.partial/bin/python" -m pip check >&2
    touch "$venv.partial/.installed"
    rm -rf "$venv"
    mv "$venv.partial" "$venv"
}

# The OpenID provider the end-to-end auth tests run: installed from scripts/oidc with its lock
# file into a folder named after the content, so a changed pin installs afresh.
oidc_provider_dir() {
    local hash
    hash=$(cat scripts/oidc/package.json scripts/oidc/package-lock.json scripts/oidc/provider.mjs | sha256sum | cut -c1-12)
    echo "$KV_CACHE_DIR/oidc-provider-$hash"
}

# Installs what the end-to-end tests, the drills and the checks need (the build's packages, the
# broker, the module-cycle check's cargo-modules, the test OpenID provider, promtool and the
# chart tools, nginx and redis-py, the seed records' Python tools and chromium) and exports where
# the broker, the provider, promtool, nginx, redis-py's python, the seed records' Python and the
# browser are.
install_test_tools() {
    scripts/install-deps.sh
    scripts/install-broker.sh
    export TANSU_BIN
    scripts/install-cargo-modules.sh
    KV_OIDC_PROVIDER=$(scripts/install-oidc-provider.sh)
    export KV_OIDC_PROVIDER
    eval "$(scripts/install-deploy-tools.sh)"
    eval "$(scripts/install-client-tools.sh)"
    # The migration test's Python (cryptography, kafka-python) and the status page's browser.
    KV_SEED_PYTHON=$(scripts/install-seed-tools.sh)
    KV_CHROMIUM=$(scripts/install-chromium.sh)
    export KV_SEED_PYTHON KV_CHROMIUM
}
