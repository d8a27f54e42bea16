//! Waking a timed waiter when a lock file may have been released, instead of polling.
//!
//! A holder releases by unlinking the name and then unlocking and closing (see `file.rs`), and
//! a holder that dies closes its descriptor without unlinking. So an inotify watch on the lock
//! directory for the name's `IN_DELETE`/`IN_MOVED_FROM` and its `IN_CLOSE_*` sees every
//! release. Other waiters opening and closing the same file wake us too: a spurious wake only
//! costs one `flock` try. The watch is set up *before* the try that follows it, so a release
//! between a failed try and the wait cannot be missed.

use std::{
    ffi::{CString, OsStr, OsString},
    os::{fd::{AsRawFd, FromRawFd, OwnedFd}, unix::ffi::OsStrExt},
    path::Path,
    time::{Duration, Instant},
};

const EVENTS: u32 = libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_CLOSE_WRITE | libc::IN_CLOSE_NOWRITE | libc::IN_DELETE_SELF;

pub struct ReleaseWatch {
    inotify: OwnedFd,
    name: OsString,
}

impl ReleaseWatch {
    /// A watch on `path`'s directory for `path`'s name; `None` where inotify is not to be had
    /// (no more instances or watches allowed): the caller polls instead.
    pub fn new(path: &Path) -> Option<ReleaseWatch> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        let dir = CString::new(if dir.as_os_str().is_empty() { OsStr::new(".") } else { dir.as_os_str() }.as_bytes()).ok()?;
        // SAFETY: a new descriptor, owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid descriptor and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), dir.as_ptr(), EVENTS) } < 0 {
            return None;
        }
        Some(ReleaseWatch { inotify, name: name.to_owned() })
    }

    /// Returns when an event concerns the lock file, or when `limit` has passed.
    pub fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut poll = libc::pollfd { fd: self.inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // Rounded up: a wait never ends before its deadline.
            let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one pollfd, as counted.
            if unsafe { libc::poll(&mut poll, 1, millis) } > 0 && self.drain_names_ours() {
                return;
            }
        }
    }

    /// Reads every queued event; true if one is about the lock file (or some were lost).
    fn drain_names_ours(&self) -> bool {
        let mut ours = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer of the length given.
            let len = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if len <= 0 {
                return ours;
            }
            let mut at = 0;
            while at + std::mem::size_of::<libc::inotify_event>() <= len as usize {
                // SAFETY: the kernel writes whole events; read_unaligned copes with any offset.
                let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let start = at + std::mem::size_of::<libc::inotify_event>();
                let name = &buf[start..(start + event.len as usize).min(len as usize)];
                let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                ours |= event.mask & (libc::IN_Q_OVERFLOW | libc::IN_DELETE_SELF) != 0 || name == self.name.as_bytes();
                at = start + event.len as usize;
            }
        }
    }
}
