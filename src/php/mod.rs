//! The PHP-facing layer: a thin skin of argument checks and exception mapping over the plain
//! Rust modules.

mod action_network;
mod exceptions;
mod in_effect;
mod lock;
mod options;
mod script_signals;
mod status;

use ext_php_rs::{info_table_end, info_table_row, info_table_start, prelude::*, zend::ModuleEntry};

use crate::{config, lock::alarm::Unavailable};
use in_effect::shown;
use status::Status;

/// `php --ri joinblock` and `phpinfo()`. Never shows a password or an API key.
extern "C" fn module_info(_module: *mut ModuleEntry) {
    let status = Status::read();
    let files = lock_files(status.lock_dir.as_deref().ok());
    let dir = status.lock_dir.map_or_else(
        |_| "(unavailable)".into(),
        |dir| {
            if crate::lock::file::shared_with_others(std::path::Path::new(&dir)) {
                format!("{dir} (shared with other local users: set joinblock.lock_dir)")
            } else {
                dir
            }
        },
    );
    let backend = status.backend.map_or_else(|problem| problem, String::from);
    let mysql = status.mysql.map_or_else(|problem| problem, |server| server.unwrap_or_else(|| "(not set)".into()));
    info_table_start!();
    info_table_row!("joinblock support", "enabled");
    // "0.1.0 (git <commit>)" when built from a checkout (build.rs).
    info_table_row!("version", env!("JOINBLOCK_BUILD"));
    info_table_row!("thread safety", status.thread_safety);
    info_table_row!("lock backend in effect", backend.as_str());
    info_table_row!("lock directory in effect", dir.as_str());
    info_table_row!("MySQL server for locks", mysql.as_str());
    let connect = config::mysql_connect_timeout().map_or_else(shown, |bound| format!("{} s", bound.as_secs_f64()));
    info_table_row!("MySQL connect timeout", connect.as_str());
    let waits = match crate::lock::alarm::available() {
        Ok(()) => "in the kernel, handed the lock at the unlock (a timer signal, SIGRTMAX, ends them at the deadline)",
        Err(Unavailable::HandledElsewhere) => "polled: SIGRTMAX is handled by other code, so no timer can end a waiting flock",
        Err(Unavailable::Blocked) => "polled: this thread blocks SIGRTMAX, which stays the script's, so no timer can end a waiting flock",
    };
    info_table_row!("timed lock waits", waits);
    info_table_row!("lock files", files.as_str());
    // The counters and the tag cache are process-wide: in a thread-safe PHP, the sum over all
    // of the process's request threads, and the labels say so.
    let scope = if ext_php_rs::PHP_ZTS { "this process, all threads" } else { "this process" };
    info_table_row!(format!("locks acquired ({scope})"), status.counters.acquired.to_string());
    info_table_row!(format!("locks that waited ({scope})"), status.counters.waited.to_string());
    info_table_row!(format!("lock timeouts ({scope})"), status.counters.timed_out.to_string());
    info_table_row!("Action Network URL", status.action_network_url.as_str());
    info_table_row!(format!("Action Network requests ({scope})"), status.requests.to_string());
    info_table_row!(format!("tag cache entries ({scope})"), crate::action_network::tag_cache_entries().to_string());
    let (state, problem) = match &status.shared_state {
        Ok(state) => (state.as_str(), None),
        Err(problem) => ("this host's files (the site-wide store failed)", Some(problem.as_str())),
    };
    info_table_row!("shared state in effect", state);
    if let Some(problem) = problem {
        info_table_row!("shared state warning", problem);
    }
    for problem in crate::action_network::site_state::warnings() {
        info_table_row!("shared state warning", problem.as_str());
    }
    match in_effect::shared_dir() {
        None => info_table_row!("shared state (tag map, pacing)", "off (joinblock.shared_state = 0, or no lock directory)"),
        Some(dir) => {
            let (files, entries, mut problems) = crate::action_network::shared::inspect(&dir);
            info_table_row!("shared state (tag map, pacing)", dir.display().to_string());
            info_table_row!("shared tag map entries", format!("{entries} in {files} group(s)"));
            for problem in crate::action_network::shared::warnings() {
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
            for problem in problems {
                info_table_row!("shared state warning", problem.as_str());
            }
        }
    }
    info_table_end!();
}

/// How many lock files the directory in effect holds, and how many idle ones it keeps.
fn lock_files(dir: Option<&str>) -> String {
    let kept = match config::lock_files_kept() {
        Ok(kept) => format!("idle ones above {kept} are swept (joinblock.lock_files_kept)"),
        Err(problem) => problem,
    };
    match dir.map(|dir| crate::lock::sweep::count(std::path::Path::new(dir))) {
        Some(Ok(files)) => format!("{files} in the lock directory; {kept}"),
        _ => format!("(the lock directory cannot be read); {kept}"),
    }
}

extern "C" fn startup(_type: i32, module_number: i32) -> i32 {
    config::register(module_number);
    match std::panic::catch_unwind(exceptions::register) {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            eprintln!("joinblock: {message}");
            -1
        }
        Err(_) => -1,
    }
}

extern "C" fn request_shutdown(_type: i32, _module_number: i32) -> i32 {
    config::clear_request_settings();
    0
}

#[php_module]
#[php(startup = "startup")]
pub fn get_module(module: ModuleBuilder) -> ModuleBuilder {
    status::register(action_network::register(lock::register(module)))
        .info_function(module_info)
        .request_shutdown_function(request_shutdown)
}
