//! The extension's exception classes.
//!
//! They are registered with `ClassBuilder` rather than `#[php_class]` so that they are plain
//! PHP exceptions: constructible from PHP, with file, line and trace filled in by the engine.

use std::sync::atomic::{AtomicPtr, Ordering};

use ext_php_rs::{
    builders::ClassBuilder,
    exception::PhpException,
    ffi::{ext_php_rs_compiler_globals, zend_hash_str_find_ptr_lc},
    zend::{ce, ClassEntry},
};

/// One exception class of ours: its PHP name, parent, and the entry PHP gave it.
pub struct ExceptionClass {
    name: &'static str,
    parent: fn() -> &'static ClassEntry,
    parent_name: &'static str,
    entry: AtomicPtr<ClassEntry>,
}

impl ExceptionClass {
    const fn new(name: &'static str, parent: fn() -> &'static ClassEntry, parent_name: &'static str) -> Self {
        ExceptionClass { name, parent, parent_name, entry: AtomicPtr::new(std::ptr::null_mut()) }
    }

    fn entry(&self) -> &'static ClassEntry {
        let entry = self.entry.load(Ordering::Acquire);
        // SAFETY: set once at module startup to an entry that lives as long as the process.
        unsafe { entry.as_ref() }.expect("exception classes are registered at module startup")
    }

    /// An exception of this class carrying `message`.
    pub fn with(&self, message: impl Into<String>) -> PhpException {
        PhpException::new(message.into(), 0, self.entry())
    }
}

/// A class registered so far, by name. At module startup only the compiler's class table is
/// filled in. `ext_php_rs_compiler_globals()` finds the compiler globals in either build: the
/// `compiler_globals` static of an NTS PHP, the calling thread's copy of a ZTS one, which has no
/// static to name. (ext-php-rs 0.16 keeps its `CompilerGlobals::get()` wrapper crate-private.)
fn find_class(name: &str) -> Option<&'static ClassEntry> {
    // SAFETY: read during module startup, when the engine runs on one thread and the compiler
    // globals and their class table are live; the lookup lowercases its own copy of `name`.
    unsafe {
        let table = ext_php_rs_compiler_globals().as_ref()?.class_table;
        let found = zend_hash_str_find_ptr_lc(table, name.as_ptr().cast(), name.len());
        (found as *const ClassEntry).as_ref()
    }
}

fn runtime_exception() -> &'static ClassEntry {
    find_class("RuntimeException").expect("SPL registers RuntimeException before extensions load")
}

fn lock_exception() -> &'static ClassEntry {
    LOCK_EXCEPTION.entry()
}

pub static LOCK_EXCEPTION: ExceptionClass =
    ExceptionClass::new("JoinBlock\\LockException", runtime_exception, "RuntimeException");
pub static LOCK_TIMEOUT_EXCEPTION: ExceptionClass =
    ExceptionClass::new("JoinBlock\\LockTimeoutException", lock_exception, "JoinBlock\\LockException");

pub static ACTION_NETWORK_EXCEPTION: ExceptionClass =
    ExceptionClass::new("JoinBlock\\ActionNetworkException", runtime_exception, "RuntimeException");

/// Every class, parents before children.
static ALL: [&ExceptionClass; 3] = [&LOCK_EXCEPTION, &LOCK_TIMEOUT_EXCEPTION, &ACTION_NETWORK_EXCEPTION];

/// Registers every exception class; called from the module's startup hook.
pub fn register() -> Result<(), String> {
    for class in ALL {
        // `registration` takes a plain fn, so the entry is found by name afterwards.
        ClassBuilder::new(class.name)
            .extends((class.parent, class.parent_name))
            .registration(|_, _| {})
            .register()
            .map_err(|e| format!("cannot register {}: {e}", class.name))?;
        let entry = find_class(class.name)
            .ok_or_else(|| format!("{} is missing after registration", class.name))?;
        class.entry.store(std::ptr::from_ref(entry).cast_mut(), Ordering::Release);
    }
    Ok(())
}

