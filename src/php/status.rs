//! What the extension is doing, for `php --ri joinblock` and `joinblock_status()`: the
//! version, the build (NTS or ZTS), the settings in effect and this process's counters (over
//! all its threads in a ZTS build). Never a password or an API key.

use ext_php_rs::{prelude::*, types::ZendHashTable, boxed::ZBox};

use super::{
    exceptions::{guarded, LOCK_EXCEPTION},
    in_effect::{lock_dir, shared_dir, shown, site_db},
};
use crate::{
    action_network::{requests_sent, site_state::{self, Tables}, DEFAULT_BASE_URL},
    config,
    lock::{counters, Counters},
};

/// The settings in effect and the counters, read once.
pub struct Status {
    pub backend: Result<&'static str, String>,
    pub lock_dir: Result<String, String>,
    /// `Ok(None)`: no server configured.
    pub mysql: Result<Option<String>, String>,
    pub action_network_url: String,
    /// Where the tag check's shared state lives, or why the site-wide store cannot serve.
    pub shared_state: Result<String, String>,
    pub counters: Counters,
    pub requests: u64,
    /// `NTS`, or `ZTS` for a thread-safe PHP (the one this build fits; it loads in no other).
    pub thread_safety: &'static str,
}

impl Status {
    pub fn read() -> Status {
        let mysql = match config::mysql_target() {
            Ok(target) => Ok(Some(shown(target.describe()))),
            Err(_) if config::ini_bytes(config::MYSQL_URL).is_none() => Ok(None),
            Err(problem) => Err(shown(problem)),
        };
        Status {
            backend: config::lock_backend().map(|b| b.name()).map_err(shown),
            lock_dir: lock_dir().map(shown).map_err(|_| "sys_get_temp_dir() could not be read".into()),
            mysql,
            action_network_url: shown(config::ini_bytes(config::ACTION_NETWORK_URL).unwrap_or_else(|| DEFAULT_BASE_URL.into())),
            shared_state: shared_state(),
            counters: counters(),
            requests: requests_sent(),
            thread_safety: if ext_php_rs::PHP_ZTS { "ZTS" } else { "NTS" },
        }
    }
}

/// "site-wide on MySQL server …" (with its tag map's entries), "this host's lock directory …"
/// or "off"; `Err` when the site-wide store cannot be used (tried now: connected, tables made
/// if missing, counted), saying that each host's files stand in.
fn shared_state() -> Result<String, String> {
    let files = || match shared_dir() {
        Some(dir) => format!("this host's lock directory {}", dir.display()),
        None => "off".into(),
    };
    match site_db() {
        Ok(None) => Ok(shown(files())),
        Ok(Some(site)) => {
            let server = site.target.describe();
            let health = site.inspect().map_err(|problem| {
                shown(format!("the site-wide shared state cannot be used ({problem}); each host uses {} instead", files()))
            })?;
            let mut faults = Vec::new();
            if health.bad_pace_rows > 0 {
                faults.push(format!(
                    "{} row(s) of {} hold times no writer could have left (zero dates, or past what a slot or Retry-After allows); \
                     each is rewritten at its group's next request",
                    health.bad_pace_rows, site.tables.pace
                ));
            }
            if let (bad @ 1.., Some(last)) = site_state::bad_rows() {
                faults.push(format!("this process ignored {bad} unusable row(s) of the site-wide tables (last: {last})"));
            }
            if let Some(failure) = site_state::tidy_failure() {
                faults.push(format!("this process's last tidy of the tables failed ({failure}); expired rows stay until a tidy works"));
            }
            let fallbacks = site_state::fallbacks();
            if let (1.., Some(last)) = (fallbacks, site_state::warnings().pop()) {
                faults.push(format!("this process fell back to the host's files {fallbacks} time(s) (last: {last})"));
            }
            let Tables { pace, tags } = &site.tables;
            let state = format!("site-wide on MySQL server {server}, tables {pace} and {tags} (about {} tag map entries)", health.entries_estimate);
            match faults.is_empty() {
                true => Ok(shown(state)),
                false => Err(shown(format!("{state}, but {}", faults.join("; ")))),
            }
        }
        Err(problem) => Err(shown(problem)),
    }
}

/// What this process's implementation is doing: for WordPress's Site Health and other
/// dashboards. The polyfill answers the same keys.
#[php_function]
pub fn joinblock_status() -> PhpResult<ZBox<ZendHashTable>> {
    guarded(&LOCK_EXCEPTION, status_array)
}

fn status_array() -> PhpResult<ZBox<ZendHashTable>> {
    let status = Status::read();
    let mut problems = ZendHashTable::new();
    let mut value = |name: &str, result: Result<Option<String>, String>| -> PhpResult<Option<String>> {
        result.or_else(|problem| problems.insert(name, problem).map(|()| None)).map_err(Into::into)
    };
    let backend = value("lock_backend", status.backend.map(|b| Some(b.to_owned())))?;
    let lock_dir = value("lock_dir", status.lock_dir.map(Some))?;
    let mysql = value("mysql_server", status.mysql)?;
    let shared_state = value("shared_state", status.shared_state.map(Some))?;
    let mut counters = ZendHashTable::new();
    counters.insert("locks_acquired", status.counters.acquired as i64)?;
    counters.insert("locks_waited", status.counters.waited as i64)?;
    counters.insert("lock_timeouts", status.counters.timed_out as i64)?;
    counters.insert("action_network_requests", status.requests as i64)?;
    let mut array = ZendHashTable::new();
    array.insert("implementation", "extension")?;
    array.insert("version", env!("CARGO_PKG_VERSION"))?;
    array.insert("thread_safety", status.thread_safety)?;
    array.insert("lock_backend", backend)?;
    array.insert("lock_dir", lock_dir)?;
    array.insert("mysql_server", mysql)?;
    array.insert("action_network_url", status.action_network_url)?;
    array.insert("shared_state", shared_state)?;
    array.insert("counters", counters)?;
    array.insert("problems", problems)?;
    Ok(array)
}

/// Adds `joinblock_status` to the module.
pub fn register(module: ModuleBuilder) -> ModuleBuilder {
    module.function(wrap_function!(joinblock_status))
}
