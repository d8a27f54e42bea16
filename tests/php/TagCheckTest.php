<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use JoinBlock\ActionNetworkException;

/**
 * joinblock_person_has_tag against the stand-in server: answers, the request budget, the
 * per-process tag cache, and one HTTP client per process.
 */
final class TagCheckTest extends JoinBlockTestCase
{
    private static StandInServer $server;

    /**
     * Child PHP processes keep their tag map and pacing to themselves: these tests measure one
     * process, and the stand-in names a tag's href after its name, so one test's data (a
     * rename) would reach the next through the host's shared state (SharedStateTest covers it).
     */
    protected static function phpArgs(?string $implementation = null): array
    {
        return [...parent::phpArgs($implementation), '-d', 'joinblock.shared_state=0'];
    }

    public static function setUpBeforeClass(): void
    {
        self::$server = StandInServer::start();
    }

    public static function tearDownAfterClass(): void
    {
        self::$server->stop();
    }

    /** Options for one call: no pacing unless asked, so tests stay quick. */
    private static function options(array $extra = []): array
    {
        return $extra + ['base_url' => self::$server->baseUrl(), 'max_rps' => 1000];
    }

    /**
     * Runs the calls in one fresh PHP process (a cold cache at the first call).
     *
     * @param list<array{string, string}|array{string, string, array}> $calls [email, tag, options]
     * @param list<string>|null $phpArgs the PHP to run them in; null: phpArgs()
     * @return list<array{result?: ?bool, exception?: string, message?: string, requests: int, by_path: array, urls: list<string>, started: float, seconds: float}>
     */
    private static function inOneProcess(array $calls, ?array $phpArgs = null): array
    {
        $calls = array_map(fn ($c) => [$c[0], $c[1], StandInServer::API_KEY, self::options($c[2] ?? [])], $calls);
        $control = 'http://127.0.0.1:' . self::$server->port() . '/_control';
        $command = [PHP_BINARY, ...($phpArgs ?? self::phpArgs()), self::fixture('tag_checks.php'), $control, json_encode($calls)];
        $out = self::runPhpOk($command, 120);
        return json_decode($out, true, 512, JSON_THROW_ON_ERROR);
    }

    /** A group of `$groupSize` tags and one member who has the first `$has` of them. */
    private static function loadMember(int $has, int $groupSize): array
    {
        $tags = StandInServer::tagNames($groupSize);
        self::$server->load($tags, [['email' => 'member@example.org', 'tags' => array_slice($tags, 0, $has)]]);
        return $tags;
    }

    public function testAnswersTrueFalseAndNull(): void
    {
        self::$server->load(['Member', 'Donor', 'Volunteer'], [
            ['email' => "o'brien@example.com", 'tags' => ['Donor', 'Member']],
            ['email' => 'a+b@example.com', 'tags' => ['Volunteer']],
            ['email' => 'untagged@example.com', 'tags' => []],
        ]);
        $ask = fn (string $email, string $tag) => joinblock_person_has_tag($email, $tag, StandInServer::API_KEY, self::options(['tag_cache_ttl' => 0]));
        $this->assertTrue($ask("o'brien@example.com", 'Member'), 'an apostrophe in the email is quoted for the filter');
        $this->assertTrue($ask('a+b@example.com', 'Volunteer'), '+ is percent-encoded');
        $this->assertFalse($ask('a+b@example.com', 'Member'));
        $this->assertFalse($ask('untagged@example.com', 'Member'));
        $this->assertFalse($ask("o'brien@example.com", 'No Such Tag'));
        $this->assertNull($ask('nobody@example.com', 'Member'));
        $this->assertTrue($ask('O\'Brien@Example.com', 'member'), 'tag names and emails compare case-insensitively');
        $this->assertTrue($ask("o'brien@example.com", 'DONOR'));
    }

    public function testNonAsciiTagNamesCompareWithoutRegardToCase(): void
    {
        self::$server->load(['Élan Members', 'Member'], [['email' => 'elan@example.org', 'tags' => ['Élan Members']]]);
        $calls = [['elan@example.org', 'élan members'], ['elan@example.org', 'ÉLAN MEMBERS'], ['elan@example.org', 'Member']];
        $this->assertSame([true, true, false], array_column(self::inOneProcess($calls), 'result'));
    }

