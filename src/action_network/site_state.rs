//! The site-wide store: when the site locks on MySQL (`joinblock.lock_backend = mysql`), the
//! request pace and the tag map of each Action Network group live on that server, so that all
//! of the site's hosts keep one pace for the API key (Action Network's limit is per key, not
//! per host) and learn tag names for each other. `joinblock.shared_state_backend = files`
//! keeps them in each host's lock directory (`shared.rs`); `joinblock.shared_state = 0` turns
//! both off. The polyfill (php/polyfill/site-state.php) sends the same statements.
//!
//! # Tables (made on first use, `CREATE TABLE IF NOT EXISTS`, InnoDB, utf8mb4)
//!
//! - `joinblock_an_pace`: one row per group `h = sha1("<base_url> <sha1(api key)>")`:
//!   `last_slot`, the latest request slot taken by any host, and `blocked_until`, until when
//!   Action Network asked every process to wait (`Retry-After`). UTC, the server's clock.
//! - `joinblock_an_tags`: `(group, sha1(href))` -> href, folded name, learned, expires; at most
//!   [`MAX_ENTRIES`] per group, the oldest learned going first.
//!
//! # Invariants, and why
//!
//! - One clock: every time stored or compared is the server's `UTC_TIMESTAMP(6)`; a host only
//!   ever learns durations from it (how long to wait, how old an entry is), so hosts whose
//!   clocks disagree, or step, still keep one pace. As for the files (`shared.rs`), a slot is
//!   taken only when it lies at most one interval ahead of the server's now (otherwise the
//!   process asks again when it will), so a `last_slot` written lies at most one interval
//!   ahead and a `blocked_until` at most [`MAX_BLOCK_SECONDS`]. What is read is clamped to
//!   that (and rewritten so, in the same `UPDATE`): only the server's clock stepped back since
//!   (a restored snapshot, NTP's first step) leaves more, and believing it would hold every
//!   host of the site back until the clock caught up.
//! - One round trip per request paced and no lock held over a request: a slot is taken by
//!   a single `UPDATE` of the group's row (InnoDB holds its row lock for that statement only)
//!   whose wait comes back in the OK packet through `LAST_INSERT_ID(expr)`. Only the group's
//!   first request on a process may add the `INSERT IGNORE` of its row (and the tables).
//! - No secret and nothing personal on the server: the key only inside a SHA-1, never an email.
//! - Never needed for an answer: any failure (no privilege, read-only or Galera server, server
//!   down, a deadlock) makes this call use the host's files instead, remembered as a warning
//!   for `php --ri` and `joinblock_status()`. Every wait is bounded by the lock backend's
//!   `joinblock.mysql_connect_timeout`, on the thread's lock connection.

use std::{cell::Cell, time::Duration};

use mysql::{prelude::Queryable, Conn, Value as Sql};
use parking_lot::Mutex;

use super::cache::{MAX_ENTRIES, MAX_ENTRY_BYTES};
use super::shared::{unix_now, SharedEntry, Slot, Store};
use crate::lock::mysql::{with_shared_connection, MysqlTarget};

/// The longest `Retry-After` honoured (seconds), as in `http.rs`.
pub const MAX_BLOCK_SECONDS: u32 = 3600;
/// Rows sent per `INSERT` when publishing.
const ROWS_PER_INSERT: usize = 64;
/// MySQL's "table doesn't exist".
const NO_SUCH_TABLE: u16 = 1146;

const CREATE_PACE: &str = "CREATE TABLE IF NOT EXISTS joinblock_an_pace (\
    grp CHAR(40) CHARACTER SET ascii NOT NULL PRIMARY KEY, \
    last_slot DATETIME(6) NOT NULL, blocked_until DATETIME(6) NOT NULL\
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
const CREATE_TAGS: &str = "CREATE TABLE IF NOT EXISTS joinblock_an_tags (\
    grp CHAR(40) CHARACTER SET ascii NOT NULL, href_sha1 CHAR(40) CHARACTER SET ascii NOT NULL, \
    href VARCHAR(1024) NOT NULL, name VARCHAR(1024) NOT NULL, \
    learned DATETIME(6) NOT NULL, expires DATETIME(6) NOT NULL, \
    PRIMARY KEY (grp, href_sha1), KEY by_age (grp, learned)\
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
const ADD_GROUP: &str = "INSERT IGNORE INTO joinblock_an_pace (grp, last_slot, blocked_until) VALUES (?, '1970-01-02', '1970-01-02')";
/// The next slot: `max(now, min(last, now + interval) + interval, min(blocked, now + 1 h))`;
/// parameters: the interval (µs), twice.
macro_rules! next_slot {
    () => {
        "GREATEST(UTC_TIMESTAMP(6), LEAST(last_slot, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) + INTERVAL ? MICROSECOND, \
         LEAST(blocked_until, UTC_TIMESTAMP(6) + INTERVAL 3600 SECOND))"
    };
}
/// `LAST_INSERT_ID(1 + the slot's wait in µs)` reports the slot in the OK packet (0: no row);
/// it is stored only when the caller takes it (third parameter: 1 + the longest wait taken,
/// which is at most one interval and less than the caller's deadline). Times from a clock
/// step of the server's are rewritten clamped in the same statement (the sixth parameter is
/// the interval), or every caller would be told to come back later, again and again.
const TAKE_SLOT: &str = concat!(
    "UPDATE joinblock_an_pace SET last_slot = IF(LAST_INSERT_ID(1 + TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), ",
    next_slot!(),
    ")) <= ?, ",
    next_slot!(),
    ", LEAST(last_slot, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)), blocked_until = LEAST(blocked_until, UTC_TIMESTAMP(6) + INTERVAL 3600 SECOND) WHERE grp = ?"
);
const PUSH_BACK: &str = "UPDATE joinblock_an_pace SET blocked_until = GREATEST(\
    LEAST(blocked_until, UTC_TIMESTAMP(6) + INTERVAL 3600 SECOND), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) WHERE grp = ?";
