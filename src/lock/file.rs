//! The `file` backend: flock on the join-block plugin's own lock files, `<dir>/join-lock-<sha1>`.
//!
//! # Invariant
//!
//! A party is inside the critical section for a key only while it holds `flock(LOCK_EX)` on
//! the inode that the lock path names at that moment, and has checked that it does.
//!
//! # Why the steps keep it
//!
//! 1. `open(path, O_RDWR|O_NOFOLLOW|O_CLOEXEC|O_NOCTTY|O_NONBLOCK)`, and where there is no
//!    file yet, the same with `O_CREAT|O_EXCL`, mode 0600: never follows a planted symlink,
//!    never truncates, never leaks the descriptor into a child started with `exec`. Anything
//!    but a regular file is refused. (Opening first without `O_CREAT` also spares the common
//!    case the directory's exclusive lock, which `O_CREAT` takes even for a file that exists.)
//! 2. `flock(LOCK_EX)`: blocking; or, with a deadline, blocking with a timer signal that cuts
//!    the wait off ([`super::alarm`]); or, where no timer can be had, `LOCK_NB` polled.
//! 3. The path must still name the inode we locked. A name is only ever removed by a holder of
//!    its lock (the sweep, [`super::sweep`]), so if the name still points at our inode once we
//!    hold it, no other party can hold it. If it does not (a sweep removed it while we waited
//!    on it, and maybe a third party made a new one), we hold a lock on an orphan: close it and
//!    start again. The path is looked up (`lstat`) and must name the inode we locked
//!    ([`still_named`]): the file's link count alone would not do, as a directory renamed
//!    while we waited (`mv /run/joinblock /run/joinblock.old`, then a new one) leaves our file
//!    its one name, in the old directory, while a third party locks a new file at the path.
//! 4. Release unlocks and closes the descriptor, and leaves the file for the next
//!    acquisition.
//!
//! Unlinking after unlocking, or unlinking without the check of step 3, both let two parties
//! in at once (measured: 23% of 3-request bursts with the plugin's PHP lock).
//!
//! Waiters in the kernel take the lock the moment it is unlocked; a poller would lose every
//! race to them, so it may ask for a turn, which the others give it ([`super::turn`]).
//!
//! Locks are per open file description. A second acquisition of a key by the same thread
//! would wait for itself forever, so it is refused. After `fork`, a child shares the parent's
//! description: only the process that acquired a lock may unlock it, and the child's copy of
//! every lock file descriptor is pointed at `/dev/null` before the child runs (see
//! [`super::fork`]), so a parent that dies frees its locks at once even while a child lives on.
//! A descriptor is listed for that from its open until its close, and unlocked before it is
//! unlisted ([`Opened`]): another thread of a ZTS PHP may fork at any moment between.

use std::{
    fs::{File, Metadata, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime},
};

use fs2::FileExt;
use parking_lot::Mutex;

use super::{
    alarm::Alarm,
    fork, holder, lock_name, record_acquired, record_timeout, sweep,
    turn::{self, Found, Token},
    Claim, LockError, LockId, Wait,
};
use crate::backoff::Backoff;

/// How often a timed wait's timer fires again after the deadline, should the first signal
/// have come before the wait began (see `alarm.rs`).
const RECHECK: Duration = Duration::from_millis(20);

/// Backoff between polled tries, where no timer can cut a blocking wait off.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// How messages name a file lock.
fn describe(path: &Path) -> String {
    format!("lock file {}", path.display())
}

/// Whether users other than the directory's owner (and root) may create files in `dir`: then
/// any of them can block a member's lock or plant a file (see `open_lock_file`).
pub fn shared_with_others(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|meta| meta.mode() & 0o022 != 0)
}

/// The lock file the plugin uses for `key` in `dir`.
pub fn lock_path(dir: &Path, key: &[u8]) -> Result<PathBuf, LockError> {
    Ok(dir.join(lock_name(key)?))
}

/// An acquired lock. Dropping it releases it.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    /// `joinblock.lock_files_kept`, for the sweep after the release.
    keep: usize,
    /// The locked descriptor and its claim; `None` once released.
    held: Option<(Opened, Claim)>,
}

/// A lock file's descriptor, listed for forked children ([`fork`]) from its open to its close.
///
/// Listed at once, not once locked: a child forked by another thread between the `flock` and
/// the listing would keep a copy of the locked descriptor, and the lock, for its life. For the
/// same reason the drop unlocks before it unlists: the unlock is the open file description's,
/// so it frees any copy a fork made in between (tested by forking every half millisecond).
#[derive(Debug)]
struct Opened {
    file: File,
    listed: &'static fork::Listed,
}

