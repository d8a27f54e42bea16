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
//! removes idle lock files until at most `keep` of those it listed are left. It always removes
//! as many as its process made since its last sweep (its share: fewer than [`period`]), then
//! goes on for at most [`BUDGET`]; one that its budget stops while it is still removing makes
//! the process's next release sweep again. So no process makes files faster than its sweeps
//! remove them, and once a process has swept, the directory holds at most `keep` idle files,
//! plus fewer than [`period`] made since by each process, plus one per lock held. Only a sweep
//! cut short by its budget (a directory far above the bound: `keep` lowered, or a process
//! stalled in its sweep while others made files) leaves more, and the next releases' sweeps
//! bring it down.
//!
//! A file is removed only by the party that holds its lock, and only while its name still
//! names it: the protocol's own rule (`file.rs`), so a sweep never breaks a lock. An acquirer
//! that opened the file before it went finds the name gone after its `flock` and starts again.
//! A file that holds a waiter's fresh token (`turn.rs`) is not idle, and stays.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use super::{file::Removal, NAME_PREFIX};

/// How often a process sweeps a directory it locks in, whatever it creates.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// How long a sweep goes on removing once its share is done; what is left goes at the next.
pub const BUDGET: Duration = Duration::from_millis(50);
/// How the polyfill names a new lock file before it links it to its path.
const NEW_FILE_PREFIX: &str = ".joinblock-new-";
/// `joinblock.lock_files_kept`'s default.
pub const KEEP_DEFAULT: usize = 1024;

/// Files a process creates in a directory between two sweeps of it: a quarter of what is kept,
/// between 1 (keep 0 to 3: every creation) and 256.
pub fn period(keep: usize) -> usize {
    (keep / 4).clamp(1, 256)
}

/// A directory this process locks in: when it last swept it, what it made since, and whether
/// its budget cut its last sweep short above the bound.
struct Seen {
    dir: PathBuf,
    swept: Instant,
    created: usize,
    unfinished: bool,
}

/// A handful of directories per process, at most: the list is cleared when it would grow past
/// that, which at worst sweeps a directory early.
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

fn seen_mut<'a>(seen: &'a mut [Seen], dir: &Path) -> Option<&'a mut Seen> {
    seen.iter_mut().find(|seen| seen.dir.as_os_str() == dir.as_os_str())
}

/// Counts a lock file this process created in `dir`.
pub fn created(dir: &Path) {
    if let Some(seen) = seen_mut(&mut SEEN.lock(), dir) {
        seen.created += 1;
    }
}

/// After a release in `dir`: sweeps it if it is due. Never fails: a sweep that cannot read the
/// directory or remove a file leaves it for the next.
pub fn after_release(dir: &Path, keep: usize) {
    let now = Instant::now();
    let share = {
        let mut seen = SEEN.lock();
        match seen_mut(&mut seen, dir) {
            Some(seen) if !seen.unfinished && seen.created < period(keep) && now.duration_since(seen.swept) < INTERVAL => return,
            Some(seen) => {
                seen.swept = now;
                std::mem::take(&mut seen.created)
            }
            None => {
                if seen.len() >= 16 {
                    seen.clear();
                }
                seen.push(Seen { dir: dir.to_owned(), swept: now, created: 0, unfinished: false });
                0
            }
        }
    };
    let swept = sweep(dir, keep, share);
    if let Some(seen) = seen_mut(&mut SEEN.lock(), dir) {
        // Cut short above the bound while removing: the next release sweeps again. Not a sweep
        // that found the files it tried held (a process holding many locks at once, which it
        // then releases one by one): sweeping again at each release would retry them all.
        seen.unfinished = swept.cut_short && swept.removed > 0;
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Lock files listed.
    pub found: usize,
    /// Of those, removed by this sweep.
    pub removed: usize,
    /// Of those, gone by its end: removed by it, or by another sweep under way.
    pub gone: usize,
    /// Stopped by its budget before it had tried every file listed.
    pub cut_short: bool,
}

/// Removes idle lock files of `dir`, in the order the directory lists them, until at most
/// `keep` of those listed are left: at least `share` of them (or all it can), then for as long
/// as [`BUDGET`] allows.
///
/// Directory order, not age: nothing records when a kept file was last locked (its change time
/// is when it was made), and listing without a `stat` per file is several times cheaper. A file
/// removed while its member is still active costs that member one new file. Files that another
/// process's sweep removed first count as gone, so overlapping sweeps stop together instead of
/// each removing its whole excess.
pub fn sweep(dir: &Path, keep: usize, share: usize) -> Swept {
    sweep_within(dir, keep, share, BUDGET)
}

fn sweep_within(dir: &Path, keep: usize, share: usize, budget: Duration) -> Swept {
    let started = Instant::now();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Swept::default();
    };
    // The polyfill's new lock files, left with two names by a process killed while linking
    // one (php/polyfill/support.php): removing the temporary name leaves the lock file with one,
    // which lets sweeps remove it again.
    let paths: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| !crate::leftover::remove_if_left(entry, NEW_FILE_PREFIX) && is_lock_name(&entry.file_name()))
        .map(|entry| entry.path())
        .collect();
    let mut swept = Swept { found: paths.len(), ..Swept::default() };
    let excess = paths.len().saturating_sub(keep);
    for path in paths {
        if swept.gone == excess {
            break;
        }
        if swept.removed >= share && started.elapsed() >= budget {
            swept.cut_short = true;
            break;
        }
        match super::file::remove_if_idle(&path) {
            Removal::Removed => (swept.removed, swept.gone) = (swept.removed + 1, swept.gone + 1),
            Removal::Gone => swept.gone += 1,
            Removal::Stays => {}
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
    fn a_sweep_removes_its_share_whatever_its_budget_and_counts_files_already_gone() {
        let dir = std::env::temp_dir().join(format!("joinblock-sweep-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let names: Vec<PathBuf> = (0..6).map(|n| dir.join(format!("{NAME_PREFIX}{n:040x}"))).collect();
        for name in &names {
            std::fs::File::create(name).unwrap();
        }
        let swept = sweep_within(&dir, 0, 2, Duration::ZERO);
        assert_eq!((swept.found, swept.removed, swept.gone, swept.cut_short), (6, 2, 2, true), "out of budget at once, yet its share went");
        assert_eq!(count(&dir).unwrap(), 4);
        let removed = names.iter().find(|name| !name.exists()).unwrap();
        assert_eq!(super::super::file::remove_if_idle(removed), Removal::Gone, "listed, then removed by another sweep");
        let swept = sweep_within(&dir, 1, 0, BUDGET);
        assert_eq!((swept.found, swept.removed, swept.gone), (4, 3, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_period_is_a_quarter_of_what_is_kept_within_1_and_256() {
        assert_eq!([period(0), period(3), period(4), period(1024), period(100_000)], [1, 1, 1, 256, 256]);
    }
}
