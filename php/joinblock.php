<?php

/**
 * The joinblock extension's API in plain PHP, for PHP processes that do not load the extension.
 *
 * `require_once` it (or name it in `auto_prepend_file`): it defines the functions and classes of
 * php-stubs/joinblock.stub.php only when they are not defined yet, so a process with the
 * extension keeps the extension. PHP 8.1+, no Composer. The lock's file backend needs nothing
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

namespace JoinBlock {
    if (!\function_exists('joinblock_acquire_lock')) {
        /** A lock could not be taken or released. */
        class LockException extends \RuntimeException {}

        /** The lock was not free before the timeout. */
        class LockTimeoutException extends LockException {}

        /** Action Network's answer could not be had; the message says why and never holds the key. */
        class ActionNetworkException extends \RuntimeException {}

        /** A held lock. Freeing it (unset, end of scope or request, exit, fatal error) releases it. */
        final class Lock implements \Serializable
        {
            /** Always throws: locks come from joinblock_acquire_lock(). */
            public function __construct()
            {
                throw Polyfill\Api::raised(new \Exception('You cannot instantiate this class from PHP.'), __FUNCTION__, self::class);
            }

            public function path(): string
            {
                return Polyfill\Locking::of($this)->path();
            }

            public function isHeld(): bool
            {
                return Polyfill\Locking::of($this)->isHeld();
            }

            public function release(): void
            {
                try {
                    Polyfill\Locking::of($this)->release();
                } catch (LockException $e) {
                    throw Polyfill\Api::raised($e, __FUNCTION__, self::class);
                }
            }

            // The extension gets what follows from its object handlers, which PHP code cannot
            // set: these magic methods stand in for them (the API comparison leaves them out).

            public function __destruct()
            {
                try {
                    Polyfill\Locking::of($this)?->release();
                } catch (LockException) {
                    // Nobody is left to tell when PHP frees the lock; the extension drops it too.
                }
            }

            public function __clone()
            {
                throw new \Error('Trying to clone an uncloneable object of class ' . self::class);
            }

            public function __serialize(): array
            {
                throw new \Exception("Serialization of 'JoinBlock\\Lock' is not allowed");
            }

            public function __unserialize(array $data): void
            {
                throw new \Exception("Unserialization of 'JoinBlock\\Lock' is not allowed");
            }

            // \Serializable only so that the old `C:` form reaches a method that refuses it:
            // without one, unserialize() makes a Lock that fails on every call. __serialize()
            // takes precedence over serialize() in every PHP this file runs on.

            public function serialize(): never
            {
                $this->__serialize();
            }

            public function unserialize(string $data): never
            {
                $this->__unserialize([]);
            }
        }
    }
}

namespace JoinBlock\Polyfill {
    use JoinBlock\ActionNetworkException;
    use JoinBlock\Lock;
    use JoinBlock\LockException;
    use JoinBlock\LockTimeoutException;

