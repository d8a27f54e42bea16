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
//! - One connection per thread, opened on its first lock and reused by that thread's later
//!   requests: a PHP-FPM worker's one thread, each request thread of a threaded server (Apache's
//!   event MPM with a thread-safe PHP). `GET_LOCK` is re-entrant per connection, so two threads
//!   on one connection would both be let in; a connection therefore never leaves its thread
//!   (it lives in a thread-local, and a `DbLock` cannot be sent to another thread), and no
//!   thread waits on another's I/O.
//! - A lock remembers which connection took it: once that connection is gone, `is_held()` is
//!   false and release says the lock was lost. A lost connection never comes back, so a lost
//!   lock can never be mistaken for a held one.
//! - Servers and proxies drop idle connections (`wait_timeout`, restarts, `KILL`). A reused
//!   connection that turns out dead on an acquire is replaced and the `GET_LOCK` sent once
//!   more: whatever the dead connection held, the server has already freed, and the new
//!   `GET_LOCK` only asks again. No check is sent before use, so a live connection costs one
//!   round trip per lock, as before.
//! - `GET_LOCK` would also let the thread that holds a name in twice: a second acquisition by
//!   that thread is refused, as in the file backend.
//! - Moving to another server (or another spelling of it) while this thread holds locks on
//!   the current one is refused: replacing the connection would free them silently.
//! - Every wait on the server is bounded: connecting by the connect bound (a Unix socket's
//!   connect, which the crate does not bound, by an [`Alarm`]), and each reply by the
//!   `GET_LOCK` slice it waits for plus that bound, so a silent server is noticed.
//! - After `fork`, the child runs only the forking thread but holds a copy of every thread's
//!   socket. Every connected socket is listed in [`fork`], whose child handler detaches each
//!   one (without telling the server: that would end the parent's session and free its
//!   locks). The forking thread's own connection is dropped at its next use; the other
//!   threads' never run again. Closing the
//!   copies at once means a parent killed while holding a lock frees it at once too, even
//!   while the child lives on. The one gap: a socket still connecting in another thread at the
//!   moment of the fork is listed only once connected, so the child keeps that copy until it
//!   exits; it held no lock at the fork, but a lock its thread takes later in the parent then
//!   outlives the parent until the child ends too.
//! - A Galera cluster (`wsrep_on`) does not replicate `GET_LOCK`, and a read-only server is a
//!   replica that other hosts may not share: both are refused.
//! - A reply that did not come in time ends its connection (a late reply would be read as the
//!   answer to the next statement), and is never retried: a retry would double the wait the
//!   caller was promised. Only a connection found dead (closed, reset, "gone away") is.
//! - Every connection speaks utf8mb4 with a known `sql_mode` from its first statement on, so
//!   what it stores and reads means the same whatever the server's defaults (latin1 on many).
//! - The tag check's site-wide shared state has a connection of its own per thread
//!   ([`with_state_connection`]): giving up on one of its statements at the call's deadline
//!   ends that connection, which must never free a member's lock held on the other.

use std::{
    cell::RefCell,
    fmt, io,
    marker::PhantomData,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use mysql::{prelude::Queryable, Conn, OptsBuilder};

use super::{alarm::Alarm, fork, lock_name, record_acquired, record_timeout, Claim, LockError, LockId, Wait};

/// Longest single `GET_LOCK` wait; longer waits repeat it.
const WAIT_SLICE: Duration = Duration::from_secs(5);
/// Debian's socket for a `localhost` server, as mysqli uses it.
const DEFAULT_SOCKET: &str = "/run/mysqld/mysqld.sock";
/// Server errors that mean the connection itself is finished: 1053 shutdown in progress,
/// 1152 connection aborted, 1927 connection killed (MariaDB), 4031 idle too long (MySQL 8);
/// 2006 and 2013, "gone away" and "lost connection", as other clients report them.
const CONNECTION_ENDED_CODES: [u16; 6] = [1053, 1152, 1927, 4031, 2006, 2013];
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

    /// Connection options: connecting, and every reply while connecting, within `bound`.
    fn options(&self, bound: Duration) -> OptsBuilder {
        let builder = OptsBuilder::new()
            .user(Some(&self.user))
            .pass(Some(&self.password))
            .db_name(Some(&self.database))
            .tcp_connect_timeout(Some(bound))
            .read_timeout(Some(bound))
            .write_timeout(Some(bound))
            // Otherwise the client asks a TCP server for its socket path and moves to it.
            .prefer_socket(false);
        match &self.socket {
            Some(socket) => builder.socket(Some(socket)),
            None => builder.ip_or_hostname(Some(&self.host)).tcp_port(self.port),
        }
    }
}


