<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * A real WordPress for a test class: Debian's `wordpress` package (copied to a scratch
 * directory), a private MariaDB, Debian's nginx in front of Debian's php-fpm (workers run
 * as www-data), installed without a browser, with the test plugin
 * (tests/php/fixtures/wordpress/joinblock-test) and the Composer package required into it.
 *
 * php-fpm can be restarted with other PHP options (extension or not) while the rest stays up.
 * Everything listens on 127.0.0.1 or Unix sockets, and destroy() stops and removes it all.
 */
final class WordPressSite
{
    public const ADMIN = 'admin';
    public const ADMIN_PASSWORD = 'site-admin-pw-6d1e';
    private const WORDPRESS = '/usr/share/wordpress';
    private const PLUGIN = 'joinblock-test';

    private ?MariaDbServer $db = null;
    /** @var resource|null */
    private $nginx = null;
    private ?FpmServer $fpm = null;
    private int $port;
    private string $cookies;

    private function __construct(private string $dir)
    {
        $this->cookies = "$dir/cookies.txt";
    }

    /** @param array<string, mixed> $settings the test plugin's first settings */
    public static function create(array $settings): self
    {
        $dir = sys_get_temp_dir() . '/joinblock-wp-' . bin2hex(random_bytes(4));
        mkdir($dir, 0755);
        chmod($dir, 0755);
        $site = new self($dir);
        try {
            $site->build($settings);
        } catch (\Throwable $e) {
            $site->destroy();
            throw $e;
        }
        return $site;
    }

    private function build(array $settings): void
    {
        $this->port = MariaDbServer::freePort();
        // Dereferenced: Debian's tree links to its shared copies of getID3, underscore, ...
        self::run(['cp', '-RL', self::WORDPRESS, $this->root()]);
        foreach (['logs', 'tmp', 'nginx'] as $sub) {
            mkdir("$this->dir/$sub", 0755);
            chown("$this->dir/$sub", 'www-data');
        }
        // The plugin, with the package copied in through Composer (www-data cannot read the
        // checkout, and a copy keeps vendor/ independent of it).
        $package = "$this->dir/package";
        mkdir($package);
        ComposerProject::stagePackage($package);
        $plugin = $this->root() . '/wp-content/plugins/' . self::PLUGIN;
        mkdir($plugin);
        copy(__DIR__ . '/fixtures/wordpress/' . self::PLUGIN . '/' . self::PLUGIN . '.php', "$plugin/" . self::PLUGIN . '.php');
        ComposerProject::create($plugin, $package, false, ['name' => 'joinblock-test/wordpress-plugin', 'type' => 'wordpress-plugin']);

        $this->db = MariaDbServer::startPrivate();
        $this->configure($settings);
        file_put_contents($this->root() . '/wp-config.php', $this->wpConfig());
        $install = self::run([PHP_BINARY, __DIR__ . '/fixtures/wordpress/install.php', $this->root(), self::ADMIN_PASSWORD, "127.0.0.1:$this->port"]);
        if (!preg_match('~^\{"user_id":\d+\}$~m', $install)) {
            throw new \RuntimeException("WordPress did not install: $install");
        }
        $this->startNginx();
    }

    /** The WordPress directory (ABSPATH). */
    public function root(): string
    {
        return "$this->dir/wordpress";
    }

    public function url(string $path = ''): string
    {
        return "http://127.0.0.1:$this->port/$path";
    }

    public function db(): MariaDbServer
    {
        return $this->db ?? throw new \LogicException('no database');
    }

    /** WordPress's temporary directory (WP_TEMP_DIR), which the site's ini also names as joinblock.lock_dir. */
    public function tempDir(): string
    {
        return "$this->dir/tmp";
    }

    /** The event log the test plugin writes. */
    public function eventLog(): string
    {
        return "$this->dir/logs/events.log";
    }

    /** WordPress's debug.log (WP_DEBUG_LOG): PHP's warnings and notices of every request. */
    public function debugLog(): string
    {
        return (string) @file_get_contents("$this->dir/logs/debug.log");
    }

    /**
     * Replaces the test plugin's settings (joinblock-test.json next to wp-config.php), read by
     * every request; `temp_dir` sets WP_TEMP_DIR.
     *
     * @param array<string, mixed> $settings
     */
    public function configure(array $settings): void
    {
        $settings += ['log' => $this->eventLog(), 'temp_dir' => $this->tempDir()];
        file_put_contents($this->root() . '/joinblock-test.json', json_encode($settings, JSON_UNESCAPED_SLASHES));
        foreach ([$this->eventLog(), "$this->dir/logs/debug.log"] as $log) {
            file_put_contents($log, '');
            chown($log, 'www-data');
        }
    }

