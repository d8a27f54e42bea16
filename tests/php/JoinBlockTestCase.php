<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\TestCase;

/**
 * Child PHP processes, scratch directories and the plugin's lock-file name.
 *
 * The suite runs under PHPUnit 9 (Debian 12) and 11 (Debian 13): a test's data provider is
 * named twice, `#[DataProvider]` for PHPUnit 10 and later (which deprecate doc-comment
 * metadata) and `@dataProvider` for PHPUnit 9 (which reads no attributes).
 */
abstract class JoinBlockTestCase extends TestCase
{
    /** The user Debian's PHP-FPM runs a site's PHP as. Root ignores file permissions. */
    public const WEB_USER = 'www-data';

    /** PHP's X.Y, as Debian names its packages and paths: 8.2 on Debian 12, 8.4 on Debian 13. */
    public const PHP_XY = PHP_MAJOR_VERSION . '.' . PHP_MINOR_VERSION;
    /** Debian's CLI and php-fpm of that PHP. */
    public const DEBIAN_PHP = '/usr/bin/php' . self::PHP_XY;
    public const DEBIAN_FPM = '/usr/sbin/php-fpm' . self::PHP_XY;

    /** @var list<string> */
    private array $scratchDirs = [];

    /** @var list<string> */
    private array $mounts = [];

    protected function tearDown(): void
    {
        // Unmounted first: what is mounted in a scratch directory would keep it.
        foreach ($this->mounts as $mount) {
            exec('umount ' . escapeshellarg($mount));
        }
        $this->mounts = [];
        foreach ($this->scratchDirs as $dir) {
            exec('rm -rf ' . escapeshellarg($dir));
        }
        $this->scratchDirs = [];
    }

    /** A fresh directory, removed after the test; under $parent if given. */
    protected function scratchDir(int $mode = 0700, ?string $parent = null): string
    {
        $dir = ($parent ?? sys_get_temp_dir()) . '/joinblock-test-' . bin2hex(random_bytes(6));
        mkdir($dir, $mode);
        chmod($dir, $mode);
        $this->scratchDirs[] = $dir;
        return $dir;
    }

    /** Unmounts $mount after the test, before its scratch directories go. */
    protected function unmountAfter(string $mount): void
    {
        $this->mounts[] = $mount;
    }

    /** A fresh directory WEB_USER owns when we are root: a lock directory PHP may write to, as a site's. */
    protected function webUserScratchDir(): string
    {
        $dir = $this->scratchDir();
        if (posix_geteuid() === 0) {
            $user = posix_getpwnam(self::WEB_USER);
            chown($dir, $user['uid']);
            chgrp($dir, $user['gid']);
        }
        return $dir;
    }

    /**
     * Copies of `$files`, in order, in a fresh directory WEB_USER can read: a PHP running as
     * WEB_USER cannot load them from a checkout only root may enter (CI clones as root).
     *
     * @return list<string>
     */
    protected function webUserCopies(string ...$files): array
    {
        $dir = $this->scratchDir(0755);
        $copies = [];
        foreach ($files as $file) {
            $copy = "$dir/" . basename($file);
            copy($file, $copy);
            chmod($copy, 0644);
            $copies[] = $copy;
        }
        return $copies;
    }

    /** Runs what follows as WEB_USER, as PHP-FPM runs a site's PHP, when we are root. */
    protected static function asWebUser(): array
    {
        return self::asUser(self::WEB_USER);
    }

    /** Runs what follows as $name, when we are root (as ourselves otherwise). */
    protected static function asUser(string $name): array
    {
        if (posix_geteuid() !== 0) {
            return [];
        }
        $user = posix_getpwnam($name);
        return ['setpriv', "--reuid={$user['uid']}", "--regid={$user['gid']}", '--init-groups'];
    }

    /**
     * No lock file in $dir is held, and no more than $most are left. A release keeps its file
     * for the next acquisition (sweeps remove idle ones), so "nothing left held" means each file
     * is free for another party at once: this process takes each with LOCK_NB. $pattern picks
     * the files.
     */
    protected function assertNoLockHeld(string $dir, string $message, int $most = 1024, string $pattern = 'join-lock-*'): void
    {
        $files = glob("$dir/$pattern") ?: [];
        $this->assertLessThanOrEqual($most, \count($files), "$message: lock files left");
        foreach ($files as $file) {
            $handle = @fopen($file, 'r');
            if ($handle === false) {
                clearstatcache();
                $this->assertFileDoesNotExist($file, "$message: $file can be opened, or a sweep removed it");
                continue;
            }
            $this->assertTrue(flock($handle, LOCK_EX | LOCK_NB), "$message: $file is free");
            fclose($handle);
        }
    }

