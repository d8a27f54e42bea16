dnl phpize support: `phpize && ./configure && make && make install`, the sequence PIE (and
dnl PECL before it) runs, builds joinblock with cargo for the PHP whose php-config configure
dnl was given (--with-php-config, else php-config on PATH) and installs joinblock.so into that
dnl PHP's extension directory. Nothing here compiles C: Makefile.frag hands the build to cargo,
dnl and build.rs checks that the PHP binary and the headers belong to one PHP.

PHP_ARG_ENABLE([joinblock],
  [whether to build joinblock],
  [AS_HELP_STRING([--enable-joinblock], [Build joinblock (the member lock and Action Network tag check of the join-block plugin)])],
  [yes])

if test "$PHP_JOINBLOCK" != "no"; then
  dnl cargo from PATH, else rustup's default location: `sudo pie install` often runs with a
  dnl PATH that lacks ~/.cargo/bin.
  AC_PATH_PROG([CARGO], [cargo], [no], [$PATH:$HOME/.cargo/bin])
  if test "$CARGO" = "no"; then
    AC_MSG_ERROR([cargo not found: joinblock is written in Rust; install Rust (https://rustup.rs, or Debian 12: apt install cargo) and run configure again])
  fi
  dnl ext-php-rs generates its bindings with libclang.
  AC_MSG_CHECKING([for libclang (ext-php-rs's bindgen needs it)])
  joinblock_libclang=$LIBCLANG_PATH
  for joinblock_candidate in /usr/lib/llvm-*/lib/libclang*.so* /usr/lib*/libclang*.so* /usr/lib/*/libclang*.so* /usr/local/lib/libclang*; do
    test -e "$joinblock_candidate" && joinblock_libclang=$joinblock_candidate
  done
  if test -n "$joinblock_libclang"; then
    AC_MSG_RESULT([yes])
  else
    AC_MSG_RESULT([no])
    AC_MSG_ERROR([libclang not found: install it (Debian/Ubuntu: apt install libclang-dev; Alpine: apk add clang-dev) or set LIBCLANG_PATH])
  fi
  dnl reqwest's TLS is the system's OpenSSL (openssl-sys finds it with pkg-config).
  AC_MSG_CHECKING([for OpenSSL's development files])
  if pkg-config --exists openssl 2>/dev/null; then
    AC_MSG_RESULT([yes])
  else
    AC_MSG_RESULT([no])
    AC_MSG_ERROR([OpenSSL's development files (and pkg-config) not found: install them (Debian/Ubuntu: apt install libssl-dev pkg-config; Alpine: apk add openssl-dev pkgconf)])
  fi
  dnl The php-config this configure was given, as a path cargo can run from any directory.
  JOINBLOCK_PHP_CONFIG=`command -v "$PHP_CONFIG" 2>/dev/null`
  test -n "$JOINBLOCK_PHP_CONFIG" || JOINBLOCK_PHP_CONFIG=$PHP_CONFIG
  PHP_SUBST([CARGO])
  PHP_SUBST([JOINBLOCK_PHP_CONFIG])
  dnl No PHP_NEW_EXTENSION (no C sources), so the fragment is named with its directory.
  PHP_ADD_MAKEFILE_FRAGMENT([$abs_srcdir/Makefile.frag], [$abs_srcdir], [$abs_builddir])
fi
