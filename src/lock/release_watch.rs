//! Waking a timed waiter when a lock file may have been released, instead of polling.
//!
//! A holder releases by unlinking the name and then unlocking and closing (see `file.rs`), so an
//! inotify watch on the lock directory for the name's `IN_DELETE`/`IN_MOVED_FROM` sees every
//! release of a live holder. Closes are not watched: every waiter closes a descriptor when it
//! starts again, and waking all the others for each of those made the waits of 8 processes
//! worse than blocking ones. A holder that dies without unlinking is noticed by the waiter's
//! periodic try instead (`file.rs` caps each wait). The watch is set up, and events from before
//! it drained, *before* the try that follows it, so a release between a failed try and the
//! wait cannot be missed.
//!
//! A thread keeps its inotify instance (per process: a forked child makes its own) from its
//! first wait until its request ends ([`end_of_request`]): closing an instance waits for an
//! RCU grace period, measured at about 6 ms, which would land on every contended acquisition,
//! while an instance kept for good by every idle worker counts against
//! `fs.inotify.max_user_instances` (128 by default), shared by all processes of PHP's user: a
//! pool larger than that took them all, and the user's other programs could make none. So
//! only threads inside a request that waited hold one. When none can be made, waits poll
//! (`php --ri joinblock` says so: [`probe`]). Watches are removed after each wait, so no events
//! queue up between waits.

use std::{
    cell::RefCell,
    ffi::{CString, OsStr, OsString},
    os::{fd::{AsRawFd, FromRawFd, OwnedFd, RawFd}, unix::ffi::OsStrExt},
    path::Path,
    time::{Duration, Instant},
};

const EVENTS: u32 = libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_DELETE_SELF;

thread_local! {
    /// This thread's inotify instance, with the pid it was made in.
    static INOTIFY: RefCell<Option<(u32, OwnedFd)>> = const { RefCell::new(None) };
}

/// This thread's inotify descriptor, made on first use.
fn inotify() -> Option<RawFd> {
    INOTIFY.with_borrow_mut(|slot| {
        let pid = std::process::id();
        if slot.as_ref().is_none_or(|(owner, _)| *owner != pid) {
            // SAFETY: a new descriptor, owned from here on.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            *slot = (fd >= 0).then(|| (pid, unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        slot.as_ref().map(|(_, fd)| fd.as_raw_fd())
    })
}

/// Closes this thread's instance, if it made one: its request is over.
pub fn end_of_request() {
    INOTIFY.with_borrow_mut(|slot| *slot = None);
}

/// Whether this process can make an inotify instance now, and the OS's reason if not.
pub fn probe() -> std::io::Result<()> {
    // SAFETY: a new descriptor, closed at once by OwnedFd.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

pub struct ReleaseWatch {
    inotify: RawFd,
    watch: i32,
    name: OsString,
}

impl ReleaseWatch {
    /// A watch on `path`'s directory for `path`'s name; `None` where inotify is not to be had
    /// (no more instances or watches allowed): the caller polls instead.
    pub fn new(path: &Path) -> Option<ReleaseWatch> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        let dir = CString::new(if dir.as_os_str().is_empty() { OsStr::new(".") } else { dir.as_os_str() }.as_bytes()).ok()?;
        let inotify = inotify()?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let watch = unsafe { libc::inotify_add_watch(inotify, dir.as_ptr(), EVENTS) };
        if watch < 0 {
            return None;
        }
        let watch = ReleaseWatch { inotify, watch, name: name.to_owned() };
        // What an earlier wait left queued says nothing about now.
        watch.drain_names_ours();
        Some(watch)
    }

    /// Returns when an event concerns the lock file (true), or when `limit` has passed (false).
    pub fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut poll = libc::pollfd { fd: self.inotify, events: libc::POLLIN, revents: 0 };
            // Rounded up: a wait never ends before its deadline.
            let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one pollfd, as counted.
            if unsafe { libc::poll(&mut poll, 1, millis) } > 0 && self.drain_names_ours() {
                return true;
            }
        }
    }

    /// Reads every queued event; true if one is about the lock file (or some were lost).
    fn drain_names_ours(&self) -> bool {
        let mut ours = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer of the length given.
            let len = unsafe { libc::read(self.inotify, buf.as_mut_ptr().cast(), buf.len()) };
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

impl Drop for ReleaseWatch {
    fn drop(&mut self) {
        // SAFETY: removes the watch this value added, on the thread's live instance.
        unsafe { libc::inotify_rm_watch(self.inotify, self.watch) };
    }
}
