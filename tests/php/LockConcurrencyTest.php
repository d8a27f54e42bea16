<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/** Several real PHP processes on one key: mutual exclusion under contention and in bursts. */
final class LockConcurrencyTest extends JoinBlockTestCase
{
    /** A worker process with the implementation under test, or the one named. */
    /** A lock_worker.php process; with $lockDirByIni, its lock directory comes from INI, as the integration guide's call takes it. */
    private function worker(string $mode, array $args, ?string $implementation = null, bool $lockDirByIni = false): array
    {
        $ini = $lockDirByIni ? ['-d', "joinblock.lock_dir={$args['dir']}"] : [];
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
    private function stress(array $implementations, int $iterations, bool $lockDirByIni = false): void
    {
        $processes = count($implementations);
        $dir = $this->scratchDir();
        $counter = "$dir/counter";
        file_put_contents($counter, '0');
        $args = [
            'dir' => $dir, 'key' => 'stress@example.org', 'iterations' => $iterations,
            'counter' => $counter, 'marker' => "$dir/inside", 'start' => microtime(true) + 0.5,
        ];
        $children = [];
        foreach ($implementations as $implementation) {
            $children[] = self::startPhp($this->worker('stress', $args, $implementation, $lockDirByIni));
        }
        $overlaps = 0;
        foreach ($children as $child) {
            $result = self::finish($child, 300);
            $this->assertSame(0, $result['exit'], $result['err']);
            $overlaps += json_decode($result['out'], true)['overlaps'];
        }
        $this->assertSame(0, $overlaps, 'critical sections that overlapped');
        $this->assertSame((string) ($processes * $iterations), file_get_contents($counter), 'lost updates');
        $this->assertNoLockHeld($dir, 'all released');
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
