<?php
// Tag-check benchmark process for bench/tag_check, against a running stand-in Action Network
// server (tests/an_server.py).
//
//   php -n -d extension=curl [-d extension=<libjoinblock.so>] bench/tag_bench.php ext|plugin <base_url> <email> <tag> <api key>
//     Checks <tag> twice in this fresh process, cold then warm, and prints one JSON line per call:
//     {"call": "cold"|"warm", "result": true|false|null, "requests": <API requests>, "wall_s": <s>}.
//   php -n -d extension=curl bench/tag_bench.php load <base_url> <email> <member tags> <group tags> <latency ms>
//     Replaces the server's data: a group of "Tag 001".."Tag <group tags>", one member <email>
//     with the first <member tags> of them, <latency ms> added to every API request.

declare(strict_types=1);

require dirname(__DIR__) . '/tests/php/StandInServer.php';

use JoinBlock\Tests\StandInServer;

// stdout carries the results; warnings go to stderr.
ini_set('display_errors', 'stderr');

function fail(string $message): never
{
    fwrite(STDERR, "tag_bench: $message\n");
    exit(1);
}

/** The server bench/tag_check started, behind $baseUrl. */
function stand_in_server(string $baseUrl): StandInServer
{
    return StandInServer::attach(parse_url($baseUrl, PHP_URL_PORT) ?? fail("no port in '$baseUrl'"));
}

function int_arg(string $arg, int $min): int
{
    $n = filter_var($arg, FILTER_VALIDATE_INT, ['options' => ['min_range' => $min]]);
    return $n === false ? fail("not an integer >= $min: '$arg'") : $n;
}

/** The check under test, as a closure over everything but the call itself. */
function tag_check(string $impl, string $baseUrl, string $email, string $tag, string $apiKey): Closure
{
    if ($impl === 'ext') {
        if (!function_exists('joinblock_person_has_tag')) {
            fail('ext needs the extension: php -n -d extension=.../libjoinblock.so');
        }
        // The plugin does not pace its requests: lift the default 4 requests/s.
        $options = ['base_url' => $baseUrl, 'max_rps' => 1000];
        return fn () => joinblock_person_has_tag($email, $tag, $apiKey, $options);
    }
    require __DIR__ . '/plugin_tag_check.php';
    // One client for the process, made by the first (cold) call.
    return function () use ($baseUrl, $email, $tag, $apiKey) {
        static $client;
        $client ??= plugin_client($baseUrl, $apiKey);
        return plugin_person_has_tag($client, $email, $tag);
    };
}

$mode = $argv[1] ?? '';
if (!($mode === 'load' && $argc === 7 || in_array($mode, ['ext', 'plugin'], true) && $argc === 6)) {
    fail('usage: tag_bench.php ext|plugin <base_url> <email> <tag> <api key>'
        . ' | load <base_url> <email> <member tags> <group tags> <latency ms>');
}
$baseUrl = $argv[2];
$server = stand_in_server($baseUrl);
if ($mode === 'load') {
    [, , , $email, $memberTags, $groupTags, $latencyMs] = $argv;
    $server->load(
        StandInServer::tagNames(int_arg($groupTags, 1)),
        [['email' => $email, 'tags' => StandInServer::tagNames(int_arg($memberTags, 1))]],
        int_arg($latencyMs, 0),
    );
    exit;
}
$check = tag_check($mode, $baseUrl, ...array_slice($argv, 3));
foreach (['cold', 'warm'] as $call) {
    $server->resetCounts();
    $started = hrtime(true);
    $result = $check();
    $wall = (hrtime(true) - $started) / 1e9;
    echo json_encode([
        'call' => $call,
        'result' => $result,
        'requests' => $server->counts()['total'],
        'wall_s' => round($wall, 4),
    ]), "\n";
}
