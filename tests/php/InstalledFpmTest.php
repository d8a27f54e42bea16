<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * The Debian package as a site admin installs it (`apt-get install ./php8.2-joinblock_*.deb` on
 * Debian 12, php8.4-joinblock on Debian 13, built by scripts/package from the build under
 * test), then Debian's php-fpm started
 * WITHOUT `-n` or `-d extension=`: only the installed conf.d/mods-available files load the
 * extension. Real FastCGI requests take locks and check tags; then the package is removed.
 *
 * Needs root (it installs a package for the whole system). The package is removed and purged
 * at the end, also when a test fails; a lock file in /run/lock makes a second run of the suite
 * on this machine wait for that. While it is installed the system's PHP loads it; this PHPUnit
 * process does not (scripts/test gives it a PHP_INI_SCAN_DIR without joinblock), and the
 * processes started here get the system's ini files back (no PHP_INI_SCAN_DIR).
 */
final class InstalledFpmTest extends JoinBlockTestCase
{
    private const PACKAGE = 'php' . self::PHP_XY . '-joinblock';
    private const INI = '/etc/php/' . self::PHP_XY . '/mods-available/joinblock.ini';
    private const SO = PHP_EXTENSION_DIR . '/joinblock.so';
    private const PHP = self::DEBIAN_PHP;
    private const FPM = self::DEBIAN_FPM;
    private const SAPIS = ['cli', 'fpm'];
    /** Waits for the dpkg lock (an apt run elsewhere on the machine) instead of failing. */
    private const APT_OPTIONS = ['-o', 'DPkg::Lock::Timeout=300'];

    /** Whether this class may have left the package on the system. */
    private static bool $mayBeInstalled = false;

    /** @var resource|null held (flock) while this class has the package: one run at a time */
    private static $guard = null;

    public static function setUpBeforeClass(): void
    {
        if (getenv('JOINBLOCK_IMPL') === 'polyfill') {
            self::markTestSkipped('tests the installed extension package: nothing to test against the polyfill');
        }
        if (posix_geteuid() !== 0) {
            self::markTestSkipped('installs and removes a Debian package for the whole system: needs root');
        }
        self::debianPhpOnly("installs the package of this build into Debian's PHP");
        foreach ([self::PHP, self::FPM, '/usr/bin/cgi-fcgi', '/usr/bin/apt-get', '/usr/sbin/phpenmod'] as $tool) {
            if (!is_executable($tool)) {
                self::markTestSkipped("$tool is missing (scripts/test installs it)");
            }
        }
        // Another run of the suite on this machine (same work tree or not) waits for this one.
        self::$guard = fopen('/run/lock/joinblock-installed-fpm-test.lock', 'ce');
        $deadline = microtime(true) + 600;
        while (!flock(self::$guard, LOCK_EX | LOCK_NB)) {
            if (microtime(true) > $deadline) {
                self::releaseGuard();
                throw new \RuntimeException('another run of InstalledFpmTest held its lock for 10 minutes');
            }
            usleep(200000);
        }
        if (is_file(self::INI) && !self::packageKnownToDpkg()) {
            self::releaseGuard();
            self::markTestSkipped('joinblock was installed by scripts/install on this machine: run scripts/uninstall first (this test installs and removes the package)');
        }
        self::$mayBeInstalled = true;
        try {
            $deb = self::buildPackage();
            $apt = self::runCommand(['apt-get', ...self::APT_OPTIONS, 'install', '-y', '--no-install-recommends', $deb]);
            if ($apt['exit'] !== 0) {
                throw new \RuntimeException("apt-get install $deb failed: {$apt['out']} {$apt['err']}");
            }
        } catch (\Throwable $e) {
            // PHPUnit does not run tearDownAfterClass when this method fails.
            try {
                self::removePackage();
            } finally {
                self::releaseGuard();
            }
            throw $e;
        }
    }

    public static function tearDownAfterClass(): void
    {
        try {
            if (!self::$mayBeInstalled) {
                return;
            }
            self::removePackage();
            if (self::packageKnownToDpkg()) {
                throw new \RuntimeException(self::PACKAGE . ' is still known to dpkg after apt-get purge');
            }
            if (in_array('joinblock', self::modules([self::PHP, '-m']), true)) {
                throw new \RuntimeException('the system PHP still loads joinblock after the package was purged');
            }
        } finally {
            self::releaseGuard();
        }
    }