    /** PHP's strtolower() folds ASCII only: without mbstring the polyfill would answer "élan" != "Élan". */
    public function testWithoutMbstringThePolyfillRefusesBeforeAnyRequest(): void
    {
        if (self::runPhpOk([PHP_BINARY, '-n', '-r', 'echo extension_loaded("mbstring") ? "yes" : "no";']) === 'yes') {
            self::markTestSkipped('this PHP has mbstring built in');
        }
        self::$server->load(['Élan Members'], [['email' => 'elan@example.org', 'tags' => ['Élan Members']]]);
        $calls = [['elan@example.org', 'élan members']];
        if (self::implementation() === 'extension') {
            $this->assertTrue(self::inOneProcess($calls)[0]['result'] ?? null, 'the extension needs no mbstring');
            return;
        }
        [$call] = self::inOneProcess($calls, self::polyfillArgs(['curl']));
        $this->assertSame(
            ['exception' => ActionNetworkException::class, 'message' => "PHP's mbstring extension is not loaded: the tag check needs it to compare tag names without regard to case", 'requests' => 0],
            array_intersect_key($call, ['exception' => 0, 'message' => 0, 'requests' => 0])
        );
    }

    public function testPeopleNextLinkIsNeverFollowed(): void
    {
        self::$server->load(['Member'], [['email' => 'solo@example.org', 'tags' => []]]);
        [$call] = self::inOneProcess([['solo@example.org', 'Member']]);
        $this->assertFalse($call['result']);
        $this->assertSame(1, $call['by_path']['/api/v2/people/'], 'one person lookup, although it carries a next link');
    }

    /** @return array<string, array{int, int, int}> tags the member has, group size, taggings pages */
    public static function sizes(): array
    {
        return ['3 tags' => [3, 3, 1], '30 tags' => [30, 40, 2], '200 tags' => [200, 300, 8]];
    }

    /**
     * Warm (tag href known): 1 + pages up to the match; absent: 1 + all pages; never a request
     * per tagging. Cold: never more than the plugin's 1 + pages + tags of the person.
     *
     * @dataProvider sizes
     */
    #[DataProvider('sizes')]
    public function testRequestBudget(int $has, int $groupSize, int $pages): void
    {
        $tags = self::loadMember($has, $groupSize);
        $first = $tags[0];
        $last = $tags[$has - 1];
        $absent = $tags[$groupSize - 1] === $last ? 'Not In Group' : $tags[$groupSize - 1];
        $plugin = 1 + $pages + $has;

        foreach (['near the start' => [$first, true], 'near the end' => [$last, true], 'absent' => [$absent, false]] as $where => [$tag, $expected]) {
            // Cold, then warm, in one process; warm again after the other tag's warm-up.
            [$cold, $warm] = self::inOneProcess([['member@example.org', $tag], ['member@example.org', $tag]]);
            $this->assertSame($expected, $cold['result'], "cold, $where");
            $this->assertSame($expected, $warm['result'], "warm, $where");
            $this->assertLessThanOrEqual($plugin, $cold['requests'], "cold, $where: never more than the plugin");

            $pagesToMatch = $where === 'near the end' || $where === 'absent' ? $pages : 1;
            $this->assertSame(1 + $pagesToMatch, $warm['requests'], "warm, $where: 1 + pages up to the match");
            $this->assertSame([], self::tagLookups($warm['by_path']), "warm, $where: no request per tagging");
        }
    }

    public function testColdBudgetFor200TaggingsIn300TagGroup(): void
    {
        $tags = self::loadMember(200, 300);
        [$absent, $present] = self::inOneProcess([['member@example.org', $tags[299]], ['member@example.org', $tags[150]]]);
        $this->assertFalse($absent['result']);
        $this->assertLessThanOrEqual(25, $absent['requests'], 'cold, absent: the plugin would send 209');
        $this->assertTrue($present['result']);
        $this->assertSame(1 + 7, $present['requests'], 'the first call learned the whole group');
    }

