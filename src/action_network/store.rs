//! One group's shared store, as the tag check's pacing (`http.rs`) and tag map (`cache.rs`)
//! use it, whatever keeps it: the host's files (`shared.rs`), or the site's server with the
//! files standing in (`site_state.rs`). Both keep the same bounds and speak Unix seconds of
//! this host's clock; neither is ever needed for a right answer.

use std::time::{SystemTime, UNIX_EPOCH};

/// Entries kept at most (per process over all groups; per group in a store): a few hundred
/// KiB for usual names.
pub const MAX_ENTRIES: usize = 4096;
/// Href and name of one entry, at most (Action Network's are a few dozen bytes each).
pub const MAX_ENTRY_BYTES: usize = 1024;

/// One learned tag: href, folded name, learned and expiry times (Unix seconds).
pub type SharedEntry = (String, String, f64, f64);

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What [`GroupStore::reserve`] gives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slot {
    /// This slot (Unix seconds) is the caller's: it sends then.
    Taken(f64),
    /// The next free slot is more than one interval ahead: ask again at this time.
    Later(f64),
    /// The next free slot falls at or after the caller's `latest`.
    Late,
}

/// What every process of the host (or site) shares about one group.
pub trait GroupStore: std::fmt::Debug {
    /// Takes the next request slot for a spacing of `interval` seconds, unless it falls at or
    /// after `latest` (then nothing is taken). `Err(())`: the store cannot be used.
    fn reserve(&self, interval: f64, latest: f64) -> Result<Slot, ()>;
    /// Action Network asked to wait until `until`: every process waits.
    fn push_back(&self, until: f64) -> Result<(), ()>;
    /// The group's shared entries; empty when there are none or the store is unusable.
    fn read_tags(&self) -> Vec<SharedEntry>;
    /// Adds `learned`: a later entry for an href replaces an earlier one, the expired go, and
    /// the newest [`MAX_ENTRIES`] stay.
    fn publish(&self, learned: &[SharedEntry]);
    /// Why this call stopped using the site-wide store, if it did: for its exception.
    fn site_failure(&self) -> Option<String> {
        None
    }
}
