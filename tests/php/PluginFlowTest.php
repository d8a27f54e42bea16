<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * The plugin's call sequences (tests/php/fixtures/plugin_flow.php, docs/integration.md's integration
 * guide): a join and two webhook deliveries for one member at once, each checking a tag and
 * writing against the stand-in Action Network.
 */
final class PluginFlowTest extends JoinBlockTestCase
{
    private static StandInServer $server;
    private static ?MariaDbServer $db = null;

    public static function setUpBeforeClass(): void
    {
        self::$server = StandInServer::start();
    }

    public static function tearDownAfterClass(): void
    {
        self::$server->stop();
        self::$db?->destroy();
        self::$db = null;
    }

    /**
     * INI settings a site admin would put in joinblock.ini for a backend: the lock directory
     * for files, the backend and server for mysql (a private MariaDB, started on first use).
     *
     * @return array<string, string>
     */
    private static function siteSettings(string $backend, string $lockDir): array
    {
        if ($backend === 'file') {
            return ['joinblock.lock_dir' => $lockDir];
        }
        self::$db ??= MariaDbServer::startPrivate();
        return ['joinblock.lock_backend' => 'mysql', 'joinblock.mysql_url' => self::$db->url()];
    }

    /** @return array<string, array{string}> */
    public static function backends(): array
    {
        return ['file backend' => ['file'], 'mysql backend, chosen in the ini only' => ['mysql']];
    }

    /**
     * Runs the parties at once; returns [role => decisions] and the log's events in order.
     *
     * @param array<string, list<array{string, string}>> $parties role => steps [add|remove, tag]
     */
    private function runParties(string $email, array $parties, bool $lock = true, string $backend = 'file'): array
    {
        $dir = $this->scratchDir();
        $ini = [];
        foreach (self::siteSettings($backend, $dir) as $name => $value) {
            array_push($ini, '-d', "$name=$value");
        }
        $log = "$dir/flow.log";
        touch($log);
        $children = [];
        foreach ($parties as $role => $steps) {
            $children[$role] = self::startPhp([PHP_BINARY, ...self::phpArgs(), ...$ini, self::fixture('plugin_flow.php'), json_encode([
                'role' => $role, 'email' => $email, 'steps' => $steps, 'base_url' => self::$server->baseUrl(),
                'api_key' => StandInServer::API_KEY, 'log' => $log, 'barrier' => $dir, 'lock' => $lock,
            ])]);
        }
        self::goWhenReady($dir, array_values($children));
        $decisions = [];
        foreach ($children as $role => $child) {
            $result = self::finish($child);
            $this->assertSame(0, $result['exit'], $result['err']);
            $this->assertSame('', $result['err']);
            $out = json_decode($result['out'], true);
            $decisions[$role] = $out['decisions'];
            if ($lock) {
                $name = 'join-lock-' . sha1(strtolower(trim($email)));
                $this->assertSame($backend === 'file' ? "$dir/$name" : $name, $out['lock'], "$role's lock lived where the site chose");
            }
        }
        $lines = file($log, FILE_IGNORE_NEW_LINES);
        usort($lines, fn ($a, $b) => (int) explode(' ', $a)[0] <=> (int) explode(' ', $b)[0]);
        $events = array_map(fn ($line) => explode(' ', $line, 3), $lines);
        return [$decisions, array_map(fn ($e) => [$e[1], $e[2]], $events)];
    }

    /**
     * The guide's own calls, unchanged, under either backend: only the site's ini differs.
     *
     * @dataProvider backends
     */
    #[DataProvider('backends')]
    public function testJoinAndTwoWebhooksForOneMember(string $backend): void
    {
        self::$server->load(['Member', 'Lapsed', 'Paid'], [['email' => 'sam@example.org', 'tags' => ['Lapsed']]], 20);
        [$decisions, $events] = $this->runParties('sam@example.org', [
            'join' => [['add', 'Member']],
            'webhook-1' => [['add', 'Member'], ['add', 'Paid']],
            'webhook-2' => [['remove', 'Lapsed']],
        ], true, $backend);
        $this->assertSectionsNeverInterleave($events);
        // Whoever came first wrote "Member"; the other found it there.
        $memberDecisions = [$decisions['join'][0], $decisions['webhook-1'][0]];
        sort($memberDecisions);
        $this->assertSame(['skip: already present', 'wrote'], $memberDecisions);
        $this->assertSame('wrote', $decisions['webhook-1'][1], 'Paid was missing');
        $this->assertSame(['wrote'], $decisions['webhook-2']);

        $writes = self::$server->control('GET', 'writes');
        $this->assertCount(3, $writes, 'one write each for +Member, +Paid, -Lapsed');
        $state = self::$server->control('GET', 'state')['people'][0];
        $tags = $state['tags'];
        sort($tags);
        $this->assertSame(['Member', 'Paid'], $tags);
        // The plugin's log lines are kept.
        $this->assertContains(['join', 'Locking key ' . sha1('sam@example.org')], $events);
        $this->assertContains(['join', 'Unlocked'], $events);
    }

    public function testWithoutTheLockBothPartiesWrite(): void
    {
        // The control: the same flow with the lock left out shows what the lock prevents.
        // 300 ms a request: a check (the person, then its taggings) takes 600 ms, and a party
        // checking sees the other's write only if it wakes from the barrier 300 ms late.
        self::$server->load(['Member'], [['email' => 'race@example.org', 'tags' => []]], 300);
        [$decisions] = $this->runParties('race@example.org', [
            'join' => [['add', 'Member']],
            'webhook-1' => [['add', 'Member']],
        ], false);
        $this->assertSame(['wrote'], $decisions['join']);
        $this->assertSame(['wrote'], $decisions['webhook-1'], 'both checked before either wrote');
    }

    public function testNoPersonAndFailedChecks(): void
    {
        self::$server->load(['Member'], [['email' => 'known@example.org', 'tags' => []]]);
        [$decisions, $events] = $this->runParties('stranger@example.org', ['webhook-1' => [['add', 'Member']]]);
        $this->assertSame(['skip: no such person'], $decisions['webhook-1']);
        $this->assertContains(['webhook-1', 'warning: no Action Network person for this email; not tagging'], $events);
        $this->assertSame([], self::$server->control('GET', 'writes'));

        self::$server->fault('500', '/api/v2/people/');
        [$decisions, $events] = $this->runParties('known@example.org', ['join' => [['add', 'Member']]]);
        $this->assertSame(['wrote'], $decisions['join'], 'a check that cannot finish writes anyway');
        $this->assertContains(['join', 'warning: tag check failed, writing anyway: Action Network answered HTTP 500 to the person lookup: Server error'], $events);
    }
}