impl Opened {
    fn new(file: File) -> Self {
        let listed = fork::list(file.as_raw_fd());
        Self { file, listed }
    }
}

impl std::ops::Deref for Opened {
    type Target = File;

    fn deref(&self) -> &File {
        &self.file
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // Unlocking a descriptor that holds no lock does nothing; in a forked child it is
        // /dev/null's.
        let _ = FileExt::unlock(&self.file);
        self.listed.unlist(self.file.as_raw_fd());
    }
}

/// A waiter's state while it polls: its backoff, and its token once it asked for a turn.
struct Poller {
    backoff: Backoff,
    token: Option<Token>,
    /// When the token was last written to the file being waited on.
    marked: Option<Instant>,
}

impl Poller {
    /// Sleeps until the next look, asking for a turn once it has waited long enough.
    fn pause(&mut self, file: &File, waited: Duration, remaining: Duration) {
        if waited >= turn::MARK_AFTER && self.marked.is_none_or(|at| at.elapsed() >= turn::MARK_REFRESH) {
            turn::write(file, self.token.get_or_insert_with(|| Token::new(fork::pid())));
            self.marked = Some(Instant::now());
        }
        let pause = if self.token.is_some() { turn::MARKED_POLL } else { self.backoff.next(Some(remaining)) };
        thread::sleep(pause.min(remaining));
    }
}

