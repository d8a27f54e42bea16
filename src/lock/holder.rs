//! Who holds a lock file: a one-line record that a holder writes into its lock file once it
//! holds the lock, so that a waiter that gives up can say whom it waited for.
//!
//! Only what identifies a process on this host goes in: its pid, when it took the lock, the
//! PHP SAPI and, for php-fpm, the pool. Never the key (an email) nor a request's URL. "When"
//! is `CLOCK_MONOTONIC`, which every process of one boot shares and no clock change moves.
//!
//! Format, one line, written and read alike by the polyfill:
//! `joinblock-holder pid=<pid> since=<monotonic seconds> sapi=<name>[ pool=<name>]`
//!
//! The record is written after the lock is taken and only read by parties that failed to take
//! it, so it plays no part in the protocol: a missing or torn record only makes a message
//! vaguer.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    sync::OnceLock,
};

use parking_lot::Mutex;

const TAG: &str = "joinblock-holder";
/// Longest record read back; anything longer is not ours.
const MAX_RECORD: usize = 512;

static SAPI: OnceLock<String> = OnceLock::new();
/// This process's SAPI and pool, with the pid they were read for (a forked child reads its own).
static LABEL: Mutex<Option<(u32, String)>> = Mutex::new(None);

/// The SAPI's name (`cli`, `fpm-fcgi`, `apache2handler`), from the module's startup.
pub fn set_sapi(name: &str) {
    let _ = SAPI.set(name.to_owned());
}

/// Seconds on `CLOCK_MONOTONIC`.
fn monotonic_now() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// php-fpm names its workers `php-fpm: pool <name>` (in /proc/self/cmdline).
fn fpm_pool() -> Option<String> {
    let cmdline = std::fs::read("/proc/self/cmdline").ok()?;
    let title = String::from_utf8_lossy(&cmdline);
    let pool = title.trim_end_matches('\0').strip_prefix("php-fpm: pool ")?;
    Some(pool.split('\0').next()?.trim().to_owned()).filter(|p| !p.is_empty())
}

/// `sapi=<name>[ pool=<name>]` for this process.
fn label() -> String {
    let pid = std::process::id();
    let mut cached = LABEL.lock();
    if let Some((_, label)) = cached.as_ref().filter(|(owner, _)| *owner == pid) {
        return label.clone();
    }
    let sapi = SAPI.get().map_or("unknown", String::as_str);
    let label = match (sapi == "fpm-fcgi").then(fpm_pool).flatten() {
        Some(pool) => format!("sapi={sapi} pool={pool}"),
        None => format!("sapi={sapi}"),
    };
    *cached = Some((pid, label.clone()));
    label
}

/// Writes this process's record into `file`, which held `previous_len` bytes before.
pub fn write(file: &File, previous_len: u64) {
    let record = format!("{TAG} pid={} since={:.3} {}\n", std::process::id(), monotonic_now(), label());
    // Best effort: the record only serves messages.
    if file.write_all_at(record.as_bytes(), 0).is_ok() && previous_len > record.len() as u64 {
        let _ = file.set_len(record.len() as u64);
    }
}

/// "pid 4242 (fpm-fcgi, pool www) for 31.2 s" from the record in `file`; `None` without one.
pub fn read(file: &File) -> Option<String> {
    let mut buf = [0u8; MAX_RECORD];
    let len = file.read_at(&mut buf, 0).ok()?;
    describe(std::str::from_utf8(&buf[..len]).ok()?, monotonic_now())
}

fn describe(record: &str, now: f64) -> Option<String> {
    let line = record.strip_prefix(TAG)?.lines().next()?;
    let field = |name: &str| line.split(' ').find_map(|part| part.strip_prefix(name)?.strip_prefix('='));
    let pid: u32 = field("pid")?.parse().ok()?;
    let since: f64 = field("since")?.parse().ok()?;
    let sapi = field("sapi")?;
    // The pool is last and may hold spaces.
    let pool = line.split_once(" pool=").map(|(_, pool)| pool);
    let what = match pool {
        Some(pool) => format!("{sapi}, pool {pool}"),
        None => sapi.to_owned(),
    };
    Some(format!("pid {pid} ({what}) for {:.1} s", (now - since).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_words() {
        let record = "joinblock-holder pid=4242 since=100.000 sapi=fpm-fcgi pool=www site\n";
        assert_eq!(describe(record, 131.25).as_deref(), Some("pid 4242 (fpm-fcgi, pool www site) for 31.2 s"));
        assert_eq!(describe("joinblock-holder pid=7 since=5 sapi=cli\n", 6.0).as_deref(), Some("pid 7 (cli) for 1.0 s"));
        assert_eq!(describe("", 1.0), None, "an empty file: no record");
        assert_eq!(describe("joinblock-holder pid=x since=1 sapi=cli", 1.0), None);
        assert_eq!(describe("something else entirely", 1.0), None);
    }

    #[test]
    fn a_written_record_reads_back_and_shrinks_a_longer_file() {
        let path = std::env::temp_dir().join(format!("joinblock-unit-holder-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::write(&path, vec![b'x'; 300]).unwrap();
        write(&file, 300);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(text.starts_with(&format!("joinblock-holder pid={} since=", std::process::id())), "{text}");
        assert!(text.ends_with('\n') && text.len() < 300, "{text:?}");
        let shown = read(&file).unwrap();
        assert!(shown.starts_with(&format!("pid {} (", std::process::id())), "{shown}");
    }
}
