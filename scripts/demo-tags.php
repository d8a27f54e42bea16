<?php
// The demo's tag check: a member of a 300-tag group with 200 tags, asked about a tag she lacks
// and one she has, in one PHP process (as one PHP-FPM worker would serve them).

declare(strict_types=1);

[, $baseUrl, $apiKey] = $argv;
$control = preg_replace('~/api/v2/$~', '/_control', $baseUrl);
$post = fn (string $path, array $body) => file_get_contents("$control/$path", false, stream_context_create(['http' => [
    'method' => 'POST', 'header' => 'Content-Type: application/json', 'content' => json_encode($body),
]]));

$tags = array_map(fn ($i) => sprintf('Tag %03d', $i), range(1, 300));
$post('state', ['tags' => $tags, 'people' => [["email" => "o'brien@example.org", 'tags' => array_slice($tags, 0, 200)]]]);

$plugin = 1 + 8 + 200; // person + 8 taggings pages + one GET per tag she has
foreach ([['Tag 300', 'cold process'], ['Tag 150', 'same process'], ['tag 300', 'same process']] as [$tag, $when]) {
    $post('counts/reset', []);
    $started = microtime(true);
    $answer = joinblock_person_has_tag("o'brien@example.org", $tag, $apiKey, ['base_url' => $baseUrl, 'max_rps' => 100]);
    $requests = json_decode(file_get_contents("$control/counts"), true)['total'];
    printf("%-8s %-13s -> %-5s  %2d requests (the plugin: %d), %.2f s\n", $tag, "($when)", var_export($answer, true), $requests, $plugin, microtime(true) - $started);
}