/// This thread's connection, and which one it is: a lock remembers the generation that took
/// it, so it can tell when the connection it lived on was replaced.
struct Connection {
    conn: Conn,
    /// Where its socket is listed for the fork handler.
    listed: &'static fork::Listed,
    target: MysqlTarget,
    pid: u32,
    generation: u64,
    /// Locks taken on this connection and not released yet.
    locks: usize,
    /// How long the reply now awaited may take, for the message when it does not come.
    reply_limit: Duration,
    /// MariaDB (`max_statement_time`), else MySQL.
    mariadb: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.listed.unlist(self.conn.as_raw_fd());
    }
}

type ConnectionCell = RefCell<Option<Connection>>;

thread_local! {
    /// Per thread, never shared: see the module's invariant. A thread's requests run one
    /// after another, so they reuse it; it is dropped (and the server told) when the thread ends.
    static CONNECTION: ConnectionCell = const { RefCell::new(None) };
    /// The site-wide shared state's, apart from the locks' (see the module's invariant).
    static STATE_CONNECTION: ConnectionCell = const { RefCell::new(None) };
}

/// Process-wide, so that every connection, on whichever thread, has its own number.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// This thread's connection slot.
struct Slot<'a>(&'a mut Option<Connection>);

impl Slot<'_> {
    /// Runs `work` on this thread's slot, minus a connection inherited across fork (its socket
    /// is already detached). `None` once the thread is ending and its slot is gone.
    fn with<T>(work: impl FnOnce(Slot) -> T) -> Option<T> {
        Slot::of(&CONNECTION, work)
    }

    fn of<T>(cell: &'static std::thread::LocalKey<ConnectionCell>, work: impl FnOnce(Slot) -> T) -> Option<T> {
        cell
            .try_with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_some_and(|c| c.pid != std::process::id()) {
                    *slot = None;
                }
                work(Slot(&mut slot))
            })
            .ok()
    }

    fn open(&mut self, target: &MysqlTarget, bound: Duration) -> Result<&mut Connection, LockError> {
        if bound.is_zero() {
            return Err(LockError::Database { action: format!("connect to MySQL server {}", target.describe()), detail: NO_TIME_LEFT.into() });
        }
        Ok(self.0.insert(open(target, bound)?))
    }

    /// Drops the connection; one that died is detached first, so nothing is sent on it.
    fn close(&mut self, dead: bool) {
        if let Some(connection) = self.0.take() {
            if dead {
                fork::detach(connection.conn.as_raw_fd());
            }
        }
    }
}

/// Runs `work` on this thread's live connection to `target`, opening one if needed. A reused
/// connection found dead is replaced and `work` run once more: it only asks for a lock or asks
/// who holds one, which may be asked again, and whatever the dead connection held, the server
/// freed with it.
fn with_connection<T>(
    target: &MysqlTarget,
    connect_timeout: Duration,
    work: impl FnMut(&mut Connection) -> Result<T, mysql::Error>,
) -> Result<T, LockError> {
    Slot::with(|slot| on_connection(slot, target, connect_timeout, None, work)).unwrap_or_else(|| {
        Err(LockError::Database {
            action: format!("use MySQL server {}", target.describe()),
            detail: "this thread is ending".into(),
        })
    })
}

