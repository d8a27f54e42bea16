//! What this process knows of each Action Network group's tags: name <-> href, learned while
//! answering calls, and how far it has read the group's tag list, so that every request a
//! PHP-FPM worker serves shares it. Tags are renamed rarely; a rename is picked up once the old
//! entry expires.
//!
//! Invariants, and why:
//! - An entry lives for the `tag_cache_ttl` of the call that learned it, and a call trusts only
//!   entries younger than its own `tag_cache_ttl`. Every call that saves something first removes
//!   the expired entries, so a worker that never exits (`pm.max_requests = 0`) keeps only live ones.
//! - The process keeps at most [`MAX_ENTRIES`] entries over all groups, each at most
//!   [`MAX_ENTRY_BYTES`] of href and name: past that the oldest learned go first, and a longer
//!   entry serves only the call that learned it. Memory stays bounded whatever the server sends.
//! - A call never copies the cache: it looks entries up under the mutex one at a time, and keeps
//!   what it learns in its own overlay (which also serves it with `tag_cache_ttl = 0`), saved
//!   once at its end.
//! - A name leads to every href learned with it: should a group hold two tags whose names fold
//!   alike (Action Network says it refuses them), a person with either has the tag.
//! - The reading position lets a call go on where an earlier one stopped instead of reading the
//!   list's first pages again. It expires no later than the names of any page it covers, and is
//!   dropped when an entry of its group is evicted for room or not kept, so the pages it skips
//!   are pages whose names are still known. That is a matter of cost only: the check never
//!   concludes anything from the list's end.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use std::cell::Cell;

use parking_lot::Mutex;
use reqwest::Url;

use super::store::{unix_now, GroupStore, SharedEntry, MAX_ENTRIES, MAX_ENTRY_BYTES};

/// A group, as its API key and base URL identify it (the key is kept only as a digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey(Arc<str>);

