<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use JoinBlock\LockException;
use JoinBlock\LockTimeoutException;

/**
 * The mysql lock backend against a real MariaDB: locks that hold across "hosts" (processes
 * with different lock directories), die with their holder, survive a server restart cleanly,
 * and fail clearly.
 */
final class MysqlLockTest extends JoinBlockTestCase
{
    private static MariaDbServer $db;

    public static function setUpBeforeClass(): void
    {
        self::$db = MariaDbServer::startPrivate();
    }

    public static function tearDownAfterClass(): void
    {
        self::$db->destroy();
    }

    protected function setUp(): void
    {
        joinblock_configure(['lock_backend' => 'mysql', 'mysql_url' => self::$db->url()]);
    }

    protected function tearDown(): void
    {
        joinblock_configure([]);
        parent::tearDown();
    }

    private static function lockName(string $key): string
    {
        return 'join-lock-' . sha1(strtolower(trim($key)));
    }

    /** A worker process that holds `$key` for `$seconds`, configured as WordPress would. */
    private static function startHolder(string $key, float $seconds): array
    {
        $script = sprintf(
            'joinblock_configure(%s); $l = joinblock_acquire_lock(%s); echo "HELD\n"; usleep(%d); $l->release();',
            var_export(['lock_backend' => 'mysql'] + self::$db->wordpressSettings(), true),
            var_export($key, true),
            (int) ($seconds * 1e6)
        );
        $child = self::startPhp(self::phpCode($script));
        self::assertSame("HELD\n", fgets($child['pipes'][1]));
        return $child;
    }

    public function testLockReleaseAndNames(): void
    {
        $lock = joinblock_acquire_lock(' Member@Example.org ');
        $this->assertSame(self::lockName('member@example.org'), $lock->path());
        $this->assertTrue($lock->isHeld());
        $this->assertSame("1\n", self::$db->sql("SELECT IS_USED_LOCK('" . $lock->path() . "') IS NOT NULL"));
        self::assertThrows(
            LockException::class,
            '~^MySQL lock join-lock-[0-9a-f]{40} on joinblock@127\.0\.0\.1:\d+/wordpress is already held by this thread; release it~',
            fn () => joinblock_acquire_lock('member@example.org')
        );
        $lock->release();
        $this->assertFalse($lock->isHeld());
        $lock->release();
        $this->assertSame("0\n", self::$db->sql("SELECT IS_USED_LOCK('" . $lock->path() . "') IS NOT NULL"));
    }

    /** The integration guide passes `dir` whatever the backend: configuration decides, `dir` waits for files. */
    public function testDirIsIgnoredUnlessTheCallItselfAsksForMysql(): void
    {
        $dir = $this->scratchDir();
        $lock = joinblock_acquire_lock('dir@example.org', ['dir' => $dir, 'timeout' => 30]);
        $this->assertSame(self::lockName('dir@example.org'), $lock->path(), 'a GET_LOCK name, not a file in dir');
        $this->assertSame([], array_values(array_diff(scandir($dir), ['.', '..'])), 'no lock file');
        $lock->release();
        self::assertThrows(
            \ValueError::class,
            '~^joinblock_acquire_lock\(\): Argument #2 \(\$options\) option "dir" applies to the file backend only, and this call asks for mysql$~',
            fn () => joinblock_acquire_lock('k', ['dir' => $dir, 'backend' => 'mysql'])
        );
        // Still checked as a path, whatever the backend.
        self::assertThrows(\ValueError::class, '~option "dir" must not be empty~', fn () => joinblock_acquire_lock('k', ['dir' => '']));
    }

    public function testBackendOptionAndIniChooseTheBackend(): void
    {
        $file = joinblock_acquire_lock('choose@example.org', ['backend' => 'file', 'dir' => $this->scratchDir()]);
        $this->assertStringStartsWith('/', $file->path());
        $file->release();
        self::assertThrows(\ValueError::class, '~option "backend" is "redis"; expected "file" or "mysql"~', fn () => joinblock_acquire_lock('k', ['backend' => 'redis']));

        // INI only, as a site admin would set it in joinblock.ini (here with -d).
        $ini = ['joinblock.lock_backend' => 'mysql', 'joinblock.mysql_url' => self::$db->url()];
        $this->assertSame(self::lockName('ini@example.org'), self::runPhpOk(self::phpCode('echo joinblock_acquire_lock("ini@example.org")->path();', $ini)));
    }

