//! The per-host store: what every PHP process of the site (extension or polyfill) shares about
//! one Action Network group, in the lock directory in effect (`joinblock.lock_dir`, else
//! `sys_get_temp_dir()`). Off with `joinblock.shared_state = 0`.
//!
//! # Files and format (the polyfill reads and writes exactly the same)
//!
//! A group is `"<base_url> <sha1(api key)>"`; its files are named by `h = sha1(group)`:
//! - `joinblock-an-<h>.pace`: one ASCII line `joinblock-pace 1 <last> <blocked>\n`, both
//!   seconds since the Unix epoch with 6 decimals: when the host's latest request was
//!   scheduled, and until when Action Network asked every process to wait (`Retry-After`).
//!   Read and rewritten in place only under `flock(LOCK_EX)` on it; never unlinked, so the
//!   lock always names one inode. It is also the group's lock for publishing tags.
//! - `joinblock-an-<h>.tags`: JSON `{"format":"joinblock-tags 1","group":"<h>",
//!   "entries":[[href, folded name, learned, expires], ...]}` (times as above). Replaced only
//!   whole: written to `.joinblock-an-<h>.tags.<pid>.tmp` (O_EXCL) and renamed over, under
//!   the pace file's lock, so a reader sees the old or the new file, never a torn one. A
//!   publish removes such temporary files older than a minute, left by killed publishers.
//!
//! # Invariants, and why
//! - No secret reaches the disk: the key only inside a SHA-1, never an email (files hold tag
//!   hrefs and names, which are the group's and not a member's).
//! - Every file is opened with `O_NOFOLLOW`, created `0600`, and used only when `fstat` says
//!   it is a regular file owned by this process's effective user: in a shared `/tmp`, a file
//!   planted by another user (or a symlink) is ignored with a warning, never trusted or
//!   followed. A tags file that does not parse is ignored the same way; a pace line that does
//!   not parse is rewritten (the file is ours; the worst case is one unpaced slot).
//! - Bounded: at most [`MAX_ENTRIES`] entries of at most [`MAX_ENTRY_BYTES`] each, the file read at most [`MAX_FILE_BYTES`].
//! - Pacing: a request takes the slot `max(now, last + 1/max_rps, blocked)` and stores it as
//!   `last`, all under the lock, so every process of the host together keeps `max_rps`; the
//!   lock is held for a read and a write, never over a sleep, and waited for at most
//!   [`LOCK_PATIENCE`] (then the call goes on without the store), so a stalled holder holds
//!   a call back no longer than that. A slot more than one interval
//!   ahead is not taken: the process comes back when it is one interval ahead. So a `last`
//!   written by any process lies at most one interval after its clock's now, and a `blocked`
//!   at most [`MAX_BLOCK`] after it.
//! - What is read is clamped to that: `last` to `now + interval`, `blocked` to `now +`
//!   [`MAX_BLOCK`] (and the file rewritten). Only a clock stepped back since the write (NTP's
//!   first step at boot, a restored snapshot) leaves more, and believing it would fail every
//!   call of the host until the clock caught up; a file left behind by a forward step (times
//!   in the past) is harmless as it is.
//! - Whatever goes wrong with the store, the call goes on with per-process pacing and its own
//!   cache: the store saves requests, it is never needed for a right answer.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use fs2::FileExt;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::store::{unix_now, GroupStore, SharedEntry, Slot, MAX_ENTRIES, MAX_ENTRY_BYTES};

/// A tags file larger than this is not read (4096 entries of usual size are a few hundred KiB).
pub const MAX_FILE_BYTES: u64 = 8 << 20;
const PACE_MAGIC: &str = "joinblock-pace 1";
const TAGS_FORMAT: &str = "joinblock-tags 1";
/// Warnings kept for `php --ri`.
const MAX_WARNINGS: usize = 8;
/// The longest `Retry-After` honoured (seconds): no stored block lasts longer.
pub const MAX_BLOCK: f64 = 3600.0;
/// How long the pace file's lock is waited for. A working holder keeps it for one read and
/// one write (microseconds); one that keeps it longer is stalled (stopped, swapped out, on a
/// hung filesystem), and waiting for it would make the call overrun its deadline: the call
/// goes on as with no store (per-process pacing, its own cache), as for any unusable store.
pub const LOCK_PATIENCE: Duration = Duration::from_millis(200);