    /** The path the plugin's PHP code uses, computed by PHP itself. */
    protected static function pluginLockPath(string $dir, string $key): string
    {
        return $dir . '/join-lock-' . sha1(strtolower(trim($key)));
    }

    /** The implementation under test: `extension`, or `polyfill` (JOINBLOCK_IMPL, see scripts/test). */
    protected static function implementation(): string
    {
        return getenv('JOINBLOCK_IMPL') === 'polyfill' ? 'polyfill' : 'extension';
    }

    protected static function polyfillFile(): string
    {
        return dirname(__DIR__, 2) . '/php/joinblock.php';
    }

    /** What loads the polyfill in the polyfill run: the Composer autoloader bootstrap.php made. */
    protected static function polyfillEntry(): string
    {
        return \defined('JOINBLOCK_POLYFILL_AUTOLOAD') ? JOINBLOCK_POLYFILL_AUTOLOAD : self::polyfillFile();
    }

    /** Skips a test of what only the extension can have (phpinfo, INI entries), in the polyfill run. */
    protected static function extensionOnly(string $why): void
    {
        if (self::implementation() === 'polyfill') {
            self::markTestSkipped("extension only: $why");
        }
    }

    /** How php --ri labels the extension's process-wide counters: over all threads in a ZTS PHP. */
    protected const COUNTER_SCOPE = PHP_ZTS ? 'this process, all threads' : 'this process';

    /** What the polyfill needs: curl and mbstring for its tag check, mysqli for its mysql backend. */
    protected const POLYFILL_EXTENSIONS = ['curl', 'mbstring', 'mysqlnd', 'mysqli', 'posix'];

    /**
     * PHP's options for a bare PHP (no php.ini) with only one implementation: the one under
     * test unless named. The polyfill's lock needs mysqli for its mysql backend, its tag check curl,
     * and mbstring to compare non-ASCII tag names as the extension does.
     *
     * @return list<string>
     */
    protected static function phpArgs(?string $implementation = null): array
    {
        if (($implementation ?? self::implementation()) === 'polyfill') {
            return self::polyfillArgs(self::POLYFILL_EXTENSIONS, self::polyfillEntry());
        }
        return ['-n', '-d', 'extension=' . getenv('JOINBLOCK_SO')];
    }

    /**
     * phpArgs() for a PHP running as WEB_USER: it loads a copy of the implementation under
     * test that WEB_USER can read.
     *
     * @return list<string>
     */
    protected function webUserPhpArgs(): array
    {
        if (self::implementation() === 'polyfill') {
            // The entry file and the parts it requires, side by side as in php/.
            $copy = $this->scratchDir(0755);
            exec('cp -R ' . escapeshellarg(\dirname(self::polyfillFile())) . '/. ' . escapeshellarg($copy) . ' && chmod -R a+rX ' . escapeshellarg($copy));
            return self::polyfillArgs(self::POLYFILL_EXTENSIONS, $copy . '/' . basename(self::polyfillFile()));
        }
        return ['-n', '-d', 'extension=' . $this->webUserCopies((string) getenv('JOINBLOCK_SO'))[0]];
    }

    /**
     * A bare PHP with the polyfill (this checkout's unless named) and only the PHP extensions named.
     *
     * @param list<string> $extensions
     * @return list<string>
     */
    protected static function polyfillArgs(array $extensions, ?string $polyfill = null): array
    {
        return [...self::bareWith($extensions), '-d', 'auto_prepend_file=' . ($polyfill ?? self::polyfillFile())];
    }

    /**
     * A bare PHP (no php.ini) with only the PHP extensions named, and no implementation.
     *
     * @param list<string> $extensions
     * @return list<string>
     */
    protected static function bareWith(array $extensions): array
    {
        $args = ['-n'];
        // A PHP built from source has them built in, and loading one again only warns.
        foreach (array_diff($extensions, self::builtInExtensions()) as $extension) {
            array_push($args, '-d', "extension=$extension");
        }
        return $args;
    }

    /** @return list<string> the extensions PHP_BINARY has without any php.ini, lowercase */
    private static function builtInExtensions(): array
    {
        static $builtIn = null;
        return $builtIn ??= array_map('strtolower', array_filter(array_map('trim', explode("\n", self::runPhpOk([PHP_BINARY, '-n', '-m'])))));
    }

