//! The site-wide store: when the site locks on MySQL (`joinblock.lock_backend = mysql`), the
//! request pace and the tag map of each Action Network group live on that server, so that all
//! of the site's hosts keep one pace for the API key (Action Network's limit is per key, not
//! per host) and learn tag names for each other. `joinblock.shared_state_backend = files`
//! keeps them in each host's lock directory (`shared.rs`); `joinblock.shared_state = 0` turns
//! both off. The polyfill (php/polyfill/site-state.php) sends the same statements.
//!
//! # Tables (made on first use, `CREATE TABLE IF NOT EXISTS`, InnoDB, utf8mb4)
//!
//! Named after the site's table prefix (`joinblock.table_prefix`, or `table_prefix` given to
//! `joinblock_configure()`: WordPress's `$wpdb->prefix`), empty by default.
//! - `<prefix>joinblock_an_pace`: one row per group `h = sha1("<base_url> <sha1(api key)>")`:
//!   `last_slot`, the latest request slot taken by any host, and `blocked_until`, until when
//!   Action Network asked every process to wait (`Retry-After`). UTC, the server's clock. The
//!   row `grp = 'tidy'` holds when the tables were last tidied instead (no group's hash is
//!   that word).
//! - `<prefix>joinblock_an_tags`: `(group, sha1(href))` -> href, folded name, learned,
//!   expires; at most [`MAX_ENTRIES`] per group, the oldest learned going first.
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
//!   down, a deadlock) makes this call use the host's files instead, counted and remembered
//!   (the last reason) for `php --ri` and `joinblock_status()`, and named in the call's
//!   exception when the call then fails.
//! - No wait past the call: every wait on the server, connecting included, ends by the call's
//!   deadline and within `joinblock.mysql_connect_timeout`, and the server is told the same
//!   limit per statement (`StateSession::limited`), so nothing of ours runs on there. The
//!   statements run on a connection of their own per thread (`with_state_connection`).
//! - Every row is untrusted input: other tools restore, migrate and edit a site's tables, and
//!   servers accept zero dates. A tag row is used only when its href hashes to its key, its
//!   texts are UTF-8 within [`MAX_ENTRY_BYTES`], it was learned at most [`FUTURE_TOLERANCE`]
//!   after the server's now and lives at most [`MAX_LIFETIME`] after that; a pace row's times
//!   count only between 1970-01-02 and what some writer could have written (for `last_slot`
//!   an hour ahead, the longest interval honoured, since the callers of one group may pace at
//!   different `max_rps`, each clamping it to its own interval; [`MAX_BLOCK_SECONDS`] for
//!   `blocked_until`). Anything else is ignored, counted (`bad_rows()`), and replaced: a pace row by the next slot taken, tag rows by the
//!   group's next publish, which deletes the group's rows that fail the same test.
//! - Texts travel as hexadecimal literals of their UTF-8 bytes over a utf8mb4 connection, so
//!   neither the server's charset nor quoting can change them.
//! - Bounded without anyone's care: a group's publish keeps its rows to [`MAX_ENTRIES`], and
//!   at most once per [`TIDY_EVERY`] site-wide (the `tidy` row, read without a lock, then
//!   claimed by one `UPDATE`, or made when missing) the end of a call of any group removes up
//!   to [`TIDY_TAG_ROWS`] expired tag rows of any group and the pace rows of groups idle for
//!   [`IDLE_PACE_ROW`]: so the rows of groups nobody uses any more (a changed API key, a
//!   moved site) go too. An idle pace row holds no information (its slot and block lie in the
//!   past), so removing one changes no pace. The rows are found by a plain `SELECT` (which
//!   locks nothing) and deleted by key, so a tidy locks only the rows it removes, never a
//!   range a publisher inserts into; it runs after the call's answer, within [`TIDY_BUDGET`],
//!   and a failure of it is kept for the status, not counted as a fallback.

