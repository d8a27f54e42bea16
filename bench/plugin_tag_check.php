<?php
// The join-block plugin's current "does this person have tag T" check, rebuilt for bench/tag_check
// from its documented behaviour (ActionNetworkService: person by email, every taggings page, then
// one GET per tagging for the tag's name), with Debian's Guzzle (php-guzzlehttp-guzzle).

declare(strict_types=1);

// Debian's autoloaders require their dependencies through include_path (/usr/share/php).
require_once '/usr/share/php/GuzzleHttp/autoload.php';

use GuzzleHttp\Client;

const PLUGIN_MAX_TAGGING_PAGES = 10;

/** A client as the plugin sets one up: API root, token header, 10 s per request. */
function plugin_client(string $baseUrl, string $apiKey): Client
{
    return new Client([
        'base_uri' => $baseUrl,
        'timeout' => 10,
        'headers' => ['OSDI-API-Token' => $apiKey],
    ]);
}

/**
 * Whether the person with this email has the tag named $tag (compared case-sensitively), null
 * when no person has that email. Always 1 + taggings pages + one request per tagging.
 *
 * @throws \GuzzleHttp\Exception\GuzzleException transport error or error status
 * @throws \RuntimeException the taggings could not all be read (page cap, `next` not advancing)
 */
function plugin_person_has_tag(Client $client, string $email, string $tag): ?bool
{
    // As in the plugin, a quote in the email is not doubled; Guzzle percent-encodes the value.
    $people = plugin_get($client, 'people/', ['query' => ['filter' => "email_address eq '$email'"]]);
    $person = $people['_embedded']['osdi:people'][0] ?? null;
    if ($person === null) {
        return null;
    }
    $names = [];
    $url = $person['_links']['osdi:taggings']['href'];
    for ($page = 1; ; $page++) {
        $taggings = plugin_get($client, $url);
        foreach ($taggings['_embedded']['osdi:taggings'] ?? [] as $tagging) {
            // A tagging does not carry its tag's name.
            $names[] = plugin_get($client, $tagging['_links']['osdi:tag']['href'])['name'];
        }
        $next = $taggings['_links']['next']['href'] ?? null;
        if ($next === null) {
            return in_array($tag, $names, true);
        }
        if ($next === $url) {
            throw new RuntimeException('the taggings next link does not advance');
        }
        if ($page === PLUGIN_MAX_TAGGING_PAGES) {
            throw new RuntimeException('more than ' . PLUGIN_MAX_TAGGING_PAGES . ' taggings pages');
        }
        $url = $next;
    }
}

function plugin_get(Client $client, string $url, array $options = []): array
{
    return json_decode((string) $client->get($url, $options)->getBody(), true, 512, JSON_THROW_ON_ERROR);
}
