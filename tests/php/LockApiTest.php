<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use JoinBlock\Lock;
use JoinBlock\LockException;
use JoinBlock\LockTimeoutException;

/** The lock API inside one process: names, arguments, release semantics, exceptions. */
final class LockApiTest extends JoinBlockTestCase
{
    /** @return array<string, array{string}> */
    public static function keys(): array
    {
        return [
            'email' => ['member@example.org'],
            'upper case and spaces' => ["  Member@Example.ORG \n"],
            'tabs, NUL and vertical tab trimmed' => ["\t\0\x0Ba@b.org\x0B\0\t"],
            'NUL inside' => ["a\0b@example.org"],
            'form feed (trim() strips it from PHP 8.6 on)' => ["\fa@b.org\f"],
            'UTF-8 upper case left alone' => ['ÉLODIE@exemple.fr'],
            'invalid UTF-8' => ["\xff\xfeBad@Example.org\xc3"],
            'session token' => ['3f9a1c0e-7b7e-4a0b-9a53-4f0d2b1e6c11'],
        ];
    }

    /** @dataProvider keys */
    #[DataProvider('keys')]
    public function testLockFileNameMatchesThePluginByteForByte(string $key): void
    {
        $dir = $this->scratchDir();
        $lock = joinblock_acquire_lock($key, ['dir' => $dir]);
        $this->assertSame(self::pluginLockPath($dir, $key), $lock->path());
        $this->assertFileExists($lock->path());
        $this->assertSame(0600, fileperms($lock->path()) & 0777);
        $lock->release();
    }

    public function testDefaultDirectoryIsSysTempDirUnlessPhpIniNamesOne(): void
    {
        $lock = joinblock_acquire_lock('default-dir@example.org');
        $this->assertSame(self::pluginLockPath(sys_get_temp_dir(), 'default-dir@example.org'), $lock->path());
        $lock->release();

        // As a site admin sets it in php.ini (here with -d).
        $dir = $this->scratchDir();
        $code = 'echo joinblock_acquire_lock("ini-dir@example.org")->path();';
        $this->assertSame(self::pluginLockPath($dir, 'ini-dir@example.org'), self::runPhpOk(self::phpCode($code, ['joinblock.lock_dir' => $dir])));
    }

    public function testARelativeDirectoryIsUnderPhpsWorkingDirectory(): void
    {
        // A thread-safe PHP's chdir() moves only the request thread's working directory, not
        // the process's: the lock must land where PHP's own file functions would put it.
        $dir = $this->scratchDir();
        mkdir("$dir/locks", 0700);
        $code = sprintf('chdir(%s); $lock = joinblock_acquire_lock("relative@example.org", ["dir" => "locks"]);'
            . ' echo $lock->path(), "\n", json_encode(file_exists("locks/" . basename($lock->path())));', var_export($dir, true));
        $this->assertSame(self::pluginLockPath("$dir/locks", 'relative@example.org') . "\ntrue", self::runPhpOk(self::phpCode($code)));
    }

    public function testIniSetChangesTheDefaultDirectory(): void
    {
        self::extensionOnly('ini_set() of joinblock.lock_dir (a PHP script cannot register INI entries)');
        $this->assertSame('', ini_get('joinblock.lock_dir'));
        $dir = $this->scratchDir();
        ini_set('joinblock.lock_dir', $dir);
        try {
            $lock = joinblock_acquire_lock('ini-dir@example.org');
            $this->assertSame(self::pluginLockPath($dir, 'ini-dir@example.org'), $lock->path());
            $lock->release();
        } finally {
            ini_restore('joinblock.lock_dir');
        }
    }

    public function testReleaseFreesTheFileKeepsItAndIsIdempotent(): void
    {
        $dir = $this->scratchDir();
        $lock = joinblock_acquire_lock('a@example.org', ['dir' => $dir]);
        $this->assertInstanceOf(Lock::class, $lock);
        $this->assertTrue($lock->isHeld());
        joinblock_release_lock($lock);
        $this->assertFalse($lock->isHeld());
        $this->assertFileExists($lock->path(), 'kept for the next acquisition');
        $this->assertNoLockHeld($dir, 'released');
        joinblock_release_lock($lock);
        $lock->release();
        joinblock_release_lock(null);
        $this->assertSame([basename($lock->path())], array_values(array_diff(scandir($dir), ['.', '..'])), 'nothing but the lock file');
    }

