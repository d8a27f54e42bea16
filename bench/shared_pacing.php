<?php
// Host-wide pacing benchmark: 8 PHP processes check a tag at once (each a member with 4 tags
// of a 40-tag group, cold) against the stand-in Action Network server enforcing 4 requests/s
// for all clients together (token bucket, burst 4, 429 + Retry-After). Per-process pacing
// (joinblock.shared_state = 0) against host-wide pacing (= 1), extension and polyfill. Prints a
// Markdown table: requests the server saw, how many it refused with 429, wall time from the
// first call's start to the last one's end, and wrong answers.
//
//   php -n bench/shared_pacing.php <libjoinblock.so>

declare(strict_types=1);

require dirname(__DIR__) . '/tests/php/StandInServer.php';

use JoinBlock\Tests\StandInServer;

[, $so] = $argv + [1 => ''];
if (!is_file($so)) {
    fwrite(STDERR, "usage: php -n bench/shared_pacing.php <libjoinblock.so>\n");
    exit(1);
}
$server = StandInServer::start();
$names = StandInServer::tagNames(40);
$people = [];
for ($i = 0; $i < 8; $i++) {
    $people[] = ['email' => "m$i@example.org", 'tags' => array_slice($names, $i * 4, 4)];
}
$impls = [
    'extension' => ['-n', '-d', "extension=$so"],
    'polyfill' => ['-n', '-d', 'extension=curl', '-d', 'extension=mbstring', '-d', 'auto_prepend_file=' . dirname(__DIR__) . '/php/joinblock.php'],
];
echo "| implementation | pacing | requests | 429s | wall s | requests / 4 s | wrong answers |\n|---|---|---:|---:|---:|---:|---:|\n";
foreach ($impls as $impl => $args) {
    foreach (['per process' => '0', 'host-wide' => '1'] as $mode => $switch) {
        $server->load($names, $people);
        $server->control('POST', 'rate_limit', ['rps' => 4, 'burst' => 4]);
        $dir = sys_get_temp_dir() . '/joinblock-bench-' . bin2hex(random_bytes(6));
        mkdir($dir, 0700);
        $procs = [];
        for ($i = 0; $i < 8; $i++) {
            $asked = $names[$i % 2 === 0 ? $i * 4 + 3 : ($i * 4 + 5) % 40];
            $options = ['base_url' => $server->baseUrl(), 'max_rps' => 4, 'deadline' => 120];
            $code = '$t = hrtime(true); $r = joinblock_person_has_tag(' . var_export("m$i@example.org", true) . ', ' . var_export($asked, true)
                . ', ' . var_export(StandInServer::API_KEY, true) . ', ' . var_export($options, true) . ');'
                . ' echo json_encode([$r, $t / 1e9, hrtime(true) / 1e9]);';
            $require = $impl === 'polyfill' ? 'require ' . var_export(dirname(__DIR__) . '/php/joinblock.php', true) . ';' : '';
            $cmd = [PHP_BINARY, ...$args, '-d', "joinblock.lock_dir=$dir", '-d', "joinblock.shared_state=$switch", '-r', $require . $code];
            $procs[$i] = proc_open($cmd, [1 => ['pipe', 'w'], 2 => STDERR], $pipes);
            $procs[$i] = [$procs[$i], $pipes[1]];
        }
        [$first, $last, $wrong] = [INF, 0.0, 0];
        foreach ($procs as $i => [$proc, $out]) {
            $answer = json_decode(stream_get_contents($out), true);
            proc_close($proc);
            if (!is_array($answer) || $answer[0] !== ($i % 2 === 0)) {
                $wrong++;
                continue;
            }
            [$first, $last] = [min($first, $answer[1]), max($last, $answer[2])];
        }
        exec('rm -rf ' . escapeshellarg($dir));
        $counts = $server->counts();
        printf("| %s | %s | %d | %d | %.2f | %.2f | %d |\n", $impl, $mode, $counts['total'], $counts['rejected'], $last - $first, $counts['total'] / 4, $wrong);
    }
}
$server->stop();
