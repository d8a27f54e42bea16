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
     * @param array{dir?: string, timeout?: int|float|null} $options
     *   - `dir`: lock directory; default INI `joinblock.lock_dir`, else `sys_get_temp_dir()`.
     *   - `timeout`: seconds to wait; absent or null waits as long as it takes, 0 tries once.
     *
     * @throws \TypeError wrong argument or option types
     * @throws \ValueError empty key after trimming, unknown option, empty `dir`,
     *   negative, NaN or infinite `timeout`
     * @throws \JoinBlock\LockTimeoutException the lock was not free in time
     * @throws \JoinBlock\LockException this thread already holds the lock, or the lock file
     *   cannot be used (missing or unwritable directory, symlink, directory or FIFO planted)
     */
    function joinblock_acquire_lock(string $key, array $options = []): \JoinBlock\Lock {}

    /**
     * Releases a lock; null and an already released lock do nothing.
     *
     * @throws \JoinBlock\LockException the lock file could not be removed or unlocked
     */
    function joinblock_release_lock(?\JoinBlock\Lock $lock = null): void {}
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

        /** The lock file's path. */
        public function path(): string {}

        /** Whether this process still holds the lock (false after release and in a forked child). */
        public function isHeld(): bool {}

        /**
         * Releases the lock; releasing again does nothing.
         *
         * @throws LockException
         */
        public function release(): void {}
    }

    /** A lock could not be taken or released. */
    class LockException extends \RuntimeException {}

    /** The lock was not free before the timeout. */
    class LockTimeoutException extends LockException {}
}