    public function testThePackageEnablesTheExtensionForCliAndFpm(): void
    {
        $this->assertSame('install ok installed', self::dpkgStatus());
        $files = explode("\n", self::runOk(['dpkg', '-L', self::PACKAGE]));
        $this->assertContains(self::SO, $files);
        $this->assertContains(self::INI, $files);
        $this->assertStringContainsString(self::INI, self::runOk(['dpkg-query', '-W', '-f=${Conffiles}', self::PACKAGE]), 'the ini is a conffile: an admin\'s edits survive upgrades');
        foreach (self::SAPIS as $sapi) {
            $this->assertSame(self::INI, @readlink('/etc/php/' . self::PHP_XY . "/$sapi/conf.d/20-joinblock.ini"), "enabled for $sapi by phpenmod");
        }
        $this->assertContains('joinblock', self::modules([self::FPM, '-m']), 'php-fpm' . self::PHP_XY . ' -m, with its own ini files');
        $this->assertContains('joinblock', self::modules([self::PHP, '-m']), 'php -m, with its own ini files');
    }

    public function testTheIniDocumentsEverySettingWithItsDefault(): void
    {
        $ini = (string) file_get_contents(self::INI);
        $lines = explode("\n", $ini);
        $this->assertContains('; priority=20', $lines);
        $this->assertContains('extension=joinblock.so', $lines);
        // The build under test (loaded in this process) states its settings and defaults.
        $settings = ini_get_all('joinblock', true);
        $this->assertNotEmpty($settings);
        $documented = [];
        foreach ($lines as $i => $line) {
            if (!preg_match('~^(;?)\s*(joinblock\.\w+)\s*=~', $line, $m)) {
                continue;
            }
            $documented[] = $m[2];
            $above = $lines[$i - 1] ?? '';
            $this->assertTrue(str_starts_with($above, '; ') && !str_contains($above, '='), "$m[2]: a comment above it says what it does");
            $parsed = parse_ini_string(ltrim($line, ';'), false, INI_SCANNER_RAW);
            $this->assertIsArray($parsed, $line);
            $this->assertArrayHasKey($m[2], $settings, "$m[2] is documented but the extension has no such setting");
            if ($m[1] === ';') {
                // Uncommented, the line is valid INI and sets the default.
                $this->assertSame($settings[$m[2]]['global_value'] ?? '', $parsed[$m[2]], "$m[2]: documented default");
            } else {
                // The one setting the installer sets: the private lock directory.
                $this->assertSame(['joinblock.lock_dir' => '/run/joinblock'], $parsed);
            }
        }
        $this->assertEqualsCanonicalizing(array_keys($settings), $documented, 'every setting is in the ini, once');
    }

    public function testConcurrentLockAndTagRequestsUnderTheInstalledExtension(): void
    {
        $server = StandInServer::start();
        $locks = $this->webUserScratchDir();
        $fpm = FpmServer::start($this->scratchDir(), 4, [], self::systemEnv());
        try {
            $server->load(['Member', 'Donor', 'Volunteer'], [
                ['email' => 'a@example.org', 'tags' => ['Member']],
                ['email' => "o'brien@example.org", 'tags' => ['Donor', 'Volunteer']],
            ]);
            $tagChecks = [
                ['a@example.org', 'Member', true],
                ['a@example.org', 'member', true],
                ['a@example.org', 'Donor', false],
                ["o'brien@example.org", 'Volunteer', true],
                ["o'brien@example.org", 'Member', false],
                ['nobody@example.org', 'Member', null],
            ];
            $requests = [];
            $expected = [];
            $locking = 0;
            for ($i = 0; $i < 30; $i++) {
                if ($i % 3 === 2) {
                    [$email, $tag, $result] = $tagChecks[intdiv($i, 3) % count($tagChecks)];
                    $requests[] = ['tag.php', ['email' => $email, 'tag' => $tag, 'key' => StandInServer::API_KEY, 'base' => $server->baseUrl()]];
                    $expected[] = ['tag', $result, "$email / $tag"];
                } else {
                    $email = ['a@example.org', 'B@example.org ', 'c@example.org'][$locking++ % 3];
                    $requests[] = ['lock.php', ['email' => $email, 'dir' => $locks, 'hold_ms' => 30]];
                    $expected[] = ['lock', null, $email];
                }
            }
            $answers = $fpm->requestAll($requests);
            $pids = [];
            foreach ($answers as $i => $answer) {
                [$kind, $result, $what] = $expected[$i];
                $this->assertSame(200, $answer['status'], "$kind $what: {$answer['body']} {$answer['stderr']}");
                $body = json_decode($answer['body'], true);
                $this->assertIsArray($body, "$kind $what: {$answer['body']}");
                if ($kind === 'lock') {
                    $this->assertFalse($body['overlap'], "two requests were inside $what's lock at once");
                    $pids[$body['pid']] = true;
                } else {
                    $this->assertArrayNotHasKey('exception', $body, "$what: " . ($body['message'] ?? ''));
                    $this->assertSame($result, $body['result'], "tag check $what");
                }
            }
            $this->assertGreaterThan(1, count($pids), 'several workers took locks');
            $this->assertNoLockHeld($locks, 'no lock left held');
            $this->assertSame([], preg_grep('~/join-lock-[0-9a-f]{40}$~', glob("$locks/*"), PREG_GREP_INVERT), 'nothing but lock files (no markers)');
            $this->assertDoesNotMatchRegularExpression('~SIGSEGV|SIGABRT|exited on signal|core dumped~', $fpm->log(), 'no worker crashed');
        } finally {
            $fpm->stop();
            $server->stop();
        }
    }

