<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// What lock files hold besides their lock: a polling waiter's turn, and how many stay.

declare(strict_types=1);

namespace JoinBlock\Polyfill;

/**
 * A turn for waiters that poll, by the rule of src/lock/turn.rs, on the same files: a waiter
 * blocked in the kernel takes the lock at the very unlock, so a poller (every timed wait
 * here: PHP has no timed flock) could lose every look. A poller that has waited MARK_AFTER
 * writes its token (24 hex digits: pid, a number it drew, the wall clock's milliseconds modulo
 * 2^32) at the start of the file and rewrites it every MARK_REFRESH; whoever takes the lock
 * and finds another's token younger than MARK_FRESH_MS lets go for YIELD, unless it marked
 * too; the poller that finds its own takes its turn and empties the file.
 */
final class Turn
{
    public const MARK_AFTER = 0.010;
    public const MARK_REFRESH = 0.050;
    public const MARK_FRESH_MS = 250;
    public const MARKED_POLL = 0.001;
    public const YIELD = 0.003;

    public const NOTHING = 0;
    public const OWN = 1;
    public const OTHER = 2;

    private const LENGTH = 24;
    private const ID_LENGTH = 16;

    /** What the file, of $size bytes under its lock, holds: NOTHING (or a stale token), OWN or OTHER. @param resource $handle */
    public static function inspect($handle, int $size, ?string $own): int
    {
        $token = $size === 0 ? null : self::read($handle);
        if ($token === null) {
            return self::NOTHING;
        }
        if ($own !== null && substr($token, 0, self::ID_LENGTH) === $own) {
            return self::OWN;
        }
        $written = substr($token, self::ID_LENGTH);
        // A time ahead of now (a clock stepped back) is a huge age: stale, as an old one.
        $fresh = preg_match('/^[0-9a-f]{8}$/Di', $written) === 1 && ((self::nowMs() - hexdec($written)) & 0xffffffff) <= self::MARK_FRESH_MS;
        return $fresh ? self::OTHER : self::NOTHING;
    }

    /** A new waiter's name for its token. */
    public static function newId(): string
    {
        return sprintf('%08x%08x', getmypid(), random_int(0, 0xffffffff));
    }

    /**
     * Writes (or rewrites) the token of waiter $id with the time now; false when it could not
     * (a full file system): the waiter then polls without a turn, as the extension's does.
     *
     * @param resource $handle
     */
    public static function write($handle, string $id): bool
    {
        return fseek($handle, 0) === 0 && fwrite($handle, $id . sprintf('%08x', self::nowMs())) === self::LENGTH;
    }

    /** Empties the file, under its lock. @param resource $handle */
    public static function clear($handle): void
    {
        ftruncate($handle, 0);
    }

    /** Takes waiter $id's token back if it is still there: it gave up. @param resource $handle */
    public static function withdraw($handle, string $id): void
    {
        $token = self::read($handle);
        if ($token !== null && substr($token, 0, self::ID_LENGTH) === $id) {
            self::clear($handle);
        }
    }

    /** @param resource $handle */
    private static function read($handle): ?string
    {
        // Tokens are read after writes by others: never from a stale buffer.
        stream_set_read_buffer($handle, 0);
        if (fseek($handle, 0) !== 0) {
            return null;
        }
        $token = fread($handle, self::LENGTH);
        return \is_string($token) && \strlen($token) === self::LENGTH ? $token : null;
    }

    private static function nowMs(): int
    {
        return ((int) floor(microtime(true) * 1000)) & 0xffffffff;
    }
}

/** One polling waiter: its backoff, and its token once it asked for a turn. */
final class Waiter
{
    public ?string $token = null;

    /** When the token was last written to the file waited on. */
    private ?float $marked = null;

    public function __construct(private Backoff $backoff) {}

    /** A new file to wait on: the token, if any, goes to it afresh. */
    public function newFile(): void
    {
        $this->marked = null;
    }

    /** Sleeps until the next look, asking for a turn once it has waited long enough. @param resource $handle */
    public function pause($handle, float $waited, float $remaining): void
    {
        if ($waited >= Turn::MARK_AFTER && ($this->marked === null || Clock::now() - $this->marked >= Turn::MARK_REFRESH)) {
            // Unwritten, it is no token: tried again at the next look.
            $token = $this->token ?? Turn::newId();
            if (Turn::write($handle, $token)) {
                [$this->token, $this->marked] = [$token, Clock::now()];
            }
        }
        Clock::sleep(min($this->token === null ? $this->backoff->next($remaining) : Turn::MARKED_POLL, $remaining));
    }

