//! A turn for waiters that cannot wait in the kernel.
//!
//! A waiter blocked in `flock(LOCK_EX)` is woken by the kernel at the very unlock and takes
//! the lock before a waiter that polls with `LOCK_NB` next looks: the polyfill's waiters poll
//! (PHP has no timed `flock`), and so do the extension's where no timer signal can be had. Against
//! a few processes taking one key in turn, a poller can lose every look until its deadline
//! (measured: 4 extension loops holding for 5 ms and 1 polyfill loop with `timeout => 2` gave
//! polyfill timeouts in 5 of 5 rounds).
//!
//! # The rule, which extension and polyfill both follow on the same files
//!
//! - A poller that has waited [`MARK_AFTER`] writes its token at the start of the lock file,
//!   rewrites it every [`MARK_REFRESH`] while it waits, and then looks every [`MARKED_POLL`].
//!   Lock files are otherwise empty. A token is [`TOKEN_LEN`] ASCII hex digits: the pid, a
//!   number the waiter drew, and when it was written (the wall clock's milliseconds, modulo
//!   2^32), 8 digits each.
//! - Whoever takes the lock and finds a fresh token that is not its own lets go at once and
//!   tries again [`YIELD`] later; the poller that finds its own token takes its turn and
//!   empties the file. Pollers that marked do not yield to each other's tokens, so two of them
//!   cannot hold each other off, and a party at its deadline keeps what it took.
//! - Finding a token costs the fast path nothing: every acquisition reads the locked file's
//!   `fstat` anyway, to check that the name still names it, and a size of zero means no token.
//!
//! # Why nobody is held off for long
//!
//! A token is fresh only while the time written in it lies within [`MARK_FRESH`] before now: a
//! poller that gave up, died or was stopped stops rewriting it, and a clock stepped either way
//! makes it stale (a time ahead of now is stale too), never eternal. Whoever takes the lock and
//! finds a stale token empties the file.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// How long a poller waits before it asks for a turn: longer than most holds, so that an
/// ordinary short wait marks nothing.
pub const MARK_AFTER: Duration = Duration::from_millis(10);
/// How often a marking poller rewrites its token.
pub const MARK_REFRESH: Duration = Duration::from_millis(50);
/// How long a token holds others back after it was last written.
pub const MARK_FRESH: Duration = Duration::from_millis(250);
/// How often a poller that marked looks: under [`YIELD`], so it finds the lock free in the
/// gap the others leave it.
pub const MARKED_POLL: Duration = Duration::from_millis(1);
/// How long a party that found another's token leaves the lock alone.
pub const YIELD: Duration = Duration::from_millis(3);

/// The token's length: 24 ASCII hex digits.
pub const TOKEN_LEN: usize = 24;
/// Of which the first 16 name the waiter.
const ID_LEN: usize = 16;

/// One waiter's name in its token, unique among the waiters of one host at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token([u8; ID_LEN]);

impl Token {
    pub fn new(pid: u32) -> Token {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut id = [0; ID_LEN];
        id.copy_from_slice(format!("{pid:08x}{:08x}", NEXT.fetch_add(1, Ordering::Relaxed)).as_bytes());
        Token(id)
    }
}

/// What the holder of a lock found in its file.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No token, or a stale one.
    Nothing,
    /// This party's own token.
    Own,
    /// Another waiter's fresh token: its turn.
    Other,
}

/// The wall clock in milliseconds, modulo 2^32: a token's time.
fn now_ms() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u32)
}

/// Reads the file, whose size under the lock is `size`, for a token.
pub fn inspect(file: &File, size: u64, own: Option<&Token>) -> Found {
    if size == 0 {
        return Found::Nothing;
    }
    let mut token = [0; TOKEN_LEN];
    if file.read_at(&mut token, 0).ok() != Some(TOKEN_LEN) {
        return Found::Nothing;
    }
    if own.is_some_and(|own| own.0 == token[..ID_LEN]) {
        return Found::Own;
    }
    let written = std::str::from_utf8(&token[ID_LEN..]).ok().and_then(|hex| u32::from_str_radix(hex, 16).ok());
    // Wrapping: the milliseconds wrap every 49 days; a time ahead of now is a huge age.
    match written {
        Some(written) if u128::from(now_ms().wrapping_sub(written)) <= MARK_FRESH.as_millis() => Found::Other,
        _ => Found::Nothing,
    }
}

/// Empties the file, under its lock: the turn is taken, or the token was stale.
pub fn clear(file: &File) {
    let _ = file.set_len(0);
}

/// Writes (or rewrites) `token` with the time now: its poller asks for the next turn.
pub fn write(file: &File, token: &Token) {
    let mut text = [0; TOKEN_LEN];
    text[..ID_LEN].copy_from_slice(&token.0);
    text[ID_LEN..].copy_from_slice(format!("{:08x}", now_ms()).as_bytes());
    let _ = file.write_all_at(&text, 0);
}

/// Takes `token` back, if it is still there: its poller gave up. Not under the lock, so a
/// token written just now by another poller may go with it; that poller rewrites it soon.
pub fn withdraw(file: &File, token: &Token) {
    let mut found = [0; TOKEN_LEN];
    if file.read_at(&mut found, 0).is_ok_and(|n| n == TOKEN_LEN) && found[..ID_LEN] == token.0 {
        clear(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_its_own_a_fresh_one_another_s_and_an_old_one_nothing() {
        let path = std::env::temp_dir().join(format!("joinblock-unit-turn-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let size = || std::fs::symlink_metadata(&path).unwrap().len();
        let (mine, theirs) = (Token::new(1), Token::new(1));
        assert_ne!(mine, theirs);
        assert_eq!(inspect(&file, size(), Some(&mine)), Found::Nothing);
        write(&file, &theirs);
        assert_eq!(size(), TOKEN_LEN as u64);
        assert_eq!(inspect(&file, size(), Some(&mine)), Found::Other);
        assert_eq!(inspect(&file, size(), Some(&theirs)), Found::Own);
        withdraw(&file, &mine);
        assert_eq!(size(), TOKEN_LEN as u64, "only its own token is withdrawn");
        // Written an hour ago, or an hour ahead (a clock stepped back since): stale either way.
        for written in [now_ms().wrapping_sub(3_600_000), now_ms().wrapping_add(3_600_000)] {
            file.write_all_at(format!("{written:08x}").as_bytes(), ID_LEN as u64).unwrap();
            assert_eq!(inspect(&file, size(), None), Found::Nothing);
        }
        withdraw(&file, &theirs);
        assert_eq!(size(), 0);
        std::fs::remove_file(&path).unwrap();
    }
}