    public function testAFatalErrorMidLockDoesNotLeaveTheLockHeldOnThatWorker(): void
    {
        $locks = $this->webUserScratchDir();
        $fpm = FpmServer::start($this->scratchDir(), 1, [], self::systemEnv());
        try {
            $query = ['email' => 'dies@example.org', 'dir' => $locks, 'hold_ms' => 0];
            $first = $fpm->request('lock.php', $query);
            $this->assertSame(200, $first['status'], $first['body'] . $first['stderr']);
            $worker = json_decode($first['body'], true)['pid'];

            $died = $fpm->request('lock.php', $query + ['fatal' => 1]);
            $this->assertSame(500, $died['status']);
            $this->assertStringContainsString('Allowed memory size', $died['body'] . $died['stderr'] . $fpm->log(), 'the request died of a fatal error');
            $this->assertStringNotContainsString('"overlap"', $died['body'], 'it never reached its end');

            // The pool's only worker serves the next request: the lock must be free at once
            // (lock.php would wait 20 s for a leaked one, then fail).
            $start = microtime(true);
            $next = $fpm->request('lock.php', $query);
            $this->assertSame(200, $next['status'], $next['body'] . $next['stderr']);
            $body = json_decode($next['body'], true);
            $this->assertSame($worker, $body['pid'], 'the same worker, which survived the fatal error');
            $this->assertFalse($body['overlap']);
            $this->assertLessThan(10, microtime(true) - $start, 'the lock was free, not waited for');
            $this->assertNoLockHeld($locks, 'the dead request held nothing');
            $this->assertDoesNotMatchRegularExpression('~SIGSEGV|SIGABRT|exited on signal|core dumped~', $fpm->log());
        } finally {
            $fpm->stop();
        }
    }

    /**
     * The package makes a lock directory only PHP's user can enter, the ini points at it, and
     * systemd-tmpfiles makes it again (as at boot) from the entry the package installed.
     */
    public function testThePrivateLockDirectoryIsMadeAndMadeAgainAtBoot(): void
    {
        $check = function (): void {
            clearstatcache();
            $this->assertDirectoryExists('/run/joinblock');
            $this->assertSame(040700, fileperms('/run/joinblock'), 'only its owner may enter');
            $this->assertSame(self::WEB_USER, posix_getpwuid(fileowner('/run/joinblock'))['name']);
        };
        $check();
        $this->assertContains('/usr/lib/tmpfiles.d/joinblock.conf', explode("\n", self::runOk(['dpkg', '-L', self::PACKAGE])));
        $this->assertMatchesRegularExpression('~^lock directory in effect => /run/joinblock$~m', self::runOk([self::PHP, '--ri', 'joinblock']), 'no warning');
        $this->assertMatchesRegularExpression('~^lock directory in effect => /tmp \(shared with other local users: set joinblock\.lock_dir\)$~m', self::runOk([self::PHP, '-d', 'joinblock.lock_dir=/tmp', '--ri', 'joinblock']));

        self::runOk(['rm', '-rf', '/run/joinblock']);
        self::runOk(['systemd-tmpfiles', '--create', 'joinblock.conf']);
        $check();

        // A request as www-data, as the site's php-fpm runs it, locks there by default.
        $lock = self::runCommand(['setpriv', '--reuid=' . self::WEB_USER, '--regid=' . self::WEB_USER, '--init-groups', self::PHP, '-r', 'echo joinblock_acquire_lock("run@example.org")->path();']);
        $this->assertSame('/run/joinblock/join-lock-' . sha1('run@example.org'), $lock['out'], $lock['err']);
    }