    public function testTimeoutsBehaveAsInTheFileBackend(): void
    {
        $holder = self::startHolder('busy@example.org', 1.5);
        $started = microtime(true);
        self::assertThrows(
            LockTimeoutException::class,
            '~^timed out after 0\.3\d\d s waiting for MySQL lock ' . self::lockName('busy@example.org') . ' on joinblock@127\.0\.0\.1:\d+/wordpress, held by MySQL connection \d+ \(joinblock@127\.0\.0\.1:\d+\)$~',
            fn () => joinblock_acquire_lock('busy@example.org', ['timeout' => 0.3])
        );
        $this->assertLessThan(1.0, microtime(true) - $started);
        self::assertThrows(LockTimeoutException::class, '~^timed out after 0\.0\d\d s~', fn () => joinblock_acquire_lock('busy@example.org', ['timeout' => 0]));
        // No timeout: waits for the holder.
        $lock = joinblock_acquire_lock('busy@example.org');
        $this->assertGreaterThan(0.8, microtime(true) - $started);
        $lock->release();
        $this->assertSame(0, self::finish($holder)['exit']);
    }

    /**
     * A timed-out call names its holder with one statement, one round trip, the one reply
     * README's time bound counts after the last GET_LOCK (it took two before: IS_USED_LOCK,
     * then PROCESSLIST). Counted in the server's general log.
     */
    public function testATimeoutNamesItsHolderInOneStatement(): void
    {
        $holder = self::startHolder('counted@example.org', 2);
        self::$db->sql("SET GLOBAL log_output = 'TABLE'; TRUNCATE mysql.general_log; SET GLOBAL general_log = 1");
        try {
            self::assertThrows(
                LockTimeoutException::class,
                '~, held by MySQL connection \d+ \(joinblock@127\.0\.0\.1:\d+\)$~',
                fn () => joinblock_acquire_lock('counted@example.org', ['timeout' => 0])
            );
            $statements = self::$db->sql("SELECT command_type, argument FROM mysql.general_log WHERE command_type IN ('Query', 'Prepare', 'Execute')"
                . " AND (argument LIKE '%IS\\_USED\\_LOCK%' OR argument LIKE '%PROCESSLIST%') AND argument NOT LIKE '%general\\_log%'");
        } finally {
            self::$db->sql('SET GLOBAL general_log = 0; TRUNCATE mysql.general_log');
        }
        $this->assertSame(1, substr_count($statements, "\n"), "one statement names the holder:\n$statements");
        $this->assertSame(0, self::finish($holder)['exit']);
    }

    public function testHolderKilledFreesTheLockWithinASecond(): void
    {
        $holder = self::startHolder('killed@example.org', 60);
        posix_kill(proc_get_status($holder['proc'])['pid'], SIGKILL);
        self::finish($holder);
        $started = microtime(true);
        $lock = joinblock_acquire_lock('killed@example.org', ['timeout' => 5]);
        $this->assertLessThan(1.0, microtime(true) - $started);
        $lock->release();
    }

    public function testServerRestartWhileHeld(): void
    {
        $lock = joinblock_acquire_lock('restart@example.org');
        self::$db->restart();
        $started = microtime(true);
        $this->assertFalse($lock->isHeld(), 'the connection that held it is gone');
        self::assertThrows(
            LockException::class,
            '~^MySQL lock ' . self::lockName('restart@example.org') . ' on joinblock@127\.0\.0\.1:\d+/wordpress was lost with its database connection; another request may hold it now$~',
            fn () => $lock->release()
        );
        $next = joinblock_acquire_lock('restart@example.org', ['timeout' => 5]);
        $this->assertTrue($next->isHeld(), 'a new connection took it');
        $next->release();
        $this->assertLessThan(10, microtime(true) - $started, 'nothing hung');
    }

