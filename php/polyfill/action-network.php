<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// Joinblock_person_has_tag(): the Action Network client, the tag cache and the algorithm.

declare(strict_types=1);

namespace JoinBlock\Polyfill;

use JoinBlock\ActionNetworkException;

/** Why a tag check's answer cannot be known; becomes an ActionNetworkException. */
final class Failure extends \Exception
{
    private function __construct(string $message)
    {
        parent::__construct($message);
    }

    public static function transport(string $what, string $cause): self
    {
        return new self("Action Network $what failed: $cause");
    }

    public static function timeout(string $what, string $limit): self
    {
        return new self("Action Network $what timed out ($limit)");
    }

    public static function deadline(string $what): self
    {
        return new self("the call's deadline passed before the Action Network $what");
    }

    public static function status(string $what, int $status, ?string $message): self
    {
        return new self("Action Network answered HTTP $status to the $what" . ($message === null ? '' : ": $message"));
    }

    public static function pageCap(int $maxPages): self
    {
        return new self("the person has more than $maxPages pages of taggings (max_pages); the answer is unknown");
    }

    public static function unreadableTaggings(int $count): self
    {
        return new self("$count of the person's taggings could not be read (no osdi:tag link), and the asked tag is not among"
            . ' the others; the answer is unknown');
    }

    public static function repeatedNext(string $what): self
    {
        return new self("Action Network's $what links back to a page already read; stopped to avoid a loop");
    }

    public static function foreignLink(string $what, string $origin): self
    {
        return new self("the Action Network $what points to another origin ($origin); not followed, so the API key"
            . " stays with base_url's origin");
    }

    public static function tooManyRedirects(string $what, int $max): self
    {
        return new self("Action Network redirected the $what more than $max times; stopped to avoid a loop");
    }

    public static function badJson(string $what, string $detail): self
    {
        return new self("the Action Network $what answer is not valid JSON: $detail");
    }

    public static function badShape(string $what, string $detail): self
    {
        return new self("the Action Network $what answer has an unexpected shape: $detail");
    }

    public static function tooLarge(string $what, int $cap): self
    {
        return new self("the Action Network $what answer is larger than " . ($cap >> 20) . ' MiB; not read');
    }
}

/** URLs as the extension's client compares them: scheme and host lower-cased, default ports dropped. */
final class Url
{
    /** `scheme://host[:port]`; null when $url names no scheme and host. */
    public static function origin(string $url): ?string
    {
        $parts = parse_url($url);
        if (!isset($parts['scheme'], $parts['host'])) {
            return null;
        }
        $scheme = strtolower($parts['scheme']);
        $port = $parts['port'] ?? null;
        $default = ['http' => 80, 'https' => 443][$scheme] ?? null;
        return "$scheme://" . strtolower($parts['host']) . ($port === null || $port === $default ? '' : ":$port");
    }

    /** A link from an answer, in the one spelling it is compared and requested in. */
    public static function link(string $href, string $what): string
    {
        $origin = self::origin($href) ?? throw Failure::badShape($what, sprintf('link "%s" is not a URL', addcslashes($href, '"\\')));
        $parts = parse_url($href);
        return $origin . ($parts['path'] ?? '/') . (isset($parts['query']) ? "?{$parts['query']}" : '');
    }

    /** A Location header resolved against the URL that answered it; null if unreadable. */
    public static function resolve(string $base, string $location): ?string
    {
        if (parse_url($location, PHP_URL_SCHEME) !== null) {
            return self::origin($location) === null ? null : $location;
        }
        $path = parse_url($base, PHP_URL_PATH) ?? '/';
        return match (true) {
            str_starts_with($location, '//') => parse_url($base, PHP_URL_SCHEME) . ":$location",
            str_starts_with($location, '/') => self::origin($base) . $location,
            str_starts_with($location, '?') => self::origin($base) . $path . $location,
            default => self::origin($base) . substr($path, 0, strrpos($path, '/') + 1) . $location,
        };
    }

    /**
     * An API root: absolute http(s) without credentials, query or fragment; plain http only
     * to loopback (the key would cross the network in clear). Returned ending in "/".
     */
    public static function base(string $text, \Closure $fail): string
    {
        if (!preg_match('//u', $text)) {
            throw $fail('is not valid UTF-8');
        }
        $parts = parse_url($text);
        if ($parts === false || !isset($parts['scheme'])) {
            throw $fail('is not a valid URL (' . ($parts === false ? 'cannot be parsed' : 'relative URL without a base') . ')');
        }
        $scheme = strtolower($parts['scheme']);
        $host = $parts['host'] ?? '';
        if ($scheme === 'http' && !self::isLoopback($host)) {
            throw $fail('uses plain http:// to a host other than loopback; use https://');
        }
        if ($scheme !== 'http' && $scheme !== 'https') {
            throw $fail("has scheme \"$scheme\"; only https:// (or http:// to loopback) is allowed");
        }
        if ($host === '' || isset($parts['user']) || isset($parts['pass'])) {
            throw $fail('must name a host and carry no user name or password');
        }
        if (isset($parts['query']) || isset($parts['fragment'])) {
            throw $fail('must not have a query or fragment');
        }
        $path = $parts['path'] ?? '/';
        return self::origin($text) . (str_ends_with($path, '/') ? $path : "$path/");
    }

