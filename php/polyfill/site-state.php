<?php

/**
 * The site-wide store of joinblock_person_has_tag: the same tables, statements and rules as
 * the extension's (src/action_network/site_state.rs, and README "Several hosts"), so that
 * extension and polyfill processes on any of the site's hosts share one request pace and one
 * tag map per group through the server the site locks on.
 *
 * Tables `<prefix>joinblock_an_pace` (group -> last_slot, blocked_until; the row 'tidy': when
 * the tables were last tidied) and `<prefix>joinblock_an_tags` ((group, sha1(href)) -> href,
 * folded name, learned, expires), made on first use; the prefix is joinblock_configure()'s
 * table_prefix, else INI joinblock.table_prefix. Every time
 * is the server's UTC_TIMESTAMP(6): a process learns only durations from it, so hosts whose
 * clocks disagree keep one pace. As for the files, a slot is taken only when it lies at most
 * one interval ahead of the server's now (else the process asks again then), and what is read
 * is clamped to that: last_slot to now + one interval, blocked_until to now + the longest
 * Retry-After honoured (rewritten so), whatever a clock step of the server's left behind. A request's slot costs one
 * UPDATE, whose wait comes back through LAST_INSERT_ID(expr); no lock is held over a request.
 * Any failure makes the rest of the call use the host's files (SharedStore), counted with its
 * reason for joinblock_status() and named in the call's exception. Every wait on the server
 * ends by the call's deadline, and the server is told the same limit per statement; the
 * statements run on a connection of their own, apart from the locks'. Every row is untrusted
 * input, checked as the extension checks it (usableTag(), saneTime()); a bad one is ignored,
 * counted and replaced. At most once a minute site-wide, the end of a call of any group removes
 * expired tag rows and the pace rows of groups idle for a day, by key (tidyWhenDue()). Texts
 * travel as hexadecimal literals over a utf8mb4 connection. No API key (only its hash) and
 * no email reaches the server.
 */

declare(strict_types=1);

namespace JoinBlock\Polyfill;

use JoinBlock\LockException;

final class SiteState
{
    private const MAX_ENTRIES = 4096;
    private const MAX_ENTRY_BYTES = 1024;
    private const MAX_BLOCK_SECONDS = 3600;
    /** As site_state.rs: how far ahead a row may say it was learned, and the longest an entry lives. */
    private const FUTURE_TOLERANCE = 60;
    private const MAX_LIFETIME = 30 * 24 * 3600;
    private const ROWS_PER_INSERT = 64;
    private const NO_SUCH_TABLE = 1146;
    private const NOW = 'UTC_TIMESTAMP(6)';
    private const NO_TIME_LEFT = "the call's deadline left no time to wait for the server";
    /** As site_state.rs: the tidy's period (s), rows per tidy, how long an idle pace row stays (s), the latest a slot lies ahead (µs). */
    private const TIDY_EVERY = 60;
    private const TIDY_TAG_ROWS = 4096;
    private const TIDY_PACE_ROWS = 1024;
    private const TIDY_KEYS_PER_DELETE = 512;
    private const TIDY_BUDGET = 1.0;
    private const IDLE_PACE_ROW = 24 * 3600;
    private const TIDY_ROW = 'tidy';
    private const MAX_SLOT_AHEAD_MICROS = self::MAX_BLOCK_SECONDS * 1_000_000;

    /** When this process (under PHP-FPM: this request) may next try to tidy (Clock). */
    private static float $nextTidy = 0.0;

    /** @var list<string> problems met, for joinblock_status() */
    public static array $warnings = [];
    /** Calls that fell back to the host's files; rows found unusable, and the last one's fault. */
    public static int $fallbacks = 0;
    public static int $badRows = 0;
    public static ?string $lastBadRow = null;
    /** Why this process's last tidy failed, if it did. */
    public static ?string $tidyFailure = null;

