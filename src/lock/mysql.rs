//! The `mysql` backend: `GET_LOCK` on the MySQL or MariaDB server that every web host of a
//! WordPress site already shares, so that a member's lock holds across hosts.
//!
//! # Invariant
//!
//! A party is inside the critical section for a key only while its connection holds
//! `GET_LOCK('join-lock-<sha1>')`. The server grants a name to one connection at a time and
//! frees it when that connection ends, crash included, so no lock outlives its holder.
//!
//! # How the steps keep it
//!
//! - One connection per process (per PHP-FPM worker), opened on first use, reused across
//!   requests, and re-opened when it was lost. A lock remembers which connection took it: once
//!   that connection is gone, `is_held()` is false and release says the lock was lost.
//! - `GET_LOCK` is re-entrant per connection, so a second acquisition by the thread that holds a
//!   name would be let in twice: it is refused, as in the file backend.
//! - Waits run as `GET_LOCK` calls of at most `WAIT_SLICE`, so no socket read outlives its
//!   timeout and a dead server is noticed.
//! - After `fork`, a child must neither use nor close the parent's connection (closing it would
//!   end the parent's session and free its locks): it forgets it and opens its own.
//! - A Galera cluster (`wsrep_on`) does not replicate `GET_LOCK`, and a read-only server is a
//!   replica that other hosts may not share: both are refused.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use mysql::{prelude::Queryable, Conn, OptsBuilder};
use parking_lot::Mutex;

use super::{lock_name, record_acquired, record_timeout, Claim, LockError, LockId, Wait};

/// Longest single `GET_LOCK` wait; longer waits repeat it.
const WAIT_SLICE: Duration = Duration::from_secs(5);
/// Connecting, and any reply other than a `GET_LOCK` wait.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Debian's socket for a `localhost` server, as mysqli uses it.
const DEFAULT_SOCKET: &str = "/run/mysqld/mysqld.sock";

/// Where the locks live. The password never appears in `Debug` or in messages.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlTarget {
    pub host: String,
    pub port: u16,
    pub socket: Option<String>,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl fmt::Debug for MysqlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl MysqlTarget {
    /// `mysql://user:password@host:port/dbname`, parts percent-encoded; `?socket=/path` for a
    /// Unix socket.
    pub fn from_url(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text).map_err(|e| format!("is not a valid URL ({e})"))?;
        if url.scheme() != "mysql" {
            return Err(format!("has scheme \"{}\"; expected mysql://user:password@host:port/dbname", url.scheme()));
        }
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "has a part that is not UTF-8 once decoded".to_string())
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("names no host")?;
        let database = decode(url.path().trim_start_matches('/'))?;
        if database.is_empty() || database.contains('/') {
            return Err("must name one database: mysql://user:password@host:port/dbname".into());
        }
        let socket = url.query_pairs().find(|(k, _)| k == "socket").map(|(_, v)| v.into_owned());
        Ok(MysqlTarget {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: url.port().unwrap_or(3306),
            socket,
            user: decode(url.username())?,
            password: decode(url.password().unwrap_or(""))?,
            database,
        })
    }

    /// WordPress's `DB_HOST` forms: `host`, `host:port`, `host:/path/to/socket`, `[::1]:port`;
    /// `localhost` alone means the default socket, as mysqli reads it.
    pub fn from_wordpress(db_host: &str, user: &str, password: &str, database: &str) -> Result<Self, String> {
        let db_host = db_host.trim();
        let (host, rest) = match db_host.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) = v6.split_once(']').ok_or("has an unclosed [")?;
                (host, rest.strip_prefix(':'))
            }
            None => match db_host.split_once(':') {
                Some((host, rest)) => (host, Some(rest)),
                None => (db_host, None),
            },
        };
        if host.is_empty() {
            return Err("names no host".into());
        }
        let (port, socket) = match rest {
            Some(path) if path.starts_with('/') => (3306, Some(path.to_owned())),
            Some(port) => (port.parse().map_err(|_| format!("has port \"{port}\", not a number from 1 to 65535"))?, None),
            None if host == "localhost" => (3306, Some(DEFAULT_SOCKET.to_owned())),
            None => (3306, None),
        };
        if port == 0 {
            return Err("has port 0".into());
        }
        if database.is_empty() {
            return Err("needs a database name".into());
        }
        Ok(MysqlTarget {
            host: host.to_owned(),
            port,
            socket,
            user: user.to_owned(),
            password: password.to_owned(),
            database: database.to_owned(),
        })
    }

    /// `user@host:port/db` or `user@localhost:/socket/db`: enough to find it, no password.
    pub fn describe(&self) -> String {
        match &self.socket {
            Some(socket) => format!("{}@{}:{}/{}", self.user, self.host, socket, self.database),
            None => format!("{}@{}:{}/{}", self.user, self.host, self.port, self.database),
        }
    }

    /// Connection options; connecting gives up after `connect_within`.
    fn options(&self, connect_within: Duration) -> OptsBuilder {
        let builder = OptsBuilder::new()
            .user(Some(&self.user))
            .pass(Some(&self.password))
            .db_name(Some(&self.database))
            .tcp_connect_timeout(Some(connect_within))
            .read_timeout(Some(WAIT_SLICE + IO_TIMEOUT))
            .write_timeout(Some(IO_TIMEOUT))
            // Otherwise the client asks a TCP server for its socket path and moves to it.
            .prefer_socket(false);
        match &self.socket {
            Some(socket) => builder.socket(Some(socket)),
            None => builder.ip_or_hostname(Some(&self.host)).tcp_port(self.port),
        }
    }
}

