//! "Does this Action Network person have tag T?" in as few requests as the API allows.
//!
//! A tagging names its tag only by href, so the answer needs T's href (or hrefs: a group that
//! holds two tags whose names differ only in case has two, and a person with either has T). With
//! it (cached from an earlier call of this process) the cost is the person lookup plus the
//! person's taggings pages up to the first match: `1 + pages`. Without it, but with the name of
//! every tag the person has, the answer is `false` for the same `1 + pages`. Otherwise a person
//! with two unknown tags or more makes the call read the next unread page of the group's tag
//! list early (25 names, and the list's length, which no other request tells); the hrefs still
//! unknown at the end are resolved by whichever is cheaper, knowing that length: one `GET` per
//! unknown tag href, or more pages of the tag list, stopping once T is named or every href of
//! the person is. So, with a tag list that states its length (as Action Network documents), a
//! cold call costs at most one request more than the plugin's one per tagging (when the first
//! list page names none of the person's tags, and the lookups are cheaper than the rest of the
//! list), with no cliff at any number of tags.
//!
//! The answer is `true` as soon as a tagging names an href of T; `false` only when every
//! tagging was read (`Pages` says where a collection ends) and none is T's: a tagging without
//! an `osdi:tag` link is skipped, as the plugin skips it, but then only `true` can be known.
//!
//! Every name a page of the list gives is kept, and so is the reading position: a process reads
//! each page of the list at most once per `tag_cache_ttl`, and never looks up a tag it can
//! name. Pages read by earlier calls may have shifted since (a deleted tag moves the names after
//! it forward a page), so reaching the list's end proves nothing: a tag of the person still
//! unnamed then is looked up by its href.

mod cache;
mod http;
pub mod shared;
pub mod site_state;
mod store;

use std::{
    collections::HashSet,
    fmt,
    time::{Duration, Instant},
};

use reqwest::Url;
use serde_json::Value;

use cache::{normalize_name, GroupKey, Knowledge, ListProgress};
use http::Session;

pub use cache::entries as tag_cache_entries;
pub use http::requests_sent;

/// A tag list that states no length (no `total_pages`): only more unknown tag hrefs than a
/// page names justify reading on rather than fetching each tag.
const PROBE_LIST_ABOVE: usize = 25;

/// Requests are spaced this much wider than `1 / max_rps`. A strict server counts every request
/// in any 1-second span, and a process that wakes late from its pacing sleep brings its request
/// closer to the ones after it: 10% leaves 100 ms of such lateness within each second of
/// requests, for 9% of the throughput.
const PACING_HEADROOM: f64 = 1.1;

/// Pacing never spaces requests further apart than this, whatever `max_rps` says.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// How one call talks to Action Network.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The API root, ending in `/`, e.g. `https://actionnetwork.org/api/v2/`.
    pub base_url: Url,
    /// Per request.
    pub timeout: Duration,
    /// For the whole call, waits included.
    pub deadline: Duration,
    /// Taggings pages read at most.
    pub max_pages: u32,
    pub tag_cache_ttl: Duration,
    /// Requests per second this host sends at most (this process, without a shared store).
    pub max_rps: f64,
    /// Where the host's shared state lives (`shared.rs`); `None` keeps everything per process.
    pub shared_dir: Option<std::path::PathBuf>,
    /// The site's lock server, sharing the state across hosts (`site_state.rs`); the host's
    /// files stand in when it cannot.
    pub site_db: Option<site_state::SiteDb>,
}

pub const DEFAULT_BASE_URL: &str = "https://actionnetwork.org/api/v2/";

impl Settings {
    pub fn new(base_url: Url) -> Self {
        Settings {
            base_url,
            timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            max_pages: 10,
            tag_cache_ttl: Duration::from_secs(600),
            max_rps: 4.0,
            shared_dir: None,
            site_db: None,
        }
    }
}

