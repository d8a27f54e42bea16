# Shared by scripts/install, scripts/uninstall and scripts/package (source it after common.sh):
# which PHP the extension is for, whether a built .so fits that PHP, and PHP-FPM reloads.

# The template of /etc/php/<ver>/mods-available/joinblock.ini, every setting documented.
JOINBLOCK_INI_TEMPLATE="$JOINBLOCK_ROOT/packaging/joinblock.ini"
JOINBLOCK_TMPFILES="$JOINBLOCK_ROOT/packaging/joinblock.tmpfiles"

die() {
    echo "error: $*" >&2
    exit 1
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run this as root (it writes to the PHP extension dir and /etc/php)"
}

# Makes sure a php-config exists: installs the -dev package of the PHP on PATH when it is
# missing (the -dev package of Debian's PHP and the other build packages).
ensure_php_config() {
    if [ -n "${PHP_CONFIG:-}" ] || command -v php-config >/dev/null; then
        return
    fi
    local version
    version=$(php -n -r 'echo PHP_MAJOR_VERSION, ".", PHP_MINOR_VERSION;' 2>/dev/null) ||
        die "no PHP found (php not on PATH): install your PHP first (here: apt install php$DEBIAN_PHP-fpm php$DEBIAN_PHP-cli)"
    if [ "$version" = "$DEBIAN_PHP" ]; then
        ensure_packages "${BUILD_PACKAGES[@]}"
    else
        ensure_packages "php$version-dev"
    fi
}

# Prints what "$@" (one of the PHP's own programs) prints on stdout; when it fails or prints
# nothing, stops with what ran, what came back, and what to do.
ask_php() {
    local out status=0 err
    err=$(mktemp)
    out=$("$@" 2>"$err") || status=$?
    if [ "$status" -ne 0 ] || [ -z "$out" ]; then
        local said outcome
        said=$( { head -c 600 "$err"; printf '%s' "$out" | head -c 600; } | tr '\n' ' ')
        rm -f "$err"
        [ "$status" -ne 0 ] && outcome="failed (exit status $status)" || outcome="printed nothing"
        die "\`$*\` $outcome; ${said:+it printed: }${said:-no output}
  Is $1 part of the PHP you mean? Set PHP_CONFIG to the php-config of the PHP to install for
  (a PHP built from source, as the official php:* images have it: PHP_CONFIG=/usr/local/bin/php-config)."
    fi
    rm -f "$err"
    printf '%s\n' "$out"
}

# Finds the target PHP through `php-config` ($PHP_CONFIG, else the one on PATH) and sets:
# PHP_CONFIG_BIN, PHP_BIN (its CLI), PHP_FULL_VERSION (8.2.36), PHP_VERSION (8.2), PHP_API,
# PHP_EXT_DIR, PHP_ZTS (0/1), PHP_DEBUG_BUILD (0/1) and PHP_BUILD_ID (API20220829,NTS): the
# build ID an extension must carry for this PHP to load it. It asks only what every PHP's
# php-config and CLI answer (php.net's too: no Debian-only --phpapi); each failure says why.
find_target_php() {
    if [ -n "${PHP_CONFIG:-}" ]; then
        [ -x "$PHP_CONFIG" ] || die "PHP_CONFIG=$PHP_CONFIG is not an executable php-config"
        PHP_CONFIG_BIN=$PHP_CONFIG
    elif ! PHP_CONFIG_BIN=$(command -v php-config); then
        die "php-config not found: install the -dev package of the PHP to build for (here: php$DEBIAN_PHP-dev), or set PHP_CONFIG=/path/to/php-configX.Y"
    fi
    PHP_FULL_VERSION=$(ask_php "$PHP_CONFIG_BIN" --version)
    PHP_VERSION=$(echo "$PHP_FULL_VERSION" | cut -d. -f1,2)
    PHP_EXT_DIR=$(ask_php "$PHP_CONFIG_BIN" --extension-dir)
    PHP_BIN=$(ask_php "$PHP_CONFIG_BIN" --php-binary)
    [ -x "$PHP_BIN" ] || die "$PHP_CONFIG_BIN names $PHP_BIN as its PHP, which is missing: install php$PHP_VERSION-cli (a PHP built from source: its make install)"
    local cli_version info
    cli_version=$(ask_php "$PHP_BIN" -n -r 'echo PHP_VERSION;')
    [ "$cli_version" = "$PHP_FULL_VERSION" ] ||
        die "$PHP_CONFIG_BIN is PHP $PHP_FULL_VERSION but $PHP_BIN is PHP $cli_version: install matching phpX.Y-cli and phpX.Y-dev versions"
    PHP_ZTS=$(ask_php "$PHP_BIN" -n -r 'echo (int) PHP_ZTS;')
    PHP_DEBUG_BUILD=$(ask_php "$PHP_BIN" -n -r 'echo (int) PHP_DEBUG;')
    info=$(ask_php "$PHP_BIN" -n -i)
    PHP_API=$(sed -n 's/^PHP API => //p' <<<"$info")
    PHP_BUILD_ID=$(sed -n 's/^PHP Extension Build => //p' <<<"$info")
    [ -n "$PHP_API" ] && [ -n "$PHP_BUILD_ID" ] ||
        die "\`$PHP_BIN -n -i\` shows no \"PHP API\" or \"PHP Extension Build\" row: is $PHP_BIN a PHP CLI?"
}