    /**
     * A release the server refuses leaves the lock with a connection that lives on: that
     * connection is closed, so the server frees the lock at once, and the exception says so;
     * the worker's next acquire is a fresh one, not let in again by GET_LOCK's re-entrance.
     * The refusal here: no prepared statement allowed (the extension prepares a connection's
     * first RELEASE_LOCK; the polyfill's text queries are not refused by it, so it releases).
     */
    public function testARefusedReleaseClosesTheConnectionThatHeldTheLock(): void
    {
        $dir = $this->scratchDir();
        $script = sprintf(<<<'PHP'
            $wait = function (string $file): void { $d = microtime(true) + 60; while (!file_exists($file) && microtime(true) < $d) { usleep(10000); } };
            joinblock_configure(%s);
            $lock = joinblock_acquire_lock('refused@example.org');
            echo "HELD\n";
            $wait(%s);
            try { $lock->release(); echo "released\n"; } catch (Throwable $e) { echo get_class($e), ': ', $e->getMessage(), "\n"; }
            $wait(%s);
            try { joinblock_acquire_lock('refused@example.org', ['timeout' => 0.5]); echo "acquired again\n"; } catch (Throwable $e) { echo get_class($e), "\n"; }
            PHP, var_export(['lock_backend' => 'mysql'] + self::$db->wordpressSettings(), true), var_export("$dir/release", true), var_export("$dir/again", true));
        $worker = self::startPhp(self::phpCode($script));
        $this->assertSame("HELD\n", fgets($worker['pipes'][1]));
        $limit = trim(self::$db->sql('SELECT @@global.max_prepared_stmt_count'));
        self::$db->sql('SET GLOBAL max_prepared_stmt_count = 0');
        try {
            touch("$dir/release");
            $released = fgets($worker['pipes'][1]);
        } finally {
            self::$db->sql("SET GLOBAL max_prepared_stmt_count = $limit");
        }
        if (self::implementation() === 'extension') {
            $this->assertMatchesRegularExpression('~^JoinBlock\\\\LockException: the server refused to release MySQL lock ' . self::lockName('refused@example.org')
                . ' on joinblock@127\.0\.0\.1:\d+/wordpress \(ERROR 1461 \(42000\): Can\'t create more than max_prepared_stmt_count statements \(current value: 0\)\);'
                . ' its connection was closed instead, which frees it\n$~', $released);
        } else {
            $this->assertSame("released\n", $released);
        }
        $other = joinblock_acquire_lock('refused@example.org', ['timeout' => 2]);
        touch("$dir/again");
        $result = self::finish($worker);
        $other->release();
        $this->assertSame('', $result['err']);
        $this->assertSame("JoinBlock\\LockTimeoutException\n", $result['out'], 'the worker is not let in again while another holds the lock');
    }

    public function testForkedChildDoesNotReleaseTheParentsLock(): void
    {
        self::extensionOnly('mysqli ends its connection when a process holding it ends, so a forked child\'s exit ends the parent\'s MySQL session');
        $script = sprintf(<<<'PHP'
            joinblock_configure(%s);
            $lock = joinblock_acquire_lock('fork@example.org');
            $pid = pcntl_fork();
            if ($pid === 0) {
                $held = $lock->isHeld();
                unset($lock);
                exit($held ? 3 : 0);
            }
            pcntl_waitpid($pid, $status);
            echo pcntl_wexitstatus($status), ' ', var_export($lock->isHeld(), true), "\n";
            $lock->release();
            PHP, var_export(['lock_backend' => 'mysql', 'mysql_url' => self::$db->url()], true));
        $child = self::startPhp(self::phpCode($script));
        $result = self::finish($child);
        $this->assertSame("0 true\n", $result['out'], $result['err']);
    }