    /**
     * (Re)starts php-fpm with these PHP options (e.g. `-d extension=...`); a static pool of
     * `$workers` workers running as www-data, on a socket nginx's workers may use.
     *
     * @param list<string> $phpArgs
     */
    public function startPhp(array $phpArgs, int $workers): void
    {
        $this->fpm?->stop();
        $this->fpm = null;
        $dir = "$this->dir/fpm";
        exec('rm -rf ' . escapeshellarg($dir));
        mkdir($dir, 0755);
        // A web server's environment: root's PATH names directories www-data cannot enter.
        $env = ['PATH' => '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
        if (getenv('PHP_INI_SCAN_DIR') !== false) {
            $env['PHP_INI_SCAN_DIR'] = getenv('PHP_INI_SCAN_DIR');
        }
        $this->fpm = FpmServer::start($dir, $workers, $phpArgs, $env, [
            'user = www-data', 'group = www-data', 'listen.owner = www-data', 'listen.group = www-data',
        ]);
    }

    /** What php-fpm logged (workers' stderr included). */
    public function fpmLog(): string
    {
        return $this->fpm?->log() ?? '';
    }

    public function destroy(): void
    {
        $this->fpm?->stop();
        $this->fpm = null;
        if ($this->nginx !== null) {
            ChildProcess::stop($this->nginx);
            $this->nginx = null;
        }
        $this->db?->destroy();
        $this->db = null;
        exec('rm -rf ' . escapeshellarg($this->dir));
    }

    /**
     * POSTs JSON bodies to REST routes all at once (curl_multi); returns [status, decoded body]
     * in order.
     *
     * @param list<array{string, array}> $requests [route under /wp-json/, body]
     * @return list<array{int, mixed}>
     */
    public function postAll(array $requests): array
    {
        $multi = curl_multi_init();
        $handles = [];
        foreach ($requests as $i => [$route, $body]) {
            $handles[$i] = $this->handle('?rest_route=/' . ltrim($route, '/'), [
                CURLOPT_POST => true,
                CURLOPT_POSTFIELDS => json_encode($body),
                CURLOPT_HTTPHEADER => ['Content-Type: application/json'],
            ]);
            curl_multi_add_handle($multi, $handles[$i]);
        }
        do {
            $state = curl_multi_exec($multi, $running);
            if ($running > 0) {
                curl_multi_select($multi, 0.1);
            }
        } while ($running > 0 && $state === CURLM_OK);
        $answers = [];
        foreach ($handles as $i => $handle) {
            $answers[$i] = [curl_getinfo($handle, CURLINFO_RESPONSE_CODE), json_decode((string) curl_multi_getcontent($handle), true)];
            curl_multi_remove_handle($multi, $handle);
        }
        curl_multi_close($multi);
        return $answers;
    }

    /** Logs in as the admin the install created (wp-login.php, as a browser does). */
    public function logIn(): void
    {
        @unlink($this->cookies);
        // The test cookie a browser gets from the login form's page.
        file_put_contents($this->cookies, sprintf("127.0.0.1\tFALSE\t/\tFALSE\t0\twordpress_test_cookie\tWP%%20Cookie%%20check\n"));
        [$status, , $headers] = $this->get('wp-login.php', [
            CURLOPT_POST => true,
            CURLOPT_POSTFIELDS => http_build_query(['log' => self::ADMIN, 'pwd' => self::ADMIN_PASSWORD, 'wp-submit' => 'Log In', 'testcookie' => '1', 'redirect_to' => $this->url('wp-admin/')]),
            CURLOPT_FOLLOWLOCATION => false,
        ]);
        if ($status !== 302 || !str_contains($headers, 'wordpress_logged_in_')) {
            throw new \RuntimeException("logging in as the admin failed: HTTP $status $headers");
        }
    }

    /**
     * The session's cookies (after logIn()), for a browser.
     *
     * @return list<array{name: string, value: string, path: string}>
     */
    public function cookies(): array
    {
        $cookies = [];
        foreach (file($this->cookies, FILE_IGNORE_NEW_LINES) as $line) {
            $fields = explode("\t", preg_replace('~^#HttpOnly_~', '', $line));
            if (count($fields) === 7 && !str_starts_with($line, '# ')) {
                $cookies[] = ['name' => $fields[5], 'value' => $fields[6], 'path' => $fields[2]];
            }
        }
        return $cookies;
    }

    /**
     * GETs a page with the session's cookies.
     *
     * @return array{int, string, string} status, body, headers
     */
    public function get(string $path, array $options = []): array
    {
        $handle = $this->handle($path, $options + [CURLOPT_HEADER => true]);
        $raw = (string) curl_exec($handle);
        $headerSize = curl_getinfo($handle, CURLINFO_HEADER_SIZE);
        $status = curl_getinfo($handle, CURLINFO_RESPONSE_CODE);
        return [$status, substr($raw, $headerSize), substr($raw, 0, $headerSize)];
    }

    /** @return \CurlHandle */
    private function handle(string $path, array $options): \CurlHandle
    {
        $handle = curl_init($this->url($path));
        curl_setopt_array($handle, $options + [
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT => 90,
            CURLOPT_COOKIEFILE => $this->cookies,
            CURLOPT_COOKIEJAR => $this->cookies,
        ]);
        return $handle;
    }

    private function wpConfig(): string
    {
        $db = $this->db();
        $constants = [
            'DB_NAME' => MariaDbServer::DATABASE,
            'DB_USER' => MariaDbServer::USER,
            'DB_PASSWORD' => MariaDbServer::PASSWORD,
            'DB_HOST' => "127.0.0.1:{$db->port()}",
            'DB_CHARSET' => 'utf8mb4',
            'DB_COLLATE' => '',
            'WP_HOME' => rtrim($this->url(), '/'),
            'WP_SITEURL' => rtrim($this->url(), '/'),
            'WP_DEBUG' => true,
            'WP_DEBUG_DISPLAY' => false,
            'WP_DEBUG_LOG' => "$this->dir/logs/debug.log",
            // No network: no cron requests to itself, no update checks, no outside HTTP.
            'DISABLE_WP_CRON' => true,
            'AUTOMATIC_UPDATER_DISABLED' => true,
            'WP_HTTP_BLOCK_EXTERNAL' => true,
        ];
        foreach (['AUTH', 'SECURE_AUTH', 'LOGGED_IN', 'NONCE'] as $name) {
            $constants["{$name}_KEY"] = bin2hex(random_bytes(32));
            $constants["{$name}_SALT"] = bin2hex(random_bytes(32));
        }
        $lines = ['<?php', '// Written by tests/php/WordPressSite.php.'];
        foreach ($constants as $name => $value) {
            $lines[] = sprintf('define(%s, %s);', var_export($name, true), var_export($value, true));
        }
        return implode("\n", [
            ...$lines,
            "define('WP_TEMP_DIR', json_decode(file_get_contents(__DIR__ . '/joinblock-test.json'), true)['temp_dir']);",
            "\$table_prefix = 'wp_';",
            "if (!defined('ABSPATH')) { define('ABSPATH', __DIR__ . '/'); }",
            "require_once ABSPATH . 'wp-settings.php';",
            '',
        ]);
    }

    private function startNginx(): void
    {
        $conf = "$this->dir/nginx/nginx.conf";
        $temp = "$this->dir/nginx";
        file_put_contents($conf, <<<CONF
            user www-data;
            worker_processes 2;
            daemon off;
            pid $temp/nginx.pid;
            error_log $temp/error.log warn;
            events { worker_connections 256; }
            http {
                include /etc/nginx/mime.types;
                access_log off;
                client_body_temp_path $temp/body;
                proxy_temp_path $temp/proxy;
                fastcgi_temp_path $temp/fastcgi;
                uwsgi_temp_path $temp/uwsgi;
                scgi_temp_path $temp/scgi;
                server {
                    listen 127.0.0.1:$this->port;
                    root {$this->root()};
                    index index.php;
                    location / { try_files \$uri \$uri/ /index.php?\$args; }
                    location ~ \.php$ {
                        include /etc/nginx/fastcgi_params;
                        fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
                        fastcgi_pass unix:$this->dir/fpm/fpm.sock;
                        fastcgi_read_timeout 90s;
                    }
                }
            }
            CONF);
        $this->nginx = proc_open(['/usr/sbin/nginx', '-e', "$temp/error.log", '-c', $conf], [0 => ['file', '/dev/null', 'r'], 1 => ['file', "$temp/out.log", 'w'], 2 => ['file', "$temp/out.log", 'a']], $pipes);
        $deadline = microtime(true) + 15;
        while (true) {
            $probe = @fsockopen('127.0.0.1', $this->port, $errno, $error, 1);
            if ($probe !== false) {
                fclose($probe);
                return;
            }
            if (microtime(true) > $deadline || !proc_get_status($this->nginx)['running']) {
                throw new \RuntimeException('nginx did not start: ' . @file_get_contents("$temp/out.log") . @file_get_contents("$temp/error.log"));
            }
            usleep(20000);
        }
    }

    /** Runs a command; returns its output, or throws with it. */
    private static function run(array $command): string
    {
        $proc = proc_open($command, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['redirect', 1]], $pipes);
        $out = (string) stream_get_contents($pipes[1]);
        fclose($pipes[1]);
        if (proc_close($proc) !== 0) {
            throw new \RuntimeException(implode(' ', $command) . " failed: $out");
        }
        return $out;
    }
}
