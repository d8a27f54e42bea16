<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\Attributes\Group;

/**
 * Several real PHP processes on one key: mutual exclusion under contention and in bursts.
 *
 * @group load
 */
#[Group('load')]
final class LockConcurrencyTest extends JoinBlockTestCase
{
    /** A worker process with the implementation under test, or the one named. */
    /** A lock_worker.php process; with $lockDirByIni, its lock directory comes from INI, as the integration guide's call takes it. */
    /** @param array<string, string> $settings more INI settings for the worker */
    private function worker(string $mode, array $args, ?string $implementation = null, bool $lockDirByIni = false, array $settings = []): array
    {
        $ini = $lockDirByIni ? ['-d', "joinblock.lock_dir={$args['dir']}"] : [];
        foreach ($settings as $name => $value) {
            array_push($ini, '-d', "$name=$value");
        }
        $args += $lockDirByIni ? ['options' => ['timeout' => 30]] : [];
        return [PHP_BINARY, ...self::phpArgs($implementation), ...$ini, self::fixture('lock_worker.php'), $mode, json_encode($args)];
    }

    /** @return list<array{string, string, int}> [event, name, hrtime] in log order */
    private static function readLog(string $log): array
    {
        return array_map(
            fn ($line) => [explode(' ', $line)[0], explode(' ', $line)[1], (int) explode(' ', $line)[2]],
            file($log, FILE_IGNORE_NEW_LINES)
        );
    }

    /**
     * Starts one holder per name (each holding its key for 1 s) and waits for all.
     *
     * @param array<string, string> $keys name => key
     * @return list<array{string, string, int}> the log's events
     */
    private function runHolders(string $dir, array $keys): array
    {
        $log = "$dir/work.log";
        $children = [];
        foreach ($keys as $name => $key) {
            $children[] = self::startPhp($this->worker('hold', [
                'dir' => $dir, 'key' => $key, 'seconds' => 1.0, 'log' => $log, 'name' => $name,
            ]));
        }
        foreach ($children as $child) {
            $this->assertSame(0, self::finish($child)['exit']);
        }
        return self::readLog($log);
    }

    public function testTwoProcessesOnOneEmailNeverInterleave(): void
    {
        $dir = $this->scratchDir();
        $events = $this->runHolders($dir, ['first' => 'Member@Example.org', 'second' => 'Member@Example.org']);
        $this->assertCount(4, $events);
        [$a, $b, $c, $d] = $events;
        $this->assertSame(['WORKING', 'DONE', 'WORKING', 'DONE'], [$a[0], $b[0], $c[0], $d[0]]);
        $this->assertSame($a[1], $b[1], 'the first holder finishes before anyone else starts');
        $this->assertSame($c[1], $d[1]);
        $this->assertNotSame($a[1], $c[1]);
        $this->assertGreaterThanOrEqual($b[2], $c[2], 'the second starts after the first is done');
        $this->assertNoLockHeld($dir, 'both released');
    }

    public function testDifferentKeysRunInParallel(): void
    {
        $events = $this->runHolders($this->scratchDir(), ['a' => 'a@example.org', 'b' => 'b@example.org']);
        $this->assertSame(['WORKING', 'WORKING', 'DONE', 'DONE'], array_column($events, 0), 'both work at once');
    }

    public function testStressEightProcessesNoOverlapNoLostUpdate(): void
    {
        $this->stress(array_fill(0, 8, null), 2000);
    }

    /**
     * A site rolls the extension out worker by worker: half the processes lock with the
     * extension, half with the polyfill, on one key, and they still exclude each other, taking
     * the lock directory from the site's ini as the integration guide's call does (no `dir`).
     */
    public function testExtensionAndPolyfillProcessesNeverOverlap(): void
    {
        self::bothImplementations();
        $this->stress(['extension', 'polyfill', 'extension', 'polyfill', 'extension', 'polyfill', 'extension', 'polyfill'], 1000, true);
        $this->assertSame([], $this->runBursts('ext', 5, 120, ['extension', 'polyfill']), 'bursts in which two requests were inside at once');
    }

