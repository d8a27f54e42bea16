<?php

/**
 * The joinblock extension's API in plain PHP, for PHP processes that do not load the extension.
 *
 * `require_once` it (or name it in `auto_prepend_file`): it defines the functions and classes of
 * php-stubs/joinblock.stub.php only when they are not defined yet, so a process with the
 * extension keeps the extension. PHP 8.2 through 8.6, no Composer. The lock's file backend needs nothing
 * more; its mysql backend needs the mysqli extension (which WordPress needs too); the tag check
 * needs curl and mbstring (tag names compare without regard to case, non-ASCII ones too), and
 * throws an ActionNetworkException saying which is missing rather than answer without it.
 *
 * Same contract as the extension, and the same protocols, so that a site can mix both:
 * the same lock files (`<dir>/join-lock-<sha1(strtolower(trim($key)))>`) and flock protocol,
 * the same `GET_LOCK` names, the same tag algorithm, request budget, errors and security rules.
 * What PHP code cannot do the same way:
 * - PHP's fopen() cannot refuse to follow a symbolic link: a link at the lock path is refused
 *   before opening and after locking, so it is never locked nor truncated, but one planted in
 *   between can make fopen() create an empty file where it points.
 * - Nothing outlives a PHP-FPM request: the tag cache, the HTTP connection and the MySQL
 *   connection last one request (a CLI process is one request). A MySQL lock therefore always
 *   ends with its request.
 * - mysqli ends its connection when the process that holds the object ends: a child made with
 *   pcntl_fork that exits ends its parent's MySQL session, and with it the parent's MySQL locks
 *   (isHeld() then says false, and release() says the lock was lost). Its socket is not
 *   close-on-exec and PHP cannot close it alone: a child that lives on (forked, or started with
 *   proc_open) keeps a dead holder's MySQL lock until it exits.
 * - mysqli counts connect and read timeouts in whole seconds: joinblock.mysql_connect_timeout is
 *   rounded up while connecting.
 * - INI settings (`joinblock.lock_dir`, `joinblock.lock_backend`, `joinblock.mysql_url`,
 *   `joinblock.mysql_connect_timeout`, `joinblock.action_network_url`) are read from php.ini,
 *   conf.d or `-d` (get_cfg_var()): a PHP script cannot register INI entries, so neither
 *   ini_set() nor a PHP-FPM pool's php_admin_value reaches them (joinblock_configure() does).
 *   phpinfo() shows no section.
 */

declare(strict_types=1);

// Everything is defined only where the extension is not loaded: a process with the extension
// keeps it. The parts, in the order their classes need each other:
if (!\function_exists('joinblock_acquire_lock')) {
    require __DIR__ . '/polyfill/api.php';
    require __DIR__ . '/polyfill/support.php';
    require __DIR__ . '/polyfill/file-lock.php';
    require __DIR__ . '/polyfill/lock-files.php';
    require __DIR__ . '/polyfill/mysql-lock.php';
    require __DIR__ . '/polyfill/locking.php';
    require __DIR__ . '/polyfill/shared-state.php';
    require __DIR__ . '/polyfill/site-state.php';
    require __DIR__ . '/polyfill/action-network.php';
    require __DIR__ . '/polyfill/functions.php';
}
