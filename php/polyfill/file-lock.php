<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// The file backend: lock files, their protocol, who holds them, and this process's claims.

declare(strict_types=1);

namespace JoinBlock\Polyfill;

use JoinBlock\LockException;
use JoinBlock\LockTimeoutException;

/** A held lock of either backend. */
interface Held
{
    /** The lock file, or the `GET_LOCK` name. */
    public function path(): string;

    public function isHeld(): bool;

    /** Releasing again, or from a forked child, does nothing. @throws LockException */
    public function release(): void;
}

/**
 * The locks this process claimed, from the first step of taking one until its release. A
 * second claim on one lock is refused: with flock the process would wait for itself
 * forever, and GET_LOCK would let it in twice (it is re-entrant per connection).
 */
final class Claims
{
    private const FATAL = E_ERROR | E_PARSE | E_CORE_ERROR | E_COMPILE_ERROR | E_USER_ERROR | E_RECOVERABLE_ERROR;

    /** @var array<string, array{int, ?Held}> lock id => [owner pid, the lock once taken] */
    private static array $claims = [];

    private static bool $hooked = false;

    /**
     * Memory set aside with the shutdown hook and freed by releaseAfterFatal(): after "Allowed
     * memory size exhausted" the limit still holds, and the releases need a little room of their
     * own. Otherwise the first release that asks for memory dies too (a second fatal) and leaves
     * the rest of the MySQL locks to the disconnect, which the server acts on a moment after
     * the response has gone: seen on PHP 8.5, where the next request found some still held.
     */
    private static ?string $reserve = null;

    /** The process the claims are of. */
    private static ?int $pid = null;

    /**
     * Claims $id for this process; false when it claimed it already (refusal() says so).
     *
     * @param ?Held $held the lock, if made already
     * @param ?int $pid getmypid(), if the caller has it
     */
    public static function take(string $id, ?Held $held = null, ?int $pid = null): bool
    {
        $pid ??= getmypid();
        if ($pid !== self::$pid) {
            // Claims inherited across fork belong to the parent.
            self::$claims = array_filter(self::$claims, static fn (array $claim): bool => $claim[0] === $pid);
            self::$pid = $pid;
        }
        if (isset(self::$claims[$id])) {
            return false;
        }
        self::$claims[$id] = [$pid, $held];
        if (!self::$hooked) {
            register_shutdown_function([self::class, 'releaseAfterFatal']);
            self::$reserve = str_repeat("\0", 65536);
            self::$hooked = true;
        }
        return true;
    }

    /** Whether this process claims nothing (claims inherited across fork count until the next take()). */
    public static function none(): bool
    {
        return self::$claims === [];
    }

    /** Why a second claim of $lock fails. */
    public static function refusal(string $lock): LockException
    {
        return new LockException("$lock is already held by this thread; release it before acquiring it again");
    }

    public static function taken(string $id, Held $lock): void
    {
        self::$claims[$id][1] = $lock;
    }

    /** Drops the claim on $id; only if it is $held's when given (not another's, which refused $held). */
    public static function drop(string $id, ?Held $held = null): void
    {
        if ($held === null || (self::$claims[$id][1] ?? null) === $held) {
            unset(self::$claims[$id]);
        }
    }

    /** After a fatal error PHP calls no destructor (it only closes files): release here. */
    public static function releaseAfterFatal(): void
    {
        self::$reserve = null;
        if (((error_get_last()['type'] ?? 0) & self::FATAL) === 0) {
            return;
        }
        Sweep::stop();
        // Taken out first: a release drops its claim, and dropping one from the array being
        // iterated would copy it whole (80 KiB for some 2,000 locks: a second fatal).
        [$claims, self::$claims] = [self::$claims, []];
        foreach ($claims as [$pid, $lock]) {
            try {
                if ($pid === getmypid()) {
                    $lock?->release();
                }
            } catch (LockException) {
                // The request is over; the next holder copes with what is left.
            }
        }
    }
}

/**
 * Who holds a lock file, for a waiter that gives up: the pid in /proc/locks (the holder
 * writes nothing), and what it is (php-fpm's worker title, else its program's name: never
 * its arguments). As src/lock/holder.rs.
 */
