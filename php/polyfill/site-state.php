<?php

/**
 * The site-wide store of joinblock_person_has_tag: the same tables, statements and rules as
 * the extension's (src/action_network/site_state.rs, and README "Several hosts"), so that
 * extension and polyfill processes on any of the site's hosts share one request pace and one
 * tag map per group through the server the site locks on.
 *
 * Tables `joinblock_an_pace` (group -> last_slot, blocked_until) and `joinblock_an_tags`
 * ((group, sha1(href)) -> href, folded name, learned, expires), made on first use. Every time
 * is the server's UTC_TIMESTAMP(6): a process learns only durations from it, so hosts whose
 * clocks disagree keep one pace. As for the files, a slot is taken only when it lies at most
 * one interval ahead of the server's now (else the process asks again then), and what is read
 * is clamped to that: last_slot to now + one interval, blocked_until to now + the longest
 * Retry-After honoured (rewritten so), whatever a clock step of the server's left behind. A request's slot costs one
 * UPDATE, whose wait comes back through LAST_INSERT_ID(expr); no lock is held over a request.
 * Any failure makes the rest of the call use the host's files (SharedStore), with a warning
 * for joinblock_status(). No API key (only its hash) and no email reaches the server.
 */

declare(strict_types=1);

namespace JoinBlock\Polyfill;

use JoinBlock\LockException;

final class SiteState
{
    private const MAX_ENTRIES = 4096;
    private const MAX_ENTRY_BYTES = 1024;
    private const MAX_BLOCK_SECONDS = 3600;
    private const ROWS_PER_INSERT = 64;
    private const NO_SUCH_TABLE = 1146;

    private const CREATE_PACE = 'CREATE TABLE IF NOT EXISTS joinblock_an_pace ('
        . 'grp CHAR(40) CHARACTER SET ascii NOT NULL PRIMARY KEY, '
        . 'last_slot DATETIME(6) NOT NULL, blocked_until DATETIME(6) NOT NULL'
        . ') ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin';
    private const CREATE_TAGS = 'CREATE TABLE IF NOT EXISTS joinblock_an_tags ('
        . 'grp CHAR(40) CHARACTER SET ascii NOT NULL, href_sha1 CHAR(40) CHARACTER SET ascii NOT NULL, '
        . 'href VARCHAR(1024) NOT NULL, name VARCHAR(1024) NOT NULL, '
        . 'learned DATETIME(6) NOT NULL, expires DATETIME(6) NOT NULL, '
        . 'PRIMARY KEY (grp, href_sha1), KEY by_age (grp, learned)'
        . ') ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin';
    private const ADD_GROUP = "INSERT IGNORE INTO joinblock_an_pace (grp, last_slot, blocked_until) VALUES (?, '1970-01-02', '1970-01-02')";
    /** As in site_state.rs; parameters: the interval (µs), twice. */
    private const NEXT_SLOT = 'GREATEST(UTC_TIMESTAMP(6), LEAST(last_slot, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) + INTERVAL ? MICROSECOND, '
        . 'LEAST(blocked_until, UTC_TIMESTAMP(6) + INTERVAL 3600 SECOND))';
    private const TAKE_SLOT = 'UPDATE joinblock_an_pace SET last_slot = IF(LAST_INSERT_ID(1 + TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), '
        . self::NEXT_SLOT . ')) <= ?, ' . self::NEXT_SLOT . ', LEAST(last_slot, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)), '
        . 'blocked_until = LEAST(blocked_until, UTC_TIMESTAMP(6) + INTERVAL 3600 SECOND) WHERE grp = ?';
    private const PUSH_BACK = 'UPDATE joinblock_an_pace SET blocked_until = GREATEST('
        . 'LEAST(blocked_until, UTC_TIMESTAMP(6) + INTERVAL 3600 SECOND), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) WHERE grp = ?';
    private const READ_TAGS = 'SELECT href, name, TIMESTAMPDIFF(MICROSECOND, learned, UTC_TIMESTAMP(6)), '
        . 'TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires) FROM joinblock_an_tags '
        . 'WHERE grp = ? AND expires > UTC_TIMESTAMP(6) ORDER BY learned DESC LIMIT 4096';
    private const UPSERT_ROW = '(?, ?, ?, ?, UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)';
    private const DROP_EXPIRED = 'DELETE FROM joinblock_an_tags WHERE grp = ? AND expires <= UTC_TIMESTAMP(6)';
    private const COUNT_TAGS = 'SELECT COUNT(*) FROM joinblock_an_tags WHERE grp = ?';
    private const DROP_OLDEST = 'DELETE FROM joinblock_an_tags WHERE grp = ? ORDER BY learned, href_sha1 LIMIT ?';