    /** This process's connection for the shared state (apart from the locks'), its server, and whether that is MariaDB. */
    private static ?\mysqli $db = null;
    private static ?MysqlTarget $dbTarget = null;
    private static int $dbPid = 0;
    private static bool $mariadb = true;
    /** @var list<\mysqli> connections inherited across fork, kept out of use */
    private static array $inherited = [];

    private string $hash;
    /** Why the server stopped serving this call, once it did: the rest of the call uses the files. */
    private ?string $siteFailure = null;

    private function __construct(private ?SharedStore $files, private ?array $site, string $group, private float $giveUp)
    {
        $this->hash = sha1($group);
    }

    /** The store of a call (the site's server, the host's files, or both), null when off; $giveUp: the call's deadline (Clock). */
    public static function forGroup(string $group, float $giveUp): ?self
    {
        $files = SharedStore::forGroup($group);
        try {
            $site = $files === null ? null : self::server();
        } catch (\ValueError $e) {
            throw new \ValueError("joinblock_person_has_tag(): {$e->getMessage()}");
        }
        return $files === null ? null : new self($files, $site, $group, $giveUp);
    }

    /**
     * The lock server and the tables' names, when the shared state spans the site's hosts
     * through it: INI joinblock.shared_state_backend = auto (the default) and the mysql lock
     * backend.
     *
     * @return array{MysqlTarget, float, array{string, string}}|null [server, bound of every wait, [pace, tags]]
     */
    public static function server(): ?array
    {
        $backend = strtolower(trim(Options::ini('joinblock.shared_state_backend') ?? 'auto'));
        if ($backend !== 'auto' && $backend !== 'files') {
            throw new \ValueError(sprintf('INI joinblock.shared_state_backend is "%s"; expected auto or files', Options::escape($backend)));
        }
        $server = $backend === 'auto' ? Locking::mysqlInEffect() : null;
        if ($server === null) {
            return null;
        }
        $prefix = Locking::tablePrefix();
        return [...$server, ["{$prefix}joinblock_an_pace", "{$prefix}joinblock_an_tags"]];
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
        [$target, $bound, [$pace, $tags]] = $site;
        try {
            [$badPace, $estimate] = self::run($site, Clock::now() + $bound, static function (\mysqli $db, float $giveUp) use ($pace, $tags): array {
                // Could this process take a slot and publish? The same statements, on no row: privileges and read_only are checked all the same.
                self::query($db, "UPDATE $pace SET last_slot = last_slot WHERE FALSE", $giveUp);
                self::query($db, "INSERT INTO $tags SELECT * FROM $tags WHERE FALSE", $giveUp);
                self::query($db, "DELETE FROM $tags WHERE FALSE", $giveUp);
                self::query($db, "DELETE FROM $pace WHERE FALSE", $giveUp);
                $row = self::query($db, 'SELECT COUNT(*), (SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() '
                    . "AND TABLE_NAME = '$tags') FROM $pace WHERE " . self::saneTime('last_slot', self::MAX_SLOT_AHEAD_MICROS + 1_000_000) . ' IS NULL OR '
                    . self::saneTime('blocked_until', (self::MAX_BLOCK_SECONDS + 1) * 1_000_000) . ' IS NULL', $giveUp)->fetch_row();
                return [(int) $row[0], (int) $row[1]];
            });
        } catch (LockException $e) {
            return [null, "the site-wide shared state cannot be used ({$e->getMessage()}); each host uses $files instead"];
        }
        $state = "site-wide on MySQL server {$target->describe()}, tables $pace and $tags (about $estimate tag map entries)";
        $faults = [];
        if ($badPace > 0) {
            $faults[] = "$badPace row(s) of $pace hold times no writer could have left (zero dates, or past what a slot or Retry-After allows); "
                . "each is rewritten at its group's next request";
        }
        if (self::$badRows > 0) {
            $faults[] = sprintf('this process ignored %d unusable row(s) of the site-wide tables (last: %s)', self::$badRows, self::$lastBadRow);
        }
        if (self::$tidyFailure !== null) {
            $faults[] = sprintf("this process's last tidy of the tables failed (%s); expired rows stay until a tidy works", self::$tidyFailure);
        }
        if (self::$fallbacks > 0) {
            $faults[] = sprintf("this process fell back to the host's files %d time(s) (last: %s)", self::$fallbacks, end(self::$warnings));
        }
        return $faults === [] ? [$state, null] : [null, "$state, but " . implode('; ', $faults)];
    }