final class Holder
{
    /** "pid 4242 (php-fpm: pool www)"; null when it cannot be seen. @param resource $handle */
    public static function of($handle): ?string
    {
        $stat = fstat($handle);
        $locks = @file_get_contents('/proc/locks');
        if ($stat === false || $locks === false) {
            return null;
        }
        // Linux's dev_t: the major number in bits 8-19 and 32-43, the minor in 0-7 and 20-31.
        $dev = $stat['dev'];
        $device = [(($dev >> 8) & 0xfff) | (($dev >> 32) & ~0xfff), ($dev & 0xff) | (($dev >> 12) & ~0xff)];
        // btrfs gives each subvolume's files a device of their own, while /proc/locks names
        // the file system's, which is the mount's.
        $pid = self::listed($locks, $device, $stat['ino'])
            ?? self::listed($locks, self::mountDevice(realpath(stream_get_meta_data($handle)['uri']) ?: ''), $stat['ino']);
        return $pid === null ? null : sprintf('pid %d (%s)', $pid, self::name($pid));
    }

    /** The pid holding a FLOCK on [major, minor] and $ino in a /proc/locks listing. */
    private static function listed(string $locks, ?array $device, int $ino): ?int
    {
        if ($device === null) {
            return null;
        }
        $file = sprintf('%02x:%02x:%d', $device[0], $device[1], $ino);
        foreach (explode("\n", $locks) as $line) {
            $fields = preg_split('/\s+/', trim($line));
            if (($fields[1] ?? '') === 'FLOCK' && ($fields[5] ?? '') === $file) {
                return (int) $fields[4];
            }
        }
        return null;
    }

    /** [major, minor] of the deepest mount containing $path, from /proc/self/mountinfo. */
    private static function mountDevice(string $path): ?array
    {
        [$device, $depth] = [null, -1];
        foreach (explode("\n", (string) @file_get_contents('/proc/self/mountinfo')) as $line) {
            $fields = explode(' ', $line);
            if (count($fields) < 5 || !str_contains($fields[2], ':')) {
                continue;
            }
            // Mount points write a space, tab, newline and backslash as \NNN (octal).
            $point = preg_replace_callback('/\\\\([0-7]{3})/', static fn (array $m): string => chr(octdec($m[1])), $fields[4]);
            $inside = $point === '/' || $path === $point || str_starts_with($path, rtrim($point, '/') . '/');
            if ($inside && strlen($point) >= $depth) {
                [$device, $depth] = [array_map('intval', explode(':', $fields[2], 2)), strlen($point)];
            }
        }
        return $device;
    }

    private static function name(int $pid): string
    {
        $title = explode("\0", (string) @file_get_contents("/proc/$pid/cmdline"))[0];
        if (str_starts_with($title, 'php-fpm: pool ')) {
            return trim($title);
        }
        $comm = @file_get_contents("/proc/$pid/comm");
        return $comm === false ? 'unknown program' : trim($comm);
    }
}

/** The users that lock files belong to. */
final class Users
{
    /** The effective uid; without posix, the owner of a file this process makes. */
    public static function me(): int
    {
        static $uid = null;
        if ($uid === null && \function_exists('posix_geteuid')) {
            $uid = posix_geteuid();
        }
        if ($uid === null) {
            // A file of our own says who we are; where none may be made (open_basedir), the
            // script's owner is the best guess left.
            $probe = @tmpfile();
            $uid = $probe === false ? getmyuid() : fstat($probe)['uid'];
            if ($probe !== false) {
                fclose($probe);
            }
        }
        return $uid;
    }

    /** `uid 65534 (nobody)`, or `uid 1234` when the system has no name for it. */
    public static function describe(int $uid): string
    {
        $entry = \function_exists('posix_getpwuid') ? posix_getpwuid($uid) : false;
        return $entry === false ? "uid $uid" : "uid $uid ({$entry['name']})";
    }
}

