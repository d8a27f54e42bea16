<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * What a caller's PHP may do around a wait: an error handler that throws, and signals that
 * interrupt it. Neither may leave a lock half-taken, nor end a wait before its timeout.
 */
final class LockErrorHandlerTest extends JoinBlockTestCase
{
    /** A PHP process that holds $key in $dir for $seconds, started once it holds it. */
    private static function startHolder(string $dir, string $key, float $seconds): array
    {
        $holder = self::startPhp(self::phpCode(sprintf(
            '$lock = joinblock_acquire_lock(%s, ["dir" => %s]); echo "HELD\n"; usleep(%d); $lock->release();',
            var_export($key, true), var_export($dir, true), (int) ($seconds * 1e6)
        )));
        self::assertSame("HELD\n", fgets($holder['pipes'][1]), 'the holder reports that it holds the lock');
        return $holder;
    }

    /**
     * A waiter asks for its turn by writing a token into the lock file. On a full file system
     * that write fails, and a caller's error handler turns PHP's notice into an ErrorException:
     * the wait must go on regardless and end in a LockTimeoutException, leaving nothing
     * claimed, so that the next acquisition in the process gets the lock.
     */
    public function testAThrowingErrorHandlerOnAFullFileSystemLeavesNothingHalfTaken(): void
    {
        if (posix_geteuid() !== 0) {
            $this->markTestSkipped('mounting a tmpfs needs root');
        }
        $dir = $this->scratchDir() . '/mnt';
        mkdir($dir);
        exec(sprintf('mount -t tmpfs -o size=64k tmpfs %s 2>&1', escapeshellarg($dir)), $out, $exit);
        if ($exit !== 0) {
            $this->markTestSkipped('cannot mount a tmpfs here: ' . implode(' ', $out));
        }
        $this->unmountAfter($dir);
        $key = 'full@example.org';
        // The lock file exists (it stays after a release); then nothing more fits.
        self::runPhpOk(self::phpCode(sprintf('joinblock_acquire_lock(%s, ["dir" => %s])->release();', var_export($key, true), var_export($dir, true))));
        exec(sprintf('dd if=/dev/zero of=%s bs=4k 2>/dev/null', escapeshellarg("$dir/fill")));
        clearstatcache();
        $this->assertSame(0.0, disk_free_space($dir), 'the file system is full');

        $holder = self::startHolder($dir, $key, 1.5);
        $result = self::runPhp(self::phpCode(sprintf(<<<'PHP'
            set_error_handler(static fn (int $type, string $message) => throw new ErrorException($message, 0, $type));
            try {
                joinblock_acquire_lock(%1$s, ["dir" => %2$s, "timeout" => 0.3]);
                echo "acquired while held\n";
            } catch (Throwable $e) {
                echo get_class($e), "\n";
            }
            joinblock_acquire_lock(%1$s, ["dir" => %2$s, "timeout" => 10])->release();
            echo "acquired after the holder\n";
            PHP, var_export($key, true), var_export($dir, true))), 30);
        self::finish($holder);
        $this->assertSame(0, $result['exit'], "stderr: {$result['err']}; stdout: {$result['out']}");
        $this->assertSame("JoinBlock\\LockTimeoutException\nacquired after the holder\n", $result['out']);
        clearstatcache();
        $this->assertSame(0, filesize(self::pluginLockPath($dir, $key)), 'no token is left in the lock file');
        $this->assertNoLockHeld($dir, 'after both');
    }

    /**
     * A signal whose handler was installed without restarting system calls interrupts a
     * blocking wait (EINTR): the wait goes on until it has the lock, as it has no timeout.
     */
    public function testASignalInterruptingABlockingWaitDoesNotEndIt(): void
    {
        $dir = $this->scratchDir();
        $key = 'interrupted@example.org';
        $holder = self::startHolder($dir, $key, 1.0);
        // A shell loop sends SIGUSR1 every 100 ms until the waiter stops it.
        $result = self::runPhp(self::phpCode(sprintf(<<<'PHP'
            pcntl_async_signals(true);
            $handled = 0;
            pcntl_signal(SIGUSR1, static function () use (&$handled): void { $handled++; }, false);
            $kicker = proc_open(['sh', '-c', 'while kill -USR1 ' . getmypid() . ' 2>/dev/null; do sleep 0.1; done'], [], $pipes);
            $started = microtime(true);
            try {
                $lock = joinblock_acquire_lock(%s, ["dir" => %s]);
            } finally {
                proc_terminate($kicker);
                proc_close($kicker);
            }
            printf("acquired after %%.1f s, %%s\n", microtime(true) - $started, $handled > 0 ? 'interrupted' : 'never interrupted');
            $lock->release();
            PHP, var_export($key, true), var_export($dir, true))), 30);
        self::finish($holder);
        $this->assertSame(0, $result['exit'], "stderr: {$result['err']}; stdout: {$result['out']}");
        $this->assertMatchesRegularExpression('~^acquired after [01]\.\d s, interrupted\n$~', $result['out']);
        $this->assertNoLockHeld($dir, 'after the waiter');
    }
}
