<?php

/**
 * The per-host store of joinblock_person_has_tag: the same files, format and rules as the
 * extension's (src/action_network/shared.rs, and docs/configuration.md, "The host's shared state"), so that
 * extension workers and polyfill requests of one site share one tag map and one request pace.
 *
 * In the lock directory in effect, for a group "<base_url> <sha1(api key)>" named by
 * h = sha1(group): `joinblock-an-<h>.pace`, one line "joinblock-pace 1 <last> <blocked>\n"
 * (Unix seconds, 6 decimals), read and rewritten only under flock(LOCK_EX) (waited for at
 * most LOCK_PATIENCE: a stalled holder makes the call go on without the store) and never
 * unlinked; `joinblock-an-<h>.tags`, JSON {"format":"joinblock-tags 1","group":h,
 * "entries":[[href, folded name, learned, expires], ...]}, replaced whole by a rename under
 * the pace file's lock. A file is used only when it is a regular file owned by this user and
 * no symlink: PHP's fopen() has no O_NOFOLLOW, so the path is lstat()ed before and after
 * the open and must name the inode opened. A file that fails any check is ignored (warning
 * kept for joinblock_status-like reports); the call then paces per process and keeps its own
 * cache. No API key (only its hash) and no email reaches the disk.
 *
 * A slot more than one interval ahead is not taken (the caller asks again then), so no writer
 * leaves `last` more than one interval, or `blocked` more than MAX_BLOCK, after its clock's
 * now; what is read is clamped to that (and rewritten), as only a clock stepped back since
 * the write leaves more, and believing it would fail every call until the clock caught up.
 */

declare(strict_types=1);

namespace JoinBlock\Polyfill;

final class SharedStore
{
    public const MAX_FILE_BYTES = 8 << 20;
    /** The longest Retry-After honoured (seconds): no stored block lasts longer. */
    public const MAX_BLOCK = 3600.0;
    /** Seconds the pace file's lock is waited for (LOCK_PATIENCE in shared.rs). */
    private const LOCK_PATIENCE = 0.2;
    private const MAX_ENTRIES = 4096;
    private const MAX_ENTRY_BYTES = 1024;
    private const PACE_MAGIC = 'joinblock-pace 1';
    private const TAGS_FORMAT = 'joinblock-tags 1';

    /** @var list<string> problems met, for reports */
    public static array $warnings = [];

    private string $hash;

    public function __construct(private string $dir, string $group)
    {
        $this->hash = sha1($group);
    }

    /** The store for a call, or null when INI joinblock.shared_state turns it off. */
    public static function forGroup(string $group): ?self
    {
        $switch = strtolower(trim(Options::ini('joinblock.shared_state') ?? '1'));
        if (\in_array($switch, ['0', 'off', 'false', 'no', 'none'], true)) {
            return null;
        }
        return new self(rtrim(Options::ini('joinblock.lock_dir') ?? sys_get_temp_dir(), '/') ?: '/', $group);
    }

    private static function warn(string $text): void
    {
        if (!\in_array($text, self::$warnings, true)) {
            self::$warnings = \array_slice([...self::$warnings, $text], -8);
        }
    }

    private function path(string $ext): string
    {
        return "{$this->dir}/joinblock-an-{$this->hash}.$ext";
    }

    /**
     * Opens $path without following a symlink, as a regular file owned by this user.
     *
     * @return resource|string the handle, or why not
     */
    private static function openOwned(string $path, bool $create)
    {
        $before = @lstat($path);
        if ($before !== false && ($before['mode'] & 0170000) !== 0100000) {
            return "$path: not a regular file (or a symbolic link); ignored";
        }
        if ($before === false && !$create) {
            return "$path: missing";
        }
        // O_CREAT ('c') only where no private file can be linked into place
        // (Os::createPrivateAt()): a file removed since we looked is not made anew with the
        // process's umask.
        $unlinkable = $create && $before === false && !Os::createPrivateAt($path);
        $handle = @fopen($path, $unlinkable ? 'c+en' : ($create ? 'r+en' : 'ren'));
        if ($handle === false) {
            return "$path: cannot open; ignored";
        }
        $stat = fstat($handle);
        $after = @lstat($path);
        if ($after === false || $after['dev'] !== $stat['dev'] || $after['ino'] !== $stat['ino'] || ($stat['mode'] & 0170000) !== 0100000) {
            fclose($handle);
            return "$path: not a regular file (or a symbolic link); ignored";
        }
        if ($stat['uid'] !== Users::me()) {
            fclose($handle);
            return sprintf('%s: owned by uid %d, not by this user (uid %d); ignored', $path, $stat['uid'], Users::me());
        }
        return $handle;
    }

