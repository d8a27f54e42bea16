<?php

/**
 * The joinblock extension's API: the single statement of what it exports.
 *
 * For static analysis only (PHPStan `scanFiles`, IDEs): never `require` this file at run time,
 * where the extension (or the polyfill) already defines everything below.
 */

namespace {
    /**
     * Takes the per-key lock that serialises work on one member (the key is usually an email).
     *
     * The lock file is `<dir>/join-lock-<sha1(strtolower(trim($key)))>`, the join-block
     * plugin's own name, so the extension and the plugin's code exclude each other.
     *
     * @param array{dir?: string, timeout?: int|float|null, backend?: 'file'|'mysql'} $options
     *   - `dir`: lock directory of the file backend; default INI `joinblock.lock_dir` (the
     *     installed ini: `/run/joinblock`), else `sys_get_temp_dir()`. A relative one is under
     *     PHP's `getcwd()`, as PHP's file functions read it (in a thread-safe PHP, the request
     *     thread's own working directory). Ignored when configuration (joinblock_configure(), else INI)
     *     chooses the mysql backend, so callers written for files keep working.
     *   - `timeout`: seconds to wait; absent or null waits as long as it takes, 0 tries once.
     *   - `backend`: `file` (flock, one host) or `mysql` (`GET_LOCK` on the site's database,
     *     every host); default from joinblock_configure(), else INI `joinblock.lock_backend`.
     *
     * @throws \TypeError wrong argument or option types
     * @throws \ValueError empty key after trimming, unknown option, empty `dir` or `dir` together
     *   with `backend => 'mysql'`, unknown `backend`, negative, NaN or infinite `timeout`
     * @throws \JoinBlock\LockTimeoutException the lock was not free in time (the message names
     *   the holder: its pid and program or php-fpm pool, or the MySQL connection)
     * @throws \JoinBlock\LockException this thread already holds the lock, or the lock file
     *   cannot be used (missing or unwritable directory, symlink, directory or FIFO planted, a
     *   file of another user than PHP's or the directory's owner, a network file system), or
     *   the MySQL server cannot be used (not configured, unreachable or silent for longer than
     *   INI `joinblock.mysql_connect_timeout`, wrong credentials, a Galera node or a read-only
     *   replica), or another MySQL server is configured while this thread holds locks on the
     *   first, or `dir` is relative and PHP's `getcwd()` fails
     */
    function joinblock_acquire_lock(string $key, array $options = []): \JoinBlock\Lock {}

    /**
     * Releases a lock; null and an already released lock do nothing.
     *
     * @throws \JoinBlock\LockException the lock file could not be removed or unlocked
     */
    function joinblock_release_lock(?\JoinBlock\Lock $lock = null): void {}

    /**
     * Settings for the rest of this request (they end with it): the lock backend, and the
     * MySQL server for the mysql backend, either as a URL or as WordPress's wp-config.php
     * constants. Replaces what an earlier call set; `[]` goes back to INI.
     *
     * @param array{lock_backend?: 'file'|'mysql', mysql_url?: string, db_host?: string,
     *   db_user?: string, db_password?: string, db_name?: string, table_prefix?: string} $settings
     *   - `mysql_url`: `mysql://user:password@host:port/dbname`, parts percent-encoded,
     *     `?socket=/path` for a Unix socket; default INI `joinblock.mysql_url`.
     *   - `db_host`, `db_user`, `db_password`, `db_name`: `DB_HOST` (`host`, `host:port`,
     *     `host:/path/to/socket`; `localhost` alone is the default socket), `DB_USER`,
     *     `DB_PASSWORD`, `DB_NAME`. Not with `mysql_url`.
     *   - `table_prefix`: put before the names of the tag check's site-wide tables on that
     *     server (WordPress's `$wpdb->prefix`); letters, digits and underscores, at most 40;
     *     default INI `joinblock.table_prefix`, else none.
     *
     * @throws \TypeError a setting that is not a string
     * @throws \ValueError unknown setting, bad URL or host, `mysql_url` with `db_*`, `db_*`
     *   without host, user and name, or a table prefix with other characters
     */
    function joinblock_configure(array $settings): void {}

