<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\Attributes\Group;

/**
 * The host's shared state of joinblock_person_has_tag (docs/configuration.md, "The host's shared state"): a
 * tag map and a request pace that every PHP process of the host shares through files in the
 * lock directory, and the store's refusal of files it cannot trust.
 */
final class SharedStateTest extends JoinBlockTestCase
{
    private static StandInServer $server;

    public static function setUpBeforeClass(): void
    {
        self::$server = StandInServer::start();
    }

    public static function tearDownAfterClass(): void
    {
        self::$server->stop();
    }

    protected function setUp(): void
    {
        self::$server->control('POST', 'rate_limit', ['rps' => null]);
    }

    /** PHP arguments for a process whose lock directory (and so store) is `$dir`. */
    private static function argsFor(string $dir, bool $shared = true): array
    {
        return [...self::phpArgs(), '-d', "joinblock.lock_dir=$dir", '-d', 'joinblock.shared_state=' . ($shared ? '1' : '0')];
    }

    /** @param list<array{string, string}|array{string, string, array}> $calls */
    private static function command(string $dir, array $calls, bool $shared = true): array
    {
        $calls = array_map(fn ($c) => [$c[0], $c[1], StandInServer::API_KEY, ($c[2] ?? []) + ['base_url' => self::$server->baseUrl(), 'max_rps' => 1000]], $calls);
        $control = 'http://127.0.0.1:' . self::$server->port() . '/_control';
        return [PHP_BINARY, ...self::argsFor($dir, $shared), self::fixture('tag_checks.php'), $control, json_encode($calls)];
    }

    /** One call in a fresh process that leaves the server's counters alone; prints result, started, seconds. */
    private static function inline(string $dir, string $email, string $tag, array $options): array
    {
        $options += ['base_url' => self::$server->baseUrl()];
        $require = self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
        $code = $require . '$t = hrtime(true); $r = joinblock_person_has_tag(' . var_export($email, true) . ', ' . var_export($tag, true) . ', '
            . var_export(StandInServer::API_KEY, true) . ', ' . var_export($options, true) . ');'
            . ' echo json_encode(["result" => $r, "started" => $t / 1e9, "seconds" => (hrtime(true) - $t) / 1e9]);';
        return [PHP_BINARY, ...self::argsFor($dir), '-r', $code];
    }

    private static function runCalls(string $dir, array $calls, bool $shared = true): array
    {
        return json_decode(self::runPhpOk(self::command($dir, $calls, $shared), 120), true, 512, JSON_THROW_ON_ERROR);
    }

    /** Tag 001..Tag 300, and a member with the first 200 (8 taggings pages). */
    private static function loadMember(): array
    {
        $tags = StandInServer::tagNames(300);
        self::$server->load($tags, [['email' => 'member@example.org', 'tags' => array_slice($tags, 0, 200)]]);
        return $tags;
    }

    public function testAFreshProcessStartsWarmFromWhatAnotherLearned(): void
    {
        $tags = self::loadMember();
        $dir = $this->scratchDir();
        // Without the store, a fresh process pays the cold price again.
        [$alone] = self::runCalls($dir, [['member@example.org', $tags[199]]], false);
        $this->assertTrue($alone['result']);
        $this->assertGreaterThan(9, $alone['requests'], 'cold without the store');

        [$first] = self::runCalls($dir, [['member@example.org', $tags[199]]]);
        $this->assertTrue($first['result']);
        $this->assertGreaterThan(9, $first['requests'], 'the first process of the host is cold');
        // Another fresh process: the person and the 8 taggings pages, nothing else.
        [$fresh] = self::runCalls($dir, [['member@example.org', $tags[199]]]);
        $this->assertTrue($fresh['result']);
        $this->assertSame(9, $fresh['requests'], 'a fresh process reads the names the first published');
        [$absent] = self::runCalls($dir, [['member@example.org', $tags[299]]]);
        $this->assertFalse($absent['result']);
        $this->assertSame(9, $absent['requests']);

        $files = glob("$dir/joinblock-an-*");
        $this->assertCount(2, $files, 'one pace file and one tags file for the group');
        foreach ($files as $file) {
            $this->assertSame(0600, fileperms($file) & 0777, $file);
            $body = file_get_contents($file);
            $this->assertStringNotContainsString(StandInServer::API_KEY, $body, 'the key reaches the disk only as a hash');
            $this->assertStringNotContainsString('member@example.org', $body, 'no email reaches the disk');
        }
    }