    /**
     * README's request table ("### joinblock_person_has_tag"), one case per row and example: a
     * member with Tag 001..Tag 200 (8 taggings pages) in a group of Tag 001..Tag 300 (12 tag list
     * pages, in the same order), and a newcomer with Tag 250 and Tag 251. Each case is one fresh
     * process, a PHP-FPM worker's life, asking different tags one after another.
     *
     * @return array<string, array{list<array{string, string, bool, int}>}> calls in order: who, tag, answer, requests
     */
    public static function readmeRows(): array
    {
        [$member, $newcomer] = ['member@example.org', 'newcomer@example.org'];
        return [
            "href known, the member has it (Tag 020 after Tag 010, Tag 150 after Tag 200)" => [[
                [$member, 'Tag 010', true, 1 + 1 + 1],
                [$member, 'Tag 020', true, 1 + 1],
                [$member, 'Tag 200', true, 1 + 8 + 7],
                [$member, 'Tag 150', true, 1 + 6],
            ]],
            "href known, the member lacks it (Tag 250 after another person's check looked it up)" => [[
                [$newcomer, 'Tag 251', true, 1 + 1 + 1 + 2],
                [$member, 'Tag 250', false, 1 + 8],
            ]],
            "every tag of the member named, not the asked one (after Tag 200)" => [[
                [$member, 'Tag 200', true, 1 + 8 + 8],
                [$member, 'Tag 300', false, 1 + 8],
                [$member, 'Not In Group', false, 1 + 8],
            ]],
            'neither, cold: Tag 010' => [[[$member, 'Tag 010', true, 1 + 1 + 1]]],
            'neither, cold: Tag 200' => [[[$member, 'Tag 200', true, 1 + 8 + 8]]],
            'neither, cold: a tag the group lacks' => [[[$member, 'Not In Group', false, 1 + 8 + 8]]],
            'neither, after other tags: Tag 010, Tag 200, Tag 300' => [[
                [$member, 'Tag 010', true, 1 + 1 + 1],
                [$member, 'Tag 200', true, 1 + 8 + 7],
                [$member, 'Tag 300', false, 1 + 8],
            ]],
        ];
    }

    /**
     * Each call costs what README's table says for what the worker knows by then, and a worker
     * never reads a page of the tag list, or looks up a tag, twice.
     *
     * @dataProvider readmeRows
     */
    #[DataProvider('readmeRows')]
    public function testReadmeRequestTable(array $sequence): void
    {
        $tags = StandInServer::tagNames(300);
        self::$server->load($tags, [
            ['email' => 'member@example.org', 'tags' => array_slice($tags, 0, 200)],
            ['email' => 'newcomer@example.org', 'tags' => ['Tag 250', 'Tag 251']],
        ]);

        $calls = self::inOneProcess(array_map(fn (array $call) => [$call[0], $call[1]], $sequence));
        foreach ($sequence as $i => [$who, $tag, $answer, $requests]) {
            $this->assertArrayHasKey('result', $calls[$i], "call $i, $tag for $who: " . json_encode($calls[$i]));
            $this->assertSame($answer, $calls[$i]['result'], "call $i, $tag for $who");
            $this->assertSame($requests, $calls[$i]['requests'], "call $i, $tag for $who: " . implode(' ', $calls[$i]['urls']));
        }
        $namingRequests = array_filter(array_merge(...array_column($calls, 'urls')), fn (string $url): bool => str_starts_with($url, '/api/v2/tags'));
        $this->assertSame(array_values(array_unique($namingRequests)), array_values($namingRequests), 'no tag list page or tag read twice');
    }

    public function testTagNamesAreSharedBetweenCallsAndRenamesExpire(): void
    {
        self::$server->load(['Member', 'Donor'], [['email' => 'r@example.org', 'tags' => ['Member']]]);
        $rename = 'http://127.0.0.1:' . self::$server->port() . '/_control/rename_tag';
        // A process that learns "Member", sees it renamed, and asks again before and after expiry.
        $script = sprintf(<<<'PHP'
            $o = %s;
            $ask = fn ($tag) => var_export(joinblock_person_has_tag('r@example.org', $tag, %s, $o), true);
            echo $ask('Member'), ' ';
            file_get_contents(%s, false, stream_context_create(['http' => ['method' => 'POST', 'header' => 'Content-Type: application/json', 'content' => '{"from":"Member","to":"Members"}']]));
            echo $ask('Members'), ' ';
            usleep(1200000);
            echo $ask('Members'), ' ', $ask('Member'), "\n";
            PHP, var_export(self::options(['tag_cache_ttl' => 1]), true), var_export(StandInServer::API_KEY, true), var_export($rename, true));
        $out = self::runPhpOk(self::phpCode($script));
        $this->assertSame("true false true false\n", $out, 'within the TTL the old name is believed; after it, the new one');
    }