/// Process-wide, for `php --ri`, whichever thread met the problem.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Problems this process met with the store (for `php --ri`), newest last.
pub fn warnings() -> Vec<String> {
    WARNINGS.lock().clone()
}

fn warn(text: String) {
    let mut warnings = WARNINGS.lock();
    if !warnings.contains(&text) {
        if warnings.len() == MAX_WARNINGS {
            warnings.remove(0);
        }
        warnings.push(text);
    }
}

/// One group's files in one directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    hash: String,
}

impl Store {
    pub fn new(dir: &Path, group: &str) -> Store {
        Store { dir: dir.to_owned(), hash: sha1_smol::Sha1::from(group).digest().to_string() }
    }

    fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("joinblock-an-{}.{ext}", self.hash))
    }

    /// The pace file, locked; `None` (with a warning) when it cannot be used.
    fn lock(&self) -> Option<Locked> {
        let path = self.path("pace");
        let file = match open_owned(&path, true) {
            Ok(file) => file,
            Err(problem) => {
                warn(problem);
                return None;
            }
        };
        let give_up = Instant::now() + LOCK_PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock_exclusive() {
                Ok(()) => return Some(Locked { file, path }),
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) && Instant::now() + pause < give_up => {
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    let waited = LOCK_PATIENCE.as_millis();
                    warn(format!("{}: held by another process for over {waited} ms (stalled?); per-process pacing", path.display()));
                    return None;
                }
                Err(e) => {
                    warn(format!("{}: cannot lock ({e}); per-process pacing", path.display()));
                    return None;
                }
            }
        }
    }
}

/// The host's files: the slot and the block under the pace file's lock; the map read whole
/// and replaced whole.
impl GroupStore for Store {
    fn reserve(&self, interval: f64, latest: f64) -> Result<Slot, ()> {
        let mut locked = self.lock().ok_or(())?;
        let now = unix_now();
        let (last, blocked) = locked.read_pace(now, interval)?;
        let slot = now.max(last + interval).max(blocked);
        if slot >= latest {
            return Ok(Slot::Late);
        }
        if slot > now + interval {
            return Ok(Slot::Later(slot - interval));
        }
        locked.write_pace(slot, blocked).map_err(|_| ())?;
        Ok(Slot::Taken(slot))
    }

    fn push_back(&self, until: f64) -> Result<(), ()> {
        let mut locked = self.lock().ok_or(())?;
        let now = unix_now();
        // `last` as read: the next reserve clamps it with the interval it knows.
        let (last, blocked) = locked.read_pace(now, f64::INFINITY)?;
        locked.write_pace(last, blocked.max(until.min(now + MAX_BLOCK))).map_err(|_| ())
    }

    /// Empty, with a warning, when the file is unusable.
    fn read_tags(&self) -> Vec<SharedEntry> {
        let path = self.path("tags");
        match read_tags_file(&path, &self.hash) {
            Ok(entries) => entries,
            Err(None) => Vec::new(),
            Err(Some(problem)) => {
                warn(problem);
                Vec::new()
            }
        }
    }

    fn publish(&self, learned: &[SharedEntry]) {
        if learned.is_empty() {
            return;
        }
        let Some(_locked) = self.lock() else { return };
        let path = self.path("tags");
        let now = unix_now();
        let mut entries = read_tags_file(&path, &self.hash).unwrap_or_default();
        entries.retain(|(href, _, _, expires)| *expires > now && !learned.iter().any(|(h, ..)| h == href));
        entries.extend(learned.iter().filter(|(href, name, ..)| href.len() + name.len() <= MAX_ENTRY_BYTES).cloned());
        if entries.len() > MAX_ENTRIES {
            entries.sort_by(|a, b| a.2.total_cmp(&b.2));
            entries.drain(..entries.len() - MAX_ENTRIES);
        }
        remove_leftovers(&self.dir, &format!(".joinblock-an-{}.tags.", self.hash));
        let rows: Vec<Value> = entries.iter().map(|(h, n, l, e)| json!([h, n, l, e])).collect();
        let body = json!({"format": TAGS_FORMAT, "group": self.hash, "entries": rows}).to_string();
        if let Err(problem) = replace(&self.dir, &path, body.as_bytes()) {
            warn(problem);
        }
    }
}

struct Locked {
    file: File,
    path: PathBuf,
}