    /**
     * What this process's implementation is doing, for dashboards such as WordPress's Site
     * Health: never a password or an API key.
     *
     * @return array{implementation: 'extension'|'polyfill', version: string, thread_safety: 'NTS'|'ZTS',
     *   lock_backend: 'file'|'mysql'|null, lock_dir: string|null, mysql_server: string|null,
     *   action_network_url: string, counters: array{locks_acquired: int, locks_waited: int,
     *   lock_timeouts: int, action_network_requests: int}|null, problems: array<string, string>}
     *   - `thread_safety`: `ZTS` in a thread-safe PHP (`PHP_ZTS`), whose requests run as threads
     *     of one process, else `NTS`.
     *   - `lock_backend`, `lock_dir`: in effect when a call names none (joinblock_configure(),
     *     else INI; the directory from INI `joinblock.lock_dir`, else `sys_get_temp_dir()`).
     *   - `mysql_server`: the mysql backend's server as `user@host:port/dbname` (or
     *     `user@host:/socket/dbname`); null when none is configured.
     *   - `counters`: this process's locks and Action Network requests since it started (over
     *     all its threads in a thread-safe PHP); null
     *     for the polyfill, which keeps nothing beyond one request.
     *   - `problems`: setting => why it is unusable (that setting's value is then null).
     */
    function joinblock_status(): array {}

    /**
     * Whether the Action Network person with this email has the tag named `$tag` (names compare
     * case-insensitively, as Action Network does); null when no person has that email.
     *
     * Costs 1 request (the person) + the person's taggings pages up to the first match once the
     * tag's href is known to this process; learning it costs the first page of the group's tag
     * list (for two unknown tags or more) and at most one request per tag of the person, or a
     * walk of the tag list when that is cheaper. Never a request per tagging once learned.
     *
     * @param array{base_url?: string, timeout?: int|float, deadline?: int|float, max_pages?: int,
     *   tag_cache_ttl?: int|float, max_rps?: int|float} $options
     *   - `base_url`: API root; default INI `joinblock.action_network_url`
     *     (`https://actionnetwork.org/api/v2/`). Plain `http://` only to loopback.
     *   - `timeout`: seconds per request, default 10.
     *   - `deadline`: seconds for the whole call, waits included, default 30.
     *   - `max_pages`: taggings pages read at most, default 10.
     *   - `tag_cache_ttl`: seconds a learned tag name stays trusted in this process, default 600.
     *   - `max_rps`: requests per second all processes of the host send at most together, or of every host of the site with the mysql lock backend (INI joinblock.shared_state_backend; this process alone with INI joinblock.shared_state = 0), default 4; requests go 1.1 / max_rps apart.
     *
     * @throws \TypeError wrong argument or option types, an email or tag that is not UTF-8
     * @throws \ValueError empty email, tag or key, a key that is not UTF-8 or has control characters, unknown
     *   option, bad `base_url`, non-positive `timeout`, `deadline`, `max_pages` or `max_rps`
     * @throws \JoinBlock\ActionNetworkException the answer cannot be known: transport error,
     *   timeout, deadline, error status, page cap, looping or foreign link, bad or oversized body,
     *   taggings without a tag link when the tag is not among the others
     */
    function joinblock_person_has_tag(string $email, string $tag, string $apiKey, array $options = []): ?bool {}
}

namespace JoinBlock {
    /**
     * A held lock. Freeing it (unset, end of scope or request, exit, fatal error) releases it.
     * Not constructible, cloneable or serialisable from PHP.
     */
    final class Lock
    {
        /** Always throws: locks come from joinblock_acquire_lock(). */
        public function __construct() {}

        /** The lock file's path (file backend) or the `GET_LOCK` name (mysql backend). */
        public function path(): string {}

        /**
         * Whether this process still holds the lock: false after release, in a forked child,
         * and (mysql backend) once the connection that took it is gone.
         */
        public function isHeld(): bool {}

        /**
         * Releases the lock; releasing again does nothing.
         *
         * @throws LockException the lock file could not be removed or unlocked, or (mysql
         *   backend) the lock was lost with its connection and may belong to someone else now
         */
        public function release(): void {}
    }

    /** A lock could not be taken or released. */
    class LockException extends \RuntimeException {}

    /** The lock was not free before the timeout. */
    class LockTimeoutException extends LockException {}

    /** Action Network's answer could not be had; the message says why and never holds the key. */
    class ActionNetworkException extends \RuntimeException {}
}
