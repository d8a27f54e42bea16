<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use JoinBlock\LockTimeoutException;

/**
 * The file lock where sites run it: PHP as www-data (as php-fpm runs it), a /tmp-like
 * directory shared with other local users, files planted or left there by another user
 * (nobody), root working in www-data's directory, and who holds a lock when a wait gives up.
 */
final class LockOnRealHostsTest extends JoinBlockTestCase
{
    private const PLANTED = "planted by nobody\n";

    protected function setUp(): void
    {
        if (posix_geteuid() !== 0) {
            self::markTestSkipped('runs PHP as www-data and plants files as nobody: needs root');
        }
    }

    /** A directory like /tmp: everyone may create files, only owners may remove theirs. */
    private function sharedDir(): string
    {
        return $this->scratchDir(01777);
    }

    /** lock_once.php as $user, with copies of it and of the implementation $user can read. */
    private function lockOnceAs(string $user, array $args): array
    {
        [$script] = $this->webUserCopies(self::fixture('lock_once.php'));
        return [...self::asUser($user), PHP_BINARY, ...$this->webUserPhpArgs(), $script, json_encode($args)];
    }

    /** Plants what another local user (nobody) would leave at $path; returns a process to stop, if any. */
    private function plant(string $how, string $path): ?array
    {
        $nobody = posix_getpwnam('nobody');
        if ($how === 'a nobody holder killed mid-lock') {
            $holder = self::startPhp($this->lockOnceAs('nobody', ['key' => 'member@example.org', 'options' => ['dir' => dirname($path)], 'hold' => 60]));
            $this->assertSame("HELD\n", fgets($holder['pipes'][1]));
            posix_kill(proc_get_status($holder['proc'])['pid'], SIGKILL);
            self::finish($holder);
            return null;
        }
        file_put_contents($path, self::PLANTED);
        chown($path, $nobody['uid']);
        chmod($path, ['0600 file' => 0600, '0644 file held with flock' => 0644, '0666 file' => 0666][$how]);
        if ($how !== '0644 file held with flock') {
            return null;
        }
        $holder = self::startPhp([...self::asUser('nobody'), PHP_BINARY, '-n', '-r', '$h = fopen($argv[1], "r"); flock($h, LOCK_EX); echo "HELD\n"; sleep(60);', $path]);
        $this->assertSame("HELD\n", fgets($holder['pipes'][1]));
        return $holder;
    }

    /** @return array<string, array{string}> */
    public static function otherUsersFiles(): array
    {
        return array_map(fn ($how) => [$how], array_combine(
            $cases = ['0600 file', '0644 file held with flock', '0666 file', 'a nobody holder killed mid-lock'],
            $cases
        ));
    }

    /**
     * Another user's file at the lock path: refused at once, saying whose and what to do,
     * never followed, truncated or waited on.
     *
     * @dataProvider otherUsersFiles
     */
    #[DataProvider('otherUsersFiles')]
    public function testAnotherUsersLockFileIsRefusedAtOnce(string $how): void
    {
        $dir = $this->sharedDir();
        $path = self::pluginLockPath($dir, 'member@example.org');
        $holder = $this->plant($how, $path);
        try {
            $result = self::runPhp($this->lockOnceAs(self::WEB_USER, ['key' => 'member@example.org', 'options' => ['dir' => $dir, 'timeout' => 5]]));
        } finally {
            if ($holder !== null) {
                proc_terminate($holder['proc'], SIGKILL);
                self::finish($holder);
            }
        }
        $this->assertSame('', $result['err']);
        $answer = json_decode($result['out'], true) ?? self::fail($result['out']);
        $this->assertSame(
            'JoinBlock\LockException: refusing lock file ' . $path . ': it belongs to uid 65534 (nobody), not to PHP\'s user (uid 33 (www-data));'
            . ' the lock directory is shared with other users, who can block or break any member\'s lock there: set joinblock.lock_dir'
            . ' to a directory only PHP\'s user can enter (scripts/install makes /run/joinblock)',
            $answer['error'] ?? $result['out']
        );
        // Well under the 5 s timeout; a busy machine stretched the refusal to 0.16 s once.
        $this->assertLessThan(1.0, $answer['seconds'], 'at once, not after the timeout');
        if ($how !== 'a nobody holder killed mid-lock') {
            $this->assertSame(self::PLANTED, file_get_contents($path), 'the planted file is untouched');
        }
    }

    /** Releasing in a sticky directory frees the file this process made, and keeps it, without a word. */
    public function testReleaseInAStickyDirectoryFreesItsOwnFile(): void
    {
        $dir = $this->sharedDir();
        $answer = json_decode(self::runPhpOk($this->lockOnceAs(self::WEB_USER, ['key' => 'sticky@example.org', 'options' => ['dir' => $dir]])), true);
        $this->assertSame(self::pluginLockPath($dir, 'sticky@example.org'), $answer['path'] ?? $answer['error']);
        $this->assertSame(posix_getpwnam(self::WEB_USER)['uid'], fileowner($answer['path']), "the web user's file");
        $this->assertNoLockHeld($dir, 'released');
    }

