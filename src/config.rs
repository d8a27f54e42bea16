//! Settings: the INI entries (names, defaults, registration, how the running PHP reads them)
//! and what `joinblock_configure()` sets for the rest of one request.

use std::{
    cell::RefCell,
    ffi::{c_int, c_void, CStr},
    time::Duration,
};

use crate::lock::{mysql::MysqlTarget, Backend};

use ext_php_rs::{
    ffi::{zend_ini_entry, zend_string},
    flags::IniEntryPermission,
    zend::{ExecutorGlobals, IniEntryDef, IniEntryDefs},
};

/// Lock directory; empty means PHP's `sys_get_temp_dir()`.
pub const LOCK_DIR: &str = "joinblock.lock_dir";

/// Action Network API root; per-call `base_url` overrides it.
pub const ACTION_NETWORK_URL: &str = "joinblock.action_network_url";

/// `file` or `mysql`; per-call `backend` and `joinblock_configure()` override it.
pub const LOCK_BACKEND: &str = "joinblock.lock_backend";

/// `mysql://user:password@host:port/dbname` for the mysql backend.
pub const MYSQL_URL: &str = "joinblock.mysql_url";

/// Seconds that connecting to the mysql backend's server may take, and that any reply may be
/// late beyond the lock wait it was asked for.
pub const MYSQL_CONNECT_TIMEOUT: &str = "joinblock.mysql_connect_timeout";
const MYSQL_CONNECT_TIMEOUT_DEFAULT: &CStr = c"3";

/// `0` (or `off`, `false`, `no`) keeps the tag map and request pacing per process.
pub const SHARED_STATE: &str = "joinblock.shared_state";

/// `auto` (default): with `joinblock.lock_backend = mysql`, the shared state spans the site's
/// hosts through the lock server; `files`: each host's lock directory only.
pub const SHARED_STATE_BACKEND: &str = "joinblock.shared_state_backend";

/// Put before the site-wide store's table names: WordPress's `$wpdb->prefix`, so that tools
/// that back up, move or remove a site's tables by prefix take them too.
pub const TABLE_PREFIX: &str = "joinblock.table_prefix";
/// Longest prefix taken: the tables' names stay within MySQL's 64 characters.
const MAX_TABLE_PREFIX: usize = 40;

/// How many idle lock files the lock directory keeps for reuse (`crate::lock::sweep`).
pub const LOCK_FILES_KEPT: &str = "joinblock.lock_files_kept";
const LOCK_FILES_KEPT_DEFAULT: &CStr = c"1024";

static INI_ENTRIES: IniEntryDefs<10> = IniEntryDefs::new([
    entry(c"joinblock.lock_dir", c""),
    entry(c"joinblock.action_network_url", c"https://actionnetwork.org/api/v2/"),
    entry(c"joinblock.lock_backend", c"file"),
    entry(c"joinblock.mysql_url", c""),
    entry(c"joinblock.mysql_connect_timeout", MYSQL_CONNECT_TIMEOUT_DEFAULT),
    entry(c"joinblock.shared_state", c"1"),
    entry(c"joinblock.shared_state_backend", c"auto"),
    entry(c"joinblock.lock_files_kept", LOCK_FILES_KEPT_DEFAULT),
    entry(c"joinblock.table_prefix", c""),
    IniEntryDef::end(),
]);

/// A setting any script may change. Values are checked where they are used, with errors that
/// name the setting.
const fn entry(name: &'static CStr, default: &'static CStr) -> IniEntryDef {
    let mut def = IniEntryDef::new(name, default, IniEntryPermission::All);
    def.on_modify = Some(accept_change);
    def
}

/// PHP only restores a setting at run time (`ini_restore`) when its handler accepts the old
/// value again; without a handler the change would stick for the rest of the request.
unsafe extern "C" fn accept_change(
    _entry: *mut zend_ini_entry,
    _new_value: *mut zend_string,
    _arg1: *mut c_void,
    _arg2: *mut c_void,
    _arg3: *mut c_void,
    _stage: c_int,
) -> c_int {
    0 // SUCCESS
}

/// Called from the module's startup hook.
pub fn register(module_number: i32) {
    IniEntryDef::register(INI_ENTRIES.as_slice(), module_number);
}

/// The current value of one INI setting (after `ini_set`), as raw bytes; `None` when it is
/// unset or empty.
pub fn ini_bytes(name: &str) -> Option<Vec<u8>> {
    let globals = ExecutorGlobals::get();
    // SAFETY: `EG(ini_directives)` is set up before any request runs and stays valid while
    // one does; its entries are `zend_ini_entry` pointers owned by the engine.
    let directives = unsafe { globals.ini_directives.as_ref() }?;
    let entry = unsafe { directives.get(name)?.ptr::<zend_ini_entry>()?.as_ref() }?;
    let value = unsafe { entry.value.as_ref() }?.as_bytes();
    (!value.is_empty()).then(|| value.to_vec())
}

/// A setting's text, or its default when it is unset or empty.
fn ini_text_or(name: &str, default: &CStr) -> String {
    ini_bytes(name).map_or_else(|| default.to_string_lossy().into_owned(), |value| String::from_utf8_lossy(&value).into_owned())
}

/// Whether the host's shared state is on (INI `joinblock.shared_state`, default on).
pub fn shared_state() -> bool {
    let value = ini_bytes(SHARED_STATE).map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase());
    !matches!(value.as_deref(), Some("0" | "off" | "false" | "no" | "none"))
}

