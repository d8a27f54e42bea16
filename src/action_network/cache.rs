//! What this process knows of each Action Network group's tags: name <-> href, learned while
//! answering calls and kept for `tag_cache_ttl`, so that every request a PHP-FPM worker serves
//! shares it. Tags are renamed rarely; a rename is picked up once the old entry expires.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

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
    /// How many pages `GET /tags` had, and when.
    list_pages: Option<(u32, Instant)>,
}

static GROUPS: Mutex<Option<HashMap<GroupKey, Group>>> = Mutex::new(None);

/// One call's view: the process cache's fresh entries plus what the call learns.
#[derive(Debug, Default)]
pub struct Knowledge {
    by_name: HashMap<String, String>,
    by_href: HashMap<String, String>,
    list_pages: Option<u32>,
    learned: Vec<(String, String)>,
    learned_list_pages: Option<u32>,
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
        knowledge.list_pages = cached.list_pages.filter(|(_, at)| fresh(at)).map(|(pages, _)| pages);
        knowledge
    }

    /// Keeps what this call learned for the calls after it.
    pub fn save(&self, group: &GroupKey) {
        if self.learned.is_empty() && self.learned_list_pages.is_none() {
            return;
        }
        let now = Instant::now();
        let mut groups = GROUPS.lock();
        let cached = groups.get_or_insert_with(HashMap::new).entry(group.clone()).or_default();
        for (href, name) in &self.learned {
            cached.names.insert(href.clone(), (name.clone(), now));
        }
        if let Some(pages) = self.learned_list_pages {
            cached.list_pages = Some((pages, now));
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

    pub fn learn_list_pages(&mut self, pages: u32) {
        self.list_pages = Some(pages);
        self.learned_list_pages = Some(pages);
    }

    pub fn href_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(String::as_str)
    }

    pub fn name_of(&self, href: &str) -> Option<&str> {
        self.by_href.get(href).map(String::as_str)
    }

    pub fn list_pages(&self) -> Option<u32> {
        self.list_pages
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
        first.learn_list_pages(3);
        first.save(&group);

        let second = Knowledge::load(&group, Duration::from_secs(600));
        assert_eq!(second.href_of("member"), Some("http://x/tags/1"));
        assert_eq!(second.name_of("http://x/tags/1"), Some("member"));
        assert_eq!(second.list_pages(), Some(3));

        let expired = Knowledge::load(&group, Duration::ZERO);
        assert_eq!(expired.href_of("member"), None);
        assert_eq!(expired.list_pages(), None);

        let other_key = Knowledge::load(&GroupKey::new("http://127.0.0.1:1/api/v2/", "another-key"), Duration::from_secs(600));
        assert_eq!(other_key.href_of("member"), None);
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