# Sets DEBIAN_LAYOUT: 1 for Debian's and Ubuntu's PHP packages (/usr/lib/php/<api>,
# /etc/php/<ver>/mods-available, phpenmod), 0 for any other PHP (built from source: official
# php:* images, /usr/local, /opt); then SCAN_DIR is the directory of extra ini files that PHP
# reads (php --ini), empty when it reads none.
find_php_layout() {
    DEBIAN_LAYOUT=1
    SCAN_DIR=
    if [ ! -d "/etc/php/$PHP_VERSION/mods-available" ] || ! command -v phpenmod >/dev/null ||
        [ "${PHP_EXT_DIR#/usr/lib/php/}" = "$PHP_EXT_DIR" ]; then
        DEBIAN_LAYOUT=0
        SCAN_DIR=$(env -u PHP_INI_SCAN_DIR "$PHP_BIN" --ini | sed -n 's/^Scan for additional .ini files in: *//p')
        [ "$SCAN_DIR" != "(none)" ] || SCAN_DIR=
    fi
}

# "NTS, non-debug" for 0 0.
describe_build() {
    local zts=$1 debug=$2
    [ "$zts" = 1 ] && printf 'ZTS (thread-safe)' || printf 'NTS (non-thread-safe)'
    [ "$debug" = 1 ] && printf ', debug' || printf ', non-debug'
}

report_target_php() {
    echo "==> PHP $PHP_FULL_VERSION ($PHP_BIN, from $PHP_CONFIG_BIN): API $PHP_API, $(describe_build "$PHP_ZTS" "$PHP_DEBUG_BUILD"), extension dir $PHP_EXT_DIR" >&2
}

# The build ID compiled into an extension .so (API20220829,NTS or API20220829,TS,debug).
so_build_id() {
    grep -aoE 'API[0-9]{8},N?TS(,debug)?' "$1" | head -n 1 || true
}

# PHP minor version of a module API number, for messages.
php_version_of_api() {
    case "$1" in
        20200930) echo 8.0 ;; 20210902) echo 8.1 ;; 20220829) echo 8.2 ;;
        20230831) echo 8.3 ;; 20240924) echo 8.4 ;; 20250925) echo 8.5 ;; *) echo "with module API $1" ;;
    esac
}

# Refuses, with the reason, a .so that the target PHP would not load.
check_so_fits() {
    local so=$1 id api zts debug
    [ -f "$so" ] || die "$so does not exist"
    id=$(so_build_id "$so")
    [ -n "$id" ] || die "$so carries no PHP extension build ID: not a PHP extension?"
    if [ "$id" != "$PHP_BUILD_ID" ]; then
        api=${id:3:8}
        case "$id" in *,TS*) zts=1 ;; *) zts=0 ;; esac
        case "$id" in *,debug) debug=1 ;; *) debug=0 ;; esac
        die "$so does not fit this PHP and would not load:
  the .so was built for PHP $(php_version_of_api "$api") (API $api), $(describe_build "$zts" "$debug") [$id]
  this PHP is $PHP_FULL_VERSION (API $PHP_API), $(describe_build "$PHP_ZTS" "$PHP_DEBUG_BUILD") [$PHP_BUILD_ID]
  Build for this PHP: install php$PHP_VERSION-dev, then run this again without JOINBLOCK_SO and with
  PHP_CONFIG=$PHP_CONFIG_BIN (see docs/install.md)."
    fi
    local loaded
    loaded=$("$PHP_BIN" -n -d "extension=$so" -r 'echo extension_loaded("joinblock") ? "yes" : "no";' 2>&1) || true
    [ "$loaded" = yes ] || die "PHP $PHP_FULL_VERSION ($PHP_BIN) cannot load $so:
$loaded"
}

# Sets JOINBLOCK_SO: the prebuilt .so named by $JOINBLOCK_SO, else a fresh build for the
# target PHP (cargo only rebuilds what changed).
obtain_extension() {
    if [ -n "${JOINBLOCK_SO:-}" ]; then
        echo "==> using the prebuilt $JOINBLOCK_SO (JOINBLOCK_SO)" >&2
        return
    fi
    ensure_packages libclang-dev pkg-config libssl-dev
    # ext-php-rs's build script reads `php -i` ($PHP, else `php` on PATH) for the API version
    # and thread safety, and `php-config --includes` ($PHP_CONFIG, else PATH) for headers:
    # make both name the target PHP.
    if [ -n "${PHP_CONFIG:-}" ]; then
        export PHP_CONFIG
    fi
    if [ -z "${PHP:-}" ]; then
        local path_php
        path_php=$(command -v php || true)
        if [ -z "$path_php" ] || [ "$(readlink -f "$path_php")" != "$(readlink -f "$PHP_BIN")" ]; then
            export PHP=$PHP_BIN
        fi
    fi
    build_extension
}