    public function testFreeingTheObjectReleasesTheLock(): void
    {
        $dir = $this->scratchDir();
        $lock = joinblock_acquire_lock('b@example.org', ['dir' => $dir]);
        $path = $lock->path();
        unset($lock);
        $this->assertNoLockHeld(\dirname($path), 'freed');
        (function () use ($dir) {
            joinblock_acquire_lock('b@example.org', ['dir' => $dir]);
        })();
        joinblock_acquire_lock('b@example.org', ['dir' => $dir, 'timeout' => 0])->release();
    }

    public function testSameProcessReacquireIsRefusedAtOnce(): void
    {
        $dir = $this->scratchDir();
        $lock = joinblock_acquire_lock('c@example.org', ['dir' => $dir]);
        $started = microtime(true);
        // Differently spelled key, same lock; no timeout: this must not wait for itself.
        self::assertThrows(
            LockException::class,
            '~^lock file ' . preg_quote($lock->path(), '~') . ' is already held by this thread; release it~',
            fn () => joinblock_acquire_lock(' C@EXAMPLE.ORG ', ['dir' => $dir])
        );
        // Another spelling of the directory reaches the same file: still refused.
        self::assertThrows(LockException::class, '~already held~', fn () => joinblock_acquire_lock('c@example.org', ['dir' => $dir . '/']));
        $this->assertLessThan(1.0, microtime(true) - $started);
        $this->assertTrue($lock->isHeld());
        $lock->release();
        joinblock_acquire_lock('c@example.org', ['dir' => $dir])->release();
    }

    public function testTimeoutZeroAndNullAreAccepted(): void
    {
        $dir = $this->scratchDir();
        joinblock_acquire_lock('d@example.org', ['dir' => $dir, 'timeout' => 0])->release();
        joinblock_acquire_lock('d@example.org', ['dir' => $dir, 'timeout' => 0.25])->release();
        joinblock_acquire_lock('d@example.org', ['dir' => $dir, 'timeout' => null])->release();
        joinblock_acquire_lock('d@example.org', ['dir' => $dir, 'timeout' => 3])->release();
        // Past what a clock can hold: as good as no limit, not a crash.
        joinblock_acquire_lock('d@example.org', ['dir' => $dir, 'timeout' => 1e19])->release();
        $this->assertNoLockHeld($dir, 'every wait released');
    }

    /** @return array<string, array{class-string, string, callable}> */
    public static function badArguments(): array
    {
        $f = 'joinblock_acquire_lock';
        return [
            'empty key' => [\ValueError::class, '~^joinblock_acquire_lock\(\): Argument #1 \(\$key\) must not be empty after trimming~', fn () => $f('')],
            'blank key' => [\ValueError::class, '~Argument #1 \(\$key\) must not be empty~', fn () => $f(" \t\n\r\0\x0B")],
            'array key' => [\TypeError::class, '~key~', fn () => $f([])],
            'null key' => [\TypeError::class, '~key~', fn () => $f(null)],
            'options not an array' => [\TypeError::class, '~options~', fn () => $f('k', 'dir')],
            'unknown option' => [\ValueError::class, '~^joinblock_acquire_lock\(\): Argument #2 \(\$options\) has an unknown option "tiemout"; known options are: dir, timeout, backend$~', fn () => $f('k', ['tiemout' => 1])],
            'list instead of options' => [\ValueError::class, '~unknown option "0"~', fn () => $f('k', ['/tmp'])],
            'dir not a string' => [\TypeError::class, '~option "dir" must be of type string, int given~', fn () => $f('k', ['dir' => 5])],
            'empty dir' => [\ValueError::class, '~option "dir" must not be empty~', fn () => $f('k', ['dir' => ''])],
            'dir with NUL' => [\ValueError::class, '~option "dir" must not contain NUL bytes~', fn () => $f('k', ['dir' => "/tmp\0x"])],
            'timeout a string' => [\TypeError::class, '~option "timeout" must be of type int\|float\|null, string given~', fn () => $f('k', ['timeout' => '5'])],
            'timeout a bool' => [\TypeError::class, '~option "timeout" must be of type int\|float\|null, bool given~', fn () => $f('k', ['timeout' => true])],
            'negative timeout' => [\ValueError::class, '~option "timeout" must be a finite number greater than or equal to 0~', fn () => $f('k', ['timeout' => -1])],
            'NaN timeout' => [\ValueError::class, '~option "timeout" must be a finite number~', fn () => $f('k', ['timeout' => NAN])],
            'infinite timeout' => [\ValueError::class, '~option "timeout" must be a finite number~', fn () => $f('k', ['timeout' => INF])],
            'release of a non-lock' => [\TypeError::class, '~lock~', fn () => joinblock_release_lock(new \stdClass())],
        ];
    }

