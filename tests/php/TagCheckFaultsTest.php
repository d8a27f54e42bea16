<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use JoinBlock\ActionNetworkException;

/**
 * Every way the tag check can fail: argument errors, each fault of the stand-in server, rate
 * limits, deadlines and the rules that keep the API key with Action Network.
 */
final class TagCheckFaultsTest extends JoinBlockTestCase
{
    private const KEY = StandInServer::API_KEY;

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

    protected function setUp(): void
    {
        // 60 tags on 3 taggings pages, so faults can hit any page.
        self::$server->load(StandInServer::tagNames(60), [
            ['email' => 'm@example.org', 'tags' => StandInServer::tagNames(60)],
        ]);
    }

    /** No cache, no pacing: each call starts cold and quick. */
    private static function options(array $extra = []): array
    {
        return $extra + ['base_url' => self::$server->baseUrl(), 'max_rps' => 1000, 'tag_cache_ttl' => 0];
    }

    private static function ask(array $extra = [], string $tag = 'Tag 060', string $key = self::KEY): ?bool
    {
        return joinblock_person_has_tag('m@example.org', $tag, $key, self::options($extra));
    }

    /** Asserts an ActionNetworkException matching `$pattern` that does not leak the key. */
    private static function assertFails(string $pattern, callable $call): void
    {
        $e = self::assertThrows(ActionNetworkException::class, $pattern, $call);
        self::assertStringNotContainsString(self::KEY, $e->getMessage());
    }

    /** @return array<string, array{string, string, array}> fault kind, path, expected message */
    public static function faults(): array
    {
        $taggings = '/api/v2/people/';
        return [
            '500 with error text' => ['500', $taggings, [], '~^Action Network answered HTTP 500 to the person lookup: Server error$~'],
            '502 with an HTML body' => ['502-html', $taggings, [], '~^Action Network answered HTTP 502 to the person lookup$~'],
            'invalid JSON' => ['invalid-json', $taggings, [], '~^the Action Network person lookup answer is not valid JSON: ~'],
            'a string where the list should be' => ['wrong-shape', $taggings, ['body' => ['_embedded' => ['osdi:people' => 'nobody']]], '~^the Action Network person lookup answer has an unexpected shape: _embedded.osdi:people is not a list$~'],
            'a string where _embedded should be' => ['wrong-shape', $taggings, ['body' => ['_embedded' => 'people']], '~^the Action Network person lookup answer has an unexpected shape: _embedded is not an object$~'],
            'a list instead of an object' => ['wrong-shape', $taggings, ['body' => []], '~^the Action Network person lookup answer has an unexpected shape: not a JSON object$~'],
            'a string where the taggings list should be' => ['wrong-shape', '/api/v2/people/0', ['body' => ['_embedded' => ['osdi:taggings' => 'none']]], '~^the Action Network taggings page 1 answer has an unexpected shape: _embedded.osdi:taggings is not a list$~'],
            'next link repeating a page' => ['repeat-next', '/api/v2/people/0', [], '~^Action Network\'s taggings page 1 links back to a page already read; stopped to avoid a loop$~'],
            'next link to another origin' => ['foreign-next', '/api/v2/people/0', ['origin' => 'http://localhost:1'], '~^the Action Network next link of the taggings page 1 points to another origin \(http://localhost:1\); not followed~'],
            'redirect to another origin' => ['redirect-foreign', $taggings, ['origin' => 'http://localhost:1'], '~^the Action Network redirect of the person lookup points to another origin \(http://localhost:1\)~'],
            'oversized body' => ['oversized', $taggings, ['bytes' => 6 << 20], '~^the Action Network person lookup answer is larger than 4 MiB; not read$~'],
            'hanging response' => ['hang', $taggings, ['seconds' => 5], '~^Action Network person lookup timed out \(the request timeout\)$~'],
            '300 Multiple Choices' => ['status', $taggings, ['status' => 300], '~^Action Network answered HTTP 300 to the person lookup: Fault: HTTP 300$~'],
            '304 Not Modified' => ['status', $taggings, ['status' => 304], '~^Action Network answered HTTP 304 to the person lookup$~'],
        ];
    }