    /**
     * Runs $work(connection, giveUp) on this process's state connection to $site's server (as
     * server() gives it), making the tables when they are missing; every wait ends by $giveUp
     * (Clock) and within the site's bound. A connection found dead when reused is replaced
     * once; a reply that came late is not asked for again.
     *
     * @throws LockException
     */
    private static function run(array $site, float $giveUp, callable $work): mixed
    {
        [$target, $bound, $tables] = $site;
        if (self::$db !== null && self::$dbPid !== getmypid()) {
            // A copy inherited across fork: destroying it would send COM_QUIT and end the parent's session.
            self::$inherited[] = self::$db;
            self::$db = null;
        }
        if (self::$db !== null && self::$dbTarget != $target) {
            self::$db = null;
        }
        $reused = self::$db !== null;
        while (true) {
            if (self::$db === null) {
                $left = min($bound, $giveUp - Clock::now());
                if ($left <= 0) {
                    throw new LockException("cannot connect to MySQL server {$target->describe()}: " . self::NO_TIME_LEFT);
                }
                [self::$db, self::$mariadb] = MysqlConnection::openChecked($target, $left);
                [self::$dbTarget, self::$dbPid] = [$target, getmypid()];
            }
            $db = self::$db;
            try {
                return MysqlConnection::quietly(static function () use ($db, $work, $giveUp, $bound, $tables): mixed {
                    $until = min($giveUp, Clock::now() + $bound);
                    try {
                        return $work($db, $until);
                    } catch (\mysqli_sql_exception $e) {
                        if ($e->getCode() !== self::NO_SUCH_TABLE) {
                            throw $e;
                        }
                        foreach (self::create(...$tables) as $create) {
                            self::query($db, $create, $until);
                        }
                        return $work($db, $until);
                    }
                });
            } catch (\mysqli_sql_exception $e) {
                $ended = MysqlConnection::endsConnection($e) || $e->getCode() === MysqlConnection::LATE_REPLY;
                if ($ended) {
                    self::$db = null;
                }
                if (!$ended || !$reused || $e->getCode() === MysqlConnection::LATE_REPLY) {
                    throw new LockException("cannot use MySQL server {$target->describe()}: " . MysqlConnection::describe($e));
                }
                // Stale: dropped while idle. Once more, on a new connection.
                $reused = false;
            }
        }
    }

    /** @return list<string> */
    private static function create(string $pace, string $tags): array
    {
        return [
            "CREATE TABLE IF NOT EXISTS $pace (grp CHAR(40) CHARACTER SET ascii NOT NULL PRIMARY KEY, "
            . 'last_slot DATETIME(6) NOT NULL, blocked_until DATETIME(6) NOT NULL, KEY by_slot (last_slot)'
            . ') ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin',
            "CREATE TABLE IF NOT EXISTS $tags (grp CHAR(40) CHARACTER SET ascii NOT NULL, "
            . 'href_sha1 CHAR(40) CHARACTER SET ascii NOT NULL, href VARCHAR(1024) NOT NULL, name VARCHAR(1024) NOT NULL, '
            . 'learned DATETIME(6) NOT NULL, expires DATETIME(6) NOT NULL, '
            . 'PRIMARY KEY (grp, href_sha1), KEY by_age (grp, learned), KEY by_expiry (expires)'
            . ') ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin',
        ];
    }

