<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * Inside a real WordPress (WordPressSite: Debian's wordpress 6.1, nginx, php-fpm as www-data,
 * a private MariaDB): the test plugin (fixtures/wordpress/joinblock-test) requires the Composer
 * package and serves a join route and a Stripe-webhook route that lock and tag as docs/integration.md's
 * integration guide says. Three runs on one site, each with php-fpm restarted:
 * - `extension`: the build under test, loaded with `-d extension=` on php-fpm's command line
 *   (installing it for the whole system would change the PHP of every other test of the suite,
 *   and InstalledFpmTest installs and purges the package itself);
 * - `polyfill`: no extension, only the Composer package;
 * - `mysql`: the extension, locking with GET_LOCK on WordPress's own database, set by the plugin
 *   with joinblock_configure() and DB_HOST / DB_USER / DB_PASSWORD / DB_NAME.
 * Site Health is read through WordPress itself, logged in as the admin the install created.
 *
 * Runs in the extension run of the suite only (it runs the polyfill itself, in php-fpm); needs
 * root (nginx's and php-fpm's workers run as www-data).
 */
final class WordPressTest extends JoinBlockTestCase
{
    private const WORKERS = 8;
    private static ?WordPressSite $site = null;
    private static ?StandInServer $actionNetwork = null;

    public static function setUpBeforeClass(): void
    {
        if (self::implementation() === 'polyfill') {
            self::markTestSkipped('runs in the extension run: it runs php-fpm with and without the extension itself');
        }
        if (posix_geteuid() !== 0) {
            self::markTestSkipped('runs nginx and php-fpm with www-data workers: needs root');
        }
        self::debianPhpOnly("runs WordPress on Debian's php-fpm");
        foreach (['/usr/share/wordpress/wp-settings.php', '/usr/sbin/nginx', '/usr/bin/composer', self::DEBIAN_FPM] as $needed) {
            if (!is_file($needed)) {
                self::markTestSkipped("$needed is missing (scripts/test installs it)");
            }
        }
        self::$actionNetwork = StandInServer::start();
        try {
            self::$site = WordPressSite::create(self::settings('file'));
        } catch (\Throwable $e) {
            self::$actionNetwork->stop();
            throw $e;
        }
    }

    public static function tearDownAfterClass(): void
    {
        self::$site?->destroy();
        self::$site = null;
        self::$actionNetwork?->stop();
        self::$actionNetwork = null;
    }

    /** @return array<string, array{string}> */
    public static function runs(): array
    {
        return ['extension' => ['extension'], 'Composer package only (polyfill)' => ['polyfill'], 'extension, mysql backend' => ['mysql']];
    }

    /** The test plugin's settings for a run; `$override` for the Site Health failure cases. */
    private static function settings(string $run, array $override = []): array
    {
        return $override + [
            'lock_backend' => $run === 'mysql' ? 'mysql' : 'file',
            'action_network_url' => self::$actionNetwork->baseUrl(),
            'api_key' => StandInServer::API_KEY,
        ];
    }

    /** Configures the plugin and (re)starts php-fpm with `$workers` workers for a run. */
    private function startRun(string $run, int $workers, array $override = [], ?string $lockDir = null): WordPressSite
    {
        $site = self::$site;
        $site->configure(self::settings($run, $override));
        // The lock directory and the Action Network URL come from the ini (-d), as on a site:
        // the guide's calls pass neither. Assertions on, as on a developer's site (Debian's
        // php.ini has them off): with WP_DEBUG's E_ALL, the logs then show whatever our code raises.
        $args = ['-d', 'joinblock.action_network_url=' . self::$actionNetwork->baseUrl(), '-d', 'joinblock.lock_dir=' . ($lockDir ?? $site->tempDir()), '-d', 'zend.assertions=1'];
        if ($run !== 'polyfill') {
            array_unshift($args, '-d', 'extension=' . getenv('JOINBLOCK_SO'));
        }
        $site->startPhp($args, $workers);
        return $site;
    }

