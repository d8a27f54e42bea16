//! What this process knows of each Action Network group's tags: name <-> href, learned while
//! answering calls, and how far it has read the group's tag list, all kept for `tag_cache_ttl`
//! so that every request a PHP-FPM worker serves shares it. Tags are renamed rarely; a rename is
//! picked up once the old entry expires.
//!
//! The reading position lets a call go on where an earlier one stopped instead of reading the
//! list's first pages again: it expires with the names of the first page it covers, so the
//! pages it skips are always pages whose names are still known.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use reqwest::Url;

/// A group, as its API key and base URL identify it (the key is kept only as a digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey(String);

impl GroupKey {
    pub fn new(base_url: &str, api_key: &str) -> Self {
        GroupKey(format!("{base_url} {}", sha1_smol::Sha1::from(api_key).digest()))
    }
}

#[derive(Default)]
struct Group {
    /// href -> (lower-cased name, when learned)
    names: HashMap<String, (String, Instant)>,
    /// How far `GET /tags` has been read, and when its first page read was learned.
    list: Option<(ListProgress, Instant)>,
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

static GROUPS: Mutex<Option<HashMap<GroupKey, Group>>> = Mutex::new(None);

/// One call's view: the process cache's fresh entries plus what the call learns.
#[derive(Debug, Default)]
pub struct Knowledge {
    by_name: HashMap<String, String>,
    by_href: HashMap<String, String>,
    list: Option<ListProgress>,
    /// When the loaded reading position was first saved; `None` for a reading begun by this call.
    list_since: Option<Instant>,
    learned: Vec<(String, String)>,
    list_advanced: bool,
}

impl Knowledge {
    /// The entries of `group` learned less than `ttl` ago.
    pub fn load(group: &GroupKey, ttl: Duration) -> Self {
        let mut knowledge = Knowledge::default();
        let mut groups = GROUPS.lock();
        let Some(cached) = groups.get_or_insert_with(HashMap::new).get(group) else {
            return knowledge;
        };
        let fresh = |at: &Instant| at.elapsed() < ttl;
        let mut entries: Vec<_> = cached.names.iter().filter(|(_, (_, at))| fresh(at)).collect();
        // Oldest first, so that when a rename left two hrefs with one name the newest wins.
        entries.sort_by_key(|(_, (_, at))| *at);
        for (href, (name, _)) in entries {
            knowledge.by_name.insert(name.clone(), href.clone());
            knowledge.by_href.insert(href.clone(), name.clone());
        }
        if let Some((progress, since)) = cached.list.as_ref().filter(|(_, since)| fresh(since)) {
            knowledge.list = Some(progress.clone());
            knowledge.list_since = Some(*since);
        }
        knowledge
    }

    /// Keeps what this call learned for the calls after it.
    pub fn save(&self, group: &GroupKey) {
        if self.learned.is_empty() && !self.list_advanced {
            return;
        }
        let now = Instant::now();
        let mut groups = GROUPS.lock();
        let cached = groups.get_or_insert_with(HashMap::new).entry(group.clone()).or_default();
        for (href, name) in &self.learned {
            cached.names.insert(href.clone(), (name.clone(), now));
        }
        if self.list_advanced {
            // A resumed reading keeps its first page's age, so it never outlives those names.
            cached.list = self.list.clone().map(|progress| (progress, self.list_since.unwrap_or(now)));
        }
    }

    pub fn learn(&mut self, name: &str, href: &str) {
        let name = normalize_name(name);
        if let Some(old_name) = self.by_href.insert(href.to_owned(), name.clone()) {
            if old_name != name && self.by_name.get(&old_name).is_some_and(|h| h == href) {
                self.by_name.remove(&old_name);
            }
        }
        self.by_name.insert(name.clone(), href.to_owned());
        self.learned.push((href.to_owned(), name));
    }

    /// One more page of the tag list was read (its names learned): `total` is the length it
    /// states, if any, and `next` the page after it.
    pub fn learn_list_page(&mut self, total: Option<u32>, next: Option<Url>) {
        let before = self.list.take();
        self.list = Some(ListProgress {
            read: before.as_ref().map_or(0, |p| p.read) + 1,
            total: total.or(before.and_then(|p| p.total)),
            next,
        });
        self.list_advanced = true;
    }

    pub fn href_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(String::as_str)
    }

    pub fn name_of(&self, href: &str) -> Option<&str> {
        self.by_href.get(href).map(String::as_str)
    }

    pub fn list_progress(&self) -> Option<&ListProgress> {
        self.list.as_ref()
    }
}

/// Action Network compares tag names without regard to case.
pub fn normalize_name(name: &str) -> String {
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_entries_are_shared_until_they_expire() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-1");
        let mut first = Knowledge::load(&group, Duration::from_secs(600));
        assert_eq!(first.href_of("member"), None);
        first.learn("Member", "http://x/tags/1");
        let page_2 = Url::parse("http://x/tags?page=2").unwrap();
        first.learn_list_page(Some(3), Some(page_2.clone()));
        first.save(&group);

        let second = Knowledge::load(&group, Duration::from_secs(600));
        assert_eq!(second.href_of("member"), Some("http://x/tags/1"));
        assert_eq!(second.name_of("http://x/tags/1"), Some("member"));
        let progress = ListProgress { read: 1, total: Some(3), next: Some(page_2) };
        assert_eq!(second.list_progress(), Some(&progress));

        let expired = Knowledge::load(&group, Duration::ZERO);
        assert_eq!(expired.href_of("member"), None);
        assert_eq!(expired.list_progress(), None);

        let other_key = Knowledge::load(&GroupKey::new("http://127.0.0.1:1/api/v2/", "another-key"), Duration::from_secs(600));
        assert_eq!(other_key.href_of("member"), None);
    }

    #[test]
    fn a_resumed_list_reading_expires_with_its_first_page() {
        let group = GroupKey::new("http://127.0.0.1:1/api/v2/", "unit-test-key-2");
        let ttl = Duration::from_millis(300);
        let mut first = Knowledge::load(&group, ttl);
        first.learn("Tag 1", "http://x/tags/1");
        first.learn_list_page(Some(2), Some(Url::parse("http://x/tags?page=2").unwrap()));
        first.save(&group);
        std::thread::sleep(Duration::from_millis(200));

        let mut second = Knowledge::load(&group, ttl);
        second.learn("Tag 2", "http://x/tags/2");
        second.learn_list_page(None, None);
        second.save(&group);
        assert_eq!(second.list_progress(), Some(&ListProgress { read: 2, total: Some(2), next: None }));
        std::thread::sleep(Duration::from_millis(200));

        // Page 1's names have expired: a position past page 1 must not be believed any longer.
        let third = Knowledge::load(&group, ttl);
        assert_eq!(third.href_of("tag 1"), None);
        assert_eq!(third.href_of("tag 2"), Some("http://x/tags/2"));
        assert_eq!(third.list_progress(), None);
    }

    #[test]
    fn a_rename_replaces_the_old_name() {
        let mut knowledge = Knowledge::default();
        knowledge.learn("Member", "http://x/tags/1");
        knowledge.learn("Members", "http://x/tags/1");
        assert_eq!(knowledge.href_of("member"), None);
        assert_eq!(knowledge.href_of("members"), Some("http://x/tags/1"));
    }
}