/// As `with_connection`; a connection opened here takes at most `connect_timeout`, and no
/// longer than until `give_up` when given.
fn on_connection<T>(
    mut slot: Slot,
    target: &MysqlTarget,
    connect_timeout: Duration,
    give_up: Option<Instant>,
    mut work: impl FnMut(&mut Connection) -> Result<T, mysql::Error>,
) -> Result<T, LockError> {
    if let Some(current) = slot.0.as_ref().filter(|c| c.target != *target) {
        if current.locks > 0 {
            return Err(LockError::ServerChanged { from: current.target.describe(), to: target.describe(), held: current.locks });
        }
        slot.close(false);
    }
    let mut reused = slot.0.is_some();
    loop {
        let bound = give_up.map_or(connect_timeout, |at| at.saturating_duration_since(Instant::now()).min(connect_timeout));
        let connection = match slot.0.as_mut() {
            Some(connection) => connection,
            None => slot.open(target, bound)?,
        };
        let failure = match work(connection) {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        let error = use_error(target, &failure, connection.reply_limit);
        let ended = connection_ended(&failure);
        if ended {
            slot.close(true);
        }
        if !(ended && reused) || timed_out(&failure) {
            return Err(error);
        }
        // Stale: the server or a proxy dropped it while it sat idle. Once more, on a new one.
        reused = false;
    }
}

/// Runs `work` on the connection of `generation` if it is still this thread's live one;
/// `Ok(None)` when it is gone. Never opens a connection: a lock's connection cannot come back.
fn with_lock_connection<T>(
    target: &MysqlTarget,
    generation: u64,
    work: impl FnOnce(&mut Connection) -> Result<T, mysql::Error>,
) -> Result<Option<T>, LockError> {
    Slot::with(|mut slot| {
        let Some(connection) = slot.0.as_mut().filter(|c| c.generation == generation) else { return Ok(None) };
        let failure = match work(connection) {
            Ok(value) => return Ok(Some(value)),
            Err(failure) => failure,
        };
        let error = use_error(target, &failure, connection.reply_limit);
        if connection_ended(&failure) {
            slot.close(true);
        }
        Err(error)
    })
    .unwrap_or(Ok(None))
}

/// What the site-wide shared state's statements run on: the connection, which server it is,
/// and until when its replies may come (the server is told the same, [`StateSession::limited`]).
pub struct StateSession<'a> {
    conn: &'a mut Conn,
    mariadb: bool,
    give_up: Instant,
    cap: Duration,
}

impl StateSession<'_> {
    /// `sql` with the server's own limit on its run time, the time left now, so that a
    /// statement given up by the client (at the call's deadline) does not run on, holding a
    /// row lock or a connection: MariaDB's `max_statement_time` for any statement; MySQL's
    /// `MAX_EXECUTION_TIME` hint bounds only a `SELECT` (its row-lock waits are bounded by
    /// `innodb_lock_wait_timeout` and `lock_wait_timeout`, set at connect). The reply is waited for as long.
    fn limited(&mut self, sql: &str) -> Result<String, mysql::Error> {
        let left = self.give_up.saturating_duration_since(Instant::now()).min(self.cap);
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, NO_TIME_LEFT).into());
        }
        set_read_timeout(self.conn, left)?;
        let seconds = left.as_secs_f64().max(0.001);
        Ok(if self.mariadb {
            format!("SET STATEMENT max_statement_time = {seconds:.3} FOR {sql}")
        } else if let Some(rest) = sql.strip_prefix("SELECT ") {
            format!("SELECT /*+ MAX_EXECUTION_TIME({}) */ {rest}", (seconds * 1000.0).ceil() as u64)
        } else {
            sql.to_owned()
        })
    }

    /// Runs a statement that returns no rows, within the time left.
    pub fn run(&mut self, sql: &str) -> Result<(), mysql::Error> {
        let sql = self.limited(sql)?;
        self.conn.query_drop(sql)
    }

    /// The rows of `sql`, within the time left, unconverted (see [`text_cell`], [`int_cell`]).
    pub fn rows(&mut self, sql: &str) -> Result<Vec<mysql::Row>, mysql::Error> {
        let sql = self.limited(sql)?;
        self.conn.query(sql)
    }

    /// The first row of `sql`, within the time left.
    pub fn first(&mut self, sql: &str) -> Result<Option<mysql::Row>, mysql::Error> {
        let sql = self.limited(sql)?;
        first_row(self.conn, &sql)
    }

    /// `LAST_INSERT_ID()` as the last statement's reply reported it.
    pub fn last_insert_id(&self) -> u64 {
        self.conn.last_insert_id()
    }

    /// The rows the last statement changed.
    pub fn affected_rows(&self) -> u64 {
        self.conn.affected_rows()
    }
}