/**
 * The file backend: flock on the plugin's own lock files, with the extension's protocol
 * (src/lock/file.rs), so that both exclude each other:
 * 1. open without truncating, mode 0600, close-on-exec, and never a FIFO's blocking open;
 *    refuse a link before opening (fopen follows them), and anything but a regular file of
 *    PHP's user or the directory's owner once locked (another user's also before waiting);
 * 2. flock(LOCK_EX|LOCK_NB) first; then flock(LOCK_EX), or LOCK_NB polled up to the deadline,
 *    asking for a turn once it has waited a while (Turn: waiters blocked in the kernel would
 *    win every race);
 * 3. check that the path still names the locked file (lockInTurn() says how); if not, a
 *    sweep removed it while we waited on it: close and start again;
 * 4. release unlocks and closes, and leaves the file for the next acquisition; idle files
 *    go in sweeps (Sweep), each removed by a holder of its lock.
 * After fork only the process that took the lock unlocks it; a child only closes its copy of
 * the descriptor.
 */
final class FileLock implements Held
{
    private const FIRST_BACKOFF = 0.001;
    private const MAX_BACKOFF = 0.05;
    private const KEEP_YOUNG_AFTER = 3600;

    /** The locked file's "file <dev>:<ino>" and the process that took it, once lockInTurn() claimed it. */
    private string $id = '';
    private int $pid = 0;

    /** Users::me(), which never changes. */
    private static ?int $me = null;

    /** @param resource|null $handle null once closed */
    private function __construct(private string $file, private string $dir, public $handle, private int $keep) {}

    /** $path is in $dir; $keep: how many idle lock files the directory keeps (joinblock.lock_files_kept). */
    public static function acquire(string $path, string $dir, ?float $timeout, int $keep): self
    {
        Os::kept();
        try {
            // Only a timed wait needs the clock, and only a wait that polls a waiter.
            $started = $timeout === null ? 0.0 : Clock::now();
            $deadline = $timeout === null ? null : $started + $timeout;
            $waiter = null;
            while (true) {
                $lock = self::open($path, $dir, $keep);
                // Whatever ends this attempt, a timeout or an exception from anywhere (a signal
                // handler's, say), takes back what it took: the token, the claim, the descriptor.
                try {
                    $waiter?->newFile();
                    if ($lock->lockInTurn($waiter, $started, $deadline)) {
                        return $lock;
                    }
                } catch (\Throwable $e) {
                    $waiter?->withdraw($lock->handle);
                    $lock->close();
                    throw $e;
                }
                // A sweep removed the file we locked: start again.
                $lock->close();
            }
        } finally {
            Os::unkept();
        }
    }