impl FileLock {
    /// Takes the lock on `path`, following the protocol in this module's documentation.
    /// `keep` is how many idle lock files its directory keeps ([`sweep`]).
    pub fn acquire(path: &Path, wait: Wait, keep: usize) -> Result<FileLock, LockError> {
        let started = Instant::now();
        let deadline = match wait {
            Wait::Forever => None,
            // A limit past the end of time is no limit.
            Wait::AtMost(limit) => started.checked_add(limit),
        };
        let (pid, thread) = (fork::pid(), thread::current().id());
        let mut poller: Option<Poller> = None;
        let mut had_to_wait = false;
        loop {
            // Until the checks pass, leaving this loop body closes the descriptor (dropping
            // any lock on it) and never touches the path.
            let (file, created) = open_lock_file(path)?;
            // The first try comes before the checks, which read the file's fstat: taken after a
            // lock that was free, that one fstat also serves step 3, which then needs no lookup
            // of the path. Until the checks pass, the lock is only held, never used.
            let first_try = try_lock(&file, path);
            let meta = stat(&file, path)?;
            let id = check_opened(&file, path, &meta)?;
            let mut locked = first_try?;
            let claim = Claim::new(id.clone(), thread, pid).ok_or_else(|| LockError::AlreadyHeld { lock: describe(path) })?;
            if created {
                if let Some(dir) = path.parent() {
                    sweep::created(dir);
                }
            }
            if let Some(poller) = &mut poller {
                // A new file: its token, if any, must be written to it afresh.
                poller.marked = None;
            }
            let mut fresh = locked.then_some(meta);
            // Takes this inode's lock, and keeps it unless it is another waiter's turn.
            let ours = loop {
                if !locked {
                    had_to_wait = true;
                    if !wait_for(&file, path, started, deadline, &mut poller)? {
                        if let Some(token) = poller.as_ref().and_then(|p| p.token.as_ref()) {
                            turn::withdraw(&file, token);
                        }
                        record_timeout();
                        return Err(LockError::Timeout { lock: describe(path), waited: started.elapsed(), holder: holder::of(&file) });
                    }
                }
                locked = false;
                let Some(named) = still_named(&file, path, &id, fresh.take())? else { break None };
                let own = poller.as_ref().and_then(|p| p.token.as_ref());
                match turn::inspect(&file, named.len(), own) {
                    Found::Other if own.is_none() => {
                        let remaining = deadline.map_or(turn::YIELD, |d| d.saturating_duration_since(Instant::now()));
                        if !remaining.is_zero() {
                            had_to_wait = true;
                            unlock(&file, path)?;
                            thread::sleep(turn::YIELD.min(remaining));
                            continue;
                        }
                    }
                    Found::Other => {}
                    Found::Own | Found::Nothing => {
                        if named.len() > 0 {
                            turn::clear(&file);
                        }
                    }
                }
                break Some(named);
            };
            if let Some(named) = ours {
                keep_young(&file, &named);
                record_acquired(had_to_wait);
                return Ok(FileLock { path: path.to_owned(), keep, held: Some((file, claim)) });
            }
            // The name moved on from the inode we locked: start again.
            had_to_wait = true;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while this process still holds the lock (false after release, and in a forked
    /// child, which shares the descriptor but not the ownership).
    pub fn is_held(&self) -> bool {
        self.held.as_ref().is_some_and(|(_, claim)| claim.pid == fork::pid())
    }

    /// Unlocks and closes, leaving the file for the next acquisition; then sweeps the directory
    /// if that is due. Releasing twice, or from a forked child, only closes what is left.
    pub fn release(&mut self) -> Result<(), LockError> {
        let Some((opened, claim)) = self.held.take() else {
            return Ok(());
        };
        let forked = claim.pid != fork::pid();
        // A forked child's copy of the descriptor points at /dev/null already: its drop
        // unlocks nothing.
        drop((opened, claim));
        if forked {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            sweep::after_release(dir, self.keep);
        }
        Ok(())
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// A lock file whose modification time is older than this gets it set to now when locked.
const KEEP_YOUNG_AFTER: Duration = Duration::from_secs(3600);

/// Keeps a kept file in use from looking abandoned: cleaners of temporary directories
/// (systemd-tmpfiles on Debian 13's /tmp after 10 days, tmpreaper) delete files by age, and a
/// lock file's times never change otherwise; deleted while held, its member could be locked
/// twice. One `futimens` per file and hour, on the locked descriptor (`meta` is its fstat).
fn keep_young(file: &File, meta: &Metadata) {
    let now = SystemTime::now();
    // A time ahead of now (a clock stepped back) is young: left as it is.
    if meta.modified().is_ok_and(|at| now.duration_since(at).is_ok_and(|age| age > KEEP_YOUNG_AFTER)) {
        let _ = file.set_modified(now);
    }
}

/// Waits for `file`'s lock after a failed try; false once `deadline` has passed.
fn wait_for(file: &File, path: &Path, started: Instant, deadline: Option<Instant>, poller: &mut Option<Poller>) -> Result<bool, LockError> {
    let Some(deadline) = deadline else {
        // Blocking, as long as it takes; only a signal of someone else's interrupts it.
        while !lock_blocking(file, path)? {}
        return Ok(true);
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(false);
        }
        if poller.is_none() {
            if let Some(_alarm) = Alarm::arm_repeating(remaining, RECHECK) {
                if lock_blocking(file, path)? {
                    return Ok(true);
                }
                continue;
            }
            *poller = Some(Poller { backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF), token: None, marked: None });
        }
        if let Some(poller) = poller {
            poller.pause(file, started.elapsed(), remaining);
        }
        if try_lock(file, path)? {
            return Ok(true);
        }
    }
}

/// One `flock(LOCK_EX|LOCK_NB)`; `Ok(false)` when the lock is busy.
fn try_lock(file: &File, path: &Path) -> Result<bool, LockError> {
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => return Ok(false),
            Err(e) => return Err(io_error(path, "lock", e)),
        }
    }
}

/// One blocking `flock(LOCK_EX)`; `Ok(false)` when a signal interrupted it.
fn lock_blocking(file: &File, path: &Path) -> Result<bool, LockError> {
    match file.lock_exclusive() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(io_error(path, "lock", e)),
    }
}

fn unlock(file: &File, path: &Path) -> Result<(), LockError> {
    FileExt::unlock(file).map_err(|e| io_error(path, "unlock", e))
}

/// What the sweep's one step did to a lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    Removed,
    /// Removed already, by another sweep (or by hand).
    Gone,
    /// It stays: held, a waiter's fresh token in it, a second name, not ours.
    Stays,
}