    private static function isLoopback(string $host): bool
    {
        $ip = inet_pton(trim($host, '[]'));
        return strcasecmp($host, 'localhost') === 0
            || ($ip !== false && (\strlen($ip) === 4 ? $ip[0] === "\x7f" : $ip === inet_pton('::1')));
    }
}

/** Reading decoded JSON (objects as stdClass, so that objects and lists stay apart). */
final class Json
{
    /** $value->a->b…, or null where a step is missing or not an object. */
    public static function get(mixed $value, string ...$path): mixed
    {
        foreach ($path as $key) {
            if (!$value instanceof \stdClass || !property_exists($value, $key)) {
                return null;
            }
            $value = $value->{$key};
        }
        return $value;
    }

    /** `resource._links.<rel>.href`, when it is a string. */
    public static function link(mixed $resource, string $rel): ?string
    {
        $href = self::get($resource, '_links', $rel, 'href');
        return \is_string($href) ? $href : null;
    }

    /** A non-negative integer field, as the extension reads counts. */
    public static function count(mixed $value, string $key): ?int
    {
        $number = self::get($value, $key);
        return \is_int($number) && $number >= 0 ? $number : null;
    }
}

/** How one tag check talks to Action Network. */
final class Settings
{
    private const FUNCTION = 'joinblock_person_has_tag';
    public const DEFAULT_BASE_URL = 'https://actionnetwork.org/api/v2/';

    private function __construct(
        public readonly string $baseUrl,
        public readonly float $timeout,
        public readonly float $deadline,
        public readonly float $tagCacheTtl,
        public readonly int $maxPages,
        public readonly float $maxRps,
    ) {}

    public static function from(array $given): self
    {
        $known = ['base_url', 'timeout', 'deadline', 'max_pages', 'tag_cache_ttl', 'max_rps'];
        $options = new Options(self::FUNCTION, '#4 ($options)', $given, $known);
        $url = $options->bytes('base_url');
        $source = $url === null ? 'INI joinblock.action_network_url' : 'option "base_url"';
        $url ??= Options::ini('joinblock.action_network_url') ?? self::DEFAULT_BASE_URL;
        $baseUrl = Url::base($url, static fn (string $problem) => new \ValueError(self::FUNCTION . "(): $source $problem"));
        $positive = static function (string $name, float $default) use ($options): float {
            $seconds = $options->seconds($name);
            return $seconds === 0.0 ? throw $options->valueError($name, 'must be greater than 0') : $seconds ?? $default;
        };
        $timeout = $positive('timeout', 10.0);
        $deadline = $positive('deadline', 30.0);
        $tagCacheTtl = $options->seconds('tag_cache_ttl') ?? 600.0;
        $maxPages = $options->int('max_pages') ?? 10;
        if ($maxPages < 1 || $maxPages > 4294967295) {
            throw $options->valueError('max_pages', 'must be between 1 and 4294967295');
        }
        $maxRps = $options->number('max_rps') ?? 4.0;
        if ($maxRps === 0.0) {
            throw $options->valueError('max_rps', 'must be greater than 0');
        }
        return new self($baseUrl, $timeout, $deadline, $tagCacheTtl, $maxPages, $maxRps);
    }
}

/**
 * One call's requests: the origin rule that keeps the API key home, pacing, retries on
 * "slow down" answers, the body cap, timeouts and the call's deadline.
 */
final class Session
{
    /** Largest body read; a page of 25 resources is a few tens of KiB. */
    private const BODY_CAP = 4 << 20;
    /** Waits after a 429/503 without Retry-After: jittered, doubling from first to last. */
    private const FIRST_RETRY_WAIT = 0.5;
    private const MAX_RETRY_WAIT = 8.0;
    private const SLOW_DOWN = [429 => 'Too Many Requests', 503 => 'Service Unavailable'];
    /** Same-origin redirects followed at most, as the extension's client. */
    private const MAX_REDIRECTS = 4;
    /** Pacing never spaces requests further apart than an hour, whatever max_rps says. */
    private const MAX_INTERVAL = 3600.0;
    /** As http.rs LATE_WAKE_TOLERANCE: how late past its slot (seconds) a woken process may still send on it. */
    private const LATE_WAKE_TOLERANCE = 0.02;
    /**
     * Requests are spaced this much wider than 1 / max_rps: a strict server counts every
     * request in any 1-second span, and a process that wakes late brings its request closer
     * to the next ones (mod.rs says more).
     */
    private const PACING_HEADROOM = 1.1;

    /** This process's handle: its connection cache keeps connections alive across calls. */
    private static ?\CurlHandle $curl = null;
    private static int $curlPid = 0;

    /** When this process sent (or scheduled) its last request; each call spaces its own requests from it. */
    private static ?float $lastRequest = null;

    private string $origin;
    private float $deadline;
    private float $minInterval;

    public function __construct(
        public readonly string $baseUrl,
        private string $apiKey,
        private float $timeout,
        float $deadline,
        float $maxRps,
        private ?SiteState $shared = null,
    ) {
        $this->origin = Url::origin($baseUrl);
        $this->deadline = Clock::now() + $deadline;
        $this->minInterval = min(self::PACING_HEADROOM / $maxRps, self::MAX_INTERVAL);
    }

    /** Refuses a URL that the API key may not go to: another scheme, host or port. */
    public function sameOrigin(string $url, string $what): void
    {
        $origin = Url::origin($url);
        if ($origin !== $this->origin) {
            throw Failure::foreignLink($what, $origin ?? 'null');
        }
    }

