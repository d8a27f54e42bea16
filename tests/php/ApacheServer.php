<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * Debian's Apache 2.4 with the event MPM and a thread-safe (ZTS) mod_php built from Debian's
 * source (scripts/php-from-source zts): ONE child process whose threads serve the requests, on
 * 127.0.0.1 and a free port, from its own config, PidFile and logs in a directory of the test's
 * (never the system's apache2 service or /etc/apache2). Started as root, the child runs as
 * www-data, as a site's does.
 */
final class ApacheServer
{
    /** The scripts it serves; it serves copies, in the server's directory. */
    private const SCRIPTS = __DIR__ . '/fixtures/apache';

    private const MODULES = '/usr/lib/apache2/modules';

    /** @param resource $process */
    private function __construct(private $process, private int $port, private string $dir) {}

    /**
     * The ZTS PHP prefix (bin/php, lib/libphp.so): JOINBLOCK_ZTS_PREFIX, else the newest
     * complete build of scripts/php-from-source zts in its cache; null when there is none.
     */
    public static function ztsPrefix(): ?string
    {
        $named = getenv('JOINBLOCK_ZTS_PREFIX');
        if ($named !== false && $named !== '') {
            return $named;
        }
        $cache = getenv('JOINBLOCK_PHP_CACHE') ?: '/var/cache/joinblock';
        $complete = glob("$cache/php-*-zts-*/.complete") ?: [];
        usort($complete, fn (string $a, string $b) => filemtime($b) <=> filemtime($a));
        return $complete === [] ? null : \dirname($complete[0]);
    }

    /** Why this machine cannot run the server, or null when it can. */
    public static function unavailable(?string $prefix): ?string
    {
        if ($prefix === null) {
            return 'no thread-safe PHP: build one with scripts/php-from-source zts, or name its prefix in JOINBLOCK_ZTS_PREFIX';
        }
        foreach (["$prefix/lib/libphp.so" => 'the ZTS prefix has no Apache module', '/usr/sbin/apache2' => 'Debian\'s apache2 is not installed', self::MODULES . '/mod_mpm_event.so' => 'Apache has no event MPM'] as $file => $why) {
            if (!is_file($file)) {
                return "$why ($file missing)";
            }
        }
        if (!\function_exists('curl_multi_init')) {
            return 'the test process\'s PHP has no curl';
        }
        return null;
    }

    /**
     * @param string $prefix the ZTS PHP prefix (ztsPrefix())
     * @param array<string, string|int> $ini php.ini lines (`extension` included), written
     *   as-is: quote values that need it
     * @param int $threads ThreadsPerChild of the one child process (= MaxRequestWorkers)
     */
    public static function start(string $dir, string $prefix, array $ini, int $threads = 25): self
    {
        // www-data may not be able to read the checkout (CI clones as root).
        chmod($dir, 0711);
        $documentRoot = "$dir/www";
        mkdir($documentRoot, 0755);
        foreach (glob(self::SCRIPTS . '/*.php') as $script) {
            copy($script, "$documentRoot/" . basename($script));
            chmod("$documentRoot/" . basename($script), 0644);
        }
        // Read by the parent alone (root), which starts PHP: it may hold a database password.
        mkdir("$dir/php", 0700);
        $lines = [];
        foreach ($ini as $name => $value) {
            $lines[] = "$name = $value";
        }
        file_put_contents("$dir/php/php.ini", implode("\n", $lines) . "\n");
        chmod("$dir/php/php.ini", 0600);

        $port = MariaDbServer::freePort();
        $modules = self::MODULES;
        // Only root can make the child run as another user.
        $user = posix_geteuid() === 0 ? ['User ' . JoinBlockTestCase::WEB_USER, 'Group ' . JoinBlockTestCase::WEB_USER] : [];
        file_put_contents("$dir/apache2.conf", implode("\n", [
            "ServerRoot \"$dir\"",
            "DefaultRuntimeDir \"$dir\"",
            "PidFile \"$dir/apache2.pid\"",
            "ErrorLog \"$dir/error.log\"",
            'LogLevel warn',
            "Listen 127.0.0.1:$port",
            'ServerName 127.0.0.1',
            ...$user,
            "LoadModule mpm_event_module $modules/mod_mpm_event.so",
            "LoadModule authz_core_module $modules/mod_authz_core.so",
            "LoadModule php_module $prefix/lib/libphp.so",
            "PHPIniDir \"$dir/php\"",
            // One child process, every request on one of its threads.
            'StartServers 1',
            'ServerLimit 1',
            "ThreadLimit $threads",
            "ThreadsPerChild $threads",
            "MaxRequestWorkers $threads",
            'MinSpareThreads 1',
            "MaxSpareThreads $threads",
            'MaxConnectionsPerChild 0',
            'KeepAlive Off',
            "DocumentRoot \"$documentRoot\"",
            "<Directory \"$documentRoot\">",
            '    Require all granted',
            '</Directory>',
            '<FilesMatch "\.php$">',
            '    SetHandler application/x-httpd-php',
            '</FilesMatch>',
            '',
        ]));
        // PHP_INI_SCAN_DIR empty: no conf.d of the prefix, only the ini above.
        $env = ['PATH' => '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG' => 'C', 'PHP_INI_SCAN_DIR' => ''];
        $command = ['/usr/sbin/apache2', '-d', $dir, '-f', "$dir/apache2.conf", '-DFOREGROUND'];
        $process = proc_open($command, [0 => ['pipe', 'r'], 1 => ['file', "$dir/apache2.out", 'w'], 2 => ['file', "$dir/apache2.out", 'a']], $pipes, $dir, $env);
        $server = new self($process, $port, $dir);
        // Ready when its child answers a request.
        $deadline = microtime(true) + 20;
        while (true) {
            if (!proc_get_status($process)['running']) {
                $server->stop();
                throw new \RuntimeException("apache2 did not start:\n" . $server->log());
            }
            $probe = @fsockopen('127.0.0.1', $port, $errno, $error, 1);
            if ($probe !== false) {
                fclose($probe);
                $answer = $server->request('ready.php', []);
                if ($answer['status'] === 200 && $answer['body'] === 'ready') {
                    return $server;
                }
            }
            if (microtime(true) > $deadline) {
                $server->stop();
                throw new \RuntimeException("apache2 did not serve PHP within 20 s:\n" . $server->log());
            }
            usleep(20000);
        }
    }

    /** Stops Apache (SIGTERM: the parent stops its child and exits) and waits for it. */
    public function stop(): void
    {
        if ($this->process === null) {
            return;
        }
        $children = $this->childPids();
        ChildProcess::stop($this->process, SIGTERM, 15);
        $this->process = null;
        // A child the parent could not stop (a thread stuck in PHP) must not outlive the test;
        // orphaned, it is no longer the parent's child, but still Apache.
        foreach ($children as $child) {
            if (@readlink("/proc/$child/exe") === '/usr/sbin/apache2') {
                posix_kill($child, SIGKILL);
            }
        }
    }

    /** The parent's pid. */
    public function pid(): int
    {
        return proc_get_status($this->process)['pid'];
    }

    /** @return list<int> the processes the parent started (the one child; none while it starts or stops) */
    public function childPids(): array
    {
        $parent = $this->pid();
        $children = [];
        foreach (glob('/proc/[0-9]*', GLOB_ONLYDIR) as $proc) {
            $pid = (int) basename($proc);
            if ((int) self::status($pid, 'PPid') === $parent) {
                $children[] = $pid;
            }
        }
        return $children;
    }

    /** A field of /proc/<pid>/status, null when the process is gone. */
    public static function status(int $pid, string $field): ?string
    {
        $status = @file_get_contents("/proc/$pid/status");
        return $status !== false && preg_match("~^$field:\s*(.*)$~m", $status, $m) ? $m[1] : null;
    }

    /** Apache's error log (PHP's errors too: its error_log is unset) and what it printed. */
    public function log(): string
    {
        return (string) @file_get_contents("$this->dir/error.log") . (string) @file_get_contents("$this->dir/apache2.out");
    }

    public function url(string $script, array $query): string
    {
        return "http://127.0.0.1:{$this->port}/$script" . ($query === [] ? '' : '?' . http_build_query($query));
    }

    /**
     * Sends the requests at once (curl_multi: one connection each) and waits for all.
     *
     * @param list<array{string, array}> $requests [script, query]
     * @return list<array{status: int, body: string}> status 0: no answer (body: curl's error)
     */
    public function requestAll(array $requests, float $limit = 60): array
    {
        $multi = curl_multi_init();
        $handles = [];
        foreach ($requests as $i => [$script, $query]) {
            $handle = curl_init($this->url($script, $query));
            curl_setopt_array($handle, [
                CURLOPT_RETURNTRANSFER => true,
                CURLOPT_TIMEOUT_MS => (int) ($limit * 1000),
                CURLOPT_FORBID_REUSE => true,
                CURLOPT_FRESH_CONNECT => true,
                CURLOPT_PROXY => '',
                CURLOPT_NOPROXY => '*',
            ]);
            curl_multi_add_handle($multi, $handle);
            $handles[$i] = $handle;
        }
        do {
            $status = curl_multi_exec($multi, $active);
            if ($active) {
                curl_multi_select($multi, 0.1);
            }
        } while ($active && $status === CURLM_OK);
        $answers = [];
        foreach ($handles as $i => $handle) {
            $body = curl_multi_getcontent($handle);
            $code = (int) curl_getinfo($handle, CURLINFO_RESPONSE_CODE);
            $answers[$i] = ['status' => $code, 'body' => $code === 0 ? 'no answer: ' . curl_error($handle) : (string) $body];
            curl_multi_remove_handle($multi, $handle);
        }
        curl_multi_close($multi);
        return $answers;
    }

    /** @return array{status: int, body: string} */
    public function request(string $script, array $query, float $limit = 60): array
    {
        return $this->requestAll([[$script, $query]], $limit)[0];
    }
}