/// Runs `work` on this thread's connection for the site-wide shared state (its own, not the
/// locks'), opening one if needed; every wait on the server, opening included, ends by
/// `give_up` and within `connect_timeout`. A reply that does not come in time ends the
/// connection and is not retried (see the module's invariant).
pub fn with_state_connection<T>(
    target: &MysqlTarget,
    connect_timeout: Duration,
    give_up: Instant,
    mut work: impl FnMut(&mut StateSession) -> Result<T, mysql::Error>,
) -> Result<T, LockError> {
    Slot::of(&STATE_CONNECTION, |slot| {
        on_connection(slot, target, connect_timeout, Some(give_up), |connection| {
            connection.reply_limit = give_up.saturating_duration_since(Instant::now()).min(connect_timeout);
            work(&mut StateSession { conn: &mut connection.conn, mariadb: connection.mariadb, give_up, cap: connect_timeout })
        })
    })
    .unwrap_or_else(|| {
        Err(LockError::Database { action: format!("use MySQL server {}", target.describe()), detail: "this thread is ending".into() })
    })
}

/// Why a connection was not even tried.
const NO_TIME_LEFT: &str = "the call's deadline left no time to wait for the server";

/// Closes this thread's connection if it is still the one of `generation` (the server then
/// frees every lock it held); how many locks it still held, or `None` when it was gone.
fn close_lock_connection(generation: u64) -> Option<usize> {
    Slot::with(|mut slot| {
        let others = slot.0.as_ref().filter(|c| c.generation == generation)?.locks;
        slot.close(false);
        Some(others)
    })
    .flatten()
}

fn use_error(target: &MysqlTarget, err: &mysql::Error, reply_limit: Duration) -> LockError {
    let late = format!(
        "the server did not answer within {:.3} s (the lock wait asked for, plus joinblock.mysql_connect_timeout)",
        reply_limit.as_secs_f64()
    );
    LockError::Database { action: format!("use MySQL server {}", target.describe()), detail: describe_error(err, &late) }
}

impl Connection {
    /// Waits for the next replies at most `wait` (what the server was asked to wait) plus
    /// the connect bound.
    fn expect_reply_within(&mut self, wait: Duration, connect_timeout: Duration) -> Result<(), mysql::Error> {
        self.reply_limit = wait.saturating_add(connect_timeout);
        set_read_timeout(&self.conn, self.reply_limit)
    }
}

fn set_read_timeout(conn: &Conn, limit: Duration) -> Result<(), mysql::Error> {
    // A zero timeval would mean no limit at all.
    let limit = limit.max(Duration::from_millis(1));
    let timeout = libc::timeval {
        tv_sec: limit.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_usec: limit.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on the connection's own socket, with a timeval it reads.
    let set = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().into())
    }
}