    /** GETs $url and decodes its JSON, retrying 429/503 within the deadline. */
    public function getJson(string $url, string $what): mixed
    {
        $this->sameOrigin($url, $what);
        $backoff = new Backoff(self::FIRST_RETRY_WAIT, self::MAX_RETRY_WAIT);
        $redirects = 0;
        while (true) {
            $this->pace($what);
            [$status, $headers, $body] = $this->send($url, $what, min($this->timeout, $this->remaining($what)));
            if (isset(self::SLOW_DOWN[$status])) {
                $wait = self::retryAfter($headers['retry-after'] ?? null) ?? $backoff->next();
                if (Clock::now() + $wait >= $this->deadline) {
                    throw Failure::deadline(sprintf(
                        '%s (Action Network answered %d %s and asked to wait %.1f s)',
                        $what,
                        $status,
                        self::SLOW_DOWN[$status],
                        $wait
                    ));
                }
                // Every process of the host waits, not only this one: the next pace() of any of
                // them falls after the wait.
                if ($this->shared === null || !$this->shared->pushBack(microtime(true) + $wait)) {
                    Clock::sleep($wait);
                }
                continue;
            }
            if ($status >= 300 && $status < 400) {
                // A redirect the extension's client does not follow (300, 304, no usable
                // Location) is an error status; one to another origin or one hop too
                // many says so.
                $target = isset($headers['location']) ? Url::resolve($url, $headers['location']) : null;
                if ($target === null || !\in_array($status, [301, 302, 303, 307, 308], true)) {
                    throw Failure::status($what, $status, self::errorText($body));
                }
                $origin = Url::origin($target);
                if ($origin !== $this->origin) {
                    throw Failure::foreignLink("redirect of the $what", $origin ?? 'an unreadable location');
                }
                if ($redirects++ === self::MAX_REDIRECTS) {
                    throw Failure::tooManyRedirects($what, self::MAX_REDIRECTS);
                }
                $url = $target;
                continue;
            }
            if ($status < 200 || $status >= 300) {
                throw Failure::status($what, $status, self::errorText($body));
            }
            try {
                return json_decode($body, false, 512, JSON_THROW_ON_ERROR);
            } catch (\JsonException $e) {
                throw Failure::badJson($what, $e->getMessage());
            }
        }
    }

    private function remaining(string $what): float
    {
        $left = $this->deadline - Clock::now();
        return $left > 0 ? $left : throw $this->deadlinePassed($what);
    }

    /** Waits for the host's next request slot (the shared store's), else this process's; never past the deadline. */
    private function pace(string $what): void
    {
        $retaken = false;
        while ($this->shared !== null) {
            $latest = microtime(true) + ($this->deadline - Clock::now());
            $slot = $this->shared->reserve($this->minInterval, $latest);
            if ($slot === null) {
                throw $this->deadlinePassed("$what (waiting for a request slot under max_rps)");
            }
            if ($slot === false) {
                break;
            }
            Clock::sleep($slot[1] - microtime(true));
            // Woken late (a busy machine), the slot is spent: sending now would come closer
            // than one interval to the next host's slot. A new one is asked for, once per
            // request (as http.rs pace).
            if ($slot[0] && ($retaken || microtime(true) - $slot[1] <= min($this->minInterval / 10, self::LATE_WAKE_TOLERANCE))) {
                return;
            }
            $retaken = $retaken || $slot[0];
        }
        $now = Clock::now();
        $slot = self::$lastRequest === null ? $now : max(self::$lastRequest + $this->minInterval, $now);
        if ($slot >= $this->deadline) {
            throw $this->deadlinePassed("$what (waiting for a request slot under max_rps)");
        }
        self::$lastRequest = $slot;
        Clock::sleep($slot - Clock::now());
    }

    /** The deadline's failure, naming the site-wide store's failure when this call fell back to the host's files. */
    private function deadlinePassed(string $what): Failure
    {
        $failure = $this->shared?->siteFailure();
        return Failure::deadline($failure === null ? $what : "$what; $failure");
    }

    /** @return array{int, array<string, string>, string} status, headers (lower-case names), body */
    private function send(string $url, string $what, float $timeout): array
    {
        [$headers, $body, $tooLarge] = [[], '', false];
        $curl = self::curl($what);
        curl_setopt_array($curl, [
            CURLOPT_URL => $url,
            CURLOPT_HTTPHEADER => ["OSDI-API-Token: {$this->apiKey}", 'Accept: application/json'],
            CURLOPT_TIMEOUT_MS => Clock::ms($timeout),
            CURLOPT_HEADERFUNCTION => static function ($curl, string $line) use (&$headers): int {
                if (str_starts_with($line, 'HTTP/')) {
                    $headers = [];
                } elseif (str_contains($line, ':')) {
                    [$name, $value] = explode(':', $line, 2);
                    $headers[strtolower(trim($name))] = trim($value);
                }
                return \strlen($line);
            },
            CURLOPT_WRITEFUNCTION => static function ($curl, string $chunk) use (&$body, &$tooLarge): int {
                if (\strlen($body) + \strlen($chunk) > self::BODY_CAP) {
                    $tooLarge = true;
                    return 0;
                }
                $body .= $chunk;
                return \strlen($chunk);
            },
        ]);
        if (curl_exec($curl) === false) {
            $errno = curl_errno($curl);
            $limit = Clock::now() + 0.005 >= $this->deadline ? "the call's deadline" : 'the request timeout';
            throw match (true) {
                $tooLarge, $errno === CURLE_FILESIZE_EXCEEDED => Failure::tooLarge($what, self::BODY_CAP),
                $errno === CURLE_OPERATION_TIMEDOUT => Failure::timeout($what, $limit),
                default => Failure::transport($what, self::describe($curl, $errno)),
            };
        }
        return [curl_getinfo($curl, CURLINFO_RESPONSE_CODE), $headers, $body];
    }