    /**
     * The same mix while sweeps run all the time: two more processes (one of each kind) lock
     * and release a member of their own in a loop with `lock_files_kept = 0`, so every one of
     * their releases sweeps, and each sweep removes the stressed key's file whenever it finds
     * it free, next to 200 other members' idle files. Acquirers that opened a removed file must
     * find the name gone and start again. The lock path named many files over the run, and
     * still no section overlapped and no update was lost.
     */
    public function testExtensionAndPolyfillProcessesNeverOverlapWhileSweepsRemoveFiles(): void
    {
        self::bothImplementations();
        // On tmpfs, where every new file gets a new inode number (ext4 reuses a freed one at
        // once), so the inodes seen count the files made.
        $dir = $this->scratchDir(0700, '/dev/shm');
        $this->assertSame('tmpfs', trim((string) shell_exec('stat -f -c %T ' . escapeshellarg($dir))));
        foreach (range(1, 200) as $n) {
            joinblock_acquire_lock("idle$n@example.org", ['dir' => $dir])->release();
        }
        $sweep = ['joinblock.lock_files_kept' => '0'];
        $sweepers = [];
        foreach (['extension', 'polyfill'] as $implementation) {
            $args = ['dir' => $dir, 'key' => "sweeper-$implementation@example.org", 'hold_ms' => 0, 'stop' => "$dir/stop"];
            $sweepers[] = self::startPhp($this->worker('loop', $args, $implementation, false, $sweep));
        }
        try {
            // A pause between locks leaves the key free now and then, for a sweep to remove.
            $files = $this->stress(['extension', 'polyfill', 'extension', 'polyfill'], 1000, true, $sweep, 2000, $dir);
        } finally {
            touch("$dir/stop");
            $rounds = array_map(fn (array $child) => json_decode(self::finish($child, 120)['out'], true)['rounds'] ?? 0, $sweepers);
        }
        fwrite(STDERR, sprintf("\n[4 processes on one key (2 extension, 2 polyfill), 4000 locks 2 ms apart, sweeps after %s releases] the lock path named %d different files\n", implode('+', $rounds), $files));
        $this->assertGreaterThan(50, $files, 'sweeps removed the stressed key\'s file again and again');
        $this->assertLessThanOrEqual(3, \count(glob("$dir/join-lock-*")), 'the idle members\' files were swept');
    }

    /** @return array<string, array{?string, int}> */
    public static function manyMembers(): array
    {
        // The disk run is shorter: this machine's ext4 has no journal, and ext4 then scans for
        // a free inode past the ones deleted lately, which makes each new file cost ~0.5 ms.
        return ['100,000 on tmpfs' => ['/dev/shm', 100000], '20,000 in the temporary directory' => [null, 20000]];
    }

