# Shared by scripts/test, scripts/demo and the benchmarks: installs what is missing from
# Debian's packages and builds the extension. Source it; it sets JOINBLOCK_SO.

set -euo pipefail

JOINBLOCK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Installs the named Debian packages that are not installed yet (needs root or sudo).
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# PHP 8.2 headers and php-config for ext-php-rs, libclang for its bindgen, OpenSSL for TLS.
BUILD_PACKAGES=(php8.2-cli php8.2-dev libclang-dev pkg-config libssl-dev)

build_extension() {
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install Rust (https://rustup.rs) first" >&2
        exit 1
    fi
    echo "==> building the extension (cargo build --release)"
    (cd "$JOINBLOCK_ROOT" && cargo build --release --locked --quiet)
    # CARGO_TARGET_DIR (cargo's own variable) keeps builds for other PHPs apart.
    JOINBLOCK_SO="${CARGO_TARGET_DIR:-$JOINBLOCK_ROOT/target}/release/libjoinblock.so"
    export JOINBLOCK_SO
}

# A php.ini scan directory with the system's CLI settings but without any installed copy
# of joinblock, so `-d extension=` loads exactly the build under test.
clean_ini_scan_dir() {
    local dir
    dir=$(mktemp -d /tmp/joinblock-ini.XXXXXX)
    for ini in /etc/php/8.2/cli/conf.d/*.ini; do
        case "$ini" in *joinblock*) continue ;; esac
        [ -e "$ini" ] && ln -s "$ini" "$dir/"
    done
    echo "$dir"
}