    public function testExtensionAndPolyfillReadEachOthersMap(): void
    {
        $tags = self::loadMember();
        $control = 'http://127.0.0.1:' . self::$server->port() . '/_control';
        foreach ([['extension', 'polyfill'], ['polyfill', 'extension']] as [$writer, $reader]) {
            $dir = $this->scratchDir();
            $calls = json_encode([['member@example.org', $tags[199], StandInServer::API_KEY, ['base_url' => self::$server->baseUrl(), 'max_rps' => 1000]]]);
            $run = fn (string $impl) => json_decode(self::runPhpOk([PHP_BINARY, ...self::phpArgs($impl), '-d', "joinblock.lock_dir=$dir", self::fixture('tag_checks.php'), $control, $calls], 120), true)[0];
            $this->assertGreaterThan(9, $run($writer)['requests'], "$writer, cold");
            $warm = $run($reader);
            $this->assertTrue($warm['result']);
            $this->assertSame(9, $warm['requests'], "$reader reads what $writer published");
        }
    }

    /** @return array<string, array{string}> how the stand-in counts Action Network's 4 requests a second */
    public static function rateLimits(): array
    {
        return [
            'token bucket of 4' => ['bucket'],
            'fixed 1-second windows, refused requests counted' => ['fixed'],
            'any 1-second span, refused requests counted (the strictest reading)' => ['sliding'],
        ];
    }