use std::{
    cell::RefCell,
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use mysql::Row;
use parking_lot::Mutex;

use super::shared::Store;
use super::store::{unix_now, GroupStore, SharedEntry, Slot, MAX_ENTRIES, MAX_ENTRY_BYTES};
use crate::lock::mysql::{int_cell, text_cell, with_state_connection, MysqlTarget, StateSession};

/// The longest `Retry-After` honoured (seconds), as in `http.rs`.
pub const MAX_BLOCK_SECONDS: u32 = 3600;
/// How far ahead of the server's now a row may say it was learned (clock steps between two
/// statements of the same server are far smaller).
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(60);
/// The longest a shared entry lives, whatever `tag_cache_ttl` the call that learned it had.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often, at most, the tables are tidied (site-wide; and per process, so that a process
/// asks the `tidy` row no more often).
pub const TIDY_EVERY: Duration = Duration::from_secs(60);
/// Tag rows removed per tidy: one group's whole map.
pub const TIDY_TAG_ROWS: usize = MAX_ENTRIES;
/// Pace rows removed per tidy.
const TIDY_PACE_ROWS: usize = 1024;
/// Keys per `DELETE` of a tidy.
const TIDY_KEYS_PER_DELETE: usize = 512;
/// The longest a tidy takes, on top of the call it follows (never past the call's deadline).
pub const TIDY_BUDGET: Duration = Duration::from_secs(1);
/// How long a group's pace row outlives its last request.
pub const IDLE_PACE_ROW: Duration = Duration::from_secs(24 * 3600);
/// The pace row that holds when the tables were last tidied (not a SHA-1, so no group's).
const TIDY_ROW: &str = "tidy";
/// The latest a slot lies ahead, whatever the caller's `max_rps` (a slower caller's slot must
/// not look bad to a faster one): as long as the longest `Retry-After` honoured.
const MAX_SLOT_AHEAD_MICROS: i64 = MAX_BLOCK_SECONDS as i64 * 1_000_000;
/// When this process may next try to tidy, and why its last tidy failed.
static NEXT_TIDY: Mutex<Option<Instant>> = Mutex::new(None);
static TIDY_FAILURE: Mutex<Option<String>> = Mutex::new(None);
/// Rows sent per `INSERT` when publishing.
const ROWS_PER_INSERT: usize = 64;
/// MySQL's "table doesn't exist".
const NO_SUCH_TABLE: u16 = 1146;
/// The server's clock, which is the only one compared.
const NOW: &str = "UTC_TIMESTAMP(6)";

/// Warnings kept for `php --ri`.
const MAX_WARNINGS: usize = 8;
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Calls of this process that fell back to the host's files, and the last reason.
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
/// Rows this process found unusable (and left to be replaced), and the last one's fault.
static BAD_ROWS: AtomicU64 = AtomicU64::new(0);
static LAST_BAD_ROW: Mutex<Option<String>> = Mutex::new(None);

/// Problems this process met with the site-wide store, newest last.
pub fn warnings() -> Vec<String> {
    WARNINGS.lock().clone()
}

/// How many times this process fell back to the host's files; the last reason is the last
/// of [`warnings`].
pub fn fallbacks() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Rows of the site-wide tables this process found unusable, and what was wrong with the last.
pub fn bad_rows() -> (u64, Option<String>) {
    (BAD_ROWS.load(Ordering::Relaxed), LAST_BAD_ROW.lock().clone())
}

fn warn(text: String) {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    let mut warnings = WARNINGS.lock();
    warnings.retain(|w| *w != text);
    if warnings.len() == MAX_WARNINGS {
        warnings.remove(0);
    }
    warnings.push(text);
}

/// Why this process's last tidy of the tables failed, if it did (cleared by one that works).
pub fn tidy_failure() -> Option<String> {
    TIDY_FAILURE.lock().clone()
}

fn bad_row(table: &str, fault: &str) {
    BAD_ROWS.fetch_add(1, Ordering::Relaxed);
    *LAST_BAD_ROW.lock() = Some(format!("a row of {table} {fault}"));
}

/// `X'…'` converted to utf8mb4: a text exactly as its bytes, whatever the quoting rules.
fn text_literal(text: &str) -> String {
    let mut literal = String::with_capacity(2 * text.len() + 32);
    literal.push_str("CONVERT(X'");
    for byte in text.bytes() {
        let _ = write!(literal, "{byte:02x}");
    }
    literal.push_str("' USING utf8mb4)");
    literal
}

/// A pace row's time as a writer could have left it (between 1970-01-02 and `ahead` µs past
/// the server's now), else NULL.
fn sane_time(column: &str, ahead: i64) -> String {
    format!("IF({column} BETWEEN '1970-01-02' AND {NOW} + INTERVAL {ahead} MICROSECOND, {column}, NULL)")
}

/// True for the tag rows that can be used, exactly as [`usable_tag`] judges them (the module's
/// invariants; bytes compared as bytes); NULL counts as false.
fn usable_tag_row() -> String {
    format!(
        "COALESCE(expires > {NOW} AND learned BETWEEN '1970-01-02' AND {NOW} + INTERVAL {} SECOND \
         AND expires > learned AND expires <= learned + INTERVAL {} SECOND AND CAST(href_sha1 AS BINARY) = CAST(SHA1(href) AS BINARY) \
         AND LENGTH(href) > 0 AND LENGTH(name) > 0 AND LENGTH(href) + LENGTH(name) <= {MAX_ENTRY_BYTES}, FALSE)",
        FUTURE_TOLERANCE.as_secs(),
        MAX_LIFETIME.as_secs()
    )
}

/// The site's two tables, by name (the site's table prefix first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub pace: String,
    pub tags: String,
}