impl Locked {
    /// `(last, blocked)`, clamped to what a writer could have left by `now` (the module's
    /// invariants); a line that does not parse, or that had to be clamped, is rewritten.
    fn read_pace(&mut self, now: f64, interval: f64) -> Result<(f64, f64), ()> {
        let mut text = String::new();
        let read = self.file.seek(SeekFrom::Start(0)).and_then(|_| (&self.file).take(256).read_to_string(&mut text));
        let parsed = read.ok().and_then(|_| {
            let rest = text.strip_suffix('\n')?.strip_prefix(PACE_MAGIC)?;
            let mut numbers = rest.split(' ').skip(1).map(|n| n.parse::<f64>().ok().filter(|v| v.is_finite()));
            let (last, blocked) = (numbers.next()??, numbers.next()??);
            numbers.next().is_none().then_some((last, blocked))
        });
        let Some((last, blocked)) = parsed else {
            if !text.is_empty() {
                warn(format!("{}: not a pace line; rewritten", self.path.display()));
            }
            return Ok((0.0, 0.0));
        };
        let clamped = (last.min(now + interval), blocked.min(now + MAX_BLOCK));
        if clamped != (last, blocked) {
            warn(format!("{}: times ahead of this host's clock (stepped back?); clamped", self.path.display()));
            self.write_pace(clamped.0, clamped.1).map_err(|_| ())?;
        }
        Ok(clamped)
    }

    fn write_pace(&mut self, last: f64, blocked: f64) -> std::io::Result<()> {
        let line = format!("{PACE_MAGIC} {last:.6} {blocked:.6}\n");
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(line.as_bytes())?;
        self.file.set_len(line.len() as u64)
    }
}

/// Opens `path` without following a symlink, refusing anything but a regular file owned by
/// this process's effective user.
fn open_owned(path: &Path, create: bool) -> Result<File, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{}: a symbolic link; ignored", path.display()),
            _ => format!("{}: cannot open ({e}); ignored", path.display()),
        })?;
    let meta = file.metadata().map_err(|e| format!("{}: cannot inspect ({e}); ignored", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{}: not a regular file; ignored", path.display()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!("{}: owned by uid {}, not by this user (uid {me}); ignored", path.display(), meta.uid()));
    }
    Ok(file)
}

/// `Err(None)`: no file; `Err(Some(problem))`: a file that is not to be trusted.
fn read_tags_file(path: &Path, hash: &str) -> Result<Vec<SharedEntry>, Option<String>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Err(None);
    }
    let file = open_owned(path, false).map_err(Some)?;
    let mut body = Vec::new();
    (&file).take(MAX_FILE_BYTES + 1).read_to_end(&mut body).map_err(|e| Some(format!("{}: cannot read ({e}); ignored", path.display())))?;
    if body.len() as u64 > MAX_FILE_BYTES {
        return Err(Some(format!("{}: larger than {} MiB; ignored", path.display(), MAX_FILE_BYTES >> 20)));
    }
    parse_tags(&body, hash).ok_or_else(|| Some(format!("{}: not a joinblock tags file (corrupt or truncated); ignored", path.display())))
}

/// The entries of a tags file, or `None` when any part of it is not as documented.
pub fn parse_tags(body: &[u8], hash: &str) -> Option<Vec<SharedEntry>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if value.get("format")?.as_str()? != TAGS_FORMAT || value.get("group")?.as_str()? != hash {
        return None;
    }
    let rows = value.get("entries")?.as_array()?;
    if rows.len() > MAX_ENTRIES {
        return None;
    }
    rows.iter()
        .map(|row| {
            let row = row.as_array().filter(|r| r.len() == 4)?;
            let (href, name) = (row[0].as_str()?, row[1].as_str()?);
            let (learned, expires) = (row[2].as_f64()?, row[3].as_f64()?);
            (href.len() + name.len() <= MAX_ENTRY_BYTES).then(|| (href.to_owned(), name.to_owned(), learned, expires))
        })
        .collect()
}

/// Removes this user's temporary files named `prefix…` in `dir` left by a process killed while
/// publishing ([`crate::leftover`]): the extension's and the polyfill's.
fn remove_leftovers(dir: &Path, prefix: &str) {
    let Ok(listing) = std::fs::read_dir(dir) else { return };
    for item in listing.flatten() {
        crate::leftover::remove_if_left(&item, prefix);
    }
}

/// Writes `body` to a new temporary file in `dir` and renames it over `path`.
fn replace(dir: &Path, path: &Path, body: &[u8]) -> Result<(), String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tags");
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(&temp)
    };
    // A leftover of a process with this pid that died mid-write (or anything planted there):
    // removing a name never follows it.
    let mut file = open().or_else(|_| {
        let _ = std::fs::remove_file(&temp);
        open()
    });
    let result = match &mut file {
        Ok(file) => file.write_all(body).and_then(|_| std::fs::rename(&temp, path)),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    };
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("{}: cannot publish ({e})", path.display())
    })
}

