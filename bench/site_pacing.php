<?php
// Site-wide against per-host pacing: 1, 2 and 3 hosts of 3 PHP processes each, every process
// one cold tag check at once (StandInServer::loadPacingMembers(): 7 requests each), against
// the stand-in server enforcing 4 requests/s with its strictest limiter ("sliding": any
// 1-second span, refused requests counted too) and 429 + Retry-After: 1. A host is a lock
// directory of its own; all lock on one MariaDB (joinblock.lock_backend = mysql).
// Per host: joinblock.shared_state_backend = files; site-wide: auto (the default). The tag map
// is left out (tag_cache_ttl 0), so that each run is as cold as the first. Prints a Markdown
// table: requests the server saw, how many it refused, answers right, calls failed, wall time
// from the first call's start to the last one's end.
//
// With --loaded=N: the 3 × 3 site-wide case N times for the extension and N times for the
// polyfill, on a busy machine: two `yes > /dev/null` run throughout (on 2 cores, every
// process competes for the CPU), and each row shows the load average at its end.
//
//   php -n -d extension=posix bench/with_mariadb.php \
//     php -n -d extension=curl bench/site_pacing.php <libjoinblock.so> [--loaded=5]

declare(strict_types=1);

require dirname(__DIR__) . '/tests/php/StandInServer.php';

use JoinBlock\Tests\StandInServer;

[, $so, $mode] = $argv + [1 => '', 2 => ''];
$url = (string) getenv('JOINBLOCK_MYSQL_URL');
$loadedRuns = preg_match('/^--loaded=(\d+)$/D', $mode, $m) === 1 ? (int) $m[1] : 0;
if (!is_file($so) || $url === '' || ($mode !== '' && $loadedRuns === 0)) {
    fwrite(STDERR, "usage: php -n -d extension=posix bench/with_mariadb.php php -n -d extension=curl bench/site_pacing.php <libjoinblock.so> [--loaded=N]\n");
    exit(1);
}

/**
 * PHP's arguments for one implementation, and the code that loads it before a `-r` script
 * (auto_prepend_file runs for script files only): the extension, or the polyfill with the PHP
 * extensions it needs.
 *
 * @return array{list<string>, string}
 */
function implementation(string $impl, string $so): array
{
    if ($impl === 'extension') {
        return [['-n', '-d', "extension=$so"], ''];
    }
    $builtIn = array_map('strtolower', array_map('trim', explode("\n", (string) shell_exec(escapeshellarg(PHP_BINARY) . ' -n -m'))));
    $args = ['-n'];
    foreach (array_diff(['curl', 'mbstring', 'mysqlnd', 'mysqli', 'posix'], $builtIn) as $extension) {
        array_push($args, '-d', "extension=$extension");
    }
    return [$args, 'require ' . var_export(dirname(__DIR__) . '/php/joinblock.php', true) . ';'];
}

/**
 * $hosts hosts of 3 processes, each one cold check at once; the server's counts, answers
 * right, calls failed, and the wall from the first start to the last end.
 *
 * @return array{int, int, int, int, int, float}
 */
function runHosts(StandInServer $server, string $url, array $implementation, int $hosts, string $backend): array
{
    [$phpArgs, $load] = $implementation;
    $asks = $server->loadPacingMembers(3 * $hosts);
    $server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4, 'kind' => 'sliding']);
    [$procs, $dirs] = [[], []];
    foreach (array_keys($asks) as $i => $email) {
        if ($i % 3 === 0) {
            $dirs[] = $dir = sys_get_temp_dir() . '/joinblock-bench-host-' . bin2hex(random_bytes(6));
            mkdir($dir, 0700);
        }
        $options = ['base_url' => $server->baseUrl(), 'tag_cache_ttl' => 0];
        $code = $load . '$t = hrtime(true); try { $r = joinblock_person_has_tag(' . var_export($email, true) . ', ' . var_export($asks[$email][0], true)
            . ', ' . var_export(StandInServer::API_KEY, true) . ', ' . var_export($options, true) . '); } catch (Throwable $e) { $r = "failed"; }'
            . ' echo json_encode([$r, $t / 1e9, hrtime(true) / 1e9]);';
        $cmd = [PHP_BINARY, ...$phpArgs, '-d', "joinblock.lock_dir=$dir", '-d', 'joinblock.lock_backend=mysql',
            '-d', "joinblock.mysql_url=$url", '-d', "joinblock.shared_state_backend=$backend", '-r', $code];
        $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => STDERR], $pipes);
        $procs[] = [$proc, $pipes[1], $asks[$email][1]];
    }
    [$first, $last, $right, $failed] = [INF, 0.0, 0, 0];
    foreach ($procs as [$proc, $out, $has]) {
        [$answer, $started, $ended] = json_decode(stream_get_contents($out), true);
        proc_close($proc);
        $right += (int) ($answer === $has);
        $failed += (int) ($answer === 'failed');
        [$first, $last] = [min($first, $started), max($last, $ended)];
    }
    foreach ($dirs as $dir) {
        exec('rm -rf ' . escapeshellarg($dir));
    }
    $counts = $server->counts();
    return [$counts['total'], $counts['rejected'], $right, \count($procs), $failed, $last - $first];
}

$server = StandInServer::start();
if ($loadedRuns === 0) {
    echo "| hosts × processes | pacing | requests | 429s | answers right | calls failed | wall s |\n|---|---|---:|---:|---:|---:|---:|\n";
    foreach ([1, 2, 3] as $hosts) {
        foreach (['per host' => 'files', 'site-wide' => 'auto'] as $pacing => $backend) {
            [$requests, $refused, $right, $calls, $failed, $wall] = runHosts($server, $url, implementation('extension', $so), $hosts, $backend);
            printf("| %d × 3 | %s | %d | %d | %d of %d | %d | %.2f |\n", $hosts, $pacing, $requests, $refused, $right, $calls, $failed, $wall);
        }
    }
} else {
    $burners = [];
    for ($i = 0; $i < 2; $i++) {
        $burners[] = proc_open(['yes'], [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w']], $unused);
    }
    sleep(30); // so that the 1-minute load average shows them from the first row on
    try {
        echo "| implementation | run | requests | 429s | answers right | calls failed | wall s | load average (1 min) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
        foreach (['extension', 'polyfill'] as $impl) {
            for ($run = 1; $run <= $loadedRuns; $run++) {
                [$requests, $refused, $right, $calls, $failed, $wall] = runHosts($server, $url, implementation($impl, $so), 3, 'auto');
                $load = (float) explode(' ', (string) file_get_contents('/proc/loadavg'))[0];
                printf("| %s | %d | %d | %d | %d of %d | %d | %.2f | %.2f |\n", $impl, $run, $requests, $refused, $right, $calls, $failed, $wall, $load);
            }
        }
    } finally {
        foreach ($burners as $burner) {
            proc_terminate($burner);
            proc_close($burner);
        }
    }
}
$server->stop();
