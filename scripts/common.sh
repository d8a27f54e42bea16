# Shared by scripts/test, scripts/demo and the benchmarks: installs what is missing from
# Debian's packages and builds the extension. Source it; it sets JOINBLOCK_SO.
#
# The rule for every script here: stdout is the script's result (a path, a prefix, a report),
# everything else (progress, what is being installed) goes to stderr. Callers take results with
# $(...), and a line printed only on some machines (a package missing, a cache cold) must not
# end up in a path: that is how a brand-new machine failed where every warm one passed.

set -euo pipefail

JOINBLOCK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Installs the named Debian packages that are not installed yet (needs root or sudo).
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    # Wait for another apt (unattended-upgrades on a new server's first boot, a parallel run)
    # rather than fail at once on its lock.
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Writes deb-src twins of the machine's Debian entries in APT's configuration directory $1
# (/etc/apt) into the directory $2, named $3.sources and $3.list, in whichever form APT keeps them:
# deb822 (sources.list.d/debian.sources: Debian's cloud and container images) or one line per
# entry (sources.list: a server installed with Debian's installer). Fails when neither has an
# entry, so a caller never runs `apt-get source` against nothing.
write_deb_src_entries() {
    local etc=$1 out=$2 name=$3 list
    [ -f "$etc/sources.list.d/debian.sources" ] &&
        sed -n '/^Types:/,$p' "$etc/sources.list.d/debian.sources" |
        sed 's/^Types: deb$/Types: deb-src/' > "$out/$name.sources"
    for list in "$etc/sources.list" "$etc"/sources.list.d/*.list; do
        [ -f "$list" ] && [ "$(basename "$list")" != "$name.list" ] && sed -n 's/^deb \(.*\)$/deb-src \1/p' "$list"
    done > "$out/$name.list"
    [ -s "$out/$name.list" ] || rm -f "$out/$name.list"
    [ -s "$out/$name.sources" ] || rm -f "$out/$name.sources"
    grep -qs '^Types: deb-src$\|^deb-src ' "$out/$name.sources" "$out/$name.list" ||
        { echo "error: no Debian entry in $etc/sources.list or $etc/sources.list.d/debian.sources to take the source from" >&2; return 1; }
}

# Downloads Debian's source package of php$DEBIAN_PHP into the directory $1 (further arguments
# go to `apt-get source`: --download-only) and prints its version. The deb-src entries it needs
# are added for the download (twins of the machine's entries) and removed after. It takes the
# newest version Debian lists whose files the mirror holds: a security update's files are
# sometimes listed before the mirror has them.
fetch_php_source() {
    local dir=$1 entries=joinblock-php-source candidate version=
    shift
    write_deb_src_entries /etc/apt /etc/apt/sources.list.d "$entries"
    apt-get update -qq
    for candidate in $(apt-cache showsrc "php$DEBIAN_PHP" | sed -n 's/^Version: //p' | sort -rV | uniq); do
        if (cd "$dir" && apt-get source -qq "$@" "php$DEBIAN_PHP=$candidate" >/dev/null 2>&1); then
            version=$candidate
            break
        fi
        rm -rf "${dir:?}"/*
    done
    rm -f "/etc/apt/sources.list.d/$entries".{sources,list}
    apt-get update -qq || true
    [ -n "$version" ] || { echo "error: apt-get source php$DEBIAN_PHP failed for every version Debian lists" >&2; return 1; }
    echo "$version"
}

# The PHP this Debian release ships (8.2 on Debian 12, 8.4 on Debian 13): the one its php-cli,
# php-fpm and the .deb are for. Another release: the version its php-cli package depends on.
debian_php_version() {
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    case "$codename" in
        bookworm) echo 8.2 ;;
        trixie) echo 8.4 ;;
        *) apt-cache depends php-cli 2>/dev/null | sed -n 's/^ *Depends: php\([0-9][0-9.]*\)-cli$/\1/p' | head -n 1 |
            grep . || { echo "error: no Debian PHP known for release '$codename' (Debian 12 and 13 are tested)" >&2; return 1; } ;;
    esac
}
# The PHP the scripts install, build for and run: JOINBLOCK_PHP_VERSION=X.Y names one of Debian's
# phpX.Y-* (a release may carry several, as sid with experimental's 8.5 beside its own 8.4, and
# which one `php` and `php-config` name then depends on Debian's alternatives and on what else
# is installed), else the release's own. When named, PHP and PHP_CONFIG are set to its versioned
# programs unless already set: build.rs and ext-php-rs read them, and scripts run "$PHP".
if [ -n "${JOINBLOCK_PHP_VERSION:-}" ]; then
    [[ $JOINBLOCK_PHP_VERSION =~ ^[0-9]+\.[0-9]+$ ]] ||
        { echo "error: JOINBLOCK_PHP_VERSION=$JOINBLOCK_PHP_VERSION is no X.Y (8.5 names php8.5-cli, php-config8.5 ...)" >&2; exit 2; }
    DEBIAN_PHP=$JOINBLOCK_PHP_VERSION
    export PHP=${PHP:-/usr/bin/php$DEBIAN_PHP} PHP_CONFIG=${PHP_CONFIG:-/usr/bin/php-config$DEBIAN_PHP}
else
    DEBIAN_PHP=$(debian_php_version)
fi

# Debian's package names of the system's PHP and the named PHP extensions: php8.4-fpm ...
php_packages() {
    local ext
    for ext in "$@"; do echo "php$DEBIAN_PHP-$ext"; done
}

# That PHP's headers and php-config for ext-php-rs, libclang for its bindgen, OpenSSL for TLS.
BUILD_PACKAGES=($(php_packages cli dev) libclang-dev pkg-config libssl-dev)

build_extension() {
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install Rust (https://rustup.rs) first" >&2
        exit 1
    fi
    echo "==> building the extension (cargo build --release)" >&2
    (cd "$JOINBLOCK_ROOT" && cargo build --release --locked --quiet)
    # CARGO_TARGET_DIR (cargo's own variable) keeps builds for other PHPs apart.
    JOINBLOCK_SO="${CARGO_TARGET_DIR:-$JOINBLOCK_ROOT/target}/release/libjoinblock.so"
    export JOINBLOCK_SO
    # What needs the network ends here: with JOINBLOCK_PREPARE_ONLY=1 the calling script stops
    # once its packages are in and the crate is built, with the test build's crates fetched
    # too (scripts/test-debian-root's first step when the root gets a loopback of its own).
    if [ "${JOINBLOCK_PREPARE_ONLY:-0}" = 1 ]; then
        (cd "$JOINBLOCK_ROOT" && cargo fetch --locked --quiet)
        echo "==> prepared (JOINBLOCK_PREPARE_ONLY=1): packages installed, extension built" >&2
        exit 0
    fi
}

# A php.ini scan directory with the system's CLI settings but without any installed copy
# of joinblock, so `-d extension=` loads exactly the build under test.
clean_ini_scan_dir() {
    local dir
    dir=$(mktemp -d /tmp/joinblock-ini.XXXXXX)
    for ini in /etc/php/"$DEBIAN_PHP"/cli/conf.d/*.ini; do
        case "$ini" in *joinblock*) continue ;; esac
        [ -e "$ini" ] && ln -s "$ini" "$dir/"
    done
    echo "$dir"
}

# Runs a PHPUnit command ("$@") under a time limit ($JOINBLOCK_SUITE_LIMIT seconds, 1500 by
# default; a whole run takes 5 to 10 minutes), so that a test that hangs ends the run naming
# itself rather than using up CI's time. The name comes from PHPUnit's TeamCity log, which
# PHPUnit 9 to 13 write as each test starts.
# PHPUnit 10 and later count deprecations (PHP's, and PHPUnit's own about our tests) and notices,
# but pass despite them: these options make each one fail the run, so that what a newer PHP or
# PHPUnit deprecates is seen the day it comes. PHPUnit 9 has no such options; it prints PHP's
# deprecations on stderr.
# The version is asked of Debian's PHP with its own ini files: the suite's PHP and ini files (the
# ZTS build's, say) may lack extensions PHPUnit checks for before it answers.
phpunit_strict_options() {
    local version major
    version=$(env -u PHP_INI_SCAN_DIR "${PHP:-php}" /usr/bin/phpunit --version) ||
        { echo "error: ${PHP:-php} /usr/bin/phpunit --version failed (exit $?)" >&2; return 1; }
    major=$(sed -n 's/^PHPUnit \([0-9]*\)\..*/\1/p' <<<"$version")
    [ -n "$major" ] || { echo "error: /usr/bin/phpunit --version named no version: $version" >&2; return 1; }
    [ "$major" -lt 10 ] || echo --fail-on-deprecation --fail-on-phpunit-deprecation --fail-on-notice \
        --display-deprecations --display-phpunit-deprecations --display-notices
}

run_suite() {
    local limit=${JOINBLOCK_SUITE_LIMIT:-1500} log rc=0 running strict options
    strict=$(phpunit_strict_options) || return
    read -ra options <<<"$strict"
    log=$(mktemp /tmp/joinblock-suite.XXXXXX)
    timeout --kill-after=20 "$limit" "$@" "${options[@]}" --log-teamcity "$log" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        running=$(grep "testStarted " "$log" | tail -n 1 | sed "s/.* locationHint='php_qn:\/\/[^:]*::\\\\//; s/' flowId=.*//")
        echo "error: PHPUnit did not end within $limit s (JOINBLOCK_SUITE_LIMIT) and was stopped; the test running then: ${running:-none had started}" >&2
    fi
    rm -f "$log"
    return "$rc"
}
