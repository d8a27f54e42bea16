<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use JoinBlock\LockException;

/**
 * The mysql backend's connection as production treats it: servers and proxies that drop idle
 * connections, restarts, a slow network, servers that never answer, fork, and a site that
 * changes its server. A real MariaDB, and a TCP relay (tests/mysql_proxy.py) in between where a
 * network is needed.
 */
final class MysqlConnectionTest extends JoinBlockTestCase
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

    protected function tearDown(): void
    {
        joinblock_configure([]);
        parent::tearDown();
    }

    /**
     * A relay to the server (tests/mysql_proxy.py), holding each chunk $delay s; with $hold, it
     * accepts nothing until SIGHUP.
     *
     * @return array{proc: resource, port: int}
     */
    private static function startProxy(float $delay = 0.0, bool $hold = false): array
    {
        $proc = proc_open(['python3', dirname(__DIR__) . '/mysql_proxy.py', (string) self::$db->port(), (string) $delay, ...($hold ? ['hold'] : [])], [1 => ['pipe', 'w']], $pipes);
        $port = (int) fgets($pipes[1]);
        self::assertGreaterThan(0, $port, 'the relay started');
        return ['proc' => $proc, 'port' => $port, 'out' => $pipes[1]];
    }

    /** Sends the relay a signal and waits until it says the signal has taken effect. */
    private static function signalProxy(array $proxy, int $signal, string $answer): void
    {
        posix_kill(proc_get_status($proxy['proc'])['pid'], $signal);
        stream_set_timeout($proxy['out'], 10);
        self::assertSame("$answer\n", fgets($proxy['out']), "the relay's answer to signal $signal");
    }

    private static function stopProxy(array $proxy): void
    {
        fclose($proxy['out']);
        proc_terminate($proxy['proc'], SIGKILL);
        proc_close($proxy['proc']);
    }

    private static function settings(?string $dbHost = null): array
    {
        return ['lock_backend' => 'mysql'] + self::$db->wordpressSettings($dbHost);
    }

    /** Runs $code in a PHP process with the implementation under test; returns its last line, decoded. */
    private static function runJson(string $code, array $ini = []): array
    {
        $result = self::runPhp(self::phpCode($code, $ini));
        self::assertSame('', $result['err'], 'stderr');
        return json_decode(trim($result['out']), true) ?? self::fail("not JSON: {$result['out']}");
    }

    /** @return array<string, array{string}> */
    public static function staleConnections(): array
    {
        return [
            'the server\'s wait_timeout expired' => ['wait_timeout'],
            'the server restarted' => ['restart'],
            'KILL CONNECTION from another session' => ['kill'],
            'a proxy in between dropped it' => ['proxy'],
        ];
    }

    /**
     * A worker's first lock after its idle connection died must work at once, touching nothing
     * else first (no isHeld(): that would hide a stale connection by replacing it).
     *
     * @dataProvider staleConnections
     */
    #[DataProvider('staleConnections')]
    public function testFirstLockAfterTheConnectionWentStaleWorksAtOnce(string $what): void
    {
        $proxy = $what === 'proxy' ? self::startProxy() : null;
        $go = $this->scratchDir() . '/go';
        if ($what === 'wait_timeout') {
            self::$db->sql('SET GLOBAL wait_timeout = 2');
        }
        try {
            $worker = self::startPhp(self::phpCommand(self::fixture('mysql_idle_worker.php'), json_encode([
                'configure' => self::settings($proxy === null ? null : "127.0.0.1:{$proxy['port']}"),
                'key' => "stale-$what@example.org", 'go' => $go, 'timeout' => 5,
            ])));
            $this->assertSame("IDLE\n", fgets($worker['pipes'][1]));
            match ($what) {
                'wait_timeout' => usleep(3500000),
                'restart' => self::$db->restart(),
                'kill' => self::$db->killConnections(),
                'proxy' => self::signalProxy($proxy, SIGUSR1, 'dropped'),
            };
            usleep(200000);
            touch($go);
            $result = self::finish($worker, 30);
        } finally {
            if ($what === 'wait_timeout') {
                self::$db->sql('SET GLOBAL wait_timeout = 28800');
            }
            if ($proxy !== null) {
                self::stopProxy($proxy);
            }
        }
        $this->assertSame(0, $result['exit'], $result['err']);
        $this->assertSame('', $result['err'], 'no warning either');
        $answer = json_decode(trim($result['out']), true);
        $this->assertArrayNotHasKey('error', $answer, $result['out']);
        $this->assertTrue($answer['held']);
        $this->assertLessThan(1.0, $answer['elapsed'], 'at once');
    }

    /**
     * The rule for locks that were held when their connection died: they stay lost (isHeld()
     * false, release() says so), and new locks are taken on a new connection meanwhile.
     */
    public function testLocksHeldOnADeadConnectionStayLostWhileNewOnesWork(): void
    {
        joinblock_configure(self::settings());
        $first = joinblock_acquire_lock('first@example.org');
        self::$db->killConnections();
        $second = joinblock_acquire_lock('second@example.org', ['timeout' => 5]);
        $this->assertTrue($second->isHeld());
        $this->assertFalse($first->isHeld(), 'the server freed it with its connection');
        self::assertThrows(LockException::class, '~^MySQL lock join-lock-[0-9a-f]{40} on joinblock@127\.0\.0\.1:\d+/wordpress was lost with its database connection; another request may hold it now$~', fn () => $first->release());
        // The server frees a killed connection's locks once its thread has ended, a moment
        // after the KILL (a busy machine once found it still held with timeout 0).
        $again = joinblock_acquire_lock('first@example.org', ['timeout' => 5]);
        $this->assertTrue($again->isHeld());
        $again->release();
        $second->release();
    }

    /** @return array<string, array{string}> */
    public static function sameServerOtherSpelling(): array
    {
        return ['another spelling of the same server' => ['socket'], 'another server' => ['other']];
    }

    /** @dataProvider sameServerOtherSpelling */
    #[DataProvider('sameServerOtherSpelling')]
    public function testMovingToAnotherServerWhileHoldingIsRefused(string $to): void
    {
        joinblock_configure(self::settings());
        $held = joinblock_acquire_lock('mover@example.org');
        $other = $to === 'socket' ? 'localhost:' . self::$db->socket() : '127.0.0.1:1';
        joinblock_configure(self::settings($other));
        $shown = $to === 'socket' ? 'localhost:' . preg_quote(self::$db->socket(), '~') : '127\.0\.0\.1:1';
        self::assertThrows(
            LockException::class,
            "~^cannot take a MySQL lock on joinblock@$shown/wordpress while this thread holds 1 lock on joinblock@127\.0\.0\.1:\d+/wordpress: moving to another server \(or another spelling of the same one\) would silently free them; release them first$~",
            fn () => joinblock_acquire_lock('other@example.org', ['timeout' => 1])
        );
        $this->assertTrue($held->isHeld(), 'still held on the first connection');
        $held->release();
        if ($to === 'socket') {
            // Holding nothing, the move is made.
            $moved = joinblock_acquire_lock('other@example.org', ['timeout' => 1]);
            $this->assertTrue($moved->isHeld());
            $moved->release();
        }
    }

    /**
     * timeout 0 means "try the lock once", not "connect in no time": through a relay that adds
     * 20 ms to every exchange and whose accept queue is full at first (so the first SYN is
     * dropped and the client's retry, a second later, gets in), the lock is still taken.
     */
    public function testTryOnceOnAFreshConnectionToABusyDistantServer(): void
    {
        $proxy = self::startProxy(0.02, hold: true);
        $queued = stream_socket_client("tcp://127.0.0.1:{$proxy['port']}", $errno, $error, 1);
        try {
            $child = self::startPhp(self::phpCode(sprintf(
                'joinblock_configure(%s); echo "CONNECTING\n"; $l = joinblock_acquire_lock("once@example.org", ["timeout" => 0]); echo json_encode(["held" => $l->isHeld(), "at" => microtime(true)]);',
                var_export(self::settings("127.0.0.1:{$proxy['port']}"), true)
            )));
            // Freed a while after the child began (a busy machine may start it late).
            $this->assertSame("CONNECTING\n", fgets($child['pipes'][1]));
            usleep(300000);
            $freed = microtime(true);
            self::signalProxy($proxy, SIGHUP, 'accepting');
            $result = self::finish($child, 30);
        } finally {
            fclose($queued);
            self::stopProxy($proxy);
        }
        $this->assertSame('', $result['err']);
        $answer = json_decode(trim($result['out']), true) ?? self::fail($result['out']);
        $this->assertTrue($answer['held']);
        $this->assertGreaterThanOrEqual($freed, $answer['at'], 'connecting waited for the busy server');
    }

    /** @return array<string, array{string}> */
    public static function deadServers(): array
    {
        return [
            'a server that accepts and never answers' => ['silent'],
            'a server whose listen backlog is full' => ['backlog'],
            'a Unix socket whose listen backlog is full (DB_HOST localhost)' => ['socket'],
        ];
    }

    /**
     * Connecting gives up at joinblock.mysql_connect_timeout, whatever the lock timeout.
     *
     * @dataProvider deadServers
     */
    #[DataProvider('deadServers')]
    public function testConnectingGivesUpAtTheConnectTimeout(string $server): void
    {
        // Never accept()ed: the kernel completes the handshake for the first connections, and
        // drops the rest once the backlog (0: one connection) is full. A Unix socket's
        // connect() waits instead, for as long as the backlog stays full.
        $address = $server === 'socket' ? 'unix://' . $this->scratchDir(0755) . '/mysqld.sock' : 'tcp://127.0.0.1:0';
        $listener = stream_socket_server($address, $errno, $error, STREAM_SERVER_BIND | STREAM_SERVER_LISTEN, stream_context_create(['socket' => ['backlog' => 0]]));
        $dbHost = $server === 'socket' ? 'localhost:' . substr($address, 7) : '127.0.0.1:' . substr(strrchr(stream_socket_get_name($listener, false), ':'), 1);
        $fillers = [];
        if ($server !== 'silent') {
            for ($i = 0; $i < 4; $i++) {
                $fillers[] = @stream_socket_client($server === 'socket' ? $address : "tcp://$dbHost", $errno, $error, 0.2);
            }
        }
        $children = [];
        foreach (['1' => 1, '0' => 0, 'null' => null] as $name => $timeout) {
            $children[$name] = self::startPhp(self::phpCode(sprintf(
                '$t = microtime(true); joinblock_configure(%s); try { joinblock_acquire_lock("dead@example.org", ["timeout" => %s]); echo "acquired"; } catch (Throwable $e) { echo json_encode([get_class($e), $e->getMessage(), microtime(true) - $t]); }',
                var_export(self::settings($dbHost), true),
                var_export($timeout, true)
            ), ['joinblock.mysql_connect_timeout' => '1']));
        }
        foreach ($children as $name => $child) {
            $result = self::finish($child, 30);
            $this->assertSame('', $result['err']);
            [$class, $message, $took] = json_decode($result['out'], true) ?? self::fail("timeout $name: {$result['out']}");
            $this->assertSame(LockException::class, $class, "timeout $name");
            $this->assertMatchesRegularExpression("~^cannot connect to MySQL server joinblock@" . preg_quote($dbHost, '~') . "/wordpress: the server did not answer within 1\\.000 s \\(joinblock\\.mysql_connect_timeout\\)$~", $message, "timeout $name");
            $this->assertGreaterThan(0.9, $took, "timeout $name");
            $this->assertLessThan(2.0, $took, "timeout $name: bounded by the connect timeout");
        }
        fclose($listener);
    }

    /**
     * A server that stops answering mid-call, without closing anything (a relay that freezes):
     * the call gives up within its timeout plus three connect timeouts at most (docs/configuration.md).
     */
    public function testAServerThatFallsSilentMidCallIsGivenUpOn(): void
    {
        $proxy = self::startProxy();
        $go = $this->scratchDir() . '/go';
        try {
            $worker = self::startPhp([PHP_BINARY, ...self::phpArgs(), '-d', 'joinblock.mysql_connect_timeout=1', self::fixture('mysql_idle_worker.php'), json_encode([
                'configure' => self::settings("127.0.0.1:{$proxy['port']}"), 'key' => 'silent@example.org', 'go' => $go, 'timeout' => 1,
            ])]);
            $this->assertSame("IDLE\n", fgets($worker['pipes'][1]));
            self::signalProxy($proxy, SIGUSR2, 'frozen');
            touch($go);
            $result = self::finish($worker, 30);
        } finally {
            self::stopProxy($proxy);
        }
        $this->assertSame('', $result['err']);
        $answer = json_decode(trim($result['out']), true);
        $this->assertMatchesRegularExpression('~^JoinBlock\\\\LockException: cannot (use|connect to) MySQL server joinblock@127\.0\.0\.1:\d+/wordpress: the server did not answer within \d\.000 s \(~', $answer['error'] ?? $result['out']);
        self::assertReadsAsASentence($answer['error']);
        $this->assertGreaterThan(1.9, $answer['elapsed'], 'the lock wait and the connect timeout were allowed');
        $this->assertLessThan(4.5, $answer['elapsed'], 'timeout 1 s + 3 x connect timeout 1 s');
    }

    /**
     * A child made with pcntl_fork that lives on must not keep its parent's locks alive: the
     * parent dying (kill -9) frees them at once, as docs/configuration.md promises.
     */
    public function testAForkedChildDoesNotKeepADeadParentsLock(): void
    {
        self::extensionOnly('PHP code cannot close the child\'s copy of mysqli\'s socket without ending the parent\'s session (docs/integration.md: the polyfill)');
        $child = $this->killHolderKeepingItsForkedChild(sprintf('joinblock_configure(%s); $lock = joinblock_acquire_lock("forked@example.org");', var_export(self::settings(), true)));
        try {
            joinblock_configure(self::settings());
            $started = microtime(true);
            $lock = joinblock_acquire_lock('forked@example.org', ['timeout' => 5]);
            $this->assertLessThan(1.0, microtime(true) - $started);
            $lock->release();
        } finally {
            posix_kill($child, SIGKILL);
        }
    }

    /**
     * docs/configuration.md: the holder dying frees the lock at once, even when it started a program with
     * proc_open that lives on. The extension's socket is close-on-exec; mysqli's is not, so
     * with the polyfill the lock lasts until that program ends (docs/integration.md says so).
     */
    public function testAHoldersProgramStartedWithProcOpenAndTheHoldersDeath(): void
    {
        $holder = self::startPhp(self::phpCode(sprintf(<<<'PHP'
            joinblock_configure(%s);
            $lock = joinblock_acquire_lock('exec@example.org');
            $sleeper = proc_open(['sleep', '3'], [], $pipes);
            echo proc_get_status($sleeper)['pid'], "\n";
            sleep(60);
            PHP, var_export(self::settings(), true))));
        $sleeper = (int) fgets($holder['pipes'][1]);
        $this->assertGreaterThan(0, $sleeper);
        posix_kill(proc_get_status($holder['proc'])['pid'], SIGKILL);
        self::finish($holder);
        joinblock_configure(self::settings());
        $started = microtime(true);
        $lock = joinblock_acquire_lock('exec@example.org', ['timeout' => 10]);
        $took = microtime(true) - $started;
        $lock->release();
        if (self::implementation() === 'extension') {
            $this->assertLessThan(1.0, $took, 'freed when the holder died');
        } else {
            $this->assertGreaterThan(1.5, $took, 'the polyfill\'s lock lasts until the program ends (docs/integration.md)');
        }
    }

    /**
     * Under php-fpm (one worker, so one kept connection), over the server's Unix socket: a
     * request, the server restarts, the next request's lock works, in the same worker.
     */
    public function testAnFpmWorkersNextRequestAfterTheServerRestarted(): void
    {
        self::extensionOnly('the polyfill opens a connection per request, so no connection is kept across requests to go stale');
        $dir = $this->scratchDir();
        $url = sprintf('mysql://%s:%s@localhost/%s?socket=%s', MariaDbServer::USER, rawurlencode(MariaDbServer::PASSWORD), MariaDbServer::DATABASE, self::$db->socket());
        $fpm = FpmServer::start($dir, 1, [...$this->webUserPhpArgs(), '-d', 'joinblock.lock_backend=mysql', '-d', "joinblock.mysql_url=\"$url\""]);
        try {
            $first = $fpm->request('lock.php', ['email' => 'fpm@example.org', 'dir' => $dir, 'hold_ms' => 0]);
            $this->assertSame(200, $first['status'], $first['body'] . $first['stderr']);
            self::$db->restart();
            $second = $fpm->request('lock.php', ['email' => 'fpm@example.org', 'dir' => $dir, 'hold_ms' => 0]);
            $this->assertSame(200, $second['status'], $second['body'] . $second['stderr']);
            $this->assertSame(json_decode($first['body'], true)['pid'], json_decode($second['body'], true)['pid'] ?? null, 'the same worker, its connection gone stale');
            $this->assertSame([], glob("$dir/join-lock-*"), 'MySQL locks, not files');
            $this->assertDoesNotMatchRegularExpression('~signal|SIGPIPE|SIGSEGV~i', $fpm->log());
        } finally {
            $fpm->stop();
        }
    }
}