/// Checks an API root: absolute http(s) without credentials, query or fragment; plain http
/// only to a loopback host (the key would cross the network in clear). Adds the final `/`.
pub fn parse_base_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| format!("is not a valid URL ({e})"))?;
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("uses plain http:// to a host other than loopback; use https://".into()),
        other => return Err(format!("has scheme \"{other}\"; only https:// (or http:// to loopback) is allowed")),
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err("must name a host and carry no user name or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Why the answer cannot be known. Messages never contain the API key.
#[derive(Debug, PartialEq)]
pub enum Error {
    Transport { what: String, cause: String },
    Timeout { what: String, limit: String },
    Deadline { what: String },
    Status { what: String, status: u16, message: Option<String> },
    PageCap { max_pages: u32 },
    UnreadableTaggings { count: usize },
    RepeatedNext { what: String },
    ForeignLink { what: String, origin: String },
    TooManyRedirects { what: String, max: usize },
    BadJson { what: String, detail: String },
    BadShape { what: String, detail: String },
    TooLarge { what: String, cap: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport { what, cause } => write!(f, "Action Network {what} failed: {cause}"),
            Error::Timeout { what, limit } => write!(f, "Action Network {what} timed out ({limit})"),
            Error::Deadline { what } => write!(f, "the call's deadline passed before the Action Network {what}"),
            Error::Status { what, status, message } => {
                write!(f, "Action Network answered HTTP {status} to the {what}")?;
                match message {
                    Some(text) => write!(f, ": {text}"),
                    None => Ok(()),
                }
            }
            Error::PageCap { max_pages } => write!(
                f,
                "the person has more than {max_pages} pages of taggings (max_pages); the answer is unknown"
            ),
            Error::UnreadableTaggings { count } => write!(
                f,
                "{count} of the person's taggings could not be read (no osdi:tag link), and the asked tag is not among the others; the answer is unknown"
            ),
            Error::RepeatedNext { what } => {
                write!(f, "Action Network's {what} links back to a page already read; stopped to avoid a loop")
            }
            Error::ForeignLink { what, origin } => write!(
                f,
                "the Action Network {what} points to another origin ({origin}); not followed, so the API key stays with base_url's origin"
            ),
            Error::TooManyRedirects { what, max } => {
                write!(f, "Action Network redirected the {what} more than {max} times; stopped to avoid a loop")
            }
            Error::BadJson { what, detail } => write!(f, "the Action Network {what} answer is not valid JSON: {detail}"),
            Error::BadShape { what, detail } => write!(f, "the Action Network {what} answer has an unexpected shape: {detail}"),
            Error::TooLarge { what, cap } => {
                write!(f, "the Action Network {what} answer is larger than {} MiB; not read", cap >> 20)
            }
        }
    }
}

impl std::error::Error for Error {}

/// `Some(true)` / `Some(false)`; `None` when no person has that email.
pub fn person_has_tag(email: &str, tag: &str, api_key: &str, settings: &Settings) -> Result<Option<bool>, Error> {
    let group = GroupKey::new(settings.base_url.as_str(), api_key);
    let files = settings.shared_dir.as_deref().map(|dir| shared::Store::new(dir, group.as_str()));
    let deadline = far_future_if_none(Instant::now().checked_add(settings.deadline));
    let state = site_state::SharedState::new(files, settings.site_db.clone(), group.as_str(), deadline);
    let store = state.as_ref().map(|state| state as &dyn store::GroupStore);
    let session = Session {
        origin: settings.base_url.clone(),
        api_key,
        timeout: settings.timeout,
        deadline,
        min_interval: Duration::try_from_secs_f64(PACING_HEADROOM / settings.max_rps).map_or(MAX_INTERVAL, |d| d.min(MAX_INTERVAL)),
        shared: store,
    };
    let mut knowledge = Knowledge::load(&group, settings.tag_cache_ttl, store);
    let answer = check(&session, settings, email, &normalize_name(tag), &mut knowledge);
    // Whatever was learned stays useful, even when this call failed.
    knowledge.save();
    if let Some(state) = &state {
        state.tidy_when_due();
    }
    answer
}

/// A deadline past what `Instant` can hold is as good as a year away.
fn far_future_if_none(deadline: Option<Instant>) -> Instant {
    deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600))
}