    /** @dataProvider faults */
    #[DataProvider('faults')]
    public function testEachFaultIsACleanException(string $kind, string $path, array $extra, string $pattern): void
    {
        if ($path === '/api/v2/people/0') {
            // The taggings collection of the member, whatever its uuid.
            $path = self::$server->taggingsPath('m@example.org');
        }
        self::$server->fault($kind, $path, 1, $extra);
        $started = microtime(true);
        self::assertFails($pattern, fn () => self::ask(['timeout' => 1]));
        $this->assertLessThan(4, microtime(true) - $started);
    }

    public function testSameOriginRedirectsStopAtTheHopLimit(): void
    {
        self::$server->fault('redirect-same', '/api/v2/people/', -1);
        self::assertFails('~^Action Network redirected the person lookup more than 4 times; stopped to avoid a loop$~', fn () => self::ask());
        $this->assertSame(5, self::$server->counts()['by_path']['/api/v2/people/'], 'the request and 4 redirects followed');
    }

    public function testASlowDownAnswerLeavesItsConnectionToTheRetry(): void
    {
        self::$server->fault('429', '/api/v2/people/', 1);
        $code = sprintf('var_export(joinblock_person_has_tag("m@example.org", "Tag 001", %s, %s));', var_export(self::KEY, true), var_export(self::options(), true));
        $this->assertSame('true', self::runPhpOk(self::phpCode($code)));
        $this->assertSame(1, self::$server->control('GET', 'connections')['connections'], 'the retry went on the connection of the 429');
    }

    public function testWrongTokenIsReportedWithActionNetworksText(): void
    {
        self::assertFails(
            '~^Action Network answered HTTP 403 to the person lookup: API Key invalid or not present$~',
            fn () => self::ask([], 'Tag 001', 'wrong-key-0123')
        );
    }

    public function testTooManyTaggingsPagesIsThePageCap(): void
    {
        self::assertFails('~^the person has more than 2 pages of taggings \(max_pages\); the answer is unknown$~', fn () => self::ask(['max_pages' => 2]));
        $this->assertTrue(self::ask(['max_pages' => 3]));
    }

    /** @return array<string, array{string, array}> */
    public static function slowDowns(): array
    {
        return [
            '429 with Retry-After' => ['429-retry-after', ['retry_after' => 1], 1.0],
            '429 without Retry-After' => ['429', [], 0.25],
            '503' => ['503', [], 0.25],
        ];
    }

    /** @dataProvider slowDowns */
    #[DataProvider('slowDowns')]
    public function testSlowDownAnswersAreRetriedAfterAWait(string $kind, array $extra, float $minimumWait): void
    {
        self::$server->fault($kind, '/api/v2/people/', 2, $extra);
        $started = microtime(true);
        $this->assertTrue(self::ask());
        $this->assertGreaterThanOrEqual($minimumWait, microtime(true) - $started);
        $this->assertSame(2, count(array_filter(self::$server->counts()['requests'], fn ($r) => $r['path'] === '/api/v2/people/')) - 1);
    }

    public function testRetriesNeverOutliveTheDeadline(): void
    {
        self::$server->fault('429-retry-after', '/api/v2/', -1, ['retry_after' => 5]);
        $started = microtime(true);
        self::assertFails('~^the call\'s deadline passed before the Action Network person lookup \(Action Network answered 429 Too Many Requests and asked to wait 5.0 s\)$~', fn () => self::ask(['deadline' => 2]));
        $this->assertLessThan(1.5, microtime(true) - $started, 'gave up at once rather than sleep past the deadline');

        self::$server->fault('503', '/api/v2/', -1);
        $started = microtime(true);
        self::assertFails('~deadline passed before the Action Network person lookup~', fn () => self::ask(['deadline' => 1.5]));
        $this->assertLessThan(2.5, microtime(true) - $started);
    }