    if (!\function_exists('joinblock_acquire_lock')) {
        /** How the API's exceptions look: thrown by the API function itself, as the extension's are. */
        final class Api
        {
            /** The extension's version whose contract this file implements. */
            public const VERSION = '0.1.0';

            /**
             * Re-aims $e, thrown somewhere in this file, at the caller of the API function or
             * method $function: its file, line and trace start where PHP's own function would
             * have thrown it.
             */
            public static function raised(\Throwable $e, string $function, ?string $class = null): \Throwable
            {
                $trace = $e->getTrace();
                foreach ($trace as $i => $frame) {
                    if ($frame['function'] === $function && ($frame['class'] ?? null) === $class) {
                        $base = $e instanceof \Exception ? \Exception::class : \Error::class;
                        (new \ReflectionProperty($base, 'file'))->setValue($e, $frame['file'] ?? $e->getFile());
                        (new \ReflectionProperty($base, 'line'))->setValue($e, $frame['line'] ?? $e->getLine());
                        (new \ReflectionProperty($base, 'trace'))->setValue($e, array_slice($trace, $i));
                        break;
                    }
                }
                return $e;
            }
        }

        /** An `array $options` argument, checked as the extension checks it. */
        final class Options
        {
            /** @var array<string, mixed> */
            private array $values = [];

            /** Refuses keys not in $known; $argument names the parameter as PHP does: `#2 ($options)`. */
            public function __construct(private string $function, private string $argument, array $given, array $known)
            {
                foreach ($given as $name => $value) {
                    if (!\in_array((string) $name, $known, true)) {
                        throw new \ValueError(sprintf(
                            '%s(): Argument %s has an unknown option "%s"; known options are: %s',
                            $function,
                            $argument,
                            self::escape((string) $name),
                            implode(', ', $known)
                        ));
                    }
                    $this->values[$name] = $value;
                }
            }

            /** An INI setting from php.ini or `-d`; null when unset or empty. */
            public static function ini(string $name): ?string
            {
                $value = get_cfg_var($name);
                return \is_string($value) && $value !== '' ? $value : null;
            }

            /** A name as Rust's escape_debug writes it into a message. */
            public static function escape(string $text): string
            {
                return preg_replace_callback('/[\x00-\x1f\x7f"\'\\\\]/', static fn (array $m): string => match ($m[0]) {
                    "\t" => '\t',
                    "\r" => '\r',
                    "\n" => '\n',
                    "\0" => '\0',
                    '"', "'", '\\' => '\\' . $m[0],
                    default => sprintf('\u{%x}', \ord($m[0])),
                }, $text);
            }

            public function valueError(string $name, string $problem): \ValueError
            {
                return new \ValueError("{$this->function}(): Argument {$this->argument} option \"$name\" $problem");
            }

            private function typeError(string $name, string $expected, mixed $value): \TypeError
            {
                return new \TypeError(sprintf(
                    '%s(): Argument %s option "%s" must be %s, %s given',
                    $this->function,
                    $this->argument,
                    $name,
                    $expected,
                    get_debug_type($value)
                ));
            }

            /** A non-empty string without NUL bytes. */
            public function bytes(string $name): ?string
            {
                $value = $this->text($name);
                if ($value === '') {
                    throw $this->valueError($name, 'must not be empty');
                }
                return $value;
            }

            /** A string, possibly empty, of UTF-8 text without NUL bytes. */
            public function string(string $name): ?string
            {
                $value = $this->text($name);
                if ($value !== null && !preg_match('//u', $value)) {
                    throw $this->valueError($name, 'must be valid UTF-8');
                }
                return $value;
            }

            /** A string without NUL bytes; null when absent or null. */
            private function text(string $name): ?string
            {
                $value = $this->values[$name] ?? null;
                if ($value === null) {
                    return null;
                }
                if (!\is_string($value)) {
                    throw $this->typeError($name, 'of type string', $value);
                }
                if (str_contains($value, "\0")) {
                    throw $this->valueError($name, 'must not contain NUL bytes');
                }
                return $value;
            }

            /** An int or float, finite and not negative. */
            public function number(string $name): ?float
            {
                $value = $this->values[$name] ?? null;
                if ($value === null) {
                    return null;
                }
                if (!\is_int($value) && !\is_float($value)) {
                    throw $this->typeError($name, 'of type int|float|null', $value);
                }
                if (!is_finite((float) $value) || $value < 0) {
                    throw $this->valueError($name, 'must be a finite number greater than or equal to 0, or null');
                }
                return (float) $value;
            }

            /** Seconds: a number within what the extension's durations hold (2^64 s). */
            public function seconds(string $name): ?float
            {
                $seconds = $this->number($name);
                if ($seconds !== null && $seconds >= 18446744073709551616.0) {
                    throw $this->valueError($name, 'is too large');
                }
                return $seconds;
            }

            public function int(string $name): ?int
            {
                $value = $this->values[$name] ?? null;
                if ($value !== null && !\is_int($value)) {
                    throw $this->typeError($name, 'of type int|null', $value);
                }
                return $value;
            }
        }

        /** The OS's reasons, as PHP's warnings give them and as the extension words them. */
        final class Os
        {
            public const EPERM = 1;
            public const ENOENT = 2;
            public const EACCES = 13;
            public const EISDIR = 21;
            public const ELOOP = 40;

            /** Linux's texts for the errors lock files and connections meet. */
            private const MESSAGES = [
                1 => 'Operation not permitted', 2 => 'No such file or directory', 5 => 'Input/output error',
                6 => 'No such device or address', 12 => 'Cannot allocate memory', 13 => 'Permission denied',
                17 => 'File exists', 20 => 'Not a directory', 21 => 'Is a directory', 22 => 'Invalid argument',
                23 => 'Too many open files in system', 24 => 'Too many open files',
                28 => 'No space left on device', 30 => 'Read-only file system', 36 => 'File name too long',
                37 => 'No locks available', 40 => 'Too many levels of symbolic links',
                101 => 'Network is unreachable', 104 => 'Connection reset by peer',
                110 => 'Connection timed out', 111 => 'Connection refused', 113 => 'No route to host',
                122 => 'Disk quota exceeded',
            ];

            /**
             * Runs $call with its warnings kept from the caller's error handler; returns its result
             * and the OS reason its warning ended with (`fopen(…): Failed to open stream: <reason>`).
             *
             * @return array{mixed, ?string}
             */
            public static function attempt(callable $call): array
            {
                $warning = null;
                set_error_handler(static function (int $type, string $message) use (&$warning): bool {
                    $warning = $message;
                    return true;
                });
                try {
                    $result = $call();
                } finally {
                    restore_error_handler();
                }
                $at = $warning === null ? false : strrpos($warning, ': ');
                return [$result, $at === false ? $warning : substr($warning, $at + 2)];
            }

            public static function errno(?string $reason): ?int
            {
                $errno = $reason === null ? false : array_search($reason, self::MESSAGES, true);
                return $errno === false ? null : $errno;
            }

            /** `Permission denied (os error 13)`, as Rust prints an OS error. */
            public static function describe(?string $reason): string
            {
                $errno = self::errno($reason);
                return $errno === null ? ($reason ?? 'unknown error') : "$reason (os error $errno)";
            }

            public static function describeErrno(int $errno): string
            {
                return isset(self::MESSAGES[$errno]) ? self::MESSAGES[$errno] . " (os error $errno)" : "os error $errno";
            }
        }

        final class Clock
        {
            /** Monotonic seconds. */
            public static function now(): float
            {
                return hrtime(true) / 1e9;
            }

            /** Waits here are at most an hour, well within what usleep() takes. */
            public static function sleep(float $seconds): void
            {
                if ($seconds > 0) {
                    usleep((int) ceil($seconds * 1e6));
                }
            }

            /** Milliseconds for curl: at least 1 (0 means no limit), at most a year (an int). */
            public static function ms(float $seconds): int
            {
                return (int) ceil(max(0.001, min($seconds, 31536000.0)) * 1000);
            }
        }

        /** Jittered exponential backoff, for lock polling and HTTP retries. */
        final class Backoff
        {
            public function __construct(private float $next, private float $max) {}

            /** A random wait in [next/2, next], never past $remaining; then next doubles up to max. */
            public function next(?float $remaining = null): float
            {
                $wait = $this->next / 2 * (1 + random_int(0, 1000000) / 1000000);
                $this->next = min($this->next * 2, $this->max);
                return $remaining === null ? $wait : min($wait, $remaining);
            }
        }

        /** A held lock of either backend. */
        interface Held
        {
            /** The lock file, or the `GET_LOCK` name. */
            public function path(): string;

            public function isHeld(): bool;

            /** Releasing again, or from a forked child, does nothing. @throws LockException */
            public function release(): void;
        }

        /**
         * The locks this process claimed, from the first step of taking one until its release. A
         * second claim on one lock is refused: with flock the process would wait for itself
         * forever, and GET_LOCK would let it in twice (it is re-entrant per connection).
         */
        final class Claims
        {
            private const FATAL = E_ERROR | E_PARSE | E_CORE_ERROR | E_COMPILE_ERROR | E_USER_ERROR | E_RECOVERABLE_ERROR;

            /** @var array<string, array{int, ?Held}> lock id => [owner pid, the lock once taken] */
            private static array $claims = [];

            private static bool $hooked = false;

            /** @throws LockException when this process already claimed $id; $lock names it */
            public static function take(string $id, string $lock): void
            {
                $pid = getmypid();
                // Claims inherited across fork belong to the parent.
                self::$claims = array_filter(self::$claims, static fn (array $claim): bool => $claim[0] === $pid);
                if (isset(self::$claims[$id])) {
                    throw new LockException("$lock is already held by this thread; release it before acquiring it again");
                }
                self::$claims[$id] = [$pid, null];
                if (!self::$hooked) {
                    register_shutdown_function([self::class, 'releaseAfterFatal']);
                    self::$hooked = true;
                }
            }

            public static function taken(string $id, Held $lock): void
            {
                self::$claims[$id][1] = $lock;
            }

            public static function drop(string $id): void
            {
                unset(self::$claims[$id]);
            }

            /** After a fatal error PHP calls no destructor (it only closes files): release here. */
            public static function releaseAfterFatal(): void
            {
                if (((error_get_last()['type'] ?? 0) & self::FATAL) === 0) {
                    return;
                }
                foreach (self::$claims as [$pid, $lock]) {
                    try {
                        if ($pid === getmypid()) {
                            $lock?->release();
                        }
                    } catch (LockException) {
                        // The request is over; the next holder copes with what is left.
                    }
                }
            }
        }

        /**
         * The file backend: flock on the plugin's own lock files, with the extension's protocol
         * (src/lock/file.rs), so that both exclude each other:
         * 1. open without truncating, mode 0600, close-on-exec, and never a FIFO's blocking open;
         *    refuse anything but a regular file (a link, also before opening: fopen follows them);
         * 2. flock(LOCK_EX), or LOCK_NB polled with jittered backoff up to the deadline;
         * 3. check that the path still names the locked file; if not, the last holder unlinked it
         *    while we waited on it: close and start again;
         * 4. release unlinks the path while still holding the lock, then unlocks and closes.
         * After fork only the process that took the lock unlocks or unlinks it; a child only
         * closes its copy of the descriptor.
         */
        /**
         * Who holds a lock file, for a waiter that gives up: the pid in /proc/locks (the holder
         * writes nothing), what it is (php-fpm's worker title, else its program's name: never
         * its arguments) and how long the file has existed. As src/lock/holder.rs.
         */
        final class Holder
        {
            /** "pid 4242 (php-fpm: pool www) for 31.2 s"; null when it cannot be seen. @param resource $handle */
            public static function of($handle): ?string
            {
                $stat = fstat($handle);
                $locks = @file_get_contents('/proc/locks');
                if ($stat === false || $locks === false) {
                    return null;
                }
                // Linux's dev_t: the major number in bits 8-19 and 32-43, the minor in 0-7 and 20-31.
                $dev = $stat['dev'];
                $major = (($dev >> 8) & 0xfff) | (($dev >> 32) & ~0xfff);
                $minor = ($dev & 0xff) | (($dev >> 12) & ~0xff);
                $file = sprintf('%02x:%02x:%d', $major, $minor, $stat['ino']);
                foreach (explode("\n", $locks) as $line) {
                    $fields = preg_split('/\s+/', trim($line));
                    if (($fields[1] ?? '') === 'FLOCK' && ($fields[5] ?? '') === $file) {
                        $pid = (int) $fields[4];
                        return sprintf('pid %d (%s) for %.1f s', $pid, self::name($pid), max(0.0, microtime(true) - $stat['ctime']));
                    }
                }
                return null;
            }

            private static function name(int $pid): string
            {
                $title = explode("\0", (string) @file_get_contents("/proc/$pid/cmdline"))[0];
                if (str_starts_with($title, 'php-fpm: pool ')) {
                    return trim($title);
                }
                $comm = @file_get_contents("/proc/$pid/comm");
                return $comm === false ? 'unknown program' : trim($comm);
            }
        }

        /** The users that lock files belong to. */
        final class Users
        {
            /** The effective uid; without posix, the owner of a file this process makes. */
            public static function me(): int
            {
                static $uid = null;
                if ($uid === null && \function_exists('posix_geteuid')) {
                    $uid = posix_geteuid();
                }
                if ($uid === null) {
                    $probe = tmpfile();
                    $uid = fstat($probe)['uid'];
                    fclose($probe);
                }
                return $uid;
            }

            /** `uid 65534 (nobody)`, or `uid 1234` when the system has no name for it. */
            public static function describe(int $uid): string
            {
                $entry = \function_exists('posix_getpwuid') ? posix_getpwuid($uid) : false;
                return $entry === false ? "uid $uid" : "uid $uid ({$entry['name']})";
            }
        }

        final class FileLock implements Held
        {
            private const FIRST_BACKOFF = 0.001;
            private const MAX_BACKOFF = 0.05;

            /** @param resource|null $handle null once closed */
            private function __construct(private string $file, public $handle, private string $id, private int $pid) {}

            public static function acquire(string $path, ?float $timeout): self
            {
                $started = Clock::now();
                $deadline = $timeout === null ? null : $started + $timeout;
                $backoff = new Backoff(self::FIRST_BACKOFF, self::MAX_BACKOFF);
                while (true) {
                    $lock = self::open($path);
                    if (!$lock->flock($deadline === null)) {
                        $now = Clock::now();
                        if ($now >= $deadline) {
                            $holder = Holder::of($lock->handle);
                            $lock->close();
                            throw new LockTimeoutException(sprintf('timed out after %.3f s waiting for lock file %s', $now - $started, $path)
                                . ($holder === null ? '' : ", held by $holder"));
                        }
                        $lock->close();
                        // PHP has no inotify: timed waits poll (README).
                        Clock::sleep($backoff->next($deadline - $now));
                        continue;
                    }
                    if ($lock->stillNamed()) {
                        return $lock;
                    }
                    // We locked a file the previous holder already unlinked: start again.
                    $lock->close();
                }
            }

            public function path(): string
            {
                return $this->file;
            }

            public function isHeld(): bool
            {
                return $this->handle !== null && $this->pid === getmypid();
            }

            public function release(): void
            {
                if ($this->handle === null) {
                    return;
                }
                if ($this->pid !== getmypid()) {
                    // A forked child: closing its copy of the descriptor leaves the parent's lock alone.
                    $this->close();
                    return;
                }
                $error = null;
                if ($this->stillNamed()) {
                    [$removed, $reason] = Os::attempt(fn () => unlink($this->file));
                    if (!$removed && Os::errno($reason) !== Os::ENOENT) {
                        $error = self::ioError('remove', $this->file, $reason);
                    }
                }
                if (!flock($this->handle, LOCK_UN)) {
                    $error ??= new LockException("cannot unlock lock file {$this->file}: flock() failed");
                }
                $this->close();
                if ($error !== null) {
                    throw $error;
                }
            }

            private static function open(string $path): self
            {
                $before = self::lstat($path);
                if ($before !== false && ($kind = self::kind($before['mode'])) !== null) {
                    throw self::notRegular($path, $kind);
                }
                // 'c' never truncates; 'e' is O_CLOEXEC, 'n' O_NONBLOCK (a FIFO must not block the open).
                $mask = umask(0077);
                try {
                    [$handle, $reason] = Os::attempt(static fn () => fopen($path, 'c+en'));
                } finally {
                    umask($mask);
                }
                if ($handle === false) {
                    $planted = self::lstat($path);
                    throw match (true) {
                        Os::errno($reason) === Os::ELOOP => self::notRegular($path, 'symbolic link'),
                        Os::errno($reason) === Os::EISDIR => self::notRegular($path, 'directory'),
                        \in_array(Os::errno($reason), [Os::EACCES, Os::EPERM], true) && $planted !== false && $planted['uid'] !== Users::me()
                            => self::foreignOwner($path, $planted['uid']),
                        default => self::ioError('open', $path, $reason),
                    };
                }
                $stat = fstat($handle);
                $id = "file {$stat['dev']}:{$stat['ino']}";
                if (($kind = self::kind($stat['mode'])) !== null) {
                    fclose($handle);
                    throw self::notRegular($path, $kind);
                }
                if (($fs = self::networkFileSystem(\dirname($path))) !== null) {
                    fclose($handle);
                    throw new LockException("refusing lock file $path: the lock directory is on $fs, where flock is emulated with"
                        . ' locks that closing any descriptor of the file drops; use a local directory, or the mysql backend'
                        . ' to share locks between hosts');
                }
                // Only PHP's user and the lock directory's owner may have files here.
                if ($stat['uid'] !== Users::me() && $stat['uid'] !== @fileowner(\dirname($path))) {
                    fclose($handle);
                    throw self::foreignOwner($path, $stat['uid']);
                }
                try {
                    Claims::take($id, "lock file $path");
                } catch (LockException $e) {
                    fclose($handle);
                    throw $e;
                }
                $lock = new self($path, $handle, $id, getmypid());
                Claims::taken($id, $lock);
                return $lock;
            }

            /**
             * The network file system $dir lives on, if it does (from /proc/self/mounts): there
             * flock is emulated with POSIX locks, which closing any descriptor of the file drops.
             */
            private static function networkFileSystem(string $dir): ?string
            {
                static $known = [];
                if (\array_key_exists($dir, $known)) {
                    return $known[$dir];
                }
                $real = realpath($dir) ?: $dir;
                [$best, $type] = ['', null];
                foreach (@file('/proc/self/mounts', FILE_IGNORE_NEW_LINES) ?: [] as $line) {
                    [, $mountPoint, $fsType] = array_pad(explode(' ', $line), 3, '');
                    $mountPoint = str_replace('\\040', ' ', $mountPoint);
                    $inside = $real === $mountPoint || str_starts_with($real, rtrim($mountPoint, '/') . '/');
                    if ($inside && \strlen($mountPoint) >= \strlen($best)) {
                        [$best, $type] = [$mountPoint, $fsType];
                    }
                }
                return $known[$dir] = match (true) {
                    $type === null => null,
                    str_starts_with($type, 'nfs') => 'NFS',
                    $type === 'cifs' => 'CIFS',
                    $type === 'smb3' || $type === 'smbfs' => 'SMB',
                    $type === '9p' => '9P',
                    default => null,
                };
            }

            private static function foreignOwner(string $path, int $owner): LockException
            {
                return new LockException(sprintf(
                    "refusing lock file %s: it belongs to %s, not to PHP's user (%s); the lock directory is shared with other"
                    . " users, who can block or break any member's lock there: set joinblock.lock_dir to a directory only"
                    . " PHP's user can enter (scripts/install makes /run/joinblock)",
                    $path, Users::describe($owner), Users::describe(Users::me())
                ));
            }

            /** One flock(LOCK_EX), blocking or not; false when another party holds it. */
            private function flock(bool $block): bool
            {
                if (flock($this->handle, $block ? LOCK_EX : LOCK_EX | LOCK_NB, $busy)) {
                    return true;
                }
                if ($busy) {
                    return false;
                }
                $this->close();
                throw new LockException("cannot lock lock file {$this->file}: flock() failed");
            }

            /** Whether the path (not following links) still names the file we opened. */
            private function stillNamed(): bool
            {
                $stat = self::lstat($this->file);
                return $stat !== false && "file {$stat['dev']}:{$stat['ino']}" === $this->id;
            }

            private function close(): void
            {
                Claims::drop($this->id);
                fclose($this->handle);
                $this->handle = null;
            }

            /** lstat() past PHP's stat cache, which may still hold what an earlier look saw. */
            private static function lstat(string $path): array|false
            {
                clearstatcache();
                return Os::attempt(static fn () => lstat($path))[0];
            }

            /** What a file that is not a regular file is; null for a regular file. */
            private static function kind(int $mode): ?string
            {
                return match ($mode & 0170000) {
                    0100000 => null,
                    0120000 => 'symbolic link',
                    0040000 => 'directory',
                    0010000 => 'FIFO',
                    0140000 => 'socket',
                    0020000, 0060000 => 'device',
                    default => 'special file',
                };
            }

            private static function notRegular(string $path, string $kind): LockException
            {
                return new LockException("refusing lock path $path: it is a $kind, not a regular file");
            }

            private static function ioError(string $action, string $path, ?string $reason): LockException
            {
                $hint = match (Os::errno($reason)) {
                    Os::ENOENT => ' (does the lock directory exist?)',
                    Os::EACCES, Os::EPERM => " (is the lock directory writable by PHP's user?)",
                    default => '',
                };
                return new LockException("cannot $action lock file $path: " . Os::describe($reason) . $hint);
            }
        }

        /** The MySQL server of the mysql backend. The password never appears in a message. */
        final class MysqlTarget
        {
            /** Debian's socket for a `localhost` server, as mysqli uses it. */
            private const DEFAULT_SOCKET = '/run/mysqld/mysqld.sock';

            private function __construct(
                public readonly string $host,
                public readonly int $port,
                public readonly ?string $socket,
                public readonly string $user,
                public readonly string $password,
                public readonly string $database,
            ) {}

            /**
             * `mysql://user:password@host:port/dbname`, parts percent-encoded; `?socket=/path` for a
             * Unix socket. $fail makes the exception for what is wrong (never quoting the URL).
             */
            public static function fromUrl(string $text, \Closure $fail): self
            {
                $url = parse_url($text);
                if ($url === false || !isset($url['scheme'])) {
                    throw $fail('is not a valid URL (' . ($url === false ? 'cannot be parsed' : 'relative URL without a base') . ')');
                }
                if (strtolower($url['scheme']) !== 'mysql') {
                    throw $fail(sprintf('has scheme "%s"; expected mysql://user:password@host:port/dbname', strtolower($url['scheme'])));
                }
                if (($url['host'] ?? '') === '') {
                    throw $fail('names no host');
                }
                $decode = static function (string $part) use ($fail): string {
                    $decoded = rawurldecode($part);
                    return preg_match('//u', $decoded) ? $decoded : throw $fail('has a part that is not UTF-8 once decoded');
                };
                $database = $decode(ltrim($url['path'] ?? '', '/'));
                if ($database === '' || str_contains($database, '/')) {
                    throw $fail('must name one database: mysql://user:password@host:port/dbname');
                }
                parse_str($url['query'] ?? '', $query);
                $socket = $query['socket'] ?? null;
                return new self(
                    trim($url['host'], '[]'),
                    $url['port'] ?? 3306,
                    \is_string($socket) ? $socket : null,
                    $decode($url['user'] ?? ''),
                    $decode($url['pass'] ?? ''),
                    $database
                );
            }

            /**
             * WordPress's `DB_HOST` forms: `host`, `host:port`, `host:/path/to/socket`, `[::1]:port`;
             * `localhost` alone means the default socket, as mysqli reads it.
             */
            public static function fromWordpress(string $dbHost, string $user, string $password, string $database, \Closure $fail): self
            {
                $dbHost = trim($dbHost);
                if (str_starts_with($dbHost, '[')) {
                    $close = strpos($dbHost, ']') ?: throw $fail('has an unclosed [');
                    [$host, $rest] = [substr($dbHost, 1, $close - 1), substr($dbHost, $close + 1)];
                    $rest = str_starts_with($rest, ':') ? substr($rest, 1) : null;
                } else {
                    [$host, $rest] = array_pad(explode(':', $dbHost, 2), 2, null);
                }
                if ($host === '') {
                    throw $fail('names no host');
                }
                [$port, $socket] = match (true) {
                    $rest !== null && str_starts_with($rest, '/') => [3306, $rest],
                    $rest !== null => [self::port($rest, $fail), null],
                    $host === 'localhost' => [3306, self::DEFAULT_SOCKET],
                    default => [3306, null],
                };
                if ($database === '') {
                    throw $fail('needs a database name');
                }
                return new self($host, $port, $socket, $user, $password, $database);
            }

            private static function port(string $text, \Closure $fail): int
            {
                if (!preg_match('/^\+?\d+$/', $text) || (int) $text > 65535) {
                    throw $fail("has port \"$text\", not a number from 1 to 65535");
                }
                return (int) $text ?: throw $fail('has port 0');
            }

            /** `user@host:port/db` or `user@localhost:/socket/db`: enough to find it, no password. */
            public function describe(): string
            {
                return "{$this->user}@{$this->host}:" . ($this->socket ?? $this->port) . "/{$this->database}";
            }
        }

        /**
         * This process's connection to the lock server (in PHP-FPM: this request's), opened on
         * first use. A lock remembers the generation of the connection that took it, so it can
         * tell when that connection was replaced. A reused connection found dead (the server or
         * a proxy dropped it while idle) is replaced and the work run once more: the work only
         * ever asks for a lock, and the server freed whatever the dead connection held.
         */
        final class MysqlConnection
        {
            /** mysqli reports HY000 for a refused connection; the server's SQLSTATEs for these. */
            private const CONNECT_SQLSTATES = [1040 => '08004', 1044 => '42000', 1045 => '28000', 1049 => '42000'];

            /**
             * Server errors that end the connection: shutdown, aborted, killed (MariaDB), idle too
             * long (MySQL 8). Client errors (2000-2999: gone away, lost, ...) end it too.
             */
            private const CONNECTION_ENDED = [1053, 1152, 1927, 4031];

            /** What a reply that never came is reported as: "Lost connection to server". */
            private const NO_ANSWER = 2013;

            private static ?\mysqli $db = null;
            private static ?MysqlTarget $target = null;
            private static int $pid = 0;
            private static int $generation = 0;
            /** Locks taken on the current connection and not released yet. */
            private static int $locks = 0;

            /** @var list<\mysqli> connections inherited across fork, kept out of use */
            private static array $inherited = [];

            /**
             * Runs $work(connection, generation) on this process's live connection to $target.
             *
             * @throws LockException
             */
            public static function with(MysqlTarget $target, float $bound, callable $work): mixed
            {
                if (self::$db !== null && self::$pid !== getmypid()) {
                    // Closing it would end the parent's session (and free its locks) at once.
                    self::$inherited[] = self::$db;
                    self::$db = null;
                }
                if (self::$db !== null && self::$target != $target) {
                    if (self::$locks > 0) {
                        throw new LockException(sprintf(
                            'cannot take a MySQL lock on %s while this process holds %d %s on %s: moving to another'
                            . ' server (or another spelling of the same one) would silently free them; release them first',
                            $target->describe(), self::$locks, self::$locks === 1 ? 'lock' : 'locks', self::$target->describe()
                        ));
                    }
                    self::$db = null;
                }
                $reused = self::$db !== null;
                while (true) {
                    self::$db ??= self::open($target, $bound);
                    try {
                        return self::quietly(static fn () => $work(self::$db, self::$generation));
                    } catch (\mysqli_sql_exception $e) {
                        $ended = self::endsConnection($e);
                        if ($ended) {
                            self::$db = null;
                        }
                        if (!($ended && $reused)) {
                            throw new LockException("cannot use MySQL server {$target->describe()}: " . self::describe($e));
                        }
                        // Stale: dropped while idle. Once more, on a new connection.
                        $reused = false;
                    }
                }
            }

            /** Runs $work(connection) on the connection of $generation; null once it is gone. */
            public static function withLockConnection(int $generation, float $bound, callable $work): mixed
            {
                if (self::$db === null || self::$pid !== getmypid() || self::$generation !== $generation) {
                    return null;
                }
                try {
                    return self::quietly(static fn () => $work(self::$db));
                } catch (\mysqli_sql_exception $e) {
                    if (self::endsConnection($e)) {
                        self::$db = null;
                    }
                    return null;
                }
            }

            public static function counted(int $generation, int $change): void
            {
                if ($generation === self::$generation) {
                    self::$locks = max(0, self::$locks + $change);
                }
            }

            /**
             * The first column of the first row of $sql, waiting for the reply at most $wait (what
             * the server was asked to wait) plus $bound.
             */
            public static function value(\mysqli $db, string $sql, float $wait, float $bound): ?string
            {
                $db->query($sql, MYSQLI_ASYNC);
                $limit = $wait + $bound;
                [$ready, $errors, $rejected] = [[$db], [$db], [$db]];
                if (!mysqli_poll($ready, $errors, $rejected, (int) $limit, (int) (fmod($limit, 1.0) * 1e6))) {
                    throw new \mysqli_sql_exception(sprintf(
                        'the server did not answer within %.3f s (the lock wait asked for, plus joinblock.mysql_connect_timeout)',
                        $limit
                    ), self::NO_ANSWER);
                }
                return ($db->reap_async_query()->fetch_row() ?? [null])[0];
            }

            private static function open(MysqlTarget $target, float $bound): \mysqli
            {
                $server = $target->describe();
                if (!class_exists(\mysqli::class)) {
                    throw new LockException("cannot connect to MySQL server $server: PHP's mysqli extension is not loaded");
                }
                // mysqli counts both in whole seconds.
                $seconds = (int) ceil($bound);
                $started = Clock::now();
                try {
                    [$db, $wsrepOn, $readOnly] = self::quietly(static function () use ($target, $seconds): array {
                        $db = mysqli_init();
                        $db->options(MYSQLI_OPT_CONNECT_TIMEOUT, $seconds);
                        $db->options(MYSQLI_OPT_READ_TIMEOUT, $seconds);
                        // mysqli takes a socket only with host localhost.
                        $host = $target->socket === null ? $target->host : 'localhost';
                        $db->real_connect($host, $target->user, $target->password, $target->database, $target->port, $target->socket);
                        try {
                            return [$db, ...$db->query('SELECT @@global.wsrep_on, @@global.read_only')->fetch_row()];
                        } catch (\mysqli_sql_exception $e) {
                            if (self::endsConnection($e)) {
                                throw $e;
                            }
                            // MySQL has no wsrep_on.
                            return [$db, null, $db->query('SELECT @@global.read_only')->fetch_row()[0]];
                        }
                    });
                } catch (\mysqli_sql_exception $e) {
                    // mysqlnd reports a read that timed out as "gone away": the clock tells them apart.
                    $late = self::isClientError($e) && Clock::now() - $started >= $seconds - 0.05;
                    throw new LockException("cannot connect to MySQL server $server: " . ($late
                        ? sprintf('the server did not answer within %.3f s (joinblock.mysql_connect_timeout)', $seconds)
                        : self::describe($e)));
                }
                $on = static fn (?string $v): bool => $v === '1' || strcasecmp((string) $v, 'ON') === 0;
                if ($on($wsrepOn)) {
                    throw new LockException("refusing to lock on MySQL server $server: it is a Galera cluster node (wsrep_on),"
                        . ' where GET_LOCK holds on one node only');
                }
                if ($on($readOnly)) {
                    throw new LockException("refusing to lock on MySQL server $server: it is read-only, so a replica;"
                        . ' locks must be taken on the primary that every host shares');
                }
                self::$target = $target;
                self::$pid = getmypid();
                self::$generation++;
                self::$locks = 0;
                return $db;
            }

            /**
             * Runs $call with mysqli throwing its errors, whatever report mode the site chose, and
             * without the warnings mysqlnd adds on a dead connection: the exception says it all.
             */
            private static function quietly(callable $call): mixed
            {
                $driver = new \mysqli_driver();
                $mode = $driver->report_mode;
                $driver->report_mode = MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT;
                set_error_handler(static fn (): bool => true, E_WARNING | E_NOTICE);
                try {
                    return $call();
                } finally {
                    restore_error_handler();
                    $driver->report_mode = $mode;
                }
            }

            private static function endsConnection(\mysqli_sql_exception $e): bool
            {
                return self::isClientError($e) || \in_array($e->getCode(), self::CONNECTION_ENDED, true);
            }

            /** Client-side errors (2000-2999): the connection failed or is gone. */
            private static function isClientError(\mysqli_sql_exception $e): bool
            {
                return $e->getCode() >= 2000 && $e->getCode() < 3000;
            }

            /** The server's words ("ERROR 1045 (28000): Access denied …"), or the OS's. */
            private static function describe(\mysqli_sql_exception $e): string
            {
                if (self::isClientError($e)) {
                    return Os::describe($e->getMessage());
                }
                $state = self::CONNECT_SQLSTATES[$e->getCode()] ?? $e->getSqlState();
                return "ERROR {$e->getCode()} ($state): {$e->getMessage()}";
            }
        }

        /**
         * The mysql backend: `GET_LOCK('join-lock-<sha1>')` on the server every web host shares.
         * The server grants a name to one connection at a time and frees it when the connection
         * ends. Waits run as GET_LOCK calls of at most WAIT_SLICE, so a dead server is noticed.
         */
        final class DbLock implements Held
        {
            private const WAIT_SLICE = 5.0;

            private bool $released = false;

            private function __construct(
                private string $name,
                private MysqlTarget $target,
                private float $bound,
                private int $generation,
                private string $id,
                private int $pid,
            ) {}

            /** $bound: seconds that connecting may take, and any reply be late. */
            public static function acquire(MysqlTarget $target, string $name, ?float $timeout, float $bound): self
            {
                $lock = "MySQL lock $name on {$target->describe()}";
                $id = "mysql {$target->describe()} $name";
                Claims::take($id, $lock);
                try {
                    $started = Clock::now();
                    $deadline = $timeout === null ? null : $started + $timeout;
                    while (true) {
                        [$granted, $generation] = MysqlConnection::with($target, $bound, static function (\mysqli $db, int $generation) use ($name, $deadline, $bound): array {
                            // Measured again on a retry: a stale connection's attempt took time too.
                            $slice = $deadline === null ? self::WAIT_SLICE : min(max(0.0, $deadline - Clock::now()), self::WAIT_SLICE);
                            // The name is hex after a fixed prefix: nothing in it needs quoting.
                            $sql = sprintf("SELECT GET_LOCK('%s', %.6F)", $name, $slice);
                            $granted = MysqlConnection::value($db, $sql, $slice, $bound);
                            if ($granted === '1') {
                                MysqlConnection::counted($generation, +1);
                            }
                            return [$granted, $generation];
                        });
                        if ($granted === '1') {
                            $held = new self($name, $target, $bound, $generation, $id, getmypid());
                            Claims::taken($id, $held);
                            return $held;
                        }
                        if ($granted === null) {
                            throw new LockException("cannot take $lock: GET_LOCK answered NULL (the server killed the wait or ran out of memory)");
                        }
                        if ($deadline !== null && Clock::now() >= $deadline) {
                            $waited = Clock::now() - $started;
                            $holder = self::holderOf($target, $name, $bound);
                            throw new LockTimeoutException(sprintf('timed out after %.3f s waiting for %s', $waited, $lock)
                                . ($holder === null ? '' : ", held by $holder"));
                        }
                    }
                } catch (LockException $e) {
                    Claims::drop($id);
                    throw $e;
                }
            }

            /**
             * "MySQL connection 42 (wp@10.0.0.7)": who holds $name now, as far as the server lets
             * us see (another user's connection shows its user and host only with PROCESS).
             */
            private static function holderOf(MysqlTarget $target, string $name, float $bound): ?string
            {
                try {
                    return MysqlConnection::with($target, $bound, static function (\mysqli $db) use ($name, $bound): ?string {
                        $id = MysqlConnection::value($db, "SELECT IS_USED_LOCK('$name')", 0.0, $bound);
                        if ($id === null) {
                            return null;
                        }
                        $account = MysqlConnection::value($db, "SELECT CONCAT(USER, '@', HOST) FROM information_schema.PROCESSLIST WHERE ID = " . (int) $id, 0.0, $bound);
                        return $account === null ? "MySQL connection $id" : "MySQL connection $id ($account)";
                    });
                } catch (LockException) {
                    return null;
                }
            }

            public function path(): string
            {
                return $this->name;
            }

            /** True while this process's connection still holds the lock (asks the server). */
            public function isHeld(): bool
            {
                return !$this->released && $this->pid === getmypid()
                    && $this->onItsConnection("SELECT IS_USED_LOCK('{$this->name}') = CONNECTION_ID()");
            }

            /** RELEASE_LOCK; a lock whose connection was lost is reported: someone else may hold it. */
            public function release(): void
            {
                if ($this->released) {
                    return;
                }
                $this->released = true;
                Claims::drop($this->id);
                if ($this->pid !== getmypid()) {
                    return;
                }
                MysqlConnection::counted($this->generation, -1);
                if (!$this->onItsConnection("SELECT RELEASE_LOCK('{$this->name}')")) {
                    throw new LockException("MySQL lock {$this->name} on {$this->target->describe()} was lost with its"
                        . ' database connection; another request may hold it now');
                }
            }

            /** Whether $sql answers 1 on the connection that took the lock (false once it is gone). */
            private function onItsConnection(string $sql): bool
            {
                return MysqlConnection::withLockConnection($this->generation, $this->bound, fn (\mysqli $db): bool =>
                    MysqlConnection::value($db, $sql, 0.0, $this->bound) === '1') ?? false;
            }
        }

        /** joinblock_acquire_lock() and joinblock_configure(): arguments, settings, backends. */
        final class Locking
        {
            /** What joinblock_configure() set, for the rest of this request. */
            private static ?string $backend = null;
            private static ?MysqlTarget $mysql = null;

            private static ?\WeakMap $locks = null;

            public static function acquire(string $key, array $options): Lock
            {
                $options = new Options('joinblock_acquire_lock', '#2 ($options)', $options, ['dir', 'timeout', 'backend']);
                $timeout = $options->seconds('timeout');
                $dir = $options->bytes('dir');
                $backend = $options->bytes('backend');
                if ($backend !== null) {
                    $backend = self::backendNamed($backend, static fn (string $problem) => $options->valueError('backend', $problem));
                    if ($backend === 'mysql' && $dir !== null) {
                        throw $options->valueError('dir', 'applies to the file backend only, and this call asks for mysql');
                    }
                }
                $backend ??= self::backend();
                if ($backend === 'file') {
                    $dir ??= Options::ini('joinblock.lock_dir') ?? sys_get_temp_dir();
                    // PathBuf::join, as the extension builds the path: one "/" between.
                    $path = (str_ends_with($dir, '/') ? $dir : "$dir/") . self::name($key);
                    return self::wrap(FileLock::acquire($path, $timeout));
                }
                // A `dir` from a caller written for files is ignored: the site chose mysql.
                return self::wrap(DbLock::acquire(self::mysqlTarget(), self::name($key), $timeout, self::connectTimeout()));
            }

            public static function configure(array $settings): void
            {
                $known = ['lock_backend', 'mysql_url', 'db_host', 'db_user', 'db_password', 'db_name'];
                $given = new Options('joinblock_configure', '#1 ($settings)', $settings, $known);
                $backend = $given->string('lock_backend');
                $backend = $backend === null
                    ? null
                    : self::backendNamed($backend, static fn (string $problem) => $given->valueError('lock_backend', $problem));
                $url = $given->string('mysql_url');
                [$host, $user, $password, $name] = array_map([$given, 'string'], ['db_host', 'db_user', 'db_password', 'db_name']);
                $wordpress = $host !== null || $user !== null || $password !== null || $name !== null;
                if ($url !== null && $wordpress) {
                    throw $given->valueError('mysql_url', 'and db_host/db_user/db_password/db_name exclude each other');
                }
                if ($wordpress && ($host === null || $user === null || $name === null)) {
                    throw $given->valueError('db_host', 'needs db_user and db_name with it (db_password may be empty)');
                }
                $mysql = match (true) {
                    $url !== null => MysqlTarget::fromUrl($url, static fn (string $p) => $given->valueError('mysql_url', $p)),
                    $wordpress => MysqlTarget::fromWordpress($host, $user, $password ?? '', $name, static fn (string $p) => $given->valueError('db_host', $p)),
                    default => null,
                };
                [self::$backend, self::$mysql] = [$backend, $mysql];
            }

            /** The lock behind a JoinBlock\Lock; null for the copy a refused clone or unserialize() makes. */
            public static function of(Lock $lock): ?Held
            {
                return self::$locks[$lock] ?? null;
            }

            /** JoinBlock\Lock has no constructor PHP code may call: the lock rides in a WeakMap. */
            private static function wrap(Held $held): Lock
            {
                $lock = (new \ReflectionClass(Lock::class))->newInstanceWithoutConstructor();
                self::$locks ??= new \WeakMap();
                self::$locks[$lock] = $held;
                return $lock;
            }

            /** `join-lock-<sha1>` of the key as the plugin normalises it, byte for byte. */
            private static function name(string $key): string
            {
                $normalized = strtolower(trim($key));
                if ($normalized === '') {
                    throw new \ValueError('joinblock_acquire_lock(): Argument #1 ($key) must not be empty after trimming white space');
                }
                return 'join-lock-' . sha1($normalized);
            }

            /** "file" or "mysql"; $fail makes the exception for anything else. */
            private static function backendNamed(string $text, \Closure $fail): string
            {
                $name = trim($text);
                if ($name !== 'file' && $name !== 'mysql') {
                    throw $fail(sprintf('is "%s"; expected "file" or "mysql"', Options::escape($name)));
                }
                return $name;
            }

            /** joinblock_configure()'s backend, else INI. */
            private static function backend(): string
            {
                return self::$backend ?? self::backendNamed(
                    Options::ini('joinblock.lock_backend') ?? 'file',
                    static fn (string $problem) => new LockException("INI joinblock.lock_backend $problem")
                );
            }

            /** INI joinblock.mysql_connect_timeout: seconds, greater than 0. */
            private static function connectTimeout(): float
            {
                $text = Options::ini('joinblock.mysql_connect_timeout') ?? '3';
                $seconds = is_numeric(trim($text)) ? (float) trim($text) : NAN;
                if (!($seconds > 0.0) || !is_finite($seconds)) {
                    throw new LockException(sprintf(
                        'INI joinblock.mysql_connect_timeout is "%s"; expected seconds greater than 0, such as 3 or 0.5',
                        Options::escape($text)
                    ));
                }
                return $seconds;
            }

            /** joinblock_configure()'s server, else INI. */
            private static function mysqlTarget(): MysqlTarget
            {
                if (self::$mysql !== null) {
                    return self::$mysql;
                }
                $url = Options::ini('joinblock.mysql_url') ?? throw new LockException(
                    'the mysql lock backend needs INI joinblock.mysql_url or joinblock_configure() with the database settings'
                );
                return MysqlTarget::fromUrl($url, static fn (string $problem) => new LockException("INI joinblock.mysql_url $problem"));
            }

            /**
             * joinblock_status()'s lock part: the settings in effect, each null with a problem
             * when unusable; the server without its password.
             */
            public static function status(): array
            {
                $problems = [];
                $value = static function (string $name, callable $read) use (&$problems): ?string {
                    try {
                        return $read();
                    } catch (LockException $e) {
                        $problems[$name] = $e->getMessage();
                        return null;
                    }
                };
                $status = [
                    'lock_backend' => $value('lock_backend', static fn () => self::backend()),
                    'lock_dir' => Options::ini('joinblock.lock_dir') ?? sys_get_temp_dir(),
                    'mysql_server' => self::$mysql === null && Options::ini('joinblock.mysql_url') === null
                        ? null
                        : $value('mysql_server', static fn () => self::mysqlTarget()->describe()),
                ];
                return $status + ['problems' => $problems];
            }
        }

        /** Why a tag check's answer cannot be known; becomes an ActionNetworkException. */
        final class Failure extends \Exception
        {
            private function __construct(string $message)
            {
                parent::__construct($message);
            }

            public static function transport(string $what, string $cause): self
            {
                return new self("Action Network $what failed: $cause");
            }

            public static function timeout(string $what, string $limit): self
            {
                return new self("Action Network $what timed out ($limit)");
            }

            public static function deadline(string $what): self
            {
                return new self("the call's deadline passed before the Action Network $what");
            }

            public static function status(string $what, int $status, ?string $message): self
            {
                return new self("Action Network answered HTTP $status to the $what" . ($message === null ? '' : ": $message"));
            }

            public static function pageCap(int $maxPages): self
            {
                return new self("the person has more than $maxPages pages of taggings (max_pages); the answer is unknown");
            }

            public static function repeatedNext(string $what): self
            {
                return new self("Action Network's $what links back to a page already read; stopped to avoid a loop");
            }

            public static function foreignLink(string $what, string $origin): self
            {
                return new self("the Action Network $what points to another origin ($origin); not followed, so the API key"
                    . " stays with base_url's origin");
            }

            public static function tooManyRedirects(string $what, int $max): self
            {
                return new self("Action Network redirected the $what more than $max times; stopped to avoid a loop");
            }

            public static function badJson(string $what, string $detail): self
            {
                return new self("the Action Network $what answer is not valid JSON: $detail");
            }

            public static function badShape(string $what, string $detail): self
            {
                return new self("the Action Network $what answer has an unexpected shape: $detail");
            }

            public static function tooLarge(string $what, int $cap): self
            {
                return new self("the Action Network $what answer is larger than " . ($cap >> 20) . ' MiB; not read');
            }
        }

        /** URLs as the extension's client compares them: scheme and host lower-cased, default ports dropped. */
        final class Url
        {
            /** `scheme://host[:port]`; null when $url names no scheme and host. */
            public static function origin(string $url): ?string
            {
                $parts = parse_url($url);
                if (!isset($parts['scheme'], $parts['host'])) {
                    return null;
                }
                $scheme = strtolower($parts['scheme']);
                $port = $parts['port'] ?? null;
                $default = ['http' => 80, 'https' => 443][$scheme] ?? null;
                return "$scheme://" . strtolower($parts['host']) . ($port === null || $port === $default ? '' : ":$port");
            }

            /** A link from an answer, in the one spelling it is compared and requested in. */
            public static function link(string $href, string $what): string
            {
                $origin = self::origin($href) ?? throw Failure::badShape($what, sprintf('link "%s" is not a URL', addcslashes($href, '"\\')));
                $parts = parse_url($href);
                return $origin . ($parts['path'] ?? '/') . (isset($parts['query']) ? "?{$parts['query']}" : '');
            }

            /** A Location header resolved against the URL that answered it; null if unreadable. */
            public static function resolve(string $base, string $location): ?string
            {
                if (parse_url($location, PHP_URL_SCHEME) !== null) {
                    return self::origin($location) === null ? null : $location;
                }
                $path = parse_url($base, PHP_URL_PATH) ?? '/';
                return match (true) {
                    str_starts_with($location, '//') => parse_url($base, PHP_URL_SCHEME) . ":$location",
                    str_starts_with($location, '/') => self::origin($base) . $location,
                    str_starts_with($location, '?') => self::origin($base) . $path . $location,
                    default => self::origin($base) . substr($path, 0, strrpos($path, '/') + 1) . $location,
                };
            }

            /**
             * An API root: absolute http(s) without credentials, query or fragment; plain http only
             * to loopback (the key would cross the network in clear). Returned ending in "/".
             */
            public static function base(string $text, \Closure $fail): string
            {
                if (!preg_match('//u', $text)) {
                    throw $fail('is not valid UTF-8');
                }
                $parts = parse_url($text);
                if ($parts === false || !isset($parts['scheme'])) {
                    throw $fail('is not a valid URL (' . ($parts === false ? 'cannot be parsed' : 'relative URL without a base') . ')');
                }
                $scheme = strtolower($parts['scheme']);
                $host = $parts['host'] ?? '';
                if ($scheme === 'http' && !self::isLoopback($host)) {
                    throw $fail('uses plain http:// to a host other than loopback; use https://');
                }
                if ($scheme !== 'http' && $scheme !== 'https') {
                    throw $fail("has scheme \"$scheme\"; only https:// (or http:// to loopback) is allowed");
                }
                if ($host === '' || isset($parts['user']) || isset($parts['pass'])) {
                    throw $fail('must name a host and carry no user name or password');
                }
                if (isset($parts['query']) || isset($parts['fragment'])) {
                    throw $fail('must not have a query or fragment');
                }
                $path = $parts['path'] ?? '/';
                return self::origin($text) . (str_ends_with($path, '/') ? $path : "$path/");
            }

            private static function isLoopback(string $host): bool
            {
                $ip = inet_pton(trim($host, '[]'));
                return strcasecmp($host, 'localhost') === 0
                    || ($ip !== false && (\strlen($ip) === 4 ? $ip[0] === "\x7f" : $ip === inet_pton('::1')));
            }
        }

        /** Reading decoded JSON (objects as stdClass, so that objects and lists stay apart). */
        final class Json
        {
            /** $value->a->b…, or null where a step is missing or not an object. */
            public static function get(mixed $value, string ...$path): mixed
            {
                foreach ($path as $key) {
                    if (!$value instanceof \stdClass || !property_exists($value, $key)) {
                        return null;
                    }
                    $value = $value->{$key};
                }
                return $value;
            }

            /** `resource._links.<rel>.href`, when it is a string. */
            public static function link(mixed $resource, string $rel): ?string
            {
                $href = self::get($resource, '_links', $rel, 'href');
                return \is_string($href) ? $href : null;
            }

            /** A non-negative integer field, as the extension reads counts. */
            public static function count(mixed $value, string $key): ?int
            {
                $number = self::get($value, $key);
                return \is_int($number) && $number >= 0 ? $number : null;
            }
        }

        /** How one tag check talks to Action Network. */
        final class Settings
        {
            private const FUNCTION = 'joinblock_person_has_tag';
            public const DEFAULT_BASE_URL = 'https://actionnetwork.org/api/v2/';

            private function __construct(
                public readonly string $baseUrl,
                public readonly float $timeout,
                public readonly float $deadline,
                public readonly float $tagCacheTtl,
                public readonly int $maxPages,
                public readonly float $maxRps,
            ) {}

            public static function from(array $given): self
            {
                $known = ['base_url', 'timeout', 'deadline', 'max_pages', 'tag_cache_ttl', 'max_rps'];
                $options = new Options(self::FUNCTION, '#4 ($options)', $given, $known);
                $url = $options->bytes('base_url');
                $source = $url === null ? 'INI joinblock.action_network_url' : 'option "base_url"';
                $url ??= Options::ini('joinblock.action_network_url') ?? self::DEFAULT_BASE_URL;
                $baseUrl = Url::base($url, static fn (string $problem) => new \ValueError(self::FUNCTION . "(): $source $problem"));
                $positive = static function (string $name, float $default) use ($options): float {
                    $seconds = $options->seconds($name);
                    return $seconds === 0.0 ? throw $options->valueError($name, 'must be greater than 0') : $seconds ?? $default;
                };
                $timeout = $positive('timeout', 10.0);
                $deadline = $positive('deadline', 30.0);
                $tagCacheTtl = $options->seconds('tag_cache_ttl') ?? 600.0;
                $maxPages = $options->int('max_pages') ?? 10;
                if ($maxPages < 1 || $maxPages > 4294967295) {
                    throw $options->valueError('max_pages', 'must be between 1 and 4294967295');
                }
                $maxRps = $options->number('max_rps') ?? 4.0;
                if ($maxRps === 0.0) {
                    throw $options->valueError('max_rps', 'must be greater than 0');
                }
                return new self($baseUrl, $timeout, $deadline, $tagCacheTtl, $maxPages, $maxRps);
            }
        }

        /**
         * One call's requests: the origin rule that keeps the API key home, pacing, retries on
         * "slow down" answers, the body cap, timeouts and the call's deadline.
         */
        final class Session
        {
            /** Largest body read; a page of 25 resources is a few tens of KiB. */
            private const BODY_CAP = 4 << 20;
            /** Waits after a 429/503 without Retry-After: jittered, doubling from first to last. */
            private const FIRST_RETRY_WAIT = 0.5;
            private const MAX_RETRY_WAIT = 8.0;
            private const SLOW_DOWN = [429 => 'Too Many Requests', 503 => 'Service Unavailable'];
            /** Same-origin redirects followed at most, as the extension's client. */
            private const MAX_REDIRECTS = 4;
            /** Pacing never spaces requests further apart than an hour, whatever max_rps says. */
            private const MAX_INTERVAL = 3600.0;

            /** This process's handle: its connection cache keeps connections alive across calls. */
            private static ?\CurlHandle $curl = null;
            private static int $curlPid = 0;

            /** When this process sent (or scheduled) its last request; each call spaces its own requests from it. */
            private static ?float $lastRequest = null;

            private string $origin;
            private float $deadline;
            private float $minInterval;

            public function __construct(
                public readonly string $baseUrl,
                private string $apiKey,
                private float $timeout,
                float $deadline,
                float $maxRps,
            ) {
                $this->origin = Url::origin($baseUrl);
                $this->deadline = Clock::now() + $deadline;
                $this->minInterval = min(1 / $maxRps, self::MAX_INTERVAL);
            }

            /** Refuses a URL that the API key may not go to: another scheme, host or port. */
            public function sameOrigin(string $url, string $what): void
            {
                $origin = Url::origin($url);
                if ($origin !== $this->origin) {
                    throw Failure::foreignLink($what, $origin ?? 'null');
                }
            }

            /** GETs $url and decodes its JSON, retrying 429/503 within the deadline. */
            public function getJson(string $url, string $what): mixed
            {
                $this->sameOrigin($url, $what);
                $backoff = new Backoff(self::FIRST_RETRY_WAIT, self::MAX_RETRY_WAIT);
                $redirects = 0;
                while (true) {
                    $this->pace($what);
                    [$status, $headers, $body] = $this->send($url, $what, min($this->timeout, $this->remaining($what)));
                    if (isset(self::SLOW_DOWN[$status])) {
                        $wait = self::retryAfter($headers['retry-after'] ?? null) ?? $backoff->next();
                        if (Clock::now() + $wait >= $this->deadline) {
                            throw Failure::deadline(sprintf(
                                '%s (Action Network answered %d %s and asked to wait %.1f s)',
                                $what,
                                $status,
                                self::SLOW_DOWN[$status],
                                $wait
                            ));
                        }
                        Clock::sleep($wait);
                        continue;
                    }
                    if ($status >= 300 && $status < 400) {
                        // A redirect the extension's client does not follow (300, 304, no usable
                        // Location) is an error status; one to another origin or one hop too
                        // many says so.
                        $target = isset($headers['location']) ? Url::resolve($url, $headers['location']) : null;
                        if ($target === null || !\in_array($status, [301, 302, 303, 307, 308], true)) {
                            throw Failure::status($what, $status, self::errorText($body));
                        }
                        $origin = Url::origin($target);
                        if ($origin !== $this->origin) {
                            throw Failure::foreignLink("redirect of the $what", $origin ?? 'an unreadable location');
                        }
                        if ($redirects++ === self::MAX_REDIRECTS) {
                            throw Failure::tooManyRedirects($what, self::MAX_REDIRECTS);
                        }
                        $url = $target;
                        continue;
                    }
                    if ($status < 200 || $status >= 300) {
                        throw Failure::status($what, $status, self::errorText($body));
                    }
                    try {
                        return json_decode($body, false, 512, JSON_THROW_ON_ERROR);
                    } catch (\JsonException $e) {
                        throw Failure::badJson($what, $e->getMessage());
                    }
                }
            }

            private function remaining(string $what): float
            {
                $left = $this->deadline - Clock::now();
                return $left > 0 ? $left : throw Failure::deadline($what);
            }

            /** Waits for this process's next request slot; never past the deadline. */
            private function pace(string $what): void
            {
                $now = Clock::now();
                $slot = self::$lastRequest === null ? $now : max(self::$lastRequest + $this->minInterval, $now);
                if ($slot >= $this->deadline) {
                    throw Failure::deadline("$what (waiting for a request slot under max_rps)");
                }
                self::$lastRequest = $slot;
                Clock::sleep($slot - Clock::now());
            }

            /** @return array{int, array<string, string>, string} status, headers (lower-case names), body */
            private function send(string $url, string $what, float $timeout): array
            {
                [$headers, $body, $tooLarge] = [[], '', false];
                $curl = self::curl($what);
                curl_setopt_array($curl, [
                    CURLOPT_URL => $url,
                    CURLOPT_HTTPHEADER => ["OSDI-API-Token: {$this->apiKey}", 'Accept: application/json'],
                    CURLOPT_TIMEOUT_MS => Clock::ms($timeout),
                    CURLOPT_HEADERFUNCTION => static function ($curl, string $line) use (&$headers): int {
                        if (str_starts_with($line, 'HTTP/')) {
                            $headers = [];
                        } elseif (str_contains($line, ':')) {
                            [$name, $value] = explode(':', $line, 2);
                            $headers[strtolower(trim($name))] = trim($value);
                        }
                        return \strlen($line);
                    },
                    CURLOPT_WRITEFUNCTION => static function ($curl, string $chunk) use (&$body, &$tooLarge): int {
                        if (\strlen($body) + \strlen($chunk) > self::BODY_CAP) {
                            $tooLarge = true;
                            return 0;
                        }
                        $body .= $chunk;
                        return \strlen($chunk);
                    },
                ]);
                if (curl_exec($curl) === false) {
                    $errno = curl_errno($curl);
                    $limit = Clock::now() + 0.005 >= $this->deadline ? "the call's deadline" : 'the request timeout';
                    throw match (true) {
                        $tooLarge, $errno === CURLE_FILESIZE_EXCEEDED => Failure::tooLarge($what, self::BODY_CAP),
                        $errno === CURLE_OPERATION_TIMEDOUT => Failure::timeout($what, $limit),
                        default => Failure::transport($what, self::describe($curl, $errno)),
                    };
                }
                return [curl_getinfo($curl, CURLINFO_RESPONSE_CODE), $headers, $body];
            }

            /** This process's curl handle; a child made by fork makes its own (the parent's shares its sockets). */
            private static function curl(string $what): \CurlHandle
            {
                if (self::$curl !== null && self::$curlPid === getmypid()) {
                    return self::$curl;
                }
                if (!\function_exists('curl_init')) {
                    throw Failure::transport($what, "PHP's curl extension is not loaded");
                }
                self::$curl = curl_init();
                self::$curlPid = getmypid();
                curl_setopt_array(self::$curl, [
                    CURLOPT_FOLLOWLOCATION => false,
                    CURLOPT_SSL_VERIFYPEER => true,
                    CURLOPT_SSL_VERIFYHOST => 2,
                    CURLOPT_MAXFILESIZE => self::BODY_CAP,
                    CURLOPT_USERAGENT => 'joinblock-polyfill',
                ]);
                return self::$curl;
            }

            /** What went wrong, in the extension's words where they differ from curl's. */
            private static function describe(\CurlHandle $curl, int $errno): string
            {
                $kind = match ($errno) {
                    CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_SSL_CONNECT_ERROR => 'cannot connect',
                    CURLE_SSL_CACERT => 'cannot connect: TLS certificate verify failed',
                    CURLE_RECV_ERROR, CURLE_PARTIAL_FILE, CURLE_BAD_CONTENT_ENCODING => 'reading the answer failed',
                    CURLE_URL_MALFORMAT => 'invalid request',
                    default => 'request failed',
                };
                // curl keeps the OS error of the handle's last failed connect: only that one has it.
                $os = $errno === CURLE_COULDNT_CONNECT ? curl_getinfo($curl, CURLINFO_OS_ERRNO) : 0;
                return "$kind: " . curl_error($curl) . ($os > 0 ? ': ' . Os::describeErrno($os) : '');
            }

            /** Action Network's `{"error": "..."}` text, when the body has one. */
            private static function errorText(string $body): ?string
            {
                $error = Json::get(json_decode($body), 'error');
                return \is_string($error) && preg_match('/^.{0,300}/su', $error, $m) ? $m[0] : null;
            }

            /** `Retry-After` in seconds (the HTTP-date form is treated as absent), at most an hour. */
            private static function retryAfter(?string $header): ?float
            {
                $seconds = $header !== null && is_numeric(trim($header)) ? (float) trim($header) : null;
                return $seconds !== null && is_finite($seconds) && $seconds >= 0 ? min($seconds, 3600.0) : null;
            }
        }

        /**
         * What this process knows of each group's tags (name <-> href), learned while answering
         * calls, and how far it has read the group's tag list: the extension's cache
         * (src/action_network/cache.rs, which says why), with the same rules, so that both send
         * the same requests. An entry lives for the tag_cache_ttl of the call that learned it and
         * a call trusts entries younger than its own; expired entries go whenever a call saves;
         * at most MAX_ENTRIES entries of at most MAX_ENTRY_BYTES each, the oldest learned going
         * first (a PHP-FPM request is short, but a CLI process or a long request is not); a call
         * reads entries in place and keeps what it learns apart, saved at its end; a name leads
         * to every href learned with it; the reading position is dropped with an entry of its
         * group evicted for room or not kept.
         */
        final class Knowledge
        {
            private const MAX_ENTRIES = 4096;
            private const MAX_ENTRY_BYTES = 1024;

            /**
             * @var array<string, array{names: array<string, array{string, float, float}>, hrefs: array<string, array<string, true>>, list: ?array{array{read: int, total: ?int, next: ?string}, float, float}}>
             *   group => href => [name, learned, expires]; name => hrefs; [reading position, learned, expires]
             */
            private static array $groups = [];
            /** @var array<string, array{string, string}> every entry, oldest learned first: "group\nhref" => [group, href] */
            private static array $order = [];

            /** @var array<string, string> href => name, as this call learned them */
            private array $ownNames = [];
            /** @var array<string, array<string, true>> name => hrefs, as this call learned them */
            private array $ownHrefs = [];
            /** @var list<array{string, string}> [href, name], in the order learned */
            private array $learned = [];
            /** @var ?array{read: int, total: ?int, next: ?string} pages read, the list's length, the page to read next */
            private ?array $list = null;
            /** @var ?array{float, float} learned and expiry of the loaded reading position; null for a reading begun by this call */
            private ?array $listAge = null;
            private bool $listAdvanced = false;

            private function __construct(private string $group, private float $ttl) {}

            /** Entries the process keeps now, over all groups (what the extension shows in php --ri). */
            public static function entries(): int
            {
                return \count(self::$order);
            }

            /** $group's knowledge as a call with this $ttl trusts it. */
            public static function load(string $group, float $ttl): self
            {
                $knowledge = new self($group, $ttl);
                $list = self::$groups[$group]['list'] ?? null;
                if ($list !== null && self::trusted($list[1], $list[2], $ttl)) {
                    $knowledge->list = $list[0];
                    $knowledge->listAge = [$list[1], $list[2]];
                }
                return $knowledge;
            }

            /** Keeps what this call learned for the calls after it; with tag_cache_ttl = 0 no call would trust it. */
            public function save(): void
            {
                if ($this->ttl <= 0.0 || $this->learned === [] && !$this->listAdvanced) {
                    return;
                }
                $now = Clock::now();
                $expires = $now + $this->ttl;
                self::removeExpired($now);
                $allKept = true;
                foreach ($this->learned as [$href, $name]) {
                    if (\strlen($href) + \strlen($name) <= self::MAX_ENTRY_BYTES) {
                        self::insert($this->group, $href, $name, $now, $expires);
                    } else {
                        $allKept = false;
                    }
                }
                if ($this->listAdvanced || !$allKept) {
                    // A resumed reading keeps its first page's age, and expires with the shortest-lived page.
                    $age = $this->listAge === null ? [$now, $expires] : [$this->listAge[0], min($this->listAge[1], $expires)];
                    self::$groups[$this->group] ??= ['names' => [], 'hrefs' => [], 'list' => null];
                    self::$groups[$this->group]['list'] = $allKept && $this->list !== null ? [$this->list, ...$age] : null;
                }
                self::makeRoom();
            }

            /**
             * Action Network compares tag names without regard to case: full Unicode lowercasing,
             * with the final sigma as any sigma (PHP 8.3 lowercases a word-final Σ to ς, earlier
             * versions and the extension to σ).
             */
            public static function normalize(string $name): string
            {
                return str_replace('ς', 'σ', mb_strtolower($name, 'UTF-8'));
            }

            public function learn(string $name, string $href): void
            {
                $name = self::normalize($name);
                $old = $this->ownNames[$href] ?? null;
                if ($old !== null) {
                    unset($this->ownHrefs[$old][$href]);
                }
                $this->ownNames[$href] = $name;
                $this->ownHrefs[$name][$href] = true;
                $this->learned[] = [$href, $name];
            }

            /**
             * One more page of the tag list was read (its names learned): $total is the length it
             * states, if any, and $next the page after it.
             */
            public function learnListPage(?int $total, ?string $next): void
            {
                $this->list = ['read' => ($this->list['read'] ?? 0) + 1, 'total' => $total ?? $this->list['total'] ?? null, 'next' => $next];
                $this->listAdvanced = true;
            }

            /** @return list<string> every href known to be called $name */
            public function hrefsOf(string $name): array
            {
                $hrefs = array_keys($this->ownHrefs[$name] ?? []);
                foreach (self::$groups[$this->group]['hrefs'][$name] ?? [] as $href => $_) {
                    [, $learned, $expires] = self::$groups[$this->group]['names'][$href];
                    // This call's own knowledge of an href (a rename) comes first.
                    if (!isset($this->ownNames[$href]) && self::trusted($learned, $expires, $this->ttl)) {
                        $hrefs[] = $href;
                    }
                }
                return $hrefs;
            }

            public function nameOf(string $href): ?string
            {
                if (isset($this->ownNames[$href])) {
                    return $this->ownNames[$href];
                }
                $entry = self::$groups[$this->group]['names'][$href] ?? null;
                return $entry !== null && self::trusted($entry[1], $entry[2], $this->ttl) ? $entry[0] : null;
            }

            /** @return ?array{read: int, total: ?int, next: ?string} */
            public function listProgress(): ?array
            {
                return $this->list;
            }

            private static function trusted(float $learned, float $expires, float $ttl): bool
            {
                $now = Clock::now();
                return $now < $expires && $now - $learned < $ttl;
            }

            private static function insert(string $group, string $href, string $name, float $learned, float $expires): void
            {
                self::remove($group, $href);
                self::$groups[$group] ??= ['names' => [], 'hrefs' => [], 'list' => null];
                self::$groups[$group]['names'][$href] = [$name, $learned, $expires];
                self::$groups[$group]['hrefs'][$name][$href] = true;
                self::$order["$group\n$href"] = [$group, $href];
            }

            private static function remove(string $group, string $href): void
            {
                $name = self::$groups[$group]['names'][$href][0] ?? null;
                if ($name === null) {
                    return;
                }
                unset(self::$groups[$group]['names'][$href], self::$groups[$group]['hrefs'][$name][$href], self::$order["$group\n$href"]);
                if (self::$groups[$group]['hrefs'][$name] === []) {
                    unset(self::$groups[$group]['hrefs'][$name]);
                }
            }

            private static function removeExpired(float $now): void
            {
                foreach (self::$groups as $group => $cached) {
                    foreach ($cached['names'] as $href => [, , $expires]) {
                        if ($now >= $expires) {
                            self::remove((string) $group, (string) $href);
                        }
                    }
                    if ($cached['list'] !== null && $now >= $cached['list'][2]) {
                        self::$groups[$group]['list'] = null;
                    }
                    if (self::$groups[$group]['names'] === [] && self::$groups[$group]['list'] === null) {
                        unset(self::$groups[$group]);
                    }
                }
            }

            /** Removes the oldest entries past MAX_ENTRIES; their groups forget their reading position. */
            private static function makeRoom(): void
            {
                foreach (array_slice(self::$order, 0, max(0, \count(self::$order) - self::MAX_ENTRIES)) as [$group, $href]) {
                    self::$groups[$group]['list'] = null;
                    self::remove($group, $href);
                }
            }
        }

        /** A paged collection, followed through `_links.next` with loop, origin and page-cap checks. */
        final class Pages
        {
            private ?string $next;
            /** @var array<string, true> */
            private array $visited = [];

            /** $readBefore: pages read by earlier calls, for numbering pages in messages. */
            public function __construct(?string $first, private string $what, private ?int $cap, private int $readBefore = 0)
            {
                $this->next = $first;
            }

            public function finished(): bool
            {
                return $this->next === null;
            }

            /** The page next() reads; null once the last one is read. */
            public function upcoming(): ?string
            {
                return $this->next;
            }

            /** The next page; call only while not finished(). */
            public function next(Session $session): mixed
            {
                if ($this->cap !== null && \count($this->visited) >= $this->cap) {
                    throw Failure::pageCap($this->cap);
                }
                [$url, $this->next] = [$this->next, null];
                $what = "{$this->what} " . ($this->readBefore + \count($this->visited) + 1);
                $this->visited[$url] = true;
                $page = $session->getJson($url, $what);
                $next = Json::link($page, 'next');
                if ($next !== null) {
                    $next = Url::link($next, $what);
                    if (isset($this->visited[$next])) {
                        throw Failure::repeatedNext($what);
                    }
                    $session->sameOrigin($next, "next link of the $what");
                    $this->next = $next;
                }
                return $page;
            }
        }

        /**
         * The group's tag list, 25 names a page, read one page at a time when that is worth it,
         * from where this process stopped reading it.
         */
        final class TagList
        {
            /** Without the list's length, only more unknown tags than a page names justify a page. */
            private const PROBE_ABOVE = 25;

            private Pages $pages;

            public function __construct(string $baseUrl, Knowledge $knowledge)
            {
                $progress = $knowledge->listProgress();
                $first = $progress === null ? "{$baseUrl}tags" : $progress['next'];
                $this->pages = new Pages($first, 'tag list page', null, $progress['read'] ?? 0);
            }

            /** Whether reading on is cheaper than looking up $unnamed tags one by one. */
            public function isCheaper(Knowledge $knowledge, float $unnamed): bool
            {
                if ($this->pages->finished()) {
                    return false;
                }
                $progress = $knowledge->listProgress();
                $total = $progress['total'] ?? null;
                return $total === null ? $unnamed > self::PROBE_ABOVE : max(1, $total - $progress['read']) < $unnamed;
            }

            public function readNext(Session $session, Knowledge $knowledge): void
            {
                $page = $this->pages->next($session);
                foreach (TagCheck::embedded($page, 'osdi:tags', 'tag list page') as $tag) {
                    $name = Json::get($tag, 'name');
                    if (!\is_string($name)) {
                        throw Failure::badShape('tag list page', 'a tag has no name');
                    }
                    $href = Json::link($tag, 'self') ?? throw Failure::badShape('tag list page', 'a tag has no self link');
                    $knowledge->learn($name, Url::link($href, 'tag list page'));
                }
                $total = Json::count($page, 'total_pages');
                $knowledge->learnListPage($total === null ? null : min($total, 4294967295), $this->pages->upcoming());
            }
        }

        /**
         * "Does this person have tag T?" in as few requests as the API allows, as the extension
         * answers it (src/action_network/mod.rs, which says why). A tagging names its tag only by
         * href, so the answer needs T's href: with it, the person lookup plus the taggings pages up
         * to the first match; without it but with every tag of the person named, false for as
         * many. Otherwise a person with more than a page of unknown tags makes the call read the
         * tag list's next unread page early; hrefs still unknown at the end are resolved the
         * cheaper way: one GET per unknown tag, or more unread pages of the tag list. Reaching the
         * list's end proves nothing (pages read earlier may have shifted): a tag still unnamed
         * then is looked up.
         */
        final class TagCheck
        {
            private const FUNCTION = 'joinblock_person_has_tag';
            /** What Rust's str::trim() strips: Unicode white space. */
            private const BLANK = '/^[\s\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*$/u';

            private TagList $list;

            private function __construct(private Session $session, private Knowledge $knowledge, private int $maxPages)
            {
                $this->list = new TagList($session->baseUrl, $knowledge);
            }

            public static function run(string $email, string $tag, string $apiKey, array $options): ?bool
            {
                self::requireText(1, 'email', $email);
                self::requireText(2, 'tag', $tag);
                self::requireKey($apiKey);
                $settings = Settings::from($options);
                if (!\function_exists('mb_strtolower')) {
                    // strtolower() folds ASCII only: "Élan" would not match "élan", a wrong answer.
                    throw new ActionNetworkException("PHP's mbstring extension is not loaded: the tag check needs it to compare tag names without regard to case");
                }
                $session = new Session($settings->baseUrl, $apiKey, $settings->timeout, $settings->deadline, $settings->maxRps);
                $group = "{$settings->baseUrl} " . sha1($apiKey);
                $knowledge = Knowledge::load($group, $settings->tagCacheTtl);
                try {
                    return (new self($session, $knowledge, $settings->maxPages))->check($email, Knowledge::normalize($tag));
                } catch (Failure $e) {
                    // Belt and braces: Action Network never echoes the key, but a message must never carry it.
                    $message = \strlen($apiKey) >= 4 ? str_replace($apiKey, '[API key]', $e->getMessage()) : $e->getMessage();
                    throw new ActionNetworkException($message);
                } finally {
                    // Whatever was learned stays useful, even when this call failed.
                    $knowledge->save();
                }
            }

            /** The list at `page._embedded.<key>`. */
            public static function embedded(mixed $page, string $key, string $what): array
            {
                $list = Json::get($page, '_embedded', $key);
                return \is_array($list) ? $list : throw Failure::badShape($what, "no _embedded.$key list");
            }

            /**
             * The key becomes an HTTP header: CR or LF in it would add headers of the caller's
             * making. preg_match() with /u answers false, not 1, on invalid UTF-8, so the encoding
             * is checked first and only 0 (no match) lets a key through.
             */
            private static function requireKey(string $apiKey): void
            {
                $unfit = static fn () => new \ValueError(self::FUNCTION . '(): Argument #3 ($apiKey) must be valid UTF-8 without control characters');
                if (preg_match('//u', $apiKey) !== 1) {
                    throw $unfit();
                }
                self::requireText(3, 'apiKey', $apiKey);
                if (preg_match('/[\x{0}-\x{1f}\x{7f}-\x{9f}]/u', $apiKey) !== 0) {
                    throw $unfit();
                }
            }

            private static function requireText(int $position, string $name, string $value): void
            {
                if (!preg_match('//u', $value)) {
                    throw new \TypeError(self::FUNCTION . "(): Argument #$position (\$$name) must be valid UTF-8");
                }
                if (preg_match(self::BLANK, $value)) {
                    throw new \ValueError(self::FUNCTION . "(): Argument #$position (\$$name) must not be empty");
                }
            }

            private function check(string $email, string $target): ?bool
            {
                $taggings = $this->findPerson($email);
                if ($taggings === null) {
                    return null;
                }
                // Every href known to be the asked tag: one, unless the group holds two tags whose
                // names differ only in case; a person with any of them has the tag.
                $targetHrefs = $this->knowledge->hrefsOf($target);
                /** @var array<string, true> $seen every tag href of the person met so far, in order */
                $seen = [];
                $pages = new Pages($taggings, 'taggings page', $this->maxPages);
                while (!$pages->finished()) {
                    $page = $pages->next($this->session);
                    $hrefs = self::taggingHrefs($page);
                    if ($targetHrefs === [] && $seen === []) {
                        // A person with many unknown tags will need the tag list anyway; its first
                        // page may name the tag at once, and paging can then stop at the first match.
                        $unnamed = \count($this->unnamed($hrefs));
                        // The pages after this one are guessed to be as unknown as this one.
                        $expected = $unnamed + floor(self::taggingsAfter($page, \count($hrefs)) * $unnamed / max(1, \count($hrefs)));
                        if ($this->list->isCheaper($this->knowledge, $expected)) {
                            $this->list->readNext($this->session, $this->knowledge);
                            $targetHrefs = $this->knowledge->hrefsOf($target);
                        }
                    }
                    foreach ($hrefs as $href) {
                        if (\in_array($href, $targetHrefs, true)) {
                            return true;
                        }
                        $seen[$href] = true;
                    }
                }
                return $targetHrefs === [] ? $this->resolve($target, array_keys($seen)) : false;
            }

            /** The person's taggings collection, or null when no person has that email. */
            private function findPerson(string $email): ?string
            {
                // OData string literal: quotes doubled. urlencode() also sends "+" as %2B.
                $filter = "email_address eq '" . str_replace("'", "''", $email) . "'";
                $answer = $this->session->getJson("{$this->session->baseUrl}people/?filter=" . urlencode($filter), 'person lookup');
                $people = Json::get($answer, '_embedded', 'osdi:people');
                if (!\is_array($people)) {
                    throw Failure::badShape('person lookup', 'no _embedded.osdi:people list');
                }
                // The people collection's next link is present even on its last page: never followed.
                if ($people === []) {
                    return null;
                }
                $href = Json::link($people[0], 'osdi:taggings') ?? throw Failure::badShape('person lookup', 'the person has no osdi:taggings link');
                return Url::link($href, 'person lookup');
            }

            /** The tag hrefs of a taggings page. */
            private static function taggingHrefs(mixed $page): array
            {
                return array_map(static function (mixed $tagging): string {
                    $href = Json::link($tagging, 'osdi:tag') ?? throw Failure::badShape('taggings page', 'a tagging has no osdi:tag link');
                    return Url::link($href, 'taggings page');
                }, self::embedded($page, 'osdi:taggings', 'taggings page'));
            }

            /**
             * How many taggings a page says come after it: exact with total_records, else estimated.
             * The server's totals are only numbers: past PHP_INT_MAX the product saturates.
             */
            private static function taggingsAfter(mixed $page, int $onPage): int
            {
                $total = Json::count($page, 'total_records');
                $pages = Json::count($page, 'total_pages');
                return match (true) {
                    $total !== null => max(0, $total - $onPage),
                    $pages !== null => min(PHP_INT_MAX, max(0, $pages - 1) * 25),
                    default => Json::link($page, 'next') === null ? 0 : 25,
                };
            }

            /** @return list<string> the hrefs whose tag names are unknown */
            private function unnamed(array $hrefs): array
            {
                return array_values(array_filter($hrefs, fn (string $href): bool => $this->knowledge->nameOf($href) === null));
            }

            /**
             * Is one of $hrefs the href of $target? Learns the names still unknown by the cheaper of
             * per-tag lookups and the tag list, deciding again after every request.
             */
            private function resolve(string $target, array $hrefs): bool
            {
                while (true) {
                    $targetHrefs = $this->knowledge->hrefsOf($target);
                    if ($targetHrefs !== []) {
                        return array_intersect($targetHrefs, $hrefs) !== [];
                    }
                    $unnamed = $this->unnamed($hrefs);
                    if ($unnamed === []) {
                        return false;
                    }
                    if ($this->list->isCheaper($this->knowledge, \count($unnamed))) {
                        $this->list->readNext($this->session, $this->knowledge);
                    } else {
                        $this->lookUp($unnamed[0]);
                    }
                }
            }

            /** Any failure, 404 included, fails the call and teaches nothing (mod.rs says why). */
            private function lookUp(string $href): void
            {
                $name = Json::get($this->session->getJson($href, 'tag lookup'), 'name');
                if (!\is_string($name)) {
                    throw Failure::badShape('tag lookup', 'no "name"');
                }
                $this->knowledge->learn($name, $href);
            }
        }
    }
}

