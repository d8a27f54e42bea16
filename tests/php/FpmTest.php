<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * The extension in Debian's php-fpm, which loads it in the master and forks workers (running
 * as www-data, as a site's): each worker makes its own HTTP client and keeps its tag cache and
 * connection across requests; locks exclude across workers and die with a request that dies.
 */
final class FpmTest extends JoinBlockTestCase
{
    public function testWorkersShareTheirClientAndTagCacheAcrossRequests(): void
    {
        self::extensionOnly('PHP code keeps nothing from one request of a PHP-FPM worker to the next (no tag cache, no kept-alive connection)');
        $server = StandInServer::start();
        $fpm = FpmServer::start($this->scratchDir(), 2, $this->webUserPhpArgs());
        try {
            $server->load(['Member', 'Donor'], [['email' => 'w@example.org', 'tags' => ['Donor', 'Member']]]);
            $query = ['email' => 'w@example.org', 'tag' => 'Member', 'key' => StandInServer::API_KEY, 'base' => $server->baseUrl()];
            $costByWorker = [];
            for ($i = 0; $i < 8; $i++) {
                $server->resetCounts();
                $answer = $fpm->request('tag.php', $query);
                $this->assertSame(200, $answer['status'], $answer['body']);
                $body = json_decode($answer['body'], true);
                $this->assertTrue($body['result'] ?? null, $answer['body']);
                $costByWorker[$body['pid']][] = $server->counts()['total'];
            }
            foreach ($costByWorker as $pid => $costs) {
                $this->assertLessThanOrEqual(4, $costs[0], "worker $pid, first request: cold");
                $this->assertSame(array_fill(0, count($costs) - 1, 2), array_slice($costs, 1), "worker $pid: later requests use the cached tag href");
            }
            $this->assertLessThanOrEqual(2, $server->control('GET', 'connections')['connections'], 'one kept-alive connection per worker');
            $this->assertStringNotContainsString('SIGSEGV', $fpm->log());
        } finally {
            $fpm->stop();
            $server->stop();
        }
    }

    /**
     * The host's shared state gives the polyfill, which keeps nothing from one request to the
     * next, what the extension's workers keep in memory: after warm-up, the same requests to
     * Action Network for the same traffic, within 10%. Each implementation has its own stand-in
     * server (so its own group) and its own lock directory, shared by its workers.
     */
    public function testExtensionAndPolyfillSendAsManyRequestsAfterWarmUp(): void
    {
        $copy = $this->scratchDir(0755);
        exec('cp -R ' . escapeshellarg(\dirname(self::polyfillFile())) . '/. ' . escapeshellarg($copy) . ' && chmod -R a+rX ' . escapeshellarg($copy));
        $args = [
            'extension' => ['-n', '-d', 'extension=' . $this->webUserCopies((string) getenv('JOINBLOCK_SO'))[0]],
            'polyfill' => self::polyfillArgs(self::POLYFILL_EXTENSIONS, $copy . '/' . basename(self::polyfillFile())),
        ];
        $tags = StandInServer::tagNames(130);
        $totals = [];
        foreach ($args as $impl => $phpArgs) {
            $server = StandInServer::start();
            $fpm = FpmServer::start($this->scratchDir(), 2, [...$phpArgs, '-d', 'joinblock.lock_dir=' . $this->webUserScratchDir()]);
            try {
                $server->load($tags, [['email' => 's@example.org', 'tags' => array_slice($tags, 0, 30)]]);
                $requests = 0;
                for ($i = 0; $i < 40; $i++) {
                    if ($i === 10) {
                        $server->resetCounts();
                    }
                    // Tags the member has and has not, in turn.
                    $query = ['email' => 's@example.org', 'tag' => $tags[($i * 7) % 130], 'key' => StandInServer::API_KEY, 'base' => $server->baseUrl()];
                    $answer = json_decode($fpm->request('tag.php', $query)['body'], true);
                    $this->assertSame(($i * 7) % 130 < 30, $answer['result'] ?? $answer, "$impl, request $i");
                }
                $totals[$impl] = $server->counts()['total'];
            } finally {
                $fpm->stop();
                $server->stop();
            }
        }
        fwrite(STDERR, sprintf("\n[php-fpm soak, 30 requests after 10 of warm-up] extension %d, polyfill %d API requests\n", $totals['extension'], $totals['polyfill']));
        $this->assertEqualsWithDelta($totals['extension'], $totals['polyfill'], $totals['extension'] / 10);
    }