    /** @dataProvider badArguments */
    #[DataProvider('badArguments')]
    public function testBadArgumentsThrowPhpErrors(string $class, string $pattern, callable $call): void
    {
        self::assertThrows($class, $pattern, $call);
    }

    public function testLockCannotBeMadeClonedOrSerialised(): void
    {
        self::assertThrows(\Exception::class, '~cannot instantiate~i', fn () => new Lock());
        $lock = joinblock_acquire_lock('e@example.org', ['dir' => $this->scratchDir()]);
        self::assertThrows(\Error::class, '~clone~', fn () => clone $lock);
        self::assertThrows(\Exception::class, '~Serialization of \'JoinBlock\\\\Lock\' is not allowed~', fn () => serialize($lock));
        // Nor made from a string, in today's serialised form or the old one of Serializable.
        foreach (['O:14:"JoinBlock\Lock":0:{}', 'C:14:"JoinBlock\Lock":0:{}'] as $serialised) {
            self::assertThrows(\Exception::class, '~^Unserialization of \'JoinBlock\\\\Lock\' is not allowed$~', fn () => unserialize($serialised));
        }
        $this->assertTrue((new \ReflectionClass(Lock::class))->isFinal());
        $lock->release();
    }

    public function testExceptionsAreRealPhpExceptions(): void
    {
        $this->assertTrue(is_subclass_of(LockException::class, \RuntimeException::class));
        $this->assertTrue(is_subclass_of(LockTimeoutException::class, LockException::class));
        $made = new LockTimeoutException('made in PHP', 7);
        $this->assertSame(__LINE__ - 1, $made->getLine());
        $this->assertSame(7, $made->getCode());

        $dir = $this->scratchDir();
        $held = joinblock_acquire_lock('f@example.org', ['dir' => $dir]);
        try {
            joinblock_acquire_lock('f@example.org', ['dir' => $dir]);
            $this->fail('re-entry must throw');
        } catch (LockException $thrown) {
            $this->assertSame(__FILE__, $thrown->getFile());
            $this->assertSame(__LINE__ - 4, $thrown->getLine());
            $trace = $thrown->getTrace();
            $this->assertSame('joinblock_acquire_lock', $trace[0]['function'] ?? null);
            $this->assertSame(__FUNCTION__, $trace[1]['function'] ?? null, 'trace names the caller');
        }
        $held->release();
    }

    public function testPhpinfoShowsVersionDirectoryAndCounters(): void
    {
        self::extensionOnly('its phpinfo() section');
        $dir = $this->scratchDir();
        $before = $this->infoCounters();
        joinblock_acquire_lock('g@example.org', ['dir' => $dir])->release();
        $held = joinblock_acquire_lock('g@example.org', ['dir' => $dir]);
        $this->assertSame(
            ['acquired' => $before['acquired'] + 2, 'waited' => $before['waited'], 'timed out' => $before['timed out']],
            $this->infoCounters()
        );
        $held->release();

        ob_start();
        phpinfo(INFO_MODULES);
        $info = ob_get_clean();
        // The exact row (with the commit) is StatusTest's; here: a version, then the build stamp if any.
        $this->assertMatchesRegularExpression('~^version => \d+\.\d+\.\d+( \(git [0-9a-f]{12}\))?$~m', $info);
        $this->assertStringContainsString('lock directory in effect => ' . sys_get_temp_dir(), $info);
    }

    /**
     * php --ri says how many lock files the directory holds and how many idle ones it keeps,
     * and a release sweeps down to that (its process's first in the directory).
     */
    public function testPhpRiCountsTheLockFilesAndAReleaseSweepsDownToWhatIsKept(): void
    {
        self::extensionOnly('its php --ri section');
        $dir = $this->scratchDir();
        foreach (range(1, 5) as $n) {
            joinblock_acquire_lock("member$n@example.org", ['dir' => $dir])->release();
        }
        $settings = ['joinblock.lock_dir' => $dir, 'joinblock.lock_files_kept' => '2'];
        $ri = fn () => self::runPhpOk([PHP_BINARY, ...self::phpArgs(), '-d', "joinblock.lock_dir=$dir", '-d', 'joinblock.lock_files_kept=2', '--ri', 'joinblock']);
        $this->assertStringContainsString("lock files => 5 in the lock directory; idle ones above 2 are swept (joinblock.lock_files_kept)\n", $ri());
        self::runPhpOk(self::phpCode('joinblock_acquire_lock("member1@example.org")->release();', $settings));
        $this->assertStringContainsString("lock files => 2 in the lock directory; idle ones above 2 are swept (joinblock.lock_files_kept)\n", $ri());
    }