namespace {
    use JoinBlock\ActionNetworkException;
    use JoinBlock\Lock;
    use JoinBlock\LockException;
    use JoinBlock\Polyfill\Api;
    use JoinBlock\Polyfill\Locking;
    use JoinBlock\Polyfill\Options;
    use JoinBlock\Polyfill\Settings;
    use JoinBlock\Polyfill\TagCheck;

    if (!\function_exists('joinblock_acquire_lock')) {
        function joinblock_acquire_lock(string $key, array $options = []): Lock
        {
            try {
                return Locking::acquire($key, $options);
            } catch (LockException | \ValueError | \TypeError $e) {
                throw Api::raised($e, __FUNCTION__);
            }
        }

        function joinblock_release_lock(?Lock $lock = null): void
        {
            try {
                $lock?->release();
            } catch (LockException $e) {
                throw Api::raised($e, __FUNCTION__);
            }
        }

        function joinblock_configure(array $settings): void
        {
            try {
                Locking::configure($settings);
            } catch (\ValueError | \TypeError $e) {
                throw Api::raised($e, __FUNCTION__);
            }
        }

        function joinblock_person_has_tag(string $email, string $tag, string $apiKey, array $options = []): ?bool
        {
            try {
                return TagCheck::run($email, $tag, $apiKey, $options);
            } catch (ActionNetworkException | \ValueError | \TypeError $e) {
                throw Api::raised($e, __FUNCTION__);
            }
        }

        function joinblock_status(): array
        {
            $lock = Locking::status();
            return [
                'implementation' => 'polyfill',
                'version' => Api::VERSION,
                'lock_backend' => $lock['lock_backend'],
                'lock_dir' => $lock['lock_dir'],
                'mysql_server' => $lock['mysql_server'],
                'action_network_url' => Options::ini('joinblock.action_network_url') ?? Settings::DEFAULT_BASE_URL,
                // Nothing outlives a request here: there are no process counters to show.
                'counters' => null,
                'problems' => $lock['problems'],
            ];
        }
    }
}
