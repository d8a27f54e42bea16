//! Per-key exclusive locks, one per member: the key (an email, usually) is normalised as the
//! join-block plugin does it, `strtolower(trim($key))`, and hashed with SHA-1.
//!
//! Two backends keep the lock: `file` (flock on the plugin's own lock files, one host) and
//! `mysql` (`GET_LOCK` on the database server every web host of a site shares). What they share
//! lives here: waits, errors, counters, and each thread's claims.

pub mod alarm;
pub mod file;
mod fork;
pub mod holder;
pub mod mysql;
pub mod sweep;
mod turn;

use std::{
    fmt, io,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    thread::ThreadId,
    time::Duration,
};

use parking_lot::Mutex;

/// Bytes `trim()` strips by default in the PHP built for: PHP 8.6 added the form feed
/// (build.rs sets the cfg). The plugin computes its lock names with that PHP's trim().
#[cfg(not(php_trim_strips_form_feed))]
const PHP_TRIM_BYTES: &[u8] = b" \t\n\r\0\x0B";
#[cfg(php_trim_strips_form_feed)]
const PHP_TRIM_BYTES: &[u8] = b" \t\n\r\0\x0B\x0C";

/// Both backends name a lock `join-lock-<sha1 hex of the normalised key>`.
const NAME_PREFIX: &str = "join-lock-";

/// How long to wait for a lock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Wait {
    /// Block until the lock is free (the plugin's behaviour).
    Forever,
    /// Give up once this much time has passed; zero tries exactly once.
    AtMost(Duration),
}

/// Which server keeps the locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    File,
    Mysql,
}