fn check(
    session: &Session,
    settings: &Settings,
    email: &str,
    target: &str,
    knowledge: &mut Knowledge,
) -> Result<Option<bool>, Error> {
    let Some(taggings) = find_person(session, settings, email)? else {
        return Ok(None);
    };
    // Every href known to be the asked tag: one, unless the group holds two tags whose names
    // differ only in case; a person with any of them has the tag.
    let mut target_hrefs = knowledge.hrefs_of(target);
    let mut list = TagList::new(session, knowledge)?;
    // Every tag href of the person met so far, in order.
    let mut seen: Vec<String> = Vec::new();
    // Taggings without an `osdi:tag` link: skipped, as the plugin skips them, but a `false`
    // cannot be known while there are any.
    let mut unreadable = 0;
    let mut pages = Pages::new(taggings, "taggings page", "osdi:taggings", Some(settings.max_pages));
    while let Some(page) = pages.next(session)? {
        let (hrefs, skipped) = tagging_hrefs(&page)?;
        if target_hrefs.is_empty() && seen.is_empty() && unreadable == 0 {
            // A person with several unknown tags may need the tag list anyway; reading its
            // first page now may name the tag at once, and paging can then stop at the first match.
            let unnamed = hrefs.iter().filter(|h| knowledge.name_of(h).is_none()).count();
            let after = if pages.finished() { 0 } else { taggings_after(&page, hrefs.len() + skipped) };
            if list.is_cheaper(knowledge, expected_unnamed(after, hrefs.len() + skipped, unnamed)) {
                list.read_next(session, knowledge)?;
                target_hrefs = knowledge.hrefs_of(target);
            }
        }
        unreadable += skipped;
        for href in hrefs {
            if target_hrefs.contains(&href) {
                return Ok(Some(true));
            }
            if !seen.contains(&href) {
                seen.push(href);
            }
        }
    }
    let found = target_hrefs.is_empty() && resolve(session, target, &seen, knowledge, &mut list)?;
    if !found && unreadable > 0 {
        return Err(Error::UnreadableTaggings { count: unreadable });
    }
    Ok(Some(found))
}

/// The person's unnamed tags, guessing that the `after` taggings after the first page's
/// `on_page` are as unknown as its own. The server's totals are only numbers: the arithmetic
/// saturates.
fn expected_unnamed(after: usize, on_page: usize, unnamed: usize) -> usize {
    unnamed.saturating_add(after.saturating_mul(unnamed) / on_page.max(1))
}

/// How many taggings come after a page that is not the last: exact with `total_records`,
/// else estimated.
fn taggings_after(page: &Value, on_page: usize) -> usize {
    let number = |key: &str| count(page, key).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    match (number("total_records"), number("total_pages")) {
        (Some(total), _) => total.saturating_sub(on_page),
        (None, Some(pages)) => pages.saturating_sub(1).saturating_mul(25),
        (None, None) => 25,
    }
}

/// A count a page states: an integer from 0 to 2^63 - 1, which a PHP int holds too, so that both
/// implementations read the same numbers; anything else counts as absent.
fn count(page: &Value, key: &str) -> Option<u64> {
    page.get(key)?.as_i64().and_then(|n| u64::try_from(n).ok())
}

/// Is one of `hrefs` the href of `target`? Learns the names still unknown by the cheaper of
/// per-tag lookups and the group's tag list, re-deciding after every request.
fn resolve(
    session: &Session,
    target: &str,
    hrefs: &[String],
    knowledge: &mut Knowledge,
    list: &mut TagList,
) -> Result<bool, Error> {
    loop {
        let target_hrefs = knowledge.hrefs_of(target);
        if !target_hrefs.is_empty() {
            return Ok(hrefs.iter().any(|h| target_hrefs.contains(h)));
        }
        let unnamed: Vec<&String> = hrefs.iter().filter(|h| knowledge.name_of(h).is_none()).collect();
        let Some(first_unnamed) = unnamed.first() else {
            return Ok(false);
        };
        if list.is_cheaper(knowledge, unnamed.len()) {
            list.read_next(session, knowledge)?;
            continue;
        }
        // Any failure, 404 included, fails the call and teaches nothing: a 404 can be passing
        // (a replica behind), and taking it for "not the tag" would answer false for as long
        // as the cache kept that.
        let tag = session.get_json(&parse_link(first_unnamed, "tag lookup")?, "tag lookup")?;
        let name = tag.get("name").and_then(Value::as_str).ok_or_else(|| bad_shape("tag lookup", "no \"name\""))?;
        knowledge.learn(name, first_unnamed);
    }
}

/// The group's tag list, 25 names a page, read one page at a time when that is worth it, from
/// where this process stopped reading it.
struct TagList {
    pages: Pages,
}