    /** @param resource $handle */
    public function withdraw($handle): void
    {
        if ($this->token !== null) {
            Turn::withdraw($handle, $this->token);
        }
    }
}

/**
 * The lock directory's bound, by the rule of src/lock/sweep.rs: a release leaves its file for
 * the next acquisition, and a sweep runs at the first release in a directory, then after every
 * period() files made there, and after INTERVAL at the next release. It removes idle lock
 * files in directory order until at most joinblock.lock_files_kept of those it listed are left:
 * always as many as were made since the last sweep, then for at most BUDGET; one cut short
 * above the bound makes the next release sweep again. PHP's statics last one request, so
 * here "since the last sweep" starts at the request's first release.
 */
final class Sweep
{
    public const INTERVAL = 60.0;
    public const BUDGET = 0.05;
    public const KEEP_DEFAULT = 1024;

    /** @var array<string, array{int, int, int}> directory => [when it is due (hrtime ns; 0 after a sweep cut short by its budget), files made since the last sweep, how many make it due] */
    private static array $seen = [];

    /** Set by releases after a fatal error: a sweep reads the whole directory, and memory may be out. */
    private static bool $stopped = false;

    public static function stop(): void
    {
        self::$stopped = true;
    }

    /** Files a process makes in a directory between two sweeps of it. */
    public static function period(int $keep): int
    {
        return max(1, min(256, intdiv($keep, 4)));
    }

    public static function created(string $dir): void
    {
        if (isset(self::$seen[$dir])) {
            self::$seen[$dir][1]++;
        }
    }

    public static function afterRelease(string $dir, int $keep): void
    {
        // Every release asks, and almost every one is not due: that answer costs one lookup.
        $now = hrtime(true);
        $seen = self::$seen[$dir] ?? null;
        if (($seen !== null && $now < $seen[0] && $seen[1] < $seen[2]) || self::$stopped) {
            return;
        }
        if ($seen === null && \count(self::$seen) >= 16) {
            self::$seen = [];
        }
        self::$seen[$dir] = [$now + (int) (self::INTERVAL * 1e9), 0, self::period($keep)];
        Os::kept();
        try {
            [, $removed, , $cutShort] = self::sweep($dir, $keep, $seen[1] ?? 0);
        } finally {
            Os::unkept();
        }
        // Cut short by its budget above the bound while removing: the next release sweeps
        // again. Not a sweep that found the files it tried held: src/lock/sweep.rs says why.
        if ($cutShort && $removed > 0) {
            self::$seen[$dir][0] = 0;
        }
    }

    /**
     * Removes idle lock files of $dir in directory order until at most $keep of those listed
     * are left: at least $share of them (or all it can), then while BUDGET lasts. Files another
     * sweep removed first count as gone.
     *
     * @return array{int, int, int, bool} [found, removed, gone (removed included), cut short by the budget]
     */
    public static function sweep(string $dir, int $keep, int $share, float $budget = self::BUDGET): array
    {
        $started = Clock::now();
        $names = @scandir($dir, SCANDIR_SORT_NONE);
        if ($names === false) {
            return [0, 0, 0, false];
        }
        // New lock files left with two names by a process killed while linking one
        // (Os::createPrivateAt()): without the temporary name, sweeps can remove them again.
        $names = preg_grep('/^join-lock-[0-9a-f]{40}$/D', array_filter($names, static fn ($name) => !Os::removeIfLeft($dir, $name, Os::NEW_FILE_PREFIX)));
        $excess = \count($names) - $keep;
        [$removed, $gone] = [0, 0];
        foreach ($names as $name) {
            if ($gone >= $excess) {
                break;
            }
            if ($removed >= $share && Clock::now() - $started >= $budget) {
                return [\count($names), $removed, $gone, true];
            }
            $removal = FileLock::removeIfIdle("$dir/$name");
            $removed += $removal === FileLock::REMOVED ? 1 : 0;
            $gone += $removal === FileLock::STAYS ? 0 : 1;
        }
        return [\count($names), $removed, $gone, false];
    }
}