impl GroupKey {
    pub fn new(base_url: &str, api_key: &str) -> Self {
        GroupKey(format!("{base_url} {}", sha1_smol::Sha1::from(api_key).digest()).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How far this process has read a group's tag list.
#[derive(Clone, Debug, PartialEq)]
pub struct ListProgress {
    /// Pages read.
    pub read: u32,
    /// The list's length in pages, as the last page read that said so said.
    pub total: Option<u32>,
    /// The page to read next; `None` once the last page is read.
    pub next: Option<Url>,
}

/// When something was learned, and until when the call that learned it trusts it.
#[derive(Clone, Copy, Debug)]
struct Age {
    learned: Instant,
    expires: Instant,
}

impl Age {
    fn new(now: Instant, ttl: Duration) -> Self {
        Age { learned: now, expires: now.checked_add(ttl).unwrap_or(now + Duration::from_secs(100 * 365 * 24 * 3600)) }
    }

    fn trusted(&self, now: Instant, ttl: Duration) -> bool {
        now < self.expires && now.saturating_duration_since(self.learned) < ttl
    }
}

struct Entry {
    name: String,
    age: Age,
    /// Its place in [`Cache::order`].
    seq: u64,
}

#[derive(Default)]
struct Group {
    /// href -> its (normalized) name
    names: HashMap<String, Entry>,
    /// name -> every href with that name
    hrefs: HashMap<String, Vec<String>>,
    list: Option<(ListProgress, Age)>,
}

#[derive(Default)]
struct Cache {
    groups: HashMap<GroupKey, Group>,
    /// Every entry, oldest learned first: (group, href) by insertion number.
    order: BTreeMap<u64, (GroupKey, String)>,
    next_seq: u64,
}

impl Cache {
    fn insert(&mut self, group: &GroupKey, href: &str, name: &str, age: Age) {
        self.remove(group, href);
        let seq = self.next_seq;
        self.next_seq += 1;
        let cached = self.groups.entry(group.clone()).or_default();
        cached.names.insert(href.to_owned(), Entry { name: name.to_owned(), age, seq });
        cached.hrefs.entry(name.to_owned()).or_default().push(href.to_owned());
        self.order.insert(seq, (group.clone(), href.to_owned()));
    }

    fn remove(&mut self, group: &GroupKey, href: &str) {
        let Some(cached) = self.groups.get_mut(group) else { return };
        let Some(entry) = cached.names.remove(href) else { return };
        if let Some(hrefs) = cached.hrefs.get_mut(&entry.name) {
            hrefs.retain(|h| h != href);
            if hrefs.is_empty() {
                cached.hrefs.remove(&entry.name);
            }
        }
        self.order.remove(&entry.seq);
    }

    fn remove_expired(&mut self, now: Instant) {
        let expired: Vec<(GroupKey, String)> = self
            .groups
            .iter()
            .flat_map(|(group, cached)| {
                cached.names.iter().filter(|(_, e)| now >= e.age.expires).map(move |(href, _)| (group.clone(), href.clone()))
            })
            .collect();
        for (group, href) in expired {
            self.remove(&group, &href);
        }
        for cached in self.groups.values_mut() {
            cached.list = cached.list.take().filter(|(_, age)| now < age.expires);
        }
        self.groups.retain(|_, cached| !cached.names.is_empty() || cached.list.is_some());
    }

    /// Removes the oldest entries past [`MAX_ENTRIES`]; their groups forget their reading position.
    fn make_room(&mut self) {
        while self.order.len() > MAX_ENTRIES {
            let Some((_, (group, href))) = self.order.pop_first() else { break };
            if let Some(cached) = self.groups.get_mut(&group) {
                cached.list = None;
            }
            self.remove(&group, &href);
        }
    }
}

/// Shared by all of the process's threads (a ZTS PHP's request threads learn for each other):
/// the mutex covers in-memory work only; reading and publishing the host's shared files happen
/// outside it.
static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<T>(work: impl FnOnce(&mut Cache) -> T) -> T {
    work(CACHE.lock().get_or_insert_with(Cache::default))
}

/// Entries the process keeps now, over all groups (for `php --ri joinblock`).
pub fn entries() -> usize {
    with_cache(|cache| cache.order.len())
}

/// One call's view: the process cache's trusted entries, read in place, and what the call learns.
#[derive(Debug)]
pub struct Knowledge<'a> {
    group: GroupKey,
    ttl: Duration,
    /// What this call learned: href -> name, name -> hrefs, and in which order.
    own_names: HashMap<String, String>,
    own_hrefs: HashMap<String, Vec<String>>,
    learned: Vec<(String, String)>,
    list: Option<ListProgress>,
    /// The age of the loaded reading position; `None` for a reading begun by this call.
    list_age: Option<Age>,
    list_advanced: bool,
    /// The host's shared map, read into the process cache at this call's first miss.
    shared: Option<&'a dyn GroupStore>,
    shared_read: Cell<bool>,
}

impl<'a> Knowledge<'a> {
    /// `group`'s knowledge as a call with this `ttl` trusts it, with the host's shared map
    /// behind the process cache when `shared` is given.
    pub fn load(group: &GroupKey, ttl: Duration, shared: Option<&'a dyn GroupStore>) -> Self {
        let now = Instant::now();
        let list = with_cache(|cache| {
            let cached = cache.groups.get(group)?;
            cached.list.clone().filter(|(_, age)| age.trusted(now, ttl))
        });
        Knowledge {
            group: group.clone(),
            ttl,
            own_names: HashMap::new(),
            own_hrefs: HashMap::new(),
            learned: Vec::new(),
            list_age: list.as_ref().map(|(_, age)| *age),
            list: list.map(|(progress, _)| progress),
            list_advanced: false,
            shared,
            shared_read: Cell::new(false),
        }
    }

    /// On a miss: once per call, adopts the host's shared entries the process does not have
    /// (or has older); true when it did, so the lookup is worth repeating.
    fn read_shared(&self) -> bool {
        let Some(store) = &self.shared else { return false };
        if self.ttl.is_zero() || self.shared_read.replace(true) {
            return false;
        }
        let entries = store.read_tags();
        if entries.is_empty() {
            return false;
        }
        let (now, wall) = (Instant::now(), unix_now());
        with_cache(|cache| {
            for (href, name, learned, expires) in entries {
                // Wall-clock times become this process's instants; the future and the expired are not believed.
                let (Ok(ago), Ok(left)) = (Duration::try_from_secs_f64(wall - learned), Duration::try_from_secs_f64(expires - wall)) else {
                    continue;
                };
                let (Some(learned), Some(expires)) = (now.checked_sub(ago), now.checked_add(left)) else { continue };
                let newer = cache.groups.get(&self.group).and_then(|g| g.names.get(&href)).is_none_or(|e| e.age.learned < learned);
                if newer && !left.is_zero() {
                    cache.insert(&self.group, &href, &name, Age { learned, expires });
                }
            }
            cache.make_room();
        });
        true
    }

    /// Keeps what this call learned for the calls after it; with `tag_cache_ttl = 0` no call
    /// would trust it, and it would only take room.
    pub fn save(&self) {
        if self.ttl.is_zero() || self.learned.is_empty() && !self.list_advanced {
            return;
        }
        let now = Instant::now();
        let age = Age::new(now, self.ttl);
        with_cache(|cache| {
            cache.remove_expired(now);
            let mut all_kept = true;
            for (href, name) in &self.learned {
                if href.len() + name.len() <= MAX_ENTRY_BYTES {
                    cache.insert(&self.group, href, name, age);
                } else {
                    all_kept = false;
                }
            }
            if self.list_advanced || !all_kept {
                // A resumed reading keeps its first page's age, and expires with the shortest-lived page.
                let list_age = self.list_age.map_or(age, |old| Age { learned: old.learned, expires: old.expires.min(age.expires) });
                let list = self.list.clone().filter(|_| all_kept).map(|progress| (progress, list_age));
                cache.groups.entry(self.group.clone()).or_default().list = list;
            }
            cache.make_room();
        });
        if let Some(store) = &self.shared {
            let (wall, ttl) = (unix_now(), self.ttl.as_secs_f64().min(100.0 * 365.0 * 24.0 * 3600.0));
            let learned: Vec<SharedEntry> =
                self.learned.iter().map(|(href, name)| (href.clone(), name.clone(), wall, wall + ttl)).collect();
            store.publish(&learned);
        }
    }

    pub fn learn(&mut self, name: &str, href: &str) {
        let name = normalize_name(name);
        if let Some(old) = self.own_names.insert(href.to_owned(), name.clone()) {
            if let Some(hrefs) = self.own_hrefs.get_mut(&old) {
                hrefs.retain(|h| h != href);
            }
        }
        self.own_hrefs.entry(name.clone()).or_default().push(href.to_owned());
        self.learned.push((href.to_owned(), name));
    }

    /// One more page of the tag list was read (its names learned): `total` is the length it
    /// states, if any, and `next` the page after it.
    pub fn learn_list_page(&mut self, total: Option<u32>, next: Option<Url>) {
        let before = self.list.take();
        self.list = Some(ListProgress {
            read: before.as_ref().map_or(0, |p| p.read).saturating_add(1),
            total: total.or(before.and_then(|p| p.total)),
            next,
        });
        self.list_advanced = true;
    }

    /// Every href known to be called `name`.
    pub fn hrefs_of(&self, name: &str) -> Vec<String> {
        let hrefs = self.hrefs_in_process(name);
        if hrefs.is_empty() && self.read_shared() {
            return self.hrefs_in_process(name);
        }
        hrefs
    }

    fn hrefs_in_process(&self, name: &str) -> Vec<String> {
        let mut hrefs = self.own_hrefs.get(name).cloned().unwrap_or_default();
        let now = Instant::now();
        with_cache(|cache| {
            let Some(cached) = cache.groups.get(&self.group) else { return };
            for href in cached.hrefs.get(name).into_iter().flatten() {
                // This call's own knowledge of an href (a rename) comes first.
                let trusted = cached.names.get(href).is_some_and(|entry| entry.age.trusted(now, self.ttl));
                if trusted && !self.own_names.contains_key(href) {
                    hrefs.push(href.clone());
                }
            }
        });
        hrefs
    }

    pub fn name_of(&self, href: &str) -> Option<String> {
        self.name_in_process(href).or_else(|| if self.read_shared() { self.name_in_process(href) } else { None })
    }

    fn name_in_process(&self, href: &str) -> Option<String> {
        if let Some(name) = self.own_names.get(href) {
            return Some(name.clone());
        }
        let now = Instant::now();
        with_cache(|cache| {
            let entry = cache.groups.get(&self.group)?.names.get(href)?;
            entry.age.trusted(now, self.ttl).then(|| entry.name.clone())
        })
    }

    pub fn list_progress(&self) -> Option<&ListProgress> {
        self.list.as_ref()
    }
}

/// Action Network compares tag names without regard to case: full Unicode lowercasing, letter by
/// letter (as PHP's `mb_strtolower` before 8.3), with the final sigma as any sigma, so that every
/// PHP version's polyfill folds alike.
pub fn normalize_name(name: &str) -> String {
    name.chars().flat_map(char::to_lowercase).map(|c| if c == 'ς' { 'σ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn learned_entries_are_shared_until_they_expire() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-1");
        let mut first = Knowledge::load(&group, TTL, None);
        assert_eq!(first.hrefs_of("member"), Vec::<String>::new());
        first.learn("Member", "http://x/tags/1");
        let page_2 = Url::parse("http://x/tags?page=2").unwrap();
        first.learn_list_page(Some(3), Some(page_2.clone()));
        first.save();

        let second = Knowledge::load(&group, TTL, None);
        assert_eq!(second.hrefs_of("member"), ["http://x/tags/1"]);
        assert_eq!(second.name_of("http://x/tags/1").as_deref(), Some("member"));
        let progress = ListProgress { read: 1, total: Some(3), next: Some(page_2) };
        assert_eq!(second.list_progress(), Some(&progress));

        let expired = Knowledge::load(&group, Duration::ZERO, None);
        assert_eq!(expired.hrefs_of("member"), Vec::<String>::new());
        assert_eq!(expired.list_progress(), None);

        let other_key = Knowledge::load(&GroupKey::new("http://127.0.0.1:1/api/v2/", "another-key"), TTL, None);
        assert_eq!(other_key.hrefs_of("member"), Vec::<String>::new());
    }

    #[test]
    fn a_resumed_list_reading_expires_with_its_first_page() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-2");
        let ttl = Duration::from_millis(300);
        let mut first = Knowledge::load(&group, ttl, None);
        first.learn("Tag 1", "http://x/tags/1");
        first.learn_list_page(Some(2), Some(Url::parse("http://x/tags?page=2").unwrap()));
        first.save();
        std::thread::sleep(Duration::from_millis(200));

        let mut second = Knowledge::load(&group, ttl, None);
        second.learn("Tag 2", "http://x/tags/2");
        second.learn_list_page(None, None);
        second.save();
        assert_eq!(second.list_progress(), Some(&ListProgress { read: 2, total: Some(2), next: None }));
        std::thread::sleep(Duration::from_millis(200));

        // Page 1's names have expired: a position past page 1 must not be believed any longer.
        let third = Knowledge::load(&group, ttl, None);
        assert_eq!(third.hrefs_of("tag 1"), Vec::<String>::new());
        assert_eq!(third.hrefs_of("tag 2"), ["http://x/tags/2"]);
        assert_eq!(third.list_progress(), None);
    }

    #[test]
    fn an_entry_lives_for_the_ttl_of_the_call_that_learned_it() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-3");
        let mut brief = Knowledge::load(&group, Duration::from_millis(100), None);
        brief.learn("Brief", "http://x/tags/1");
        brief.save();
        assert_eq!(Knowledge::load(&group, TTL, None).name_of("http://x/tags/1").as_deref(), Some("brief"));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(Knowledge::load(&group, TTL, None).name_of("http://x/tags/1"), None, "a longer ttl does not revive it");

        let mut uncached = Knowledge::load(&group, Duration::ZERO, None);
        uncached.learn("Uncached", "http://x/tags/2");
        // A call uses what it learned itself, whatever its ttl.
        assert_eq!(uncached.hrefs_of("uncached"), ["http://x/tags/2"]);
        uncached.save();
        assert_eq!(Knowledge::load(&group, TTL, None).name_of("http://x/tags/2"), None);
    }

    #[test]
    fn a_rename_replaces_the_old_name() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-4");
        let mut knowledge = Knowledge::load(&group, TTL, None);
        knowledge.learn("Member", "http://x/tags/1");
        knowledge.save();
        let mut renamed = Knowledge::load(&group, TTL, None);
        renamed.learn("Members", "http://x/tags/1");
        assert_eq!(renamed.hrefs_of("member"), Vec::<String>::new());
        assert_eq!(renamed.hrefs_of("members"), ["http://x/tags/1"]);
        renamed.save();
        assert_eq!(Knowledge::load(&group, TTL, None).hrefs_of("member"), Vec::<String>::new());
    }