    /** @return resource|null the pace file, locked */
    private function lock()
    {
        $handle = self::openOwned($this->path('pace'), true);
        if (\is_string($handle)) {
            self::warn($handle);
            return null;
        }
        // As LOCK_PATIENCE in shared.rs: a holder that keeps the lock longer than a read and a
        // write is stalled, and is not waited for past the patience.
        $giveUp = microtime(true) + self::LOCK_PATIENCE;
        $pause = 0.001;
        while (!flock($handle, LOCK_EX | LOCK_NB, $wouldBlock)) {
            if (!$wouldBlock || microtime(true) + $pause >= $giveUp) {
                fclose($handle);
                self::warn($this->path('pace') . ($wouldBlock
                    ? ': held by another process for over ' . (int) (self::LOCK_PATIENCE * 1000) . ' ms (stalled?); per-process pacing'
                    : ': cannot lock; per-process pacing'));
                return null;
            }
            usleep((int) ($pause * 1e6));
            $pause = min($pause * 2, 0.01);
        }
        return $handle;
    }

    /**
     * [last, blocked], clamped to what a writer could have left by $now; a line that does not
     * parse, or that had to be clamped, is rewritten.
     *
     * @param resource $handle @return array{float, float}|null null: it cannot be rewritten
     */
    private function readPace($handle, float $now, float $interval): ?array
    {
        rewind($handle);
        $text = (string) fread($handle, 256);
        if (preg_match('/\A' . self::PACE_MAGIC . ' (-?[0-9]+(?:\.[0-9]+)?) (-?[0-9]+(?:\.[0-9]+)?)\n\z/', $text, $m) !== 1) {
            if ($text !== '') {
                self::warn($this->path('pace') . ': not a pace line; rewritten');
            }
            return [0.0, 0.0];
        }
        [$last, $blocked] = [(float) $m[1], (float) $m[2]];
        $clamped = [min($last, $now + $interval), min($blocked, $now + self::MAX_BLOCK)];
        if ($clamped !== [$last, $blocked]) {
            self::warn($this->path('pace') . ": times ahead of this host's clock (stepped back?); clamped");
            if (!self::writePace($handle, ...$clamped)) {
                return null;
            }
        }
        return $clamped;
    }

    /** @param resource $handle */
    private static function writePace($handle, float $last, float $blocked): bool
    {
        $line = sprintf("%s %.6F %.6F\n", self::PACE_MAGIC, $last, $blocked);
        rewind($handle);
        return fwrite($handle, $line) === \strlen($line) && ftruncate($handle, \strlen($line));
    }

    /** @param resource $handle */
    private static function unlock($handle): void
    {
        flock($handle, LOCK_UN);
        fclose($handle);
    }

    /**
     * Takes the host's next request slot for a spacing of $interval: [true, slot] (Unix
     * seconds); [false, when] when the next free slot lies more than one interval ahead (ask
     * again then); null when it falls at or after $latest; false when the store cannot be used.
     *
     * @return array{bool, float}|false|null
     */
    public function reserve(float $interval, float $latest): array|false|null
    {
        $handle = $this->lock();
        if ($handle === null) {
            return false;
        }
        try {
            $now = microtime(true);
            $pace = $this->readPace($handle, $now, $interval);
            if ($pace === null) {
                return false;
            }
            [$last, $blocked] = $pace;
            $slot = max($now, $last + $interval, $blocked);
            if ($slot >= $latest) {
                return null;
            }
            if ($slot > $now + $interval) {
                return [false, $slot - $interval];
            }
            return self::writePace($handle, $slot, $blocked) ? [true, $slot] : false;
        } finally {
            self::unlock($handle);
        }
    }

    /** Action Network asked to wait until $until: every process of the host waits. */
    public function pushBack(float $until): bool
    {
        $handle = $this->lock();
        if ($handle === null) {
            return false;
        }
        try {
            $now = microtime(true);
            // `last` as read: the next reserve clamps it with the interval it knows.
            $pace = $this->readPace($handle, $now, INF);
            return $pace !== null && self::writePace($handle, $pace[0], max($pace[1], min($until, $now + self::MAX_BLOCK)));
        } finally {
            self::unlock($handle);
        }
    }

    /** @return list<array{string, string, float, float}> href, folded name, learned, expires */
    public function readTags(): array
    {
        $entries = self::readTagsFile($this->path('tags'), $this->hash);
        if (\is_string($entries)) {
            if (!str_ends_with($entries, ': missing')) {
                self::warn($entries);
            }
            return [];
        }
        return $entries;
    }