    /**
     * Skips a test of Debian's packaged PHP (its php-fpmX.Y and nginx set-up, its package
     * paths) when the suite runs under another PHP, such as a thread-safe one built from source.
     */
    protected static function debianPhpOnly(string $what): void
    {
        if (realpath(PHP_BINARY) !== self::DEBIAN_PHP) {
            self::markTestSkipped("$what: Debian's packaged PHP only (" . self::DEBIAN_PHP . "), and this run's PHP is " . PHP_BINARY);
        }
    }

    /** A bare PHP command line with only the implementation under test. */
    protected static function phpCommand(string $script, string ...$args): array
    {
        return [PHP_BINARY, ...static::phpArgs(), $script, ...$args];
    }

    /**
     * The same, running `$code` given inline, with INI `$settings` given as `-d`.
     *
     * @param array<string, string> $settings
     */
    protected static function phpCode(string $code, array $settings = []): array
    {
        $ini = [];
        foreach ($settings as $name => $value) {
            array_push($ini, '-d', "$name=$value");
        }
        // auto_prepend_file does not apply to -r code.
        $require = self::implementation() === 'polyfill' ? 'require ' . var_export(self::polyfillEntry(), true) . ';' : '';
        return [PHP_BINARY, ...static::phpArgs(), ...$ini, '-r', $require . $code];
    }

    /** A single-process lock scenario of fixtures/lock_scenarios.php, run by the implementation under test. */
    protected static function scenario(string $name, string $dir, string $key, string ...$extra): array
    {
        return self::phpCommand(self::fixture('lock_scenarios.php'), $name, $dir, $key, ...$extra);
    }

    /** Starts a scenario and waits until it prints HELD. */
    protected static function startHolding(array $command): array
    {
        $child = self::startPhp($command);
        $line = fgets($child['pipes'][1]);
        self::assertSame("HELD\n", $line, 'the holder reports that it holds the lock');
        return $child;
    }

    protected static function fixture(string $name): string
    {
        return __DIR__ . '/fixtures/' . $name;
    }

    /**
     * Runs a PHP script to completion within `$limit` seconds.
     *
     * @return array{exit: int, out: string, err: string}
     */
    protected static function runPhp(array $command, float $limit = 60.0): array
    {
        $proc = self::startPhp($command);
        return self::finish($proc, $limit);
    }

    /**
     * A holder that forks: a PHP process runs `$acquire` (code that takes a lock into `$lock`),
     * forks a child that sleeps on with its copies of the parent's descriptors, and is killed
     * (SIGKILL). Returns the child's pid, still alive: the caller kills it when done.
     */
    protected function killHolderKeepingItsForkedChild(string $acquire): int
    {
        $parent = self::startPhp(self::phpCode($acquire . <<<'PHP'

            $child = pcntl_fork();
            if ($child === 0) {
                sleep(30);
                exit(0);
            }
            echo "$child\n";
            sleep(60);
            PHP));
        $child = (int) fgets($parent['pipes'][1]);
        $this->assertGreaterThan(0, $child);
        posix_kill(proc_get_status($parent['proc'])['pid'], SIGKILL);
        self::finish($parent);
        $this->assertTrue(posix_kill($child, 0), 'the child lives on');
        return $child;
    }