    #[test]
    fn names_that_fold_alike_keep_every_href() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-5");
        let mut knowledge = Knowledge::load(&group, TTL, None);
        knowledge.learn("Member", "http://x/tags/1");
        knowledge.learn("member", "http://x/tags/2");
        assert_eq!(knowledge.hrefs_of("member"), ["http://x/tags/1", "http://x/tags/2"]);
        knowledge.save();
        let mut later = Knowledge::load(&group, TTL, None);
        later.learn("STRAẞE", "http://x/tags/3");
        assert_eq!(later.hrefs_of("member"), ["http://x/tags/1", "http://x/tags/2"]);
        assert_eq!(later.hrefs_of("straße"), ["http://x/tags/3"]);
    }

    #[test]
    fn names_fold_by_lowercasing_with_one_sigma() {
        assert_eq!(normalize_name("STRAẞE"), "straße");
        assert_eq!(normalize_name("STRASSE"), "strasse");
        assert_eq!(normalize_name("ΟΔΟΣ"), normalize_name("οδος"));
        assert_eq!(normalize_name("İ"), "i\u{307}");
    }

    #[test]
    fn the_cache_stays_within_its_bound_and_forgets_the_expired() {
        let (one, two) = (GroupKey::new("http://a/", "k"), GroupKey::new("http://b/", "k"));
        let now = Instant::now();
        let mut cache = Cache::default();
        cache.insert(&one, "http://a/tags/expired", "old", Age::new(now, Duration::from_millis(1)));
        let progress = ListProgress { read: 1, total: None, next: None };
        cache.groups.get_mut(&one).unwrap().list = Some((progress, Age::new(now, TTL)));
        for n in 0..2 * MAX_ENTRIES {
            let group = if n % 2 == 0 { &one } else { &two };
            cache.insert(group, &format!("http://x/tags/{n}"), &format!("tag {n}"), Age::new(now, TTL));
        }
        cache.remove_expired(now + Duration::from_millis(1));
        assert!(!cache.groups[&one].names.contains_key("http://a/tags/expired"));
        cache.make_room();
        assert_eq!(cache.order.len(), MAX_ENTRIES);
        let kept: usize = cache.groups.values().map(|g| g.names.len()).sum();
        let by_name: usize = cache.groups.values().flat_map(|g| g.hrefs.values()).map(Vec::len).sum();
        assert_eq!((kept, by_name), (MAX_ENTRIES, MAX_ENTRIES));
        // The oldest went first, and the reading position of a group that lost entries with them.
        assert!(!cache.groups[&one].names.contains_key("http://x/tags/0"));
        assert!(cache.groups[&two].names.contains_key(&format!("http://x/tags/{}", 2 * MAX_ENTRIES - 1)));
        assert!(cache.groups[&one].list.is_none());
    }

    #[test]
    fn an_oversized_entry_serves_only_its_call() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-6");
        let long = "x".repeat(MAX_ENTRY_BYTES);
        let mut knowledge = Knowledge::load(&group, TTL, None);
        knowledge.learn(&long, "http://x/tags/1");
        knowledge.learn_list_page(None, None);
        assert_eq!(knowledge.hrefs_of(&long), ["http://x/tags/1"]);
        knowledge.save();
        let later = Knowledge::load(&group, TTL, None);
        assert_eq!(later.hrefs_of(&long), Vec::<String>::new());
        assert_eq!(later.list_progress(), None, "the list position would skip the page of a name not kept");
    }
}