/// This process's connection, and which one it is: a lock remembers the generation that took
/// it, so it can tell when the connection it lived on was replaced.
struct Connection {
    conn: Conn,
    target: MysqlTarget,
    pid: u32,
    generation: u64,
}

static CONNECTION: Mutex<Option<Connection>> = Mutex::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Runs `work` on this process's live connection to `target`, opening one if needed (giving
/// up on connecting at `deadline`, when there is one).
fn with_connection<T>(
    target: &MysqlTarget,
    deadline: Option<Instant>,
    work: impl FnOnce(&mut Conn, u64) -> Result<T, mysql::Error>,
) -> Result<T, LockError> {
    let mut slot = own_connection();
    if slot.as_ref().is_some_and(|c| c.target != *target) {
        // Locks held on the old connection end with it; they report themselves lost.
        *slot = None;
    }
    if slot.is_none() {
        let connect_within = deadline.map_or(IO_TIMEOUT, |d| d.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), IO_TIMEOUT));
        *slot = Some(open(target, std::process::id(), connect_within)?);
    }
    run(&mut slot, target, work)
}

/// Runs `work` on the connection of `generation` if it is still this process's live one;
/// `Ok(None)` when it is gone. Never opens a connection: a lock's connection cannot come back.
fn with_lock_connection<T>(
    target: &MysqlTarget,
    generation: u64,
    work: impl FnOnce(&mut Conn, u64) -> Result<T, mysql::Error>,
) -> Result<Option<T>, LockError> {
    let mut slot = own_connection();
    if slot.as_ref().is_none_or(|c| c.generation != generation) {
        return Ok(None);
    }
    run(&mut slot, target, work).map(Some)
}

/// The connection slot, minus one inherited across fork: closing that would end the parent's
/// session and free its locks, so it is forgotten instead.
fn own_connection() -> parking_lot::MutexGuard<'static, Option<Connection>> {
    let mut slot = CONNECTION.lock();
    if slot.as_ref().is_some_and(|c| c.pid != std::process::id()) {
        std::mem::forget(slot.take());
    }
    slot
}

/// Runs `work` on the open connection in `slot`, dropping it when it turns out to be dead.
fn run<T>(
    slot: &mut Option<Connection>,
    target: &MysqlTarget,
    work: impl FnOnce(&mut Conn, u64) -> Result<T, mysql::Error>,
) -> Result<T, LockError> {
    let connection = slot.as_mut().expect("an open connection");
    work(&mut connection.conn, connection.generation).map_err(|e| {
        if is_connection_error(&e) {
            // Re-opened on next use; the locks it held are gone with it.
            *slot = None;
        }
        LockError::Database { action: format!("use MySQL server {}", target.describe()), detail: describe_error(&e) }
    })
}