    /** @return array{proc: resource, pipes: array<int, resource>} */
    protected static function startPhp(array $command): array
    {
        $proc = proc_open($command, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        if (!is_resource($proc)) {
            throw new \RuntimeException('cannot start ' . implode(' ', $command));
        }
        fclose($pipes[0]);
        return ['proc' => $proc, 'pipes' => $pipes];
    }

    /**
     * Lets `$children`, started with `$barrier` (tests/php/fixtures/start_together.php), go at
     * once when every one is ready; fails if one ends first or they are not ready within `$limit`.
     *
     * @param list<array{proc: resource, pipes: array<int, resource>}> $children
     */
    protected static function goWhenReady(string $barrier, array $children, float $limit = 60.0): void
    {
        $deadline = microtime(true) + $limit;
        while (count(glob("$barrier/ready-*")) < count($children)) {
            foreach ($children as $child) {
                if (!proc_get_status($child['proc'])['running']) {
                    self::fail('a party ended before the start: ' . stream_get_contents($child['pipes'][1]) . stream_get_contents($child['pipes'][2]));
                }
            }
            microtime(true) < $deadline || self::fail(sprintf('%d of %d parties ready after %.0f s', count(glob("$barrier/ready-*")), count($children), $limit));
            usleep(2000);
        }
        touch("$barrier/go");
    }

    /**
     * Waits for a started process, killing it past `$limit` seconds (the test then fails).
     *
     * @param array{proc: resource, pipes: array<int, resource>} $child
     * @return array{exit: int, out: string, err: string}
     */
    protected static function finish(array $child, float $limit = 60.0): array
    {
        [$out, $err] = ['', ''];
        foreach ([1, 2] as $i) {
            stream_set_blocking($child['pipes'][$i], false);
        }
        $deadline = microtime(true) + $limit;
        while (true) {
            $out .= stream_get_contents($child['pipes'][1]);
            $err .= stream_get_contents($child['pipes'][2]);
            $status = proc_get_status($child['proc']);
            if (!$status['running']) {
                $out .= stream_get_contents($child['pipes'][1]);
                $err .= stream_get_contents($child['pipes'][2]);
                proc_close($child['proc']);
                return ['exit' => $status['exitcode'], 'out' => $out, 'err' => $err];
            }
            if (microtime(true) > $deadline) {
                proc_terminate($child['proc'], 9);
                proc_close($child['proc']);
                self::fail("child process exceeded {$limit} s; stdout: $out; stderr: $err");
            }
            usleep(2000);
        }
    }

    /** Runs a PHP script and asserts it exited 0 with nothing on stderr; returns stdout. */
    protected static function runPhpOk(array $command, float $limit = 60.0): string
    {
        $result = self::runPhp($command, $limit);
        self::assertSame(0, $result['exit'], "exit code; stderr: {$result['err']}; stdout: {$result['out']}");
        self::assertSame('', $result['err'], 'stderr');
        return $result['out'];
    }

    /** Asserts that `$fn` throws exactly `$class` with a message matching `$pattern`. */
    protected static function assertThrows(string $class, string $pattern, callable $fn): \Throwable
    {
        try {
            $fn();
        } catch (\Throwable $e) {
            self::assertSame($class, get_class($e), 'exception class; message: ' . $e->getMessage());
            self::assertMatchesRegularExpression($pattern, $e->getMessage());
            self::assertReadsAsASentence($e->getMessage());
            return $e;
        }
        self::fail("expected $class matching $pattern, nothing was thrown");
    }

    /**
     * Every message the suite sees: no Rust `Debug` shapes (`CodecError { … }`), and never the
     * test database's password, plain or percent-encoded.
     */
    protected static function assertReadsAsASentence(string $message): void
    {
        self::assertDoesNotMatchRegularExpression('~\b[A-Z][A-Za-z]+ \{ ~', $message, 'a Debug shape in the message');
        self::assertStringNotContainsString(MariaDbServer::PASSWORD, $message);
        self::assertStringNotContainsString(rawurlencode(MariaDbServer::PASSWORD), $message);
    }

    /**
     * One member's log events ([role, event], in time order, logged around the lock as the
     * plugin logs them); returns the roles in the order they held the lock. Every event between
     * a role's "Locked key" and its "Unlocked" is its alone. The next holder may log "Locked
     * key" before the last one logs "Unlocked" (that line follows the release call, and a MySQL
     * waiter is woken before the releaser has its reply), but then the last one may log nothing
     * else.
     */
    protected function assertSectionsNeverInterleave(array $events): array
    {
        $holder = null;
        $releasing = [];
        $order = [];
        foreach ($events as [$role, $event]) {
            if (str_starts_with($event, 'Locked key')) {
                if ($holder !== null) {
                    $releasing[$holder] = true;
                }
                $holder = $role;
                $order[] = $role;
            } elseif ($event === 'Unlocked' && isset($releasing[$role])) {
                unset($releasing[$role]);
            } elseif ($event === 'Unlocked') {
                $this->assertSame($holder, $role);
                $holder = null;
            } elseif (!str_starts_with($event, 'Locking key')) {
                $this->assertSame($holder, $role, "$role: '$event' outside its lock" . ($holder === null ? '' : ", which $holder held"));
            }
        }
        $this->assertSame([], $releasing, 'every holder logged "Unlocked"');
        return $order;
    }

    /** @return array{acquired: int, waited: int, 'timed out': int} */
    protected function infoCounters(): array
    {
        ob_start();
        phpinfo(INFO_MODULES);
        $info = ob_get_clean();
        preg_match_all('~^locks? (acquired|that waited|timeouts) \(' . self::COUNTER_SCOPE . '\) => (\d+)$~m', $info, $m, PREG_SET_ORDER);
        $found = [];
        foreach ($m as [, $name, $value]) {
            $found[['acquired' => 'acquired', 'that waited' => 'waited', 'timeouts' => 'timed out'][$name]] = (int) $value;
        }
        ksort($found);
        $this->assertCount(3, $found, $info);
        return ['acquired' => $found['acquired'], 'waited' => $found['waited'], 'timed out' => $found['timed out']];
    }
}