    /**
     * Root (a cron job, an admin's CLI) locking in www-data's directory hands its lock file
     * to www-data: the site's PHP waits for root's lock, then takes it, instead of being refused.
     */
    public function testRootLockingInTheWebUsersDirectoryStaysOpenToIt(): void
    {
        self::extensionOnly('PHP code has no fchown; the polyfill documents the refusal instead');
        $dir = $this->webUserScratchDir();
        $lock = joinblock_acquire_lock('shared@example.org', ['dir' => $dir]);
        $this->assertSame(self::WEB_USER, posix_getpwuid(fileowner($lock->path()))['name']);
        $waiter = self::startPhp($this->lockOnceAs(self::WEB_USER, ['key' => 'shared@example.org', 'options' => ['dir' => $dir, 'timeout' => 10]]));
        usleep(300000);
        // When it got the lock, not how long it waited: a busy machine may start it late.
        $releasing = microtime(true);
        $lock->release();
        $result = self::finish($waiter);
        $answer = json_decode($result['out'], true) ?? self::fail($result['out'] . $result['err']);
        $this->assertSame(self::pluginLockPath($dir, 'shared@example.org'), $answer['path'] ?? $answer['error']);
        $this->assertGreaterThanOrEqual($releasing, $answer['acquired'], 'it waited for root');
    }

    /**
     * Cleaners of temporary directories delete files by age (systemd-tmpfiles: Debian 13's /tmp
     * after 10 days; tmpreaper). A kept lock file's times change only where the lock sets them:
     * one locked now must look young, or a cleaner deletes it while it is held and its member
     * can be locked twice. Run with the real cleaner, going by modification and access times.
     */
    public function testACleanerOfOldTemporaryFilesNeverDeletesAHeldLockFile(): void
    {
        $dir = $this->scratchDir();
        $paths = [];
        foreach (['idle', 'held', 'recent'] as $name) {
            joinblock_acquire_lock("$name@example.org", ['dir' => $dir])->release();
            $paths[$name] = self::pluginLockPath($dir, "$name@example.org");
        }
        [$twoDaysAgo, $halfAnHourAgo] = [time() - 2 * 86400, time() - 1800];
        touch($paths['idle'], $twoDaysAgo, $twoDaysAgo);
        touch($paths['held'], $twoDaysAgo, $twoDaysAgo);
        touch($paths['recent'], $halfAnHourAgo, $halfAnHourAgo);
        joinblock_acquire_lock('recent@example.org', ['dir' => $dir])->release();
        clearstatcache();
        $this->assertSame($halfAnHourAgo, filemtime($paths['recent']), 'a file set young within the hour is left as it is: one futimens per file and hour');

        $holder = self::startPhp(self::phpCommand(self::fixture('lock_once.php'), json_encode(['key' => 'held@example.org', 'options' => ['dir' => $dir], 'hold' => 30])));
        try {
            $this->assertSame("HELD\n", fgets($holder['pipes'][1]));
            $conf = $this->scratchDir() . '/clean.conf';
            file_put_contents($conf, "e $dir - - - ma:1h\n");
            $cleaned = self::runPhp(['systemd-tmpfiles', '--clean', $conf]);
            $this->assertSame(0, $cleaned['exit'], $cleaned['err']);
            clearstatcache();
            $this->assertFileDoesNotExist($paths['idle'], 'the cleaner ran, and deleted the idle file two days old');
            $this->assertFileExists($paths['held'], 'the held file was made young by its lock');
            self::assertThrows(LockTimeoutException::class, '~^timed out after~', fn () => joinblock_acquire_lock('held@example.org', ['dir' => $dir, 'timeout' => 0.2]));
        } finally {
            proc_terminate($holder['proc'], SIGKILL);
            self::finish($holder);
        }
    }

    /** A wait that gives up says who holds the lock: pid, program, since when. */
    public function testATimeoutNamesTheHolder(): void
    {
        $dir = $this->scratchDir();
        $holder = self::startPhp(self::phpCommand(self::fixture('lock_once.php'), json_encode(['key' => 'held@example.org', 'options' => ['dir' => $dir], 'hold' => 5])));
        $this->assertSame("HELD\n", fgets($holder['pipes'][1]));
        $pid = proc_get_status($holder['proc'])['pid'];
        // The kernel's name for the program: at most 15 characters of its file name.
        $program = preg_quote(substr(basename(realpath(PHP_BINARY)), 0, 15), '~');
        try {
            self::assertThrows(
                LockTimeoutException::class,
                '~^timed out after 0\.2\d\d s waiting for lock file ' . preg_quote(self::pluginLockPath($dir, 'held@example.org'), '~') . ", held by pid $pid \\($program\\)$~",
                fn () => joinblock_acquire_lock('held@example.org', ['dir' => $dir, 'timeout' => 0.2])
            );
        } finally {
            proc_terminate($holder['proc'], SIGKILL);
            self::finish($holder);
        }
    }