fn open(target: &MysqlTarget, bound: Duration) -> Result<Connection, LockError> {
    let server = target.describe();
    let late = format!("the server did not answer within {:.3} s (joinblock.mysql_connect_timeout)", bound.as_secs_f64());
    let fail = |e: mysql::Error| LockError::Database { action: format!("connect to MySQL server {server}"), detail: describe_error(&e, &late) };
    let started = Instant::now();
    // The crate bounds a TCP connect, not a Unix socket's (see `alarm`).
    let alarm = target.socket.as_ref().and_then(|_| Alarm::arm(bound));
    let mut conn = Conn::new(target.options(bound)).map_err(fail)?;
    drop(alarm);
    // The server check's reply, within what is left of the bound.
    let left = bound.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    set_read_timeout(&conn, left).map_err(fail)?;
    let (wsrep_on, read_only, mariadb) = match first_row(&mut conn, "SELECT @@global.wsrep_on, @@global.read_only") {
        Ok(row) => (text_cell(&row, 0), text_cell(&row, 1), true),
        // MySQL has no wsrep_on.
        Err(mysql::Error::MySqlError(_)) => (None, first_row(&mut conn, "SELECT @@global.read_only").map_err(fail).map(|row| text_cell(&row, 0))?, false),
        Err(other) => return Err(fail(other)),
    };
    if let Some(reason) = unsafe_server(wsrep_on.as_deref(), read_only.as_deref()) {
        return Err(LockError::UnsafeServer { server, reason });
    }
    conn.query_drop(SESSION_SETTINGS).map_err(fail)?;
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    let listed = fork::list(conn.as_raw_fd());
    Ok(Connection { conn, listed, target: target.clone(), pid: std::process::id(), generation, locks: 0, reply_limit: bound, mariadb })
}

/// Sent once per connection, before anything is stored or read: utf8mb4 (the tables' charset,
/// and the polyfill's, so both store and compare the same bytes), a `sql_mode` of our choice
/// (a server's `ANSI_QUOTES` or `NO_BACKSLASH_ESCAPES` would change what our statements mean),
/// and row-lock and table-lock waits cut at 1 s (MySQL's only server-side bounds on an
/// `UPDATE`; a table lock's default wait is a year). `GET_LOCK` keeps its own timeout.
const SESSION_SETTINGS: &str = "SET NAMES utf8mb4 COLLATE utf8mb4_bin, SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', \
    SESSION innodb_lock_wait_timeout = 1, SESSION lock_wait_timeout = 1";

/// The first row of `sql`'s reply, if any, read without converting anything: nothing a
/// server sends can make a conversion panic (see [`text_cell`], [`int_cell`]).
fn first_row(conn: &mut Conn, sql: &str) -> Result<Option<mysql::Row>, mysql::Error> {
    conn.query_first::<mysql::Row, _>(sql)
}