impl Tables {
    pub fn with_prefix(prefix: &str) -> Tables {
        Tables { pace: format!("{prefix}joinblock_an_pace"), tags: format!("{prefix}joinblock_an_tags") }
    }

    fn create(&self) -> [String; 2] {
        [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (grp CHAR(40) CHARACTER SET ascii NOT NULL PRIMARY KEY, \
                 last_slot DATETIME(6) NOT NULL, blocked_until DATETIME(6) NOT NULL, KEY by_slot (last_slot)\
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                self.pace
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (grp CHAR(40) CHARACTER SET ascii NOT NULL, \
                 href_sha1 CHAR(40) CHARACTER SET ascii NOT NULL, href VARCHAR(1024) NOT NULL, name VARCHAR(1024) NOT NULL, \
                 learned DATETIME(6) NOT NULL, expires DATETIME(6) NOT NULL, \
                 PRIMARY KEY (grp, href_sha1), KEY by_age (grp, learned), KEY by_expiry (expires)\
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                self.tags
            ),
        ]
    }
}

/// What `php --ri` and `joinblock_status()` learn by trying the store now.
#[derive(Debug)]
pub struct Health {
    /// The tag map's rows, as the server estimates them (no count: that would scan them all).
    pub entries_estimate: u64,
    /// Pace rows whose times no writer could have left.
    pub bad_pace_rows: u64,
}

/// The server the site locks on, and the bound of every wait on it.
#[derive(Clone, Debug)]
pub struct SiteDb {
    pub target: MysqlTarget,
    pub connect_timeout: Duration,
    pub tables: Tables,
}

impl SiteDb {
    /// Runs `work` on this thread's state connection, making the tables when they are
    /// missing; every wait ends by `give_up`.
    fn run<T>(&self, give_up: Instant, mut work: impl FnMut(&mut StateSession) -> Result<T, mysql::Error>) -> Result<T, String> {
        with_state_connection(&self.target, self.connect_timeout, give_up, |session| match work(session) {
            Err(mysql::Error::MySqlError(e)) if e.code == NO_SUCH_TABLE => {
                for create in self.tables.create() {
                    session.run(&create)?;
                }
                work(session)
            }
            other => other,
        })
        .map_err(|e| e.to_string())
    }