    public function testPhpRiShowsTheVersionTheSettingsInEffectAndCounters(): void
    {
        $info = self::runOk([self::PHP, '--ri', 'joinblock']);
        $this->assertStringNotContainsString('Warning', $info);
        // build.rs's stamp: the version and the commit of this checkout; the package's changelog
        // names the same build, so an admin can tell which commit is installed.
        $build = self::cargoVersion() . ' (git ' . trim(self::runOk(['git', '-C', dirname(__DIR__, 2), 'rev-parse', '--short=12', 'HEAD'])) . ')';
        $this->assertMatchesRegularExpression('~^version => ' . preg_quote($build, '~') . '$~m', $info);
        $changelog = self::runOk(['sh', '-c', 'zcat /usr/share/doc/' . self::PACKAGE . '/changelog.Debian.gz']);
        $this->assertMatchesRegularExpression('~^' . preg_quote(self::PACKAGE . ' (' . self::cargoVersion() . ') ', '~') . '.*\n\n  \* joinblock ' . preg_quote($build, '~') . ', built for PHP ' . preg_quote(self::PHP_XY, '~') . '\.~', $changelog);
        $this->assertMatchesRegularExpression('~^lock directory in effect => /run/joinblock$~m', $info);
        $this->assertMatchesRegularExpression('~^Action Network URL => https://actionnetwork\.org/api/v2/$~m', $info);
        foreach (['locks acquired', 'locks that waited', 'lock timeouts', 'Action Network requests'] as $counter) {
            $this->assertMatchesRegularExpression("~^$counter \(this process\) => 0$~m", $info);
        }

        // Settings in effect follow the ini files and -d.
        $dir = $this->scratchDir();
        $this->assertMatchesRegularExpression('~^lock directory in effect => ' . preg_quote($dir, '~') . '$~m', self::runOk([self::PHP, '-d', "joinblock.lock_dir=$dir", '--ri', 'joinblock']));

        // Counters count this process's work.
        $code = '$l = joinblock_acquire_lock("ri@example.org", ["dir" => $argv[1]]); $l->release(); phpinfo(INFO_MODULES);';
        $after = self::runOk([self::PHP, '-r', $code, '--', $dir]);
        $this->assertMatchesRegularExpression('~^locks acquired \(this process\) => 1$~m', $after);
    }

    /** Runs last (declaration order): the removal itself is under test. */
    public function testRemovingThePackageDisablesItAndPurgingLeavesNothing(): void
    {
        $remove = self::runCommand(['apt-get', ...self::APT_OPTIONS, 'remove', '-y', self::PACKAGE]);
        $this->assertSame(0, $remove['exit'], $remove['out'] . $remove['err']);
        $this->assertNotContains('joinblock', self::modules([self::PHP, '-m']), 'php -m after apt-get remove');
        $this->assertNotContains('joinblock', self::modules([self::FPM, '-m']), 'php-fpm' . self::PHP_XY . ' -m after apt-get remove');
        $this->assertFileDoesNotExist(self::SO);
        foreach (self::SAPIS as $sapi) {
            $this->assertSame([], glob('/etc/php/' . self::PHP_XY . "/$sapi/conf.d/*joinblock*"), "no $sapi conf.d link");
        }
        $this->assertFileExists(self::INI, 'apt remove keeps the (conffile) ini, as Debian does');

        $purge = self::runCommand(['apt-get', ...self::APT_OPTIONS, 'purge', '-y', self::PACKAGE]);
        $this->assertSame(0, $purge['exit'], $purge['out'] . $purge['err']);
        $this->assertFileDoesNotExist(self::INI);
        $this->assertFileDoesNotExist('/usr/lib/tmpfiles.d/joinblock.conf');
        $this->assertDirectoryDoesNotExist('/run/joinblock');
        $this->assertSame([], glob('/var/lib/php/modules/' . self::PHP_XY . '/*/*/joinblock'), 'no phpenmod state left');
        $this->assertFileDoesNotExist('/var/lib/php/modules/' . self::PHP_XY . '/registry/joinblock');
        $this->assertFalse(self::packageKnownToDpkg());
        self::$mayBeInstalled = false;
    }

