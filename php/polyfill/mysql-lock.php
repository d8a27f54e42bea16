<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// The mysql backend: the server, this process's connection, and GET_LOCK.

declare(strict_types=1);

namespace JoinBlock\Polyfill;

use JoinBlock\LockException;
use JoinBlock\LockTimeoutException;

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

    /**
     * Our code for a reply that did not come within its limit (mysqlnd's own end at 2070): the
     * connection is spent, and the statement is not asked again, which would double the wait.
     */
    public const LATE_REPLY = 2999;

    /** As src/lock/mysql.rs SESSION_SETTINGS: the tables' charset, our sql_mode, row-lock and table-lock waits cut at 1 s. */
    private const SESSION_SETTINGS = "SET NAMES utf8mb4 COLLATE utf8mb4_bin, SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', "
        . 'SESSION innodb_lock_wait_timeout = 1, SESSION lock_wait_timeout = 1';

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
                    'cannot take a MySQL lock on %s while this thread holds %d %s on %s: moving to another'
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
                // A reply that did not come in time is not asked for again: that would double the wait.
                if (!($ended && $reused) || $e->getCode() === MysqlConnection::LATE_REPLY) {
                    throw new LockException("cannot use MySQL server {$target->describe()}: " . self::describe($e));
                }
                // Stale: dropped while idle. Once more, on a new connection.
                $reused = false;
            }
        }
    }

    /**
     * Runs $work(connection) on the connection of $generation; null once it is gone.
     *
     * @throws LockException the server refused $work, and the connection lives on
     */
    public static function withLockConnection(int $generation, float $bound, callable $work): mixed
    {
        if (!self::isCurrent($generation)) {
            return null;
        }
        try {
            return self::quietly(static fn () => $work(self::$db));
        } catch (\mysqli_sql_exception $e) {
            if (self::endsConnection($e)) {
                self::$db = null;
                return null;
            }
            throw new LockException(self::describe($e));
        }
    }

    private static function isCurrent(int $generation): bool
    {
        return self::$db !== null && self::$pid === getmypid() && self::$generation === $generation;
    }

    /**
     * Closes the connection of $generation if it is still this process's (the server then
     * frees every lock it held); how many locks it still held, or null when it was gone.
     */
    public static function closeLockConnection(int $generation): ?int
    {
        if (!self::isCurrent($generation)) {
            return null;
        }
        self::$db->close();
        self::$db = null;
        return self::$locks;
    }

    public static function counted(int $generation, int $change): void
    {
        if ($generation === self::$generation) {
            self::$locks = max(0, self::$locks + $change);
        }
    }

    /** The first column of the first row of $sql, as row() waits for it. */
    public static function value(\mysqli $db, string $sql, float $wait, float $bound): ?string
    {
        return (self::row($db, $sql, $wait, $bound) ?? [null])[0];
    }

    /**
     * The first row of $sql (null if none), waiting for the reply at most $wait (what the
     * server was asked to wait) plus $bound.
     */
    public static function row(\mysqli $db, string $sql, float $wait, float $bound): ?array
    {
        $db->query($sql, MYSQLI_ASYNC);
        $limit = $wait + $bound;
        [$ready, $errors, $rejected] = [[$db], [$db], [$db]];
        if (!mysqli_poll($ready, $errors, $rejected, (int) $limit, (int) (fmod($limit, 1.0) * 1e6))) {
            throw new \mysqli_sql_exception(sprintf(
                'the server did not answer within %.3f s (the lock wait asked for, plus joinblock.mysql_connect_timeout)',
                $limit
            ), self::LATE_REPLY);
        }
        return $db->reap_async_query()->fetch_row();
    }

    private static function open(MysqlTarget $target, float $bound): \mysqli
    {
        [$db] = self::openChecked($target, $bound);
        self::$target = $target;
        self::$pid = getmypid();
        self::$generation++;
        self::$locks = 0;
        return $db;
    }

    /**
     * A new connection to $target within $bound, checked (no Galera node, no read-only
     * server) and set to utf8mb4 with a known sql_mode before anything is stored or read, as
     * the extension's (src/lock/mysql.rs SESSION_SETTINGS). Also the site-wide shared state's.
     *
     * @return array{\mysqli, bool} the connection, and whether the server is MariaDB
     * @throws LockException
     */
    public static function openChecked(MysqlTarget $target, float $bound): array
    {
        $server = $target->describe();
        if (!class_exists(\mysqli::class)) {
            throw new LockException("cannot connect to MySQL server $server: PHP's mysqli extension is not loaded");
        }
        // mysqli counts both in whole seconds.
        $seconds = (int) ceil($bound);
        $started = Clock::now();
        try {
            [$db, $wsrepOn, $readOnly, $mariadb] = self::quietly(static function () use ($target, $seconds): array {
                $db = self::connect($target, $seconds);
                try {
                    [$wsrepOn, $readOnly] = $db->query('SELECT @@global.wsrep_on, @@global.read_only')->fetch_row();
                    $mariadb = true;
                } catch (\mysqli_sql_exception $e) {
                    if (self::endsConnection($e)) {
                        throw $e;
                    }
                    // MySQL has no wsrep_on.
                    [$wsrepOn, $readOnly, $mariadb] = [null, $db->query('SELECT @@global.read_only')->fetch_row()[0], false];
                }
                $db->set_charset('utf8mb4');
                $db->query(self::SESSION_SETTINGS);
                return [$db, $wsrepOn, $readOnly, $mariadb];
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
        return [$db, $mariadb];
    }

    /**
     * Connects within $seconds. A Unix socket whose listen backlog is full refuses a
     * connection at once (EAGAIN), where TCP would wait for room: waits for room the same way,
     * within the bound, so a burst of connections is not refused and a wedged server is
     * reported as one that did not answer.
     */
    private static function connect(MysqlTarget $target, int $seconds): \mysqli
    {
        $giveUp = Clock::now() + $seconds;
        $backoff = new Backoff(0.01, 0.2);
        while (true) {
            $db = mysqli_init();
            $db->options(MYSQLI_OPT_CONNECT_TIMEOUT, $seconds);
            $db->options(MYSQLI_OPT_READ_TIMEOUT, $seconds);
            // mysqli takes a socket only with host localhost.
            $host = $target->socket === null ? $target->host : 'localhost';
            try {
                $db->real_connect($host, $target->user, $target->password, $target->database, $target->port, $target->socket);
                return $db;
            } catch (\mysqli_sql_exception $e) {
                $left = $giveUp - Clock::now();
                if (Os::errno($e->getMessage()) !== 11 || $left <= 0) {
                    throw $e;
                }
                Clock::sleep($backoff->next($left));
            }
        }
    }

    /**
     * Runs $call with mysqli throwing its errors, whatever report mode the site chose, and
     * without the warnings mysqlnd adds on a dead connection: the exception says it all. Other
     * warnings (a mistake in our code) go on to the handler before this one.
     */
    public static function quietly(callable $call): mixed
    {
        $driver = new \mysqli_driver();
        $mode = $driver->report_mode;
        $driver->report_mode = MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT;
        $before = null;
        $before = set_error_handler(static function (int $type, string $message, string $file = '', int $line = 0) use (&$before): bool {
            return Os::failedCall($message) || ($before !== null && (bool) $before($type, $message, $file, $line));
        }, E_WARNING | E_NOTICE);
        try {
            return $call();
        } finally {
            restore_error_handler();
            $driver->report_mode = $mode;
        }
    }

    public static function endsConnection(\mysqli_sql_exception $e): bool
    {
        return self::isClientError($e) || \in_array($e->getCode(), self::CONNECTION_ENDED, true);
    }

    /** Client-side errors (2000-2999): the connection failed or is gone. */
    private static function isClientError(\mysqli_sql_exception $e): bool
    {
        return $e->getCode() >= 2000 && $e->getCode() < 3000;
    }

    /** The server's words ("ERROR 1045 (28000): Access denied …"), or the OS's. */
    public static function describe(\mysqli_sql_exception $e): string
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
        Claims::take($id) || throw Claims::refusal($lock);
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
                // One query, one round trip: README's bound counts one reply after the last wait.
                $who = "SELECT l.id, CONCAT(p.USER, '@', p.HOST) FROM (SELECT IS_USED_LOCK('$name') AS id) AS l LEFT JOIN information_schema.PROCESSLIST AS p ON p.ID = l.id";
                $row = MysqlConnection::row($db, $who, 0.0, $bound);
                [$id, $account] = $row ?? [null, null];
                if ($id === null) {
                    return null;
                }
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
        try {
            return !$this->released && $this->pid === getmypid()
                && $this->onItsConnection("SELECT IS_USED_LOCK('{$this->name}') = CONNECTION_ID()");
        } catch (LockException) {
            return false;
        }
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
        $lock = "MySQL lock {$this->name} on {$this->target->describe()}";
        try {
            $released = $this->onItsConnection("SELECT RELEASE_LOCK('{$this->name}')");
        } catch (LockException $e) {
            // Refused (KILL QUERY, out of memory, a server limit) on a connection that lives
            // on and so still holds the lock: ending it is the one way left to free it.
            $others = MysqlConnection::closeLockConnection($this->generation);
            if ($others !== null) {
                throw new LockException("the server refused to release $lock ({$e->getMessage()}); its connection was closed instead, which frees it"
                    . match ($others) { 0 => '', 1 => ', and the other lock this process held on that connection', default => ", and the $others other locks this process held on that connection" });
            }
            $released = false;
        }
        if (!$released) {
            throw new LockException("$lock was lost with its database connection; another request may hold it now");
        }
    }

    /**
     * Whether $sql answers 1 on the connection that took the lock (false once it is gone).
     *
     * @throws LockException the server refused $sql
     */
    private function onItsConnection(string $sql): bool
    {
        return MysqlConnection::withLockConnection($this->generation, $this->bound, fn (\mysqli $db): bool =>
            MysqlConnection::value($db, $sql, 0.0, $this->bound) === '1') ?? false;
    }
}