    public function testConnectionsAreKeptAliveAcrossCalls(): void
    {
        self::$server->load(['Member'], [['email' => 'k@example.org', 'tags' => ['Member']]]);
        $calls = self::inOneProcess(array_fill(0, 5, ['k@example.org', 'Member']));
        $this->assertSame([true, true, true, true, true], array_column($calls, 'result'));
        $this->assertSame(1, self::$server->control('GET', 'connections')['connections'], 'five calls, one TCP connection');
    }

    public function testForkedChildMakesItsOwnClient(): void
    {
        self::$server->load(['Member'], [['email' => 'f@example.org', 'tags' => ['Member']]]);
        $script = sprintf(<<<'PHP'
            $ask = fn () => var_export(joinblock_person_has_tag('f@example.org', 'Member', %s, %s), true);
            echo 'parent:', $ask(), "\n";
            $pid = pcntl_fork();
            if ($pid === 0) {
                echo 'child:', $ask(), "\n";
                exit(0);
            }
            pcntl_waitpid($pid, $status);
            echo 'parent again:', $ask(), "\n";
            PHP, var_export(StandInServer::API_KEY, true), var_export(self::options(['deadline' => 5, 'timeout' => 3]), true));
        $started = microtime(true);
        $out = self::runPhpOk(self::phpCode($script));
        $this->assertSame("parent:true\nchild:true\nparent again:true\n", $out);
        $this->assertLessThan(5, microtime(true) - $started, 'the child did not hang on an inherited client');
    }

    public function testPacingKeepsAProcessUnderMaxRps(): void
    {
        self::$server->load(['Member'], [['email' => 'p@example.org', 'tags' => ['Member']]]);
        // 3 requests (learning the tag), then 2 a call: 13 requests at 4 a second need 12 intervals.
        $calls = self::inOneProcess(array_fill(0, 6, ['p@example.org', 'Member', ['max_rps' => 4, 'base_url' => self::$server->baseUrl()]]));
        $requests = array_sum(array_column($calls, 'requests'));
        $this->assertSame(13, $requests);
        // Pacing spaces the process's requests, not its calls: the gaps between calls count too,
        // so the span from the first call's start to the last call's end is what it bounds. The
        // allowance is the clocks' rounding (the polyfill sleeps in whole microseconds).
        $last = $calls[count($calls) - 1];
        $this->assertGreaterThanOrEqual(($requests - 1) / 4 - 0.005, $last['started'] + $last['seconds'] - $calls[0]['started']);
    }

    public function testAFailedTagLookupIsNotCached(): void
    {
        // One tag: looked up, never worth a page of the tag list.
        self::loadMember(1, 3);
        // The first tag lookup answers 404 once, as a passing fault (or a replica behind) would.
        self::$server->fault('status', '/api/v2/tags/', 1, ['status' => 404]);
        [$failed, $again] = self::inOneProcess([['member@example.org', 'Tag 001'], ['member@example.org', 'Tag 001']]);
        $this->assertSame(
            ['exception' => 'JoinBlock\ActionNetworkException', 'message' => 'Action Network answered HTTP 404 to the tag lookup: Fault: HTTP 404'],
            array_intersect_key($failed, ['result' => 0, 'exception' => 0, 'message' => 0]),
            'the call cannot know the answer'
        );
        $this->assertTrue($again['result'] ?? null, 'the 404 was not kept as the tag\'s name: ' . json_encode($again));
    }

    /** @return array<string, array{int|string|null, int|null, int}> total_pages (a decimal string past PHP's ints), total_records, requests */
    public static function hugeTotals(): array
    {
        // Person, taggings page 1, then the tag list's first page, which names the 4 tags: a
        // page shorter than per_page is the last, whatever its totals say (the arithmetic on
        // them is src/action_network/mod.rs's server_totals_saturate).
        return [
            'total_pages 2^62' => [2 ** 62, null, 3],
            'total_pages 2^62 + 1 (25 × 2^62 wraps to a multiple of 2^64 / 4)' => [2 ** 62 + 1, null, 3],
            'total_records 2^62 + 4' => [null, 2 ** 62 + 4, 3],
            'total_pages 2^63: not an integer PHP can hold, ignored' => ['9223372036854775808', null, 3],
        ];
    }

