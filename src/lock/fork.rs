//! Descriptors a forked child must not keep: the sockets of MySQL connections (a child's copy
//! would keep the parent's session, and its locks, alive after the parent dies; its goodbye
//! would end them while the parent lives) and the descriptors of held file locks (`flock`
//! belongs to the open file description, which the child's copy keeps locked after the parent
//! dies).
//!
//! # Invariant, and why it holds
//!
//! Every such descriptor of the process is listed here from the moment it matters (a socket
//! once connected, a lock file's descriptor once locked) until just before it is closed, and
//! a forked child, before it runs any code of its own, points each one listed at `/dev/null`:
//! - after `fork` the child runs only the forking thread, and a lock another thread held at
//!   that moment would stay held in the child; so the list is read and changed without any
//!   lock: a singly linked list that only grows, of entries reused, never freed (at most as
//!   many as descriptors were ever listed at once);
//! - an owner unlists its descriptor before closing it, so the handler never touches a
//!   number the process has reused for something else;
//! - `dup3` over the descriptor, not `close`: the child's code that owns the number (a
//!   `File`, a client) can still close it normally, and sends nothing anywhere.

use std::{
    ptr,
    sync::{
        atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering},
        Once,
    },
};

static HANDLER: Once = Once::new();

/// This process's id, once asked; 0 until then, and again in a forked child (the handler
/// forgets it). glibc asks the kernel on every `getpid()`, and a lock asks three times.
static PID: AtomicU32 = AtomicU32::new(0);

fn install_handler() {
    HANDLER.call_once(|| {
        // SAFETY: registers a handler that only touches atomics and descriptors.
        unsafe { libc::pthread_atfork(None, None, Some(detach_all)) };
    });
}

/// This process's id, asked of the kernel once per process.
pub fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            // The handler first: a fork after the store must make the child forget it.
            install_handler();
            let pid = std::process::id();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// One entry of the list: a descriptor, or -1 when free for the next.
#[derive(Debug)]
pub struct Listed {
    fd: AtomicI32,
    /// Set before the entry is published, never changed after.
    next: AtomicPtr<Listed>,
}

static LIST: AtomicPtr<Listed> = AtomicPtr::new(ptr::null_mut());

impl Listed {
    /// Removes `fd` from the list; before it is closed. Only its own entry: in a forked child
    /// the handler emptied it, and another descriptor may have taken it since.
    pub fn unlist(&self, fd: i32) {
        let _ = self.fd.compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Lists `fd`, in a free entry if there is one, for the child handler of any later fork.
pub fn list(fd: i32) -> &'static Listed {
    install_handler();
    let mut entry = LIST.load(Ordering::Acquire);
    // SAFETY: entries are leaked boxes, never freed.
    while let Some(listed) = unsafe { entry.as_ref() } {
        if listed.fd.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
            return listed;
        }
        entry = listed.next.load(Ordering::Acquire);
    }
    let listed: &'static Listed = Box::leak(Box::new(Listed { fd: AtomicI32::new(fd), next: AtomicPtr::new(ptr::null_mut()) }));
    let mut head = LIST.load(Ordering::Acquire);
    loop {
        listed.next.store(head, Ordering::Release);
        match LIST.compare_exchange(head, ptr::from_ref(listed).cast_mut(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return listed,
            Err(now) => head = now,
        }
    }
}

/// In a forked child: the parent's pid is forgotten, and every inherited descriptor listed is
/// detached.
extern "C" fn detach_all() {
    PID.store(0, Ordering::Relaxed);
    let mut entry = LIST.load(Ordering::Acquire);
    // SAFETY: entries are leaked boxes, never freed.
    while let Some(listed) = unsafe { entry.as_ref() } {
        let fd = listed.fd.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            detach(fd);
        }
        entry = listed.next.load(Ordering::Acquire);
    }
}

/// Closes what `fd` refers to by pointing `fd` at `/dev/null`: its owner can still close it
/// normally, and what it writes (a client's goodbye) goes nowhere instead of ending a session
/// someone else holds locks on, or raising SIGPIPE on a dead socket. Uses only calls that are
/// safe in a fork handler.
pub fn detach(fd: i32) {
    // SAFETY: plain syscalls on descriptors; `fd` is its caller's own.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup3(null, fd, libc::O_CLOEXEC);
            libc::close(null);
        }
    }
}
