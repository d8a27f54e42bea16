//! `joinblock_acquire_lock`, `joinblock_release_lock`, `joinblock_configure` and
//! `JoinBlock\Lock`: argument checks and exception mapping over `crate::lock`.

use std::os::unix::ffi::OsStrExt;

use ext_php_rs::{
    binary::Binary,
    binary_slice::BinarySlice,
    boxed::ZBox,
    exception::PhpException,
    prelude::*,
    types::ZendClassObject,
};
use parking_lot::Mutex;

use super::{
    exceptions::{guarded, value_error, LOCK_EXCEPTION, LOCK_TIMEOUT_EXCEPTION},
    in_effect::{in_php_cwd, lock_dir},
    options::{Options, OptionsArg},
};
use crate::{
    config::{self, RequestSettings},
    lock::{
        file::{lock_path, FileLock},
        mysql::{DbLock, MysqlTarget},
        Backend, LockError, Wait,
    },
};

/// A held lock of either backend.
enum Held {
    File(FileLock),
    Mysql(DbLock),
}

/// A held per-key lock. Freed by PHP (unset, end of scope or request, exit, fatal error), it
/// releases the lock.
#[php_class]
#[php(name = "JoinBlock\\Lock")]
#[php(flags = ext_php_rs::flags::ClassFlags::Final)]
pub struct Lock {
    inner: Mutex<Held>,
}

#[php_impl]
impl Lock {
    /// The lock file (file backend) or the `GET_LOCK` name (mysql backend).
    pub fn path(&self) -> Binary<u8> {
        let bytes = match &*self.inner.lock() {
            Held::File(lock) => lock.path().as_os_str().as_bytes().to_vec(),
            Held::Mysql(lock) => lock.name().as_bytes().to_vec(),
        };
        Binary::from(bytes)
    }

    /// Whether this process still holds the lock.
    pub fn is_held(&self) -> bool {
        match &*self.inner.lock() {
            Held::File(lock) => lock.is_held(),
            Held::Mysql(lock) => lock.is_held(),
        }
    }