    /**
     * Takes this inode's lock, and keeps it unless it is another waiter's turn; false when
     * the path no longer names the file (a sweep removed it). $waiter is made once a timed
     * wait first polls. Uncontended, the lock is one try, and the file's checks and claim
     * follow under it; a wait refuses a file of another user first, and claims first where
     * this process holds locks.
     *
     * @throws LockTimeoutException past $deadline
     */
    private function lockInTurn(?Waiter &$waiter, float $started, ?float $deadline): bool
    {
        while (true) {
            $locked = flock($this->handle, LOCK_EX | LOCK_NB, $busy);
            if (!$locked && !$busy) {
                throw $this->flockFailed();
            }
            if (!$locked) {
                if ($this->id === '' && Claims::none()) {
                    // With no lock held here, a wait cannot be for this process itself: the
                    // checks and the claim wait for the lock's fstat(). Only a file of another
                    // user (planted, maybe held forever) is refused now rather than waited for.
                    clearstatcache();
                    $owner = fileowner($this->file);
                    if ($owner !== false && !self::ours($this->dir, $owner)) {
                        throw self::foreignOwner($this->file, $owner);
                    }
                } elseif ($this->id === '') {
                    $this->claim(fstat($this->handle));
                }
                if ($deadline === null) {
                    $this->block();
                } elseif (!$this->poll($waiter ??= new Waiter(new Backoff(self::FIRST_BACKOFF, self::MAX_BACKOFF)), $started, $deadline)) {
                    $holder = Holder::of($this->handle);
                    throw new LockTimeoutException(sprintf('timed out after %.3f s waiting for lock file %s', Clock::now() - $started, $this->file)
                        . ($holder === null ? '' : ", held by $holder"));
                }
            }
            $stat = fstat($this->handle);
            if ($this->id === '') {
                // Locked: no other claim of this process can name it.
                $this->claim($stat);
            }
            // Does the path still name the file? As src/lock/file.rs's still_named: a count
            // of 0 is a file removed (only a holder of its lock removes a name: a sweep);
            // otherwise the path is looked up, on every acquisition. A count of 1 says the file
            // has one name, not which: a lock directory renamed while we waited leaves our file
            // its name in the old directory while another party locks a new file at the path
            // (LockAmongOtherCodeTest). The lookup also catches a link planted in a free name
            // between open()'s look and its fopen(), before anything is written to the file.
            $stale = time() - $stat['mtime'] > self::KEEP_YOUNG_AFTER;
            $named = $stat['nlink'] === 0 ? false : self::lstat($this->file);
            if ($named === false || "file {$named['dev']}:{$named['ino']}" !== $this->id) {
                return false;
            }
            if ($stat['size'] > 0) {
                $found = Turn::inspect($this->handle, $stat['size'], $waiter?->token);
                if ($found === Turn::OTHER && $waiter?->token === null) {
                    $remaining = $deadline === null ? Turn::YIELD : $deadline - Clock::now();
                    if ($remaining > 0) {
                        flock($this->handle, LOCK_UN);
                        Clock::sleep(min(Turn::YIELD, $remaining));
                        continue;
                    }
                } elseif ($found !== Turn::OTHER) {
                    Turn::clear($this->handle);
                }
            }
            // Keeps a kept file in use from looking abandoned to cleaners of temporary
            // directories, which delete files by age (src/lock/file.rs's keep_young): once its
            // modification time is an hour old, the lock sets it to now. ftruncate() to its own
            // size sets it on Linux through the locked handle; touch() by path would make a new
            // file where a cleaner had just deleted this one.
            if ($stale) {
                ftruncate($this->handle, $stat['size']);
            }
            return true;
        }
    }

    /**
     * Refuses the file unless it is a regular file of PHP's user or the lock directory's owner,
     * and claims it for this process: a second lock of it here would wait for itself forever.
     *
     * @param array<string, int> $stat its fstat()
     */
    private function claim(array $stat): void
    {
        if (($stat['mode'] & 0170000) !== 0100000) {
            throw self::notRegular($this->file, self::kind($stat['mode']));
        }
        if (!self::ours($this->dir, $stat['uid'])) {
            throw self::foreignOwner($this->file, $stat['uid']);
        }
        [$this->pid, $this->id] = [getmypid(), "file {$stat['dev']}:{$stat['ino']}"];
        Claims::take($this->id, $this, $this->pid) || throw Claims::refusal("lock file {$this->file}");
    }

    public function path(): string
    {
        return $this->file;
    }

    public function isHeld(): bool
    {
        return $this->handle !== null && $this->pid === getmypid();
    }

    public function release(): void
    {
        if ($this->handle === null) {
            return;
        }
        if ($this->pid !== getmypid()) {
            // A forked child: closing its copy of the descriptor leaves the parent's lock alone.
            $this->close();
            return;
        }
        // Unlocked explicitly: a child forked since shares the descriptor, and closing ours
        // alone would leave the lock held by its copy.
        $unlocked = flock($this->handle, LOCK_UN);
        $this->close();
        Sweep::afterRelease($this->dir, $this->keep);
        if (!$unlocked) {
            throw new LockException("cannot unlock lock file {$this->file}: flock() failed");
        }
    }

    /** What removeIfIdle() did: removed it; found it removed already (by another sweep); left it (held, a waiter's fresh token in it, a second name, not ours). */
    public const REMOVED = 'removed';
    public const GONE = 'gone';
    public const STAYS = 'stays';

