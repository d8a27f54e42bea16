//! A bound for a blocking system call that has none of its own. `connect()` on a Unix socket
//! whose listen backlog is full (a wedged or stopped server) waits in the kernel until the
//! server accepts, and the mysql crate connects Unix sockets with std's `UnixStream::connect`,
//! which takes no timeout. An [`Alarm`] makes the kernel interrupt that wait.
//!
//! # Invariant, and why it holds
//!
//! The signal reaches only the thread that armed the alarm, at most once, and never after the
//! alarm is dropped:
//! - the timer is this thread's (`SIGEV_THREAD_ID`) and fires once (no interval), so a call
//!   that retries on `EINTR` is interrupted once and then ends by its own timeout;
//! - `timer_delete` is a system call, so a signal still pending when the alarm is dropped is
//!   delivered, to a handler that does nothing, before the call returns;
//! - the handler does nothing and is installed without `SA_RESTART`, so the blocked call
//!   returns `EINTR` instead of resuming; it is installed only while the signal has its
//!   default disposition, and an alarm is armed only while the handler is still ours, so no
//!   other code's handler is ever run by it (nor the default action, which ends the process).
//!
//! The one gap: a signal that comes while the thread is not yet blocked interrupts nothing.
//! The alarm fires a whole bound after arming, so that needs the thread kept off the CPU for
//! that long between arming and the call.

use std::{mem, ptr, time::Duration};

extern "C" fn do_nothing(_: libc::c_int) {}

/// The signal, with [`do_nothing`] as its handler; `None` when other code handles it.
fn signal() -> Option<libc::c_int> {
    let signo = libc::SIGRTMAX();
    // SAFETY: sigaction reads and writes the structs it is given; the handler is async-signal-safe.
    unsafe {
        let mut current: libc::sigaction = mem::zeroed();
        if libc::sigaction(signo, ptr::null(), &mut current) != 0 {
            return None;
        }
        if current.sa_sigaction == do_nothing as *const () as libc::sighandler_t {
            return Some(signo);
        }
        if current.sa_sigaction != libc::SIG_DFL {
            return None;
        }
        let mut action: libc::sigaction = mem::zeroed();
        action.sa_sigaction = do_nothing as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        (libc::sigaction(signo, &action, ptr::null_mut()) == 0).then_some(signo)
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec { tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t, tv_nsec: d.subsec_nanos() as _ }
}

/// Interrupts this thread's blocking call once `after` has passed; disarmed when dropped.
/// Not `Send`: it belongs to the thread that armed it.
pub struct Alarm(libc::timer_t);

impl Alarm {
    /// `None` when no alarm can be set (the signal is another handler's, or no timer is left):
    /// the call then waits as it would have.
    pub fn arm(after: Duration) -> Option<Alarm> {
        let signo = signal()?;
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
            let once = libc::itimerspec { it_interval: timespec(Duration::ZERO), it_value: timespec(after.max(Duration::from_nanos(1))) };
            if libc::timer_settime(timer, 0, &once, ptr::null_mut()) != 0 {
                libc::timer_delete(timer);
                return None;
            }
            Some(Alarm(timer))
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        // SAFETY: the timer created by `arm`, deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}