    /** @return list<array{string, string, float, float}>|string the entries, or why none */
    private static function readTagsFile(string $path, string $hash): array|string
    {
        $handle = self::openOwned($path, false);
        if (\is_string($handle)) {
            return $handle;
        }
        $body = stream_get_contents($handle, self::MAX_FILE_BYTES + 1);
        fclose($handle);
        if ($body === false || \strlen($body) > self::MAX_FILE_BYTES) {
            return "$path: unreadable or too large; ignored";
        }
        $entries = self::parseTags($body, $hash);
        return $entries ?? "$path: not a joinblock tags file (corrupt or truncated); ignored";
    }

    /** @return ?list<array{string, string, float, float}> */
    public static function parseTags(string $body, string $hash): ?array
    {
        $value = json_decode($body, true);
        if (!\is_array($value) || ($value['format'] ?? null) !== self::TAGS_FORMAT || ($value['group'] ?? null) !== $hash
            || !\is_array($value['entries'] ?? null) || !array_is_list($value['entries']) || \count($value['entries']) > self::MAX_ENTRIES) {
            return null;
        }
        $entries = [];
        foreach ($value['entries'] as $row) {
            if (!\is_array($row) || !array_is_list($row) || \count($row) !== 4 || !\is_string($row[0]) || !\is_string($row[1])
                || !\is_int($row[2]) && !\is_float($row[2]) || !\is_int($row[3]) && !\is_float($row[3])
                || \strlen($row[0]) + \strlen($row[1]) > self::MAX_ENTRY_BYTES) {
                return null;
            }
            $entries[] = [$row[0], $row[1], (float) $row[2], (float) $row[3]];
        }
        return $entries;
    }

    /**
     * Merges $learned into the group's file: a later entry for an href replaces an earlier one,
     * the expired go, the newest MAX_ENTRIES stay.
     *
     * @param list<array{string, string, float, float}> $learned
     */
    public function publish(array $learned): void
    {
        if ($learned === []) {
            return;
        }
        $handle = $this->lock();
        if ($handle === null) {
            return;
        }
        try {
            $path = $this->path('tags');
            $current = self::readTagsFile($path, $this->hash);
            $now = microtime(true);
            $byHref = [];
            foreach (\is_array($current) ? $current : [] as $entry) {
                if ($entry[3] > $now) {
                    $byHref[$entry[0]] = $entry;
                }
            }
            foreach ($learned as $entry) {
                if (\strlen($entry[0]) + \strlen($entry[1]) <= self::MAX_ENTRY_BYTES) {
                    unset($byHref[$entry[0]]);
                    $byHref[$entry[0]] = $entry;
                }
            }
            $entries = array_values($byHref);
            if (\count($entries) > self::MAX_ENTRIES) {
                usort($entries, static fn ($a, $b) => $a[2] <=> $b[2]);
                $entries = \array_slice($entries, -self::MAX_ENTRIES);
            }
            self::removeLeftovers($this->dir, ".joinblock-an-{$this->hash}.tags.");
            $body = json_encode(['format' => self::TAGS_FORMAT, 'group' => $this->hash, 'entries' => $entries], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
            [$temp, $out] = Os::createPrivate($this->dir, ".joinblock-an-{$this->hash}.tags.") ?? [null, false];
            if ($out === false || fwrite($out, $body) !== \strlen($body) || !fclose($out) || !@rename($temp, $path)) {
                if ($temp !== null) {
                    @unlink($temp);
                }
                self::warn("$path: cannot publish");
            }
        } finally {
            self::unlock($handle);
        }
    }

    /** Removes this user's temporary files named $prefix… in $dir left by a process killed while publishing (Os::removeIfLeft()). */
    private static function removeLeftovers(string $dir, string $prefix): void
    {
        foreach (@scandir($dir) ?: [] as $name) {
            Os::removeIfLeft($dir, $name, $prefix);
        }
    }

    /** @return array{int, int, list<string>} tags files, their entries, files ignored */
    public static function inspect(string $dir): array
    {
        [$files, $entries, $problems] = [0, 0, []];
        foreach (@scandir($dir) ?: [] as $name) {
            if (preg_match('/\Ajoinblock-an-([0-9a-f]{40})\.tags\z/', $name, $m) !== 1) {
                continue;
            }
            $found = self::readTagsFile("$dir/$name", $m[1]);
            if (\is_string($found)) {
                $problems[] = $found;
            } else {
                $files++;
                $entries += \count($found);
            }
        }
        return [$files, $entries, $problems];
    }
}