/// `ValueError`, as PHP's own functions throw for a well-typed but unacceptable argument.
pub fn value_error(message: impl Into<String>) -> PhpException {
    PhpException::new(message.into(), 0, ce::value_error())
}

/// `TypeError`, for an argument of the wrong type.
pub fn type_error(message: impl Into<String>) -> PhpException {
    PhpException::new(message.into(), 0, ce::type_error())
}

thread_local! {
    /// Where this thread's last panic happened, for the exception that reports it; `Some`
    /// only while `catch_panic` runs on this thread.
    static PANICKED_AT: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `body`; a panic in it comes back as a sentence (its message and where it happened)
/// instead of unwinding into PHP's frames, and prints nothing: PHP-FPM would log a Rust
/// backtrace per request on stderr. A panic anywhere else (another thread, code outside
/// `catch_panic`) still goes to the hook that was there before.
pub fn catch_panic<T>(body: impl FnOnce() -> T) -> Result<T, String> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let earlier = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            // try_: a second panic inside a panic hook would abort the process.
            let caught = PANICKED_AT
                .try_with(|cell| cell.try_borrow_mut().ok().and_then(|mut slot| slot.as_mut().map(|slot| *slot = at)))
                .ok()
                .flatten();
            if caught.is_none() {
                earlier(info);
            }
        }))
    });
    let outer = PANICKED_AT.with(|cell| cell.borrow_mut().replace(None));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let at = PANICKED_AT.with(|cell| std::mem::replace(&mut *cell.borrow_mut(), outer)).flatten();
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        format!("{message} (at {})", at.as_deref().unwrap_or("an unknown place"))
    })
}

/// The boundary to PHP of every call: a panic in `body`, which would be a bug of ours (nothing
/// from outside may cause one), becomes `class`'s documented exception rather than PHP's
/// generic "Rust panic" `Error`; and before any exception leaves, the script's queued signal
/// handlers run ([`super::script_signals`]).
pub fn guarded<T>(class: &ExceptionClass, body: impl FnOnce() -> ext_php_rs::prelude::PhpResult<T>) -> ext_php_rs::prelude::PhpResult<T> {
    let result = catch_panic(body).unwrap_or_else(|panic| Err(class.with(format!("joinblock failed inside: {panic}; this is a bug, please report it"))));
    super::script_signals::handlers_before_exception(result)
}

#[cfg(test)]
mod tests {
    use super::catch_panic;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// One test: the quiet hook is installed once per process, over the hook set first here.
    #[test]
    fn a_panic_comes_back_as_a_sentence_and_others_reach_the_earlier_hook() {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        // Counts, and still reports: another test's failure keeps its message.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if matches!(message, Some("row 7 unusable" | "plain" | "inner" | "outside")) {
                SEEN.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
        let caught = catch_panic(|| -> u32 { panic!("row {} unusable", 7) }).unwrap_err();
        assert!(caught.starts_with("row 7 unusable (at src/php/exceptions.rs:"), "{caught}");
        assert_eq!(catch_panic(|| 5), Ok(5));
        let str_payload = catch_panic(|| -> () { std::panic::panic_any("plain") }).unwrap_err();
        assert!(str_payload.starts_with("plain (at "), "{str_payload}");
        assert_eq!(SEEN.load(Ordering::SeqCst), 0, "a caught panic reaches no hook");
        assert!(std::thread::spawn(|| panic!("outside")).join().is_err());
        assert_eq!(SEEN.load(Ordering::SeqCst), 1, "another thread's panic is reported as before");
        let nested = catch_panic(|| catch_panic(|| -> () { panic!("inner") }).map(|_| ()).unwrap_err());
        assert!(nested.as_deref().is_ok_and(|inner| inner.starts_with("inner (at ")), "{nested:?}");
    }
}