    /**
     * $sql, with the server told to end it by $giveUp too (MariaDB's max_statement_time; MySQL's
     * MAX_EXECUTION_TIME hint, SELECT only), and its reply waited for until then at most.
     *
     * @throws \mysqli_sql_exception code MysqlConnection::LATE_REPLY when no reply came in time
     */
    private static function query(\mysqli $db, string $sql, float $giveUp): \mysqli_result|bool
    {
        $left = $giveUp - Clock::now();
        if ($left <= 0) {
            throw new \mysqli_sql_exception(self::NO_TIME_LEFT, MysqlConnection::LATE_REPLY);
        }
        $seconds = max($left, 0.001);
        if (self::$mariadb) {
            $sql = sprintf('SET STATEMENT max_statement_time = %.3F FOR %s', $seconds, $sql);
        } elseif (str_starts_with($sql, 'SELECT ')) {
            $sql = sprintf('SELECT /*+ MAX_EXECUTION_TIME(%d) */ %s', (int) ceil($seconds * 1000), substr($sql, 7));
        }
        $db->query($sql, MYSQLI_ASYNC);
        [$ready, $errors, $rejected] = [[$db], [$db], [$db]];
        if (!mysqli_poll($ready, $errors, $rejected, (int) $left, (int) (fmod($left, 1.0) * 1e6))) {
            throw new \mysqli_sql_exception(sprintf("the server did not answer within %.3f s (the call's deadline, or joinblock.mysql_connect_timeout)", $left), MysqlConnection::LATE_REPLY);
        }
        return $db->reap_async_query();
    }

    /** A text exactly as its bytes, whatever the quoting rules or the server's charset. */
    private static function text(string $text): string
    {
        return "CONVERT(X'" . bin2hex($text) . "' USING utf8mb4)";
    }

    /** A pace row's time as a writer could have left it, else NULL (as site_state.rs sane_time). */
    private static function saneTime(string $column, int $aheadMicros): string
    {
        return "IF($column BETWEEN '1970-01-02' AND " . self::NOW . " + INTERVAL $aheadMicros MICROSECOND, $column, NULL)";
    }

    private static function micros(float $seconds): int
    {
        return (int) (min(max($seconds, 0.0), 1e12) * 1e6);
    }

    private static function badRow(string $table, string $fault): void
    {
        self::$badRows++;
        self::$lastBadRow = "a row of $table $fault";
    }

    /** Why this call stopped using the site-wide store, if it did: for its exception. */
    public function siteFailure(): ?string
    {
        return $this->siteFailure;
    }

    /** The result of $work(connection, giveUp) on the server, or null when the files are to answer. */
    private function onSite(callable $work): mixed
    {
        if ($this->site === null || $this->siteFailure !== null) {
            return null;
        }
        try {
            return [self::run($this->site, $this->giveUp, $work)];
        } catch (LockException $e) {
            $text = "site-wide shared state: {$e->getMessage()}; the host's files were used instead";
            self::$fallbacks++;
            self::$warnings = array_slice([...array_values(array_diff(self::$warnings, [$text])), $text], -8);
            $this->siteFailure = $text;
            return null;
        }
    }