    /**
     * max_execution_time counts CPU time: a tag check waiting on the network does not use it up,
     * and its signal (SIGPROF) must reach PHP's thread, not one of the HTTP client's, so that the
     * request ends with PHP's own error and the worker lives on.
     */
    public function testMaxExecutionTimeAroundAStuckTagCheckIsPhpsOwnError(): void
    {
        $server = StandInServer::start();
        $fpm = FpmServer::start($this->scratchDir(), 1, self::phpArgs(), null, ['php_admin_value[max_execution_time] = 1']);
        try {
            $server->load(['Member'], [['email' => 't@example.org', 'tags' => ['Member']]]);
            $server->fault('hang', '/api/v2/', 1, ['seconds' => 5]);
            $query = ['email' => 't@example.org', 'tag' => 'Member', 'key' => StandInServer::API_KEY, 'base' => $server->baseUrl()];
            $stuck = $fpm->request('tag_timeout.php', $query);
            $this->assertMatchesRegularExpression('~^tag check: JoinBlock\\\\ActionNetworkException: Action Network person lookup timed out~m', $stuck['body']);
            // Two seconds of waiting on the network, nearly none of it CPU time: PHP's limit of
            // 1 s CPU ends the request only in the busy loop after it.
            $this->assertMatchesRegularExpression('~^tag check CPU: 0\.[0-2]\d\d s$~m', $stuck['body']);
            $this->assertStringContainsString('Maximum execution time of 1 second exceeded', $stuck['body'] . $stuck['stderr'] . $fpm->log());
            // The one worker serves the next request, with the same HTTP client.
            $next = $fpm->request('tag.php', $query);
            $this->assertSame(200, $next['status'], $next['body']);
            $this->assertTrue(json_decode($next['body'], true)['result'] ?? null, $next['body']);
            $this->assertDoesNotMatchRegularExpression('~SIGSEGV|SIGABRT|exited on signal|terminated~', $fpm->log());
        } finally {
            $fpm->stop();
            $server->stop();
        }
    }

    public function testConcurrentRequestsOnFewEmailsNeverOverlap(): void
    {
        $locks = $this->webUserScratchDir();
        $fpm = FpmServer::start($this->scratchDir(), 4, $this->webUserPhpArgs());
        try {
            $requests = [];
            for ($i = 0; $i < 24; $i++) {
                $requests[] = ['lock.php', ['email' => ['a@example.org', 'B@example.org ', 'c@example.org'][$i % 3], 'dir' => $locks, 'hold_ms' => 30]];
            }
            $answers = $fpm->requestAll($requests);
            $pids = [];
            foreach ($answers as $answer) {
                $this->assertSame(200, $answer['status'], $answer['body']);
                $body = json_decode($answer['body'], true);
                $this->assertFalse($body['overlap'], 'two requests were inside one member\'s lock');
                $pids[$body['pid']] = true;
            }
            $this->assertGreaterThan(1, count($pids), 'several workers took part');
            $siteUid = posix_geteuid() === 0 ? posix_getpwnam(self::WEB_USER)['uid'] : posix_geteuid();
            foreach (array_keys($pids) as $pid) {
                $this->assertSame($siteUid, fileowner("/proc/$pid"), "worker $pid runs as a site's PHP does, not as root");
            }
            $this->assertNoLockHeld($locks, 'no lock left held');
            $this->assertDoesNotMatchRegularExpression('~SIGSEGV|exited on signal~', $fpm->log());
        } finally {
            $fpm->stop();
        }
    }

