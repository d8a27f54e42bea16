<?php
// Host-wide pacing benchmark: 8 PHP processes check a tag at once (StandInServer::
// loadPacingMembers(): each a member whose 4 tags a cold check looks up, 7 requests) against
// the stand-in Action Network server enforcing 4 requests/s for all clients together, counted
// three ways (tests/an_server.py's /_control/rate_limit: a token bucket of 4; fixed 1-second
// windows; any 1-second span, refused requests counted too, the strictest reading), answering
// 429 + Retry-After over it. Host-wide pacing at max_rps 4 (requests 275 ms apart: 10%
// headroom) against max_rps 4.4 (250 ms apart: what 4/s was paced at before the headroom), and
// per-process pacing (joinblock.shared_state = 0) for reference; extension and polyfill.
// Prints a Markdown table: requests the server saw, how many it refused, wall time from the
// first call's start to the last one's end, requests per second, and wrong answers.
//
//   php -n -d extension=curl bench/shared_pacing.php <libjoinblock.so>

declare(strict_types=1);

require dirname(__DIR__) . '/tests/php/StandInServer.php';

use JoinBlock\Tests\StandInServer;

[, $so] = $argv + [1 => ''];
if (!is_file($so)) {
    fwrite(STDERR, "usage: php -n -d extension=curl bench/shared_pacing.php <libjoinblock.so>\n");
    exit(1);
}
$server = StandInServer::start();
$impls = [
    'extension' => ['-n', '-d', "extension=$so"],
    'polyfill' => ['-n', '-d', 'extension=curl', '-d', 'extension=mbstring', '-d', 'auto_prepend_file=' . dirname(__DIR__) . '/php/joinblock.php'],
];
// [server's limiter, pacing label, joinblock.shared_state, max_rps]
$runs = [];
foreach (['bucket', 'fixed', 'sliding'] as $limiter) {
    $runs[] = [$limiter, 'host-wide, max_rps 4 (275 ms)', '1', 4];
    $runs[] = [$limiter, 'host-wide, 250 ms (max_rps 4.4)', '1', 4.4];
}
$runs[] = ['bucket', 'per process, max_rps 4', '0', 4];
echo "| implementation | server counts | pacing | requests | 429s | wall s | requests/s | wrong answers |\n|---|---|---|---:|---:|---:|---:|---:|\n";
foreach ($impls as $impl => $args) {
    foreach ($runs as [$limiter, $mode, $switch, $rps]) {
        $asks = $server->loadPacingMembers();
        $server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4, 'kind' => $limiter]);
        $dir = sys_get_temp_dir() . '/joinblock-bench-' . bin2hex(random_bytes(6));
        mkdir($dir, 0700);
        $procs = [];
        foreach ($asks as $email => [$asked, $has]) {
            $options = ['base_url' => $server->baseUrl(), 'max_rps' => $rps, 'deadline' => 120];
            $code = '$t = hrtime(true); $r = joinblock_person_has_tag(' . var_export($email, true) . ', ' . var_export($asked, true)
                . ', ' . var_export(StandInServer::API_KEY, true) . ', ' . var_export($options, true) . ');'
                . ' echo json_encode([$r, $t / 1e9, hrtime(true) / 1e9]);';
            $require = $impl === 'polyfill' ? 'require ' . var_export(dirname(__DIR__) . '/php/joinblock.php', true) . ';' : '';
            $cmd = [PHP_BINARY, ...$args, '-d', "joinblock.lock_dir=$dir", '-d', "joinblock.shared_state=$switch", '-r', $require . $code];
            $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => STDERR], $pipes);
            $procs[] = [$proc, $pipes[1], $has];
        }
        [$first, $last, $wrong] = [INF, 0.0, 0];
        foreach ($procs as [$proc, $out, $has]) {
            $answer = json_decode(stream_get_contents($out), true);
            proc_close($proc);
            if (!is_array($answer) || $answer[0] !== $has) {
                $wrong++;
                continue;
            }
            [$first, $last] = [min($first, $answer[1]), max($last, $answer[2])];
        }
        exec('rm -rf ' . escapeshellarg($dir));
        $counts = $server->counts();
        $wall = $last - $first;
        printf("| %s | %s | %s | %d | %d | %.2f | %.2f | %d |\n", $impl, $limiter, $mode, $counts['total'], $counts['rejected'], $wall, $counts['total'] / $wall, $wrong);
    }
}
$server->stop();
