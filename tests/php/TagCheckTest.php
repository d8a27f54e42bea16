<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use JoinBlock\ActionNetworkException;

/**
 * joinblock_person_has_tag against the stand-in server: answers, the request budget, the
 * per-process tag cache, and one HTTP client per process.
 */
final class TagCheckTest extends JoinBlockTestCase
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
     * @return list<array{result?: ?bool, exception?: string, message?: string, requests: int, by_path: array, urls: list<string>, seconds: float}>
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
                [$newcomer, 'Tag 251', true, 1 + 1 + 2],
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
        $this->assertGreaterThanOrEqual(($requests - 1) / 4 - 0.01, array_sum(array_column($calls, 'seconds')));
    }

    /** Paths of single-tag lookups among counted requests. */
    private static function tagLookups(array $byPath): array
    {
        return array_values(array_filter(array_keys($byPath), fn ($p) => preg_match('~^/api/v2/tags/.~', $p)));
    }
}