/// Whether the shared state may span hosts through the lock server (INI
/// `joinblock.shared_state_backend`: `auto`, the default, or `files`).
pub fn shared_state_site_wide() -> Result<bool, String> {
    let value = ini_bytes(SHARED_STATE_BACKEND).map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase());
    match value.as_deref() {
        None | Some("auto") => Ok(true),
        Some("files") => Ok(false),
        Some(other) => Err(format!("INI {SHARED_STATE_BACKEND} is \"{}\"; expected auto or files", other.escape_debug())),
    }
}

/// What `joinblock_configure()` set; cleared at the end of each request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestSettings {
    pub lock_backend: Option<Backend>,
    pub mysql: Option<MysqlTarget>,
    pub table_prefix: Option<String>,
}

thread_local! {
    /// Per thread, because it belongs to one request and a request runs on one thread from
    /// start to end: a PHP-FPM worker's one thread, or one of a thread-safe PHP's request
    /// threads (Apache's event MPM, FrankenPHP), which serve many requests at once. So one
    /// request's settings never reach a request running beside it, and a request that ends
    /// clears only its own.
    static REQUEST: RefCell<RequestSettings> = const { RefCell::new(RequestSettings { lock_backend: None, mysql: None, table_prefix: None }) };
}

pub fn set_request_settings(settings: RequestSettings) {
    REQUEST.set(settings);
}

/// What this thread's request set, read in place.
pub fn with_request_settings<T>(read: impl FnOnce(&RequestSettings) -> T) -> T {
    REQUEST.with_borrow(read)
}

/// Called at the end of every request, on its thread, so one request's settings never reach
/// the next.
pub fn clear_request_settings() {
    set_request_settings(RequestSettings::default());
}

/// The lock backend in effect when a call names none: `joinblock_configure()`, else INI.
pub fn lock_backend() -> Result<Backend, String> {
    if let Some(backend) = with_request_settings(|settings| settings.lock_backend) {
        return Ok(backend);
    }
    let value = ini_bytes(LOCK_BACKEND).unwrap_or_else(|| b"file".to_vec());
    Backend::parse(&String::from_utf8_lossy(&value)).map_err(|problem| format!("INI {LOCK_BACKEND} {problem}"))
}

/// The MySQL server for the mysql backend: `joinblock_configure()`, else INI.
pub fn mysql_target() -> Result<MysqlTarget, String> {
    if let Some(target) = with_request_settings(|settings| settings.mysql.clone()) {
        return Ok(target);
    }
    let url = ini_bytes(MYSQL_URL).ok_or_else(|| {
        format!("the mysql lock backend needs INI {MYSQL_URL} or joinblock_configure() with the database settings")
    })?;
    // Never quote the URL back: it holds the password.
    MysqlTarget::from_url(&String::from_utf8_lossy(&url)).map_err(|problem| format!("INI {MYSQL_URL} {problem}"))
}

/// Whether `prefix` can start a table name unquoted: WordPress's own rule for `$table_prefix`
/// (letters, digits, underscores), within [`MAX_TABLE_PREFIX`]; else what is wrong.
pub fn check_table_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > MAX_TABLE_PREFIX || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "is \"{}\"; expected at most {MAX_TABLE_PREFIX} letters, digits and underscores, such as wp_",
            prefix.escape_debug()
        ));
    }
    Ok(())
}

/// The site-wide store's table prefix: `joinblock_configure()`, else INI (empty by default).
pub fn table_prefix() -> Result<String, String> {
    if let Some(prefix) = with_request_settings(|settings| settings.table_prefix.clone()) {
        return Ok(prefix);
    }
    let prefix = String::from_utf8_lossy(&ini_bytes(TABLE_PREFIX).unwrap_or_default()).trim().to_owned();
    check_table_prefix(&prefix).map(|()| prefix).map_err(|problem| format!("INI {TABLE_PREFIX} {problem}"))
}

/// `joinblock.mysql_connect_timeout`: seconds, a finite number greater than 0.
pub fn mysql_connect_timeout() -> Result<Duration, String> {
    let text = ini_text_or(MYSQL_CONNECT_TIMEOUT, MYSQL_CONNECT_TIMEOUT_DEFAULT);
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|seconds| *seconds > 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("INI {MYSQL_CONNECT_TIMEOUT} is \"{}\"; expected seconds greater than 0, such as 3 or 0.5", text.escape_debug()))
}

/// `joinblock.lock_files_kept`: a whole number, 0 or more (0 keeps no idle file).
pub fn lock_files_kept() -> Result<usize, String> {
    let text = ini_text_or(LOCK_FILES_KEPT, LOCK_FILES_KEPT_DEFAULT);
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|kept| *kept <= 100_000_000)
        .ok_or_else(|| format!("INI {LOCK_FILES_KEPT} is \"{}\"; expected a whole number of files from 0 to 100000000, such as 1024", text.escape_debug()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_settings_stay_on_their_thread() {
        let mysql = MysqlTarget::from_url("mysql://wp:secret@127.0.0.1:3306/site").unwrap();
        let mine = RequestSettings { lock_backend: Some(Backend::Mysql), mysql: Some(mysql), table_prefix: Some("wp_".into()) };
        set_request_settings(mine.clone());
        // Another request's thread sees none of it, and its end of request clears only its own.
        std::thread::spawn(|| {
            assert_eq!(with_request_settings(RequestSettings::clone), RequestSettings::default());
            set_request_settings(RequestSettings { lock_backend: Some(Backend::File), ..RequestSettings::default() });
            clear_request_settings();
        })
        .join()
        .unwrap();
        assert_eq!(with_request_settings(RequestSettings::clone), mine);
        clear_request_settings();
        assert_eq!(with_request_settings(RequestSettings::clone), RequestSettings::default());
    }
}
