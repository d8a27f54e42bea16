//! Who holds a lock file, for the message of a waiter that gives up.
//!
//! The kernel already knows: `/proc/locks` lists every `flock` with the pid that took it and
//! the file's device and inode. So the holder writes nothing (a record in the lock file cost
//! every acquisition a page of tmpfs, +18 µs, measured), and only a waiter that times out
//! looks the holder up: its pid, what it is (php-fpm's workers are titled `php-fpm: pool
//! <name>`, anything else by its program name: never its arguments, which may hold an email).
//! How long it has held the lock is not known: lock files outlive their locks, and the holder
//! writes nothing. Any holder is found this way, the plugin's own PHP lock included. The file
//! is looked up by its device and inode, and where `/proc/locks` names another device than
//! the file's (btrfs subvolumes), by its mount's.

use std::{
    fs::File,
    os::unix::{ffi::OsStrExt, fs::MetadataExt, io::AsRawFd},
    path::{Path, PathBuf},
};

/// "pid 4242 (php-fpm: pool www)": who holds the flock on `file` now, if this
/// process may see it.
pub fn of(file: &File) -> Option<String> {
    let meta = file.metadata().ok()?;
    // btrfs gives each subvolume's files a device of their own, while /proc/locks names the
    // file system's, which is the mount's (as on any file system where the two differ).
    let mut devices = vec![(libc::major(meta.dev()), libc::minor(meta.dev()))];
    if let Some(mount) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
        .and_then(|path| mount_device(&std::fs::read_to_string("/proc/self/mountinfo").ok()?, &path))
    {
        devices.push(mount);
    }
    // A listing can miss a line (`read_proc_locks`): look three times before saying nothing.
    let pid = (0..3).find_map(|_| {
        let locks = read_proc_locks()?;
        devices.iter().find_map(|&(major, minor)| flock_holder(&locks, major, minor, meta.ino()))
    })?;
    Some(format!("pid {pid} ({})", process_name(pid)))
}

/// `/proc/locks`, read with as few `read` calls as it takes. The kernel lists it afresh for
/// each call, resuming by line number, so a lock taken or dropped between two calls shifts the
/// lines after it and one can be missed (seen in a test, while another thread of the process
/// locked and forked all the time). One call returns up to a page of lines listed at once.
/// Room is made first: into an empty string, `read_to_string` would read 32 bytes first.
fn read_proc_locks() -> Option<String> {
    use std::io::Read;
    let mut text = String::with_capacity(64 * 1024);
    File::open("/proc/locks").ok()?.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The pid holding a `FLOCK` on (major:minor, inode) in a `/proc/locks` listing; lines with
/// `->` are waiters.
fn flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    let file = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 4242 00:1a:12345 0 EOF"
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&file.as_str())).then(|| fields.get(4)?.parse().ok())?
    })
}

/// The device (major, minor) of the mount `path` lies on, from a `/proc/self/mountinfo`
/// listing: the deepest mount point that contains it. (With btrfs subvolumes of one file
/// system, the inode numbers of two subvolumes may coincide: the holder named is then a
/// guess among them, for a message only.)
fn mount_device(mountinfo: &str, path: &Path) -> Option<(u32, u32)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "36 35 0:40 / /srv/locks rw,relatime - btrfs /dev/vdb rw": decimal major:minor.
            let mut fields = line.split(' ');
            let (major, minor) = fields.nth(2)?.split_once(':')?;
            let point = unescape_octal(fields.nth(1)?);
            path.starts_with(&point).then(|| Some((point.as_os_str().len(), (major.parse().ok()?, minor.parse().ok()?))))?
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, device)| device)
}

/// mountinfo writes a space, tab, newline and backslash in a mount point as `\NNN` (octal).
fn unescape_octal(field: &str) -> PathBuf {
    let (bytes, mut out) = (field.as_bytes(), Vec::with_capacity(field.len()));
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], code) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// php-fpm's title for its workers, else the program's name.
fn process_name(pid: u32) -> String {
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let title = String::from_utf8_lossy(title.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
    if title.starts_with("php-fpm: pool ") {
        return title.trim().to_owned();
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or_else(|_| "unknown program".to_owned(), |comm| comm.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:1a:12345 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 777 00:1a:12345 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 00:1a:555 0 EOF\n";
        assert_eq!(flock_holder(locks, 0, 0x1a, 12345), Some(4242));
        assert_eq!(flock_holder(locks, 0, 0x1a, 555), None, "a POSIX lock is not ours");
        assert_eq!(flock_holder(locks, 8, 1, 12345), None, "another device");
    }

    #[test]
    fn the_mount_of_a_path_gives_its_device() {
        let mountinfo = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                         46 22 0:40 / /tmp/btr rw - btrfs /dev/loop0 rw\n\
                         47 22 0:41 / /srv/with\\040space rw - btrfs /dev/loop1 rw\n";
        assert_eq!(mount_device(mountinfo, Path::new("/tmp/btr/locks/join-lock-1")), Some((0, 40)));
        assert_eq!(mount_device(mountinfo, Path::new("/tmp/btrfs-not/x")), Some((254, 0)), "a prefix of a name is not a parent");
        assert_eq!(mount_device(mountinfo, Path::new("/srv/with space/x")), Some((0, 41)));
    }

    #[test]
    fn a_holder_in_this_process_is_found() {
        use fs2::FileExt;
        let path = std::env::temp_dir().join(format!("joinblock-unit-holder-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        file.lock_exclusive().unwrap();
        let shown = of(&file);
        std::fs::remove_file(&path).unwrap();
        let shown = shown.expect("this process's flock in /proc/locks");
        assert!(shown.starts_with(&format!("pid {} (", std::process::id())), "{shown}");
        assert!(shown.ends_with(")"), "{shown}");
    }
}