    /**
     * The polyfill's sweep (the extension's has a Rust unit test): out of its budget at once, it
     * still removes its process's share, which keeps sweeps ahead of what processes make on a
     * slow or busy machine; and a file another sweep removed after the listing counts as gone.
     */
    public function testThePolyfillsSweepRemovesItsShareWhateverItsBudget(): void
    {
        $dir = $this->scratchDir();
        foreach (range(1, 6) as $n) {
            touch(self::pluginLockPath($dir, "member$n@example.org"));
        }
        $code = 'require ' . var_export(self::polyfillFile(), true) . ';
            [$dir, $sweep] = [' . var_export($dir, true) . ', JoinBlock\Polyfill\Sweep::class];
            echo json_encode($sweep::sweep($dir, 0, 2, 0.0)), " ";
            $gone = array_values(array_filter(range(1, 6), fn ($n) => !file_exists("$dir/join-lock-" . sha1("member$n@example.org"))))[0];
            echo JoinBlock\Polyfill\FileLock::removeIfIdle("$dir/join-lock-" . sha1("member$gone@example.org")), " ";
            echo json_encode($sweep::sweep($dir, 1, 0));';
        $out = self::runPhpOk([PHP_BINARY, ...self::phpArgs('polyfill'), '-r', $code]);
        $this->assertSame('[6,2,2,true] gone [4,3,3,false]', $out, '[found, removed, gone, cut short]: out of budget, its share of 2 went; then down to the 1 kept');
    }

    /**
     * The polyfill makes a lock file under a temporary name and links it to its path; a process
     * killed in between leaves the temporary name, and a lock file with two names, which no
     * sweep may remove. Sweeps remove such names once a minute old (not younger: a live maker
     * needs milliseconds), and the lock file then goes as any idle one.
     */
    public function testASweepRemovesNewFileNamesLeftByAKilledMaker(): void
    {
        $dir = $this->scratchDir();
        joinblock_acquire_lock('linked@example.org', ['dir' => $dir])->release();
        $lockFile = self::pluginLockPath($dir, 'linked@example.org');
        link($lockFile, "$dir/.joinblock-new-linked");
        touch("$dir/.joinblock-new-unlinked");
        $twoMinutesAgo = time() - 120;
        touch($lockFile, $twoMinutesAgo, $twoMinutesAgo);
        touch("$dir/.joinblock-new-unlinked", $twoMinutesAgo, $twoMinutesAgo);
        touch("$dir/.joinblock-new-fresh");
        $twice = 'foreach ([1, 2] as $n) { joinblock_acquire_lock("other@example.org", ["dir" => ' . var_export($dir, true) . '])->release(); }';
        self::runPhpOk(self::phpCode($twice, ['joinblock.lock_files_kept' => '0']));
        $left = array_values(array_diff(scandir($dir), ['.', '..']));
        $this->assertSame(['.joinblock-new-fresh'], $left, 'the old names went, then the lock file with them; a name younger than a minute stays');
    }

    /** @return array<string, array{string}> */
    public static function badFileCounts(): array
    {
        return ['negative' => ['-1'], 'a fraction' => ['1.5'], 'words' => ['many'], 'too many' => ['100000001']];
    }

    /**
     * A joinblock.lock_files_kept that is no whole number is a LockException naming it, for
     * the extension and the polyfill alike, never a silent default.
     *
     * @dataProvider badFileCounts
     */
    #[DataProvider('badFileCounts')]
    public function testABadLockFilesKeptIsALockException(string $value): void
    {
        $dir = $this->scratchDir();
        $result = self::runPhp(self::phpCode('try { joinblock_acquire_lock("k@example.org", ["dir" => ' . var_export($dir, true) . ']); } catch (JoinBlock\LockException $e) { echo get_class($e), ": ", $e->getMessage(); }', ['joinblock.lock_files_kept' => $value]));
        $this->assertSame('JoinBlock\LockException: INI joinblock.lock_files_kept is "' . $value . '"; expected a whole number of files from 0 to 100000000, such as 1024', $result['out'], $result['err']);
    }
}