    /**
     * A join and four webhook deliveries for one member at once, together with a burst of a
     * join and two webhooks for each of four more members: 17 requests through nginx.
     *
     * @dataProvider runs
     */
    #[DataProvider('runs')]
    public function testConcurrentJoinsAndWebhooksThroughWordPressRestRoutes(string $run): void
    {
        $site = $this->startRun($run, self::WORKERS);
        $members = ['solo@example.org' => 4, 'ann@example.org' => 2, "o'brien@example.org" => 2, 'Cy@Example.org' => 2, 'dee@example.org' => 2];
        self::$actionNetwork->load(['Member', 'Paid'], array_map(fn ($email) => ['email' => $email, 'tags' => []], array_keys($members)), 10);
        $requests = [];
        $memberOf = [];
        foreach ($members as $email => $webhooks) {
            $id = 'm' . count($memberOf);
            $memberOf[$id] = $email;
            $requests["$id-join"] = ['joinblock-test/v1/join', ['email' => $email, 'request' => "$id-join"]];
            for ($i = 1; $i <= $webhooks; $i++) {
                $requests["$id-webhook$i"] = ['joinblock-test/v1/stripe-webhook', ['email' => $email, 'request' => "$id-webhook$i"]];
            }
        }
        $started = microtime(true);
        $answers = array_combine(array_keys($requests), $site->postAll(array_values($requests)));
        $elapsed = microtime(true) - $started;

        foreach ($answers as $request => [$status, $body]) {
            $this->assertSame(200, $status, "$request: " . json_encode($body) . "\n" . $site->debugLog() . $site->fpmLog());
            $email = $memberOf[explode('-', $request)[0]];
            $name = 'join-lock-' . sha1(strtolower(trim($email)));
            $this->assertSame($run === 'mysql' ? $name : $site->tempDir() . "/$name", $body['lock'], "$request locked where the site chose");
        }

        // Per member: critical sections never interleave, each request held the lock once.
        $lines = file($site->eventLog(), FILE_IGNORE_NEW_LINES);
        usort($lines, fn ($a, $b) => (int) explode(' ', $a)[0] <=> (int) explode(' ', $b)[0]);
        $byMember = [];
        foreach ($lines as $line) {
            [, $request, $event] = explode(' ', $line, 3);
            $byMember[explode('-', $request)[0]][] = [$request, $event];
        }
        foreach ($members as $email => $webhooks) {
            $id = array_search($email, $memberOf, true);
            $order = $this->assertSectionsNeverInterleave($byMember[$id] ?? []);
            $this->assertCount(1 + $webhooks, $order, "$email: every request held the lock once");
        }

        // Exactly one write of each tag per member: whoever came first, the others found it.
        $writes = [];
        foreach (self::$actionNetwork->control('GET', 'writes') as $write) {
            foreach ($write['add_tags'] as $tag) {
                $writes[strtolower($write['email'])][] = "+$tag";
            }
        }
        foreach (array_keys($members) as $email) {
            $this->assertSame(['+Member', '+Paid'], $writes[strtolower($email)] ?? [], "$email's writes");
        }
        $this->assertCount(count($members), $writes);

        if ($run === 'mysql') {
            $tables = $site->db()->sql('SHOW TABLES FROM ' . MariaDbServer::DATABASE . " LIKE '%joinblock_an%'");
            $this->assertSame("wp_joinblock_an_pace\nwp_joinblock_an_tags", trim($tables), 'the site-wide tables carry the site\'s prefix');
        }
        $this->assertNoLockHeld($site->tempDir(), 'no lock left held');
        $this->assertNoPhpComplaints($site);
        fwrite(STDERR, sprintf("\n  [WordPress %s: %d requests in %.2f s]", $run, count($requests), $elapsed));
    }

    /**
     * Tools → Site Health, read as the admin: the joinblock test and the Info section.
     *
     * @dataProvider runs
     */
    #[DataProvider('runs')]
    public function testSiteHealthShowsTheImplementationAndSettingsInEffect(string $run): void
    {
        // Several workers: Site Health's REST and loopback tests request the site from inside a
        // request.
        $site = $this->startRun($run, 4);
        $site->logIn();
        $version = (string) joinblock_status()['version'];

        $result = $this->siteHealthTest($site);
        $expected = ['extension' => 'good', 'polyfill' => 'recommended', 'mysql' => 'good'][$run];
        $this->assertSame($expected, $result['status'], json_encode($result));
        if ($run === 'polyfill') {
            $this->assertSame('The joinblock PHP extension is not installed', $result['label']);
            $this->assertStringContainsString('How to install the joinblock extension', $result['actions']);
        } else {
            $this->assertSame("The joinblock extension $version is loaded", $result['label']);
        }

        $fields = $this->infoSection($site);
        $this->assertSame($run === 'polyfill' ? 'plain-PHP polyfill (the extension is not loaded)' : 'PHP extension', $fields['Implementation']);
        $this->assertSame($version, $fields['Version']);
        $this->assertSame($run === 'mysql' ? 'mysql' : 'file', $fields['Lock backend']);
        $this->assertSame($site->tempDir(), $fields['Lock directory']);
        $this->assertSame($run === 'mysql' ? sprintf('%s@127.0.0.1:%d/%s', MariaDbServer::USER, $site->db()->port(), MariaDbServer::DATABASE) : '(not set)', $fields['MySQL server for locks']);
        $this->assertSame(self::$actionNetwork->baseUrl(), $fields['Action Network URL']);
        foreach (['Locks acquired', 'Locks that waited', 'Lock timeouts', 'Action Network requests'] as $counter) {
            $value = $fields["$counter (this PHP process)"];
            $run === 'polyfill'
                ? $this->assertSame('not kept by the polyfill, which keeps nothing beyond one request', $value)
                : $this->assertMatchesRegularExpression('~^\d+$~', $value, $counter);
        }

        if ($run === 'polyfill' && is_executable('/usr/bin/chromium')) {
            $dir = getenv('JOINBLOCK_SCREENSHOT_DIR') ?: $this->scratchDir();
            $png = "$dir/site-health-polyfill.png";
            HeadlessChromium::screenshot($site->url('wp-admin/site-health.php'), $site->cookies(), $png, 'health-check-accordion-block-joinblock');
            $this->assertSame("\x89PNG", substr((string) file_get_contents($png), 0, 4));
            $this->assertGreaterThan(20000, filesize($png), 'a page, not a blank');
        }
        $this->assertNoPhpComplaints($site);
    }