    /** @return array<string, array{array, string}> */
    public static function badServers(): array
    {
        return [
            'wrong password' => [['db_password' => 'not-the-password'], '~^cannot connect to MySQL server joinblock@127\.0\.0\.1:\d+/wordpress: ERROR 1045 \(28000\): Access denied for user \'joinblock\'~'],
            'nothing listening' => [['db_host' => '127.0.0.1:1'], '~^cannot connect to MySQL server joinblock@127\.0\.0\.1:1/wordpress: .*Connection refused~'],
            'missing socket' => [['db_host' => 'localhost:/nonexistent/mysqld.sock'], '~^cannot connect to MySQL server joinblock@localhost:/nonexistent/mysqld\.sock/wordpress: .*No such file or directory~'],
            'unknown database' => [['db_name' => 'nosuchdb'], '~ERROR 1044 \(42000\): Access denied for user \'joinblock\'@.* to database \'nosuchdb\'~'],
        ];
    }

    /** @dataProvider badServers */
    #[DataProvider('badServers')]
    public function testBadServersAreClearExceptionsWithoutThePassword(array $override, string $pattern): void
    {
        joinblock_configure(['lock_backend' => 'mysql'] + $override + self::$db->wordpressSettings());
        $e = self::assertThrows(LockException::class, $pattern, fn () => joinblock_acquire_lock('k@example.org', ['timeout' => 1]));
        $this->assertStringNotContainsString(MariaDbServer::PASSWORD, $e->getMessage());
        $this->assertStringNotContainsString('not-the-password', $e->getMessage());
    }

    public function testReadOnlyServerIsRefused(): void
    {
        self::$db->sql('SET GLOBAL read_only = 1');
        try {
            // A fresh process, whose first connection sees the setting.
            $script = sprintf('joinblock_configure(%s); try { joinblock_acquire_lock("ro@example.org"); } catch (JoinBlock\LockException $e) { echo $e->getMessage(); }', var_export(['lock_backend' => 'mysql'] + self::$db->wordpressSettings(), true));
            $this->assertMatchesRegularExpression('~^refusing to lock on MySQL server joinblock@127\.0\.0\.1:\d+/wordpress: it is read-only, so a replica~', self::runPhpOk(self::phpCode($script)));
        } finally {
            self::$db->sql('SET GLOBAL read_only = 0');
        }
    }

    /** @return array<string, array{array, class-string, string}> */
    public static function badSettings(): array
    {
        return [
            'both url and db_*' => [['mysql_url' => 'mysql://u:p@h/db', 'db_host' => 'h'], \ValueError::class, '~^joinblock_configure\(\): Argument #1 \(\$settings\) option "mysql_url" and db_host/db_user/db_password/db_name exclude each other$~'],
            'db_host alone' => [['db_host' => 'h'], \ValueError::class, '~option "db_host" needs db_user and db_name with it~'],
            'bad port' => [['db_host' => 'h:99999', 'db_user' => 'u', 'db_name' => 'd'], \ValueError::class, '~option "db_host" has port "99999", not a number from 1 to 65535~'],
            'not a mysql url' => [['mysql_url' => 'postgres://u:secret@h/db'], \ValueError::class, '~option "mysql_url" has scheme "postgres"~'],
            'unknown backend' => [['lock_backend' => 'redis'], \ValueError::class, '~option "lock_backend" is "redis"~'],
            'unknown key' => [['DB_HOST' => 'h'], \ValueError::class, '~unknown option "DB_HOST"~'],
            'password not a string' => [['db_host' => 'h', 'db_user' => 'u', 'db_password' => 5, 'db_name' => 'd'], \TypeError::class, '~option "db_password" must be of type string, int given~'],
        ];
    }

    /** @dataProvider badSettings */
    #[DataProvider('badSettings')]
    public function testBadSettingsAreArgumentErrors(array $settings, string $class, string $pattern): void
    {
        $e = self::assertThrows($class, $pattern, fn () => joinblock_configure($settings));
        $this->assertStringNotContainsString('secret', $e->getMessage());
    }

    public function testMissingServerSettingIsALockException(): void
    {
        joinblock_configure(['lock_backend' => 'mysql']);
        self::assertThrows(LockException::class, '~^the mysql lock backend needs INI joinblock\.mysql_url or joinblock_configure\(\) with the database settings$~', fn () => joinblock_acquire_lock('k'));
    }