    /// Whether this process could take a slot and publish now (the statements of both, on
    /// rows that match nothing: privileges and `read_only` are checked all the same), with
    /// the map's estimated size and the pace rows no writer could have left.
    pub fn inspect(&self) -> Result<Health, String> {
        let Tables { pace, tags } = &self.tables;
        let give_up = Instant::now().checked_add(self.connect_timeout).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        self.run(give_up, |session| {
            for probe in [
                format!("UPDATE {pace} SET last_slot = last_slot WHERE FALSE"),
                format!("INSERT INTO {tags} SELECT * FROM {tags} WHERE FALSE"),
                format!("DELETE FROM {tags} WHERE FALSE"),
                format!("DELETE FROM {pace} WHERE FALSE"),
            ] {
                session.run(&probe)?;
            }
            let bad = format!(
                "SELECT COUNT(*), (SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{tags}') \
                 FROM {pace} WHERE {} IS NULL OR {} IS NULL",
                sane_time("last_slot", MAX_SLOT_AHEAD_MICROS + 1_000_000),
                sane_time("blocked_until", i64::from(MAX_BLOCK_SECONDS + 1) * 1_000_000)
            );
            let row = session.first(&bad)?;
            let count = |i| int_cell(&row, i).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            Ok(Health { bad_pace_rows: count(0), entries_estimate: count(1) })
        })
    }
}

/// What a call shares, and where: the site's server, the host's files, or both (the files
/// standing in whenever the server cannot serve).
#[derive(Debug)]
pub struct SharedState {
    files: Option<Store>,
    site: Option<SiteDb>,
    hash: String,
    /// When the call gives up: no wait on the server goes past it.
    deadline: Instant,
    /// Set at the first failure of the site-wide store (why): the rest of the call uses the files.
    site_failed: RefCell<Option<String>>,
}

fn micros(seconds: f64) -> i64 {
    (seconds.clamp(0.0, 1e12) * 1e6) as i64
}

impl SharedState {
    pub fn new(files: Option<Store>, site: Option<SiteDb>, group: &str, deadline: Instant) -> Option<SharedState> {
        (files.is_some() || site.is_some()).then(|| SharedState {
            files,
            site,
            hash: sha1_smol::Sha1::from(group).digest().to_string(),
            deadline,
            site_failed: RefCell::new(None),
        })
    }

    /// `Some(result)` from the site-wide store; `None` when the files are to answer.
    fn on_site<T>(&self, work: impl FnMut(&mut StateSession, &Tables) -> Result<T, mysql::Error>) -> Option<T> {
        let site = self.site.as_ref().filter(|_| self.site_failed.borrow().is_none())?;
        let mut work = work;
        match site.run(self.deadline, |session| work(session, &site.tables)) {
            Ok(value) => Some(value),
            Err(problem) => {
                let text = format!(
                    "site-wide shared state on MySQL server {}: {problem}; the host's files were used instead",
                    site.target.describe()
                );
                warn(text.clone());
                *self.site_failed.borrow_mut() = Some(text);
                None
            }
        }
    }

