<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * The lock beside code that is not ours, which a plugin's request always runs with: the
 * script's signal handlers and signal mask (job runners use pcntl), and a lock directory that
 * someone moves aside while requests wait.
 */
final class LockAmongOtherCodeTest extends JoinBlockTestCase
{
    private const KEY = 'signals@example.org';

    /** @return array<string, array{string, string}> options of the wait, and its outcome */
    public static function interruptedWaits(): array
    {
        return [
            'a timed wait that times out' => ['["timeout" => 2.5]', 'timed out'],
            'a timed wait that succeeds' => ['["timeout" => 30]', 'acquired'],
            'a wait without timeout' => ['[]', 'acquired'],
        ];
    }

    /**
     * A script's handler (pcntl, async signals) for a signal that came during a lock wait runs
     * once, whatever the wait's outcome: PHP runs no handler while an exception is pending, so
     * a wait that timed out had lost the signal (not even pcntl_signal_dispatch() found it).
     *
     * @dataProvider interruptedWaits
     */
    #[DataProvider('interruptedWaits')]
    public function testAScriptsSignalHandlerRunsOnceAfterAWaitItInterrupted(string $options, string $outcome): void
    {
        $dir = $this->scratchDir();
        // Held past the timed-out wait's deadline; let go (killed) at 2 s for the others.
        $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, self::KEY, '60'));
        $waiter = self::startPhp(self::phpCode(sprintf(<<<'PHP'
            pcntl_async_signals(true);
            $runs = 0;
            pcntl_signal(SIGALRM, function () use (&$runs): void { $runs++; });
            pcntl_alarm(1);
            try {
                $lock = joinblock_acquire_lock(%s, ["dir" => %s] + %s);
                $outcome = 'acquired';
            } catch (JoinBlock\LockTimeoutException) {
                $outcome = 'timed out';
            }
            $after = $runs;
            pcntl_signal_dispatch();
            echo "$outcome; handler runs: $after, then $runs\n";
            PHP, var_export(self::KEY, true), var_export($dir, true), $options)));
        usleep($outcome === 'acquired' ? 2_000_000 : 4_000_000);
        proc_terminate($holder['proc']);
        self::finish($holder);
        $result = self::finish($waiter, 30);
        $this->assertSame(['exit' => 0, 'out' => "$outcome; handler runs: 1, then 1\n", 'err' => ''], $result);
    }

    /** @return array<string, array{string, string}> the wait's timeout, and how long the holder holds */
    public static function waitsAHandlerEnds(): array
    {
        return [
            'a wait that then succeeds' => ['30', '2.5'],
            'a wait that then times out' => ['2', '4'],
        ];
    }

    /**
     * A handler that throws (a job runner's time limit) ends the call with its own exception,
     * not the lock's, and leaves nothing held or claimed: the key is free for the next call.
     *
     * @dataProvider waitsAHandlerEnds
     */
    #[DataProvider('waitsAHandlerEnds')]
    public function testAnExceptionFromASignalHandlerEndsTheCallAndLeavesNothingBehind(string $timeout, string $held): void
    {
        $dir = $this->scratchDir();
        $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, self::KEY, $held));
        $out = self::runPhpOk(self::phpCode(sprintf(<<<'PHP'
            pcntl_async_signals(true);
            pcntl_signal(SIGALRM, function (): void { throw new RuntimeException('time is up'); });
            pcntl_alarm(1);
            $options = ["dir" => %s, "timeout" => %s];
            try {
                joinblock_acquire_lock(%3$s, $options);
                echo "acquired\n";
            } catch (Throwable $e) {
                echo get_class($e), ': ', $e->getMessage(), "\n";
            }
            joinblock_acquire_lock(%3$s, ["timeout" => 30] + $options)->release();
            echo "then acquired and released\n";
            PHP, var_export($dir, true), $timeout, var_export(self::KEY, true))), 30);
        self::finish($holder);
        $this->assertSame("RuntimeException: time is up\nthen acquired and released\n", $out);
    }

    /**
     * A script that blocks the timer signal (SIGRTMAX) to collect it with sigtimedwait keeps
     * the one pending: a timed wait polls instead of unblocking it (which had handed it to the
     * extension's handler), ends at its deadline all the same, and php --ri says why it polls.
     */
    public function testATimerSignalTheScriptBlocksStaysPendingForIt(): void
    {
        $dir = $this->scratchDir();
        $sent = "$dir/sent";
        $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, self::KEY, '60'));
        $waiter = self::startPhp(self::phpCode(sprintf(<<<'PHP'
            pcntl_sigprocmask(SIG_BLOCK, [SIGRTMAX]);
            echo getmypid(), "\n";
            while (!file_exists(%s)) {
                usleep(1000);
            }
            $started = microtime(true);
            try {
                joinblock_acquire_lock(%s, ["dir" => %s, "timeout" => 0.5]);
                echo "acquired\n";
            } catch (JoinBlock\LockTimeoutException) {
                printf("timed out after %%.1f s\n", microtime(true) - $started);
            }
            // 1 ms: PHP 8.4 refuses a zero wait; a pending signal returns at once.
            echo pcntl_sigtimedwait([SIGRTMAX], $info, 0, 1_000_000) === SIGRTMAX ? "SIGRTMAX still pending\n" : "SIGRTMAX lost\n";
            if (extension_loaded('joinblock')) {
                ob_start();
                phpinfo(INFO_MODULES);
                preg_match('/^timed lock waits => (.*)$/m', ob_get_clean(), $row);
                echo $row[1], "\n";
            }
            PHP, var_export($sent, true), var_export(self::KEY, true), var_export($dir, true))));
        $pid = (int) fgets($waiter['pipes'][1]);
        $this->assertTrue(posix_kill($pid, SIGRTMAX));
        touch($sent);
        $result = self::finish($waiter, 30);
        proc_terminate($holder['proc']);
        self::finish($holder);
        $this->assertSame('', $result['err']);
        $this->assertMatchesRegularExpression('~^timed out after 0\.\d s\nSIGRTMAX still pending\n~', $result['out']);
        if (self::implementation() === 'extension') {
            $this->assertStringEndsWith(
                "\npolled: this thread blocks SIGRTMAX, which stays the script's, so no timer can end a waiting flock\n",
                $result['out']
            );
        }
    }

    /** @return array<string, array{string}> */
    public static function waits(): array
    {
        return ['a wait without timeout' => ['[]'], 'a timed wait' => ['["timeout" => 30]']];
    }

    /**
     * The lock directory renamed under a waiter (a tidy-up script, an admin moving /run/joinblock
     * aside) and a new one made: the waiter, on a file of the old directory, must not enter
     * while another party holds the key in the new one once the old holder lets go. A lock
     * file's link count of 1 had been taken for "the path names it", and let both in.
     *
     * @dataProvider waits
     */
    #[DataProvider('waits')]
    public function testARenamedLockDirectoryLetsNoWaiterInBesideANewHolder(string $options): void
    {
        $parent = $this->scratchDir();
        $dir = "$parent/locks";
        mkdir($dir, 0700);
        $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, self::KEY, '60'));
        $waiter = self::startPhp(self::phpCode(sprintf(<<<'PHP'
            $lock = joinblock_acquire_lock(%s, ["dir" => %s] + %s);
            printf("in %%.6f\n", microtime(true));
            usleep(100000);
            printf("out %%.6f\n", microtime(true));
            PHP, var_export(self::KEY, true), var_export($dir, true), $options)));
        $this->waitUntilItOpened($waiter, self::pluginLockPath($dir, self::KEY));

        rename($dir, "$parent/locks.old");
        mkdir($dir, 0700);
        $new = joinblock_acquire_lock(self::KEY, ['dir' => $dir, 'timeout' => 5]);
        $newIn = microtime(true);
        proc_terminate($holder['proc']);
        self::finish($holder);
        usleep(500000);
        $newOut = microtime(true);
        $new->release();

        $result = self::finish($waiter, 30);
        $this->assertSame(0, $result['exit'], $result['err']);
        $this->assertMatchesRegularExpression('~^in ([\d.]+)\nout ([\d.]+)\n$~', $result['out']);
        preg_match('~^in ([\d.]+)~', $result['out'], $in);
        $this->assertGreaterThanOrEqual($newOut, (float) $in[1], sprintf(
            'the waiter entered %.3f s after the new holder, which held the key for %.3f s',
            (float) $in[1] - $newIn,
            $newOut - $newIn
        ));
    }

    /** Waits until a started PHP process has `$path` open: it is waiting for its lock. */
    private function waitUntilItOpened(array $child, string $path): void
    {
        $pid = proc_get_status($child['proc'])['pid'];
        for ($deadline = microtime(true) + 20; microtime(true) < $deadline; usleep(5000)) {
            foreach (glob("/proc/$pid/fd/*") ?: [] as $fd) {
                if (@readlink($fd) === $path) {
                    usleep(100000);
                    return;
                }
            }
        }
        $this->fail("the waiter (pid $pid) never opened $path");
    }
}