    /** @var list<string> problems met, for joinblock_status() */
    public static array $warnings = [];

    private string $hash;
    /** Set at the first failure of the server: the rest of the call uses the files. */
    private bool $siteFailed = false;

    private function __construct(private ?SharedStore $files, private ?array $site, string $group)
    {
        $this->hash = sha1($group);
    }

    /** The store of a call (the site's server, the host's files, or both), null when off. */
    public static function forGroup(string $group): ?self
    {
        $files = SharedStore::forGroup($group);
        $site = $files === null ? null : self::server();
        return $files === null ? null : new self($files, $site, $group);
    }

    /**
     * The lock server, when the shared state spans the site's hosts through it: INI
     * joinblock.shared_state_backend = auto (the default) and the mysql lock backend.
     *
     * @return array{MysqlTarget, float}|null
     */
    public static function server(): ?array
    {
        $backend = strtolower(trim(Options::ini('joinblock.shared_state_backend') ?? 'auto'));
        if ($backend !== 'auto' && $backend !== 'files') {
            throw new \ValueError(sprintf('INI joinblock.shared_state_backend is "%s"; expected auto or files', Options::escape($backend)));
        }
        return $backend === 'auto' ? Locking::mysqlInEffect() : null;
    }

    /** What joinblock_status() says of the shared state: [where, problem or null]. */
    public static function status(): array
    {
        $dir = SharedStore::forGroup('') === null ? null : (Options::ini('joinblock.lock_dir') ?? sys_get_temp_dir());
        $files = $dir === null ? 'off' : "this host's lock directory $dir";
        try {
            $site = self::server();
        } catch (\ValueError $e) {
            return [null, $e->getMessage()];
        }
        if ($site === null || $dir === null) {
            return [$files, null];
        }
        [$target, $bound] = $site;
        try {
            $entries = self::run($target, $bound, static fn (\mysqli $db) => (int) $db->query('SELECT COUNT(*) FROM joinblock_an_tags')->fetch_row()[0]);
            return ["site-wide on MySQL server {$target->describe()} ($entries tag map entries)", null];
        } catch (LockException $e) {
            return [null, "the site-wide shared state cannot be used ({$e->getMessage()}); each host uses $files instead"];
        }
    }

    /** Runs $work on the lock connection, making the tables when they are missing. */
    private static function run(MysqlTarget $target, float $bound, callable $work): mixed
    {
        return MysqlConnection::with($target, $bound, static function (\mysqli $db) use ($work): mixed {
            try {
                return $work($db);
            } catch (\mysqli_sql_exception $e) {
                if ($e->getCode() !== self::NO_SUCH_TABLE) {
                    throw $e;
                }
                $db->query(self::CREATE_PACE);
                $db->query(self::CREATE_TAGS);
                return $work($db);
            }
        });
    }

    private static function execute(\mysqli $db, string $sql, array $params): \mysqli_stmt
    {
        $statement = $db->prepare($sql);
        // Typed, as LIMIT takes no string.
        $statement->bind_param(implode('', array_map(static fn ($p) => \is_int($p) ? 'i' : 's', $params)), ...$params);
        $statement->execute();
        return $statement;
    }

    private static function micros(float $seconds): int
    {
        return (int) (min(max($seconds, 0.0), 1e12) * 1e6);
    }

    /** The result of $work on the server, or null when the files are to answer. */
    private function onSite(callable $work): mixed
    {
        if ($this->site === null || $this->siteFailed) {
            return null;
        }
        [$target, $bound] = $this->site;
        try {
            return [self::run($target, $bound, $work)];
        } catch (LockException $e) {
            $this->siteFailed = true;
            $text = "site-wide shared state: {$e->getMessage()}; the host's files were used instead";
            if (!\in_array($text, self::$warnings, true)) {
                self::$warnings = \array_slice([...self::$warnings, $text], -8);
            }
            return null;
        }
    }