    /// Releases the lock; releasing again does nothing.
    pub fn release(&self) -> PhpResult<()> {
        guarded(&LOCK_EXCEPTION, || {
            match &mut *self.inner.lock() {
                Held::File(lock) => lock.release(),
                Held::Mysql(lock) => lock.release(),
            }
            .map_err(to_exception)
        })
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
///
/// The PHP object is made before the lock is taken. Its allocation is the one that may hit
/// `memory_limit`, and PHP's fatal error then jumps over every Rust frame, dropping nothing:
/// a lock taken before it would stay held, and claimed, for the rest of the worker's life.
#[php_function]
#[php(defaults(options = OptionsArg::default()))]
pub fn joinblock_acquire_lock(key: BinarySlice<u8>, options: OptionsArg) -> PhpResult<ZBox<ZendClassObject<Lock>>> {
    guarded(&LOCK_EXCEPTION, || acquire(&key, options))
}

fn acquire(key: &[u8], options: OptionsArg) -> PhpResult<ZBox<ZendClassObject<Lock>>> {
    let options = Options::parse("joinblock_acquire_lock", "#2 ($options)", options, &["dir", "timeout", "backend"])?;
    let wait = options.seconds("timeout")?.map_or(Wait::Forever, Wait::AtMost);
    let dir = options.bytes("dir")?;
    let backend = match options.bytes("backend")? {
        Some(name) => {
            let backend = Backend::parse(&String::from_utf8_lossy(&name)).map_err(|p| options.value_error("backend", &p))?;
            if backend == Backend::Mysql && dir.is_some() {
                return Err(options.value_error("dir", "applies to the file backend only, and this call asks for mysql"));
            }
            backend
        }
        None => config::lock_backend().map_err(|p| LOCK_EXCEPTION.with(p))?,
    };
    // SAFETY: never dereferenced before `initialize` below; freed uninitialized on an error,
    // which ext-php-rs's free handler allows.
    let mut object = unsafe { ZendClassObject::<Lock>::new_uninit(None) };
    let held = match backend {
        Backend::File => {
            let dir = match dir {
                Some(dir) => dir,
                None => lock_dir()?,
            };
            let path = lock_path(&in_php_cwd(dir)?, key).map_err(to_exception)?;
            let keep = config::lock_files_kept().map_err(|p| LOCK_EXCEPTION.with(p))?;
            Held::File(FileLock::acquire(&path, wait, keep).map_err(to_exception)?)
        }
        // A `dir` from a caller written for files is ignored: the site chose mysql.
        Backend::Mysql => {
            let target = config::mysql_target().map_err(|p| LOCK_EXCEPTION.with(p))?;
            let connect_timeout = config::mysql_connect_timeout().map_err(|p| LOCK_EXCEPTION.with(p))?;
            Held::Mysql(DbLock::acquire(&target, key, wait, connect_timeout).map_err(to_exception)?)
        }
    };
    object.initialize(Lock { inner: Mutex::new(held) });
    Ok(object)
}

/// Releases a lock from `joinblock_acquire_lock`; null or an already released lock do nothing.
#[php_function]
pub fn joinblock_release_lock(lock: Option<&ZendClassObject<Lock>>) -> PhpResult<()> {
    lock.map_or(Ok(()), |lock| lock.release())
}

/// Settings for the rest of this request: the lock backend and the MySQL server, given as
/// `mysql_url` or as WordPress's `DB_HOST` / `DB_USER` / `DB_PASSWORD` / `DB_NAME`, and the
/// site-wide store's `table_prefix` (WordPress's `$wpdb->prefix`).
#[php_function]
pub fn joinblock_configure(settings: OptionsArg) -> PhpResult<()> {
    let given = Options::parse(
        "joinblock_configure",
        "#1 ($settings)",
        settings,
        &["lock_backend", "mysql_url", "db_host", "db_user", "db_password", "db_name", "table_prefix"],
    )?;
    let table_prefix = given.string("table_prefix")?;
    if let Some(prefix) = &table_prefix {
        config::check_table_prefix(prefix).map_err(|p| given.value_error("table_prefix", &p))?;
    }
    let lock_backend = match given.string("lock_backend")? {
        Some(name) => Some(Backend::parse(&name).map_err(|p| given.value_error("lock_backend", &p))?),
        None => None,
    };
    let url = given.string("mysql_url")?;
    let [host, user, password, name] =
        ["db_host", "db_user", "db_password", "db_name"].map(|key| given.string(key));
    let (host, user, password, name) = (host?, user?, password?, name?);
    let wordpress_given = host.is_some() || user.is_some() || password.is_some() || name.is_some();
    let mysql = match (url, wordpress_given) {
        (Some(_), true) => {
            return Err(given.value_error("mysql_url", "and db_host/db_user/db_password/db_name exclude each other"))
        }
        (Some(url), false) => Some(MysqlTarget::from_url(&url).map_err(|p| given.value_error("mysql_url", &p))?),
        (None, true) => {
            let (Some(host), Some(user), Some(name)) = (host, user, name) else {
                return Err(given.value_error("db_host", "needs db_user and db_name with it (db_password may be empty)"));
            };
            let password = password.unwrap_or_default();
            Some(MysqlTarget::from_wordpress(&host, &user, &password, &name).map_err(|p| given.value_error("db_host", &p))?)
        }
        (None, false) => None,
    };
    config::set_request_settings(RequestSettings { lock_backend, mysql, table_prefix });
    Ok(())
}

/// Adds the lock API to the module.
pub fn register(module: ModuleBuilder) -> ModuleBuilder {
    module
        .class::<Lock>()
        .function(wrap_function!(joinblock_acquire_lock))
        .function(wrap_function!(joinblock_release_lock))
        .function(wrap_function!(joinblock_configure))
}