    /**
     * Totals from the server are arithmetic's input: they saturate rather than wrap, and both
     * implementations read the same numbers.
     *
     * @dataProvider hugeTotals
     */
    #[DataProvider('hugeTotals')]
    public function testHugeTotalsFromTheServerSaturate(int|string|null $totalPages, ?int $totalRecords, int $requests): void
    {
        self::loadMember(4, 103);
        $taggings = self::$server->taggingsPath('member@example.org');
        self::$server->fault('totals', $taggings, 1, ['total_pages' => $totalPages, 'total_records' => $totalRecords]);
        [$call] = self::inOneProcess([['member@example.org', 'Tag 004']]);
        $this->assertTrue($call['result'] ?? null, json_encode($call));
        $this->assertSame($requests, $call['requests'], implode(' ', $call['urls']));
    }

    /**
     * Every name the process learns goes through its tag cache, which stays at its bound (4096
     * entries): here the whole list of a 10^4-tag group, read to name the member's tags.
     */
    public function testTheTagCacheStaysWithinItsBound(): void
    {
        $tags = StandInServer::tagNames(10000);
        // The last 425 tags (17 taggings pages): more unnamed tags than unread list pages, all along.
        self::$server->load($tags, [['email' => 'big@example.org', 'tags' => array_slice($tags, -425)]]);
        $entries = self::implementation() === 'polyfill'
            ? '\JoinBlock\Polyfill\Knowledge::entries()'
            : '(function () { ob_start(); phpinfo(INFO_MODULES); preg_match("~^tag cache entries \\(' . self::COUNTER_SCOPE . '\\) => (\\d+)$~m", ob_get_clean(), $m); return (int) $m[1]; })()';
        $script = sprintf(
            'echo json_encode(["before" => %1$s, "result" => joinblock_person_has_tag("big@example.org", "Not In Group", %2$s, %3$s), "after" => %1$s]);',
            $entries,
            var_export(StandInServer::API_KEY, true),
            var_export(self::options(['max_pages' => 20]), true)
        );
        $out = json_decode(self::runPhpOk(self::phpCode($script), 120), true);
        $this->assertSame(400, self::$server->counts()['by_path']['/api/v2/tags'] ?? 0, 'every page of the tag list was read');
        $this->assertSame(['before' => 0, 'result' => false, 'after' => 4096], $out);
    }

    /** Every thread but PHP's blocks every signal it can, so that no PHP signal handler runs on it. */
    public function testHttpClientThreadsBlockSignals(): void
    {
        self::$server->load(['Member'], [['email' => 's@example.org', 'tags' => ['Member']]]);
        $script = sprintf(<<<'PHP'
            joinblock_person_has_tag('s@example.org', 'Member', %s, %s);
            $masks = [];
            foreach (glob('/proc/self/task/*/status') as $status) {
                preg_match('/^SigBlk:\s*(\S+)$/m', file_get_contents($status), $m);
                $masks[basename(dirname($status))] = $m[1];
            }
            echo json_encode(['pid' => getmypid(), 'masks' => $masks]);
            PHP, var_export(StandInServer::API_KEY, true), var_export(self::options(), true));
        $out = json_decode(self::runPhpOk(self::phpCode($script)), true);
        $others = array_diff_key($out['masks'], [$out['pid'] => true]);
        if (self::implementation() === 'extension') {
            $this->assertNotEmpty($others, 'the HTTP client runs threads of its own');
        }
        // Signals 1 to 64 but SIGKILL (9) and SIGSTOP (19), which nothing can block, and glibc's
        // own 32 and 33, which it never lets a thread block (setuid() waits for every thread to
        // take 33) and for which no PHP handler can be installed.
        foreach ($others as $tid => $mask) {
            $this->assertSame('fffffffe7ffbfeff', $mask, "thread $tid of the PHP process");
        }
    }

    /** @return array<string, array{string, string, string}> two tags differing only in case, and a third spelling asked */
    public static function caseTwins(): array
    {
        return [
            'ASCII' => ['Member', 'member', 'MEMBER'],
            'non-ASCII: ß and its capital ẞ' => ['Straße', 'STRAẞE', 'straße'],
        ];
    }