    /** As SharedStore::reserve(): the slot in this host's Unix seconds. */
    public function reserve(float $interval, float $latest): array|false|null
    {
        $step = self::micros($interval);
        $taken = $this->onSite(function (\mysqli $db) use ($step, $interval, $latest): ?array {
            $maxWait = self::micros($latest - microtime(true));
            // Taken when 1 + wait <= this: wait within one interval and before the deadline.
            $takeLimit = min($step + 1, $maxWait);
            $reported = 0;
            foreach ([true, false] as $first) {
                $reported = (int) self::execute($db, self::TAKE_SLOT, [$step, $step, $takeLimit, $step, $step, $step, $this->hash])->insert_id;
                if ($reported > 0 || !$first) {
                    break;
                }
                // The group's first request on this server.
                self::execute($db, self::ADD_GROUP, [$this->hash]);
            }
            if ($reported === 0) {
                throw new \mysqli_sql_exception('the pace row of the group could not be made');
            }
            $wait = $reported - 1;
            $at = microtime(true) + $wait / 1e6;
            if ($wait >= $maxWait) {
                return null;
            }
            return $wait > $step ? [false, $at - $interval] : [true, $at];
        });
        if ($taken !== null) {
            return $taken[0];
        }
        // Not `?? false`: the files' null (the slot falls past the deadline) must stay null.
        return $this->files !== null ? $this->files->reserve($interval, $latest) : false;
    }

    /** As SharedStore::pushBack(): $until in this host's Unix seconds. */
    public function pushBack(float $until): bool
    {
        $wait = self::micros(min($until - microtime(true), self::MAX_BLOCK_SECONDS));
        if ($this->onSite(fn (\mysqli $db) => self::execute($db, self::PUSH_BACK, [$wait, $this->hash])) !== null) {
            return true;
        }
        return $this->files?->pushBack($until) ?? false;
    }

    /** As SharedStore::readTags(): times in this host's Unix seconds. */
    public function readTags(): array
    {
        $rows = $this->onSite(fn (\mysqli $db) => self::execute($db, self::READ_TAGS, [$this->hash])->get_result()->fetch_all(MYSQLI_NUM));
        if ($rows === null) {
            return $this->files?->readTags() ?? [];
        }
        $now = microtime(true);
        $entries = [];
        foreach ($rows[0] as [$href, $name, $ago, $left]) {
            if (\strlen($href) + \strlen($name) <= self::MAX_ENTRY_BYTES) {
                // An entry learned "in the future" (a clock step of the server's) is as new as now.
                $entries[] = [$href, $name, $now - max((int) $ago, 0) / 1e6, $now + (int) $left / 1e6];
            }
        }
        return $entries;
    }

    /** As SharedStore::publish(). */
    public function publish(array $learned): void
    {
        if ($learned === []) {
            return;
        }
        $now = microtime(true);
        // One href once (the last learned), in key order, so that concurrent publishers lock
        // rows in the same order.
        $rows = [];
        foreach ($learned as $entry) {
            if (\strlen($entry[0]) + \strlen($entry[1]) <= self::MAX_ENTRY_BYTES) {
                $rows[sha1($entry[0])] = $entry;
            }
        }
        ksort($rows, SORT_STRING);
        $published = $this->onSite(function (\mysqli $db) use ($rows, $now): bool {
            foreach (array_chunk($rows, self::ROWS_PER_INSERT, true) as $chunk) {
                $params = [];
                foreach ($chunk as $sha => [$href, $name, $learnedAt, $expires]) {
                    array_push($params, $this->hash, (string) $sha, $href, $name, self::micros($now - $learnedAt), self::micros($expires - $now));
                }
                self::execute($db, 'INSERT INTO joinblock_an_tags (grp, href_sha1, href, name, learned, expires) VALUES '
                    . implode(', ', array_fill(0, \count($chunk), self::UPSERT_ROW))
                    . ' ON DUPLICATE KEY UPDATE href = VALUES(href), name = VALUES(name), learned = VALUES(learned), expires = VALUES(expires)', $params);
            }
            self::execute($db, self::DROP_EXPIRED, [$this->hash]);
            $count = (int) self::execute($db, self::COUNT_TAGS, [$this->hash])->get_result()->fetch_row()[0];
            if ($count > self::MAX_ENTRIES) {
                self::execute($db, self::DROP_OLDEST, [$this->hash, $count - self::MAX_ENTRIES]);
            }
            return true;
        });
        if ($published === null) {
            $this->files?->publish($learned);
        }
    }
}
