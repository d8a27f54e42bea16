<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * The site-wide shared state of joinblock_person_has_tag (README "Several hosts"): with the
 * mysql lock backend, every host's processes keep one request pace and one tag map through the
 * lock server. A host is simulated by its own lock directory (so its own per-host files), as
 * separate machines have; all hosts lock on one private MariaDB.
 */
final class SiteStateTest extends JoinBlockTestCase
{
    private static StandInServer $server;
    private static MariaDbServer $db;
    /** @var list<string> the lock directories of the hosts startHosts() started */
    private array $hostDirs = [];

    public static function setUpBeforeClass(): void
    {
        self::$server = StandInServer::start();
        self::$db = MariaDbServer::startPrivate();
    }

    public static function tearDownAfterClass(): void
    {
        self::$server->stop();
        self::$db->destroy();
    }

    protected function setUp(): void
    {
        self::$server->control('POST', 'rate_limit', ['rps' => null]);
        self::dropTables();
    }

    private static function dropTables(): void
    {
        self::$db->sql('DROP TABLE IF EXISTS ' . MariaDbServer::DATABASE . '.joinblock_an_pace, ' . MariaDbServer::DATABASE . '.joinblock_an_tags');
    }

    /** PHP arguments for a process of the host whose lock directory is `$dir`. */
    private static function hostArgs(string $dir, ?string $impl = null, ?string $url = null): array
    {
        return [...self::phpArgs($impl), '-d', "joinblock.lock_dir=$dir", '-d', 'joinblock.lock_backend=mysql', '-d', 'joinblock.mysql_url=' . ($url ?? self::$db->url())];
    }

    /** One call in a fresh process of that host; prints result (or the exception's message). */
    private static function call(array $args, string $email, string $tag, array $options, ?string $impl = null): array
    {
        $options += ['base_url' => self::$server->baseUrl(), 'deadline' => 60];
        $require = ($impl ?? self::implementation()) === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
        $code = $require . '$t = hrtime(true); try { $r = joinblock_person_has_tag(' . var_export($email, true) . ', ' . var_export($tag, true) . ', '
            . var_export(StandInServer::API_KEY, true) . ', ' . var_export($options, true) . '); } catch (Throwable $e) { $r = get_class($e) . ": " . $e->getMessage(); }'
            . ' echo json_encode(["result" => $r, "started" => $t / 1e9, "seconds" => (hrtime(true) - $t) / 1e9, "status" => joinblock_status()]);';
        return [PHP_BINARY, ...$args, '-r', $code];
    }

    /** Starts `$perHost` processes on each of `$hosts` hosts, each one cold check of a pacing member. */
    private function startHosts(int $hosts, int $perHost, array $asks, ?callable $implOf = null): array
    {
        $children = [];
        $emails = array_keys($asks);
        for ($h = 0; $h < $hosts; $h++) {
            $dir = $this->hostDirs[] = $this->scratchDir();
            for ($p = 0; $p < $perHost; $p++) {
                $email = $emails[$h * $perHost + $p];
                $impl = $implOf === null ? null : $implOf($h * $perHost + $p);
                $children[$email] = self::startPhp(self::call(self::hostArgs($dir, $impl), $email, $asks[$email][0], [], $impl));
            }
        }
        return $children;
    }

    /**
     * Waits for every child; asserts each answered right and, unless the server is to go
     * away, on the site-wide store throughout (a call that fell back to its host's files paces
     * per host, which would show as refusals). @return array{float, float} first start, last end
     */
    private function assertAllRight(array $children, array $asks, bool $siteWide = true): array
    {
        [$first, $last] = [INF, 0.0];
        foreach ($children as $email => $child) {
            $out = self::finish($child, 150);
            $this->assertSame(0, $out['exit'], $out['err']);
            $call = json_decode($out['out'], true, 512, JSON_THROW_ON_ERROR);
            $this->assertSame($asks[$email][1], $call['result'], $email);
            [$first, $last] = [min($first, $call['started']), max($last, $call['started'] + $call['seconds'])];
        }
        if ($siteWide) {
            foreach ($this->hostDirs as $dir) {
                $this->assertSame([], glob("$dir/joinblock-an-*"), "no call fell back to its host's files ($dir)");
            }
        }
        return [$first, $last];
    }