    /** This process's curl handle; a child made by fork makes its own (the parent's shares its sockets). */
    private static function curl(string $what): \CurlHandle
    {
        if (self::$curl !== null && self::$curlPid === getmypid()) {
            return self::$curl;
        }
        if (!\function_exists('curl_init')) {
            throw Failure::transport($what, "PHP's curl extension is not loaded");
        }
        self::$curl = curl_init();
        self::$curlPid = getmypid();
        curl_setopt_array(self::$curl, [
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_SSL_VERIFYPEER => true,
            CURLOPT_SSL_VERIFYHOST => 2,
            CURLOPT_MAXFILESIZE => self::BODY_CAP,
            CURLOPT_USERAGENT => 'joinblock-polyfill',
        ]);
        return self::$curl;
    }

    /** What went wrong, in the extension's words where they differ from curl's. */
    private static function describe(\CurlHandle $curl, int $errno): string
    {
        $kind = match ($errno) {
            CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_SSL_CONNECT_ERROR => 'cannot connect',
            CURLE_SSL_CACERT => 'cannot connect: TLS certificate verify failed',
            CURLE_RECV_ERROR, CURLE_PARTIAL_FILE, CURLE_BAD_CONTENT_ENCODING => 'reading the answer failed',
            CURLE_URL_MALFORMAT => 'invalid request',
            default => 'request failed',
        };
        // curl keeps the OS error of the handle's last failed connect: only that one has it.
        $os = $errno === CURLE_COULDNT_CONNECT ? curl_getinfo($curl, CURLINFO_OS_ERRNO) : 0;
        return "$kind: " . curl_error($curl) . ($os > 0 ? ': ' . Os::describeErrno($os) : '');
    }

    /** Action Network's `{"error": "..."}` text, when the body has one. */
    private static function errorText(string $body): ?string
    {
        $error = Json::get(json_decode($body), 'error');
        return \is_string($error) && preg_match('/^.{0,300}/su', $error, $m) ? $m[0] : null;
    }

    /** `Retry-After` in seconds (the HTTP-date form is treated as absent), at most an hour. */
    private static function retryAfter(?string $header): ?float
    {
        $seconds = $header !== null && is_numeric(trim($header)) ? (float) trim($header) : null;
        return $seconds !== null && is_finite($seconds) && $seconds >= 0 ? min($seconds, 3600.0) : null;
    }
}

/**
 * What this process knows of each group's tags (name <-> href), learned while answering
 * calls, and how far it has read the group's tag list: the extension's cache
 * (src/action_network/cache.rs, which says why), with the same rules, so that both send
 * the same requests. An entry lives for the tag_cache_ttl of the call that learned it and
 * a call trusts entries younger than its own; expired entries go whenever a call saves;
 * at most MAX_ENTRIES entries of at most MAX_ENTRY_BYTES each, the oldest learned going
 * first (a PHP-FPM request is short, but a CLI process or a long request is not); a call
 * reads entries in place and keeps what it learns apart, saved at its end; a name leads
 * to every href learned with it; the reading position is dropped with an entry of its
 * group evicted for room or not kept.
 */
final class Knowledge
{
    private const MAX_ENTRIES = 4096;
    private const MAX_ENTRY_BYTES = 1024;

    /**
     * @var array<string, array{names: array<string, array{string, float, float}>, hrefs: array<string, array<string, true>>, list: ?array{array{read: int, total: ?int, next: ?string}, float, float}}>
     *   group => href => [name, learned, expires]; name => hrefs; [reading position, learned, expires]
     */
    private static array $groups = [];
    /** @var array<string, array{string, string}> every entry, oldest learned first: "group\nhref" => [group, href] */
    private static array $order = [];

    /** @var array<string, string> href => name, as this call learned them */
    private array $ownNames = [];
    /** @var array<string, array<string, true>> name => hrefs, as this call learned them */
    private array $ownHrefs = [];
    /** @var list<array{string, string}> [href, name], in the order learned */
    private array $learned = [];
    /** @var ?array{read: int, total: ?int, next: ?string} pages read, the list's length, the page to read next */
    private ?array $list = null;
    /** @var ?array{float, float} learned and expiry of the loaded reading position; null for a reading begun by this call */
    private ?array $listAge = null;
    private bool $listAdvanced = false;

    /** Whether this call has read the host's shared map (at its first miss). */
    private bool $sharedRead = false;

    private function __construct(private string $group, private float $ttl, private ?SiteState $shared) {}

    /** Entries the process keeps now, over all groups (what the extension shows in php --ri). */
    public static function entries(): int
    {
        return \count(self::$order);
    }

