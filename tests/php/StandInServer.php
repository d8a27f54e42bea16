<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

// The benchmarks load this file alone.
require_once __DIR__ . '/ChildProcess.php';

/** The stand-in Action Network server (tests/an_server.py), run on 127.0.0.1 for a test class. */
final class StandInServer
{
    public const API_KEY = 'test-key-5f1c9a';

    /** @param resource|null $process null when attached to a server someone else started */
    private function __construct(private $process, private int $port, private string $scheme) {}

    /** Controls a server already running on 127.0.0.1:`$port` (as the benchmarks start it). */
    public static function attach(int $port): self
    {
        return new self(null, $port, 'http');
    }

    /** @param list<string> $extraArgs */
    public static function start(array $extraArgs = []): self
    {
        $portFile = tempnam(sys_get_temp_dir(), 'joinblock-an-port-');
        unlink($portFile);
        $command = ['python3', dirname(__DIR__) . '/an_server.py', '--port', '0', '--port-file', $portFile, '--api-key', self::API_KEY, ...$extraArgs];
        $process = proc_open($command, [0 => ['pipe', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => STDERR], $pipes);
        $deadline = microtime(true) + 15;
        while (!is_file($portFile)) {
            if (microtime(true) > $deadline || !proc_get_status($process)['running']) {
                throw new \RuntimeException('the stand-in Action Network server did not start');
            }
            usleep(10000);
        }
        $port = (int) file_get_contents($portFile);
        unlink($portFile);
        return new self($process, $port, in_array('--tls', $extraArgs, true) ? 'https' : 'http');
    }

    public function stop(): void
    {
        if ($this->process !== null) {
            ChildProcess::stop($this->process);
            $this->process = null;
        }
    }

    public function port(): int
    {
        return $this->port;
    }

    public function baseUrl(): string
    {
        return "{$this->scheme}://127.0.0.1:{$this->port}/api/v2/";
    }

    /** Calls the control API. */
    public function control(string $method, string $path, ?array $body = null): mixed
    {
        // curl, not PHP's https:// stream wrapper, which a PHP built without openssl lacks.
        $curl = curl_init("{$this->scheme}://127.0.0.1:{$this->port}/_control/$path");
        curl_setopt_array($curl, [
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_HTTPHEADER => ['Content-Type: application/json', 'Connection: close'],
            CURLOPT_POSTFIELDS => $body === null ? '' : json_encode($body),
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT => 10,
            CURLOPT_SSL_VERIFYPEER => false,
            CURLOPT_SSL_VERIFYHOST => 0,
        ]);
        $answer = curl_exec($curl);
        $status = curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        if (!\is_string($answer) || $status !== 200) {
            throw new \RuntimeException("control $method $path failed: " . ($status ?: curl_error($curl)) . ' ' . (\is_string($answer) ? $answer : ''));
        }
        return json_decode($answer, true, 512, JSON_THROW_ON_ERROR);
    }

    /**
     * Replaces the data set; also clears faults and counters. `$caseSensitiveNames` lets the
     * group hold tags whose names differ only in case, which Action Network says it refuses.
     */
    public function load(array $tags, array $people, int $latencyMs = 0, bool $caseSensitiveNames = false): void
    {
        $this->control('POST', 'reset');
        $this->control('POST', 'state', ['tags' => $tags, 'people' => $people, 'latency_ms' => $latencyMs, 'case_sensitive_names' => $caseSensitiveNames]);
    }

    /** Switches the shapes of the answers (an_server.py's /_control/shapes); load() restores today's. */
    public function shapes(array $switches): void
    {
        // An empty array would go as a JSON list; no switch is no change.
        if ($switches !== []) {
            $this->control('POST', 'shapes', $switches);
        }
    }

    public function fault(string $kind, string $path = '/api/v2/', int $times = 1, array $extra = []): void
    {
        $this->control('POST', 'fault', ['kind' => $kind, 'path' => $path, 'times' => $times] + $extra);
    }

    /** @return array{total: int, by_path: array<string, int>, requests: list<array>} */
    public function counts(): array
    {
        return $this->control('GET', 'counts');
    }

    public function resetCounts(): void
    {
        $this->control('POST', 'counts/reset');
    }

    /** The path of the taggings collection of the person with `$email` (asks the API once). */
    public function taggingsPath(string $email): string
    {
        $context = stream_context_create(['http' => ['header' => 'OSDI-API-Token: ' . self::API_KEY]]);
        $filter = rawurlencode("email_address eq '$email'");
        $people = json_decode(file_get_contents($this->baseUrl() . "people/?filter=$filter", false, $context), true);
        return parse_url($people['_embedded']['osdi:people'][0]['_links']['osdi:taggings']['href'], PHP_URL_PATH);
    }

    /**
     * The load of the host-wide pacing test and benchmark: 8 members, each with 4 tags past
     * the tag list's first page in a 300-tag group, so that a cold check looks each one up
     * (7 requests). Returns, per member's email, the tag to ask and whether the member has it
     * (even members do, odd ones do not).
     *
     * @return array<string, array{string, bool}>
     */
    public function loadPacingMembers(int $members = 8): array
    {
        $names = self::tagNames(300);
        [$people, $asks] = [[], []];
        for ($i = 0; $i < $members; $i++) {
            $email = "m$i@example.org";
            $people[] = ['email' => $email, 'tags' => \array_slice($names, 200 + 10 * $i, 4)];
            $asks[$email] = [$names[200 + 10 * $i + ($i % 2 === 0 ? 3 : 5)], $i % 2 === 0];
        }
        $this->load($names, $people);
        return $asks;
    }

    /** "Tag 001" .. "Tag <n>" */
    public static function tagNames(int $n, string $prefix = 'Tag'): array
    {
        return array_map(fn ($i) => sprintf('%s %03d', $prefix, $i), range(1, $n));
    }
}