/// Ages and lifetimes in µs, as durations from the server's now.
const READ_TAGS: &str = "SELECT href, name, TIMESTAMPDIFF(MICROSECOND, learned, UTC_TIMESTAMP(6)), \
    TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires) FROM joinblock_an_tags \
    WHERE grp = ? AND expires > UTC_TIMESTAMP(6) ORDER BY learned DESC LIMIT 4096";
const DROP_EXPIRED: &str = "DELETE FROM joinblock_an_tags WHERE grp = ? AND expires <= UTC_TIMESTAMP(6)";
const COUNT_TAGS: &str = "SELECT COUNT(*) FROM joinblock_an_tags WHERE grp = ?";
const DROP_OLDEST: &str = "DELETE FROM joinblock_an_tags WHERE grp = ? ORDER BY learned, href_sha1 LIMIT ?";

/// Warnings kept for `php --ri`.
const MAX_WARNINGS: usize = 8;
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Problems this process met with the site-wide store, newest last.
pub fn warnings() -> Vec<String> {
    WARNINGS.lock().clone()
}

fn warn(server: &MysqlTarget, problem: &str) {
    let text = format!("site-wide shared state on MySQL server {}: {problem}; the host's files were used instead", server.describe());
    let mut warnings = WARNINGS.lock();
    if !warnings.contains(&text) {
        if warnings.len() == MAX_WARNINGS {
            warnings.remove(0);
        }
        warnings.push(text);
    }
}

/// The server the site locks on, and the bound of every wait on it.
#[derive(Clone, Debug)]
pub struct SiteDb {
    pub target: MysqlTarget,
    pub connect_timeout: Duration,
}

impl SiteDb {
    /// Runs `work` on this thread's lock connection, making the tables when they are missing.
    fn run<T>(&self, mut work: impl FnMut(&mut Conn) -> Result<T, mysql::Error>) -> Result<T, String> {
        with_shared_connection(&self.target, self.connect_timeout, |conn| match work(conn) {
            Err(mysql::Error::MySqlError(e)) if e.code == NO_SUCH_TABLE => {
                conn.query_drop(CREATE_PACE)?;
                conn.query_drop(CREATE_TAGS)?;
                work(conn)
            }
            other => other,
        })
        .map_err(|e| e.to_string())
    }

    /// Entries of all groups in the site-wide map (for `php --ri`), or why it cannot be used.
    pub fn inspect(&self) -> Result<u64, String> {
        self.run(|conn| conn.query_first::<u64, _>("SELECT COUNT(*) FROM joinblock_an_tags").map(Option::unwrap_or_default))
    }
}

/// What a call shares, and where: the site's server, the host's files, or both (the files
/// standing in whenever the server cannot serve). Offers what `shared::Store` offers.
#[derive(Debug)]
pub struct SharedState {
    files: Option<Store>,
    site: Option<SiteDb>,
    hash: String,
    /// Set at the first failure of the site-wide store: the rest of the call uses the files.
    site_failed: Cell<bool>,
}

fn micros(seconds: f64) -> i64 {
    (seconds.clamp(0.0, 1e12) * 1e6) as i64
}

impl SharedState {
    pub fn new(files: Option<Store>, site: Option<SiteDb>, group: &str) -> Option<SharedState> {
        (files.is_some() || site.is_some()).then(|| SharedState {
            files,
            site,
            hash: sha1_smol::Sha1::from(group).digest().to_string(),
            site_failed: Cell::new(false),
        })
    }

    /// `Some(result)` from the site-wide store; `None` when the files are to answer.
    fn on_site<T>(&self, work: impl FnMut(&mut Conn) -> Result<T, mysql::Error>) -> Option<T> {
        let site = self.site.as_ref().filter(|_| !self.site_failed.get())?;
        match site.run(work) {
            Ok(value) => Some(value),
            Err(problem) => {
                self.site_failed.set(true);
                warn(&site.target, &problem);
                None
            }
        }
    }