fn open(target: &MysqlTarget, pid: u32, connect_within: Duration) -> Result<Connection, LockError> {
    let server = target.describe();
    let fail = |e: mysql::Error| LockError::Database { action: format!("connect to MySQL server {server}"), detail: describe_error(&e) };
    let mut conn = Conn::new(target.options(connect_within)).map_err(fail)?;
    let (wsrep_on, read_only): (Option<String>, Option<String>) = conn
        .query_first("SELECT @@global.wsrep_on, @@global.read_only")
        .or_else(|_| conn.query_first::<Option<String>, _>("SELECT @@global.read_only").map(|r| r.map(|r| (None, r))))
        .map_err(fail)?
        .unwrap_or((None, None));
    if let Some(reason) = unsafe_server(wsrep_on.as_deref(), read_only.as_deref()) {
        return Err(LockError::UnsafeServer { server, reason });
    }
    Ok(Connection { conn, target: target.clone(), pid, generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1 })
}

/// Why `GET_LOCK` on a server with these settings would not exclude other hosts, if it would not.
fn unsafe_server(wsrep_on: Option<&str>, read_only: Option<&str>) -> Option<&'static str> {
    let on = |v: Option<&str>| v.is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON"));
    if on(wsrep_on) {
        Some("it is a Galera cluster node (wsrep_on), where GET_LOCK holds on one node only")
    } else if on(read_only) {
        Some("it is read-only, so a replica; locks must be taken on the primary that every host shares")
    } else {
        None
    }
}

/// The server's own words for its errors ("ERROR 1045 (28000): Access denied …"); the OS's
/// for I/O errors.
fn describe_error(err: &mysql::Error) -> String {
    match err {
        mysql::Error::MySqlError(server) => server.to_string(),
        mysql::Error::IoError(io) => io.to_string(),
        mysql::Error::DriverError(driver) => driver.to_string(),
        other => other.to_string(),
    }
}

fn is_connection_error(err: &mysql::Error) -> bool {
    matches!(err, mysql::Error::IoError(_) | mysql::Error::DriverError(_) | mysql::Error::CodecError(_))
}

/// A lock held through `GET_LOCK`. Dropping it releases it.
#[derive(Debug)]
pub struct DbLock {
    name: String,
    target: MysqlTarget,
    generation: u64,
    /// `None` once released.
    claim: Option<Claim>,
}