impl TagList {
    fn new(session: &Session, knowledge: &Knowledge) -> Result<Self, Error> {
        let pages = match knowledge.list_progress() {
            Some(progress) => Pages::resume(progress.next.clone(), "tag list page", "osdi:tags", progress.read),
            None => Pages::new(session.origin.join("tags").map_err(|e| bad_shape("tag list", e))?, "tag list page", "osdi:tags", None),
        };
        Ok(TagList { pages })
    }

    /// Whether reading on is cheaper than looking up `unnamed` tags one by one: with the
    /// list's length, when fewer pages are unread than tags unnamed. The first page tells the
    /// length (and names 25 tags), so it is read as soon as it could save a request: for two
    /// unnamed tags or more, at the risk of one request more than the lookups.
    fn is_cheaper(&self, knowledge: &Knowledge, unnamed: usize) -> bool {
        if self.pages.finished() {
            return false;
        }
        match knowledge.list_progress() {
            None => unnamed > 1,
            Some(ListProgress { read, total: Some(total), .. }) => (total.saturating_sub(*read).max(1) as usize) < unnamed,
            Some(ListProgress { total: None, .. }) => unnamed > PROBE_LIST_ABOVE,
        }
    }

    fn read_next(&mut self, session: &Session, knowledge: &mut Knowledge) -> Result<(), Error> {
        let Some(page) = self.pages.next(session)? else { return Ok(()) };
        for (name, href) in list_tags(&page)? {
            knowledge.learn(&name, &href);
        }
        let total = count(&page, "total_pages").map(|n| n.try_into().unwrap_or(u32::MAX));
        knowledge.learn_list_page(total, self.pages.next.clone());
        Ok(())
    }
}

/// The person's taggings collection, or `None` when no person has that email.
fn find_person(session: &Session, settings: &Settings, email: &str) -> Result<Option<Url>, Error> {
    let mut url = settings.base_url.join("people/").map_err(|e| bad_shape("person lookup", e))?;
    // OData string literal: quotes doubled. `query_pairs_mut` percent-encodes it, `+` included.
    let filter = format!("email_address eq '{}'", email.replace('\'', "''"));
    url.query_pairs_mut().append_pair("filter", &filter);
    let answer = session.get_json(&url, "person lookup")?;
    // The people collection's `next` link is present even on its last page: never followed.
    let Some(person) = embedded(&answer, "osdi:people", "person lookup")?.first() else {
        return Ok(None);
    };
    match link(person, "osdi:taggings") {
        Some(href) => parse_link(href, "person lookup").map(Some),
        None => documented_taggings(&settings.base_url, person).map(Some),
    }
}

