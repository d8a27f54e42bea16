//! `joinblock_acquire_lock`, `joinblock_release_lock` and `JoinBlock\Lock`: argument checks and
//! exception mapping over `crate::lock`.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::PathBuf};

use ext_php_rs::{
    binary::Binary,
    binary_slice::BinarySlice,
    exception::PhpException,
    prelude::*,
    types::ZendClassObject,
};
use parking_lot::Mutex;

use super::{
    exceptions::{value_error, LOCK_EXCEPTION, LOCK_TIMEOUT_EXCEPTION},
    options::{Options, OptionsArg},
};
use crate::{
    config,
    lock::{self, FileLock, LockError, Wait},
};

/// A held per-key lock. Freed by PHP (unset, end of scope or request, exit, fatal error), it
/// releases the lock.
#[php_class]
#[php(name = "JoinBlock\\Lock")]
#[php(flags = ext_php_rs::flags::ClassFlags::Final)]
pub struct Lock {
    inner: Mutex<FileLock>,
}

#[php_impl]
impl Lock {
    /// The lock file: `<dir>/join-lock-<sha1 of the normalised key>`.
    pub fn path(&self) -> Binary<u8> {
        Binary::from(self.inner.lock().path().as_os_str().as_bytes().to_vec())
    }

    /// Whether this process still holds the lock.
    pub fn is_held(&self) -> bool {
        self.inner.lock().is_held()
    }

    /// Releases the lock; releasing again does nothing.
    pub fn release(&self) -> PhpResult<()> {
        self.inner.lock().release().map_err(to_exception)
    }
}

fn to_exception(err: LockError) -> PhpException {
    match err {
        LockError::Timeout { .. } => LOCK_TIMEOUT_EXCEPTION.with(err.to_string()),
        LockError::EmptyKey => {
            value_error("joinblock_acquire_lock(): Argument #1 ($key) must not be empty after trimming white space")
        }
        _ => LOCK_EXCEPTION.with(err.to_string()),
    }
}

/// Takes the lock for `key` (an email, usually), waiting as `$options['timeout']` says.
#[php_function]
#[php(defaults(options = OptionsArg::default()))]
pub fn joinblock_acquire_lock(key: BinarySlice<u8>, options: OptionsArg) -> PhpResult<Lock> {
    let options = Options::parse("joinblock_acquire_lock", 2, options, &["dir", "timeout"])?;
    let dir = match options.bytes("dir")? {
        Some(dir) => dir,
        None => lock_dir()?,
    };
    let wait = options.seconds("timeout")?.map_or(Wait::Forever, Wait::AtMost);
    let path = lock::lock_path(&PathBuf::from(OsStr::from_bytes(&dir)), &key).map_err(to_exception)?;
    let held = FileLock::acquire(&path, wait).map_err(to_exception)?;
    Ok(Lock { inner: Mutex::new(held) })
}

/// Releases a lock from `joinblock_acquire_lock`; null or an already released lock do nothing.
#[php_function]
pub fn joinblock_release_lock(lock: Option<&ZendClassObject<Lock>>) -> PhpResult<()> {
    lock.map_or(Ok(()), |lock| lock.release())
}

/// The lock directory when the call names none: INI `joinblock.lock_dir`, else PHP's
/// `sys_get_temp_dir()`.
pub fn lock_dir() -> PhpResult<Vec<u8>> {
    if let Some(dir) = config::ini_bytes(config::LOCK_DIR) {
        return Ok(dir);
    }
    let temp = ext_php_rs::types::ZendCallable::try_from_name("sys_get_temp_dir")
        .and_then(|f| f.try_call(vec![]))
        .map_err(|e| LOCK_EXCEPTION.with(format!("cannot read sys_get_temp_dir(): {e}")))?;
    temp.zend_str()
        .map(|s| s.as_bytes().to_vec())
        .ok_or_else(|| LOCK_EXCEPTION.with("sys_get_temp_dir() did not return a string"))
}


/// Adds the lock API to the module.
pub fn register(module: ModuleBuilder) -> ModuleBuilder {
    module
        .class::<Lock>()
        .function(wrap_function!(joinblock_acquire_lock))
        .function(wrap_function!(joinblock_release_lock))
}
