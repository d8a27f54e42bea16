<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * The thread-safe (ZTS) build of the extension in a real threaded server: Debian's Apache 2.4,
 * event MPM, ONE child process whose threads serve every request through a ZTS mod_php built
 * from Debian's source (ApacheServer). Locks exclude between threads with either backend,
 * joinblock_configure() stays with its request, threads share one tag cache, and a request
 * that dies inside a lock frees it for the others.
 *
 * Needs JOINBLOCK_ZTS_SO (the ZTS build of the extension) and a ZTS PHP prefix
 * (JOINBLOCK_ZTS_PREFIX, else scripts/php-from-source's cache); skips without them.
 */
final class ApacheThreadsTest extends JoinBlockTestCase
{
    private const THREADS = 25;

    private static string $prefix;
    private static string $so;
    private static ?MariaDbServer $db = null;

    private ?ApacheServer $apache = null;
    private int $apacheChild = 0;
    private string $apacheLog = '';

    public static function setUpBeforeClass(): void
    {
        self::extensionOnly('Apache loads the ZTS build of the extension');
        $so = (string) getenv('JOINBLOCK_ZTS_SO');
        if ($so === '') {
            self::markTestSkipped('JOINBLOCK_ZTS_SO is not set: it names the thread-safe build of the extension (scripts/test sets it)');
        }
        if (!is_file($so)) {
            throw new \RuntimeException("JOINBLOCK_ZTS_SO=$so: no such file");
        }
        $prefix = ApacheServer::ztsPrefix();
        $why = ApacheServer::unavailable($prefix);
        if ($why !== null) {
            self::markTestSkipped($why);
        }
        self::$prefix = $prefix;
        self::$so = $so;
    }

    public static function tearDownAfterClass(): void
    {
        self::$db?->destroy();
        self::$db = null;
    }

    protected function tearDown(): void
    {
        if ($this->apache !== null) {
            $this->apache->stop();
            $this->apacheLog = $this->apache->log();
            $this->apache = null;
        }
        parent::tearDown();
    }

    protected function onNotSuccessfulTest(\Throwable $t): never
    {
        if ($this->apacheLog !== '') {
            fwrite(STDERR, "\n--- apache2 error log ---\n{$this->apacheLog}--- end ---\n");
        }
        throw $t;
    }

    /** The private MariaDB of this class, started at first use. */
    private static function db(): MariaDbServer
    {
        return self::$db ??= MariaDbServer::startPrivate();
    }

    /**
     * Starts Apache with the ZTS extension and these php.ini settings (more than the defaults:
     * errors to Apache's error log, the lock directory a www-data one).
     *
     * @param array<string, string|int> $ini
     */
    private function startApache(array $ini = []): ApacheServer
    {
        $this->apache = ApacheServer::start($this->scratchDir(), self::$prefix, $ini + [
            'extension' => self::$so,
            'error_reporting' => 'E_ALL',
            'display_errors' => 'Off',
            'log_errors' => 'On',
            'joinblock.lock_dir' => $this->webUserScratchDir(),
        ], self::THREADS);
        $children = $this->apache->childPids();
        $this->assertCount(1, $children, 'ServerLimit 1: one child process');
        $this->apacheChild = $children[0];
        return $this->apache;
    }

    /** The database settings requests read with get_cfg_var() (php.ini is root's alone). */
    private static function dbIni(): array
    {
        $ini = [];
        foreach (self::db()->wordpressSettings() as $name => $value) {
            $ini["joinblock_test.$name"] = '"' . $value . '"';
        }
        return $ini;
    }

    /** @return array<string, mixed> the JSON a served script answered */
    private function decode(array $answer, string $what): array
    {
        $this->assertSame(200, $answer['status'], "$what: {$answer['body']}");
        $body = json_decode($answer['body'], true);
        $this->assertIsArray($body, "$what: {$answer['body']}");
        $this->assertArrayNotHasKey('error', $body, "$what: " . ($body['error'] ?? ''));
        return $body;
    }

    /** The same child process served everything and still runs, and nothing crashed. */
    private function assertOneChildThroughout(array $bodies): void
    {
        $this->assertSame([$this->apacheChild], array_values(array_unique(array_column($bodies, 'pid'))), 'every request served by the one child process');
        $this->assertSame([$this->apacheChild], $this->apache->childPids(), 'the child process still runs, no other was started');
        $this->assertDoesNotMatchRegularExpression('~exit signal|Segmentation|SIGSEGV|SIGABRT|AH00052|panicked~', $this->apache->log());
    }

    public function testRequestsAreServedByThreadsOfOneProcess(): void
    {
        $apache = $this->startApache();
        $barrier = $this->webUserScratchDir();
        $n = 10;
        $requests = [];
        for ($i = 0; $i < $n; $i++) {
            $requests[] = ['whoami.php', ['barrier' => $barrier, 'id' => $i, 'n' => $n]];
        }
        $bodies = [];
        foreach ($apache->requestAll($requests) as $i => $answer) {
            $bodies[] = $body = $this->decode($answer, "request $i");
            $this->assertSame(1, $body['zts'], 'PHP_ZTS: a thread-safe PHP');
            $this->assertTrue($body['joinblock'], 'the ZTS extension is loaded');
            $this->assertNotSame($body['pid'], $body['tid'], 'a thread other than the main one');
        }
        // All 10 were inside PHP at once (the barrier): 10 threads of one process.
        $this->assertCount($n, array_unique(array_column($bodies, 'tid')), 'one thread per request');
        $this->assertOneChildThroughout($bodies);
        $this->assertNotSame($apache->pid(), $this->apacheChild, 'the child, not the parent, serves');
        if (posix_geteuid() === 0) {
            $uid = (int) explode("\t", (string) ApacheServer::status($this->apacheChild, 'Uid'))[0];
            $this->assertSame(posix_getpwnam(self::WEB_USER)['uid'], $uid, 'the child runs as a site\'s PHP does, not as root');
        }
    }

    /** @return array<string, array{string}> */
    public static function backends(): array
    {
        return ['file' => ['file'], 'mysql' => ['mysql']];
    }

    /**
     * Bursts of 5 concurrent requests on one member's lock, 100 times: inside the lock each
     * claims an O_EXCL marker file; none may find it taken, and no two requests' times inside
     * the lock may intersect.
     *
     * @dataProvider backends
     */
    #[DataProvider('backends')]
    public function testBurstsOnOneMembersLockNeverOverlap(string $backend): void
    {
        $apache = $this->startApache($backend === 'mysql' ? self::dbIni() : []);
        $locks = $this->webUserScratchDir();
        $markers = $this->webUserScratchDir();
        [$trials, $burst] = [100, 5];
        $emails = ['burst@example.org', ' Burst@Example.org', 'BURST@example.org '];
        $overlaps = 0;
        $contended = 0;
        $bodies = [];
        $started = microtime(true);
        for ($trial = 0; $trial < $trials; $trial++) {
            $requests = [];
            for ($i = 0; $i < $burst; $i++) {
                $requests[] = ['lock.php', ['email' => $emails[$i % 3], 'backend' => $backend, 'dir' => $locks, 'markers' => $markers, 'hold_ms' => 5]];
            }
            $sections = [];
            $requestTimes = [];
            foreach ($apache->requestAll($requests) as $i => $answer) {
                $bodies[] = $body = $this->decode($answer, "trial $trial, request $i");
                $this->assertSame($backend === 'file' ? self::pluginLockPath($locks, 'burst@example.org') : 'join-lock-' . sha1('burst@example.org'), $body['lock'], "the $backend backend");
                $overlaps += $body['alone'] ? 0 : 1;
                $sections[] = $body['in'];
                $requestTimes[] = [$body['start'], $body['end']];
            }
            $overlaps += self::intersections($sections);
            $contended += self::intersections($requestTimes) > 0 ? 1 : 0;
        }
        $seconds = microtime(true) - $started;
        $threads = count(array_unique(array_column($bodies, 'tid')));
        fwrite(STDERR, sprintf("\n[apache event MPM, %s backend] %d bursts of %d: %d overlaps, %d contended bursts, %d threads of 1 process, %.1f s\n", $backend, $trials, $burst, $overlaps, $contended, $threads, $seconds));
        $this->assertSame(0, $overlaps, 'two requests were inside one member\'s lock at once');
        $this->assertGreaterThanOrEqual($trials / 2, $contended, 'most bursts had requests inside PHP at once, waiting for the lock');
        $this->assertGreaterThanOrEqual(2, $threads, 'several threads took part');
        $this->assertOneChildThroughout($bodies);
        $this->assertNoLockHeld($locks, 'no lock left held');
        $this->assertSame([], glob("$markers/*"), 'no marker left');
        if ($backend === 'mysql') {
            $this->assertSame("1\n", self::db()->sql("SELECT IS_USED_LOCK('join-lock-" . sha1('burst@example.org') . "') IS NULL"), 'the GET_LOCK is free');
        }
    }

    /** How many pairs of the [from, to] intervals intersect. */
    private static function intersections(array $intervals): int
    {
        usort($intervals, fn (array $a, array $b) => $a[0] <=> $b[0]);
        $count = 0;
        foreach ($intervals as $i => [, $to]) {
            for ($j = $i + 1; $j < count($intervals) && $intervals[$j][0] < $to; $j++) {
                $count++;
            }
        }
        return $count;
    }

    /**
     * Two kinds of request at once, 10 of each, all inside PHP together (a barrier): `mysql`
     * calls joinblock_configure() for the mysql backend, `default` does not (php.ini: file).
     * Each checks the backend in effect and the backend of a lock it takes several times, while
     * requests of the other kind start, configure and end around it.
     */
    public function testConfigureInOneRequestIsNeverSeenInAnother(): void
    {
        $apache = $this->startApache(self::dbIni() + ['joinblock.lock_backend' => 'file']);
        $barrier = $this->webUserScratchDir();
        $n = 20;
        $requests = [];
        for ($i = 0; $i < $n; $i++) {
            // Ends staggered: the short ones end while the long ones still check.
            $requests[] = ['configure.php', ['kind' => $i % 2 ? 'default' : 'mysql', 'barrier' => $barrier, 'id' => $i, 'n' => $n, 'checks' => 3 + intdiv($i, 2), 'gap_ms' => 15]];
        }
        $server = sprintf('%s@127.0.0.1:%d/%s', MariaDbServer::USER, self::db()->port(), MariaDbServer::DATABASE);
        $bodies = [];
        foreach ($apache->requestAll($requests) as $i => $answer) {
            $kind = $requests[$i][1]['kind'];
            $bodies[$i] = $body = $this->decode($answer, "request $i ($kind)");
            $expected = $kind === 'mysql' ? ['backend' => 'mysql', 'server' => $server, 'lock' => 'mysql'] : ['backend' => 'file', 'server' => null, 'lock' => 'file'];
            $this->assertCount($requests[$i][1]['checks'], $body['seen']);
            foreach ($body['seen'] as $c => $seen) {
                unset($seen['t']);
                $this->assertSame($expected, $seen, "request $i ($kind), check $c");
            }
        }
        $this->assertCount($n, array_unique(array_column($bodies, 'tid')), 'one thread per request');
        // Requests of the other kind ended while this one was checking.
        $endedAround = [];
        foreach ($bodies as $i => $body) {
            $times = array_column($body['seen'], 't');
            foreach ($bodies as $j => $other) {
                if ($i % 2 !== $j % 2 && $other['end'] > $times[0] && $other['end'] < end($times)) {
                    $endedAround[$i] = true;
                }
            }
        }
        fwrite(STDERR, sprintf("\n[apache event MPM, joinblock_configure()] %d requests at once, %d checks, %d saw a request of the other kind end mid-way\n", $n, array_sum(array_map(fn ($b) => count($b['seen']), $bodies)), count($endedAround)));
        $this->assertGreaterThanOrEqual($n / 2, count($endedAround), 'requests of the other kind ended mid-way through most requests');

        // Then a request on every thread at once, none configuring: the threads whose last
        // request configured mysql must have cleared it when that request ended.
        $threads = self::THREADS;
        $barrier = $this->webUserScratchDir();
        $again = [];
        for ($i = 0; $i < $threads; $i++) {
            $again[] = ['configure.php', ['kind' => 'default', 'barrier' => $barrier, 'id' => $i, 'n' => $threads, 'checks' => 1, 'gap_ms' => 0]];
        }
        $later = [];
        foreach ($apache->requestAll($again) as $i => $answer) {
            $later[$i] = $body = $this->decode($answer, "later request $i");
            $seen = $body['seen'][0];
            unset($seen['t']);
            $this->assertSame(['backend' => 'file', 'server' => null, 'lock' => 'file'], $seen, "later request $i, on a thread that served before");
        }
        $configuredThreads = array_column(array_filter($bodies, fn ($i) => $i % 2 === 0, ARRAY_FILTER_USE_KEY), 'tid');
        $this->assertSame([], array_diff($configuredThreads, array_column($later, 'tid')), 'every thread that served a configuring request served a later one');
        $this->assertOneChildThroughout([...$bodies, ...$later]);
    }

    /**
     * joinblock_person_has_tag from many threads at once: right answers, and what one thread
     * learned of the group's tags serves the others (no thread reads the tag list again).
     * The host's shared state (files) is off: only the process's own cache can share.
     */
    public function testTagChecksFromManyThreadsShareOneCache(): void
    {
        $server = StandInServer::start();
        try {
            $apache = $this->startApache(['joinblock.shared_state' => '0']);
            $tags = StandInServer::tagNames(300);
            $server->load($tags, [
                ['email' => 'member@example.org', 'tags' => array_slice($tags, 0, 200)],
                ['email' => 'newcomer@example.org', 'tags' => ['Tag 250', 'Tag 251']],
            ], 10);
            $checks = [
                ['member@example.org', 'Tag 001', true],
                ['member@example.org', 'tag 150', true],
                ['member@example.org', 'Tag 250', false],
                ['newcomer@example.org', 'Tag 251', true],
                ['newcomer@example.org', 'Tag 001', false],
                ['nobody@example.org', 'Tag 001', null],
            ];
            $query = fn (string $email, string $tag) => ['email' => $email, 'tag' => $tag, 'key' => StandInServer::API_KEY, 'base' => $server->baseUrl()];

            // Warm-up: each check once, one after the other.
            $warmUpThreads = [];
            foreach ($checks as [$email, $tag, $expected]) {
                $body = $this->decode($apache->request('tag.php', $query($email, $tag)), "warm-up $email $tag");
                $this->assertArrayHasKey('result', $body, json_encode($body));
                $this->assertSame($expected, $body['result'], "warm-up: $email, $tag");
                $warmUpThreads[$body['tid']] = true;
            }
            $warmUp = $server->counts();
            $this->assertGreaterThan(0, self::tagLookups($warmUp['by_path']), 'the warm-up learned tag names');
            // One after the other on several threads, over one kept-alive connection: one client.
            $this->assertGreaterThanOrEqual(2, count($warmUpThreads), 'the warm-up checks were served by several threads');
            $this->assertSame(1, $server->control('GET', 'connections')['connections'], 'the threads share one HTTP client and its kept-alive connection');

            // Then 24 checks at once, all inside PHP together (a barrier), on 24 threads.
            $server->resetCounts();
            $barrier = $this->webUserScratchDir();
            $n = 24;
            $requests = [];
            for ($i = 0; $i < $n; $i++) {
                [$email, $tag] = $checks[$i % count($checks)];
                $requests[] = ['tag.php', $query($email, $tag) + ['barrier' => $barrier, 'id' => $i, 'n' => $n]];
            }
            $bodies = [];
            foreach ($apache->requestAll($requests) as $i => $answer) {
                [$email, $tag, $expected] = $checks[$i % count($checks)];
                $bodies[] = $body = $this->decode($answer, "check $i");
                $this->assertArrayHasKey('result', $body, json_encode($body));
                $this->assertSame($expected, $body['result'], "check $i: $email, $tag");
            }
            $counts = $server->counts();
            $threads = array_unique(array_column($bodies, 'tid'));
            $newThreads = array_diff($threads, array_keys($warmUpThreads));
            fwrite(STDERR, sprintf("\n[apache event MPM, tag checks] warm-up: %d checks, %d API requests (%d for tag names) on %d thread(s); then %d checks at once on %d threads (%d new): %d API requests, %d for tag names\n",
                count($checks), $warmUp['total'], self::tagLookups($warmUp['by_path']), count($warmUpThreads), $n, count($threads), count($newThreads), $counts['total'], self::tagLookups($counts['by_path'])));
            $this->assertCount($n, $threads, 'one thread per check');
            $this->assertNotEmpty($newThreads, 'threads that served no warm-up check took part');
            $this->assertSame(0, self::tagLookups($counts['by_path']), 'no thread looked up a tag name again: they share the cache');
            $this->assertOneChildThroughout($bodies);
        } finally {
            $server->stop();
        }
    }

    /** Requests for tag names: the group's tag list or one tag. */
    private static function tagLookups(array $byPath): int
    {
        $sum = 0;
        foreach ($byPath as $path => $count) {
            $sum += str_starts_with($path, '/api/v2/tags') ? $count : 0;
        }
        return $sum;
    }

    /** @return array<string, array{string, string}> */
    public static function fatalErrors(): array
    {
        return [
            'file, E_USER_ERROR' => ['file', 'user_error'],
            'file, undefined function' => ['file', 'undefined'],
            'mysql, E_USER_ERROR' => ['mysql', 'user_error'],
            'mysql, undefined function' => ['mysql', 'undefined'],
        ];
    }

    /**
     * A request dies of a fatal error while it holds a member's lock; another request, on
     * another thread, was already waiting for it: it gets the lock as soon as the first dies,
     * and later requests (any thread, the dead request's included) get it at once.
     *
     * @dataProvider fatalErrors
     */
    #[DataProvider('fatalErrors')]
    public function testAFatalErrorInsideTheLockFreesItForTheOthers(string $backend, string $fatal): void
    {
        $apache = $this->startApache($backend === 'mysql' ? self::dbIni() : []);
        $locks = $this->webUserScratchDir();
        $markers = $this->webUserScratchDir();
        $held = "$markers/held";
        $common = ['email' => 'dies@example.org', 'backend' => $backend, 'dir' => $locks, 'markers' => $markers];
        $holdMs = 300;
        [$dying, $waiting] = $apache->requestAll([
            ['lock.php', $common + ['hold_ms' => $holdMs, 'held' => $held, 'fatal' => $fatal]],
            // Starts waiting once the first holds the lock; would give up after 10 s.
            ['lock.php', $common + ['hold_ms' => 0, 'after' => $held, 'timeout' => 10]],
        ]);
        $this->assertStringNotContainsString('"error"', $dying['body'], 'the first request took the lock');
        $this->assertStringNotContainsString('"alone"', $dying['body'], 'the first request died before answering');
        $this->assertMatchesRegularExpression(
            $fatal === 'user_error' ? '~PHP Fatal error:  dying inside the lock~' : '~PHP Fatal error:  Uncaught Error: Call to undefined function joinblock_test_no_such_function\(\)~',
            $apache->log()
        );
        $waiter = $this->decode($waiting, 'the waiting request');
        $this->assertTrue($waiter['alone']);
        $this->assertLessThan(3.0, $waiter['waited'], "the waiting request got the lock once the first died (after {$waiter['waited']} s)");

        // Then the lock is free at once (timeout 0: one try), whichever thread serves.
        $bodies = [$waiter];
        for ($i = 0; $i < 8; $i++) {
            $bodies[] = $body = $this->decode($apache->request('lock.php', $common + ['hold_ms' => 0, 'timeout' => 0]), "request $i after");
            $this->assertTrue($body['alone']);
        }
        fwrite(STDERR, sprintf("\n[apache event MPM, %s backend, %s inside the lock] the waiter got it after %.3f s (the holder died after %d ms); 8 later tries on %d thread(s) got it at once\n", $backend, $fatal, $waiter['waited'], $holdMs, count(array_unique(array_column(array_slice($bodies, 1), 'tid')))));
        $this->assertOneChildThroughout($bodies);
        $this->assertNoLockHeld($locks, 'no lock left held');
        if ($backend === 'mysql') {
            $this->assertSame("1\n", self::db()->sql("SELECT IS_USED_LOCK('join-lock-" . sha1('dies@example.org') . "') IS NULL"), 'the GET_LOCK is free');
        }
    }
}