    /** 3 hosts × 3 processes, one API key, each process one cold check at once, strictest limiter. */
    public function testThreeHostsOfThreeProcessesKeepOnePace(): void
    {
        $asks = self::$server->loadPacingMembers(9);
        self::$server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4, 'kind' => 'sliding']);
        [$first, $last] = $this->assertAllRight($this->startHosts(3, 3, $asks), $asks);
        $counts = self::$server->counts();
        // Times are bench/shared_pacing.php's to measure; this shows them.
        fwrite(STDERR, sprintf("\n[3 hosts x 3 processes, site-wide pacing, %s] requests %d, 429s %d, wall %.2f s\n", self::implementation(), $counts['total'], $counts['rejected'], $last - $first));
        $this->assertSame(0, $counts['rejected'], 'no request refused with 429');
    }

    public function testMixedHostsOfExtensionAndPolyfillKeepOnePace(): void
    {
        $asks = self::$server->loadPacingMembers(6);
        self::$server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4, 'kind' => 'sliding']);
        $this->assertAllRight($this->startHosts(3, 2, $asks, static fn (int $i) => $i % 2 === 0 ? 'extension' : 'polyfill'), $asks);
        $this->assertSame(0, self::$server->counts()['rejected'], 'no request refused with 429');
    }

    /** Tag 001..Tag 300, and a member with the first 200 (8 taggings pages). */
    private static function loadMember(): array
    {
        $tags = StandInServer::tagNames(300);
        self::$server->load($tags, [['email' => 'member@example.org', 'tags' => array_slice($tags, 0, 200)]]);
        return $tags;
    }

    /** One call on a host; the requests the server saw for it. */
    private function requestsOf(string $dir, string $tag, ?string $impl = null): array
    {
        self::$server->control('POST', 'counts/reset');
        $out = json_decode(self::runPhpOk(self::call(self::hostArgs($dir, $impl), 'member@example.org', $tag, [], $impl), 120), true, 512, JSON_THROW_ON_ERROR);
        return [$out['result'], self::$server->counts()['total'], $out['status'], $out['seconds']];
    }

    public function testAFreshHostPaysTheWarmFigureAfterAnotherLearned(): void
    {
        $tags = self::loadMember();
        foreach ([[null, null], ['extension', 'polyfill'], ['polyfill', 'extension']] as [$writer, $reader]) {
            self::dropTables();
            [$result, $cold] = $this->requestsOf($this->scratchDir(), $tags[199], $writer);
            $this->assertTrue($result);
            $this->assertGreaterThan(9, $cold, 'the first host is cold');
            // Another host (its own lock directory, no files from the first): the person and
            // the 8 taggings pages, nothing else.
            [$result, $warm, $status] = $this->requestsOf($this->scratchDir(), $tags[199], $reader);
            $this->assertTrue($result);
            $this->assertSame(9, $warm, ($reader ?? 'same implementation') . ' reads what ' . ($writer ?? 'it') . ' learned on another host');
            $this->assertStringStartsWith('site-wide on MySQL server ' . MariaDbServer::USER . '@127.0.0.1:', $status['shared_state']);
        }
        $rows = self::$db->sql('SELECT grp, href, name FROM ' . MariaDbServer::DATABASE . '.joinblock_an_tags');
        $this->assertStringNotContainsString(StandInServer::API_KEY, $rows, 'the key reaches the server only as a hash');
        $this->assertStringNotContainsString('member@example.org', $rows, 'no email reaches the server');
        $create = self::$db->sql('SHOW CREATE TABLE ' . MariaDbServer::DATABASE . '.joinblock_an_tags');
        $this->assertStringContainsString('ENGINE=InnoDB', $create);
        $this->assertStringContainsString('utf8mb4', $create);
    }

    public function testARetryAfterSeenByOneHostHoldsBackTheOthers(): void
    {
        self::$server->load(['Member'], [['email' => 'member@example.org', 'tags' => ['Member']]]);
        self::$server->fault('429-retry-after', '/api/v2/people', 1, ['retry_after' => 2]);
        $one = self::startPhp(self::call(self::hostArgs($this->scratchDir()), 'member@example.org', 'Member', []));
        usleep(500000);
        // Another host, started after the 429: it waits for the rest of the 2 s too.
        [$result, , , $seconds] = $this->requestsOf($this->scratchDir(), 'Member');
        $this->assertTrue($result);
        $this->assertGreaterThan(1.0, $seconds, 'Retry-After applies site-wide');
        $this->assertSame(0, self::finish($one)['exit']);
    }

    public function testAServerRestartedMidRunFailsNoCall(): void
    {
        $asks = self::$server->loadPacingMembers(6);
        self::$server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4, 'kind' => 'bucket']);
        $children = $this->startHosts(3, 2, $asks);
        usleep(1500000);
        self::$db->restart();
        $this->assertAllRight($children, $asks, false);
        // The next call finds the server again.
        $tags = self::loadMember();
        [$result, , $status] = $this->requestsOf($this->scratchDir(), $tags[0]);
        $this->assertTrue($result);
        $this->assertArrayNotHasKey('shared_state', $status['problems']);
        $this->assertGreaterThan(0, (int) self::$db->sql('SELECT COUNT(*) FROM ' . MariaDbServer::DATABASE . '.joinblock_an_tags'));
    }

    public function testAUserWithoutCreateFallsBackToTheHostsFilesAndWarns(): void
    {
        $tags = self::loadMember();
        $password = 'n0-cr3ate:pw';
        self::$db->sql("DROP USER IF EXISTS 'nocreate'@'%'; CREATE USER 'nocreate'@'%' IDENTIFIED BY '$password';"
            . " GRANT SELECT, INSERT, UPDATE, DELETE ON " . MariaDbServer::DATABASE . ".* TO 'nocreate'@'%';");
        $url = sprintf('mysql://nocreate:%s@127.0.0.1:%d/%s', rawurlencode($password), self::$db->port(), MariaDbServer::DATABASE);
        $dir = $this->scratchDir();
        $out = json_decode(self::runPhpOk(self::call(self::hostArgs($dir, null, $url), 'member@example.org', $tags[199], []), 120), true, 512, JSON_THROW_ON_ERROR);
        $this->assertTrue($out['result'], 'the tag check does not fail because of the store');
        $problem = $out['status']['problems']['shared_state'] ?? '';
        $this->assertStringContainsString('CREATE command denied', $problem);
        $this->assertStringContainsString("each host uses this host's lock directory $dir instead", $problem);
        $this->assertNull($out['status']['shared_state']);
        $this->assertStringNotContainsString($password, json_encode($out['status']));
        $this->assertNotSame([], glob("$dir/joinblock-an-*.tags"), "the host's files stood in");
        if (self::implementation() === 'extension') {
            $info = self::runPhpOk([PHP_BINARY, ...self::hostArgs($dir, null, $url), '--ri', 'joinblock']);
            $this->assertMatchesRegularExpression('~shared state warning => the site-wide shared state cannot be used \(.*CREATE command denied~', $info);
            $this->assertStringNotContainsString($password, $info);
        }
    }

    /** @return array<string, array{string, string, bool}> last_slot and blocked_until as SQL, and whether calls still get through */
    public static function clockSteps(): array
    {
        return [
            'last slot an hour ahead (the server clock stepped back)' => ['UTC_TIMESTAMP(6) + INTERVAL 1 HOUR', "'1970-01-02'", true],
            'blocked a day ahead' => ["'1970-01-02'", 'UTC_TIMESTAMP(6) + INTERVAL 1 DAY', false],
            'both a year behind (stepped forward)' => ['UTC_TIMESTAMP(6) - INTERVAL 1 YEAR', 'UTC_TIMESTAMP(6) - INTERVAL 1 YEAR', true],
        ];
    }

    /**
     * A pace row written under another clock of the server's: as for the files, what could not
     * be true now is clamped (a slot at most one interval ahead, a block at most an hour) and
     * rewritten so; one statement per request paced still.
     *
     * @dataProvider clockSteps
     */
    #[DataProvider('clockSteps')]
    public function testAPaceRowFromAnotherClockIsClamped(string $last, string $blocked, bool $through): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        $first = json_decode(self::runPhpOk(self::call(self::hostArgs($dir), 'p@example.org', 'Member', []), 60), true, 512, JSON_THROW_ON_ERROR);
        $this->assertTrue($first['result']);
        $table = MariaDbServer::DATABASE . '.joinblock_an_pace';
        self::$db->sql("UPDATE $table SET last_slot = $last, blocked_until = $blocked");
        $updates = static fn (): int => (int) preg_replace('/\D/', '', self::$db->sql("SHOW GLOBAL STATUS LIKE 'Com_update'"));
        self::$server->control('POST', 'counts/reset');
        $before = $updates();
        $call = json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir()), 'p@example.org', 'Member', ['deadline' => 5, 'tag_cache_ttl' => 0]), 60), true, 512, JSON_THROW_ON_ERROR);
        if ($through) {
            $this->assertTrue($call['result'], 'the call is answered');
            $this->assertLessThan(4, $call['seconds']);
            // A slot per request, plus at most one "ask again then" for the clamped slot.
            $requests = self::$server->counts()['total'];
            $this->assertGreaterThanOrEqual($requests, $updates() - $before);
            $this->assertLessThanOrEqual($requests + 1, $updates() - $before, 'one UPDATE per request paced');
        } else {
            $this->assertStringContainsString('waiting for a request slot under max_rps', $call['result'], 'still held back, for at most an hour');
        }
        $row = self::$db->sql("SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), last_slot) / 1e6, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), blocked_until) FROM $table");
        [$lastAhead, $blockedAhead] = array_map('floatval', preg_split('/\s+/', trim($row)));
        $this->assertLessThanOrEqual(1.0, $lastAhead, 'no slot kept further ahead than one interval');
        $this->assertLessThanOrEqual(3600.0, $blockedAhead, 'no block kept longer than an hour');
    }

    public function testTheSwitchKeepsTheStateInEachHostsFiles(): void
    {
        $tags = self::loadMember();
        $dir = $this->scratchDir();
        $out = json_decode(self::runPhpOk(self::call([...self::hostArgs($dir), '-d', 'joinblock.shared_state_backend=files'], 'member@example.org', $tags[0], []), 120), true);
        $this->assertTrue($out['result']);
        $this->assertSame("this host's lock directory $dir", $out['status']['shared_state']);
        $this->assertSame('', trim(self::$db->sql("SHOW TABLES FROM " . MariaDbServer::DATABASE . " LIKE 'joinblock_an%'")), 'no table made');
    }
}