# Makes the lock directory now, as /etc/tmpfiles.d/joinblock.conf (an admin's override) or else
# /usr/lib/tmpfiles.d/joinblock.conf says; at boot systemd-tmpfiles makes it again. Without
# systemd-tmpfiles (a container), it reads the entry and makes the directory itself, once:
# nothing makes it again after a reboot there. The .deb's postinst runs this function too.
make_lock_dir() {
    local conf=/etc/tmpfiles.d/joinblock.conf
    [ -e "$conf" ] || conf=/usr/lib/tmpfiles.d/joinblock.conf
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create "$conf"
    else
        # The entry: d <path> <mode> <user> <group> -
        local type path mode user group
        read -r type path mode user group _ < <(grep -E '^d[[:space:]]' "$conf")
        install -d -m "$mode" -o "$user" -g "$group" "$path"
    fi
    echo "==> lock directory: $(stat -c '%n, mode %a, owner %U:%G' /run/joinblock)" >&2
}

# Reloads php<ver>-fpm if it is running (systemd, else SysV `service`); fine if neither exists.
reload_fpm() {
    local service="php$1-fpm"
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        if systemctl is-active --quiet "$service"; then
            systemctl reload "$service" || die "systemctl reload $service failed: restart it by hand"
            echo "==> reloaded $service" >&2
        else
            echo "==> $service is not running: nothing to reload" >&2
        fi
    elif command -v service >/dev/null && [ -x "/etc/init.d/$service" ]; then
        # The init script's `status` counts any php-fpm$1 process (a pool someone started by
        # hand, a test's) and its `reload` succeeds without a pid file: ask about the process
        # its pid file names, the one `reload` signals.
        local pidfile
        pidfile=$(sed -n 's/^pid[ =]*//p' "/etc/php/$1/fpm/php-fpm.conf" 2>/dev/null || true)
        pidfile=${pidfile:-/run/php/php$1-fpm.pid}
        if start-stop-daemon --status --pidfile "$pidfile" --name "php-fpm$1"; then
            service "$service" reload || die "service $service reload failed: restart it by hand"
            echo "==> reloaded $service" >&2
        else
            echo "==> $service is not running: nothing to reload" >&2
            if command -v pgrep >/dev/null && pgrep -x "php-fpm$1" >/dev/null; then
                echo "==> php-fpm$1 processes run outside the $service service: restart those yourself for them to load the change" >&2
            fi
        fi
    else
        echo "==> no $service service here: restart your PHP-FPM yourself if you run one" >&2
    fi
    if [ -d "/etc/php/$1/apache2" ]; then
        echo "==> Apache's mod_php $1 is present too: reload apache2 for it to see the change" >&2
    fi
}

# Whether Debian's package of the extension is installed (then apt owns the files).
package_installed() {
    dpkg-query -W -f='${Status}' "php$1-joinblock" 2>/dev/null | grep -q "ok installed"
}

# The file name PIE looks for among a release's assets when the package says
# "download-url-method": ["pre-packaged-binary", ...], for the target PHP:
#   php_joinblock-<version>_php<X.Y>-<arch>-<os>-<libc>[-debug][-zts|-nts].zip
# (php/pie src/Platform/PrePackagedBinaryAssetName.php, since PIE 1.4.0: it accepts NTS names
# with or without -nts and lowercases the whole name; we always write -nts or -zts. <version> is
# the release tag as written: tag releases with the bare version.) <arch> is PIE's
# Architecture name (x86_64, arm64, x86), <os> its OperatingSystemFamily (linux, darwin, ...),
# <libc> its LibcFlavour (glibc, musl, bsdlibc).
pie_binary_name() {
    local version=$1 arch os libc debug ts
    case "$("$PHP_BIN" -n -r 'echo php_uname("m");')" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=arm64 ;;
        i?86 | x86) arch=x86 ;;
        *) die "PIE names no architecture for $(uname -m)" ;;
    esac
    os=$("$PHP_BIN" -n -r 'echo strtolower(PHP_OS_FAMILY);')
    if [ "$os" = darwin ]; then
        libc=bsdlibc
    elif case "$(ldd --version 2>&1 || true)" in *musl*) true ;; *) false ;; esac; then
        # (musl's ldd --version exits non-zero: no pipe, so pipefail cannot hide its answer.)
        libc=musl
    else
        libc=glibc
    fi
    [ "$PHP_DEBUG_BUILD" = 1 ] && debug=-debug || debug=
    [ "$PHP_ZTS" = 1 ] && ts=-zts || ts=-nts
    echo "php_joinblock-${version}_php$PHP_VERSION-$arch-$os-$libc$debug$ts.zip"
}