    /** $group's knowledge as a call with this $ttl trusts it. */
    public static function load(string $group, float $ttl, ?SiteState $shared = null): self
    {
        $knowledge = new self($group, $ttl, $shared);
        $list = self::$groups[$group]['list'] ?? null;
        if ($list !== null && self::trusted($list[1], $list[2], $ttl)) {
            $knowledge->list = $list[0];
            $knowledge->listAge = [$list[1], $list[2]];
        }
        return $knowledge;
    }

    /** Keeps what this call learned for the calls after it; with tag_cache_ttl = 0 no call would trust it. */
    public function save(): void
    {
        if ($this->ttl <= 0.0 || $this->learned === [] && !$this->listAdvanced) {
            return;
        }
        $now = Clock::now();
        $expires = $now + $this->ttl;
        self::removeExpired($now);
        $allKept = true;
        foreach ($this->learned as [$href, $name]) {
            if (\strlen($href) + \strlen($name) <= self::MAX_ENTRY_BYTES) {
                self::insert($this->group, $href, $name, $now, $expires);
            } else {
                $allKept = false;
            }
        }
        if ($this->listAdvanced || !$allKept) {
            // A resumed reading keeps its first page's age, and expires with the shortest-lived page.
            $age = $this->listAge === null ? [$now, $expires] : [$this->listAge[0], min($this->listAge[1], $expires)];
            self::$groups[$this->group] ??= ['names' => [], 'hrefs' => [], 'list' => null];
            self::$groups[$this->group]['list'] = $allKept && $this->list !== null ? [$this->list, ...$age] : null;
        }
        self::makeRoom();
        [$wall, $ttl] = [microtime(true), $this->ttl];
        $this->shared?->publish(array_map(static fn ($l) => [$l[0], $l[1], $wall, $wall + $ttl], $this->learned));
    }

    /**
     * On a miss: once per call, adopts the host's shared entries this process lacks (or has
     * older); true when it did, so the lookup is worth repeating.
     */
    private function readShared(): bool
    {
        if ($this->shared === null || $this->ttl <= 0.0 || $this->sharedRead) {
            return false;
        }
        $this->sharedRead = true;
        $entries = $this->shared->readTags();
        [$mono, $wall] = [Clock::now(), microtime(true)];
        foreach ($entries as [$href, $name, $learned, $expires]) {
            // Wall-clock times become this process's clock; the future and the expired are not believed.
            if ($learned > $wall || $expires <= $wall) {
                continue;
            }
            $learned = $mono - ($wall - $learned);
            $mine = self::$groups[$this->group]['names'][$href] ?? null;
            if ($mine === null || $mine[1] < $learned) {
                self::insert($this->group, $href, $name, $learned, $mono + ($expires - $wall));
            }
        }
        self::makeRoom();
        return $entries !== [];
    }

    /**
     * Action Network compares tag names without regard to case: full Unicode lowercasing,
     * with the final sigma as any sigma (PHP 8.3 lowercases a word-final Σ to ς, earlier
     * versions and the extension to σ).
     */
    public static function normalize(string $name): string
    {
        return str_replace('ς', 'σ', mb_strtolower($name, 'UTF-8'));
    }

    public function learn(string $name, string $href): void
    {
        $name = self::normalize($name);
        $old = $this->ownNames[$href] ?? null;
        if ($old !== null) {
            unset($this->ownHrefs[$old][$href]);
        }
        $this->ownNames[$href] = $name;
        $this->ownHrefs[$name][$href] = true;
        $this->learned[] = [$href, $name];
    }

    /**
     * One more page of the tag list was read (its names learned): $total is the length it
     * states, if any, and $next the page after it.
     */
    public function learnListPage(?int $total, ?string $next): void
    {
        $this->list = ['read' => ($this->list['read'] ?? 0) + 1, 'total' => $total ?? $this->list['total'] ?? null, 'next' => $next];
        $this->listAdvanced = true;
    }

    /** @return list<string> every href known to be called $name */
    public function hrefsOf(string $name): array
    {
        $hrefs = $this->hrefsInProcess($name);
        return $hrefs === [] && $this->readShared() ? $this->hrefsInProcess($name) : $hrefs;
    }

    /** @return list<string> */
    private function hrefsInProcess(string $name): array
    {
        $hrefs = array_keys($this->ownHrefs[$name] ?? []);
        foreach (self::$groups[$this->group]['hrefs'][$name] ?? [] as $href => $_) {
            [, $learned, $expires] = self::$groups[$this->group]['names'][$href];
            // This call's own knowledge of an href (a rename) comes first.
            if (!isset($this->ownNames[$href]) && self::trusted($learned, $expires, $this->ttl)) {
                $hrefs[] = $href;
            }
        }
        return $hrefs;
    }

    public function nameOf(string $href): ?string
    {
        return $this->nameInProcess($href) ?? ($this->readShared() ? $this->nameInProcess($href) : null);
    }

    private function nameInProcess(string $href): ?string
    {
        if (isset($this->ownNames[$href])) {
            return $this->ownNames[$href];
        }
        $entry = self::$groups[$this->group]['names'][$href] ?? null;
        return $entry !== null && self::trusted($entry[1], $entry[2], $this->ttl) ? $entry[0] : null;
    }

    /** @return ?array{read: int, total: ?int, next: ?string} */
    public function listProgress(): ?array
    {
        return $this->list;
    }

