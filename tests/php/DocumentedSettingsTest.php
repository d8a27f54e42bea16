<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * Every ini line the documentation shows for the mysql backend (README's ini blocks, the
 * packaged ini's example), loaded as a site admin loads it: from a conf.d file by PHP's own
 * ini parser, and from a php-fpm pool file; then a lock is taken with it.
 */
final class DocumentedSettingsTest extends JoinBlockTestCase
{
    private static MariaDbServer $db;

    public static function setUpBeforeClass(): void
    {
        self::$db = MariaDbServer::startPrivate();
    }

    public static function tearDownAfterClass(): void
    {
        self::$db->destroy();
    }

    /**
     * The documented lines that set a mysql backend setting, as they stand.
     *
     * @return list<string>
     */
    private static function documentedLines(): array
    {
        $root = dirname(__DIR__, 2);
        preg_match_all('~^```ini\n(.*?)^```~ms', (string) file_get_contents("$root/README.md"), $blocks);
        preg_match_all('~^; Example: (.*)$~m', (string) file_get_contents("$root/packaging/joinblock.ini"), $examples);
        $lines = [];
        foreach ([...explode("\n", implode("\n", $blocks[1])), ...$examples[1]] as $line) {
            if (preg_match('~^(php_admin_value\[)?joinblock\.(lock_backend|mysql_url|mysql_connect_timeout)\]?\s*=~', $line)) {
                $lines[] = $line;
            }
        }
        self::assertGreaterThanOrEqual(5, count($lines), 'README and the ini show the mysql settings');
        return $lines;
    }

    /**
     * A documented line aimed at the test's server: its quoting and form (TCP or socket) kept,
     * this server's user, password, address and database put in.
     */
    private static function aimed(string $line): string
    {
        return preg_replace_callback('~mysql://[^"\s]+~', function (array $url): string {
            $credentials = MariaDbServer::USER . ':' . rawurlencode(MariaDbServer::PASSWORD);
            return str_contains($url[0], '?socket=')
                ? "mysql://$credentials@localhost/" . MariaDbServer::DATABASE . '?socket=' . self::$db->socket()
                : "mysql://$credentials@127.0.0.1:" . self::$db->port() . '/' . MariaDbServer::DATABASE;
        }, $line);
    }

    /** @return array<string, array{string}> */
    public static function urlLines(): array
    {
        $cases = [];
        foreach (self::documentedLines() as $line) {
            if (str_contains($line, 'mysql_url')) {
                $cases[$line] = [$line];
            }
        }
        return $cases;
    }

    /**
     * In a conf.d file, with a line after it that must still count (PHP skips the lines after
     * a syntax error).
     *
     * @dataProvider urlLines
     */
    #[DataProvider('urlLines')]
    public function testTheLineWorksInAConfDFile(string $documented): void
    {
        $dir = $this->scratchDir();
        mkdir("$dir/conf.d");
        touch("$dir/php.ini");
        // The implementation under test, loaded by the same file (its -d settings as lines).
        $args = self::phpArgs();
        $loading = [];
        foreach ($args as $i => $arg) {
            if ($arg === '-d') {
                $loading[] = $args[$i + 1];
            }
        }
        $setting = str_starts_with($documented, 'php_admin_value[') ? preg_replace('~^php_admin_value\[([\w.]+)\]~', '$1', $documented) : $documented;
        file_put_contents("$dir/conf.d/20-joinblock.ini", implode("\n", [...$loading, self::aimed($setting), 'joinblock.lock_backend = mysql', '']));
        $require = self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
        $result = self::runPhp(['env', "PHP_INI_SCAN_DIR=$dir/conf.d", PHP_BINARY, '-c', "$dir/php.ini", '-r', $require . 'echo joinblock_acquire_lock("documented@example.org")->path();']);
        $this->assertSame('', $result['err'], 'PHP read the file without complaint');
        $this->assertSame(0, $result['exit'], $result['out']);
        $this->assertSame('join-lock-' . sha1('documented@example.org'), $result['out'], 'a MySQL lock, through the documented line');
    }

    /**
     * In a php-fpm pool file, as README advises for the password: php-fpm starts, and the
     * extension takes the lock on that server. The polyfill cannot see pool settings (README):
     * it takes a file lock there, and joinblock_configure() is its way to the server.
     */
    public function testThePoolFileLinesWorkInPhpFpm(): void
    {
        $pool = array_map(self::aimed(...), array_values(array_filter(self::documentedLines(), fn (string $line) => str_starts_with($line, 'php_admin_value['))));
        $this->assertCount(2, $pool, 'README\'s pool file example: the backend and the server');
        $fpm = FpmServer::start($this->scratchDir(), 1, $this->webUserPhpArgs(), null, $pool);
        try {
            $asConfigured = $fpm->request('lock_path.php', ['email' => 'pool@example.org']);
            $this->assertSame(200, $asConfigured['status'], $asConfigured['body'] . $fpm->log());
            $name = 'join-lock-' . sha1('pool@example.org');
            if (self::implementation() === 'extension') {
                $this->assertSame($name, $asConfigured['body'], 'a MySQL lock, through the pool file');
            } else {
                $this->assertStringEndsWith("/$name", $asConfigured['body'], 'the polyfill stays on files: it cannot see pool settings');
                $configured = $fpm->request('lock_path.php', ['email' => 'pool@example.org', 'configure' => json_encode(['lock_backend' => 'mysql', 'mysql_url' => self::$db->url()])]);
                $this->assertSame($name, $configured['body'], 'joinblock_configure() reaches the server');
            }
        } finally {
            $fpm->stop();
        }
    }
}