/// Column `i` of `row` as text, `None` for NULL, a missing column or bytes that are not UTF-8.
pub fn text_cell(row: &Option<mysql::Row>, i: usize) -> Option<String> {
    match row.as_ref()?.as_ref(i)? {
        mysql::Value::Bytes(bytes) => String::from_utf8(bytes.clone()).ok(),
        mysql::Value::NULL => None,
        other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

/// Column `i` of `row` as a whole number (text or binary protocol), `None` otherwise.
pub fn int_cell(row: &Option<mysql::Row>, i: usize) -> Option<i64> {
    match row.as_ref()?.as_ref(i)? {
        mysql::Value::Int(n) => Some(*n),
        mysql::Value::UInt(n) => i64::try_from(*n).ok(),
        mysql::Value::Bytes(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
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

/// A sentence: the server's own words for its errors ("ERROR 1045 (28000): Access denied …"),
/// the OS's for I/O errors, and `late` for a reply that did not come in time.
fn describe_error(err: &mysql::Error, late: &str) -> String {
    use mysql::DriverError;
    let io = |e: &io::Error| match e.kind() {
        // Interrupted: by the connect's alarm, at the bound.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => late.to_owned(),
        io::ErrorKind::UnexpectedEof => "the server closed the connection".to_owned(),
        _ => e.to_string(),
    };
    match err {
        mysql::Error::MySqlError(server) => server.to_string(),
        mysql::Error::IoError(e) => io(e),
        mysql::Error::CodecError(codec) => match std::error::Error::source(codec).and_then(|s| s.downcast_ref::<io::Error>()) {
            Some(e) => io(e),
            None => format!("the server's reply could not be read ({codec})"),
        },
        mysql::Error::DriverError(DriverError::ConnectTimeout) => late.to_owned(),
        mysql::Error::DriverError(DriverError::CouldNotConnect(Some((_, _, io::ErrorKind::Interrupted)))) => late.to_owned(),
        mysql::Error::DriverError(DriverError::CouldNotConnect(Some((address, reason, _)))) => {
            format!("connecting to {address} failed: {reason}")
        }
        mysql::Error::DriverError(other) => format!("{other}"),
        mysql::Error::UrlError(other) => format!("{other}"),
        other => format!("unexpected reply ({})", other.to_string().split(" {").next().unwrap_or("error")),
    }
}

/// Whether the connection is finished after `err`, rather than one statement having failed.
/// A reply that did not come within its limit (the socket's read timeout).
fn timed_out(err: &mysql::Error) -> bool {
    let late = |e: &io::Error| matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
    match err {
        mysql::Error::IoError(e) => late(e),
        mysql::Error::CodecError(codec) => std::error::Error::source(codec).and_then(|s| s.downcast_ref::<io::Error>()).is_some_and(late),
        _ => false,
    }
}

fn connection_ended(err: &mysql::Error) -> bool {
    match err {
        mysql::Error::MySqlError(server) => CONNECTION_ENDED_CODES.contains(&server.code),
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) | mysql::Error::DriverError(_) => true,
        _ => false,
    }
}

/// A lock held through `GET_LOCK`. Dropping it releases it.
#[derive(Debug)]
pub struct DbLock {
    name: String,
    target: MysqlTarget,
    generation: u64,
    connect_timeout: Duration,
    /// `None` once released.
    claim: Option<Claim>,
    /// Not `Send`: only the thread that took it has its connection, so only that thread can
    /// release it. (PHP frees a request's objects on the request's thread.)
    stays_on_its_thread: PhantomData<*const ()>,
}

impl DbLock {
    pub fn acquire(target: &MysqlTarget, key: &[u8], wait: Wait, connect_timeout: Duration) -> Result<DbLock, LockError> {
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
            let (granted, generation) = with_connection(target, connect_timeout, |connection| {
                // Measured again on a retry: a stale connection's attempt took time too.
                let slice = deadline.map_or(WAIT_SLICE, |d| d.saturating_duration_since(Instant::now()).min(WAIT_SLICE));
                connection.expect_reply_within(slice, connect_timeout)?;
                // Prepared once per connection: the server parses it once, not per lock.
                let granted = connection.conn.exec_first::<Option<i64>, _, _>("SELECT GET_LOCK(?, ?)", (&name, slice.as_secs_f64()))?.flatten();
                if granted == Some(1) {
                    connection.locks += 1;
                }
                Ok((granted, connection.generation))
            })?;
            match granted {
                Some(1) => {
                    record_acquired(waited || started.elapsed() > Duration::from_millis(1));
                    return Ok(DbLock {
                        name,
                        target: target.clone(),
                        generation,
                        connect_timeout,
                        claim: Some(claim),
                        stays_on_its_thread: PhantomData,
                    });
                }
                Some(_) if deadline.is_none_or(|d| Instant::now() < d) => waited = true,
                Some(_) => {
                    record_timeout();
                    let holder = holder_of(target, &name, connect_timeout);
                    return Err(LockError::Timeout { lock: describe(), waited: started.elapsed(), holder });
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

    /// True while this thread's connection still holds the lock (asks the server).
    pub fn is_held(&self) -> bool {
        let Some(claim) = &self.claim else { return false };
        if claim.pid != std::process::id() {
            return false;
        }
        with_lock_connection(&self.target, self.generation, |connection| {
            connection.expect_reply_within(Duration::ZERO, self.connect_timeout)?;
            connection.conn.exec_first::<Option<i64>, _, _>("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (&self.name,))
        })
        .is_ok_and(|held| held.flatten().flatten() == Some(1))
    }

    /// `RELEASE_LOCK`; releasing again, or from a forked child, does nothing. A lock whose
    /// connection was lost is reported, since someone else may hold it by now.
    pub fn release(&mut self) -> Result<(), LockError> {
        let Some(claim) = self.claim.take() else { return Ok(()) };
        if claim.pid != std::process::id() {
            return Ok(());
        }
        let released = with_lock_connection(&self.target, self.generation, |connection| {
            connection.locks = connection.locks.saturating_sub(1);
            connection.expect_reply_within(Duration::ZERO, self.connect_timeout)?;
            connection.conn.exec_first::<Option<i64>, _, _>("SELECT RELEASE_LOCK(?)", (&self.name,))
        });
        let lock = format!("MySQL lock {} on {}", self.name, self.target.describe());
        match released {
            Ok(Some(Some(Some(1)))) => Ok(()),
            // Refused (KILL QUERY, out of memory, a server limit) on a connection that lives
            // on and so still holds the lock: ending it is the one way left to free it.
            Err(LockError::Database { detail, .. }) => match close_lock_connection(self.generation) {
                Some(others) => Err(LockError::ReleaseRefused { lock, detail, others }),
                None => Err(LockError::Lost { lock }),
            },
            _ => Err(LockError::Lost { lock }),
        }
    }
}

/// "MySQL connection 42 (wp@10.0.0.7)": who holds `name` now, as far as the server lets us
/// see (another user's connection shows its user and host only with the PROCESS privilege).
/// One text query, so one round trip (no prepare): a timed-out call ends at most one reply
/// after its last `GET_LOCK`, which README's bound counts. `name` is ours (`join-lock-<hex>`),
/// safe to quote.
fn holder_of(target: &MysqlTarget, name: &str, connect_timeout: Duration) -> Option<String> {
    let who = format!(
        "SELECT l.id, CONCAT(p.USER, '@', p.HOST) FROM (SELECT IS_USED_LOCK('{name}') AS id) AS l \
         LEFT JOIN information_schema.PROCESSLIST AS p ON p.ID = l.id"
    );
    with_connection(target, connect_timeout, |connection| {
        connection.expect_reply_within(Duration::ZERO, connect_timeout)?;
        let row = first_row(&mut connection.conn, &who)?;
        Ok(match (int_cell(&row, 0), text_cell(&row, 1)) {
            (Some(id), Some(account)) => Some(format!("MySQL connection {id} ({account})")),
            (Some(id), None) => Some(format!("MySQL connection {id}")),
            _ => None,
        })
    })
    .ok()
    .flatten()
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

    /// A private MariaDB on a Unix socket in a temporary directory, root without a password;
    /// stopped and removed when dropped. `None` (the caller skips, saying so) without `mariadbd`.
    struct TestServer {
        dir: std::path::PathBuf,
        server: std::process::Child,
    }

    impl TestServer {
        fn start() -> Option<TestServer> {
            use std::process::{Command, Stdio};
            let found = |name: &str| ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].iter().any(|d| std::path::Path::new(d).join(name).exists());
            if !found("mariadbd") || !found("mariadb-install-db") {
                eprintln!("skipped: mariadbd and mariadb-install-db are not installed (Debian: apt install mariadb-server)");
                return None;
            }
            let dir = std::env::temp_dir().join(format!("joinblock-rust-mariadb-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            // mariadbd refuses to run as root unless told to.
            let as_user: &[&str] = if unsafe { libc::geteuid() } == 0 { &["--user=root"] } else { &[] };
            let installed = Command::new("mariadb-install-db")
                .args(["--no-defaults", &format!("--datadir={}/data", dir.display()), "--auth-root-authentication-method=normal", "--skip-test-db"])
                .args(as_user)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(installed.success(), "mariadb-install-db failed in {}", dir.display());
            let server = Command::new("mariadbd")
                .args([
                    "--no-defaults".to_string(),
                    format!("--datadir={}/data", dir.display()),
                    format!("--socket={}/sock", dir.display()),
                    format!("--pid-file={}/pid", dir.display()),
                    format!("--log-error={}/error.log", dir.display()),
                    "--skip-networking".into(),
                    "--innodb-buffer-pool-size=32M".into(),
                ])
                .args(as_user)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let server = TestServer { dir, server };
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::os::unix::net::UnixStream::connect(server.dir.join("sock")).is_err() {
                assert!(Instant::now() < deadline, "mariadbd did not start: {}", std::fs::read_to_string(server.dir.join("error.log")).unwrap_or_default());
                thread::sleep(Duration::from_millis(50));
            }
            Some(server)
        }

        fn target(&self) -> MysqlTarget {
            MysqlTarget::from_wordpress(&format!("localhost:{}/sock", self.dir.display()), "root", "", "mysql").unwrap()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            // SAFETY: a signal to the server this test started.
            unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
            let _ = self.server.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The socket of this thread's connection, if it has one.
    fn own_socket() -> Option<i32> {
        CONNECTION.with_borrow(|slot| slot.as_ref().map(|c| c.conn.as_raw_fd()))
    }

    /// Two threads, one key: each has its own connection, so the server keeps them apart (one
    /// shared connection would let both in, `GET_LOCK` being re-entrant per connection). The
    /// second times out while the first holds the lock, and with no timeout waits until the
    /// first releases it. Then a fork: the child finds every thread's socket detached.
    #[test]
    fn threads_exclude_each_other_and_a_fork_detaches_every_threads_socket() {
        use std::sync::{atomic::AtomicBool, mpsc, Arc};
        let Some(server) = TestServer::start() else { return };
        let target = server.target();
        let bound = Duration::from_secs(5);
        let (holding, held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let let_go = Arc::new(AtomicBool::new(false));
        let first = {
            let (target, let_go) = (target.clone(), let_go.clone());
            thread::spawn(move || {
                let lock = DbLock::acquire(&target, b"member@example.org", Wait::Forever, bound).unwrap();
                holding.send(own_socket().unwrap()).unwrap();
                released.recv().unwrap();
                let_go.store(true, Ordering::SeqCst);
                drop(lock);
                // Stays alive, with its connection, until told to end.
                released.recv().unwrap();
            })
        };
        let first_socket = held.recv().unwrap();

        let short = Duration::from_millis(300);
        let started = Instant::now();
        let err = DbLock::acquire(&target, b" Member@Example.org ", Wait::AtMost(short), bound).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert!(started.elapsed() >= short, "gave up after {:?}", started.elapsed());
        assert!(err.to_string().contains("held by MySQL connection"), "{err}");
        let own = own_socket().unwrap();
        assert_ne!(own, first_socket, "each thread has its own connection");

        // The child has only this thread; both connections' sockets must point at /dev/null.
        let links = [own, first_socket].map(|fd| std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap());
        // SAFETY: the child calls only async-signal-safe functions (readlink), then _exit.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let detached = |link: &std::ffi::CString| {
                let mut target = [0u8; 64];
                let len = unsafe { libc::readlink(link.as_ptr(), target.as_mut_ptr().cast(), target.len()) };
                len > 0 && &target[..len as usize] == b"/dev/null"
            };
            unsafe { libc::_exit(if links.iter().all(detached) { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child kept a thread's socket open");

        let waiter = {
            let (target, let_go) = (target.clone(), let_go.clone());
            thread::spawn(move || {
                let lock = DbLock::acquire(&target, b"member@example.org", Wait::Forever, bound).unwrap();
                let after_release = let_go.load(Ordering::SeqCst);
                drop(lock);
                after_release
            })
        };
        thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "the second thread got in while the first held the lock");
        release.send(()).unwrap();
        assert!(waiter.join().unwrap(), "the second thread got in before the first released");
        // The parent's connections survived the child: the lock is free and still works here.
        DbLock::acquire(&target, b"member@example.org", Wait::AtMost(Duration::ZERO), bound).unwrap().release().unwrap();
        release.send(()).unwrap();
        first.join().unwrap();
    }
}
