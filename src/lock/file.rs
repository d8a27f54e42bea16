//! The `file` backend: flock on the join-block plugin's own lock files, `<dir>/join-lock-<sha1>`.
//!
//! # Invariant
//!
//! A party is inside the critical section for a key only while it holds `flock(LOCK_EX)` on
//! the inode that the lock path names at that moment, and has checked that it does.
//!
//! # Why the steps keep it
//!
//! 1. `open(path, O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC|O_NOCTTY|O_NONBLOCK, 0600)`: never
//!    follows a planted symlink, never truncates, never leaks the descriptor into a child
//!    started with `exec`. Anything but a regular file is refused.
//! 2. `flock(LOCK_EX)`, blocking or polled with `LOCK_NB` until a deadline.
//! 3. `fstat(fd)` and `lstat(path)` must agree on (device, inode). The name is only ever
//!    removed by a holder while it still holds the lock (step 4), so if the name still points
//!    at our inode once we hold it, no other holder can have it. If it does not (the previous
//!    holder unlinked it while we waited on the old inode, and maybe a third party created a
//!    new one), we hold a lock on an orphan: close it and start again.
//! 4. Release unlinks the path *before* `LOCK_UN`, so a waiter that wakes on the old inode
//!    always finds the name gone or pointing elsewhere, and retries at step 1.
//!
//! Unlinking after unlocking, or unlinking without the check of step 3, both let two parties
//! in at once (measured: 23% of 3-request bursts with the plugin's PHP lock).
//!
//! Locks are per open file description. A second acquisition of a key by the same thread
//! would wait for itself forever, so it is refused. After `fork`, a child shares the parent's
//! description: only the process that acquired a lock may unlock or unlink it, and the
//! child's copy of a held lock's descriptor is pointed at `/dev/null` before the child runs
//! (see [`super::fork`]), so a parent that dies frees its locks at once even while a child
//! lives on.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use fs2::FileExt;
use parking_lot::Mutex;

use super::{fork, holder, lock_name, record_acquired, record_timeout, release_watch::ReleaseWatch, Claim, LockError, LockId, Wait};
use crate::backoff::Backoff;

/// Longest wait on a release watch between tries: a holder that dies without unlinking (killed)
/// sends no event, so its lock is noticed free this late at most.
const DEAD_HOLDER_CHECK: Duration = Duration::from_millis(50);
/// How long a woken waiter lets others go first, by how long it has waited itself.
///
/// Every waiter's watch sees a release at once, and the kernel wakes them in the same order
/// every time (by their inotify instance), so without this the same process would win every
/// race and another could lose round after round. Halving the head start for every 5 ms waited
/// lets the longest waiter try first, close to a queue: measured, the wait tail of 4 and 8
/// processes came down to that of blocking waits.
fn yield_to_elders(waited: Duration) -> Duration {
    FAIRNESS_HEAD_START.div_f64(2f64.powf(waited.as_secs_f64() / 0.005))
}
const FAIRNESS_HEAD_START: Duration = Duration::from_micros(400);

/// Backoff between polled tries when waiting with a deadline and no inotify.
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
    /// The locked descriptor, where it is listed for a fork, and its claim; `None` once released.
    held: Option<(File, &'static fork::Listed, Claim)>,
}