    /**
     * Members locked once each, by two processes at once, as a site meets them: files are kept
     * for reuse, and sweeps keep the directory within its stated bound (1024 idle files, plus
     * under 256 made by each process since its last sweep) the whole time, and at the end. The
     * next process to release a lock there sweeps it down to 1024.
     *
     * @dataProvider manyMembers
     */
    #[DataProvider('manyMembers')]
    public function testManyMembersLeaveTheDirectoryWithinItsBound(?string $parent, int $members): void
    {
        $dir = $this->scratchDir(0700, $parent);
        $started = microtime(true);
        $children = [];
        foreach (['a', 'b'] as $prefix) {
            $children[] = self::startPhp($this->worker('distinct', ['dir' => $dir, 'prefix' => $prefix, 'count' => intdiv($members, 2)]));
        }
        [$most, $exits] = [0, []];
        while (\count($exits) < \count($children) && microtime(true) - $started < 600) {
            $most = max($most, \count(glob("$dir/join-lock-*")));
            foreach ($children as $n => $child) {
                // proc_get_status() gives the exit code once only.
                $status = isset($exits[$n]) ? null : proc_get_status($child['proc']);
                if ($status !== null && !$status['running']) {
                    $exits[$n] = $status['exitcode'];
                }
            }
            // Often: a directory over its bound between two looks would go unseen.
            usleep(10000);
        }
        foreach ($children as $n => $child) {
            $err = stream_get_contents($child['pipes'][2]);
            proc_close($child['proc']);
            $this->assertSame(0, $exits[$n] ?? null, $err);
        }
        $left = \count(glob("$dir/join-lock-*"));
        // A sweep has a time budget (50 ms); one cut short leaves the rest to the next release,
        // which on a busy machine may need a few.
        [$releases, $afterMore] = [0, $left];
        while ($releases < 20 && ($releases === 0 || $afterMore > 1024)) {
            joinblock_acquire_lock('one-more@example.org', ['dir' => $dir])->release();
            [$releases, $afterMore] = [$releases + 1, \count(glob("$dir/join-lock-*"))];
        }
        fwrite(STDERR, sprintf("\n[%d members locked once, 2 processes, %s, %s] %.1f s; most lock files seen at once: %d; left: %d; after %d more lock(s) in this process: %d\n",
            $members, self::implementation(), trim((string) shell_exec('stat -f -c %T ' . escapeshellarg($dir))), microtime(true) - $started, $most, $left, $releases, $afterMore));
        $this->assertLessThanOrEqual(1024 + 2 * 256, $most, 'the directory stayed within its bound while members were locked');
        $this->assertLessThanOrEqual(1024 + 2 * 256, $left);
        $this->assertLessThanOrEqual(1024, $afterMore, 'the next releases swept the rest');
        $this->assertNoLockHeld($dir, 'all released');
    }

    /**
     * Waiters of different kinds on one key: 4 extension processes (timed waits, woken by the
     * release) and 1 polyfill process (polling), each holding 5 ms per round. The polyfill's
     * waiter must not lose every race: none of its 500 rounds may time out at 2 s.
     */
    public function testAPollingWaiterIsNotStarvedByWokenOnes(): void
    {
        self::bothImplementations();
        $dir = $this->scratchDir();
        $args = ['dir' => $dir, 'key' => 'crowd@example.org', 'hold_ms' => 5, 'stop' => "$dir/stop"];
        $extensions = [];
        for ($i = 0; $i < 4; $i++) {
            $extensions[] = self::startPhp($this->worker('loop', $args + ['options' => ['dir' => $dir, 'timeout' => 30]], 'extension'));
        }
        $polyfill = self::startPhp($this->worker('loop', $args + ['options' => ['dir' => $dir, 'timeout' => 2], 'rounds' => 500, 'max_timeouts' => 5], 'polyfill'));
        $result = self::finish($polyfill, 600);
        touch("$dir/stop");
        $others = array_map(fn (array $child) => json_decode(self::finish($child, 120)['out'], true), $extensions);
        $this->assertSame(0, $result['exit'], $result['err']);
        $polled = json_decode($result['out'], true);
        fwrite(STDERR, sprintf("\n[1 polyfill waiter among 4 extension waiters, 5 ms holds] polyfill: %d rounds, %d timeouts (2 s), longest wait %.0f ms; extension rounds %s, longest wait %.0f ms\n",
            $polled['rounds'], $polled['timeouts'], $polled['max_wait_ms'], implode('+', array_column($others, 'rounds')), max(array_column($others, 'max_wait_ms'))));
        $this->assertSame(0, $polled['timeouts'], 'polyfill rounds that timed out');
        $this->assertSame([0, 0, 0, 0], array_column($others, 'timeouts'));
    }