/// A person without an `osdi:taggings` link: the address Action Network documents for its
/// taggings, `people/<id>/taggings` under `base_url`, with the id of its `action_network:`
/// identifier (a uuid; anything else is not put in a path).
fn documented_taggings(base_url: &Url, person: &Value) -> Result<Url, Error> {
    let id = person
        .get("identifiers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|identifier| identifier.as_str()?.strip_prefix("action_network:"))
        .find(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .ok_or_else(|| bad_shape("person lookup", "the person has neither an osdi:taggings link nor an action_network identifier"))?;
    base_url.join(&format!("people/{id}/taggings")).map_err(|e| bad_shape("person lookup", e))
}

/// A paged collection, followed through `_links.next` with origin and page-cap checks.
///
/// Its last page is whichever end comes first: the page whose number reaches `total_pages`,
/// a page with fewer items than its `per_page` (an empty one included), or one whose `next`
/// leads back to a page already read. So no request goes past an end that the totals or a
/// short page show, however the server links `next` there (Action Network's people list links
/// it on its last page too). A `next` back to a page already read while the totals say more
/// pages follow is a loop, and an error: ending there could miss taggings.
struct Pages {
    next: Option<Url>,
    visited: HashSet<Url>,
    what: &'static str,
    /// The `_embedded` key of the collection's items.
    key: &'static str,
    cap: Option<u32>,
    /// Pages read by earlier calls, for numbering pages.
    read_before: u32,
}

impl Pages {
    fn new(first: Url, what: &'static str, key: &'static str, cap: Option<u32>) -> Self {
        Pages { cap, ..Pages::resume(Some(first), what, key, 0) }
    }

    /// Goes on after `read_before` pages read earlier; `next: None` once they were all.
    fn resume(next: Option<Url>, what: &'static str, key: &'static str, read_before: u32) -> Self {
        Pages { next, visited: HashSet::new(), what, key, cap: None, read_before }
    }

    fn finished(&self) -> bool {
        self.next.is_none()
    }

    fn next(&mut self, session: &Session) -> Result<Option<Value>, Error> {
        let Some(url) = self.next.take() else { return Ok(None) };
        if let Some(cap) = self.cap {
            if self.visited.len() as u32 >= cap {
                return Err(Error::PageCap { max_pages: cap });
            }
        }
        let number = u64::from(self.read_before) + self.visited.len() as u64 + 1;
        let what = format!("{} {number}", self.what);
        self.visited.insert(url.clone());
        let page = session.get_json(&url, &what)?;
        let items = embedded(&page, self.key, &what)?.len() as u64;
        let total_pages = count(&page, "total_pages");
        let short = items == 0 || count(&page, "per_page").is_some_and(|per_page| items < per_page);
        if short || total_pages.is_some_and(|total| number >= total) {
            return Ok(Some(page));
        }
        if let Some(next) = link(&page, "next") {
            let next = parse_link(next, &what)?;
            if self.visited.contains(&next) {
                return if total_pages.is_some() { Err(Error::RepeatedNext { what }) } else { Ok(Some(page)) };
            }
            session.same_origin(&next, &format!("next link of the {what}"))?;
            self.next = Some(next);
        }
        Ok(Some(page))
    }
}

/// The tag hrefs of a taggings page, and how many of its taggings have no `osdi:tag` link.
fn tagging_hrefs(page: &Value) -> Result<(Vec<String>, usize), Error> {
    let mut hrefs = Vec::new();
    let mut unreadable = 0;
    for tagging in embedded(page, "osdi:taggings", "taggings page")? {
        match link(tagging, "osdi:tag") {
            Some(href) => hrefs.push(parse_link(href, "taggings page")?.to_string()),
            None => unreadable += 1,
        }
    }
    Ok((hrefs, unreadable))
}

/// (name, href) of each tag on a tag list page.
fn list_tags(page: &Value) -> Result<Vec<(String, String)>, Error> {
    let tags = embedded(page, "osdi:tags", "tag list page")?;
    tags.iter()
        .map(|tag| {
            let name = tag.get("name").and_then(Value::as_str).ok_or_else(|| bad_shape("tag list page", "a tag has no name"))?;
            let href = link(tag, "self").ok_or_else(|| bad_shape("tag list page", "a tag has no self link"))?;
            Ok((name.to_owned(), parse_link(href, "tag list page")?.to_string()))
        })
        .collect()
}

/// The items of a collection page, `_embedded.<key>`. An empty collection may come without
/// `_embedded`, as `{}`, or without the key (the OSDI specification allows each): none. Only
/// what cannot be a collection fails: a page that is not an object, or something else where
/// `_embedded` or the list should be.
fn embedded<'a>(page: &'a Value, key: &str, what: &str) -> Result<&'a [Value], Error> {
    let page = page.as_object().ok_or_else(|| bad_shape(what, "not a JSON object"))?;
    match page.get("_embedded") {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Object(embedded)) => match embedded.get(key) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(bad_shape(what, format!("_embedded.{key} is not a list"))),
        },
        Some(_) => Err(bad_shape(what, "_embedded is not an object")),
    }
}

/// `resource._links.<rel>.href`
fn link<'a>(resource: &'a Value, rel: &str) -> Option<&'a str> {
    resource.get("_links")?.get(rel)?.get("href")?.as_str()
}

fn parse_link(href: &str, what: &str) -> Result<Url, Error> {
    Url::parse(href).map_err(|e| bad_shape(what, format!("link {href:?} is not a URL ({e})")))
}