    public function testSettingsLastOneRequestAndPhpinfoHidesThePassword(): void
    {
        self::extensionOnly('its phpinfo() section and INI entries');
        ob_start();
        phpinfo(INFO_MODULES);
        $info = ob_get_clean();
        $this->assertStringContainsString('lock backend in effect => mysql', $info);
        $this->assertStringNotContainsString(rawurlencode(MariaDbServer::PASSWORD), $info);
        $this->assertStringNotContainsString(MariaDbServer::PASSWORD, $info);
        // A new request (process) starts from INI again.
        $this->assertSame('file', trim(self::runPhpOk(self::phpCode('echo ini_get("joinblock.lock_backend");'))));
    }

    /** @return array<string, array{string, string, 2?: list<string>}> */
    public static function backends(): array
    {
        return [
            'mysql: excludes across hosts' => ['mysql', 'none'],
            'file: does not (control)' => ['file', 'some'],
            'mysql: a host on the extension, one on the polyfill' => ['mysql', 'none', ['extension', 'polyfill']],
        ];
    }

    /**
     * Two "hosts": groups of processes with their own lock directories, one MariaDB. With the
     * mysql backend they exclude each other; with the file backend (the control) they cannot.
     *
     * @dataProvider backends
     * @param list<string>|null $implementations of host a and host b; null: the one under test
     */
    #[DataProvider('backends')]
    public function testTwoHostsOneDatabase(string $backend, string $expectedOverlaps, ?array $implementations = null): void
    {
        if ($implementations !== null && self::implementation() === 'polyfill') {
            self::markTestSkipped('mixes the extension and the polyfill: runs in the extension run');
        }
        $shared = $this->scratchDir();
        $counter = "$shared/counter";
        file_put_contents($counter, '0');
        $iterations = $backend === 'mysql' ? 1000 : 300;
        $barrier = $this->scratchDir();
        $children = [];
        foreach (['host-a', 'host-b'] as $h => $host) {
            $dir = $this->scratchDir();
            for ($i = 0; $i < 2; $i++) {
                $php = [PHP_BINARY, ...self::phpArgs($implementations[$h] ?? null)];
                $children[] = self::startPhp([...$php, self::fixture('lock_worker.php'), 'stress', json_encode([
                    'key' => 'two-hosts@example.org', 'iterations' => $iterations, 'counter' => $counter,
                    'marker' => "$shared/inside", 'barrier' => $barrier,
                    'configure' => ['lock_backend' => $backend] + self::$db->wordpressSettings(),
                    'options' => $backend === 'file' ? ['dir' => $dir] : [],
                ])]);
            }
        }
        self::goWhenReady($barrier, $children);
        $overlaps = 0;
        foreach ($children as $child) {
            $result = self::finish($child, 300);
            $this->assertSame(0, $result['exit'], $result['err']);
            $overlaps += json_decode($result['out'], true)['overlaps'];
        }
        if ($expectedOverlaps === 'none') {
            $this->assertSame(0, $overlaps, 'critical sections that overlapped');
            $this->assertSame((string) (4 * $iterations), file_get_contents($counter), 'lost updates');
        } else {
            $this->assertGreaterThan(0, $overlaps, 'the file backend cannot exclude across hosts');
        }
    }

    public function testBurstsAcrossHostsNeverOverlap(): void
    {
        $shared = $this->scratchDir();
        $children = [];
        for ($i = 0; $i < 4; $i++) {
            $children[] = self::startPhp(self::phpCommand(self::fixture('lock_worker.php'), 'burst', json_encode([
                'key' => 'burst@example.org', 'bursts' => 100, 'marker' => "$shared/inside",
                'start' => microtime(true) + 0.5, 'spacing' => 0.05,
                'configure' => ['lock_backend' => 'mysql'] + self::$db->wordpressSettings(), 'options' => [],
            ])));
        }
        foreach ($children as $child) {
            $result = self::finish($child, 120);
            $this->assertSame(0, $result['exit'], $result['err']);
            $this->assertSame([], json_decode($result['out'], true)['overlapped']);
        }
    }
}