    /** Tests that mix both implementations run once, in the extension run. */
    private static function bothImplementations(): void
    {
        if (self::implementation() === 'polyfill') {
            self::markTestSkipped('mixes the extension and the polyfill: runs in the extension run');
        }
    }

    /**
     * One worker per entry of $implementations (null: the one under test), each acquiring
     * $iterations times: no critical sections may overlap, no counter update may be lost.
     *
     * @param list<?string> $implementations
     */
    /**
     * @param array<string, string> $settings more INI settings for the workers
     * @return int how many different files the lock path named over the run
     */
    private function stress(array $implementations, int $iterations, bool $lockDirByIni = false, array $settings = [], int $pauseUs = 0, ?string $dir = null): int
    {
        $processes = count($implementations);
        $dir ??= $this->scratchDir();
        $counter = "$dir/counter";
        file_put_contents($counter, '0');
        $args = [
            'dir' => $dir, 'key' => 'stress@example.org', 'iterations' => $iterations,
            'counter' => $counter, 'marker' => "$dir/inside", 'barrier' => $this->scratchDir(), 'pause_us' => $pauseUs,
        ];
        $children = [];
        foreach ($implementations as $implementation) {
            $children[] = self::startPhp($this->worker('stress', $args, $implementation, $lockDirByIni, $settings));
        }
        self::goWhenReady($args['barrier'], $children);
        [$overlaps, $files] = [0, []];
        foreach ($children as $child) {
            $result = self::finish($child, 300);
            $this->assertSame(0, $result['exit'], $result['err']);
            $overlaps += json_decode($result['out'], true)['overlaps'];
            $files = [...$files, ...json_decode($result['out'], true)['files']];
        }
        $this->assertSame(0, $overlaps, 'critical sections that overlapped');
        $this->assertSame((string) ($processes * $iterations), file_get_contents($counter), 'lost updates');
        $this->assertNoLockHeld($dir, 'all released', pattern: basename(self::pluginLockPath($dir, $args['key'])));
        return \count(array_unique($files));
    }

    /** @return array<string, array{int, int}> */
    public static function bursts(): array
    {
        return ['3 requests' => [3, 200], '5 requests' => [5, 200]];
    }

    /** @dataProvider bursts */
    #[DataProvider('bursts')]
    public function testBurstsOfRequestsNeverOverlap(int $parties, int $bursts): void
    {
        $overlapped = $this->runBursts('ext', $parties, $bursts);
        $this->assertSame([], $overlapped, 'bursts in which two requests were inside at once');
    }

    /** The same harness catches the plugin's PHP lock, so a 0 above means something. */
    public function testBurstHarnessDetectsThePluginsBrokenLock(): void
    {
        $overlapped = $this->runBursts('plugin', 5, 60);
        $this->assertNotEmpty($overlapped, 'the plugin pattern overlapped in none of 60 bursts of 5');
    }

    /**
     * Party i runs with $implementations[i mod count] (null: the one under test).
     *
     * @param list<?string> $implementations
     * @return list<int> bursts in which any party found another inside
     */
    private function runBursts(string $impl, int $parties, int $bursts, array $implementations = [null]): array
    {
        $dir = $this->scratchDir();
        $args = [
            'impl' => $impl, 'dir' => $dir, 'key' => 'burst@example.org', 'bursts' => $bursts,
            'marker' => "$dir/inside", 'start' => microtime(true) + 0.5, 'spacing' => 0.03 + 0.003 * $parties,
        ];
        $children = [];
        for ($i = 0; $i < $parties; $i++) {
            $children[] = self::startPhp($this->worker('burst', $args, $implementations[$i % count($implementations)]));
        }
        $overlapped = [];
        foreach ($children as $child) {
            $result = self::finish($child, 120);
            $this->assertSame(0, $result['exit'], $result['err']);
            $overlapped = array_merge($overlapped, json_decode($result['out'], true)['overlapped']);
        }
        sort($overlapped);
        return array_values(array_unique($overlapped));
    }
}