    /**
     * Action Network says it keeps tag names unique without regard to case; should a group still
     * hold two that differ only in case, a person with either has the tag, and the cache keeps
     * both hrefs. Here the tag list's first page names both at once.
     *
     * @dataProvider caseTwins
     */
    #[DataProvider('caseTwins')]
    public function testTagsWhoseNamesDifferOnlyInCaseAreOneTag(string $one, string $other, string $asked): void
    {
        $fillers = StandInServer::tagNames(40);
        // More than a taggings page of unknown tags: the call reads the tag list's first page early.
        self::$server->load([$one, $other, ...$fillers], [
            ['email' => 'one@example.org', 'tags' => [...array_slice($fillers, 0, 30), $one]],
            ['email' => 'other@example.org', 'tags' => [...array_slice($fillers, 0, 30), $other]],
            ['email' => 'neither@example.org', 'tags' => array_slice($fillers, 0, 30)],
        ], 0, true);
        $calls = self::inOneProcess([
            ['one@example.org', $asked], ['other@example.org', $asked], ['neither@example.org', $asked],
            ['one@example.org', $other], ['other@example.org', $one],
        ]);
        $this->assertSame([true, true, false, true, true], array_map(fn ($c) => $c['result'] ?? $c, $calls));
    }

    /**
     * Names compare by Unicode lowercasing, as Action Network is assumed to (README): "STRASSE"
     * is not "Straße" (ß lowercases to itself), and the forms of sigma are one letter.
     */
    public function testNonAsciiNamesCompareByLowercasing(): void
    {
        self::$server->load(['Straße', 'STRASSE', 'ΟΔΟΣ'], [['email' => 'x@example.org', 'tags' => ['Straße', 'ΟΔΟΣ']]]);
        $asked = ['STRAßE', 'straẞe', 'STRASSE', 'strasse', 'οδος', 'ΟΔΟΣ', 'οδοσ'];
        $calls = self::inOneProcess(array_map(fn ($tag) => ['x@example.org', $tag], $asked));
        $this->assertSame(
            array_combine($asked, [true, true, false, false, true, true, true]),
            array_combine($asked, array_map(fn ($c) => $c['result'] ?? $c, $calls))
        );
    }

    /**
     * What the real Action Network may plausibly send (tests/an_server.py's shape switches),
     * with the requests each case costs: a member with no tag asked Tag 001, one with Tag
     * 001..025 asked Tag 025 (has it) and Tag 040 (lacks it), one with Tag 001..030 asked Tag
     * 040, and an email without a person; in a group of Tag 001..040.
     *
     * @return array<string, array{array<string, mixed>, list<int>}> switches, requests per case
     */
    public static function shapeVariants(): array
    {
        $today = [2, 3, 3, 5, 1];
        // Without totals, a full last page of taggings that links `next` takes one request
        // more to show it is the last: the empty page after it.
        $oneMore = [2, 3, 4, 5, 1];
        return [
            "today's shapes" => [[], $today],
            'an empty page without _embedded' => [['empty_page' => 'no-embedded'], $today],
            'an empty page as {}' => [['empty_page' => 'bare'], $today],
            'an empty page with _embedded but no list' => [['empty_page' => 'no-key'], $today],
            '`next` on the last page too, totals sent' => [['next_on_last' => true], $today],
            'no total_pages / total_records' => [['totals' => false], $today],
            'both of the two above' => [['next_on_last' => true, 'totals' => false], $oneMore],
            'chunked bodies, no Content-Length' => [['chunked' => true], $today],
            'all at once' => [['empty_page' => 'bare', 'next_on_last' => true, 'totals' => false, 'chunked' => true], $oneMore],
        ];
    }

    /**
     * Each variant answers right, in a fresh process (as a site meets it), with at most one
     * request more than today's shapes.
     *
     * @dataProvider shapeVariants
     */
    #[DataProvider('shapeVariants')]
    public function testEveryPlausibleShapeAnswersRight(array $switches, array $requests): void
    {
        $tags = StandInServer::tagNames(40);
        self::$server->load($tags, [
            ['email' => 'none@example.org', 'tags' => []],
            ['email' => 'page@example.org', 'tags' => array_slice($tags, 0, 25)],
            ['email' => 'more@example.org', 'tags' => array_slice($tags, 0, 30)],
        ]);
        self::$server->shapes($switches);
        $cases = [
            ['none@example.org', 'Tag 001', false], ['page@example.org', 'Tag 025', true], ['page@example.org', 'Tag 040', false],
            ['more@example.org', 'Tag 040', false], ['nobody@example.org', 'Tag 001', null],
        ];
        foreach ($cases as $i => [$email, $tag, $answer]) {
            [$call] = self::inOneProcess([[$email, $tag]]);
            $this->assertArrayHasKey('result', $call, "$email, $tag: " . json_encode($call));
            $this->assertSame($answer, $call['result'], "$email, $tag");
            $this->assertSame($requests[$i], $call['requests'], "$email, $tag: " . implode(' ', $call['urls']));
            $this->assertLessThanOrEqual(self::shapeVariants()["today's shapes"][1][$i] + 1, $call['requests'], 'at most one request more than today');
        }
    }

