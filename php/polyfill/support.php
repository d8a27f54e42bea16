<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// How the API looks to callers: its exceptions, the options array, OS errors, time and backoff.

declare(strict_types=1);

namespace JoinBlock\Polyfill;

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
    /** How createPrivateAt() names a new file before it links it to its path. */
    public const NEW_FILE_PREFIX = '.joinblock-new-';
    public const EPERM = 1;
    public const ENOENT = 2;
    public const EEXIST = 17;
    public const EACCES = 13;
    public const EISDIR = 21;
    public const ELOOP = 40;

    /** Linux's texts for the errors lock files and connections meet. */
    private const MESSAGES = [
        1 => 'Operation not permitted', 2 => 'No such file or directory', 5 => 'Input/output error',
        6 => 'No such device or address', 11 => 'Resource temporarily unavailable', 12 => 'Cannot allocate memory', 13 => 'Permission denied',
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
        }, E_WARNING | E_NOTICE);
        try {
            $result = $call();
        } finally {
            restore_error_handler();
        }
        $at = $warning === null ? false : strrpos($warning, ': ');
        return [$result, $at === false ? $warning : substr($warning, $at + 2)];
    }

    /** The last warning kept() caught from the polyfill's own calls. */
    private static ?string $warning = null;
    /** Deprecations the polyfill's own code raised in the open span, raised again when it closes. */
    private static array $deferred = [];
    /** How many kept() spans are open, and the handler the outermost one displaced. */
    private static int $keeping = 0;
    private static mixed $displaced = null;
    private static ?\Closure $keeper = null;

    /**
     * Opens a span, up to unkept(), in which the warnings and notices of the polyfill's own
     * failing calls (`fopen(…): Failed to open stream: …`) come here (reason() has the last
     * one), never to the caller's error handler: `@` does not keep a warning from a handler,
     * and one that throws (an ErrorException for every notice) would leave a lock half-taken.
     * The polyfill tests every result instead. Anything else still reaches the caller's
     * handler: what the caller's code run meanwhile raises (a signal handler, a destructor),
     * and a mistake of ours ("Undefined array key"), which tests must see. A deprecation in our
     * code is news for the caller too, but one that a handler may turn into an exception: it
     * is raised again once the span has closed, when nothing is half-done. One handler for the
     * whole span: setting one per call costs more than the calls.
     */
    public static function kept(): void
    {
        if (self::$keeping++ > 0) {
            return;
        }
        self::$keeper ??= static function (int $type, string $message, string $file = '', int $line = 0): bool {
            if (str_starts_with($file, __DIR__ . '/')) {
                if (($type & (E_WARNING | E_NOTICE)) !== 0 && self::failedCall($message)) {
                    self::$warning = $message;
                    return true;
                }
                if (($type & (E_DEPRECATED | E_USER_DEPRECATED)) !== 0) {
                    self::$deferred[] = "$message (in $file on line $line)";
                    return true;
                }
            }
            return self::$displaced !== null && (bool) (self::$displaced)($type, $message, $file, $line);
        };
        $displaced = set_error_handler(self::$keeper);
        // A caller's handler that set a handler of its own during a span leaves ours in place
        // (unkept() then restored theirs): never displace the keeper by itself.
        self::$displaced = $displaced === self::$keeper ? null : $displaced;
    }

    /** Whether a warning is a PHP function's about its own failure (`fopen(…): …`), not a mistake in our code. */
    public static function failedCall(string $message): bool
    {
        return preg_match('/^[\w\\\\:]+\(/', $message) === 1;
    }

    public static function unkept(): void
    {
        if (--self::$keeping === 0) {
            restore_error_handler();
            [$deferred, self::$deferred] = [self::$deferred, []];
            foreach ($deferred as $deprecation) {
                trigger_error($deprecation, E_USER_DEPRECATED);
            }
        }
    }

    /** The OS reason of the last warning kept since the last call (`fopen(…): Failed to open stream: <reason>`), and forgets it. */
    public static function reason(): ?string
    {
        [$warning, self::$warning] = [self::$warning, null];
        $at = $warning === null ? false : strrpos($warning, ': ');
        return $at === false ? $warning : substr($warning, $at + 2);
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

    /**
     * A new empty file of mode 0600 in $dir, opened for reading and writing: [its path, its
     * handle], or null when none can be made there.
     *
     * Not through umask(), which fopen() would need: the mask is the process's, and in a
     * thread-safe PHP other request threads create files meanwhile, with our mask or we with
     * theirs. tempnam() creates the file with mkstemp (O_EXCL, mode 0600, a fresh name); what
     * is then opened by that name must still be it: a regular file of ours with that inode,
     * not something swapped in by another user of the directory.
     *
     * @return array{string, resource}|null
     */
    public static function createPrivate(string $dir, string $prefix): ?array
    {
        $wanted = @stat($dir);
        $path = @tempnam($dir, $prefix);
        if ($wanted === false || $path === false) {
            return null;
        }
        // tempnam() falls back to the system's temporary directory when $dir will not do.
        $in = @stat(\dirname($path));
        if ($in === false || $in['dev'] !== $wanted['dev'] || $in['ino'] !== $wanted['ino']) {
            @unlink($path);
            return null;
        }
        $handle = @fopen($path, 'r+e');
        $opened = $handle === false ? false : fstat($handle);
        $named = @lstat($path);
        if ($opened === false || $named === false || $opened['dev'] !== $named['dev'] || $opened['ino'] !== $named['ino']
            || ($opened['mode'] & 0170000) !== 0100000 || $opened['uid'] !== Users::me()) {
            if ($handle !== false) {
                fclose($handle);
            }
            // The name is ours alone (tempnam made it, exclusively): never leave it behind.
            @unlink($path);
            return null;
        }
        return [$path, $handle];
    }

    /**
     * Removes $dir/$name if the name starts with $prefix, and it is this user's and older than a
     * minute: a temporary file that a process killed mid-write left (the shared state's
     * publishing files, createPrivateAt()'s new lock files), which nothing else would remove.
     * Writing one takes milliseconds. Removing a name never follows it, and leaves any other
     * name of the file (a lock path) as it is. True when it removed it.
     */
    public static function removeIfLeft(string $dir, string $name, string $prefix): bool
    {
        if (!str_starts_with($name, $prefix)) {
            return false;
        }
        $stat = @lstat("$dir/$name");
        return $stat !== false && $stat['uid'] === Users::me() && $stat['mtime'] < time() - 60 && @unlink("$dir/$name");
    }

    /**
     * Makes $path a new empty file of mode 0600 (see createPrivate()) unless something is
     * there already: the private file is linked to $path, which never replaces or follows
     * what is there, and its own name removed. True when $path was linked, by this call or
     * by another process first (EEXIST): the caller then opens $path without O_CREAT, so that
     * a file removed in between (a holder releasing it) is never made again with the process's
     * umask but looked for again. False where no private file or hard link could be made (a
     * file system without hard links): only then may the caller's open create the file, with
     * the process's umask.
     */
    public static function createPrivateAt(string $path): bool
    {
        $new = self::createPrivate(\dirname($path), self::NEW_FILE_PREFIX);
        if ($new === null) {
            return false;
        }
        // Locked while it has two names: a lock file's link count of 1 tells a holder that
        // its path still names it (src/lock/file.rs), which must never be this name's count.
        flock($new[1], LOCK_EX);
        [$linked, $reason] = self::attempt(static fn () => link($new[0], $path));
        @unlink($new[0]);
        flock($new[1], LOCK_UN);
        fclose($new[1]);
        return $linked || self::errno($reason) === self::EEXIST;
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
