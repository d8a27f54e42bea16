<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// Joinblock_acquire_lock() and joinblock_configure(): arguments, settings, backends.

declare(strict_types=1);

namespace JoinBlock\Polyfill;

use JoinBlock\Lock;
use JoinBlock\LockException;

/** joinblock_acquire_lock() and joinblock_configure(): arguments, settings, backends. */
final class Locking
{
    /** What joinblock_configure() set, for the rest of this request. */
    private static ?string $backend = null;
    private static ?MysqlTarget $mysql = null;
    private static ?string $tablePrefix = null;
    /** As config.rs: the longest table prefix taken (the tables' names stay within 64 characters). */
    private const MAX_TABLE_PREFIX = 40;

    private static ?\WeakMap $locks = null;

    /** @var array{array, array{?float, ?string, ?string}}|null the last options array acquire() took, and what it read in it */
    private static ?array $checked = null;

    /** What stays for the process: INI settings (get_cfg_var() reads php.ini and -d only) and a reflection. */
    private static ?string $iniBackend = null;
    private static ?int $filesKept = null;
    private static ?\ReflectionClass $lockClass = null;

    /** The last key acquire() took, and its name(): a request mostly locks one key, maybe twice. */
    private static ?string $lastKey = null;
    private static string $lastName = '';

    public static function acquire(string $key, array $options): Lock
    {
        // Callers pass the same options call after call: an identical array is checked once.
        if (self::$checked === null || self::$checked[0] !== $options) {
            self::$checked = [$options, self::checkOptions($options)];
        }
        [$timeout, $dir, $backend] = self::$checked[1];
        $backend ??= self::$backend ?? self::$iniBackend ?? self::backend();
        if ($backend === 'file') {
            $dir ??= Options::ini('joinblock.lock_dir') ?? sys_get_temp_dir();
            // A relative directory is under getcwd() (a thread-safe PHP's request thread has its
            // own), and the lock's path() names it so, as the extension's does.
            if (!str_starts_with($dir, '/')) {
                $cwd = getcwd();
                if ($cwd === false) {
                    throw new LockException("cannot use the relative lock directory \"$dir\": PHP's getcwd() gives no working directory to resolve it in");
                }
                $dir = rtrim($cwd, '/') . "/$dir";
            }
            if ($key !== self::$lastKey) {
                [self::$lastName, self::$lastKey] = [self::name($key), $key];
            }
            // PathBuf::join, as the extension builds the path: one "/" between.
            $path = (str_ends_with($dir, '/') ? $dir : "$dir/") . self::$lastName;
            return self::wrap(FileLock::acquire($path, $dir, $timeout, self::$filesKept ??= self::filesKept()));
        }
        // A `dir` from a caller written for files is ignored: the site chose mysql.
        return self::wrap(DbLock::acquire(self::mysqlTarget(), self::name($key), $timeout, self::connectTimeout()));
    }

    /** @return array{?float, ?string, ?string} timeout, dir and backend of joinblock_acquire_lock()'s $options */
    private static function checkOptions(array $given): array
    {
        $options = new Options('joinblock_acquire_lock', '#2 ($options)', $given, ['dir', 'timeout', 'backend']);
        $timeout = $options->seconds('timeout');
        $dir = $options->bytes('dir');
        $backend = $options->bytes('backend');
        if ($backend !== null) {
            $backend = self::backendNamed($backend, static fn (string $problem) => $options->valueError('backend', $problem));
            if ($backend === 'mysql' && $dir !== null) {
                throw $options->valueError('dir', 'applies to the file backend only, and this call asks for mysql');
            }
        }
        return [$timeout, $dir, $backend];
    }

    public static function configure(array $settings): void
    {
        $known = ['lock_backend', 'mysql_url', 'db_host', 'db_user', 'db_password', 'db_name', 'table_prefix'];
        $given = new Options('joinblock_configure', '#1 ($settings)', $settings, $known);
        $prefix = $given->string('table_prefix');
        $prefixProblem = $prefix === null ? null : self::tablePrefixProblem($prefix);
        if ($prefixProblem !== null) {
            throw $given->valueError('table_prefix', $prefixProblem);
        }
        $backend = $given->string('lock_backend');
        $backend = $backend === null
            ? null
            : self::backendNamed($backend, static fn (string $problem) => $given->valueError('lock_backend', $problem));
        $url = $given->string('mysql_url');
        [$host, $user, $password, $name] = array_map([$given, 'string'], ['db_host', 'db_user', 'db_password', 'db_name']);
        $wordpress = $host !== null || $user !== null || $password !== null || $name !== null;
        if ($url !== null && $wordpress) {
            throw $given->valueError('mysql_url', 'and db_host/db_user/db_password/db_name exclude each other');
        }
        if ($wordpress && ($host === null || $user === null || $name === null)) {
            throw $given->valueError('db_host', 'needs db_user and db_name with it (db_password may be empty)');
        }
        $mysql = match (true) {
            $url !== null => MysqlTarget::fromUrl($url, static fn (string $p) => $given->valueError('mysql_url', $p)),
            $wordpress => MysqlTarget::fromWordpress($host, $user, $password ?? '', $name, static fn (string $p) => $given->valueError('db_host', $p)),
            default => null,
        };
        [self::$backend, self::$mysql, self::$tablePrefix] = [$backend, $mysql, $prefix];
    }

    /** The lock behind a JoinBlock\Lock; null for the copy a refused clone or unserialize() makes. */
    public static function of(Lock $lock): ?Held
    {
        return self::$locks[$lock] ?? null;
    }

