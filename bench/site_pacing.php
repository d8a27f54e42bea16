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
//   php -n -d extension=posix bench/with_mariadb.php \
//     php -n -d extension=curl bench/site_pacing.php <libjoinblock.so>

declare(strict_types=1);

require dirname(__DIR__) . '/tests/php/StandInServer.php';

use JoinBlock\Tests\StandInServer;

[, $so] = $argv + [1 => ''];
$url = (string) getenv('JOINBLOCK_MYSQL_URL');
if (!is_file($so) || $url === '') {
    fwrite(STDERR, "usage: php -n -d extension=posix bench/with_mariadb.php php -n -d extension=curl bench/site_pacing.php <libjoinblock.so>\n");
    exit(1);
}
$server = StandInServer::start();
echo "| hosts × processes | pacing | requests | 429s | answers right | calls failed | wall s |\n|---|---|---:|---:|---:|---:|---:|\n";
foreach ([1, 2, 3] as $hosts) {
    foreach (['per host' => 'files', 'site-wide' => 'auto'] as $mode => $backend) {
        $asks = $server->loadPacingMembers(3 * $hosts);
        $server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4, 'kind' => 'sliding']);
        [$procs, $dirs] = [[], []];
        foreach (array_keys($asks) as $i => $email) {
            if ($i % 3 === 0) {
                $dirs[] = $dir = sys_get_temp_dir() . '/joinblock-bench-host-' . bin2hex(random_bytes(6));
                mkdir($dir, 0700);
            }
            $options = ['base_url' => $server->baseUrl(), 'tag_cache_ttl' => 0];
            $code = '$t = hrtime(true); try { $r = joinblock_person_has_tag(' . var_export($email, true) . ', ' . var_export($asks[$email][0], true)
                . ', ' . var_export(StandInServer::API_KEY, true) . ', ' . var_export($options, true) . '); } catch (Throwable $e) { $r = "failed"; }'
                . ' echo json_encode([$r, $t / 1e9, hrtime(true) / 1e9]);';
            $cmd = [PHP_BINARY, '-n', '-d', "extension=$so", '-d', "joinblock.lock_dir=$dir", '-d', 'joinblock.lock_backend=mysql',
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
        printf("| %d × 3 | %s | %d | %d | %d of %d | %d | %.2f |\n", $hosts, $mode, $counts['total'], $counts['rejected'], $right, \count($procs), $failed, $last - $first);
    }
}
$server->stop();
