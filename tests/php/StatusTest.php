<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/** joinblock_status(): what Site Health shows, from either implementation, without secrets. */
final class StatusTest extends JoinBlockTestCase
{
    /**
     * joinblock_status() in a fresh PHP process (PHPUnit 10+ has a final TestCase::status()).
     *
     * @param array<string, string> $ini
     */
    private static function joinblockStatus(string $before = '', array $ini = []): array
    {
        $out = self::runPhpOk(self::phpCode($before . 'echo json_encode(joinblock_status());', $ini));
        return json_decode($out, true, 16, JSON_THROW_ON_ERROR);
    }

    public function testDefaultsNameTheImplementationVersionAndSettingsInEffect(): void
    {
        preg_match('~^version = "([^"]+)"~m', (string) file_get_contents(dirname(__DIR__, 2) . '/Cargo.toml'), $version);
        $status = self::joinblockStatus();
        $this->assertSame([
            'implementation' => self::implementation(),
            'version' => $version[1],
            'lock_backend' => 'file',
            'lock_dir' => sys_get_temp_dir(),
            'mysql_server' => null,
            'action_network_url' => 'https://actionnetwork.org/api/v2/',
        ], array_intersect_key($status, array_flip(['implementation', 'version', 'lock_backend', 'lock_dir', 'mysql_server', 'action_network_url'])));
        $this->assertSame([], $status['problems']);
        $this->assertSame(['action_network_url', 'counters', 'implementation', 'lock_backend', 'lock_dir', 'mysql_server', 'problems', 'shared_state', 'thread_safety', 'version'], self::sortedKeys($status));
    }

    public function testTheBuildIsNamedNtsOrZtsAndZtsCountersSayAllThreads(): void
    {
        $build = PHP_ZTS ? 'ZTS' : 'NTS';
        $this->assertSame($build, self::joinblockStatus()['thread_safety']);
        if (self::implementation() === 'polyfill') {
            return;
        }
        $info = self::runPhpOk([PHP_BINARY, ...self::phpArgs(), '--ri', 'joinblock']);
        $this->assertMatchesRegularExpression("~^thread safety => $build\$~m", $info);
        // Process-wide counters, and in a thread-safe PHP the label says they add up every thread's.
        foreach (['locks acquired', 'locks that waited', 'lock timeouts', 'Action Network requests', 'tag cache entries'] as $counter) {
            $this->assertMatchesRegularExpression('~^' . preg_quote("$counter (" . self::COUNTER_SCOPE . ') => ', '~') . '0$~m', $info);
        }
    }

    /** build.rs stamps the commit a build was made from into php --ri's version row. */
    public function testPhpRiNamesTheCommitOfACheckoutBuild(): void
    {
        self::extensionOnly('the version row with the commit is the built extension\'s');
        $root = dirname(__DIR__, 2);
        $commit = self::runPhpOk(['git', '-C', $root, 'rev-parse', '--short=12', 'HEAD']);
        preg_match('~^version = "([^"]+)"~m', (string) file_get_contents("$root/Cargo.toml"), $version);
        $info = self::runPhpOk([PHP_BINARY, ...self::phpArgs(), '--ri', 'joinblock']);
        $this->assertMatchesRegularExpression('~^version => ' . preg_quote($version[1] . ' (git ' . trim($commit) . ')', '~') . '$~m', $info);
    }

    public function testIniSettingsAndConfigureAreReportedWithoutThePassword(): void
    {
        $dir = $this->scratchDir();
        $ini = ['joinblock.lock_dir' => $dir, 'joinblock.action_network_url' => 'http://127.0.0.1:9/api/v2/'];
        $status = self::joinblockStatus('', $ini);
        $this->assertSame($dir, $status['lock_dir']);
        $this->assertSame('http://127.0.0.1:9/api/v2/', $status['action_network_url']);

        $configure = sprintf('joinblock_configure(["lock_backend" => "mysql", "db_host" => "db.internal:3307", "db_user" => "wp", "db_password" => %s, "db_name" => "site"]);', var_export(MariaDbServer::PASSWORD, true));
        $status = self::joinblockStatus($configure, $ini);
        $this->assertSame('mysql', $status['lock_backend']);
        $this->assertSame('wp@db.internal:3307/site', $status['mysql_server']);
        // The tag check's shared state would span the hosts through that server, which is not there.
        $this->assertSame(['shared_state'], self::sortedKeys($status['problems']));
        $this->assertStringStartsWith('the site-wide shared state cannot be used (cannot connect to MySQL server wp@db.internal:3307/site: ', $status['problems']['shared_state']);
        $this->assertStringEndsWith("; each host uses this host's lock directory $dir instead", $status['problems']['shared_state']);
        $this->assertReadsAsASentence(json_encode($status, JSON_UNESCAPED_SLASHES));

        $url = sprintf('mysql://wp:%s@localhost/site?socket=/run/mysqld/mysqld.sock', rawurlencode(MariaDbServer::PASSWORD));
        $status = self::joinblockStatus('', ['joinblock.lock_backend' => 'mysql', 'joinblock.mysql_url' => "\"$url\""]);
        $this->assertSame('wp@localhost:/run/mysqld/mysqld.sock/site', $status['mysql_server']);
        $this->assertReadsAsASentence(json_encode($status, JSON_UNESCAPED_SLASHES));
    }

    public function testUnusableSettingsAreNullWithTheReason(): void
    {
        $status = self::joinblockStatus('', ['joinblock.lock_backend' => 'nfs', 'joinblock.mysql_url' => 'postgres://x@y/z']);
        $this->assertNull($status['lock_backend']);
        $this->assertNull($status['mysql_server']);
        $this->assertSame(['lock_backend', 'mysql_server'], self::sortedKeys($status['problems']));
        $this->assertStringContainsString('INI joinblock.lock_backend is "nfs"', $status['problems']['lock_backend']);
        $this->assertStringStartsWith('INI joinblock.mysql_url ', $status['problems']['mysql_server']);
        foreach ($status['problems'] as $problem) {
            $this->assertReadsAsASentence($problem);
        }
    }

    public function testCountersAreThisProcessesForTheExtensionAndAbsentForThePolyfill(): void
    {
        $dir = $this->scratchDir();
        $code = sprintf(
            '$a = joinblock_acquire_lock("c@example.org", ["dir" => %1$s]); try { joinblock_acquire_lock("c@example.org ", ["dir" => %1$s, "timeout" => 0]); } catch (JoinBlock\LockException $e) {} $a->release();'
            . ' joinblock_acquire_lock("d@example.org", ["dir" => %1$s]);',
            var_export($dir, true)
        );
        $status = self::joinblockStatus($code);
        if (self::implementation() === 'polyfill') {
            $this->assertNull($status['counters'], 'nothing outlives a request in the polyfill');
            return;
        }
        // The second call on the same key is refused at once (this thread holds it): no timeout.
        $this->assertSame(['locks_acquired' => 2, 'locks_waited' => 0, 'lock_timeouts' => 0, 'action_network_requests' => 0], $status['counters']);
    }

    /** @return list<string> */
    private static function sortedKeys(array $array): array
    {
        $keys = array_keys($array);
        sort($keys);
        return $keys;
    }
}