    /** As SharedStore::reserve(): the slot in this host's Unix seconds (one UPDATE, as site_state.rs reserve). */
    public function reserve(float $interval, float $latest): array|false|null
    {
        $step = self::micros($interval);
        [$pace] = $this->site[2] ?? [null];
        $taken = $this->onSite(function (\mysqli $db, float $giveUp) use ($step, $interval, $latest, $pace): ?array {
            $maxWait = self::micros($latest - microtime(true));
            // Taken when wait <= this: within one interval and before the deadline.
            $takeLimit = min($step, $maxWait - 1);
            $now = self::NOW;
            $last = self::saneTime('last_slot', max($step, self::MAX_SLOT_AHEAD_MICROS) + 1_000_000);
            $blocked = self::saneTime('blocked_until', (self::MAX_BLOCK_SECONDS + 1) * 1_000_000);
            $bad = "($last IS NULL OR $blocked IS NULL)";
            $last = "LEAST(COALESCE($last, '1970-01-02'), $now + INTERVAL $step MICROSECOND)";
            $blocked = "LEAST(COALESCE($blocked, '1970-01-02'), $now + INTERVAL " . self::MAX_BLOCK_SECONDS . ' SECOND)';
            $next = "GREATEST($now, $last + INTERVAL $step MICROSECOND, $blocked)";
            $take = "UPDATE $pace SET last_slot = IF(LAST_INSERT_ID(2 * (1 + TIMESTAMPDIFF(MICROSECOND, $now, $next)) + $bad) <= "
                . (2 * (1 + $takeLimit) + 1) . ", $next, $last), blocked_until = $blocked WHERE grp = '{$this->hash}'";
            $reported = 0;
            foreach ([true, false] as $first) {
                self::query($db, $take, $giveUp);
                $reported = (int) $db->insert_id;
                if ($reported > 0 || !$first) {
                    break;
                }
                // The group's first request on this server.
                self::query($db, "INSERT IGNORE INTO $pace (grp, last_slot, blocked_until) VALUES ('{$this->hash}', '1970-01-02', '1970-01-02')", $giveUp);
            }
            if ($reported < 2) {
                throw new \mysqli_sql_exception('the pace row of the group could not be made');
            }
            if ($reported % 2 === 1) {
                self::badRow($pace, 'held times no writer could have left (a zero date, or past what a slot or Retry-After allows); rewritten');
            }
            $wait = intdiv($reported, 2) - 1;
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

    /**
     * As site_state.rs tidy_when_due(), for the end of a call: when this process (under
     * PHP-FPM: this request) has not tried for a minute and the tidy row says nobody has,
     * removes expired tag rows of any group and pace rows idle for a day, by key. Its failure
     * costs the call nothing and is kept for joinblock_status().
     */
    public function tidyWhenDue(): void
    {
        if ($this->site === null || $this->siteFailure !== null || Clock::now() < self::$nextTidy) {
            return;
        }
        self::$nextTidy = Clock::now() + self::TIDY_EVERY;
        [$pace, $tags] = $this->site[2];
        try {
            self::run($this->site, min($this->giveUp, Clock::now() + self::TIDY_BUDGET), static fn (\mysqli $db, float $giveUp) => self::tidy($db, $giveUp, $pace, $tags));
            self::$tidyFailure = null;
        } catch (LockException $e) {
            self::$tidyFailure = $e->getMessage();
        }
    }

    /** One tidy, if it is this process's turn (as site_state.rs tidy()). */
    private static function tidy(\mysqli $db, float $giveUp, string $pace, string $tags): void
    {
        $now = self::NOW;
        $recent = "$now - INTERVAL " . self::TIDY_EVERY . " SECOND AND $now + INTERVAL 1 SECOND";
        $row = self::query($db, "SELECT last_slot BETWEEN $recent FROM $pace WHERE grp = '" . self::TIDY_ROW . "'", $giveUp)->fetch_row();
        if ($row !== null && $row[0] === '1') {
            return;
        }
        self::query($db, $row === null
            ? "INSERT IGNORE INTO $pace (grp, last_slot, blocked_until) VALUES ('" . self::TIDY_ROW . "', $now, '1970-01-02')"
            // Due, or a time no tidy could have left (a zero date, a clock stepped back): claimed.
            : "UPDATE $pace SET last_slot = $now WHERE grp = '" . self::TIDY_ROW . "' AND NOT COALESCE(last_slot BETWEEN $recent, FALSE)", $giveUp);
        if ($db->affected_rows !== 1) {
            return;
        }
        $byGroup = [];
        foreach (self::query($db, "SELECT grp, href_sha1 FROM $tags WHERE expires < $now LIMIT " . self::TIDY_TAG_ROWS, $giveUp)->fetch_all(MYSQLI_NUM) as [$group, $key]) {
            if (self::isSha1($group) && self::isSha1($key)) {
                $byGroup[$group][] = "'$key'";
            }
        }
        foreach ($byGroup as $group => $keys) {
            foreach (array_chunk($keys, self::TIDY_KEYS_PER_DELETE) as $chunk) {
                self::query($db, "DELETE FROM $tags WHERE grp = '$group' AND href_sha1 IN (" . implode(', ', $chunk) . ") AND expires < $now", $giveUp);
            }
        }
        $idle = "last_slot < $now - INTERVAL " . self::IDLE_PACE_ROW . " SECOND AND blocked_until < $now";
        $groups = [];
        foreach (self::query($db, "SELECT grp FROM $pace WHERE $idle LIMIT " . self::TIDY_PACE_ROWS, $giveUp)->fetch_all(MYSQLI_NUM) as [$group]) {
            if (self::isSha1($group)) {
                $groups[] = "'$group'";
            }
        }
        foreach (array_chunk($groups, self::TIDY_KEYS_PER_DELETE) as $chunk) {
            self::query($db, "DELETE FROM $pace WHERE grp IN (" . implode(', ', $chunk) . ") AND $idle", $giveUp);
        }
    }

    /** A key of ours: only such text from a row goes back into SQL (as site_state.rs sha1_cell()). */
    private static function isSha1(mixed $text): bool
    {
        return \is_string($text) && preg_match('/^[0-9a-fA-F]{40}$/D', $text) === 1;
    }

    /** As SharedStore::pushBack(): $until in this host's Unix seconds. */
    public function pushBack(float $until): bool
    {
        $wait = self::micros(min($until - microtime(true), self::MAX_BLOCK_SECONDS));
        [$pace] = $this->site[2] ?? [null];
        $push = function (\mysqli $db, float $giveUp) use ($wait, $pace): bool {
            $blocked = self::saneTime('blocked_until', (self::MAX_BLOCK_SECONDS + 1) * 1_000_000);
            self::query($db, "UPDATE $pace SET blocked_until = GREATEST(LEAST(COALESCE($blocked, '1970-01-02'), " . self::NOW . ' + INTERVAL '
                . self::MAX_BLOCK_SECONDS . ' SECOND), ' . self::NOW . " + INTERVAL $wait MICROSECOND) WHERE grp = '{$this->hash}'", $giveUp);
            return true;
        };
        if ($this->onSite($push) !== null) {
            return true;
        }
        return $this->files?->pushBack($until) ?? false;
    }

    /** As SharedStore::readTags(): times in this host's Unix seconds; rows that fail usableTag() are skipped and counted. */
    public function readTags(): array
    {
        [, $tags] = $this->site[2] ?? [null, null];
        $rows = $this->onSite(fn (\mysqli $db, float $giveUp) => self::query($db, 'SELECT href_sha1, href, name, TIMESTAMPDIFF(MICROSECOND, learned, '
            . self::NOW . "), TIMESTAMPDIFF(MICROSECOND, learned, expires) FROM $tags WHERE grp = '{$this->hash}' AND (expires > " . self::NOW
            . " OR expires < '1970-01-02') ORDER BY learned DESC LIMIT " . self::MAX_ENTRIES, $giveUp)->fetch_all(MYSQLI_NUM));
        if ($rows === null) {
            return $this->files?->readTags() ?? [];
        }
        $now = microtime(true);
        $entries = [];
        foreach ($rows[0] as $row) {
            $fault = self::usableTag($row);
            if ($fault !== null) {
                self::badRow($tags, $fault);
                continue;
            }
            [, $href, $name, $ago, $life] = $row;
            $learned = $now - max((int) $ago, 0) / 1e6;
            $entries[] = [$href, $name, $learned, $learned + (int) $life / 1e6];
        }
        return $entries;
    }

    /** What is wrong with a tag row [href_sha1, href, name, age µs, lifetime µs], or null (as site_state.rs usable_tag). */
    private static function usableTag(array $row): ?string
    {
        [$sha, $href, $name, $ago, $life] = $row + [null, null, null, null, null];
        if (!\is_string($sha) || !\is_string($href) || !\is_string($name) || !mb_check_encoding($href, 'UTF-8') || !mb_check_encoding($name, 'UTF-8')) {
            return 'has a NULL or a text that is not UTF-8';
        }
        if ($href === '' || $name === '' || \strlen($href) + \strlen($name) > self::MAX_ENTRY_BYTES) {
            return 'has an empty href or name, or both longer than the map keeps';
        }
        if (sha1($href) !== $sha) {
            return 'has an href that does not match its href_sha1 (edited by hand?)';
        }
        if ($ago === null || $life === null) {
            return 'has a zero or NULL date';
        }
        if ((int) $ago < -self::FUTURE_TOLERANCE * 1_000_000) {
            return "was learned in the future, by the server's clock";
        }
        if ((int) $life <= 0 || (int) $life > self::MAX_LIFETIME * 1_000_000) {
            return 'lives longer than any entry may (or not at all)';
        }
        return null;
    }

    /** As SharedStore::publish(); also deletes the group's rows that fail the readers' test. */
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
        [, $tags] = $this->site[2] ?? [null, null];
        $published = $this->onSite(function (\mysqli $db, float $giveUp) use ($rows, $now, $tags): bool {
            $nowSql = self::NOW;
            foreach (array_chunk($rows, self::ROWS_PER_INSERT, true) as $chunk) {
                $values = [];
                foreach ($chunk as $sha => [$href, $name, $learnedAt, $expires]) {
                    [$ago, $left] = [self::micros($now - $learnedAt), self::micros(min($expires, $learnedAt + self::MAX_LIFETIME) - $now)];
                    $values[] = "('{$this->hash}', '$sha', " . self::text($href) . ', ' . self::text($name)
                        . ", $nowSql - INTERVAL $ago MICROSECOND, $nowSql + INTERVAL $left MICROSECOND)";
                }
                self::query($db, "INSERT INTO $tags (grp, href_sha1, href, name, learned, expires) VALUES " . implode(', ', $values)
                    . ' ON DUPLICATE KEY UPDATE href_sha1 = VALUES(href_sha1), href = VALUES(href), name = VALUES(name), learned = VALUES(learned), expires = VALUES(expires)', $giveUp);
            }
            // The expired, and whatever another tool left that fails the readers' test.
            self::query($db, "DELETE FROM $tags WHERE grp = '{$this->hash}' AND NOT COALESCE(expires > $nowSql AND learned BETWEEN '1970-01-02' AND $nowSql + INTERVAL "
                . self::FUTURE_TOLERANCE . ' SECOND AND expires <= learned + INTERVAL ' . self::MAX_LIFETIME
                . ' SECOND AND expires > learned AND CAST(href_sha1 AS BINARY) = CAST(SHA1(href) AS BINARY) AND LENGTH(href) > 0 AND LENGTH(name) > 0 AND LENGTH(href) + LENGTH(name) <= '
                . self::MAX_ENTRY_BYTES . ', FALSE)', $giveUp);
            $count = (int) self::query($db, "SELECT COUNT(*) FROM $tags WHERE grp = '{$this->hash}'", $giveUp)->fetch_row()[0];
            if ($count > self::MAX_ENTRIES) {
                self::query($db, "DELETE FROM $tags WHERE grp = '{$this->hash}' ORDER BY learned, href_sha1 LIMIT " . ($count - self::MAX_ENTRIES), $giveUp);
            }
            return true;
        });
        if ($published === null) {
            $this->files?->publish($learned);
        }
    }
}