impl Backend {
    pub fn parse(text: &str) -> Result<Backend, String> {
        match text.trim() {
            "file" => Ok(Backend::File),
            "mysql" => Ok(Backend::Mysql),
            other => Err(format!("is \"{}\"; expected \"file\" or \"mysql\"", other.escape_debug())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Mysql => "mysql",
        }
    }
}

/// Why a lock could not be taken or released. `lock` in the messages names the lock the way a
/// site admin finds it: `lock file /tmp/join-lock-…` or `MySQL lock join-lock-… on user@host`.
#[derive(Debug)]
pub enum LockError {
    /// The key is empty once trimmed.
    EmptyKey,
    /// The lock was not free before the deadline; `holder` says who held it, when known.
    Timeout { lock: String, waited: Duration, holder: Option<String> },
    /// This thread already holds that lock.
    AlreadyHeld { lock: String },
    /// Something is at the lock path that is not a regular file.
    NotARegularFile { path: PathBuf, kind: &'static str },
    /// The lock file belongs to a user who is neither PHP's nor the lock directory's owner.
    ForeignOwner { path: PathBuf, owner: u32 },
    /// The lock directory is on a network file system, where flock cannot be trusted.
    NetworkFileSystem { path: PathBuf, fs: &'static str },
    /// The operating system refused an operation on the path.
    Io { path: PathBuf, action: &'static str, source: io::Error },
    /// The database server refused, failed or could not be reached.
    Database { action: String, detail: String },
    /// The database server is one where `GET_LOCK` does not exclude.
    UnsafeServer { server: String, reason: &'static str },
    /// The connection that held the lock is gone, and the lock with it.
    Lost { lock: String },
    /// The server refused to release the lock; its connection was closed so that the server
    /// frees it, with the `others` this thread held on it.
    ReleaseRefused { lock: String, detail: String, others: usize },
    /// The MySQL server in effect changed while this thread holds locks on the previous one.
    ServerChanged { from: String, to: String, held: usize },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::EmptyKey => f.write_str("lock key is empty after trimming white space"),
            LockError::Timeout { lock, waited, holder } => {
                write!(f, "timed out after {:.3} s waiting for {lock}", waited.as_secs_f64())?;
                match holder {
                    Some(holder) => write!(f, ", held by {holder}"),
                    None => Ok(()),
                }
            }
            LockError::ForeignOwner { path, owner } => write!(
                f,
                "refusing lock file {}: it belongs to {}, not to PHP's user ({}); the lock directory is shared \
                 with other users, who can block or break any member's lock there: set joinblock.lock_dir to a \
                 directory only PHP's user can enter (scripts/install makes /run/joinblock)",
                path.display(),
                user_name(*owner),
                user_name(unsafe { libc::geteuid() })
            ),
            LockError::NetworkFileSystem { path, fs } => write!(
                f,
                "refusing lock file {}: the lock directory is on {fs}, where flock is emulated with locks that \
                 closing any descriptor of the file drops; use a local directory, or the mysql backend to share \
                 locks between hosts",
                path.display()
            ),
            LockError::AlreadyHeld { lock } => {
                write!(f, "{lock} is already held by this thread; release it before acquiring it again")
            }
            LockError::NotARegularFile { path, kind } => write!(
                f,
                "refusing lock path {}: it is a {kind}, not a regular file",
                path.display()
            ),
            LockError::Io { path, action, source } => {
                write!(f, "cannot {action} lock file {}: {}", path.display(), describe_io(source))
            }
            LockError::Database { action, detail } => write!(f, "cannot {action}: {detail}"),
            LockError::UnsafeServer { server, reason } => {
                write!(f, "refusing to lock on MySQL server {server}: {reason}")
            }
            LockError::Lost { lock } => write!(
                f,
                "{lock} was lost with its database connection; another request may hold it now"
            ),
            LockError::ReleaseRefused { lock, detail, others } => {
                write!(f, "the server refused to release {lock} ({detail}); its connection was closed instead, which frees it")?;
                match others {
                    0 => Ok(()),
                    1 => f.write_str(", and the other lock this thread held on that connection"),
                    n => write!(f, ", and the {n} other locks this thread held on that connection"),
                }
            }
            LockError::ServerChanged { from, to, held } => write!(
                f,
                "cannot take a MySQL lock on {to} while this thread holds {held} {} on {from}: moving to another \
                 server (or another spelling of the same one) would silently free them; release them first",
                if *held == 1 { "lock" } else { "locks" }
            ),
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `uid 65534 (nobody)`, or `uid 1234` when the system has no name for it.
fn user_name(uid: u32) -> String {
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = [0 as libc::c_char; 1024];
    let mut found = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into the entry and buffer it is given, their sizes as passed.
    let name = unsafe {
        (libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) == 0 && !found.is_null())
            .then(|| std::ffi::CStr::from_ptr(entry.pw_name).to_string_lossy().into_owned())
    };
    match name {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// The OS reason, with a hint for the cases a site admin meets.
fn describe_io(err: &io::Error) -> String {
    let hint = match err.raw_os_error() {
        Some(libc::ENOENT) => " (does the lock directory exist?)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (is the lock directory writable by PHP's user?)",
        _ => "",
    };
    format!("{err}{hint}")
}

/// Counters shown by `php --ri joinblock` and `joinblock_status()`: process-wide, the sum over
/// all of a thread-safe PHP's request threads (labelled so), as a PHP-FPM worker's are over its
/// requests. Atomics: counting never waits for another thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub acquired: u64,
    pub waited: u64,
    pub timed_out: u64,
}

static ACQUIRED: AtomicU64 = AtomicU64::new(0);
static WAITED: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);

fn record_acquired(waited: bool) {
    ACQUIRED.fetch_add(1, Ordering::Relaxed);
    if waited {
        WAITED.fetch_add(1, Ordering::Relaxed);
    }
}

fn record_timeout() {
    TIMED_OUT.fetch_add(1, Ordering::Relaxed);
}

pub fn counters() -> Counters {
    Counters {
        acquired: ACQUIRED.load(Ordering::Relaxed),
        waited: WAITED.load(Ordering::Relaxed),
        timed_out: TIMED_OUT.load(Ordering::Relaxed),
    }
}

/// `strtolower(trim($key))` as PHP 8.2 and later compute it: the bytes PHP trims by default,
/// and ASCII-only lowercasing. `None` when nothing is left.
pub fn normalize_key(key: &[u8]) -> Option<Vec<u8>> {
    let start = key.iter().position(|b| !PHP_TRIM_BYTES.contains(b))?;
    let end = key.iter().rposition(|b| !PHP_TRIM_BYTES.contains(b))? + 1;
    Some(key[start..end].to_ascii_lowercase())
}

/// `join-lock-<sha1 hex of the normalised key>`: the plugin's lock file name, and the
/// `GET_LOCK` name (50 characters; MySQL allows 64).
pub fn lock_name(key: &[u8]) -> Result<String, LockError> {
    let normalized = normalize_key(key).ok_or(LockError::EmptyKey)?;
    // Hex by hand: formatting the digest byte by byte was a visible share of a lock's cost.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = String::with_capacity(NAME_PREFIX.len() + 40);
    name.push_str(NAME_PREFIX);
    for byte in sha1_smol::Sha1::from(&normalized).digest().bytes() {
        name.push(HEX[usize::from(byte >> 4)] as char);
        name.push(HEX[usize::from(byte & 0xf)] as char);
    }
    Ok(name)
}

/// What identifies a lock, whatever spelling reached it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LockId {
    /// (device, inode) of a lock file.
    File(u64, u64),
    /// A `GET_LOCK` name on one database server.
    Mysql(String),
}

/// Locks claimed in this process: (lock, thread, process id). One list for all threads, not a
/// thread-local, because a claim is dropped wherever its lock is, and a Rust value may be
/// dropped on another thread than the one that made it; each entry names its thread, so the
/// threads' claims never mix. The mutex guards a short scan, never any I/O.
static HELD: Mutex<Vec<(LockId, ThreadId, u32)>> = Mutex::new(Vec::new());

/// A thread's claim on a lock, from the first step of taking it until its release. A second
/// claim by the same thread is refused: with flock that thread would wait for itself forever,
/// and `GET_LOCK` would let it in twice (it is re-entrant per connection).
#[derive(Debug)]
struct Claim {
    id: LockId,
    thread: ThreadId,
    pid: u32,
}

impl Claim {
    fn new(id: LockId, thread: ThreadId, pid: u32) -> Option<Claim> {
        let mut held = HELD.lock();
        // Claims inherited across fork belong to the parent, not to us.
        held.retain(|(_, _, owner)| *owner == pid);
        if held.iter().any(|(held_id, owner, _)| *held_id == id && *owner == thread) {
            return None;
        }
        held.push((id.clone(), thread, pid));
        Some(Claim { id, thread, pid })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        HELD.lock().retain(|(id, thread, pid)| !(*id == self.id && *thread == self.thread && *pid == self.pid));
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_php_trim_and_strtolower() {
        assert_eq!(normalize_key(b"  A@B.org\t\n\r\0\x0B").unwrap(), b"a@b.org");
        assert_eq!(normalize_key("\u{c9}A".as_bytes()).unwrap(), "\u{c9}a".as_bytes());
        assert_eq!(normalize_key(b"\xffX\xfe").unwrap(), b"\xffx\xfe");
        assert_eq!(normalize_key(b" \t\0 "), None);
        assert_eq!(normalize_key(b""), None);
        // \f is in PHP's default trim list from PHP 8.6 on.
        let expected: &[u8] = if cfg!(php_trim_strips_form_feed) { b"a" } else { b"\x0ca\x0c" };
        assert_eq!(normalize_key(b"\x0cA\x0c").unwrap(), expected);
    }
}