    public function testAHangingServerCannotHoldTheCallPastItsDeadline(): void
    {
        self::$server->fault('hang', '/api/v2/', -1, ['seconds' => 20]);
        $started = microtime(true);
        self::assertFails('~^Action Network person lookup timed out \(the call\'s deadline\)$~', fn () => self::ask(['timeout' => 10, 'deadline' => 1]));
        $this->assertLessThan(2, microtime(true) - $started);
    }

    public function testExtremeButValidNumbersAreNoCrash(): void
    {
        $this->assertTrue(self::ask(['deadline' => 1e19, 'timeout' => 1e19]));
        // One request a century: the next slot of this process lies past the deadline.
        $started = microtime(true);
        self::assertFails('~^the call\'s deadline passed before the Action Network (person lookup|taggings page 1) \(waiting for a request slot under max_rps\)$~', fn () => self::ask(['max_rps' => 1e-300, 'deadline' => 1]));
        $this->assertLessThan(1.5, microtime(true) - $started);
        // That call's pace does not bind the next one.
        $this->assertTrue(self::ask());
    }

    public function testATricklingBodyCannotHoldTheCallPastItsTimeout(): void
    {
        // Every read gets a byte within 0.1 s; only a timeout on the whole request stops it.
        self::$server->fault('trickle', '/api/v2/people/', 1, ['bytes' => 4096]);
        $started = microtime(true);
        self::assertFails('~^Action Network person lookup timed out \(the request timeout\)$~', fn () => self::ask(['timeout' => 1, 'deadline' => 5]));
        $this->assertLessThan(2, microtime(true) - $started);
    }

    public function testUnreachableServer(): void
    {
        self::assertFails('~^Action Network person lookup failed: cannot connect: .*Connection refused~', fn () => self::ask(['base_url' => 'http://127.0.0.1:1/api/v2/']));
    }

    public function testTlsIsVerifiedAgainstTheSystemStore(): void
    {
        $dir = $this->scratchDir();
        exec(sprintf(
            'openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout %1$s/key.pem -out %1$s/cert.pem 2>&1',
            escapeshellarg($dir)
        ), $output, $status);
        $this->assertSame(0, $status, implode("\n", $output));
        $tls = StandInServer::start(['--tls', "$dir/cert.pem", "$dir/key.pem"]);
        try {
            self::assertFails('~^Action Network person lookup failed: .*certificate verify failed.*self-signed~i', fn () => self::ask(['base_url' => $tls->baseUrl()]));
            $this->assertSame(0, $tls->counts()['total'], 'no request reached the untrusted server');
        } finally {
            $tls->stop();
        }
    }