    private static function trusted(float $learned, float $expires, float $ttl): bool
    {
        $now = Clock::now();
        return $now < $expires && $now - $learned < $ttl;
    }

    private static function insert(string $group, string $href, string $name, float $learned, float $expires): void
    {
        self::remove($group, $href);
        self::$groups[$group] ??= ['names' => [], 'hrefs' => [], 'list' => null];
        self::$groups[$group]['names'][$href] = [$name, $learned, $expires];
        self::$groups[$group]['hrefs'][$name][$href] = true;
        self::$order["$group\n$href"] = [$group, $href];
    }

    private static function remove(string $group, string $href): void
    {
        $name = self::$groups[$group]['names'][$href][0] ?? null;
        if ($name === null) {
            return;
        }
        unset(self::$groups[$group]['names'][$href], self::$groups[$group]['hrefs'][$name][$href], self::$order["$group\n$href"]);
        if (self::$groups[$group]['hrefs'][$name] === []) {
            unset(self::$groups[$group]['hrefs'][$name]);
        }
    }

    private static function removeExpired(float $now): void
    {
        foreach (self::$groups as $group => $cached) {
            foreach ($cached['names'] as $href => [, , $expires]) {
                if ($now >= $expires) {
                    self::remove((string) $group, (string) $href);
                }
            }
            if ($cached['list'] !== null && $now >= $cached['list'][2]) {
                self::$groups[$group]['list'] = null;
            }
            if (self::$groups[$group]['names'] === [] && self::$groups[$group]['list'] === null) {
                unset(self::$groups[$group]);
            }
        }
    }

    /** Removes the oldest entries past MAX_ENTRIES; their groups forget their reading position. */
    private static function makeRoom(): void
    {
        foreach (array_slice(self::$order, 0, max(0, \count(self::$order) - self::MAX_ENTRIES)) as [$group, $href]) {
            self::$groups[$group]['list'] = null;
            self::remove($group, $href);
        }
    }
}

/**
 * A paged collection, followed through `_links.next` with origin and page-cap checks. Its
 * last page is whichever end comes first (mod.rs says why): the page whose number reaches
 * total_pages, a page with fewer items than its per_page (an empty one included), or one
 * whose `next` leads back to a page already read; such a `next` while the totals say more
 * pages follow is a loop, and an error.
 */
final class Pages
{
    private ?string $next;
    /** @var array<string, true> */
    private array $visited = [];

    /** $key: the `_embedded` key of the items; $readBefore: pages read by earlier calls, for numbering pages. */
    public function __construct(?string $first, private string $what, private string $key, private ?int $cap, private int $readBefore = 0)
    {
        $this->next = $first;
    }

    public function finished(): bool
    {
        return $this->next === null;
    }

    /** The page next() reads; null once the last one is read. */
    public function upcoming(): ?string
    {
        return $this->next;
    }

    /** The next page; call only while not finished(). */
    public function next(Session $session): mixed
    {
        if ($this->cap !== null && \count($this->visited) >= $this->cap) {
            throw Failure::pageCap($this->cap);
        }
        [$url, $this->next] = [$this->next, null];
        $number = $this->readBefore + \count($this->visited) + 1;
        $what = "{$this->what} $number";
        $this->visited[$url] = true;
        $page = $session->getJson($url, $what);
        $items = \count(TagCheck::embedded($page, $this->key, $what));
        $totalPages = Json::count($page, 'total_pages');
        $perPage = Json::count($page, 'per_page');
        if ($items === 0 || ($perPage !== null && $items < $perPage) || ($totalPages !== null && $number >= $totalPages)) {
            return $page;
        }
        $next = Json::link($page, 'next');
        if ($next !== null) {
            $next = Url::link($next, $what);
            if (isset($this->visited[$next])) {
                return $totalPages === null ? $page : throw Failure::repeatedNext($what);
            }
            $session->sameOrigin($next, "next link of the $what");
            $this->next = $next;
        }
        return $page;
    }
}

/**
 * The group's tag list, 25 names a page, read one page at a time when that is worth it,
 * from where this process stopped reading it.
 */
final class TagList
{
    /** A list that states no length: only more unknown tags than a page names justify reading on. */
    private const PROBE_ABOVE = 25;

    private Pages $pages;

    public function __construct(string $baseUrl, Knowledge $knowledge)
    {
        $progress = $knowledge->listProgress();
        $first = $progress === null ? "{$baseUrl}tags" : $progress['next'];
        $this->pages = new Pages($first, 'tag list page', 'osdi:tags', null, $progress['read'] ?? 0);
    }

    /**
     * Whether reading on is cheaper than looking up $unnamed tags one by one; the first page,
     * which tells the list's length, as soon as it could save a request.
     */
    public function isCheaper(Knowledge $knowledge, float $unnamed): bool
    {
        if ($this->pages->finished()) {
            return false;
        }
        $progress = $knowledge->listProgress();
        return match (true) {
            $progress === null => $unnamed > 1,
            $progress['total'] === null => $unnamed > self::PROBE_ABOVE,
            default => max(1, $progress['total'] - $progress['read']) < $unnamed,
        };
    }

