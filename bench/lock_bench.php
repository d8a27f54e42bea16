<?php
// Lock benchmark for bench/lock: acquire + release of one key, in one of three implementations.
//
//   php -n [-d extension=.../libjoinblock.so] bench/lock_bench.php <mode> <dir> <iterations> [<processes>]
//
// <mode> is `ext` (joinblock, needs the extension loaded), `ext-mysql` (joinblock's mysql backend
// on the server in env JOINBLOCK_MYSQL_URL), `plugin` (join-block 1.4.24's PHP lock) or `symfony`
// (Symfony Lock's FlockStore, Debian's php-symfony-lock). Starts <processes> workers
// that each run <iterations> operations from a common start, and prints
// `ns_per_op=<wall / all operations>`.

declare(strict_types=1);

const MODES = ['ext', 'ext-mysql', 'plugin', 'symfony'];
const KEY = 'member@example.org';
const WARMUP = 50;
const SYMFONY_AUTOLOAD = '/usr/share/php/Symfony/Component/Lock/autoload.php';

// Workers talk to the parent over stdout; warnings go to stderr.
ini_set('display_errors', 'stderr');

function fail(string $message): never
{
    fwrite(STDERR, "lock_bench: $message\n");
    exit(1);
}

/** One acquire + release of KEY in $dir. */
function operation(string $mode, string $dir): Closure
{
    return match ($mode) {
        'ext' => fn () => joinblock_acquire_lock(KEY, ['dir' => $dir])->release(),
        'ext-mysql' => mysql_operation(),
        'plugin' => plugin_operation($dir . '/join-lock-' . sha1(strtolower(trim(KEY)))),
        'symfony' => symfony_operation($dir),
    };
}

/** The plugin's lock: fopen 'w', LOCK_EX; release unlocks, closes, then unlinks. */
function plugin_operation(string $path): Closure
{
    return function () use ($path) {
        $handle = fopen($path, 'w');
        flock($handle, LOCK_EX);
        flock($handle, LOCK_UN);
        fclose($handle);
        // Under contention another worker may have unlinked it already.
        @unlink($path);
    };
}

function mysql_operation(): Closure
{
    joinblock_configure(['lock_backend' => 'mysql', 'mysql_url' => getenv('JOINBLOCK_MYSQL_URL') ?: fail('JOINBLOCK_MYSQL_URL is not set')]);
    return fn () => joinblock_acquire_lock(KEY)->release();
}

function symfony_operation(string $dir): Closure
{
    require_once SYMFONY_AUTOLOAD;
    $factory = new Symfony\Component\Lock\LockFactory(new Symfony\Component\Lock\Store\FlockStore($dir));
    return function () use ($factory) {
        $lock = $factory->createLock(KEY);
        $lock->acquire(true);
        $lock->release();
    };
}

/** Worker: warm up, say "ready", wait for stdin to close, run, print the monotonic end time. */
function work(string $mode, string $dir, int $iterations): void
{
    $op = operation($mode, $dir);
    // Loads classes and fills caches before the clock starts.
    for ($i = 0; $i < WARMUP; $i++) {
        $op();
    }
    echo "ready\n";
    stream_get_contents(STDIN);
    for ($i = 0; $i < $iterations; $i++) {
        $op();
    }
    echo hrtime(true), "\n";
}

/** Parent: start the workers, release them together, print wall time per operation. */
function run(array $workerCommand, int $processes, int $iterations): void
{
    $workers = [];
    for ($n = 0; $n < $processes; $n++) {
        $proc = proc_open($workerCommand, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => STDERR], $pipes);
        if ($proc === false) {
            fail('cannot start a worker');
        }
        $workers[] = [$proc, $pipes];
    }
    foreach ($workers as [, $pipes]) {
        if (fgets($pipes[1]) !== "ready\n") {
            fail('a worker failed to start');
        }
    }
    $started = hrtime(true);
    foreach ($workers as [, $pipes]) {
        fclose($pipes[0]);
    }
    // hrtime() reads CLOCK_MONOTONIC, common to all processes: the run ends with the last worker.
    $ended = 0;
    foreach ($workers as [$proc, $pipes]) {
        $end = filter_var(trim(stream_get_contents($pipes[1])), FILTER_VALIDATE_INT);
        if (proc_close($proc) !== 0 || $end === false) {
            fail('a worker failed');
        }
        $ended = max($ended, $end);
    }
    printf("ns_per_op=%.1f\n", ($ended - $started) / ($processes * $iterations));
}

function positive(string $arg): int
{
    $n = filter_var($arg, FILTER_VALIDATE_INT, ['options' => ['min_range' => 1]]);
    return $n === false ? fail("not a positive integer: '$arg'") : $n;
}

$worker = ($argv[1] ?? '') === '--worker';
$args = array_slice($argv, $worker ? 2 : 1);
if (count($args) < 3 || count($args) > 4 || !in_array($args[0], MODES, true)) {
    fail('usage: php -n [-d extension=.../libjoinblock.so] lock_bench.php ' . implode('|', MODES)
        . ' <dir> <iterations> [<processes>]');
}
[$mode, $dir] = $args;
$iterations = positive($args[2]);
if ($worker) {
    work($mode, $dir, $iterations);
    exit;
}
if ($mode === 'ext' && !function_exists('joinblock_acquire_lock')) {
    fail('mode ext needs the extension: php -n -d extension=.../libjoinblock.so');
}
// Workers get this interpreter's own flags (-n, -d extension=...): /proc/self/cmdline is those
// flags followed by $argv.
$cmdline = explode("\0", rtrim(file_get_contents('/proc/self/cmdline'), "\0"));
$php = array_slice($cmdline, 0, count($cmdline) - count($argv));
run([...$php, $argv[0], '--worker', $mode, $dir, (string) $iterations], positive($args[3] ?? '1'), $iterations);
