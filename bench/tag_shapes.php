<?php
// Tag-check request counts for BENCHMARKS.md, against the stand-in Action Network server, each
// call in a fresh PHP process with the host's shared state off (a site's new worker):
//   1. every answer shape the real API may plausibly send (tests/an_server.py's shape
//      switches): the answer and the requests, extension and polyfill;
//   2. cold and warm requests for a member with k tags of a 300-tag group (the group's first
//      k, in the tag list's order, and its last k, which the list's first page does not name),
//      asked a tag the member has (its last) and one it lacks, beside the plugin's
//      (bench/plugin_tag_check.php, on Debian's php-guzzlehttp-guzzle).
// Prints two Markdown tables; exits 1 when the implementations disagree.
//
//   php -n -d extension=curl bench/tag_shapes.php <libjoinblock.so>

declare(strict_types=1);

require dirname(__DIR__) . '/tests/php/StandInServer.php';

use JoinBlock\Tests\StandInServer;

[, $so] = $argv + [1 => ''];
if (!is_file($so)) {
    fwrite(STDERR, "usage: php -n -d extension=curl bench/tag_shapes.php <libjoinblock.so>\n");
    exit(1);
}
$root = dirname(__DIR__);
$impls = [
    'extension' => ['-n', '-d', "extension=$so"],
    'polyfill' => ['-n', '-d', 'extension=curl', '-d', 'extension=mbstring', '-d', "auto_prepend_file=$root/php/joinblock.php"],
];
$server = StandInServer::start();
$control = 'http://127.0.0.1:' . $server->port() . '/_control';

/**
 * Runs the calls ([email, tag]) one after another in one fresh process of $impl.
 *
 * @return list<string> each outcome, "true 3" or "ActionNetworkException 11"
 */
function calls(string $impl, array $calls): array
{
    global $impls, $root, $server, $control;
    $options = ['base_url' => $server->baseUrl(), 'max_rps' => 1000];
    $calls = array_map(fn ($c) => [$c[0], $c[1], StandInServer::API_KEY, $options], $calls);
    $command = [PHP_BINARY, ...$impls[$impl], '-d', 'joinblock.shared_state=0', "$root/tests/php/fixtures/tag_checks.php", $control, json_encode($calls)];
    $process = proc_open($command, [1 => ['pipe', 'w'], 2 => STDERR], $pipes);
    $out = json_decode(stream_get_contents($pipes[1]), true, 512, JSON_THROW_ON_ERROR);
    proc_close($process);
    return array_map(fn ($c) => (isset($c['exception']) ? 'exception' : var_export($c['result'], true)) . ", {$c['requests']}", $out);
}

/** The same calls in both implementations: their common outcomes, or exit 1. */
function both(array $calls): array
{
    [$ext, $poly] = [calls('extension', $calls), calls('polyfill', $calls)];
    if ($ext !== $poly) {
        fwrite(STDERR, 'extension and polyfill differ: ' . json_encode([$calls, $ext, $poly]) . "\n");
        exit(1);
    }
    return $ext;
}

$variants = [
    'what the stand-in sends by default' => [],
    'an empty page without `_embedded`' => ['empty_page' => 'no-embedded'],
    'an empty page as `{}`' => ['empty_page' => 'bare'],
    '`next` on the last page too (totals still sent)' => ['next_on_last' => true],
    'no `total_pages` / `total_records` on taggings pages' => ['totals' => false],
    'both of the two above' => ['next_on_last' => true, 'totals' => false],
    'chunked bodies, no Content-Length' => ['chunked' => true],
];
$tags = StandInServer::tagNames(40);
$cases = [
    '0 tags, asks Tag 001' => ['none@example.org', 'Tag 001'],
    '25 tags, has it (Tag 025)' => ['page@example.org', 'Tag 025'],
    '25 tags, lacks it (Tag 040)' => ['page@example.org', 'Tag 040'],
    '30 tags, lacks it (Tag 040)' => ['more@example.org', 'Tag 040'],
];
echo '| the server sends | ', implode(' | ', array_keys($cases)), " |\n|---", str_repeat('|---', count($cases)), "|\n";
foreach ($variants as $name => $switches) {
    $cells = [];
    foreach ($cases as [$email, $tag]) {
        $server->load($tags, [
            ['email' => 'none@example.org', 'tags' => []],
            ['email' => 'page@example.org', 'tags' => array_slice($tags, 0, 25)],
            ['email' => 'more@example.org', 'tags' => array_slice($tags, 0, 30)],
        ]);
        $server->shapes($switches);
        [$cells[]] = both([[$email, $tag]]);
    }
    echo "| $name | ", implode(' | ', $cells), " |\n";
}
echo "\nEach cell: the answer, then the requests the server saw; a fresh process per call, extension and polyfill alike. Group: Tag 001..Tag 040.\n\n";

$groupTags = StandInServer::tagNames(300);
echo "| k | taggings pages | plugin, every call | first k: cold has / lacks | first k: warm has / lacks | last k: cold has / lacks | last k: warm has / lacks |\n";
echo "|---:|---:|---:|---|---|---|---|\n";
foreach ([1, 5, 10, 20, 25, 26, 50, 200] as $k) {
    $row = [$k, (int) ceil($k / 25)];
    $plugin = null;
    foreach (['first' => array_slice($groupTags, 0, $k), 'last' => array_slice($groupTags, -$k)] as $layout => $member) {
        $server->load($groupTags, [['email' => 'member@example.org', 'tags' => $member]]);
        // Has it: the member's last tag; lacks it: a group tag on the list page after the member's.
        $lacks = $layout === 'first' ? 'Tag 300' : 'Tag 001';
        $outcomes = [];
        foreach ([end($member), $lacks] as $tag) {
            $outcomes[] = both([['member@example.org', $tag], ['member@example.org', $tag]]);
        }
        $requests = fn (int $call) => implode(' / ', array_map(fn ($o) => explode(', ', $o[$call])[1], $outcomes));
        $row[] = $requests(0);
        $row[] = $requests(1);
        $plugin ??= plugin_requests($server->baseUrl(), end($member));
    }
    array_splice($row, 2, 0, [$plugin]);
    echo '| ', implode(' | ', $row), " |\n";
}
echo "\nRequests the server saw; cold: the first call in a fresh process, warm: the second, same tag. First k: the member has Tag 001..k, asked Tag k (has) and Tag 300 (lacks); last k: the member has the group's last k tags, asked Tag 300 (has) and Tag 001 (lacks). Extension and polyfill alike. Plugin: 1 + taggings pages + k, measured with bench/plugin_tag_check.php.\n";
$server->stop();

/** The plugin's requests for one call (every call costs the same). */
function plugin_requests(string $baseUrl, string $tag): int
{
    global $root;
    $command = [PHP_BINARY, '-n', '-d', 'extension=curl', "$root/bench/tag_bench.php", 'plugin', $baseUrl, 'member@example.org', $tag, StandInServer::API_KEY];
    $process = proc_open($command, [1 => ['pipe', 'w'], 2 => STDERR], $pipes);
    $first = json_decode(strtok(stream_get_contents($pipes[1]), "\n"), true, 512, JSON_THROW_ON_ERROR);
    proc_close($process);
    return $first['requests'];
}