    /** JoinBlock\Lock has no constructor PHP code may call: the lock rides in a WeakMap. */
    private static function wrap(Held $held): Lock
    {
        try {
            $lock = (self::$lockClass ??= new \ReflectionClass(Lock::class))->newInstanceWithoutConstructor();
            self::$locks ??= new \WeakMap();
            self::$locks[$lock] = $held;
            return $lock;
        } catch (\Throwable $e) {
            // Never a lock taken that no one can release.
            $held->release();
            throw $e;
        }
    }

    /** `join-lock-<sha1>` of the key as the plugin normalises it, byte for byte. */
    private static function name(string $key): string
    {
        $normalized = strtolower(trim($key));
        if ($normalized === '') {
            throw new \ValueError('joinblock_acquire_lock(): Argument #1 ($key) must not be empty after trimming white space');
        }
        return 'join-lock-' . sha1($normalized);
    }

    /** "file" or "mysql"; $fail makes the exception for anything else. */
    private static function backendNamed(string $text, \Closure $fail): string
    {
        $name = trim($text);
        if ($name !== 'file' && $name !== 'mysql') {
            throw $fail(sprintf('is "%s"; expected "file" or "mysql"', Options::escape($name)));
        }
        return $name;
    }

    /** joinblock_configure()'s backend, else INI. */
    private static function backend(): string
    {
        return self::$backend ?? self::$iniBackend ??= self::backendNamed(
            Options::ini('joinblock.lock_backend') ?? 'file',
            static fn (string $problem) => new LockException("INI joinblock.lock_backend $problem")
        );
    }

    /**
     * The site-wide store's table prefix: joinblock_configure()'s, else INI
     * joinblock.table_prefix (empty by default).
     *
     * @throws \ValueError for an INI value that cannot start a table name
     */
    public static function tablePrefix(): string
    {
        if (self::$tablePrefix !== null) {
            return self::$tablePrefix;
        }
        $prefix = trim(Options::ini('joinblock.table_prefix') ?? '');
        $problem = self::tablePrefixProblem($prefix);
        return $problem === null ? $prefix : throw new \ValueError("INI joinblock.table_prefix $problem");
    }

    /** What keeps $prefix from starting a table name unquoted (WordPress's rule: letters, digits, underscores), or null. */
    private static function tablePrefixProblem(string $prefix): ?string
    {
        if (\strlen($prefix) <= self::MAX_TABLE_PREFIX && preg_match('/^[A-Za-z0-9_]*$/D', $prefix) === 1) {
            return null;
        }
        return sprintf('is "%s"; expected at most %d letters, digits and underscores, such as wp_', Options::escape($prefix), self::MAX_TABLE_PREFIX);
    }

    /** joinblock.lock_files_kept: a whole number, 0 or more. */
    private static function filesKept(): int
    {
        $text = Options::ini('joinblock.lock_files_kept') ?? (string) Sweep::KEEP_DEFAULT;
        if (preg_match('/^\+?\d{1,9}$/D', trim($text)) !== 1 || (int) trim($text) > 100000000) {
            throw new LockException(sprintf('INI joinblock.lock_files_kept is "%s"; expected a whole number of files from 0 to 100000000, such as 1024', Options::escape($text)));
        }
        return (int) trim($text);
    }

    /** INI joinblock.mysql_connect_timeout: seconds, greater than 0. */
    private static function connectTimeout(): float
    {
        $text = Options::ini('joinblock.mysql_connect_timeout') ?? '3';
        $seconds = is_numeric(trim($text)) ? (float) trim($text) : NAN;
        if (!($seconds > 0.0) || !is_finite($seconds)) {
            throw new LockException(sprintf(
                'INI joinblock.mysql_connect_timeout is "%s"; expected seconds greater than 0, such as 3 or 0.5',
                Options::escape($text)
            ));
        }
        return $seconds;
    }

    /** joinblock_configure()'s server, else INI. */
    private static function mysqlTarget(): MysqlTarget
    {
        if (self::$mysql !== null) {
            return self::$mysql;
        }
        $url = Options::ini('joinblock.mysql_url') ?? throw new LockException(
            'the mysql lock backend needs INI joinblock.mysql_url or joinblock_configure() with the database settings'
        );
        return MysqlTarget::fromUrl($url, static fn (string $problem) => new LockException("INI joinblock.mysql_url $problem"));
    }

    /**
     * The lock server and the bound of every wait on it, when the mysql backend is in effect
     * and its settings can be read; null otherwise (locking reports what is wrong).
     *
     * @return array{MysqlTarget, float}|null
     */
    public static function mysqlInEffect(): ?array
    {
        try {
            return self::backend() === 'mysql' ? [self::mysqlTarget(), self::connectTimeout()] : null;
        } catch (LockException) {
            return null;
        }
    }

    /**
     * joinblock_status()'s lock part: the settings in effect, each null with a problem
     * when unusable; the server without its password.
     */
    public static function status(): array
    {
        $problems = [];
        $value = static function (string $name, callable $read) use (&$problems): ?string {
            try {
                return $read();
            } catch (LockException $e) {
                $problems[$name] = $e->getMessage();
                return null;
            }
        };
        $status = [
            'lock_backend' => $value('lock_backend', static fn () => self::backend()),
            'lock_dir' => Options::ini('joinblock.lock_dir') ?? sys_get_temp_dir(),
            'mysql_server' => self::$mysql === null && Options::ini('joinblock.mysql_url') === null
                ? null
                : $value('mysql_server', static fn () => self::mysqlTarget()->describe()),
        ];
        return $status + ['problems' => $problems];
    }
}