    /**
     * Runs after the package is gone: scripts/install makes the same lock directory, for the
     * user JOINBLOCK_PHP_USER names, and scripts/uninstall removes it with the rest.
     */
    public function testScriptsInstallMakesTheLockDirectoryForThePoolUserAndUninstallRemovesIt(): void
    {
        $this->assertFalse(self::packageKnownToDpkg(), 'the package test ran first');
        $root = dirname(__DIR__, 2);
        try {
            $install = self::runCommand(['env', 'JOINBLOCK_SO=' . getenv('JOINBLOCK_SO'), 'JOINBLOCK_PHP_USER=nobody', "$root/scripts/install"]);
            $this->assertSame(0, $install['exit'], $install['out'] . $install['err']);
            clearstatcache();
            $this->assertSame(040700, fileperms('/run/joinblock'));
            $this->assertSame('nobody', posix_getpwuid(fileowner('/run/joinblock'))['name']);
            $this->assertStringContainsString('d /run/joinblock 0700 nobody nogroup -', (string) file_get_contents('/etc/tmpfiles.d/joinblock.conf'));
            $this->assertMatchesRegularExpression('~^lock directory in effect => /run/joinblock$~m', $install['out'], 'its php --ri');
            self::runOk(['rm', '-rf', '/run/joinblock']);
            self::runOk(['systemd-tmpfiles', '--create', 'joinblock.conf']);
            $this->assertSame('nobody', posix_getpwuid(fileowner('/run/joinblock'))['name'], 'made again as at boot, from the override');
        } finally {
            $uninstall = self::runCommand(["$root/scripts/uninstall"]);
        }
        $this->assertSame(0, $uninstall['exit'], $uninstall['out'] . $uninstall['err']);
        foreach (['/run/joinblock', '/etc/tmpfiles.d/joinblock.conf', '/usr/lib/tmpfiles.d/joinblock.conf', self::INI, self::SO] as $gone) {
            $this->assertFileDoesNotExist($gone);
        }
    }

    /** Builds the .deb of the build under test with scripts/package; returns its path. */
    private static function buildPackage(): string
    {
        $package = self::runCommand([dirname(__DIR__, 2) . '/scripts/package']);
        $lines = explode("\n", trim($package['out']));
        $deb = end($lines);
        if ($package['exit'] !== 0 || !preg_match('~/' . preg_quote(self::PACKAGE, '~') . '_[^/]+_[a-z0-9]+\.deb$~', $deb) || !is_file($deb)) {
            throw new \RuntimeException("scripts/package failed: {$package['out']} {$package['err']}");
        }
        return $deb;
    }

    private static function removePackage(): void
    {
        if (self::packageKnownToDpkg()) {
            $purge = self::runCommand(['apt-get', ...self::APT_OPTIONS, 'purge', '-y', self::PACKAGE]);
            if ($purge['exit'] !== 0) {
                throw new \RuntimeException('apt-get purge ' . self::PACKAGE . " failed: {$purge['out']} {$purge['err']}");
            }
        }
        self::$mayBeInstalled = false;
    }

    private static function releaseGuard(): void
    {
        if (self::$guard !== null) {
            flock(self::$guard, LOCK_UN);
            fclose(self::$guard);
            self::$guard = null;
        }
    }

    private static function dpkgStatus(): string
    {
        return trim(self::runCommand(['dpkg-query', '-W', '-f=${Status}', self::PACKAGE])['out']);
    }

    /** Installed, or removed with its conffile left ("rc"). */
    private static function packageKnownToDpkg(): bool
    {
        $status = self::dpkgStatus();
        return $status !== '' && !str_contains($status, 'not-installed');
    }

    /**
     * This process's environment as the system's PHP should see it: no PHP_INI_SCAN_DIR (so
     * the installed ini files count) and apt without questions. The package script gets the
     * build under test through JOINBLOCK_SO, set by scripts/test.
     *
     * @return array<string, string>
     */
    private static function systemEnv(): array
    {
        $env = getenv();
        unset($env['PHP_INI_SCAN_DIR']);
        return ['DEBIAN_FRONTEND' => 'noninteractive'] + $env;
    }

    /** @return array{exit: int, out: string, err: string} */
    private static function runCommand(array $command, float $limit = 300): array
    {
        $proc = proc_open($command, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, self::systemEnv());
        if (!is_resource($proc)) {
            throw new \RuntimeException('cannot start ' . implode(' ', $command));
        }
        return self::finish(['proc' => $proc, 'pipes' => $pipes], $limit);
    }

    private static function runOk(array $command): string
    {
        $result = self::runCommand($command);
        self::assertSame(0, $result['exit'], implode(' ', $command) . ": {$result['out']} {$result['err']}");
        return $result['out'];
    }

    /** @return list<string> the module names that `php -m` / `php-fpm -m` print */
    private static function modules(array $command): array
    {
        return array_map('trim', explode("\n", self::runOk($command)));
    }

    private static function cargoVersion(): string
    {
        preg_match('~^version = "([^"]+)"~m', (string) file_get_contents(dirname(__DIR__, 2) . '/Cargo.toml'), $m);
        return $m[1];
    }
}