    public function readNext(Session $session, Knowledge $knowledge): void
    {
        $page = $this->pages->next($session);
        foreach (TagCheck::embedded($page, 'osdi:tags', 'tag list page') as $tag) {
            $name = Json::get($tag, 'name');
            if (!\is_string($name)) {
                throw Failure::badShape('tag list page', 'a tag has no name');
            }
            $href = Json::link($tag, 'self') ?? throw Failure::badShape('tag list page', 'a tag has no self link');
            $knowledge->learn($name, Url::link($href, 'tag list page'));
        }
        $total = Json::count($page, 'total_pages');
        $knowledge->learnListPage($total === null ? null : min($total, 4294967295), $this->pages->upcoming());
    }
}

/**
 * "Does this person have tag T?" in as few requests as the API allows, as the extension
 * answers it (src/action_network/mod.rs, which says why). A tagging names its tag only by
 * href, so the answer needs T's href: with it, the person lookup plus the taggings pages up
 * to the first match; without it but with every tag of the person named, false for as
 * many. Otherwise a person with two unknown tags or more makes the call read the tag
 * list's next unread page early (it also tells the list's length); hrefs still unknown at
 * the end are resolved the cheaper way: one GET per unknown tag, or more unread pages of
 * the tag list. Reaching the list's end proves nothing (pages read earlier may have
 * shifted): a tag still unnamed then is looked up. A tagging without an osdi:tag link is
 * skipped, as the plugin skips it, but then only true can be known.
 */
final class TagCheck
{
    private const FUNCTION = 'joinblock_person_has_tag';
    /** What Rust's str::trim() strips: Unicode white space. */
    private const BLANK = '/^[\s\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*$/u';

    private TagList $list;

    private function __construct(private Session $session, private Knowledge $knowledge, private int $maxPages)
    {
        $this->list = new TagList($session->baseUrl, $knowledge);
    }

    public static function run(string $email, string $tag, string $apiKey, array $options): ?bool
    {
        self::requireText(1, 'email', $email);
        self::requireText(2, 'tag', $tag);
        self::requireKey($apiKey);
        $settings = Settings::from($options);
        if (!\function_exists('mb_strtolower')) {
            // strtolower() folds ASCII only: "Élan" would not match "élan", a wrong answer.
            throw new ActionNetworkException("PHP's mbstring extension is not loaded: the tag check needs it to compare tag names without regard to case");
        }
        $group = "{$settings->baseUrl} " . sha1($apiKey);
        $shared = SiteState::forGroup($group, Clock::now() + $settings->deadline);
        $session = new Session($settings->baseUrl, $apiKey, $settings->timeout, $settings->deadline, $settings->maxRps, $shared);
        $knowledge = Knowledge::load($group, $settings->tagCacheTtl, $shared);
        try {
            return (new self($session, $knowledge, $settings->maxPages))->check($email, Knowledge::normalize($tag));
        } catch (Failure $e) {
            // Belt and braces: Action Network never echoes the key, but a message must never carry it.
            $message = \strlen($apiKey) >= 4 ? str_replace($apiKey, '[API key]', $e->getMessage()) : $e->getMessage();
            throw new ActionNetworkException($message);
        } finally {
            // Whatever was learned stays useful, even when this call failed.
            $knowledge->save();
            $shared?->tidyWhenDue();
        }
    }

    /**
     * The items at `page._embedded.<key>`. An empty collection may come without _embedded,
     * as {}, or without the key: none. Only what cannot be a collection fails.
     */
    public static function embedded(mixed $page, string $key, string $what): array
    {
        if (!$page instanceof \stdClass) {
            throw Failure::badShape($what, 'not a JSON object');
        }
        $embedded = $page->_embedded ?? null;
        if ($embedded !== null && !$embedded instanceof \stdClass) {
            throw Failure::badShape($what, '_embedded is not an object');
        }
        $list = $embedded?->{$key} ?? [];
        return \is_array($list) ? $list : throw Failure::badShape($what, "_embedded.$key is not a list");
    }

    /**
     * The key becomes an HTTP header: CR or LF in it would add headers of the caller's
     * making. preg_match() with /u answers false, not 1, on invalid UTF-8, so the encoding
     * is checked first and only 0 (no match) lets a key through.
     */
    private static function requireKey(string $apiKey): void
    {
        $unfit = static fn () => new \ValueError(self::FUNCTION . '(): Argument #3 ($apiKey) must be valid UTF-8 without control characters');
        if (preg_match('//u', $apiKey) !== 1) {
            throw $unfit();
        }
        self::requireText(3, 'apiKey', $apiKey);
        if (preg_match('/[\x{0}-\x{1f}\x{7f}-\x{9f}]/u', $apiKey) !== 0) {
            throw $unfit();
        }
    }

    private static function requireText(int $position, string $name, string $value): void
    {
        if (!preg_match('//u', $value)) {
            throw new \TypeError(self::FUNCTION . "(): Argument #$position (\$$name) must be valid UTF-8");
        }
        if (preg_match(self::BLANK, $value)) {
            throw new \ValueError(self::FUNCTION . "(): Argument #$position (\$$name) must not be empty");
        }
    }