/// Removes the lock file at `path` if nobody holds or waits for it, under its own lock.
pub(super) fn remove_if_idle(path: &Path) -> Removal {
    let file = match open(path, false) {
        Ok(file) => Opened::new(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Removal::Gone,
        Err(_) => return Removal::Stays,
    };
    if !try_lock(&file, path).unwrap_or(false) {
        return Removal::Stays;
    }
    let Ok(meta) = stat(&file, path) else {
        return Removal::Stays;
    };
    // Under the lock a count of 0 is a file removed since the open; a file with a second name
    // is left alone, and so is one the path no longer names (its directory renamed since the
    // listing: the name would be another file's, which we do not hold).
    match meta.nlink() {
        0 => Removal::Gone,
        1 if check_opened(&file, path, &meta).is_ok_and(|id| std::fs::symlink_metadata(path).is_ok_and(|named| file_id(&named) == id))
            && turn::inspect(&file, meta.len(), None) != Found::Other
            && std::fs::remove_file(path).is_ok() =>
        {
            // Waiters that opened it find a count of 0 once its drop unlocks it.
            Removal::Removed
        }
        _ => Removal::Stays,
    }
}

/// The locked file's metadata while `path` still names it (step 3); `None` when it does not.
///
/// `fresh` is an fstat taken under the lock already. A count of 0 is a file removed (by the
/// sweep, or by hand), with no lookup needed. Otherwise the path is looked up: a count of 1
/// says the file has one name, not that the name is still the path, which a renamed directory
/// moved elsewhere (measured before this lookup: a waiter on the old inode entered while a
/// third party held the key in the new directory).
fn still_named(file: &File, path: &Path, id: &LockId, fresh: Option<Metadata>) -> Result<Option<Metadata>, LockError> {
    let meta = match fresh {
        Some(meta) => meta,
        None => stat(file, path)?,
    };
    if meta.nlink() == 0 {
        return Ok(None);
    }
    match std::fs::symlink_metadata(path) {
        Ok(named) => Ok((file_id(&named) == *id).then_some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, "inspect", e)),
    }
}

fn stat(file: &File, path: &Path) -> Result<Metadata, LockError> {
    file.metadata().map_err(|e| io_error(path, "inspect", e))
}

/// Opens the lock file, making it where there is none; true when this call made it.
fn open_lock_file(path: &Path) -> Result<(Opened, bool), LockError> {
    loop {
        match open(path, false) {
            Ok(file) => return Ok((Opened::new(file), false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(open_error(path, e)),
        }
        match open(path, true) {
            Ok(file) => return Ok((Opened::new(file), true)),
            // Made by another party since we looked: open that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(open_error(path, e)),
        }
    }
}

/// `open(2)` of a lock file, read-write (its close wakes nobody, its token is written through
/// it), made anew only with `create`.
fn open(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        // std adds O_CLOEXEC. O_NONBLOCK keeps a planted FIFO from blocking the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
}

/// Refuses anything but a regular file of ours on a local file system (`meta` is its fstat);
/// its identity otherwise.
fn check_opened(file: &File, path: &Path, meta: &Metadata) -> Result<LockId, LockError> {
    if !meta.file_type().is_file() {
        return Err(LockError::NotARegularFile { path: path.to_owned(), kind: kind_name(&meta.file_type()) });
    }
    if let Some(fs) = network_file_system(file, meta.dev()) {
        return Err(LockError::NetworkFileSystem { path: path.to_owned(), fs });
    }
    // Only PHP's user and the lock directory's owner may have files here; root hands what it
    // creates in another user's directory to that user, so that user's PHP can open it too.
    // The directory owner's files, the common case, are let through without asking who we are.
    let owner = meta.uid();
    let (dir_uid, dir_gid) = lock_dir_owner(path)?;
    if owner != dir_uid {
        if owner != unsafe { libc::geteuid() } {
            return Err(LockError::ForeignOwner { path: path.to_owned(), owner });
        }
        if owner == 0 {
            let _ = std::os::unix::fs::fchown(file, Some(dir_uid), Some(dir_gid));
        }
    }
    Ok(file_id(meta))
}

/// (uid, gid) of the directory that holds `path`.
/// Read once per directory and process: a lock directory keeps its owner, and root's every lock
/// would otherwise pay a `stat` for it.
fn lock_dir_owner(path: &Path) -> Result<(u32, u32), LockError> {
    static KNOWN: Mutex<Vec<(PathBuf, (u32, u32))>> = Mutex::new(Vec::new());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Some((_, owner)) = KNOWN.lock().iter().find(|(known, _)| known.as_os_str() == dir.as_os_str()) {
        return Ok(*owner);
    }
    let meta = std::fs::metadata(dir).map_err(|e| io_error(dir, "inspect", e))?;
    let mut known = KNOWN.lock();
    if known.len() >= 16 {
        known.clear();
    }
    known.push((dir.to_owned(), (meta.uid(), meta.gid())));
    Ok((meta.uid(), meta.gid()))
}

/// The name of the network file system `file` (on device `dev`) lives on, if it does: there
/// flock is emulated with POSIX locks, which belong to the process and end when it closes
/// *any* descriptor of the file (the re-entry check opens and closes one), so no lock there
/// can be trusted. Asked once per device: a device keeps its file system.
fn network_file_system(file: &File, dev: u64) -> Option<&'static str> {
    static KNOWN: Mutex<Vec<(u64, Option<&'static str>)>> = Mutex::new(Vec::new());
    if let Some((_, fs)) = KNOWN.lock().iter().find(|(known, _)| *known == dev) {
        return *fs;
    }
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills the struct it is given for an open descriptor.
    if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(file), &mut stats) } != 0 {
        return None;
    }
    let fs = network_fs_name(stats.f_type as i64);
    KNOWN.lock().push((dev, fs));
    fs
}

