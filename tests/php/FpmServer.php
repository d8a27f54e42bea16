<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * The php-fpm of the PHP running the tests (Debian's php-fpmX.Y, or the one of a PHP built
 * from source) on a Unix socket, driven with real FastCGI requests (cgi-fcgi). Started as root,
 * its workers run as www-data, as a site's do.
 */
final class FpmServer
{
    /** The scripts the workers serve; they serve copies, in the server's directory. */
    private const SCRIPTS = __DIR__ . '/fixtures/fpm';

    /** @param resource $process */
    private function __construct(private $process, private string $socket, private string $dir, private string $documentRoot) {}

    /**
     * @param int $workers static pool size
     * @param list<string> $phpArgs e.g. ['-n', '-d', 'extension=/path/libjoinblock.so']; a file
     *   the workers read at each request (auto_prepend_file) must be readable by www-data
     * @param array<string, string>|null $env php-fpm's environment; null: this process's
     * @param list<string> $pool more lines for the pool's section, e.g. php_admin_value[...]
     */
    public static function start(string $dir, int $workers, array $phpArgs, ?array $env = null, array $pool = []): self
    {
        $socket = "$dir/fpm.sock";
        $config = "$dir/fpm.conf";
        // www-data may not be able to read the checkout (CI clones as root).
        $documentRoot = "$dir/www";
        chmod($dir, 0711);
        mkdir($documentRoot, 0755);
        foreach (glob(self::SCRIPTS . '/*.php') as $script) {
            copy($script, "$documentRoot/" . basename($script));
            chmod("$documentRoot/" . basename($script), 0644);
        }
        // Only root can make workers run as another user.
        $poolUser = posix_geteuid() === 0 ? ['user = ' . JoinBlockTestCase::WEB_USER, 'group = ' . JoinBlockTestCase::WEB_USER] : [];
        file_put_contents($config, implode("\n", [
            '[global]',
            "error_log = $dir/fpm.log",
            'log_level = warning',
            '[test]',
            "listen = $socket",
            'listen.mode = 0600',
            'pm = static',
            "pm.max_children = $workers",
            'catch_workers_output = yes',
            'clear_env = no',
            ...$poolUser,
            ...$pool,
            '',
        ]));
        // php-fpm starts a session of its own (even with -F), so a killed test run's signals
        // never reach it: it is told to stop (TERM: its workers too) when its parent dies.
        $command = ['setpriv', '--pdeathsig', 'TERM', self::binary(), ...$phpArgs, '-y', $config, '-F'];
        $process = proc_open($command, [0 => ['pipe', 'r'], 1 => ['file', "$dir/fpm.out", 'w'], 2 => ['file', "$dir/fpm.out", 'a']], $pipes, null, $env);
        $deadline = microtime(true) + 15;
        while (!file_exists($socket)) {
            if (microtime(true) > $deadline || !proc_get_status($process)['running']) {
                throw new \RuntimeException('php-fpm did not start: ' . @file_get_contents("$dir/fpm.out") . @file_get_contents("$dir/fpm.log"));
            }
            usleep(20000);
        }
        return new self($process, $socket, $dir, $documentRoot);
    }

    /** Debian's php-fpmX.Y next to its phpX.Y, else `<prefix>/sbin/php-fpm` of `<prefix>/bin/php`. */
    private static function binary(): string
    {
        $cli = (string) realpath(PHP_BINARY);
        return $cli === JoinBlockTestCase::DEBIAN_PHP ? JoinBlockTestCase::DEBIAN_FPM : \dirname($cli, 2) . '/sbin/php-fpm';
    }

    public function stop(): void
    {
        ChildProcess::stop($this->process, SIGQUIT);
    }

    /** @return list<int> the pids of the pool's workers */
    public function workerPids(): array
    {
        $master = proc_get_status($this->process)['pid'];
        $workers = [];
        foreach (glob('/proc/[0-9]*/stat') as $stat) {
            // "pid (comm) state ppid ...": comm may hold spaces, never ") ".
            $fields = explode(' ', substr((string) @file_get_contents($stat), strrpos((string) @file_get_contents($stat), ') ') + 2));
            if ((int) ($fields[1] ?? 0) === $master) {
                $workers[] = (int) basename(\dirname($stat));
            }
        }
        return $workers;
    }

    /** What php-fpm logged (worker crashes show up here). */
    public function log(): string
    {
        return (string) @file_get_contents("$this->dir/fpm.log") . (string) @file_get_contents("$this->dir/fpm.out");
    }

    /** The cgi-fcgi command for one GET of one of the served scripts. */
    private function command(string $script, array $query): array
    {
        return ['env', '-i',
            'REQUEST_METHOD=GET',
            'SCRIPT_FILENAME=' . "$this->documentRoot/$script",
            'SCRIPT_NAME=/' . $script,
            'QUERY_STRING=' . http_build_query($query),
            'SERVER_PROTOCOL=HTTP/1.1',
            'GATEWAY_INTERFACE=CGI/1.1',
            '/usr/bin/cgi-fcgi', '-bind', '-connect', $this->socket,
        ];
    }

    /**
     * Sends the requests at once and waits for all.
     *
     * @param list<array{string, array}> $requests [script, query]
     * @return list<array{status: int, body: string, stderr: string}> stderr: the FastCGI
     *   stderr stream (where PHP logs errors when its error_log is unset)
     */
    public function requestAll(array $requests, float $limit = 60): array
    {
        $running = array_map(fn (array $request) => $this->send(...$request), $requests);
        $deadline = microtime(true) + $limit;
        return array_map(fn (array $sent) => $this->answer($sent, $deadline), $running);
    }

    /**
     * Sends one request without waiting for it; answer() waits.
     *
     * @return array{resource, array<int, resource>}
     */
    public function send(string $script, array $query): array
    {
        $proc = proc_open($this->command($script, $query), [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        return [$proc, $pipes];
    }

    /**
     * @param array{resource, array<int, resource>} $sent
     * @return array{status: int, body: string, stderr: string}
     */
    public function answer(array $sent, float $deadline): array
    {
        [$proc, $pipes] = $sent;
        stream_set_timeout($pipes[1], max(1, (int) ($deadline - microtime(true))));
        $raw = stream_get_contents($pipes[1]);
        stream_set_timeout($pipes[2], max(1, (int) ($deadline - microtime(true))));
        $stderr = (string) stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        proc_close($proc);
        [$head, $body] = array_pad(explode("\r\n\r\n", (string) $raw, 2), 2, '');
        $status = preg_match('~^Status: (\d+)~mi', $head, $m) ? (int) $m[1] : 200;
        return ['status' => $status, 'body' => $body, 'stderr' => $stderr];
    }

    /** @return array{status: int, body: string, stderr: string} */
    public function request(string $script, array $query): array
    {
        return $this->requestAll([[$script, $query]])[0];
    }
}