    /// As `shared::Store::reserve`: the slot in this host's Unix seconds.
    pub fn reserve(&self, interval: f64, latest: f64) -> Result<Slot, ()> {
        let hash = &self.hash;
        let step = micros(interval);
        let taken = self.on_site(|conn| {
            let max_wait = micros(latest - unix_now());
            // Taken when 1 + wait <= this: wait within one interval and before the deadline.
            let take_limit = step.saturating_add(1).min(max_wait);
            let mut reported = 0;
            for first in [true, false] {
                conn.exec_drop(TAKE_SLOT, (step, step, take_limit, step, step, step, hash))?;
                reported = conn.last_insert_id();
                if reported > 0 || !first {
                    break;
                }
                // The group's first request on this server.
                conn.exec_drop(ADD_GROUP, (hash,))?;
            }
            if reported == 0 {
                let message = "the pace row of the group could not be made".to_owned();
                return Err(mysql::Error::MySqlError(mysql::MySqlError { state: "HY000".into(), code: 0, message }));
            }
            let wait = (reported - 1) as i64;
            let at = unix_now() + wait as f64 / 1e6;
            Ok(if wait >= max_wait {
                Slot::Late
            } else if wait > step {
                Slot::Later(at - interval)
            } else {
                Slot::Taken(at)
            })
        });
        match taken {
            Some(slot) => Ok(slot),
            None => self.files.as_ref().ok_or(())?.reserve(interval, latest),
        }
    }

    /// As `shared::Store::push_back`: `until` in this host's Unix seconds.
    pub fn push_back(&self, until: f64) -> Result<(), ()> {
        let wait = micros((until - unix_now()).min(f64::from(MAX_BLOCK_SECONDS)));
        if self.on_site(|conn| conn.exec_drop(PUSH_BACK, (wait, &self.hash))).is_some() {
            return Ok(());
        }
        self.files.as_ref().ok_or(())?.push_back(until)
    }

    /// As `shared::Store::read_tags`: times in this host's Unix seconds.
    pub fn read_tags(&self) -> Vec<SharedEntry> {
        let rows = self.on_site(|conn| conn.exec::<(String, String, i64, i64), _, _>(READ_TAGS, (&self.hash,)));
        match rows {
            Some(rows) => {
                let now = unix_now();
                rows.into_iter()
                    .filter(|(href, name, ..)| href.len() + name.len() <= MAX_ENTRY_BYTES)
                    // An entry learned "in the future" (a clock step of the server's) is as new as now.
                    .map(|(href, name, ago, left)| (href, name, now - ago.max(0) as f64 / 1e6, now + left as f64 / 1e6))
                    .collect()
            }
            None => self.files.as_ref().map(Store::read_tags).unwrap_or_default(),
        }
    }

    /// As `shared::Store::publish`: a later entry for an href replaces an earlier one, the
    /// expired go, and the newest [`MAX_ENTRIES`] of the group stay.
    pub fn publish(&self, learned: &[SharedEntry]) {
        if learned.is_empty() {
            return;
        }
        let now = unix_now();
        let mut rows: Vec<(String, &SharedEntry)> = learned
            .iter()
            .filter(|(href, name, ..)| href.len() + name.len() <= MAX_ENTRY_BYTES)
            .map(|entry| (sha1_smol::Sha1::from(&entry.0).digest().to_string(), entry))
            .collect();
        // One href once (the last learned), in key order, so that concurrent publishers lock
        // rows in the same order.
        rows.reverse();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|a, b| a.0 == b.0);
        let published = self.on_site(|conn| {
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                let mut sql = String::from("INSERT INTO joinblock_an_tags (grp, href_sha1, href, name, learned, expires) VALUES ");
                let mut params: Vec<Sql> = Vec::with_capacity(chunk.len() * 6);
                for (i, (sha, (href, name, learned, expires))) in chunk.iter().enumerate() {
                    sql.push_str(if i == 0 { "" } else { ", " });
                    sql.push_str("(?, ?, ?, ?, UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)");
                    params.extend([self.hash.as_str().into(), sha.as_str().into(), href.as_str().into(), name.as_str().into()]);
                    params.extend([Sql::from(micros(now - learned)), Sql::from(micros(expires - now))]);
                }
                sql.push_str(" ON DUPLICATE KEY UPDATE href = VALUES(href), name = VALUES(name), learned = VALUES(learned), expires = VALUES(expires)");
                conn.exec_drop(sql, params)?;
            }
            conn.exec_drop(DROP_EXPIRED, (&self.hash,))?;
            let count: u64 = conn.exec_first(COUNT_TAGS, (&self.hash,))?.unwrap_or_default();
            if count > MAX_ENTRIES as u64 {
                conn.exec_drop(DROP_OLDEST, (&self.hash, count - MAX_ENTRIES as u64))?;
            }
            Ok(())
        });
        if published.is_none() {
            if let Some(files) = &self.files {
                files.publish(learned);
            }
        }
    }
}
