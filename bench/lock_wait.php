<?php
// Wait-tail benchmark for bench/lock: N processes take turns on one key, each holding it for a
// 2 ms critical section and pausing 0.5 ms between tries; every wait (from the call to the lock
// in hand) is recorded.
//
//   php -n -d extension=.../libjoinblock.so bench/lock_wait.php <blocking|timed> <dir> <processes> <turns>
//   php -n -d auto_prepend_file=php/joinblock.php bench/lock_wait.php ...   (the polyfill)
//
// `blocking` calls joinblock_acquire_lock() without a timeout, `timed` with the integration
// guide's 30 s. Prints `p50_ms=… p99_ms=… max_ms=…` over all waits of all processes.

declare(strict_types=1);

const KEY = 'member@example.org';
const CRITICAL_SECTION_US = 2000;
const PAUSE_US = 500;

function fail(string $message): never
{
    fwrite(STDERR, "lock_wait: $message\n");
    exit(1);
}

/** One worker: $turns locks from a common start; prints its waits in µs, one per line. */
function work(array $options, int $turns, float $start): void
{
    usleep(max(0, (int) (($start - microtime(true)) * 1e6)));
    $waits = [];
    for ($i = 0; $i < $turns; $i++) {
        $asked = hrtime(true);
        $lock = joinblock_acquire_lock(KEY, $options);
        $waits[] = intdiv(hrtime(true) - $asked, 1000);
        usleep(CRITICAL_SECTION_US);
        $lock->release();
        usleep(PAUSE_US);
    }
    echo implode("\n", $waits), "\n";
}

/** The value below which $share of the sorted $values lie. */
function percentile(array $sorted, float $share): int
{
    return $sorted[min(count($sorted) - 1, (int) ceil($share * count($sorted)) - 1)];
}

$worker = ($argv[1] ?? '') === '--worker';
// A worker's arguments: --worker, the run's, and the common start time.
$args = $worker ? array_slice($argv, 2, -1) : array_slice($argv, 1);
if (count($args) !== 4 || !in_array($args[0], ['blocking', 'timed'], true)) {
    fail('usage: php ... lock_wait.php blocking|timed <dir> <processes> <turns>');
}
[$mode, $dir, $processes, $turns] = [$args[0], $args[1], (int) $args[2], (int) $args[3]];
$options = ['dir' => $dir] + ($mode === 'timed' ? ['timeout' => 30] : []);
if ($worker) {
    work($options, $turns, (float) end($argv));
    exit;
}
if (!function_exists('joinblock_acquire_lock')) {
    fail('load the extension (-d extension=...) or the polyfill (-d auto_prepend_file=...)');
}
// Workers get this interpreter's own flags: /proc/self/cmdline is those flags, then $argv.
$cmdline = explode("\0", rtrim(file_get_contents('/proc/self/cmdline'), "\0"));
$php = array_slice($cmdline, 0, count($cmdline) - count($argv));
$start = microtime(true) + 0.3;
$workers = [];
for ($i = 0; $i < $processes; $i++) {
    $workers[] = proc_open([...$php, $argv[0], '--worker', ...$args, (string) $start], [1 => ['pipe', 'w']], $pipes) ?: fail('cannot start a worker');
    $outputs[] = $pipes[1];
}
$waits = [];
foreach ($workers as $i => $proc) {
    $waits = [...$waits, ...array_map('intval', array_filter(explode("\n", stream_get_contents($outputs[$i])), 'strlen'))];
    if (proc_close($proc) !== 0) {
        fail('a worker failed');
    }
}
sort($waits);
printf("p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n", percentile($waits, 0.5) / 1000, percentile($waits, 0.99) / 1000, end($waits) / 1000);