/// Names the network file systems by their `statfs` magic numbers.
fn network_fs_name(magic: i64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("NFS"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x517B => Some("SMB"),
        0x0102_1997 => Some("9P"),
        _ => None,
    }
}

fn open_error(path: &Path, err: io::Error) -> LockError {
    match err.raw_os_error() {
        Some(libc::ELOOP) => LockError::NotARegularFile { path: path.to_owned(), kind: "symbolic link" },
        Some(libc::EISDIR) => LockError::NotARegularFile { path: path.to_owned(), kind: "directory" },
        // Someone else's file at the lock path, which we may not open: say whose.
        Some(libc::EACCES | libc::EPERM) => match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.uid() != unsafe { libc::geteuid() } => LockError::ForeignOwner { path: path.to_owned(), owner: meta.uid() },
            _ => io_error(path, "open", err),
        },
        _ => io_error(path, "open", err),
    }
}

fn kind_name(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "device"
    } else {
        "special file"
    }
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> LockError {
    LockError::Io { path: path.to_owned(), action, source }
}

fn file_id(meta: &std::fs::Metadata) -> LockId {
    LockId::File(meta.dev(), meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::os::unix::ffi::OsStrExt;

    /// A directory of one test's own, removed when the test ends.
    struct ScratchDir(PathBuf);

    impl std::ops::Deref for ScratchDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("joinblock-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    #[test]
    fn path_is_sha1_of_normalized_key() {
        // sha1("a@b.org")
        let path = lock_path(Path::new("/tmp"), b" A@B.org ").unwrap();
        assert_eq!(path, Path::new("/tmp/join-lock-2e30bbc379fa99550111aba3e703a8ec9524b9df"));
        assert!(matches!(lock_path(Path::new("/tmp"), b"  "), Err(LockError::EmptyKey)));
    }

    #[test]
    fn a_release_keeps_the_file_and_a_sweep_removes_idle_ones_only() {
        let dir = temp_dir("release");
        let path = lock_path(&dir, b"x@example.org").unwrap();
        let mut lock = FileLock::acquire(&path, Wait::Forever, sweep::KEEP_DEFAULT).unwrap();
        assert!(lock.is_held());
        let held = lock_path(&dir, b"held@example.org").unwrap();
        let other = FileLock::acquire(&held, Wait::Forever, sweep::KEEP_DEFAULT).unwrap();
        lock.release().unwrap();
        assert!(!lock.is_held());
        assert!(path.exists(), "kept for the next acquisition");
        lock.release().unwrap();
        assert_eq!(sweep::sweep(&dir, 0, 0), sweep::Swept { found: 2, removed: 1, gone: 1, cut_short: false }, "it tried both");
        assert!(!path.exists() && held.exists(), "the idle file went, the held one stayed");
        drop(other);
        assert_eq!(sweep::sweep(&dir, 0, 0), sweep::Swept { found: 1, removed: 1, gone: 1, cut_short: false });
    }

    /// A ZTS PHP's threads fork (`proc_open`, `exec`) while others lock. A child forked at any
    /// moment of an acquire or a release must not keep the lock: here children live 60 ms, and
    /// the locking thread's every acquire of the one key must get it within 40 ms.
    #[test]
    fn a_fork_by_another_thread_never_leaves_a_child_holding_the_lock() {
        let dir = temp_dir("fork-race");
        let path = lock_path(&dir, b"forked@example.org").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forker = {
            let stop = stop.clone();
            thread::spawn(move || {
                // Its own children only: other tests fork too.
                let (mut forks, mut living) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: the child only sleeps and exits (async-signal-safe calls).
                    match unsafe { libc::fork() } {
                        0 => unsafe {
                            libc::nanosleep(&libc::timespec { tv_sec: 0, tv_nsec: 60_000_000 }, ptr::null_mut());
                            libc::_exit(0);
                        },
                        -1 => panic!("fork: {}", io::Error::last_os_error()),
                        pid => living.push(pid),
                    }
                    // SAFETY: reaps this thread's children that have exited.
                    living.retain(|&pid| unsafe { libc::waitpid(pid, ptr::null_mut(), libc::WNOHANG) } == 0);
                    forks += 1;
                    thread::sleep(Duration::from_micros(500));
                }
                for pid in living {
                    // SAFETY: waits for a child of this thread.
                    unsafe { libc::waitpid(pid, ptr::null_mut(), 0) };
                }
                forks
            })
        };
        let started = Instant::now();
        let (mut rounds, mut late) = (0, 0);
        while started.elapsed() < Duration::from_secs(2) {
            match FileLock::acquire(&path, Wait::AtMost(Duration::from_millis(40)), sweep::KEEP_DEFAULT) {
                Ok(mut lock) => lock.release().unwrap(),
                Err(LockError::Timeout { .. }) => late += 1,
                Err(e) => panic!("{e}"),
            }
            rounds += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let forks = forker.join().unwrap();
        assert!(forks > 500, "{forks} forks");
        assert_eq!(late, 0, "{late} of {rounds} acquires found the lock kept by a child ({forks} forks)");
    }

    #[test]
    fn same_thread_reacquire_is_refused_other_thread_times_out() {
        let dir = temp_dir("reentry");
        let path = lock_path(&dir, b"y@example.org").unwrap();
        let lock = FileLock::acquire(&path, Wait::Forever, sweep::KEEP_DEFAULT).unwrap();
        assert!(matches!(FileLock::acquire(&path, Wait::Forever, sweep::KEEP_DEFAULT), Err(LockError::AlreadyHeld { .. })));
        let other = path.clone();
        let result = thread::spawn(move || FileLock::acquire(&other, Wait::AtMost(Duration::from_millis(30)), sweep::KEEP_DEFAULT).map(|_| ()))
            .join()
            .unwrap();
        assert!(matches!(result, Err(LockError::Timeout { .. })), "{result:?}");
        drop(lock);
        FileLock::acquire(&path, Wait::AtMost(Duration::ZERO), sweep::KEEP_DEFAULT).unwrap();
    }

    #[test]
    fn threads_never_overlap() {
        let dir = temp_dir("threads");
        let path = lock_path(&dir, b"z@example.org").unwrap();
        let inside = std::sync::Arc::new(AtomicU64::new(0));
        let overlaps = std::sync::Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (path, inside, overlaps) = (path.clone(), inside.clone(), overlaps.clone());
                thread::spawn(move || {
                    for _ in 0..300 {
                        let lock = FileLock::acquire(&path, Wait::Forever, sweep::KEEP_DEFAULT).unwrap();
                        if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(lock);
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn refuses_symlink_directory_and_fifo() {
        let dir = temp_dir("planted");
        let target = dir.join("target");
        std::fs::write(&target, b"keep me").unwrap();
        let link = lock_path(&dir, b"link").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = FileLock::acquire(&link, Wait::AtMost(Duration::ZERO), sweep::KEEP_DEFAULT).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

        let sub = lock_path(&dir, b"dir").unwrap();
        std::fs::create_dir(&sub).unwrap();
        let err = FileLock::acquire(&sub, Wait::AtMost(Duration::ZERO), sweep::KEEP_DEFAULT).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");

        let fifo = lock_path(&dir, b"fifo").unwrap();
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = FileLock::acquire(&fifo, Wait::AtMost(Duration::ZERO), sweep::KEEP_DEFAULT).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn network_file_systems_are_refused_by_their_magic_numbers() {
        assert_eq!(network_fs_name(0x6969), Some("NFS"));
        assert_eq!(network_fs_name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(network_fs_name(0xFE53_4D42), Some("SMB2"));
        assert_eq!(network_fs_name(0xEF53), None, "ext4");
        assert_eq!(network_fs_name(0x0102_1994), None, "tmpfs");
        assert_eq!(network_fs_name(0x5846_5342), None, "xfs");
    }

    #[test]
    fn missing_directory_names_path_and_reason() {
        let path = lock_path(Path::new("/nonexistent-joinblock-dir"), b"k").unwrap();
        let err = FileLock::acquire(&path, Wait::Forever, sweep::KEEP_DEFAULT).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent-joinblock-dir/join-lock-"), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