    /** Removes the lock file at $path if nobody holds or waits for it, under its own lock: the sweep's one step. */
    public static function removeIfIdle(string $path): string
    {
        // lstat before the open: fopen() would follow a symbolic link.
        $before = self::lstat($path);
        if ($before === false) {
            return self::GONE;
        }
        if (self::kind($before['mode']) !== null || !self::ours(\dirname($path), $before['uid'])) {
            return self::STAYS;
        }
        $handle = @fopen($path, 'r+en');
        if ($handle === false) {
            return self::lstat($path) === false ? self::GONE : self::STAYS;
        }
        $removal = self::STAYS;
        if (flock($handle, LOCK_EX | LOCK_NB)) {
            // Under the lock a count of 0 is a file removed since; a second name is left alone,
            // and so is a file the path no longer names (its directory renamed since the listing:
            // the name would be another file's, not held by us), looked up again as FileLock does.
            $stat = fstat($handle);
            $named = $stat['nlink'] === 1 ? self::lstat($path) : false;
            if ($stat['nlink'] === 0) {
                $removal = self::GONE;
            } elseif ($named !== false && $stat['dev'] === $named['dev'] && $stat['ino'] === $named['ino']
                && Turn::inspect($handle, $stat['size'], null) !== Turn::OTHER && @unlink($path)) {
                $removal = self::REMOVED;
            }
            flock($handle, LOCK_UN);
        }
        fclose($handle);
        return $removal;
    }

    /** Polls for the lock until $deadline; false when it passed. */
    private function poll(Waiter $waiter, float $started, float $deadline): bool
    {
        while (($now = Clock::now()) < $deadline) {
            // PHP has no timed flock: timed waits poll (docs/integration.md).
            $waiter->pause($this->handle, $now - $started, $deadline - $now);
            if (flock($this->handle, LOCK_EX | LOCK_NB, $busy)) {
                return true;
            }
            if (!$busy) {
                throw $this->flockFailed();
            }
        }
        return false;
    }

    /** Whether a file of $uid may be in the lock directory $dir: PHP's user's, or the directory owner's. */
    private static function ours(string $dir, int $uid): bool
    {
        return $uid === (self::$me ??= Users::me()) || $uid === @fileowner($dir);
    }

    /** The lock on $path in $dir, not taken yet. */
    private static function open(string $path, string $dir, int $keep): self
    {
        if (($fs = self::$fileSystems[$dir] ??= self::networkFileSystem($dir)) !== '') {
            throw new LockException("refusing lock file $path: the lock directory is on $fs, where flock is emulated with"
                . ' locks that closing any descriptor of the file drops; use a local directory, or the mysql backend'
                . ' to share locks between hosts');
        }
        // A holder may remove the path between our link and our open: look again (a few
        // times: each round is one such release, and each release lets a waiter in).
        for ($round = 1; ; $round++) {
            // Looked at before the open, as fopen() follows a symbolic link: filetype() is
            // lstat()'s answer without the array lstat() builds, which costs more than the open.
            clearstatcache();
            $type = filetype($path);
            if ($type !== false && $type !== 'file') {
                throw self::notRegular($path, self::TYPES[$type] ?? 'special file');
            }
            // 'e' is O_CLOEXEC, 'n' O_NONBLOCK (a FIFO must not block the open). Never O_CREAT
            // ('c', which never truncates) where private files can be linked into place
            // (Os::createPrivateAt()): a path removed by a releasing holder since we looked is
            // looked for again, not made anew with the process's umask.
            $created = $type === false;
            $mode = $created && !Os::createPrivateAt($path) ? 'c+en' : 'r+en';
            $handle = fopen($path, $mode);
            $reason = $handle === false ? Os::reason() : null;
            if ($handle !== false || $mode !== 'r+en' || Os::errno($reason) !== Os::ENOENT || $round === 100) {
                break;
            }
        }
        if ($handle === false) {
            $planted = self::lstat($path);
            throw match (true) {
                Os::errno($reason) === Os::ELOOP => self::notRegular($path, 'symbolic link'),
                Os::errno($reason) === Os::EISDIR => self::notRegular($path, 'directory'),
                \in_array(Os::errno($reason), [Os::EACCES, Os::EPERM], true) && $planted !== false && $planted['uid'] !== Users::me()
                    => self::foreignOwner($path, $planted['uid']),
                default => self::ioError('open', $path, $reason),
            };
        }
        if ($created) {
            Sweep::created($dir);
        }
        // Checked and claimed by lockInTurn().
        return new self($path, $dir, $handle, $keep);
    }

