//! The script's own signal handlers, when a call of ours ends in an exception.
//!
//! With `pcntl_async_signals(true)`, pcntl's C handler only queues a signal and asks the
//! engine for an interrupt, which the engine serves right after the internal function it was
//! running returns. If that function left an exception, the engine runs the queue all the same,
//! but calls no PHP function while an exception is pending: every handler is skipped and the
//! queue emptied, so the signal is lost and a later `pcntl_signal_dispatch()` finds nothing.
//! A lock wait that a script's `pcntl_alarm` interrupted and that then timed out did exactly
//! that. So before an exception of ours leaves, the queue is run here, with none pending; and
//! an exception thrown by a handler leaves instead of ours, as it would from PHP code (the
//! polyfill's), where the handler runs before the `throw`.

use ext_php_rs::{exception::PhpResult, zend::Function};

/// `result`, once the script's queued signal handlers have run if it is an error; a handler's
/// exception replaces ours.
pub fn handlers_before_exception<T>(result: PhpResult<T>) -> PhpResult<T> {
    let Err(ours) = result else { return result };
    // Without async signals nothing runs the queue but the script, which loses nothing.
    if !call("pcntl_async_signals").is_some_and(|enabled| enabled) {
        return Err(ours);
    }
    call("pcntl_signal_dispatch");
    // A handler's exception (or its exit()) is pending now, and ext-php-rs throws nothing over
    // a pending exception: that one leaves (LockAmongOtherCodeTest).
    Err(ours)
}

/// Calls a pcntl function without arguments; its result as a bool, `None` without pcntl.
fn call(name: &str) -> Option<bool> {
    Function::try_from_function(name)?.try_call(vec![]).ok()?.bool()
}