impl FileLock {
    /// Takes the lock on `path`, following the protocol in this module's documentation.
    pub fn acquire(path: &Path, wait: Wait) -> Result<FileLock, LockError> {
        let started = Instant::now();
        let deadline = match wait {
            Wait::Forever => None,
            // A limit past the end of time is no limit.
            Wait::AtMost(limit) => started.checked_add(limit),
        };
        let (pid, thread) = (std::process::id(), thread::current().id());
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut watch: Option<Option<ReleaseWatch>> = None;
        let mut had_to_wait = false;
        loop {
            // Until both checks pass, leaving this loop body closes the descriptor (dropping
            // any lock on it) and never touches the path.
            let (file, id) = open_lock_file(path)?;
            let claim = Claim::new(id.clone(), thread, pid).ok_or_else(|| LockError::AlreadyHeld { lock: describe(path) })?;
            // Waits on this inode until it is ours, or until the name moves on from it.
            let locked = loop {
                if try_lock(&file, path, false)? {
                    break true;
                }
                had_to_wait = true;
                let Some(deadline) = deadline else {
                    break try_lock(&file, path, true)?;
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    record_timeout();
                    return Err(LockError::Timeout { lock: describe(path), waited: started.elapsed(), holder: holder::of(&file) });
                }
                match &watch {
                    // Watching from now on, and trying once more before the first wait.
                    None => watch = Some(ReleaseWatch::new(path)),
                    Some(Some(watch)) => {
                        if watch.wait(remaining.min(DEAD_HOLDER_CHECK)) {
                            thread::sleep(yield_to_elders(started.elapsed()).min(remaining));
                        }
                    }
                    Some(None) => thread::sleep(backoff.next(Some(remaining))),
                }
                if !path_names(path, &id)? {
                    break false;
                }
            };
            if locked && path_names(path, &id)? {
                record_acquired(had_to_wait);
                let listed = fork::list(file.as_raw_fd());
                return Ok(FileLock { path: path.to_owned(), held: Some((file, listed, claim)) });
            }
            // The name moved on from the inode we waited for (or locked): start again.
            had_to_wait = true;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while this process still holds the lock (false after release, and in a forked
    /// child, which shares the descriptor but not the ownership).
    pub fn is_held(&self) -> bool {
        self.held.as_ref().is_some_and(|(_, _, claim)| claim.pid == std::process::id())
    }

    /// Unlinks the path (only if it still names our file), then unlocks and closes.
    /// Releasing twice, or from a forked child, only closes what is left.
    pub fn release(&mut self) -> Result<(), LockError> {
        let Some((file, listed, claim)) = self.held.take() else {
            return Ok(());
        };
        listed.unlist(file.as_raw_fd());
        if claim.pid != std::process::id() {
            // A forked child: its copy of the descriptor already points at /dev/null.
            return Ok(());
        }
        let unlinked = match path_names(&self.path, &claim.id) {
            Ok(true) => std::fs::remove_file(&self.path)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(|e| io_error(&self.path, "remove", e)),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        let unlocked = FileExt::unlock(&file).map_err(|e| io_error(&self.path, "unlock", e));
        unlinked.and(unlocked)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// One attempt at `flock(LOCK_EX)`, blocking or not; `Ok(false)` when the lock is busy.
fn try_lock(file: &File, path: &Path, block: bool) -> Result<bool, LockError> {
    loop {
        let attempt = if block { file.lock_exclusive() } else { file.try_lock_exclusive() };
        match attempt {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => return Ok(false),
            Err(e) => return Err(io_error(path, "lock", e)),
        }
    }
}

/// Whether `path` (not following links) names the file `id`.
fn path_names(path: &Path, id: &LockId) -> Result<bool, LockError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(file_id(&meta) == *id),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, "inspect", e)),
    }
}

/// Opens (creating if needed) the lock file, refusing anything but a regular file of ours on
/// a local file system.
fn open_lock_file(path: &Path) -> Result<(File, LockId), LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        // std adds O_CLOEXEC. O_NONBLOCK keeps a planted FIFO from blocking the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, "inspect", e))?;
    if !meta.file_type().is_file() {
        return Err(LockError::NotARegularFile { path: path.to_owned(), kind: kind_name(&meta.file_type()) });
    }
    if let Some(fs) = network_file_system(&file, meta.dev()) {
        return Err(LockError::NetworkFileSystem { path: path.to_owned(), fs });
    }
    // Only PHP's user and the lock directory's owner may have files here; root hands what it
    // creates in another user's directory to that user, so that user's PHP can open it too.
    let (me, owner) = (unsafe { libc::geteuid() }, meta.uid());
    if owner != me || me == 0 {
        let (dir_uid, dir_gid) = lock_dir_owner(path)?;
        if owner != me && owner != dir_uid {
            return Err(LockError::ForeignOwner { path: path.to_owned(), owner });
        }
        if owner == 0 && dir_uid != 0 {
            let _ = std::os::unix::fs::fchown(&file, Some(dir_uid), Some(dir_gid));
        }
    }
    Ok((file, file_id(&meta)))
}

/// (uid, gid) of the directory that holds `path`.
/// Read once per directory and process: a lock directory keeps its owner, and root's every lock
/// would otherwise pay a `stat` for it.
fn lock_dir_owner(path: &Path) -> Result<(u32, u32), LockError> {
    static KNOWN: Mutex<Vec<(PathBuf, (u32, u32))>> = Mutex::new(Vec::new());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Some((_, owner)) = KNOWN.lock().iter().find(|(known, _)| known == dir) {
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
    fn acquire_release_removes_the_file() {
        let dir = temp_dir("release");
        let path = lock_path(&dir, b"x@example.org").unwrap();
        let mut lock = FileLock::acquire(&path, Wait::Forever).unwrap();
        assert!(lock.is_held());
        assert!(path.exists());
        lock.release().unwrap();
        assert!(!lock.is_held());
        assert!(!path.exists());
        lock.release().unwrap();
    }

    #[test]
    fn same_thread_reacquire_is_refused_other_thread_times_out() {
        let dir = temp_dir("reentry");
        let path = lock_path(&dir, b"y@example.org").unwrap();
        let lock = FileLock::acquire(&path, Wait::Forever).unwrap();
        assert!(matches!(FileLock::acquire(&path, Wait::Forever), Err(LockError::AlreadyHeld { .. })));
        let other = path.clone();
        let result = thread::spawn(move || FileLock::acquire(&other, Wait::AtMost(Duration::from_millis(30))).map(|_| ()))
            .join()
            .unwrap();
        assert!(matches!(result, Err(LockError::Timeout { .. })), "{result:?}");
        drop(lock);
        FileLock::acquire(&path, Wait::AtMost(Duration::ZERO)).unwrap();
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
                        let lock = FileLock::acquire(&path, Wait::Forever).unwrap();
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
        let err = FileLock::acquire(&link, Wait::AtMost(Duration::ZERO)).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

        let sub = lock_path(&dir, b"dir").unwrap();
        std::fs::create_dir(&sub).unwrap();
        let err = FileLock::acquire(&sub, Wait::AtMost(Duration::ZERO)).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");

        let fifo = lock_path(&dir, b"fifo").unwrap();
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = FileLock::acquire(&fifo, Wait::AtMost(Duration::ZERO)).unwrap_err();
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
        let err = FileLock::acquire(&path, Wait::Forever).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent-joinblock-dir/join-lock-"), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
