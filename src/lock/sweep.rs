//! Keeping the lock directory bounded while lock files outlive their locks.
//!
//! A release leaves its file in place for the next acquisition of that member, which then
//! opens it instead of creating it (creating and unlinking a file on every lock cost 2 to 6
//! times Symfony's FlockStore, measured). A site locks each member once in a while, so without
//! a sweep the directory would keep one file per member ever locked.
//!
//! # The bound, and why it holds
//!
//! Each process sweeps a directory at its first release there, then after every
//! [`period`] files it created there, and after [`INTERVAL`] at its next release. A sweep
//! removes the oldest idle lock files (by change time: when the file was made) until at most
//! `keep` are left, spending at most [`BUDGET`] on it; one that runs out of budget above the
//! bound makes the process's next release sweep again. So once a process has swept, the
//! directory holds at most `keep` idle files, plus fewer than [`period`] made since by each
//! process, plus one per lock held; where removing is slower than making (a disk file system
//! under a burst of new members), it goes back under that within one sweep per release.
//!
//! A file is removed only by the party that holds its lock, and only while its name still
//! names it: the protocol's own rule (`file.rs`), so a sweep never breaks a lock. An acquirer
//! that opened the file before it went finds the name gone after its `flock` and starts again.
//! A file that holds a waiter's fresh token (`turn.rs`) is not idle, and stays.

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use super::NAME_PREFIX;

/// How often a process sweeps a directory it locks in, whatever it creates.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// The most time one sweep spends removing; what is left goes at the next.
pub const BUDGET: Duration = Duration::from_millis(50);
/// `joinblock.lock_files_kept`'s default.
pub const KEEP_DEFAULT: usize = 1024;

/// Files a process creates in a directory between two sweeps of it: a quarter of what is kept,
/// between 1 (keep 0 to 3: every creation) and 256.
pub fn period(keep: usize) -> usize {
    (keep / 4).clamp(1, 256)
}

/// A directory this process locks in: when it last swept it, and what it made since.
struct Seen {
    dir: PathBuf,
    swept: Instant,
    created: usize,
}

/// A handful of directories per process, at most: the list is cleared when it would grow past
/// that, which at worst sweeps a directory early.
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// Counts a lock file this process created in `dir`.
pub fn created(dir: &Path) {
    if let Some(seen) = SEEN.lock().iter_mut().find(|seen| seen.dir.as_os_str() == dir.as_os_str()) {
        seen.created += 1;
    }
}

/// After a release in `dir`: sweeps it if it is due. Never fails: a sweep that cannot read the
/// directory or remove a file leaves it for the next.
pub fn after_release(dir: &Path, keep: usize) {
    let now = Instant::now();
    {
        let mut seen = SEEN.lock();
        match seen.iter_mut().find(|seen| seen.dir.as_os_str() == dir.as_os_str()) {
            Some(seen) if seen.created < period(keep) && now.duration_since(seen.swept) < INTERVAL => return,
            Some(seen) => (seen.swept, seen.created) = (now, 0),
            None => {
                if seen.len() >= 16 {
                    seen.clear();
                }
                seen.push(Seen { dir: dir.to_owned(), swept: now, created: 0 });
            }
        }
    }
    let swept = sweep(dir, keep);
    if swept.found - swept.removed > keep {
        // Out of budget with files still above the bound: the next release sweeps again.
        if let Some(seen) = SEEN.lock().iter_mut().find(|seen| seen.dir.as_os_str() == dir.as_os_str()) {
            seen.created = period(keep);
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Lock files found.
    pub found: usize,
    /// Of those, removed.
    pub removed: usize,
}

/// Removes the oldest idle lock files of `dir` until at most `keep` are left, or [`BUDGET`]
/// is spent.
pub fn sweep(dir: &Path, keep: usize) -> Swept {
    let started = Instant::now();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Swept::default();
    };
    let mut files: Vec<(i64, i64, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            is_lock_name(&entry.file_name()).then(|| entry.path())
        })
        .filter_map(|path| {
            let meta = std::fs::symlink_metadata(&path).ok()?;
            Some((meta.ctime(), meta.ctime_nsec(), path))
        })
        .collect();
    let mut swept = Swept { found: files.len(), removed: 0 };
    if files.len() <= keep {
        return swept;
    }
    files.sort_unstable();
    let excess = files.len() - keep;
    for (_, _, path) in files {
        if swept.removed == excess || started.elapsed() >= BUDGET {
            break;
        }
        if super::file::remove_if_idle(&path) {
            swept.removed += 1;
        }
    }
    swept
}

/// How many lock files `dir` holds now (`php --ri`).
pub fn count(dir: &Path) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(dir)?.filter(|entry| entry.as_ref().is_ok_and(|e| is_lock_name(&e.file_name()))).count())
}

/// `join-lock-` and 40 lowercase hex digits: the plugin's lock files, and nothing else the
/// directory may hold (the shared state's files, another program's).
fn is_lock_name(name: &OsStr) -> bool {
    name.as_bytes()
        .strip_prefix(NAME_PREFIX.as_bytes())
        .is_some_and(|hex| hex.len() == 40 && hex.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_plugins_lock_names_are_swept() {
        assert!(is_lock_name(OsStr::new("join-lock-2e30bbc379fa99550111aba3e703a8ec9524b9df")));
        assert!(!is_lock_name(OsStr::new("join-lock-2E30BBC379FA99550111ABA3E703A8EC9524B9DF")));
        assert!(!is_lock_name(OsStr::new("join-lock-2e30bbc379fa99550111aba3e703a8ec9524b9d")));
        assert!(!is_lock_name(OsStr::new("joinblock-an-0123.pace")));
        assert!(!is_lock_name(OsStr::new(".joinblock-new-x")));
    }

    #[test]
    fn the_period_is_a_quarter_of_what_is_kept_within_1_and_256() {
        assert_eq!([period(0), period(3), period(4), period(1024), period(100_000)], [1, 1, 1, 256, 256]);
    }
}