/// What `php --ri` shows: the tags files in `dir` and their entries, and the files ignored.
pub fn inspect(dir: &Path) -> (usize, usize, Vec<String>) {
    let (mut files, mut entries, mut problems) = (0, 0, Vec::new());
    let Ok(listing) = std::fs::read_dir(dir) else { return (0, 0, problems) };
    for item in listing.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(hash) = name.strip_prefix("joinblock-an-").and_then(|n| n.strip_suffix(".tags")) else { continue };
        match read_tags_file(&item.path(), hash) {
            Ok(found) => {
                files += 1;
                entries += found.len();
            }
            Err(Some(problem)) => problems.push(problem),
            Err(None) => {}
        }
    }
    (files, entries, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("joinblock-shared-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn published_entries_are_read_back_and_merged() {
        let dir = scratch("merge");
        let store = Store::new(&dir, "http://127.0.0.1:1/api/v2/ abc");
        // Whole seconds: serde_json (without float_roundtrip) may read the last bit of a long
        // fraction back differently, a sub-nanosecond difference that is no concern here.
        let later = (unix_now() + 600.0).round();
        store.publish(&[("http://x/tags/1".into(), "member".into(), 1.0, later)]);
        store.publish(&[("http://x/tags/2".into(), "donor".into(), 2.0, later), ("http://x/tags/1".into(), "members".into(), 3.0, later)]);
        let mut read = store.read_tags();
        read.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(read, vec![("http://x/tags/1".into(), "members".into(), 3.0, later), ("http://x/tags/2".into(), "donor".into(), 2.0, later)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn slots_are_spaced_and_a_push_back_delays_them() {
        let dir = scratch("pace");
        let store = Store::new(&dir, "g");
        let Ok(Slot::Taken(first)) = store.reserve(0.25, f64::INFINITY) else { panic!("a first slot") };
        let Ok(Slot::Taken(second)) = store.reserve(0.25, f64::INFINITY) else { panic!("a second slot") };
        assert!((second - first - 0.25).abs() < 1e-3);
        // A third would lie more than one interval ahead: not taken, asked again later.
        let Ok(Slot::Later(again)) = store.reserve(0.25, f64::INFINITY) else { panic!("come back later") };
        assert!((again - second).abs() < 1e-3);
        store.push_back(first + 5.0).unwrap();
        // The file keeps microseconds.
        let Ok(Slot::Later(again)) = store.reserve(0.25, f64::INFINITY) else { panic!("held back") };
        assert!(again >= first + 4.75 - 1e-6);
        assert_eq!(store.reserve(0.25, first + 1.0), Ok(Slot::Late), "past the deadline nothing is taken");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn times_ahead_of_the_clock_are_clamped() {
        let dir = scratch("clock");
        let store = Store::new(&dir, "g");
        let now = unix_now();
        std::fs::write(store.path("pace"), format!("{PACE_MAGIC} {:.6} {:.6}\n", now + 3600.0, now + 86400.0)).unwrap();
        let Ok(Slot::Later(again)) = store.reserve(0.25, f64::INFINITY) else { panic!("held back by the block") };
        assert!(again <= unix_now() + MAX_BLOCK, "no block longer than the longest Retry-After");
        std::fs::write(store.path("pace"), format!("{PACE_MAGIC} {:.6} 0\n", now + 3600.0)).unwrap();
        // Clamped to one interval ahead, as another process's reservation could be.
        let Ok(Slot::Later(again)) = store.reserve(0.25, f64::INFINITY) else { panic!("after the clamped slot") };
        assert!(again <= unix_now() + 0.25 + 1e-3, "no slot further ahead than one interval");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_and_symlinks_are_ignored() {
        let dir = scratch("garbage");
        let store = Store::new(&dir, "g");
        std::fs::write(store.path("tags"), b"{\"format\":\"joinblock-tags 1\",\"gro").unwrap();
        assert!(store.read_tags().is_empty());
        std::fs::remove_file(store.path("tags")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", store.path("pace")).unwrap();
        assert_eq!(store.reserve(0.25, f64::INFINITY), Err(()));
        assert!(warnings().iter().any(|w| w.contains("symbolic link")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
