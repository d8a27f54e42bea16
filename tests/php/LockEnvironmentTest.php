<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use JoinBlock\LockException;
use JoinBlock\LockTimeoutException;

/**
 * Timeouts, other lockers, fork, the end of a request, and a hostile or broken lock directory.
 */
final class LockEnvironmentTest extends JoinBlockTestCase
{
    /** @return array<string, array{string}> */
    public static function timerSignalDispositions(): array
    {
        return [
            'SIGRTMAX blocked in the thread' => ['pcntl_sigprocmask(SIG_BLOCK, [SIGRTMAX]);'],
            'SIGRTMAX handled by the script' => ['pcntl_signal(SIGRTMAX, function (): void {});'],
        ];
    }

    /**
     * A timed wait blocks in flock, and a timer signal (SIGRTMAX) ends it at the deadline.
     * Where the thread blocks that signal (the script may, to collect it with sigtimedwait; a
     * server's worker threads do) or the script handles it, the wait polls instead: the
     * signal stays the script's (LockAmongOtherCodeTest). Either way it ends at its deadline,
     * and it gets the lock once the holder lets go.
     *
     * @dataProvider timerSignalDispositions
     */
    #[DataProvider('timerSignalDispositions')]
    public function testATimedWaitEndsAtItsDeadlineWhateverTheTimerSignalIs(string $setup): void
    {
        self::extensionOnly("the polyfill's timed waits poll, with no timer");
        $dir = $this->scratchDir();
        $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, 'signal@example.org', '1.5'));
        $lock = 'joinblock_acquire_lock("signal@example.org", ["dir" => ' . var_export($dir, true) . ', "timeout" => %s])';
        $result = self::runPhp(self::phpCode($setup . ' $t = microtime(true);'
            . ' try { ' . sprintf($lock, '0.3') . '; echo "acquired\n"; } catch (JoinBlock\LockTimeoutException) { printf("timed out after %.1f s\n", microtime(true) - $t); }'
            . ' $t = microtime(true); ' . sprintf($lock, '20') . '->release(); printf("acquired after %.1f s\n", microtime(true) - $t);'), 30);
        self::finish($holder);
        $this->assertSame(0, $result['exit'], $result['err']);
        $this->assertMatchesRegularExpression('~^timed out after 0\.[34] s\nacquired after [01]\.\d s\n$~', $result['out']);
    }

    public function testTimeoutNamesTheFileAndTheWait(): void
    {
        $dir = $this->scratchDir();
        $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, 'busy@example.org', '1.5'));
        $path = self::pluginLockPath($dir, 'busy@example.org');
        // The extension also counts them in phpinfo(); the polyfill has no phpinfo() section.
        $before = self::implementation() === 'extension' ? $this->infoCounters() : null;

        $started = microtime(true);
        self::assertThrows(
            LockTimeoutException::class,
            // The holder is plain PHP (the plugin's way), and is named all the same.
            '~^timed out after 0\.3\d\d s waiting for lock file ' . preg_quote($path, '~') . ', held by pid \d+ \(php[\d.]*\)$~',
            fn () => joinblock_acquire_lock('busy@example.org', ['dir' => $dir, 'timeout' => 0.3])
        );
        $this->assertLessThan(1.2, microtime(true) - $started, 'gave up near its deadline');
        self::assertThrows(LockTimeoutException::class, '~^timed out after 0\.0\d\d s~', fn () => joinblock_acquire_lock('busy@example.org', ['dir' => $dir, 'timeout' => 0]));

        // Waits for the plain PHP holder to let go, then gets it.
        $lock = joinblock_acquire_lock('busy@example.org', ['dir' => $dir, 'timeout' => 20]);
        $this->assertTrue($lock->isHeld());
        $lock->release();
        self::finish($holder);

        if ($before !== null) {
            $after = $this->infoCounters();
            $this->assertSame($before['timed out'] + 2, $after['timed out']);
            $this->assertSame($before['waited'] + 1, $after['waited']);
            $this->assertSame($before['acquired'] + 1, $after['acquired']);
        }
    }

    /**
     * On btrfs a file's device (st_dev) is its subvolume's while /proc/locks lists the file
     * system's, so the holder is found through the mount's device. (On overlayfs both name the
     * same device on Linux 6.1, checked by hand; not tested.)
     */
    public function testTheHolderIsNamedOnBtrfs(): void
    {
        $mount = $this->btrfsMount();
        $holder = self::startHolding(self::scenario('plain-flock-hold', $mount, 'btrfs@example.org', '3'));
        try {
            self::assertThrows(
                LockTimeoutException::class,
                '~^timed out after 0\.2\d\d s waiting for lock file ' . preg_quote(self::pluginLockPath($mount, 'btrfs@example.org'), '~') . ', held by pid \d+ \(php[\d.]*\)$~',
                fn () => joinblock_acquire_lock('btrfs@example.org', ['dir' => $mount, 'timeout' => 0.2])
            );
        } finally {
            self::finish($holder);
        }
    }

    /** A fresh btrfs file system, loop-mounted for this test and unmounted after it. */
    private function btrfsMount(): string
    {
        if (posix_geteuid() !== 0) {
            $this->markTestSkipped('mounting a btrfs image needs root');
        }
        $dir = $this->scratchDir();
        $image = "$dir/btrfs.img";
        $mount = "$dir/mnt";
        mkdir($mount);
        exec(sprintf('truncate -s 128M %1$s && mkfs.btrfs -q %1$s 2>&1 && mount -o loop %1$s %2$s 2>&1', escapeshellarg($image), escapeshellarg($mount)), $out, $exit);
        if ($exit !== 0) {
            // A container or chroot without loop devices, or a kernel without btrfs.
            $this->markTestSkipped('cannot loop-mount a btrfs image here: ' . implode(' ', $out));
        }
        $this->unmountAfter($mount);
        return $mount;
    }

    public function testPlainFlockCannotTakeALockTheExtensionHolds(): void
    {
        $dir = $this->scratchDir();
        $lock = joinblock_acquire_lock('interop@example.org', ['dir' => $dir]);
        $out = self::runPhpOk(self::scenario('plain-flock-try', $dir, 'interop@example.org'));
        $this->assertSame("BUSY\n", $out);
        $lock->release();
        $this->assertSame("LOCKED\n", self::runPhpOk(self::scenario('plain-flock-try', $dir, 'interop@example.org')));
    }

    public function testExtensionWaitsForAPlainFlockHolder(): void
    {
        $dir = $this->scratchDir();
        $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, 'waits@example.org', '0.8'));
        $started = microtime(true);
        joinblock_acquire_lock('waits@example.org', ['dir' => $dir])->release();
        $this->assertGreaterThan(0.3, microtime(true) - $started, 'it waited for the holder');
        $this->assertSame(0, self::finish($holder)['exit']);
    }

    /** @return array<string, array{string}> */
    public static function childFrees(): array
    {
        return ['unset in the child' => ['unset'], 'release() in the child' => ['release']];
    }

    /** @dataProvider childFrees */
    #[DataProvider('childFrees')]
    public function testForkedChildDoesNotReleaseTheParentsLock(string $how): void
    {
        $dir = $this->scratchDir();
        $out = self::runPhpOk(self::scenario('fork', $dir, 'fork@example.org', $how));
        $this->assertSame(
            ['child_exit' => 0, 'parent_holds' => true, 'file_exists' => true, 'others_can_lock' => false],
            json_decode($out, true),
            'child saw isHeld() false (exit 0), parent still holds it and nobody else can lock it'
        );
        $this->assertNoLockHeld($dir, 'the parent released it at the end');
    }

    /**
     * A child made with pcntl_fork that lives on, its parent killed while holding a file lock.
     * The extension points the child's copy of the lock's descriptor at /dev/null as it forks,
     * so the parent's death frees the lock at once. The polyfill cannot (PHP has no fork
     * handler): the child's copy keeps the lock until the child ends, as docs/integration.md says.
     */
    public function testAForkedChildDoesNotKeepADeadParentsLock(): void
    {
        $dir = $this->scratchDir();
        $child = $this->killHolderKeepingItsForkedChild(sprintf('$lock = joinblock_acquire_lock("forked@example.org", ["dir" => %s]);', var_export($dir, true)));
        try {
            if (self::implementation() === 'extension') {
                $started = microtime(true);
                joinblock_acquire_lock('forked@example.org', ['dir' => $dir, 'timeout' => 3])->release();
                $this->assertLessThan(1.0, microtime(true) - $started, 'free at once');
            } else {
                self::assertThrows(LockTimeoutException::class, '~^timed out after~', fn () => joinblock_acquire_lock('forked@example.org', ['dir' => $dir, 'timeout' => 0.5]));
                posix_kill($child, SIGKILL);
                joinblock_acquire_lock('forked@example.org', ['dir' => $dir, 'timeout' => 3])->release();
            }
        } finally {
            posix_kill($child, SIGKILL);
        }
    }

    /** @return array<string, array{string}> */
    public static function endings(): array
    {
        return ['exit()' => ['exit'], 'uncaught exception' => ['exception'], 'fatal error (out of memory)' => ['fatal']];
    }

    /** @dataProvider endings */
    #[DataProvider('endings')]
    public function testEndOfRequestReleasesTheLock(string $ending): void
    {
        $dir = $this->scratchDir();
        $result = self::runPhp(self::scenario($ending, $dir, 'end@example.org'));
        $this->assertStringStartsWith("HELD\n", $result['out']);
        $this->assertNoLockHeld($dir, 'PHP freed the Lock');
        $this->assertSame("ACQUIRED\n", self::runPhpOk(self::scenario('try', $dir, 'end@example.org', '0')));
    }

    public function testHolderKilledMidLockFreesItEvenWithAChildAlive(): void
    {
        $dir = $this->scratchDir();
        $holder = self::startHolding(self::scenario('hold-then-spawn', $dir, 'killed@example.org'));
        $grandchild = (int) fgets($holder['pipes'][1]);
        posix_kill(proc_get_status($holder['proc'])['pid'], SIGKILL);
        self::finish($holder);
        // The sleeping grandchild inherited no descriptor, so the lock died with its holder.
        $this->assertSame("ACQUIRED\n", self::runPhpOk(self::scenario('try', $dir, 'killed@example.org', '2')));
        posix_kill($grandchild, SIGKILL);
    }

    public function testMissingDirectory(): void
    {
        $dir = $this->scratchDir() . '/missing';
        self::assertThrows(
            LockException::class,
            '~^cannot open lock file ' . preg_quote(self::pluginLockPath($dir, 'k'), '~') . ': No such file or directory \(os error 2\) \(does the lock directory exist\?\)$~',
            fn () => joinblock_acquire_lock('k', ['dir' => $dir])
        );
    }

    public function testUnwritableDirectory(): void
    {
        $dir = $this->scratchDir(0755);
        $path = self::pluginLockPath($dir, 'k');
        // Root writes anywhere: as root, the attempt runs as PHP-FPM's user, for whom root's
        // directory is not writable.
        if (posix_geteuid() !== 0) {
            chmod($dir, 0555);
        }
        [$scenarios] = $this->webUserCopies(self::fixture('lock_scenarios.php'));
        $out = self::runPhpOk([...self::asWebUser(), PHP_BINARY, ...$this->webUserPhpArgs(), $scenarios, 'try', $dir, 'k', '0']);
        $this->assertSame(
            'JoinBlock\LockException: cannot open lock file ' . $path . ': Permission denied (os error 13) (is the lock directory writable by PHP\'s user?)' . "\n",
            $out
        );
    }

    public function testPlantedSymlinkIsNeverFollowed(): void
    {
        $dir = $this->scratchDir();
        $victim = "$dir/victim";
        file_put_contents($victim, 'precious');
        $path = self::pluginLockPath($dir, 'evil@example.org');
        symlink($victim, $path);
        self::assertThrows(
            LockException::class,
            '~^refusing lock path ' . preg_quote($path, '~') . ': it is a symbolic link, not a regular file$~',
            fn () => joinblock_acquire_lock('evil@example.org', ['dir' => $dir, 'timeout' => 5])
        );
        $this->assertSame('precious', file_get_contents($victim), 'the target was not truncated');
        $this->assertTrue(is_link($path), 'the planted link is left for the admin to see');

        $dangling = self::pluginLockPath($dir, 'dangling@example.org');
        symlink("$dir/created-through-link", $dangling);
        self::assertThrows(LockException::class, '~symbolic link~', fn () => joinblock_acquire_lock('dangling@example.org', ['dir' => $dir]));
        $this->assertFileDoesNotExist("$dir/created-through-link");
    }

    public function testPlantedDirectoryAndFifoAreRefused(): void
    {
        $dir = $this->scratchDir();
        $asDir = self::pluginLockPath($dir, 'dir@example.org');
        mkdir($asDir);
        self::assertThrows(
            LockException::class,
            '~^refusing lock path ' . preg_quote($asDir, '~') . ': it is a directory, not a regular file$~',
            fn () => joinblock_acquire_lock('dir@example.org', ['dir' => $dir])
        );
        $fifo = self::pluginLockPath($dir, 'fifo@example.org');
        posix_mkfifo($fifo, 0600);
        $started = microtime(true);
        self::assertThrows(
            LockException::class,
            '~^refusing lock path ' . preg_quote($fifo, '~') . ': it is a FIFO, not a regular file$~',
            fn () => joinblock_acquire_lock('fifo@example.org', ['dir' => $dir])
        );
        $this->assertLessThan(1.0, microtime(true) - $started, 'opening the FIFO did not block');
    }
}
