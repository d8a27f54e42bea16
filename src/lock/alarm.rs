//! A bound for a blocking system call that has none of its own. `connect()` on a Unix socket
//! whose listen backlog is full (a wedged or stopped server) waits in the kernel until the
//! server accepts, and the mysql crate connects Unix sockets with std's `UnixStream::connect`,
//! which takes no timeout; `flock(LOCK_EX)` takes none either, and a lock's timed wait is a
//! blocking `flock` so that the kernel hands the lock over at the very unlock (see `file.rs`).
//! An [`Alarm`] makes the kernel interrupt that wait.
//!
//! # Invariant, and why it holds
//!
//! The signal reaches only the thread that armed the alarm, at most once, and never after the
//! alarm is dropped:
//! - the timer is this thread's (`SIGEV_THREAD_ID`), and an alarm is armed only while this
//!   thread does not block the signal (below);
//! - [`Alarm::arm`] fires once (no interval), so a call that retries on `EINTR` is
//!   interrupted once and then ends by its own timeout; [`Alarm::arm_repeating`] fires again
//!   every interval after that, for a caller that checks its own deadline after each `EINTR`;
//! - `timer_delete` is a system call, so a signal still pending when the alarm is dropped is
//!   delivered, to a handler that does nothing, before the call returns;
//! - the handler does nothing and is installed without `SA_RESTART`, so the blocked call
//!   returns `EINTR` instead of resuming; it is installed only while the signal has its
//!   default disposition, and an alarm is armed only while the handler is still ours, so no
//!   other code's handler is ever run by it (nor the default action, which ends the process).
//!
//! And the signal stays the script's whenever the script (or its server) shows it uses it:
//! no alarm is armed while the thread blocks the signal. A script that blocks it may have one
//! pending, to collect with `sigtimedwait`, and unblocking it for a wait would hand that one to
//! the do-nothing handler; so would a signal sent to it while the wait had it unblocked. The
//! caller then waits another way (a lock polls) or as it would have (a connect).
//!
//! The one gap: a signal that comes while the thread is not yet blocked interrupts nothing.
//! The alarm fires a whole bound after arming, so that needs the thread kept off the CPU for
//! that long between arming and the call; a repeating alarm closes it at the next interval.

use std::{mem, ptr, time::Duration};

extern "C" fn do_nothing(_: libc::c_int) {}

/// Why no alarm can be armed in this process or thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Other code (the script's `pcntl_signal`, another extension) handles the signal.
    HandledElsewhere,
    /// The calling thread blocks the signal (the script's `pcntl_sigprocmask`, a server's
    /// worker thread).
    Blocked,
}

/// The signal, with [`do_nothing`] as its handler, when this thread may use it.
fn signal() -> Result<libc::c_int, Unavailable> {
    let signo = libc::SIGRTMAX();
    // SAFETY: sigaction and pthread_sigmask read and write the structs they are given; the
    // handler is async-signal-safe.
    unsafe {
        let mut mask: libc::sigset_t = mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, ptr::null(), &mut mask) != 0 || libc::sigismember(&mask, signo) != 0 {
            return Err(Unavailable::Blocked);
        }
        let mut current: libc::sigaction = mem::zeroed();
        if libc::sigaction(signo, ptr::null(), &mut current) != 0 {
            return Err(Unavailable::HandledElsewhere);
        }
        if current.sa_sigaction == do_nothing as *const () as libc::sighandler_t {
            return Ok(signo);
        }
        if current.sa_sigaction != libc::SIG_DFL {
            return Err(Unavailable::HandledElsewhere);
        }
        let mut action: libc::sigaction = mem::zeroed();
        action.sa_sigaction = do_nothing as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signo, &action, ptr::null_mut()) == 0 {
            Ok(signo)
        } else {
            Err(Unavailable::HandledElsewhere)
        }
    }
}

/// Whether an alarm can be armed in this thread: its signal is free or already ours, and
/// not blocked here.
pub fn available() -> Result<(), Unavailable> {
    signal().map(|_| ())
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec { tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t, tv_nsec: d.subsec_nanos() as _ }
}

/// Interrupts this thread's blocking call once `after` has passed; disarmed when dropped.
/// Not `Send`: it belongs to the thread that armed it.
pub struct Alarm {
    timer: libc::timer_t,
}

impl Alarm {
    /// `None` when no alarm can be set (the signal is another handler's or this thread blocks
    /// it, or no timer is left):
    /// the call then waits as it would have.
    pub fn arm(after: Duration) -> Option<Alarm> {
        Alarm::arm_repeating(after, Duration::ZERO)
    }

    /// As [`Alarm::arm`], then again every `every` (zero: never again).
    pub fn arm_repeating(after: Duration, every: Duration) -> Option<Alarm> {
        let signo = signal().ok()?;
        // SAFETY: timer calls on a timer created here, with structs they only read or fill.
        unsafe {
            let mut event: libc::sigevent = mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = signo;
            event.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
                return None;
            }
            let alarm = Alarm { timer };
            let when = libc::itimerspec { it_interval: timespec(every), it_value: timespec(after.max(Duration::from_nanos(1))) };
            (libc::timer_settime(timer, 0, &when, ptr::null_mut()) == 0).then_some(alarm)
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        // SAFETY: the timer created by `arm`, deleted once (a signal still pending is
        // delivered to the do-nothing handler before the call returns).
        unsafe {
            libc::timer_delete(self.timer);
        }
    }
}