    /**
     * 200 workers whose requests each wait for one member's lock with a timeout (the
     * integration guide's call). Timed waits block in the kernel, each with a timer of its
     * own (/proc/<pid>/timers) that is deleted when the wait ends: no inotify instance is
     * made (they count against fs.inotify.max_user_instances, 128 by default, shared by all
     * of PHP's user's processes, which a pool of 200 once used up), idle workers keep no
     * timer, and every request is answered, one after the other, without overlap.
     */
    public function testTwoHundredTimedWaitersHoldNoInotifyInstanceAndIdleWorkersNoTimer(): void
    {
        self::extensionOnly('the polyfill\'s timed waits poll: no timer, no inotify');
        $locks = $this->webUserScratchDir();
        $fpm = FpmServer::start($this->scratchDir(), 200, $this->webUserPhpArgs());
        // [inotify instances, POSIX timers] held by the workers now.
        $held = function () use ($fpm): array {
            [$inotify, $timers] = [0, 0];
            foreach ($fpm->workerPids() as $pid) {
                foreach (glob("/proc/$pid/fd/*") as $fd) {
                    $inotify += @readlink($fd) === 'anon_inode:inotify' ? 1 : 0;
                }
                $timers += preg_match_all('/^ID: /m', (string) @file_get_contents("/proc/$pid/timers"));
            }
            return [$inotify, $timers];
        };
        try {
            // Held here until every request has had time to start waiting for it.
            $lock = joinblock_acquire_lock('crowd@example.org', ['dir' => $locks]);
            $sent = array_map(fn () => $fpm->send('lock.php', ['email' => 'crowd@example.org', 'dir' => $locks, 'hold_ms' => 5]), range(1, 200));
            sleep(3);
            [$inotifyWaiting, $timersWaiting] = $held();
            $started = microtime(true);
            $lock->release();
            $answers = array_map(fn (array $request) => $fpm->answer($request, microtime(true) + 120), $sent);
            $took = microtime(true) - $started;
            foreach ($answers as $answer) {
                $this->assertSame(200, $answer['status'], $answer['body']);
                $this->assertFalse(json_decode($answer['body'], true)['overlap'] ?? null, $answer['body']);
            }
            [$inotifyIdle, $timersIdle] = $held();
            fwrite(STDERR, sprintf("\n[200 php-fpm workers] 200 timed waits answered %.2f s after the release (200 × 5 ms holds); while waiting: %d timers, %d inotify instances; idle: %d timers, %d inotify instances\n", $took, $timersWaiting, $inotifyWaiting, $timersIdle, $inotifyIdle));
            $this->assertGreaterThanOrEqual(150, $timersWaiting, 'the waiting requests block with a timer each');
            $this->assertSame([0, 0, 0], [$inotifyWaiting, $inotifyIdle, $timersIdle], 'no inotify instance, and no timer left once idle');
            $this->assertLessThan(10.0, $took, 'handed over one after the other, not polled for');
        } finally {
            $fpm->stop();
        }
        $info = self::runPhpOk([...self::asWebUser(), PHP_BINARY, ...$this->webUserPhpArgs(), '--ri', 'joinblock']);
        $this->assertStringContainsString('timed lock waits => in the kernel, handed the lock at the unlock (a timer signal, SIGRTMAX, ends them at the deadline)', $info);
    }

    public function testARequestThatDiesMidLockDoesNotLeaveItHeld(): void
    {
        $locks = $this->webUserScratchDir();
        $fpm = FpmServer::start($this->scratchDir(), 1, $this->webUserPhpArgs());
        try {
            $query = ['email' => 'dies@example.org', 'dir' => $locks, 'hold_ms' => 0];
            $died = $fpm->request('lock.php', $query + ['fatal' => 1]);
            $this->assertStringContainsString('Allowed memory size', $died['body'] . $fpm->log());
            // The same (only) worker serves the next request: the lock must be free for it.
            $next = $fpm->request('lock.php', $query);
            $this->assertSame(200, $next['status'], $next['body']);
            $this->assertFalse(json_decode($next['body'], true)['overlap']);
            $this->assertNoLockHeld($locks, 'the dead request held nothing');
        } finally {
            $fpm->stop();
        }
    }