    /**
     * Pacing keeps headroom under max_rps, so that a process waking late from its pacing sleep
     * does not bring the host over a strict server's limit: no request refused, however the
     * server counts.
     *
     * @dataProvider rateLimits
     * @group load
     */
    #[DataProvider('rateLimits')]
    #[Group('load')]
    public function testEightProcessesTogetherKeepTheHostWideLimit(string $limiter): void
    {
        $asks = self::$server->loadPacingMembers();
        self::$server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4, 'kind' => $limiter]);
        $dir = $this->scratchDir();
        $children = [];
        foreach ($asks as $email => [$tag]) {
            $children[$email] = self::startPhp(self::inline($dir, $email, $tag, ['max_rps' => 4, 'deadline' => 60]));
        }
        [$first, $last] = [INF, 0.0];
        foreach ($children as $email => $child) {
            $out = self::finish($child, 120);
            $this->assertSame(0, $out['exit'], $out['err']);
            $call = json_decode($out['out'], true, 512, JSON_THROW_ON_ERROR);
            $this->assertSame($asks[$email][1], $call['result'] ?? $call, $email);
            [$first, $last] = [min($first, $call['started']), max($last, $call['started'] + $call['seconds'])];
        }
        $counts = self::$server->counts();
        // Times are bench/shared_pacing.php's to measure; this shows them.
        fwrite(STDERR, sprintf("\n[8 processes, host-wide pacing, %s, %s limiter] requests %d, 429s %d, wall %.2f s\n", self::implementation(), $limiter, $counts['total'], $counts['rejected'], $last - $first));
        $this->assertSame(0, $counts['rejected'], 'no request refused with 429');
    }

    /**
     * The other process starts once the first has recorded the 429's block (read from the pace
     * file, not guessed with a sleep: on a busy machine a process may take a second to start),
     * and its call may not end before that block does.
     */
    public function testA429SeenByOneProcessHoldsBackTheOthers(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        self::$server->fault('429-retry-after', '/api/v2/people', 1, ['retry_after' => 3]);
        $one = self::startPhp(self::command($dir, [['p@example.org', 'Member']]));
        $blockedUntil = self::blockRecordedIn($dir, 60.0);
        // hrtime (the child's clock) to microtime (the pace file's): one offset for both processes.
        $wallMinusMonotonic = microtime(true) - hrtime(true) / 1e9;
        $this->assertLessThan($blockedUntil, microtime(true), 'the other process starts while the block lasts');
        [$other] = self::runCalls($dir, [['p@example.org', 'Member']]);
        $this->assertTrue($other['result']);
        $otherEnded = $other['started'] + $other['seconds'] + $wallMinusMonotonic;
        // 20 ms: the two clocks read a moment apart, and the offset's rounding.
        $this->assertGreaterThanOrEqual($blockedUntil - 0.02, $otherEnded, 'Retry-After applies host-wide');
        $this->assertSame(0, self::finish($one)['exit']);
    }

    /** The `blocked` time of the pace file in `$dir` once it lies ahead (a 429 was recorded). */
    private static function blockRecordedIn(string $dir, float $limit): float
    {
        $deadline = microtime(true) + $limit;
        while (microtime(true) < $deadline) {
            foreach (glob("$dir/joinblock-an-*.pace") as $paceFile) {
                $fields = explode(' ', trim((string) @file_get_contents($paceFile)));
                if (count($fields) === 4 && (float) $fields[3] > microtime(true)) {
                    return (float) $fields[3];
                }
            }
            usleep(10000);
        }
        self::fail("no block recorded in $dir within {$limit} s");
    }

    /** @return array<string, array{float, float, bool}> last and blocked relative to now, and whether calls still get through */
    public static function clockSteps(): array
    {
        $year = 365 * 86400.0;
        return [
            'last an hour ahead (clock stepped back)' => [3600.0, 0.0, true],
            'blocked a day ahead' => [0.0, 86400.0, false],
            'both a year behind (clock stepped forward)' => [-$year, -$year, true],
        ];
    }

    /**
     * A pace file written under another clock: what could not be true now is clamped (a slot
     * at most one interval ahead, a block at most the longest Retry-After honoured, an hour),
     * and rewritten so.
     *
     * @dataProvider clockSteps
     */
    #[DataProvider('clockSteps')]
    public function testAPaceFileFromAnotherClockIsClamped(float $last, float $blocked, bool $through): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        self::runCalls($dir, [['p@example.org', 'Member']]);
        [$paceFile] = glob("$dir/joinblock-an-*.pace");
        $now = microtime(true);
        file_put_contents($paceFile, sprintf("joinblock-pace 1 %.6F %.6F\n", $now + $last, $now + $blocked));
        touch($paceFile, (int) ($now + max($last, $blocked)));
        [$call] = self::runCalls($dir, [['p@example.org', 'Member', ['deadline' => 5, 'tag_cache_ttl' => 0]]]);
        if ($through) {
            $this->assertTrue($call['result'] ?? $call['message'], 'the call is answered');
            $this->assertLessThan(4, $call['seconds']);
        } else {
            $this->assertSame('JoinBlock\\ActionNetworkException', $call['exception'] ?? null, 'still held back, for at most an hour');
            $this->assertStringContainsString('waiting for a request slot under max_rps', $call['message']);
        }
        $this->assertMatchesRegularExpression('/\Ajoinblock-pace 1 (\S+) (\S+)\n\z/', file_get_contents($paceFile));
        [, $lastNow, $blockedNow] = explode(' ', trim(substr(file_get_contents($paceFile), \strlen('joinblock-pace '))));
        $later = microtime(true);
        $this->assertLessThanOrEqual($later + 1, (float) $lastNow, 'no slot kept further ahead than one interval (1 ms at max_rps 1000)');
        $this->assertLessThanOrEqual($later + 3600, (float) $blockedNow, 'no block kept longer than an hour');
    }

    /**
     * Temporary files left by publishers killed mid-write (the extension's and the polyfill's
     * names) are removed by the next publish once older than a minute; a fresh one is not.
     */
    public function testAPublishRemovesTemporaryFilesLeftByKilledPublishers(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        self::runCalls($dir, [['p@example.org', 'Member']]);
        [$tagsFile] = glob("$dir/joinblock-an-*.tags");
        $prefix = $dir . '/.' . basename($tagsFile) . '.';
        foreach (["{$prefix}4242.tmp", "{$prefix}Xy12Ab"] as $leftover) {
            file_put_contents($leftover, '{"format":"joinblock-tags 1","gro');
            touch($leftover, time() - 3600);
        }
        file_put_contents("{$prefix}4343.tmp", '{');
        [$call] = self::runCalls($dir, [['p@example.org', 'Member', ['tag_cache_ttl' => 0.001]]]);
        $this->assertTrue($call['result'] ?? $call['message']);
        $this->assertSame(["{$prefix}4343.tmp"], glob("$dir/.joinblock-an-*"), 'the old leftovers are gone, the fresh one stays');
    }

    /**
     * Another process holds the pace file's lock and does not let go (stopped, swapped out, on
     * a hung filesystem): a tag check does not wait for it past a short patience, and is
     * answered within its deadline with per-process pacing, as with no store.
     */
    public function testAStalledHolderOfThePaceFileDoesNotHoldACheckPastItsDeadline(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        self::runCalls($dir, [['p@example.org', 'Member']]);
        [$paceFile] = glob("$dir/joinblock-an-*.pace");
        $holder = self::startPhp([PHP_BINARY, '-n', '-r', '$h = fopen($argv[1], "r+"); flock($h, LOCK_EX); echo "held\n"; sleep(8);', $paceFile]);
        $this->assertSame("held\n", fgets($holder['pipes'][1]), 'the holder has the lock');
        try {
            $call = json_decode(self::runPhpOk(self::inline($dir, 'p@example.org', 'Member', ['deadline' => 2, 'tag_cache_ttl' => 0]), 30), true, 512, JSON_THROW_ON_ERROR);
            $this->assertTrue($call['result'], 'answered without the store');
            $this->assertLessThan(2.0, $call['seconds'], 'within the deadline, not when the holder lets go');
        } finally {
            proc_terminate($holder['proc'], 9);
            self::finish($holder);
        }
    }

    /** @return array<string, array{string}> */
    public static function spoiledFiles(): array
    {
        return ['truncated' => ['truncated'], 'garbage' => ['garbage'], 'foreign owner' => ['foreign'], 'symlink' => ['symlink']];
    }

    /** @dataProvider spoiledFiles */
    #[DataProvider('spoiledFiles')]
    public function testAFileThatCannotBeTrustedIsIgnored(string $how): void
    {
        $tags = self::loadMember();
        $dir = $this->scratchDir(0755);
        self::runCalls($dir, [['member@example.org', $tags[199]]]);
        [$tagsFile] = glob("$dir/joinblock-an-*.tags");
        [$paceFile] = glob("$dir/joinblock-an-*.pace");
        $good = file_get_contents($tagsFile);
        $victim = "$dir/victim";
        file_put_contents($victim, 'untouched');
        // Each spoils the tags file so that trusting it would answer wrong: "Tag 300" named as
        // a tag the member has.
        $lie = str_replace('"tag 200"', '"tag 300"', $good);
        $this->assertNotSame($good, $lie);
        switch ($how) {
            case 'truncated':
                file_put_contents($tagsFile, substr($lie, 0, (int) (\strlen($lie) / 2)));
                break;
            case 'garbage':
                file_put_contents($tagsFile, random_bytes(4000));
                break;
            case 'foreign':
                file_put_contents($tagsFile, $lie);
                chown($tagsFile, 'nobody');
                chown($paceFile, 'nobody');
                break;
            case 'symlink':
                file_put_contents($victim, $lie);
                unlink($tagsFile);
                unlink($paceFile);
                symlink($victim, $tagsFile);
                symlink($victim, $paceFile);
                break;
        }
        $victimBefore = file_get_contents($victim);
        // php --ri (the extension) names the file it ignores.
        if (self::implementation() === 'extension') {
            $info = self::runPhpOk([PHP_BINARY, ...self::argsFor($dir), '--ri', 'joinblock']);
            $this->assertStringContainsString("shared state (tag map, pacing) => $dir", $info);
            $this->assertMatchesRegularExpression('~shared state warning => ' . preg_quote($tagsFile, '~') . ': ~', $info);
            $this->assertStringContainsString('shared tag map entries => 0 in 0 group(s)', $info);
        }
        [$call] = self::runCalls($dir, [['member@example.org', $tags[299]]]);
        $this->assertFalse($call['result'], 'the spoiled file was not trusted');
        $this->assertSame($victimBefore, file_get_contents($victim), 'no symlink followed');
        if ($how === 'symlink' || $how === 'foreign') {
            $this->assertGreaterThan(9, $call['requests'], 'the spoiled file was not read');
        }
    }

    public function testPhpRiShowsTheStoreAndTheSwitchTurnsItOff(): void
    {
        self::extensionOnly('php --ri shows the extension');
        $tags = self::loadMember();
        $dir = $this->scratchDir();
        self::runCalls($dir, [['member@example.org', $tags[10]]]);
        $info = self::runPhpOk([PHP_BINARY, ...self::argsFor($dir), '--ri', 'joinblock']);
        $this->assertStringContainsString("shared state (tag map, pacing) => $dir", $info);
        $this->assertMatchesRegularExpression('~shared tag map entries => [1-9][0-9]* in 1 group~', $info);
        $off = self::runPhpOk([PHP_BINARY, ...self::argsFor($dir, false), '--ri', 'joinblock']);
        $this->assertStringContainsString('shared state (tag map, pacing) => off', $off);
        $other = $this->scratchDir();
        self::runCalls($other, [['member@example.org', $tags[10]]], false);
        $this->assertSame([], glob("$other/joinblock-an-*"), 'nothing written with joinblock.shared_state = 0');
    }

    public function testFourWritersRacingLeaveAWholeFile(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        $dir = $this->scratchDir();
        // A tiny tag_cache_ttl makes every call learn, and so publish, again: 250 calls each.
        $code = '$n = 0; for ($i = 0; $i < 250; $i++) { $n += joinblock_person_has_tag("p@example.org", "Member", '
            . var_export(StandInServer::API_KEY, true) . ', ["base_url" => ' . var_export(self::$server->baseUrl(), true)
            . ', "max_rps" => 100000, "tag_cache_ttl" => 0.001]) === true ? 1 : 0; } echo $n;';
        $require = self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
        $children = [];
        for ($w = 0; $w < 4; $w++) {
            $children[] = self::startPhp([PHP_BINARY, ...self::argsFor($dir), '-r', $require . $code]);
        }
        foreach ($children as $child) {
            $out = self::finish($child, 120);
            $this->assertSame(0, $out['exit'], $out['err']);
            $this->assertSame('', $out['err']);
            $this->assertSame('250', $out['out'], 'every answer right');
        }
        [$tagsFile] = glob("$dir/joinblock-an-*.tags");
        $doc = json_decode(file_get_contents($tagsFile), true, 512, JSON_THROW_ON_ERROR);
        $this->assertSame('joinblock-tags 1', $doc['format']);
        $this->assertCount(1, $doc['entries'], 'one tag, one entry, however many publishes');
        $this->assertSame([], glob("$dir/.joinblock-an-*"), 'no temporary file left behind');
    }
}
