<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\Attributes\Group;

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

    private static function dropTables(string $prefix = ''): void
    {
        self::$db->sql('DROP TABLE IF EXISTS ' . MariaDbServer::DATABASE . ".{$prefix}joinblock_an_pace, " . MariaDbServer::DATABASE . ".{$prefix}joinblock_an_tags");
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

    /**
     * 3 hosts × 3 processes, one API key, each process one cold check at once, strictest limiter.
     *
     * @group load
     */
    #[Group('load')]
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

    /** @group load */
    #[Group('load')]
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
    private function requestsOf(string $dir, string $tag, ?string $impl = null, string $email = 'member@example.org'): array
    {
        self::$server->control('POST', 'counts/reset');
        $out = json_decode(self::runPhpOk(self::call(self::hostArgs($dir, $impl), $email, $tag, [], $impl), 120), true, 512, JSON_THROW_ON_ERROR);
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

    /**
     * The other host starts once the first has recorded the 429's block in the pace table (not
     * after a guessed sleep: on a busy machine a process may take a second to start), and its
     * call may not end before that block does.
     */
    public function testARetryAfterSeenByOneHostHoldsBackTheOthers(): void
    {
        self::$server->load(['Member'], [['email' => 'member@example.org', 'tags' => ['Member']]]);
        self::$server->fault('429-retry-after', '/api/v2/people', 1, ['retry_after' => 3]);
        $one = self::startPhp(self::call(self::hostArgs($this->scratchDir()), 'member@example.org', 'Member', []));
        $blockEndsNoSoonerThan = self::blockRecordedSiteWide(60.0);
        $out = json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir()), 'member@example.org', 'Member', []), 120), true, 512, JSON_THROW_ON_ERROR);
        $this->assertTrue($out['result']);
        // 20 ms: the offset's rounding.
        $this->assertGreaterThanOrEqual($blockEndsNoSoonerThan - 0.02, $out['started'] + $out['seconds'], 'Retry-After applies site-wide');
        $this->assertSame(0, self::finish($one)['exit']);
    }

    /**
     * Once the pace table holds a block still ahead, a moment (hrtime, seconds) before which it
     * cannot end: the table holds times of the server's clock, so only the remaining span is read.
     */
    private static function blockRecordedSiteWide(float $limit): float
    {
        $deadline = microtime(true) + $limit;
        $remaining = 'TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), MAX(blocked_until))';
        while (microtime(true) < $deadline) {
            $asked = hrtime(true) / 1e9;
            try {
                $micros = trim(self::$db->sql("SELECT $remaining FROM " . MariaDbServer::DATABASE . '.joinblock_an_pace'));
            } catch (\RuntimeException) {
                $micros = 'the first call has not made the table yet';
            }
            if (is_numeric($micros) && (int) $micros > 0) {
                return $asked + (int) $micros / 1e6;
            }
            usleep(20000);
        }
        self::fail("no block recorded site-wide within {$limit} s");
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

    /** @return array<string, array{string, string, bool}> last_slot and blocked_until as SQL, and whether no writer could have left them */
    public static function paceRows(): array
    {
        return [
            'last slot a day ahead (the server clock stepped back)' => ['UTC_TIMESTAMP(6) + INTERVAL 1 DAY', "'1970-01-02'", true],
            'blocked a day ahead' => ["'1970-01-02'", 'UTC_TIMESTAMP(6) + INTERVAL 1 DAY', true],
            'both in 2099' => ["'2099-01-01'", "'2099-01-01'", true],
            'zero dates' => ["'0000-00-00 00:00:00'", "'0000-00-00 00:00:00'", true],
            'both a year behind (stepped forward)' => ['UTC_TIMESTAMP(6) - INTERVAL 1 YEAR', 'UTC_TIMESTAMP(6) - INTERVAL 1 YEAR', false],
            'a slower caller\'s slot (max_rps 1/30: 30 s ahead)' => ['UTC_TIMESTAMP(6) + INTERVAL 30 SECOND', "'1970-01-02'", false],
        ];
    }

    /**
     * A pace row that no writer could have left (a restore, a migration tool, a hand edit, a
     * clock step of the server's; the default sql_mode takes zero dates) holds nobody back and
     * fails no call: it is taken as absent, rewritten sane by the next slot in the same one
     * statement per request, and shown by the status.
     *
     * @dataProvider paceRows
     */
    #[DataProvider('paceRows')]
    public function testAPaceRowNoWriterCouldLeaveIsRewritten(string $last, string $blocked, bool $bad): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $first = json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir()), 'p@example.org', 'Member', []), 60), true, 512, JSON_THROW_ON_ERROR);
        $this->assertTrue($first['result']);
        $table = MariaDbServer::DATABASE . '.joinblock_an_pace';
        self::$db->sql("SET SESSION sql_mode = ''; UPDATE $table SET last_slot = $last, blocked_until = $blocked WHERE grp <> 'tidy'");
        $updates = static fn (): int => (int) preg_replace('/\D/', '', self::$db->sql("SHOW GLOBAL STATUS LIKE 'Com_update'"));
        self::$server->control('POST', 'counts/reset');
        $before = $updates();
        $dir = $this->scratchDir();
        $call = json_decode(self::runPhpOk(self::call(self::hostArgs($dir), 'p@example.org', 'Member', ['deadline' => 5, 'tag_cache_ttl' => 0]), 60), true, 512, JSON_THROW_ON_ERROR);
        $this->assertTrue($call['result'], 'the call is answered');
        $this->assertLessThan(4, $call['seconds']);
        $requests = self::$server->counts()['total'];
        $this->assertGreaterThanOrEqual($requests, $updates() - $before);
        // Per request one UPDATE (two when woken late), one for the status's probe, one in case the tidy is due: none to repair the row.
        $this->assertLessThanOrEqual(2 * $requests + 2, $updates() - $before, 'one UPDATE per slot taken');
        $row = self::$db->sql("SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), last_slot) / 1e6, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), blocked_until), last_slot >= '1970-01-02' FROM $table WHERE grp <> 'tidy'");
        [$lastAhead, $blockedAhead, $sane] = array_map('floatval', preg_split('/\s+/', trim($row)));
        $this->assertLessThanOrEqual(1.0, $lastAhead, 'no slot kept further ahead than one interval');
        $this->assertLessThanOrEqual(0.0, $blockedAhead, 'no block kept that no Retry-After asked for');
        $this->assertSame(1.0, $sane, 'no zero date left');
        $this->assertSame([], glob("$dir/joinblock-an-*"), "the call did not fall back to its host's files");
        $problem = $call['status']['problems']['shared_state'] ?? null;
        if ($bad) {
            $this->assertStringContainsString('ignored 1 unusable row(s) of the site-wide tables (last: a row of joinblock_an_pace held times no writer could have left', (string) $problem);
        } else {
            $this->assertNull($problem, 'a row from the past is a row as any');
        }
    }

    /** @return array<string, array{string, ?string}> an edit of the member's tag row, and the extension or polyfill that meets it */
    public static function tagRows(): array
    {
        $rows = [
            'learned on a zero date' => "learned = '0000-00-00 00:00:00'",
            'expires on a zero date' => "expires = '0000-00-00 00:00:00'",
            'renamed, learned next year, expiring in 2099 (a poisoned name)' => "name = 'somebody else', learned = UTC_TIMESTAMP(6) + INTERVAL 1 YEAR, expires = '2099-01-01'",
            'renamed, expiring in 2099' => "name = 'somebody else', expires = '2099-01-01'",
            'href edited by hand' => "href = CONCAT(href, 'x'), name = 'somebody else'",
            'href_sha1 in upper case' => 'href_sha1 = UPPER(href_sha1)',
            'an empty name' => "name = ''",
            'another href, learned 30 s ahead and expiring before that' => "href = 'https://example.org/api/v2/tags/other', href_sha1 = SHA1('https://example.org/api/v2/tags/other'),"
                . ' learned = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND, expires = UTC_TIMESTAMP(6) + INTERVAL 10 SECOND',
        ];
        $cases = [];
        foreach ($rows as $what => $edit) {
            foreach (['extension', 'polyfill'] as $impl) {
                $cases["$what, met by the $impl"] = [$edit, $impl];
            }
        }
        return $cases;
    }

    /**
     * A tag row another tool left unusable never fails a call nor gives a wrong answer on any
     * host: it is ignored (the name is learned from Action Network again), counted in the
     * status, and replaced by that call's publish.
     *
     * @dataProvider tagRows
     */
    #[DataProvider('tagRows')]
    public function testABadTagRowIsIgnoredCountedAndReplaced(string $edit, string $impl): void
    {
        if (self::implementation() === 'polyfill' && $impl === 'extension') {
            $this->markTestSkipped('the extension is not loaded in the polyfill run');
        }
        self::$server->load(['Member', 'Other'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $first = json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir(), $impl), 'p@example.org', 'Member', [], $impl), 60), true, 512, JSON_THROW_ON_ERROR);
        $this->assertTrue($first['result']);
        $table = MariaDbServer::DATABASE . '.joinblock_an_tags';
        self::$db->sql("SET SESSION sql_mode = ''; UPDATE $table SET $edit");
        $call = json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir(), $impl), 'p@example.org', 'Member', [], $impl), 60), true, 512, JSON_THROW_ON_ERROR);
        $this->assertTrue($call['result'], 'the right answer, not an error and not false');
        $this->assertStringContainsString('unusable row(s) of the site-wide tables (last: a row of joinblock_an_tags', (string) ($call['status']['problems']['shared_state'] ?? ''));
        $unusable = "SELECT COUNT(*) FROM $table WHERE NOT COALESCE(expires > UTC_TIMESTAMP(6) AND learned BETWEEN '1970-01-02' AND UTC_TIMESTAMP(6) + INTERVAL 1 MINUTE"
            . " AND expires > learned AND expires <= learned + INTERVAL 30 DAY AND CAST(href_sha1 AS BINARY) = CAST(SHA1(href) AS BINARY) AND LENGTH(name) > 0 AND LENGTH(href) > 0, FALSE)";
        $this->assertSame('0', trim(self::$db->sql($unusable)), 'the bad row is gone');
        $this->assertSame('member', trim(self::$db->sql("SELECT name FROM $table")), 'and the right name is shared in its place');
    }

    /**
     * The private server is latin1, as most sites' are, so a client that does not set
     * its charset stores and reads mojibake. Extension and polyfill, learning and asking in
     * turn on different hosts, agree on names beyond ASCII and latin1.
     */
    public function testExtensionAndPolyfillAgreeOnNonAsciiNamesOnALatin1Server(): void
    {
        $this->assertSame('latin1', trim(self::$db->sql('SELECT @@character_set_server')), 'the server is as many sites have it');
        if (self::implementation() === 'polyfill') {
            $this->markTestSkipped('mixes both implementations: runs in the extension run');
        }
        $names = ['member 🎉', 'σίσυφος', 'Ünïcødé'];
        self::$server->load([...$names, 'Other'], [['email' => 'p@example.org', 'tags' => $names]]);
        foreach ([['extension', 'polyfill'], ['polyfill', 'extension']] as [$writer, $reader]) {
            self::dropTables();
            // The writer reads the whole tag list (the one name not held), so every name is shared.
            $this->assertFalse($this->requestsOf($this->scratchDir(), 'Other', $writer, 'p@example.org')[0]);
            foreach ($names as $name) {
                [$result, $requests] = $this->requestsOf($this->scratchDir(), $name, $reader, 'p@example.org');
                $this->assertTrue($result, "$reader reads \"$name\" as $writer wrote it");
                $this->assertLessThanOrEqual(2, $requests, 'from the shared map: the person and the taggings page');
            }
        }
        $stored = explode("\n", trim(self::$db->sql('SELECT LOWER(HEX(name)) FROM ' . MariaDbServer::DATABASE . '.joinblock_an_tags')));
        $this->assertContains(bin2hex('member 🎉'), $stored, 'stored as UTF-8');
    }

    /**
     * A server that stops answering (SIGSTOP on mariadbd) while a worker's connection is open:
     * the call ends within its deadline plus 0.5 s, says the database was the cause, and once
     * the server runs again none of its statements runs on there.
     */
    public function testAStoppedServerDoesNotStretchTheDeadline(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        $call = static fn (string $tag, array $options): string => 'try { $r = joinblock_person_has_tag("p@example.org", ' . var_export($tag, true) . ', '
            . var_export(StandInServer::API_KEY, true) . ', ' . var_export($options + ['base_url' => self::$server->baseUrl()], true)
            . '); } catch (Throwable $e) { $r = get_class($e) . ": " . $e->getMessage(); }';
        $require = self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
        $code = $require . $call('Member', []) . ' touch("' . $dir . '/ready"); while (!file_exists("' . $dir . '/go")) usleep(5000);'
            . ' $t = hrtime(true); ' . $call('Member', ['deadline' => 2, 'tag_cache_ttl' => 0]) . ' echo json_encode(["result" => $r, "seconds" => (hrtime(true) - $t) / 1e9]);';
        $child = self::startPhp([PHP_BINARY, ...self::hostArgs($dir), '-r', $code]);
        $deadline = microtime(true) + 60;
        while (!file_exists("$dir/ready") && microtime(true) < $deadline) {
            usleep(10000);
        }
        self::$db->pause();
        try {
            touch("$dir/go");
            $out = self::finish($child, 30);
        } finally {
            self::$db->resume();
        }
        $this->assertSame(0, $out['exit'], $out['err']);
        $result = json_decode($out['out'], true, 512, JSON_THROW_ON_ERROR);
        $this->assertLessThan(2.5, $result['seconds'], 'within the deadline plus 0.5 s');
        $this->assertIsString($result['result']);
        $this->assertStringContainsString('ActionNetworkException: ', $result['result']);
        $this->assertMatchesRegularExpression('~MySQL server .* did not answer within~', $result['result'], 'the database is named as the cause');
        sleep(1);
        $running = self::$db->sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '" . MariaDbServer::USER . "' AND COMMAND <> 'Sleep'");
        $this->assertSame('0', trim($running), 'no statement of the call runs on');
    }

    /**
     * A pace row locked by another session (a stuck transaction of some other tool): the call's
     * UPDATE gives up within a second on the server, the call goes on with the host's files and
     * is answered, and no statement of it stays behind on the server.
     */
    public function testARowLockHeldElsewhereEndsOnTheServerToo(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $this->assertTrue(json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir()), 'p@example.org', 'Member', []), 60), true)['result']);
        $holder = self::$db->holdRowLocks('SELECT * FROM ' . MariaDbServer::DATABASE . '.joinblock_an_pace FOR UPDATE');
        try {
            $call = json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir()), 'p@example.org', 'Member', ['deadline' => 10, 'tag_cache_ttl' => 0]), 60), true, 512, JSON_THROW_ON_ERROR);
            $this->assertTrue($call['result']);
            $this->assertStringContainsString('Lock wait timeout exceeded', (string) ($call['status']['problems']['shared_state'] ?? ''), 'the fallback and its reason are shown');
            usleep(200000);
            $waiting = self::$db->sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '" . MariaDbServer::USER . "' AND COMMAND <> 'Sleep'");
            $this->assertSame('0', trim($waiting), 'no UPDATE of the call waits on after it');
        } finally {
            $holder();
        }
    }

    /** @return array<string, array{string}> */
    public static function unusableStores(): array
    {
        return ['a user with SELECT only' => ['select-only'], 'a read-only server' => ['read-only']];
    }

    /**
     * Status tells the truth: a store this process could not take a slot on nor publish to is a
     * problem, whether or not its rows can be counted.
     *
     * @dataProvider unusableStores
     */
    #[DataProvider('unusableStores')]
    public function testStatusShowsAStoreThatCannotBeWritten(string $how): void
    {
        $tags = self::loadMember();
        $this->assertTrue($this->requestsOf($this->scratchDir(), $tags[0])[0], 'the tables exist and hold rows');
        $url = null;
        if ($how === 'select-only') {
            self::$db->sql("DROP USER IF EXISTS 'reader'@'%'; CREATE USER 'reader'@'%' IDENTIFIED BY 'r3ad:only'; GRANT SELECT ON " . MariaDbServer::DATABASE . ".* TO 'reader'@'%';");
            $url = sprintf('mysql://reader:%s@127.0.0.1:%d/%s', rawurlencode('r3ad:only'), self::$db->port(), MariaDbServer::DATABASE);
        } else {
            self::$db->sql('SET GLOBAL read_only = 1');
        }
        try {
            $code = (self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '') . 'echo json_encode(joinblock_status());';
            $status = json_decode(self::runPhpOk([PHP_BINARY, ...self::hostArgs($this->scratchDir(), null, $url), '-r', $code]), true, 512, JSON_THROW_ON_ERROR);
        } finally {
            self::$db->sql('SET GLOBAL read_only = 0');
        }
        $this->assertNull($status['shared_state'], 'not reported as in effect');
        $this->assertMatchesRegularExpression($how === 'select-only' ? '~UPDATE command denied~' : '~read-only~', $status['problems']['shared_state'] ?? '');
        $this->assertStringNotContainsString('r3ad:only', json_encode($status));
    }

    /**
     * The tables carry the site's table prefix, so that tools that back up, move or remove a
     * site's tables by prefix take them too: from INI (an ini-only set-up) and from
     * joinblock_configure(), as WordPress passes $wpdb->prefix; a prefix no table name can
     * start with is refused, not quoted into SQL.
     */
    public function testTheTablesTakeTheSitesPrefix(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $tables = static fn (): string => trim(self::$db->sql('SHOW TABLES FROM ' . MariaDbServer::DATABASE . " LIKE '%joinblock_an%'"));
        try {
            $out = json_decode(self::runPhpOk(self::call([...self::hostArgs($this->scratchDir()), '-d', 'joinblock.table_prefix=wp_'], 'p@example.org', 'Member', []), 60), true, 512, JSON_THROW_ON_ERROR);
            $this->assertTrue($out['result']);
            $this->assertStringContainsString(', tables wp_joinblock_an_pace and wp_joinblock_an_tags (about ', (string) $out['status']['shared_state']);
            $this->assertSame("wp_joinblock_an_pace\nwp_joinblock_an_tags", $tables(), 'only the prefixed tables');

            $require = self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
            $check = 'joinblock_person_has_tag("p@example.org", "Member", ' . var_export(StandInServer::API_KEY, true) . ', ["base_url" => ' . var_export(self::$server->baseUrl(), true) . '])';
            $code = $require . 'joinblock_configure(["table_prefix" => "site2_"]); var_dump(' . $check . ');'
                . ' try { joinblock_configure(["table_prefix" => "wp-2; DROP TABLE x"]); } catch (ValueError $e) { echo $e->getMessage(), "\n"; }';
            $out = self::runPhpOk([PHP_BINARY, ...self::hostArgs($this->scratchDir()), '-r', $code], 60);
            $this->assertStringStartsWith("bool(true)\n", $out);
            $this->assertMatchesRegularExpression('~^joinblock_configure\(\): Argument #1 \(\$settings\).*table_prefix.* is "wp-2; DROP TABLE x"; expected at most 40 letters, digits and underscores, such as wp_$~m', $out);
            $this->assertSame("site2_joinblock_an_pace\nsite2_joinblock_an_tags\nwp_joinblock_an_pace\nwp_joinblock_an_tags", $tables());

            $out = self::runPhpOk([PHP_BINARY, ...self::hostArgs($this->scratchDir()), '-d', 'joinblock.table_prefix=wp-x', '-r', $require
                . 'try { ' . $check . '; } catch (ValueError $e) { echo get_class($e), ": ", $e->getMessage(); }'], 60);
            $this->assertSame('ValueError: joinblock_person_has_tag(): INI joinblock.table_prefix is "wp-x"; expected at most 40 letters, digits and underscores, such as wp_', $out);
        } finally {
            self::dropTables('wp_');
            self::dropTables('site2_');
        }
    }

    /**
     * Bounded without anyone's care: 4 groups nobody uses any more (4096 expired tag rows, one
     * tidy's worth, and a pace row idle for two days each) are removed by another group's ordinary tag checks,
     * at most one group's worth per minute site-wide (the test lets each minute pass by
     * ageing the tidy row), and the status reads no table through meanwhile.
     */
    public function testRowsOfIdleGroupsAreRemovedByAnyGroupsTraffic(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        $check = fn () => $this->assertTrue(json_decode(self::runPhpOk(self::call(self::hostArgs($dir), 'p@example.org', 'Member', ['tag_cache_ttl' => 600]), 60), true, 512, JSON_THROW_ON_ERROR)['result']);
        $check();
        $db = MariaDbServer::DATABASE;
        self::$db->sql("USE $db; INSERT INTO joinblock_an_tags SELECT SHA1(CONCAT('gone ', g.seq)), SHA1(CONCAT('h', g.seq, ' ', t.seq)), CONCAT('h', g.seq, ' ', t.seq), 'tag',"
            . ' UTC_TIMESTAMP(6) - INTERVAL 40 DAY, UTC_TIMESTAMP(6) - INTERVAL 10 DAY FROM seq_1_to_4 g, seq_1_to_4096 t;'
            . " INSERT INTO joinblock_an_pace SELECT SHA1(CONCAT('gone ', seq)), UTC_TIMESTAMP(6) - INTERVAL 2 DAY, UTC_TIMESTAMP(6) - INTERVAL 2 DAY FROM seq_1_to_4;"
            . ' ANALYZE TABLE joinblock_an_tags, joinblock_an_pace;');
        $gone = static fn (string $table): int => (int) self::$db->sql("SELECT COUNT(*) FROM $db.$table WHERE grp IN (SELECT CONVERT(SHA1(CONCAT('gone ', seq)) USING ascii) FROM $db.seq_1_to_4)");
        $this->assertSame(4 * 4096, $gone('joinblock_an_tags'));

        $rowsRead = static fn (): int => (int) preg_replace('/\D/', '', self::$db->sql("SHOW GLOBAL STATUS LIKE 'Innodb_rows_read'"));
        $before = $rowsRead();
        $code = (self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '') . 'echo json_encode(joinblock_status());';
        $status = json_decode(self::runPhpOk([PHP_BINARY, ...self::hostArgs($this->scratchDir()), '-r', $code]), true, 512, JSON_THROW_ON_ERROR);
        $this->assertLessThan(1000, $rowsRead() - $before, 'the status counts without reading the rows');
        $this->assertMatchesRegularExpression('~\(about \d{4,} tag map entries\)~', (string) $status['shared_state'], 'the estimate is there');

        $ageTidyRow = static fn () => self::$db->sql("UPDATE $db.joinblock_an_pace SET last_slot = UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE WHERE grp = 'tidy'");
        $ageTidyRow();
        $check();
        $left = $gone('joinblock_an_tags');
        $this->assertSame(3 * 4096, $left, 'one tidy removes one group\'s worth, no more');
        $check();
        $this->assertSame($left, $gone('joinblock_an_tags'), 'once per minute site-wide');
        // The tidy row lost to a restore or a hand edit, or left in the future by a clock
        // stepped back: the next call's tidy makes or claims it.
        foreach (["DELETE FROM $db.joinblock_an_pace WHERE grp = 'tidy'", "UPDATE $db.joinblock_an_pace SET last_slot = '2099-01-01' WHERE grp = 'tidy'"] as $edit) {
            self::$db->sql($edit);
            $check();
            $this->assertSame($left - 4096, $gone('joinblock_an_tags'), $edit);
            $left -= 4096;
        }
        for ($minute = 0; $minute < 4 && $gone('joinblock_an_tags') > 0; $minute++) {
            $ageTidyRow();
            $check();
        }
        $this->assertSame(0, $gone('joinblock_an_tags'), 'the idle groups\' tag rows are gone');
        $this->assertSame(0, $gone('joinblock_an_pace'), 'and their pace rows');
        $this->assertSame('1', trim(self::$db->sql("SELECT COUNT(*) FROM $db.joinblock_an_tags")), 'the active group keeps its map');
    }

    /**
     * A table lock held by another session (an ALTER or a LOCK TABLES of some tool): the
     * statement gives up after 1 s on the server (lock_wait_timeout), not at the call's
     * deadline, and the call goes on with the host's files.
     */
    public function testATableLockHeldElsewhereEndsWithinASecond(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $this->assertTrue(json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir()), 'p@example.org', 'Member', []), 60), true)['result']);
        $holder = self::$db->holdRowLocks('LOCK TABLES ' . MariaDbServer::DATABASE . '.joinblock_an_pace WRITE');
        try {
            $call = json_decode(self::runPhpOk(self::call(self::hostArgs($this->scratchDir()), 'p@example.org', 'Member', ['deadline' => 10, 'tag_cache_ttl' => 0]), 60), true, 512, JSON_THROW_ON_ERROR);
            $this->assertTrue($call['result']);
            $this->assertStringContainsString('Lock wait timeout exceeded', (string) ($call['status']['problems']['shared_state'] ?? ''), 'ended by the lock wait, not the statement time');
            $this->assertLessThan(2.5, $call['seconds'], 'a second\'s wait, not the connect timeout\'s 3');
        } finally {
            $holder();
        }
    }

    /**
     * A process woken late (a busy machine; here stopped with SIGSTOP through five waits) asks
     * for a new slot once per request, then sends: each request costs at most two UPDATEs, so
     * a machine that cannot wake in time does not chase slots until the deadline.
     */
    public function testAProcessWokenLateAsksForANewSlotOncePerRequest(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        $this->assertTrue(json_decode(self::runPhpOk(self::call(self::hostArgs($dir), 'p@example.org', 'Member', []), 60), true)['result']);
        $pace = MariaDbServer::DATABASE . '.joinblock_an_pace';
        // Tidied a moment ago: the call's tidy check at its end reads and changes nothing.
        self::$db->sql("UPDATE $pace SET last_slot = UTC_TIMESTAMP(6) WHERE grp = 'tidy'");
        $require = self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
        $code = $require . 'touch("' . $dir . '/ready"); while (!file_exists("' . $dir . '/go")) usleep(2000);'
            . ' var_dump(joinblock_person_has_tag("p@example.org", "Member", ' . var_export(StandInServer::API_KEY, true) . ', '
            . var_export(['base_url' => self::$server->baseUrl(), 'max_rps' => 0.5, 'tag_cache_ttl' => 0, 'deadline' => 30], true) . '));';
        $child = self::startPhp([PHP_BINARY, ...self::hostArgs($dir), '-r', $code]);
        $pid = proc_get_status($child['proc'])['pid'];
        $deadline = microtime(true) + 60;
        while (!file_exists("$dir/ready") && microtime(true) < $deadline) {
            usleep(10000);
        }
        $updates = static fn (): int => (int) preg_replace('/\D/', '', self::$db->sql("SHOW GLOBAL STATUS LIKE 'Com_update'"));
        self::$server->control('POST', 'counts/reset');
        // Every slot is 2.2 s after the last: the first request waits 2.2 s from now.
        self::$db->sql("UPDATE $pace SET last_slot = UTC_TIMESTAMP(6) WHERE grp <> 'tidy'");
        $before = $updates();
        $go = microtime(true);
        touch("$dir/go");
        // Stopped through five waits in a row, each time woken 0.4 to 0.7 s past the slot: asking
        // on each time, the first request alone would take six slots.
        foreach ([[0.3, 2.9], [3.2, 5.0], [5.3, 7.2], [7.5, 9.4], [9.7, 11.6]] as [$stop, $resume]) {
            usleep((int) max(0, ($go + $stop - microtime(true)) * 1e6));
            posix_kill($pid, SIGSTOP);
            usleep((int) max(0, ($go + $resume - microtime(true)) * 1e6));
            posix_kill($pid, SIGCONT);
        }
        $out = self::finish($child, 60);
        $this->assertSame("bool(true)\n", $out['out'], $out['err']);
        $requests = self::$server->counts()['total'];
        $this->assertLessThanOrEqual(2 * $requests, $updates() - $before, "at most one new slot per request ($requests requests)");
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
