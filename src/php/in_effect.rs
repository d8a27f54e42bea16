//! The settings in effect as PHP has them: the lock directory (INI, else PHP's
//! `sys_get_temp_dir()`), a relative one resolved as PHP's file functions would, and where the
//! tag check's shared state lives. Read by the lock, the tag check and the status alike.

use std::{
    ffi::OsString,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::PathBuf,
};

use ext_php_rs::prelude::*;

use super::exceptions::LOCK_EXCEPTION;
use crate::{
    action_network::site_state::{SiteDb, Tables},
    config,
    lock::Backend,
};

/// A value as PHP strings carry it to `php --ri` (its C strings stop at NUL).
pub fn shown(text: impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(text.as_ref()).replace('\0', "")
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

/// `dir` as PHP's own file functions read it: a relative directory is under PHP's working
/// directory, `getcwd()`. The operating system would resolve it against the process's instead,
/// which a thread-safe PHP does not move: each of its request threads has a working directory
/// of its own (`chdir()` changes only the calling thread's). In an NTS PHP the two are the same.
pub fn in_php_cwd(dir: Vec<u8>) -> PhpResult<PathBuf> {
    let dir = PathBuf::from(OsString::from_vec(dir));
    if dir.is_absolute() {
        return Ok(dir);
    }
    let cwd = ext_php_rs::types::ZendCallable::try_from_name("getcwd")
        .and_then(|f| f.try_call(vec![]))
        .ok()
        .and_then(|cwd| cwd.zend_str().map(|s| s.as_bytes().to_vec()))
        .ok_or_else(|| {
            LOCK_EXCEPTION.with(format!(
                "cannot use the relative lock directory \"{}\": PHP's getcwd() gives no working directory to resolve it in",
                shown(dir.as_os_str().as_bytes())
            ))
        })?;
    Ok(PathBuf::from(OsString::from_vec(cwd)).join(dir))
}

/// The lock server, when the shared state spans the site's hosts through it: the shared state
/// on, `joinblock.shared_state_backend = auto` and the mysql lock backend in effect. A lock
/// setting that cannot be read leaves the state to the host's files, as locking reports it.
pub fn site_db() -> Result<Option<SiteDb>, String> {
    if !config::shared_state() || !config::shared_state_site_wide()? || config::lock_backend() != Ok(Backend::Mysql) {
        return Ok(None);
    }
    let (Ok(target), Ok(connect_timeout)) = (config::mysql_target(), config::mysql_connect_timeout()) else { return Ok(None) };
    Ok(Some(SiteDb { target, connect_timeout, tables: Tables::with_prefix(&config::table_prefix()?) }))
}

/// The directory of the host's shared state (the lock directory in effect), unless INI
/// `joinblock.shared_state` turns it off or there is no usable directory.
pub fn shared_dir() -> Option<std::path::PathBuf> {
    if !config::shared_state() {
        return None;
    }
    in_php_cwd(lock_dir().ok()?).ok()
}