    /**
     * A worker that dies of memory_limit at a lock call (issue 21's item 5) holds nothing
     * after: every key is free for another process at once, and the same (only) worker locks
     * them all again in its next request (no claim left behind). Each request locks key after
     * key, its keys and slots made up front, until the fatal. Under gdb the fatal strikes in
     * the engine around the call, never inside the extension's code between taking the lock
     * and making its object (that object is made first, so no fatal can strike there); this
     * shows what a worker sees, whichever it is.
     *
     * @dataProvider backends
     */
    #[DataProvider('backends')]
    public function testAMemoryFatalAtALockCallLeavesNothingHeld(string $backend): void
    {
        $max = 16000; // about 6,000 of the extension's lock objects fit under the fixture's memory_limit
        [$args, $query, $db] = [$this->webUserPhpArgs(), ['max' => $max], null];
        if ($backend === 'mysql') {
            $db = MariaDbServer::startPrivate();
            joinblock_configure(['lock_backend' => 'mysql', 'mysql_url' => $db->url()]);
            array_push($args, '-d', 'joinblock.lock_backend=mysql', '-d', 'joinblock.mysql_url=' . $db->url());
            $options = [];
        } else {
            $query['dir'] = $this->webUserScratchDir();
            $options = ['dir' => $query['dir']];
        }
        // Free at once, but for one case: the polyfill's MySQL connection cut mid-reply by the
        // fatal cannot release (its next query is out of sync), so it is closed, and the server
        // frees its locks when it sees the disconnect, a moment after the response.
        $wait = $backend === 'mysql' && self::implementation() === 'polyfill' ? 1 : 0;
        $fpm = FpmServer::start($this->scratchDir(), 1, $args);
        try {
            $callLine = 1 + substr_count(strstr(file_get_contents(__DIR__ . '/fixtures/fpm/lock_until_fatal.php'), '// THE LOCK CALL', true), "\n");
            for ($round = 0; $round < 2; $round++) {
                $died = $fpm->request('lock_until_fatal.php', $query);
                $said = strip_tags($died['body']) . $fpm->log();
                $this->assertStringNotContainsString('LockException', $said, "round $round: the worker still claimed a lock of an earlier request");
                $this->assertMatchesRegularExpression("~Allowed memory size of \\d+ bytes exhausted .* in (\\S+/lock_until_fatal\\.php on line $callLine|\\S+/polyfill/\\S+\\.php on line \\d+)\\b~", $said, "round $round: the fatal struck at the lock call");
                // And only there: one that struck again while the lock let go (in a shutdown
                // function, with the limit still in force) left the rest to the disconnect.
                $this->assertSame(1, substr_count(strip_tags($died['body']), 'Allowed memory size'), "round $round: one fatal, the lock call's: $said");
                for ($i = 0; $i < $max; $i++) {
                    // A key the worker never reached has no file, so nothing can hold it; and root
                    // must not make one in www-data's directory: the polyfill, as root, leaves
                    // it root's, which the worker then refuses (docs/integration.md).
                    if ($backend === 'file' && !file_exists(self::pluginLockPath($query['dir'], "fatal-$i@example.org"))) {
                        continue;
                    }
                    try {
                        joinblock_acquire_lock("fatal-$i@example.org", $options + ['timeout' => $wait])->release();
                    } catch (\JoinBlock\LockTimeoutException $e) {
                        $this->fail("round $round: fatal-$i@example.org is still held after the request died: {$e->getMessage()}; the request and php-fpm said: " . substr($said, -1500));
                    }
                }
            }
        } finally {
            $fpm->stop();
            if ($db !== null) {
                joinblock_configure([]);
                $db->destroy();
            }
        }
    }

    public static function backends(): array
    {
        return ['file' => ['file'], 'mysql' => ['mysql']];
    }
}