    /**
     * Critical when locks cannot work: the lock directory in effect is missing (file
     * backend), or the MySQL server cannot be reached (mysql backend).
     *
     * @dataProvider runs
     */
    #[DataProvider('runs')]
    public function testSiteHealthIsCriticalWhenLocksCannotBeTaken(string $run): void
    {
        $closed = MariaDbServer::freePort();
        $missing = $this->scratchDir() . '/missing';
        $site = $this->startRun($run, 4, $run === 'mysql' ? ['db_host' => "127.0.0.1:$closed"] : [], $missing);
        $site->logIn();
        $result = $this->siteHealthTest($site);
        $this->assertSame('critical', $result['status'], json_encode($result));
        $this->assertSame('Member locks cannot be taken', $result['label']);
        $this->assertStringContainsString(
            $run === 'mysql'
                ? sprintf('The MySQL lock server cannot be used: cannot connect to MySQL server %s@127.0.0.1:%d/%s', MariaDbServer::USER, $closed, MariaDbServer::DATABASE)
                : "The lock directory $missing does not exist.",
            html_entity_decode($result['description'], ENT_QUOTES)
        );
        $this->assertNoPhpComplaints($site);
    }

    /** The joinblock result on the Site Health status page (WordPress runs direct tests there). */
    private function siteHealthTest(WordPressSite $site): array
    {
        [$status, $page] = $site->get('wp-admin/site-health.php');
        $this->assertSame(200, $status);
        $this->assertNoSecrets($page);
        $this->assertMatchesRegularExpression('~var SiteHealth = (\{.*?\});\n~', $page);
        preg_match('~var SiteHealth = (\{.*?\});\n~', $page, $m);
        $health = json_decode($m[1], true, 64, JSON_THROW_ON_ERROR);
        $ours = array_values(array_filter($health['site_status']['direct'], fn ($t) => ($t['test'] ?? '') === 'joinblock'));
        $this->assertCount(1, $ours, 'the joinblock test ran');
        $this->assertSame(['label' => 'Join Flow'], array_intersect_key($ours[0]['badge'], ['label' => 1]));
        return $ours[0];
    }

    /** @return array<string, string> label => value of the Info tab's joinblock section */
    private function infoSection(WordPressSite $site): array
    {
        [$status, $page] = $site->get('wp-admin/site-health.php?tab=debug');
        $this->assertSame(200, $status);
        $this->assertNoSecrets($page);
        $start = strpos($page, 'id="health-check-accordion-block-joinblock"');
        $this->assertNotFalse($start, 'the joinblock section is on the Info tab');
        $table = substr($page, $start, strpos($page, '</table>', $start) - $start);
        // A row's label is a <td> up to WordPress 6.7 and a <th scope="row"> since 6.8.
        preg_match_all('~<tr><(?:td|th scope="row")>(.*?)</t[dh]><td[^>]*>(.*?)</td></tr>~s', $table, $rows, PREG_SET_ORDER);
        $fields = [];
        foreach ($rows as [, $label, $value]) {
            $fields[html_entity_decode($label, ENT_QUOTES)] = html_entity_decode($value, ENT_QUOTES);
        }
        $this->assertNotEmpty($fields);
        return $fields;
    }

    private function assertNoSecrets(string $page): void
    {
        foreach ([MariaDbServer::PASSWORD, rawurlencode(MariaDbServer::PASSWORD), htmlspecialchars(MariaDbServer::PASSWORD), StandInServer::API_KEY] as $secret) {
            $this->assertStringNotContainsString($secret, $page);
        }
    }

    /**
     * No PHP warning, notice or error in WordPress's debug.log or php-fpm's log, and nothing at
     * all from joinblock's code. Left out: WordPress's own deprecations under PHP 8.2, and the
     * warnings of its update checks, which this site (without a network) makes on admin pages.
     */
    private function assertNoPhpComplaints(WordPressSite $site): void
    {
        $offline = '~^.*WordPress could not establish a secure connection to WordPress\.org.*$\n?~m';
        $log = preg_replace($offline, '', $site->debugLog() . $site->fpmLog());
        $this->assertDoesNotMatchRegularExpression('~PHP (Warning|Fatal error|Parse error|Notice)|SIGSEGV|exited on signal~', $log);
        $this->assertDoesNotMatchRegularExpression('~vendor/joinblock/|plugins/joinblock-test/~', $log, 'nothing from joinblock\'s code, not even a deprecation');
    }
}
