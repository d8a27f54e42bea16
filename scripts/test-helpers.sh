# Shared by the install-path tests (scripts/test-install-paths, scripts/test-official-php):
# how a check reports, and PIE's build sequence. Source it after common.sh; the caller sets
# $scratch, a directory for logs.

ok() { echo "ok: $*"; }
failed() { echo "FAILED: $*" >&2; exit 1; }
# Runs a command that must fail, with stderr+stdout in $output.
must_fail() {
    if output=$("$@" 2>&1); then
        failed "expected to fail: $*"
    fi
}
# PIE's four commands in the package tree $1, for the PHP of phpize $2 and php-config $3.
pie_sequence() {
    (
        cd "$1"
        "$2" >"$scratch/phpize.log" 2>&1
        ./configure --with-php-config="$3" >"$scratch/configure.log" 2>&1
        make >"$scratch/make.log" 2>&1
        make install >"$scratch/install.log" 2>&1
    ) || { tail -n 30 "$scratch"/*.log >&2; failed "$2 && ./configure --with-php-config=$3 && make && make install"; }
}
# Whether the PHP command "$@" lists joinblock among its modules (-m).
loads_joinblock() {
    "$@" -m | grep -x joinblock >/dev/null
}
expect_in_output() {
    grep -qF -- "$1" <<<"$output" || { echo "$output" | tail -n 20 >&2; failed "$2: no \"$1\" in the output"; }
}