    private function check(string $email, string $target): ?bool
    {
        $taggings = $this->findPerson($email);
        if ($taggings === null) {
            return null;
        }
        // Every href known to be the asked tag: one, unless the group holds two tags whose
        // names differ only in case; a person with any of them has the tag.
        $targetHrefs = $this->knowledge->hrefsOf($target);
        /** @var array<string, true> $seen every tag href of the person met so far, in order */
        $seen = [];
        // Taggings without an osdi:tag link: skipped, but no false can be known with any.
        $unreadable = 0;
        $pages = new Pages($taggings, 'taggings page', 'osdi:taggings', $this->maxPages);
        while (!$pages->finished()) {
            $page = $pages->next($this->session);
            [$hrefs, $skipped] = self::taggingHrefs($page);
            if ($targetHrefs === [] && $seen === [] && $unreadable === 0) {
                // A person with several unknown tags may need the tag list anyway; its first
                // page may name the tag at once, and paging can then stop at the first match.
                $unnamed = \count($this->unnamed($hrefs));
                $onPage = \count($hrefs) + $skipped;
                $after = $pages->finished() ? 0 : self::taggingsAfter($page, $onPage);
                // The pages after this one are guessed to be as unknown as this one.
                $expected = $unnamed + floor($after * $unnamed / max(1, $onPage));
                if ($this->list->isCheaper($this->knowledge, $expected)) {
                    $this->list->readNext($this->session, $this->knowledge);
                    $targetHrefs = $this->knowledge->hrefsOf($target);
                }
            }
            $unreadable += $skipped;
            foreach ($hrefs as $href) {
                if (\in_array($href, $targetHrefs, true)) {
                    return true;
                }
                $seen[$href] = true;
            }
        }
        $found = $targetHrefs === [] && $this->resolve($target, array_keys($seen));
        return $found || $unreadable === 0 ? $found : throw Failure::unreadableTaggings($unreadable);
    }

    /** The person's taggings collection, or null when no person has that email. */
    private function findPerson(string $email): ?string
    {
        // OData string literal: quotes doubled. urlencode() also sends "+" as %2B.
        $filter = "email_address eq '" . str_replace("'", "''", $email) . "'";
        $answer = $this->session->getJson("{$this->session->baseUrl}people/?filter=" . urlencode($filter), 'person lookup');
        // The people collection's next link is present even on its last page: never followed.
        $people = self::embedded($answer, 'osdi:people', 'person lookup');
        if ($people === []) {
            return null;
        }
        $href = Json::link($people[0], 'osdi:taggings');
        return $href === null ? $this->documentedTaggings($people[0]) : Url::link($href, 'person lookup');
    }

    /**
     * A person without an osdi:taggings link: the documented people/<id>/taggings under
     * base_url, with the id of its action_network: identifier (a uuid; nothing else goes in a path).
     */
    private function documentedTaggings(mixed $person): string
    {
        $identifiers = Json::get($person, 'identifiers');
        foreach (\is_array($identifiers) ? $identifiers : [] as $identifier) {
            if (\is_string($identifier) && preg_match('/^action_network:([A-Za-z0-9-]+)$/D', $identifier, $m)) {
                return "{$this->session->baseUrl}people/{$m[1]}/taggings";
            }
        }
        throw Failure::badShape('person lookup', 'the person has neither an osdi:taggings link nor an action_network identifier');
    }

    /** @return array{list<string>, int} the tag hrefs of a taggings page, and how many of its taggings have no osdi:tag link */
    private static function taggingHrefs(mixed $page): array
    {
        [$hrefs, $unreadable] = [[], 0];
        foreach (self::embedded($page, 'osdi:taggings', 'taggings page') as $tagging) {
            $href = Json::link($tagging, 'osdi:tag');
            if ($href === null) {
                $unreadable++;
            } else {
                $hrefs[] = Url::link($href, 'taggings page');
            }
        }
        return [$hrefs, $unreadable];
    }

    /**
     * How many taggings come after a page that is not the last: exact with total_records,
     * else estimated. The server's totals are only numbers: past PHP_INT_MAX the product saturates.
     */
    private static function taggingsAfter(mixed $page, int $onPage): int
    {
        $total = Json::count($page, 'total_records');
        $pages = Json::count($page, 'total_pages');
        return match (true) {
            $total !== null => max(0, $total - $onPage),
            $pages !== null => min(PHP_INT_MAX, max(0, $pages - 1) * 25),
            default => 25,
        };
    }

    /** @return list<string> the hrefs whose tag names are unknown */
    private function unnamed(array $hrefs): array
    {
        return array_values(array_filter($hrefs, fn (string $href): bool => $this->knowledge->nameOf($href) === null));
    }

    /**
     * Is one of $hrefs the href of $target? Learns the names still unknown by the cheaper of
     * per-tag lookups and the tag list, deciding again after every request.
     */
    private function resolve(string $target, array $hrefs): bool
    {
        while (true) {
            $targetHrefs = $this->knowledge->hrefsOf($target);
            if ($targetHrefs !== []) {
                return array_intersect($targetHrefs, $hrefs) !== [];
            }
            $unnamed = $this->unnamed($hrefs);
            if ($unnamed === []) {
                return false;
            }
            if ($this->list->isCheaper($this->knowledge, \count($unnamed))) {
                $this->list->readNext($this->session, $this->knowledge);
            } else {
                $this->lookUp($unnamed[0]);
            }
        }
    }

    /** Any failure, 404 included, fails the call and teaches nothing (mod.rs says why). */
    private function lookUp(string $href): void
    {
        $name = Json::get($this->session->getJson($href, 'tag lookup'), 'name');
        if (!\is_string($name)) {
            throw Failure::badShape('tag lookup', 'no "name"');
        }
        $this->knowledge->learn($name, $href);
    }
}