    /** A php-fpm worker holding the lock is named by its pool, and nothing personal. */
    public function testATimeoutNamesAnFpmHoldersPool(): void
    {
        $locks = $this->webUserScratchDir();
        $fpm = FpmServer::start($this->scratchDir(), 1, $this->webUserPhpArgs());
        try {
            $sent = $fpm->send('lock.php', ['email' => 'pooled@example.org', 'dir' => $locks, 'hold_ms' => 1500]);
            $path = self::pluginLockPath($locks, 'pooled@example.org');
            $deadline = microtime(true) + 10;
            while (!is_file($path) && microtime(true) < $deadline) {
                usleep(10000);
            }
            $e = self::assertThrows(
                LockTimeoutException::class,
                '~^timed out after 0\.3\d\d s waiting for lock file ' . preg_quote($path, '~') . ', held by pid \d+ \(php-fpm: pool test\)$~',
                fn () => joinblock_acquire_lock('pooled@example.org', ['dir' => $locks, 'timeout' => 0.3])
            );
            $this->assertStringNotContainsString('pooled@', $e->getMessage());
            $this->assertSame(200, $fpm->answer($sent, microtime(true) + 10)['status']);
        } finally {
            $fpm->stop();
        }
    }

    public function testPhpRiMarksALockDirectoryOtherUsersCanWrite(): void
    {
        self::extensionOnly('its phpinfo() section');
        $shared = $this->sharedDir();
        $private = $this->webUserScratchDir();
        $info = fn (string $dir) => self::runPhpOk([PHP_BINARY, ...self::phpArgs(), '-d', "joinblock.lock_dir=$dir", '-r', 'phpinfo(INFO_MODULES);']);
        $this->assertStringContainsString("lock directory in effect => $shared (shared with other local users: set joinblock.lock_dir)\n", $info($shared));
        $this->assertStringContainsString("lock directory in effect => $private\n", $info($private));
    }

    public function testABlockingWaitCountsAsAWait(): void
    {
        self::extensionOnly('its phpinfo() counters');
        $dir = $this->scratchDir();
        // A holder that unlocks without unlinking (plain PHP flock), so the waiter wakes on
        // the same file and has no retry to count.
        $holder = self::startPhp([PHP_BINARY, '-n', '-r', '$h = fopen($argv[1], "c"); flock($h, LOCK_EX); echo "HELD\n"; usleep(300000);', self::pluginLockPath($dir, 'block@example.org')]);
        $this->assertSame("HELD\n", fgets($holder['pipes'][1]));
        $before = $this->infoCounters();
        joinblock_acquire_lock('block@example.org', ['dir' => $dir])->release();
        self::finish($holder);
        $after = $this->infoCounters();
        $this->assertSame(['acquired' => $before['acquired'] + 1, 'waited' => $before['waited'] + 1, 'timed out' => $before['timed out']], $after);
    }
    /**
     * Lock files are 0600 whoever made them, also when a holder removes the path between
     * another process's making of it and its open (the polyfill links a private file into
     * place, then opens without O_CREAT; with O_CREAT, that open made a new file with the
     * process's umask: 0644 under php-fpm's usual 022, which any local user may open and flock).
     */
    public function testLockFilesStayPrivateUnderContention(): void
    {
        $dir = $this->webUserScratchDir();
        $code = '$bad = []; $n = 0; $end = microtime(true) + 3;'
            . ' while (microtime(true) < $end) { $l = joinblock_acquire_lock("race@example.org", ["dir" => $argv[1], "timeout" => 30]);'
            . ' clearstatcache(); $mode = fileperms($l->path()) & 0777; if ($mode !== 0600) { $bad[] = decoct($mode); } $n++; $l->release(); }'
            . ' echo json_encode([$n, $bad]);';
        // A script file, not -r: the polyfill run loads the polyfill as an auto_prepend_file.
        $script = $this->scratchDir(0755) . '/race.php';
        file_put_contents($script, "<?php $code");
        chmod($script, 0644);
        $workers = [];
        foreach (range(1, 4) as $_) {
            $workers[] = self::startPhp(['env', '-u', 'PHP_INI_SCAN_DIR', ...self::asWebUser(), 'sh', '-c', 'umask 022; exec "$@"', 'sh', PHP_BINARY, ...$this->webUserPhpArgs(), $script, $dir]);
        }
        $total = 0;
        foreach ($workers as $worker) {
            $result = self::finish($worker, 60);
            $this->assertSame(0, $result['exit'], $result['err'] . $result['out']);
            [$n, $bad] = json_decode($result['out'], true, 4, JSON_THROW_ON_ERROR);
            $this->assertSame([], $bad, 'lock files seen with these modes while held');
            $total += $n;
        }
        fwrite(STDERR, sprintf("\n[lock file modes, %s] %d acquisitions by 4 processes under umask 022: all 0600\n", self::implementation(), $total));
        $this->assertGreaterThan(400, $total, 'the processes took turns often');
    }
}
