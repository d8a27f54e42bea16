<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

// The benchmarks load this file alone.
require_once __DIR__ . '/ChildProcess.php';

/**
 * A private MariaDB from Debian's mariadb-server: its own data directory, socket and port on
 * 127.0.0.1, a user `joinblock` with a password and a database `wordpress`.
 */
final class MariaDbServer
{
    public const USER = 'joinblock';
    public const PASSWORD = 'pa55:w/rd@x';
    public const DATABASE = 'wordpress';

    /** @var resource|null */
    private $process = null;

    private function __construct(private string $dir, private int $port) {}

    public static function start(string $dir): self
    {
        $install = self::run(['mariadb-install-db', '--no-defaults', "--datadir=$dir/data", '--auth-root-authentication-method=socket', '--skip-test-db', ...self::asUser()]);
        if ($install['exit'] !== 0) {
            throw new \RuntimeException("mariadb-install-db failed: {$install['out']}");
        }
        $server = new self($dir, self::freePort());
        $server->launch();
        $server->sql(sprintf(
            "DROP USER IF EXISTS ''@'localhost'; CREATE USER '%s'@'%%' IDENTIFIED BY '%s'; CREATE DATABASE %s; GRANT ALL ON %s.* TO '%s'@'%%';",
            self::USER, self::PASSWORD, self::DATABASE, self::DATABASE, self::USER
        ));
        return $server;
    }

    /** A server in a fresh directory of its own, for one test class; destroy() removes it. */
    public static function startPrivate(): self
    {
        $dir = sys_get_temp_dir() . '/joinblock-mariadb-' . bin2hex(random_bytes(4));
        mkdir($dir, 0700);
        // Its socket, there, is for php-fpm's workers too (www-data); the data stay private.
        chmod($dir, 0711);
        return self::start($dir);
    }

    public function destroy(): void
    {
        $this->stop();
        exec('rm -rf ' . escapeshellarg($this->dir));
    }

    /** Stops the server (the data directory stays, for restart()). */
    public function stop(): void
    {
        if ($this->process === null) {
            return;
        }
        ChildProcess::stop($this->process, SIGTERM, 30);
        $this->process = null;
    }

    public function restart(): void
    {
        $this->stop();
        $this->launch();
    }

    public function port(): int
    {
        return $this->port;
    }

    public function socket(): string
    {
        return "{$this->dir}/sock";
    }

    public function url(string $password = self::PASSWORD): string
    {
        return sprintf('mysql://%s:%s@127.0.0.1:%d/%s', self::USER, rawurlencode($password), $this->port, self::DATABASE);
    }

    /** What WordPress's wp-config.php would say; `$dbHost` defaults to this server's TCP port. */
    public function wordpressSettings(?string $dbHost = null): array
    {
        return ['db_host' => $dbHost ?? "127.0.0.1:{$this->port}", 'db_user' => self::USER, 'db_password' => self::PASSWORD, 'db_name' => self::DATABASE];
    }

    /** `KILL CONNECTION` for every connection of the test user, as an admin (or a failover) would. */
    public function killConnections(): void
    {
        $ids = array_filter(explode("\n", $this->sql(sprintf("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '%s'", self::USER))));
        if ($ids !== []) {
            $this->sql(implode('', array_map(fn (string $id) => "KILL CONNECTION $id;", $ids)));
        }
    }

    /** Stops the server's process where it is (SIGSTOP): connections stay open, nothing answers. */
    public function pause(): void
    {
        posix_kill($this->pid(), SIGSTOP);
    }

    public function resume(): void
    {
        posix_kill($this->pid(), SIGCONT);
    }

    private function pid(): int
    {
        return (int) proc_get_status($this->process)['pid'];
    }

    /**
     * Runs $select (a locking read) in a transaction of a root session that stays open, as
     * another tool's stuck transaction would; the returned function ends it.
     */
    public function holdRowLocks(string $select): \Closure
    {
        $proc = proc_open(['mariadb', '--no-defaults', "--socket={$this->dir}/sock", '-uroot', '-N', '-B', '--unbuffered'],
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        // Its own waits end within 10 s (the server's defaults are 50 s and a day), and so
        // does ours for its answer: a lock it cannot get fails the test, never hangs it.
        fwrite($pipes[0], "SET SESSION lock_wait_timeout = 10, innodb_lock_wait_timeout = 10; BEGIN; $select; SELECT 'locked';\n");
        fflush($pipes[0]);
        stream_set_timeout($pipes[1], 15);
        $locked = false;
        while (!$locked && ($line = fgets($pipes[1])) !== false) {
            $locked = trim($line) === 'locked';
        }
        if (!$locked) {
            proc_terminate($proc, SIGKILL);
            proc_close($proc);
            throw new \RuntimeException("the session meant to hold locks did not get them within 15 s: $select");
        }
        return static function () use ($proc, $pipes): void {
            fwrite($pipes[0], "ROLLBACK;\n");
            fclose($pipes[0]);
            stream_get_contents($pipes[1]);
            fclose($pipes[1]);
            proc_close($proc);
        };
    }

    /** Runs SQL as root over the socket; returns the output (tab-separated, no headers). */
    public function sql(string $sql): string
    {
        $result = self::run(['mariadb', '--no-defaults', "--socket={$this->dir}/sock", '-uroot', '-N', '-B', '-e', $sql]);
        if ($result['exit'] !== 0) {
            throw new \RuntimeException("SQL failed: $sql: {$result['out']}");
        }
        return $result['out'];
    }

    private function launch(): void
    {
        $command = ['mariadbd', '--no-defaults', "--datadir={$this->dir}/data", "--socket={$this->dir}/sock",
            "--port={$this->port}", '--bind-address=127.0.0.1', "--pid-file={$this->dir}/pid", "--log-error={$this->dir}/error.log",
            '--skip-name-resolve', '--innodb-buffer-pool-size=32M',
            // latin1 as most sites' servers have it; MariaDB 11.6 and later default to utf8mb4.
            '--character-set-server=latin1', '--collation-server=latin1_swedish_ci', ...self::asUser()];
        $this->process = proc_open($command, [0 => ['pipe', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        $deadline = microtime(true) + 60;
        while (true) {
            $ping = @fsockopen('127.0.0.1', $this->port, $errno, $error, 1);
            if ($ping !== false && file_exists("{$this->dir}/sock")) {
                fclose($ping);
                return;
            }
            if (microtime(true) > $deadline || !proc_get_status($this->process)['running']) {
                throw new \RuntimeException('mariadbd did not start: ' . @file_get_contents("{$this->dir}/error.log"));
            }
            usleep(50000);
        }
    }

    /** mariadbd refuses to run as root unless told to. */
    private static function asUser(): array
    {
        return posix_geteuid() === 0 ? ['--user=root'] : [];
    }

    public static function freePort(): int
    {
        $probe = stream_socket_server('tcp://127.0.0.1:0');
        $port = (int) substr(strrchr(stream_socket_get_name($probe, false), ':'), 1);
        fclose($probe);
        return $port;
    }

    /** @return array{exit: int, out: string} */
    private static function run(array $command): array
    {
        $proc = proc_open($command, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['redirect', 1]], $pipes);
        fclose($pipes[0]);
        $out = stream_get_contents($pipes[1]);
        fclose($pipes[1]);
        return ['exit' => proc_close($proc), 'out' => $out];
    }
}