    /** A person without an osdi:taggings link: its documented address, under base_url. */
    public function testAPersonWithoutATaggingsLinkIsReadAtTheDocumentedAddress(): void
    {
        self::loadMember(3, 40);
        $taggings = self::$server->taggingsPath('member@example.org');
        self::$server->shapes(['person_taggings_link' => false]);
        [$has, $lacks] = [self::inOneProcess([['member@example.org', 'Tag 003']])[0], self::inOneProcess([['member@example.org', 'Tag 040']])[0]];
        $this->assertSame([true, false], [$has['result'] ?? $has, $lacks['result'] ?? $lacks]);
        $this->assertSame(1, $has['by_path'][$taggings] ?? 0, implode(' ', $has['urls']));
        $this->assertSame(3, $has['requests'], 'the person, its taggings, the first page of the tag list');
    }

    /**
     * A tagging without an osdi:tag link is skipped, as the plugin skips it: the answer is
     * true when the asked tag is among the others, else unknown (an exception saying how many).
     */
    public function testATaggingWithoutATagLinkLeavesOnlyTrueKnowable(): void
    {
        self::loadMember(5, 40);
        self::$server->shapes(['tag_link_missing' => ['Tag 003', 'Tag 004']]);
        $unknown = "2 of the person's taggings could not be read (no osdi:tag link), and the asked tag is not among the others; the answer is unknown";
        foreach (['Tag 005' => ['result' => true], 'Tag 040' => ['exception' => ActionNetworkException::class, 'message' => $unknown], 'Tag 003' => ['exception' => ActionNetworkException::class, 'message' => $unknown]] as $tag => $expected) {
            [$call] = self::inOneProcess([['member@example.org', $tag]]);
            $this->assertSame($expected, array_intersect_key($call, ['result' => 0, 'exception' => 0, 'message' => 0]), $tag);
            $this->assertSame(3, $call['requests'], "$tag: the person, its taggings, the first page of the tag list");
        }
    }

    /**
     * BENCHMARKS.md's cold/warm table: a member with the first k tags of a 300-tag group,
     * asked the last of them (has it) and Tag 300 (lacks it). No cliff at 25: a person with two
     * unknown tags or more makes the call read the tag list's first page, which tells the
     * group's size, and the rest is decided knowing it.
     *
     * @return array<string, array{int, int, int}> k, cold requests (has it and lacks it alike), taggings pages
     */
    public static function coldTable(): array
    {
        $rows = [];
        foreach ([1 => 3, 5 => 3, 10 => 3, 20 => 3, 25 => 3, 26 => 5, 50 => 5, 200 => 17] as $k => $cold) {
            $rows["k = $k"] = [$k, $cold, (int) ceil($k / 25)];
        }
        return $rows;
    }

    /** @dataProvider coldTable */
    #[DataProvider('coldTable')]
    public function testColdCostHasNoCliff(int $k, int $cold, int $pages): void
    {
        $tags = self::loadMember($k, 300);
        foreach ([$tags[$k - 1] => true, 'Tag 300' => false] as $tag => $answer) {
            [$first, $again] = self::inOneProcess([['member@example.org', $tag], ['member@example.org', $tag]]);
            $this->assertSame([$answer, $answer], [$first['result'] ?? $first, $again['result'] ?? $again], $tag);
            $this->assertSame($cold, $first['requests'], "cold, $tag: " . implode(' ', $first['urls']));
            $this->assertSame(1 + $pages, $again['requests'], "warm, $tag");
            $this->assertLessThanOrEqual(1 + $pages + $k, $first['requests'], 'never more than the plugin');
        }
    }

    /** Paths of single-tag lookups among counted requests. */
    private static function tagLookups(array $byPath): array
    {
        return array_values(array_filter(array_keys($byPath), fn ($p) => preg_match('~^/api/v2/tags/.~', $p)));
    }
}
