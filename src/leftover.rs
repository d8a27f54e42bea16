//! Temporary files that a process killed mid-write left in a directory we write in, which
//! nothing else would ever remove: the shared state's publishing files, and the polyfill's
//! new lock files (made under a temporary name, then linked to their path).

use std::{fs::DirEntry, os::unix::fs::MetadataExt, time::Duration};

/// A temporary file older than this was left by a writer that died: writing one takes
/// milliseconds.
const AGE: Duration = Duration::from_secs(60);

/// Removes `entry` if its name starts with `prefix` and it is this user's and older than
/// [`AGE`]; true when it did. Removing a name never follows it, and never touches what another
/// name of the same file (a lock path) holds.
pub fn remove_if_left(entry: &DirEntry, prefix: &str) -> bool {
    if !entry.file_name().to_str().is_some_and(|name| name.starts_with(prefix)) {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let old = entry
        .metadata()
        .is_ok_and(|meta| meta.uid() == me && meta.modified().is_ok_and(|at| at.elapsed().is_ok_and(|age| age > AGE)));
    old && std::fs::remove_file(entry.path()).is_ok()
}