impl DbLock {
    pub fn acquire(target: &MysqlTarget, key: &[u8], wait: Wait) -> Result<DbLock, LockError> {
        let name = lock_name(key)?;
        let describe = || format!("MySQL lock {name} on {}", target.describe());
        let claim = Claim::new(LockId::Mysql(format!("{} {name}", target.describe())), thread::current().id(), std::process::id())
            .ok_or_else(|| LockError::AlreadyHeld { lock: describe() })?;
        let started = Instant::now();
        let deadline = match wait {
            Wait::Forever => None,
            Wait::AtMost(limit) => started.checked_add(limit),
        };
        let mut waited = false;
        loop {
            let slice = deadline.map_or(WAIT_SLICE, |d| d.saturating_duration_since(Instant::now()).min(WAIT_SLICE));
            let (granted, generation) = with_connection(target, deadline, |conn, generation| {
                let granted: Option<Option<i64>> = conn.exec_first("SELECT GET_LOCK(?, ?)", (&name, slice.as_secs_f64()))?;
                Ok((granted.flatten(), generation))
            })?;
            match granted {
                Some(1) => {
                    record_acquired(waited || started.elapsed() > Duration::from_millis(1));
                    return Ok(DbLock { name, target: target.clone(), generation, claim: Some(claim) });
                }
                Some(_) if deadline.is_none_or(|d| Instant::now() < d) => waited = true,
                Some(_) => {
                    record_timeout();
                    return Err(LockError::Timeout { lock: describe(), waited: started.elapsed() });
                }
                None => {
                    return Err(LockError::Database {
                        action: format!("take {}", describe()),
                        detail: "GET_LOCK answered NULL (the server killed the wait or ran out of memory)".into(),
                    })
                }
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while this process's connection still holds the lock (asks the server).
    pub fn is_held(&self) -> bool {
        let Some(claim) = &self.claim else { return false };
        if claim.pid != std::process::id() {
            return false;
        }
        with_lock_connection(&self.target, self.generation, |conn, _| {
            let owner: Option<Option<u64>> = conn.exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (&self.name,))?;
            Ok(owner.flatten() == Some(1))
        })
        .is_ok_and(|held| held == Some(true))
    }

    /// `RELEASE_LOCK`; releasing again, or from a forked child, does nothing. A lock whose
    /// connection was lost is reported, since someone else may hold it by now.
    pub fn release(&mut self) -> Result<(), LockError> {
        let Some(claim) = self.claim.take() else { return Ok(()) };
        if claim.pid != std::process::id() {
            return Ok(());
        }
        let lost = || LockError::Lost { lock: format!("MySQL lock {} on {}", self.name, self.target.describe()) };
        let released = with_lock_connection(&self.target, self.generation, |conn, _| {
            let released: Option<Option<i64>> = conn.exec_first("SELECT RELEASE_LOCK(?)", (&self.name,))?;
            Ok(released.flatten() == Some(1))
        });
        match released {
            Ok(Some(true)) => Ok(()),
            _ => Err(lost()),
        }
    }
}

impl Drop for DbLock {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = MysqlTarget::from_url("mysql://wp%40site:p%3Ass@db.internal:3307/word%20press").unwrap();
        assert_eq!((t.user.as_str(), t.password.as_str(), t.host.as_str(), t.port), ("wp@site", "p:ss", "db.internal", 3307));
        assert_eq!(t.database, "word press");
        let t = MysqlTarget::from_url("mysql://u@localhost/wp?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(t.socket.as_deref(), Some("/run/mysqld/mysqld.sock"));
        assert_eq!(t.port, 3306);
        assert!(MysqlTarget::from_url("postgres://u@h/db").unwrap_err().contains("scheme"));
        assert!(MysqlTarget::from_url("mysql://u@h/").unwrap_err().contains("one database"));
        assert!(MysqlTarget::from_url("nonsense").unwrap_err().contains("not a valid URL"));
    }

    #[test]
    fn wordpress_db_host_forms() {
        let t = |h: &str| MysqlTarget::from_wordpress(h, "u", "secret", "wp").map(|t| (t.host, t.port, t.socket));
        assert_eq!(t("db.internal").unwrap(), ("db.internal".into(), 3306, None));
        assert_eq!(t("127.0.0.1:3307").unwrap(), ("127.0.0.1".into(), 3307, None));
        assert_eq!(t("localhost:/var/run/mysqld.sock").unwrap(), ("localhost".into(), 3306, Some("/var/run/mysqld.sock".into())));
        assert_eq!(t("localhost").unwrap(), ("localhost".into(), 3306, Some(DEFAULT_SOCKET.into())));
        assert_eq!(t("[::1]:3310").unwrap(), ("::1".into(), 3310, None));
        assert!(t("db:notaport").unwrap_err().contains("not a number"));
        assert!(t("").unwrap_err().contains("no host"));
        assert!(MysqlTarget::from_wordpress("h", "u", "p", "").unwrap_err().contains("database"));
    }

    #[test]
    fn password_never_shown() {
        let t = MysqlTarget::from_wordpress("db:3306", "wp", "hunter2-secret", "site").unwrap();
        assert_eq!(t.describe(), "wp@db:3306/site");
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn galera_and_replicas_are_refused() {
        assert_eq!(unsafe_server(Some("0"), Some("0")), None);
        assert_eq!(unsafe_server(None, Some("OFF")), None);
        assert!(unsafe_server(Some("1"), Some("0")).unwrap().contains("Galera"));
        assert!(unsafe_server(Some("ON"), None).unwrap().contains("Galera"));
        assert!(unsafe_server(Some("0"), Some("1")).unwrap().contains("read-only"));
    }
}