fn bad_shape(what: &str, detail: impl fmt::Display) -> Error {
    Error::BadShape { what: what.into(), detail: detail.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        assert_eq!(parse_base_url("https://actionnetwork.org/api/v2").unwrap().as_str(), DEFAULT_BASE_URL);
        assert!(parse_base_url("http://127.0.0.1:8080/api/v2/").is_ok());
        assert!(parse_base_url("http://localhost/api/v2/").is_ok());
        assert!(parse_base_url("http://[::1]:81/").is_ok());
        assert!(parse_base_url("http://example.org/api/v2/").unwrap_err().contains("plain http://"));
        assert!(parse_base_url("ftp://example.org/").unwrap_err().contains("scheme \"ftp\""));
        assert!(parse_base_url("https://user:pw@example.org/").unwrap_err().contains("user name"));
        assert!(parse_base_url("https://example.org/?x=1").unwrap_err().contains("query"));
        assert!(parse_base_url("not a url").unwrap_err().contains("not a valid URL"));
    }

    #[test]
    fn messages_say_what_and_why() {
        let status = Error::Status { what: "person lookup".into(), status: 403, message: Some("API Key invalid or not present".into()) };
        assert_eq!(status.to_string(), "Action Network answered HTTP 403 to the person lookup: API Key invalid or not present");
        assert!(Error::PageCap { max_pages: 10 }.to_string().contains("more than 10 pages"));
    }

    #[test]
    fn server_totals_saturate() {
        let page = |totals: Value| {
            let mut page = serde_json::json!({"_links": {}});
            page.as_object_mut().unwrap().extend(totals.as_object().unwrap().clone());
            page
        };
        let huge_pages = page(serde_json::json!({"total_pages": 1u64 << 62}));
        assert_eq!(taggings_after(&huge_pages, 25), usize::MAX);
        // 4 unnamed of 4, then as many of the (saturated) rest.
        let saturated = 4 + usize::MAX / 4;
        assert_eq!(expected_unnamed(taggings_after(&huge_pages, 4), 4, 4), saturated);
        // 2^62 + 1 pages: 25 × 2^62 would wrap to 2^62, and × 4 to 0.
        let after = |totals: Value| taggings_after(&page(totals), 4);
        assert_eq!(expected_unnamed(after(serde_json::json!({"total_pages": (1u64 << 62) + 1})), 4, 4), saturated);
        assert_eq!(expected_unnamed(after(serde_json::json!({"total_records": (1u64 << 62) + 4})), 4, 4), saturated);
        // Past what a PHP int holds, or not an integer: absent, as in the polyfill; a page
        // that is not the last then has a page's worth after it.
        assert_eq!(taggings_after(&page(serde_json::json!({"total_pages": 1u64 << 63})), 25), 25);
        assert_eq!(taggings_after(&page(serde_json::json!({"total_records": -5, "total_pages": 2.5})), 25), 25);
    }

    #[test]
    fn shapes_are_checked() {
        let json = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        let page = json(r#"{"_embedded": {"osdi:taggings": [{"_links": {"osdi:tag": {"href": "http://h/api/v2/tags/1"}}}, {"_links": {}}, "x"]}}"#);
        assert_eq!(tagging_hrefs(&page).unwrap(), (vec!["http://h/api/v2/tags/1".to_string()], 2), "two taggings without a tag link");
        // An empty collection, however it comes.
        for empty in [r#"{}"#, r#"{"foo": 1}"#, r#"{"_embedded": {}}"#, r#"{"_embedded": null}"#, r#"{"_embedded": {"osdi:taggings": null}}"#] {
            assert_eq!(tagging_hrefs(&json(empty)).unwrap(), (vec![], 0), "{empty}");
        }
        for wrong in [r#"[]"#, r#""page""#, r#"{"_embedded": "x"}"#, r#"{"_embedded": {"osdi:taggings": "x"}}"#, r#"{"_embedded": {"osdi:taggings": {}}}"#] {
            assert!(matches!(tagging_hrefs(&json(wrong)), Err(Error::BadShape { .. })), "{wrong}");
        }
        let bad_link = json(r#"{"_embedded": {"osdi:taggings": [{"_links": {"osdi:tag": {"href": "not a url"}}}]}}"#);
        assert!(matches!(tagging_hrefs(&bad_link), Err(Error::BadShape { .. })));
    }

    #[test]
    fn a_person_without_a_taggings_link_has_the_documented_one() {
        let base = Url::parse("http://127.0.0.1:1/api/v2/").unwrap();
        let person = serde_json::json!({"identifiers": ["other:1", "action_network:d3f1-99ab"]});
        assert_eq!(documented_taggings(&base, &person).unwrap().as_str(), "http://127.0.0.1:1/api/v2/people/d3f1-99ab/taggings");
        for unusable in [serde_json::json!({}), serde_json::json!({"identifiers": ["action_network:../x"]}), serde_json::json!({"identifiers": "action_network:1"})] {
            assert!(matches!(documented_taggings(&base, &unusable), Err(Error::BadShape { .. })), "{unusable}");
        }
    }
}