    /** @return array<string, array{class-string, string, callable}> */
    public static function badArguments(): array
    {
        $f = fn (...$a) => fn () => joinblock_person_has_tag(...$a);
        $k = self::KEY;
        return [
            'empty email' => [\ValueError::class, '~^joinblock_person_has_tag\(\): Argument #1 \(\$email\) must not be empty$~', $f(' ', 'T', $k)],
            'empty tag' => [\ValueError::class, '~Argument #2 \(\$tag\) must not be empty~', $f('a@b.org', '', $k)],
            'empty key' => [\ValueError::class, '~Argument #3 \(\$apiKey\) must not be empty~', $f('a@b.org', 'T', '')],
            'key with a newline' => [\ValueError::class, '~^joinblock_person_has_tag\(\): Argument #3 \(\$apiKey\) must be valid UTF-8 without control characters$~', $f('a@b.org', 'T', "k\r\nX-Evil: 1")],
            'key with a C1 control' => [\ValueError::class, '~Argument #3 \(\$apiKey\) must be valid UTF-8 without control characters~', $f('a@b.org', 'T', "k\u{85}ey")],
            'key not UTF-8' => [\ValueError::class, '~Argument #3 \(\$apiKey\) must be valid UTF-8 without control characters~', $f('a@b.org', 'T', "k\xffey")],
            'key not UTF-8, with a newline' => [\ValueError::class, '~Argument #3 \(\$apiKey\) must be valid UTF-8 without control characters~', $f('a@b.org', 'T', "k\xff\r\nX-Evil: 1")],
            'email not a string' => [\TypeError::class, '~email~', $f([], 'T', $k)],
            'unknown option' => [\ValueError::class, '~^joinblock_person_has_tag\(\): Argument #4 \(\$options\) has an unknown option "timout"; known options are: base_url, timeout, deadline, max_pages, tag_cache_ttl, max_rps$~', $f('a@b.org', 'T', $k, ['timout' => 1])],
            'plain http to another host' => [\ValueError::class, '~^joinblock_person_has_tag\(\): option "base_url" uses plain http:// to a host other than loopback; use https://$~', $f('a@b.org', 'T', $k, ['base_url' => 'http://actionnetwork.org/api/v2/'])],
            'not a URL' => [\ValueError::class, '~option "base_url" is not a valid URL~', $f('a@b.org', 'T', $k, ['base_url' => 'actionnetwork'])],
            'credentials in the URL' => [\ValueError::class, '~option "base_url" must name a host and carry no user name or password~', $f('a@b.org', 'T', $k, ['base_url' => 'https://u:p@example.org/'])],
            'zero timeout' => [\ValueError::class, '~option "timeout" must be greater than 0~', $f('a@b.org', 'T', $k, ['timeout' => 0])],
            'negative deadline' => [\ValueError::class, '~option "deadline" must be a finite number greater than or equal to 0~', $f('a@b.org', 'T', $k, ['deadline' => -1])],
            'max_pages zero' => [\ValueError::class, '~option "max_pages" must be between 1 and~', $f('a@b.org', 'T', $k, ['max_pages' => 0])],
            'max_pages a float' => [\TypeError::class, '~option "max_pages" must be of type int\|null, float given~', $f('a@b.org', 'T', $k, ['max_pages' => 2.5])],
            'max_rps zero' => [\ValueError::class, '~option "max_rps" must be greater than 0~', $f('a@b.org', 'T', $k, ['max_rps' => 0])],
            'ttl NaN' => [\ValueError::class, '~option "tag_cache_ttl" must be a finite number~', $f('a@b.org', 'T', $k, ['tag_cache_ttl' => NAN])],
        ];
    }

    /** @dataProvider badArguments */
    #[DataProvider('badArguments')]
    public function testBadArgumentsThrowPhpErrors(string $class, string $pattern, callable $call): void
    {
        self::assertThrows($class, $pattern, $call);
        $this->assertSame(0, self::$server->counts()['total'], 'nothing was sent');
    }

    public function testPhpIniSetsTheDefaultUrl(): void
    {
        $code = sprintf('var_export(joinblock_person_has_tag("m@example.org", "Tag 001", %s, ["max_rps" => 1000]));', var_export(self::KEY, true));
        $this->assertSame('true', self::runPhpOk(self::phpCode($code, ['joinblock.action_network_url' => self::$server->baseUrl()])));
    }

    public function testIniSetsTheDefaultUrlAndPhpinfoShowsNoKey(): void
    {
        self::extensionOnly('ini_set() of joinblock.action_network_url (a PHP script cannot register INI entries) and its phpinfo() section');
        ini_set('joinblock.action_network_url', self::$server->baseUrl());
        try {
            $this->assertTrue(joinblock_person_has_tag('m@example.org', 'Tag 001', self::KEY, ['max_rps' => 1000]));
            ob_start();
            phpinfo(INFO_MODULES);
            $info = ob_get_clean();
            $this->assertStringContainsString('Action Network URL => ' . self::$server->baseUrl(), $info);
            $this->assertMatchesRegularExpression('~^Action Network requests \(' . self::COUNTER_SCOPE . '\) => [1-9]\d*$~m', $info);
            $this->assertStringNotContainsString(self::KEY, $info);
        } finally {
            ini_restore('joinblock.action_network_url');
        }
        $this->assertSame('https://actionnetwork.org/api/v2/', ini_get('joinblock.action_network_url'));
    }

    public function testTheTokenGoesOnlyToTheApi(): void
    {
        $this->assertTrue(self::ask());
        foreach (self::$server->counts()['requests'] as $request) {
            $this->assertTrue($request['token_ok'], "{$request['path']} carried the key");
        }
    }
}