    /// Tidies the tables when this process has not tried for [`TIDY_EVERY`] and the `tidy`
    /// row says nobody has (see the module's invariants): for the end of a call, after its
    /// answer. Its failure costs the call nothing and is kept for the status.
    pub fn tidy_when_due(&self) {
        let Some(site) = self.site.as_ref().filter(|_| self.site_failed.borrow().is_none()) else { return };
        let now = Instant::now();
        {
            let mut next = NEXT_TIDY.lock();
            if next.is_some_and(|at| now < at) {
                return;
            }
            *next = Some(now + TIDY_EVERY);
        }
        let give_up = self.deadline.min(now + TIDY_BUDGET);
        let tidied = site.run(give_up, |session| tidy(session, &site.tables));
        *TIDY_FAILURE.lock() = tidied.err().map(|problem| format!("on MySQL server {}: {problem}", site.target.describe()));
    }
}

/// One tidy, if it is this process's turn: claims the `tidy` row, then removes expired tag
/// rows and idle pace rows by key.
fn tidy(session: &mut StateSession, Tables { pace, tags }: &Tables) -> Result<(), mysql::Error> {
    let every = TIDY_EVERY.as_secs();
    let recent = format!("{NOW} - INTERVAL {every} SECOND AND {NOW} + INTERVAL 1 SECOND");
    let claim = match session.first(&format!("SELECT last_slot BETWEEN {recent} FROM {pace} WHERE grp = '{TIDY_ROW}'"))? {
        None => format!("INSERT IGNORE INTO {pace} (grp, last_slot, blocked_until) VALUES ('{TIDY_ROW}', {NOW}, '1970-01-02')"),
        row if int_cell(&row, 0) == Some(1) => return Ok(()),
        // Due, or a time no tidy could have left (a zero date, a clock stepped back): claimed.
        Some(_) => format!("UPDATE {pace} SET last_slot = {NOW} WHERE grp = '{TIDY_ROW}' AND NOT COALESCE(last_slot BETWEEN {recent}, FALSE)"),
    };
    session.run(&claim)?;
    if session.affected_rows() != 1 {
        return Ok(());
    }
    let expired = session.rows(&format!("SELECT grp, href_sha1 FROM {tags} WHERE expires < {NOW} LIMIT {TIDY_TAG_ROWS}"))?;
    let mut by_group: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for row in expired.into_iter().map(Some) {
        if let (Some(group), Some(key)) = (sha1_cell(&row, 0), sha1_cell(&row, 1)) {
            by_group.entry(group).or_default().push(key);
        }
    }
    for (group, keys) in &by_group {
        for chunk in keys.chunks(TIDY_KEYS_PER_DELETE) {
            let keys = chunk.iter().map(|key| format!("'{key}'")).collect::<Vec<_>>().join(", ");
            session.run(&format!("DELETE FROM {tags} WHERE grp = '{group}' AND href_sha1 IN ({keys}) AND expires < {NOW}"))?;
        }
    }
    let idle = format!("last_slot < {NOW} - INTERVAL {} SECOND AND blocked_until < {NOW}", IDLE_PACE_ROW.as_secs());
    let groups = session.rows(&format!("SELECT grp FROM {pace} WHERE {idle} LIMIT {TIDY_PACE_ROWS}"))?;
    let groups: Vec<String> = groups.into_iter().map(Some).filter_map(|row| sha1_cell(&row, 0)).map(|g| format!("'{g}'")).collect();
    for chunk in groups.chunks(TIDY_KEYS_PER_DELETE) {
        session.run(&format!("DELETE FROM {pace} WHERE grp IN ({}) AND {idle}", chunk.join(", ")))?;
    }
    Ok(())
}

/// A cell that is a SHA-1 in hex, as every key of ours is: only such text goes back into SQL
/// (a row another tool left with anything else is its group's publish's to remove).
fn sha1_cell(row: &Option<Row>, index: usize) -> Option<String> {
    text_cell(row, index).filter(|text| text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The server first; for the rest of the call the files, from its first failure on.
impl GroupStore for SharedState {
    /// The slot in this host's Unix seconds. One `UPDATE`: the
    /// row's times, when sane, else as if absent (the row is then rewritten sane), give
    /// `next = max(now, last + interval, blocked)`; it is stored when it lies within one
    /// interval and before the deadline, and `LAST_INSERT_ID(2 × (1 + wait in µs) + bad)`
    /// reports the wait and whether the row was bad.
    fn reserve(&self, interval: f64, latest: f64) -> Result<Slot, ()> {
        let hash = &self.hash;
        let step = micros(interval);
        let taken = self.on_site(|session, Tables { pace, .. }| {
            let max_wait = micros(latest - unix_now());
            // Taken when wait <= this: within one interval and before the deadline.
            let take_limit = step.min(max_wait.saturating_sub(1));
            let last = sane_time("last_slot", step.max(MAX_SLOT_AHEAD_MICROS).saturating_add(1_000_000));
            let blocked = sane_time("blocked_until", i64::from(MAX_BLOCK_SECONDS + 1) * 1_000_000);
            let bad = format!("({last} IS NULL OR {blocked} IS NULL)");
            let last = format!("LEAST(COALESCE({last}, '1970-01-02'), {NOW} + INTERVAL {step} MICROSECOND)");
            let blocked = format!("LEAST(COALESCE({blocked}, '1970-01-02'), {NOW} + INTERVAL {MAX_BLOCK_SECONDS} SECOND)");
            let next = format!("GREATEST({NOW}, {last} + INTERVAL {step} MICROSECOND, {blocked})");
            let take = format!(
                "UPDATE {pace} SET last_slot = IF(LAST_INSERT_ID(2 * (1 + TIMESTAMPDIFF(MICROSECOND, {NOW}, {next})) + {bad}) <= {}, {next}, {last}), \
                 blocked_until = {blocked} WHERE grp = '{hash}'",
                2 * (1 + take_limit) + 1
            );
            let mut reported = 0;
            for first in [true, false] {
                session.run(&take)?;
                reported = session.last_insert_id();
                if reported > 0 || !first {
                    break;
                }
                // The group's first request on this server.
                let add = format!("INSERT IGNORE INTO {pace} (grp, last_slot, blocked_until) VALUES ('{hash}', '1970-01-02', '1970-01-02')");
                session.run(&add)?;
            }
            if reported < 2 {
                let message = "the pace row of the group could not be made".to_owned();
                return Err(mysql::Error::MySqlError(mysql::MySqlError { state: "HY000".into(), code: 0, message }));
            }
            if reported % 2 == 1 {
                bad_row(pace, "held times no writer could have left (a zero date, or past what a slot or Retry-After allows); rewritten");
            }
            let wait = (reported / 2 - 1) as i64;
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

    /// `until` in this host's Unix seconds.
    fn push_back(&self, until: f64) -> Result<(), ()> {
        let wait = micros((until - unix_now()).min(f64::from(MAX_BLOCK_SECONDS)));
        let push = |session: &mut StateSession, tables: &Tables| {
            let blocked = sane_time("blocked_until", i64::from(MAX_BLOCK_SECONDS + 1) * 1_000_000);
            let sql = format!(
                "UPDATE {} SET blocked_until = GREATEST(LEAST(COALESCE({blocked}, '1970-01-02'), {NOW} + INTERVAL {MAX_BLOCK_SECONDS} SECOND), \
                 {NOW} + INTERVAL {wait} MICROSECOND) WHERE grp = '{}'",
                tables.pace, self.hash
            );
            session.run(&sql)
        };
        if self.on_site(push).is_some() {
            return Ok(());
        }
        self.files.as_ref().ok_or(())?.push_back(until)
    }

    /// Times in this host's Unix seconds. Rows that fail the module's test are skipped and
    /// counted.
    fn read_tags(&self) -> Vec<SharedEntry> {
        let rows = self.on_site(|session, Tables { tags, .. }| {
            let sql = format!(
                "SELECT href_sha1, href, name, TIMESTAMPDIFF(MICROSECOND, learned, {NOW}), TIMESTAMPDIFF(MICROSECOND, learned, expires) \
                 FROM {tags} WHERE grp = '{}' AND (expires > {NOW} OR expires < '1970-01-02') ORDER BY learned DESC LIMIT {MAX_ENTRIES}",
                self.hash
            );
            session.rows(&sql)
        });
        let Some(rows) = rows else {
            return self.files.as_ref().map(Store::read_tags).unwrap_or_default();
        };
        let table = &self.site.as_ref().map_or_else(String::new, |site| site.tables.tags.clone());
        let now = unix_now();
        rows.into_iter()
            .map(Some)
            .filter_map(|row| match usable_tag(&row) {
                Ok((href, name, ago, life)) => {
                    let learned = now - ago.max(0) as f64 / 1e6;
                    Some((href, name, learned, learned + life as f64 / 1e6))
                }
                Err(fault) => {
                    bad_row(table, fault);
                    None
                }
            })
            .collect()
    }

    /// Also deletes the group's rows that fail the readers' test.
    fn publish(&self, learned: &[SharedEntry]) {
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
        let hash = &self.hash;
        let lifetime = MAX_LIFETIME.as_secs_f64();
        let published = self.on_site(|session, Tables { tags, .. }| {
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                let mut sql = format!("INSERT INTO {tags} (grp, href_sha1, href, name, learned, expires) VALUES ");
                for (i, (sha, (href, name, learned, expires))) in chunk.iter().enumerate() {
                    let (ago, left) = (micros(now - learned), micros(expires.min(learned + lifetime) - now));
                    let _ = write!(
                        sql,
                        "{}('{hash}', '{sha}', {}, {}, {NOW} - INTERVAL {ago} MICROSECOND, {NOW} + INTERVAL {left} MICROSECOND)",
                        if i == 0 { "" } else { ", " },
                        text_literal(href),
                        text_literal(name)
                    );
                }
                sql.push_str(" ON DUPLICATE KEY UPDATE href_sha1 = VALUES(href_sha1), href = VALUES(href), name = VALUES(name), learned = VALUES(learned), expires = VALUES(expires)");
                session.run(&sql)?;
            }
            // The expired, and whatever another tool left that fails the readers' test.
            let unusable = format!("DELETE FROM {tags} WHERE grp = '{hash}' AND NOT {}", usable_tag_row());
            session.run(&unusable)?;
            let count = format!("SELECT COUNT(*) FROM {tags} WHERE grp = '{hash}'");
            let row = session.first(&count)?;
            let excess = int_cell(&row, 0).unwrap_or(0) - MAX_ENTRIES as i64;
            if excess > 0 {
                let oldest = format!("DELETE FROM {tags} WHERE grp = '{hash}' ORDER BY learned, href_sha1 LIMIT {excess}");
                session.run(&oldest)?;
            }
            Ok(())
        });
        if published.is_none() {
            if let Some(files) = &self.files {
                files.publish(learned);
            }
        }
    }

    fn site_failure(&self) -> Option<String> {
        self.site_failed.borrow().clone()
    }
}

/// A tag row's href, name, age and lifetime (µs), or what is wrong with it.
fn usable_tag(row: &Option<Row>) -> Result<(String, String, i64, i64), &'static str> {
    let (Some(sha), Some(href), Some(name)) = (text_cell(row, 0), text_cell(row, 1), text_cell(row, 2)) else {
        return Err("has a NULL or a text that is not UTF-8");
    };
    if href.is_empty() || name.is_empty() || href.len() + name.len() > MAX_ENTRY_BYTES {
        return Err("has an empty href or name, or both longer than the map keeps");
    }
    if sha1_smol::Sha1::from(&href).digest().to_string() != sha {
        return Err("has an href that does not match its href_sha1 (edited by hand?)");
    }
    let (Some(ago), Some(life)) = (int_cell(row, 3), int_cell(row, 4)) else {
        return Err("has a zero or NULL date");
    };
    if ago < -(FUTURE_TOLERANCE.as_micros() as i64) {
        return Err("was learned in the future, by the server's clock");
    }
    if life <= 0 || life > MAX_LIFETIME.as_micros() as i64 {
        return Err("lives longer than any entry may (or not at all)");
    }
    Ok((href, name, ago, life))
}