    /** @var array<string, string> lock directory => networkFileSystem()'s answer: looked up once a process */
    private static array $fileSystems = [];

    /**
     * The network file system $dir lives on, '' if none (from /proc/self/mounts): there
     * flock is emulated with POSIX locks, which closing any descriptor of the file drops.
     */
    private static function networkFileSystem(string $dir): string
    {
        $real = realpath($dir) ?: $dir;
        [$best, $type] = ['', null];
        foreach (@file('/proc/self/mounts', FILE_IGNORE_NEW_LINES) ?: [] as $line) {
            [, $mountPoint, $fsType] = array_pad(explode(' ', $line), 3, '');
            $mountPoint = str_replace('\\040', ' ', $mountPoint);
            $inside = $real === $mountPoint || str_starts_with($real, rtrim($mountPoint, '/') . '/');
            if ($inside && \strlen($mountPoint) >= \strlen($best)) {
                [$best, $type] = [$mountPoint, $fsType];
            }
        }
        return match (true) {
            $type === null => '',
            str_starts_with($type, 'nfs') => 'NFS',
            $type === 'cifs' => 'CIFS',
            $type === 'smb3' || $type === 'smbfs' => 'SMB',
            $type === '9p' => '9P',
            default => '',
        };
    }

    private static function foreignOwner(string $path, int $owner): LockException
    {
        return new LockException(sprintf(
            "refusing lock file %s: it belongs to %s, not to PHP's user (%s); the lock directory is shared with other"
            . " users, who can block or break any member's lock there: set joinblock.lock_dir to a directory only"
            . " PHP's user can enter (scripts/install makes /run/joinblock)",
            $path, Users::describe($owner), Users::describe(Users::me())
        ));
    }

    /**
     * Waits in flock(LOCK_EX) until it has the lock. PHP's flock() hides errno: a blocking one
     * fails when a signal whose handler does not restart calls interrupts it (EINTR), or on a
     * real error. A try without blocking tells them apart: it takes the lock, finds it busy
     * (we were interrupted: wait again, as the extension does), or fails as well.
     */
    private function block(): void
    {
        while (!flock($this->handle, LOCK_EX)) {
            if (flock($this->handle, LOCK_EX | LOCK_NB, $busy)) {
                return;
            }
            if (!$busy) {
                throw $this->flockFailed();
            }
        }
    }

    private function flockFailed(): LockException
    {
        return new LockException("cannot lock lock file {$this->file}: flock() failed");
    }

    private function close(): void
    {
        Claims::drop($this->id, $this);
        fclose($this->handle);
        $this->handle = null;
    }

    /** lstat() past PHP's stat cache, which may still hold what an earlier look saw. */
    private static function lstat(string $path): array|false
    {
        clearstatcache();
        return @lstat($path);
    }

    /** What filetype() says, as kind() words it. */
    private const TYPES = ['link' => 'symbolic link', 'dir' => 'directory', 'fifo' => 'FIFO', 'socket' => 'socket', 'char' => 'device', 'block' => 'device'];

    /** What a file that is not a regular file is; null for a regular file. */
    private static function kind(int $mode): ?string
    {
        return match ($mode & 0170000) {
            0100000 => null,
            0120000 => 'symbolic link',
            0040000 => 'directory',
            0010000 => 'FIFO',
            0140000 => 'socket',
            0020000, 0060000 => 'device',
            default => 'special file',
        };
    }

    private static function notRegular(string $path, string $kind): LockException
    {
        return new LockException("refusing lock path $path: it is a $kind, not a regular file");
    }

    private static function ioError(string $action, string $path, ?string $reason): LockException
    {
        $hint = match (Os::errno($reason)) {
            Os::ENOENT => ' (does the lock directory exist?)',
            Os::EACCES, Os::EPERM => " (is the lock directory writable by PHP's user?)",
            default => '',
        };
        return new LockException("cannot $action lock file $path: " . Os::describe($reason) . $hint);
    }
}
