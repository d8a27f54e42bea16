//! The HTTP side of the Action Network client: one connection pool per process, whose threads
//! take no signals, pacing, retries on "slow down" answers, body caps, and the origin rule that
//! keeps the API key home.

use std::{
    io::Read,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use reqwest::{blocking::Client, header, redirect, StatusCode, Url};
use serde_json::Value;

use super::{
    store::{unix_now, GroupStore, Slot},
    Error,
};
use crate::backoff::Backoff;

/// Largest response body read; a page of 25 resources is a few tens of KiB.
pub const BODY_CAP: u64 = 4 << 20;

/// Waits after a 429/503 without `Retry-After`: jittered, doubling from the first to the last.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(500);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(8);

/// Same-origin redirects followed at most in one request.
const MAX_REDIRECTS: usize = 4;
/// How late past its slot (seconds) a woken process may still send on it; a tenth of the
/// interval when that is less. Later, it asks for a new slot.
const LATE_WAKE_TOLERANCE: f64 = 0.02;

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Requests sent by this process, all its threads together.
pub fn requests_sent() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

/// The client of this process. PHP-FPM forks workers after loading extensions, and a client
/// made before a fork hangs in the child (its runtime thread is not copied), so each process
/// makes its own on first use and leaks an inherited one rather than dropping it. Its threads
/// share it (a ZTS PHP's request threads too): the mutex is held to clone or make it, never
/// while a request is sent.
static CLIENT: Mutex<Option<(u32, Client)>> = Mutex::new(None);

/// When this process sent (or scheduled) its last request, for pacing. Each call spaces its
/// requests by its own `max_rps` from this point, so one call's setting never binds the next.
/// Process-wide, as the API's limit is: threads take their slots in turn under the mutex and
/// sleep until them outside it.
static LAST_REQUEST: Mutex<Option<Instant>> = Mutex::new(None);

fn client() -> Result<Client, Error> {
    let pid = std::process::id();
    let mut slot = CLIENT.lock();
    if let Some((owner, client)) = slot.as_ref() {
        if *owner == pid {
            return Ok(client.clone());
        }
    }
    if let Some(inherited) = slot.take() {
        std::mem::forget(inherited);
    }
    let client = with_signals_blocked(|| {
        Client::builder()
            .user_agent(concat!("joinblock/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect::Policy::custom(|attempt| {
                let same_origin = attempt.previous().first().map(Url::origin) == Some(attempt.url().origin());
                // `previous()` holds the request's own URL, then one per redirect followed.
                if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
    })
    .map_err(|e| Error::Transport { what: "creating the HTTP client".into(), cause: describe(&e) })?;
    *slot = Some((pid, client.clone()));
    Ok(client)
}

/// Runs `make` with every signal blocked on this thread, then restores its mask. The client's
/// runtime thread, started by `build()`, inherits the mask, and so do the threads it starts in
/// turn: a process-directed signal (SIGPROF of `max_execution_time`, SIGALRM, SIGTERM or SIGCHLD
/// with a pcntl handler) then always lands on PHP's thread, never runs PHP's handler on one of
/// ours. glibc keeps its own two signals (32 and 33) unblocked whatever it is asked: `setuid()`
/// waits for every thread to take 33, and no PHP handler can be installed for either.
fn with_signals_blocked<T>(make: impl FnOnce() -> T) -> T {
    /// Restores the mask, also if `make` panics.
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: `self.0` is the mask pthread_sigmask returned for this thread.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: plain sigset_t values, filled by sigfillset and pthread_sigmask before use.
    let _restore = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        Restore(old)
    };
    make()
}

/// One call's budget and manners.
pub struct Session<'a> {
    pub origin: reqwest::Url,
    pub api_key: &'a str,
    pub timeout: Duration,
    pub deadline: Instant,
    pub min_interval: Duration,
    /// The shared pacing for this group (see `shared.rs`, `site_state.rs`); `None`: this process alone.
    pub shared: Option<&'a dyn GroupStore>,
}

impl Session<'_> {
    /// Checks that `url` may receive the API key: same scheme, host and port as `base_url`.
    pub fn same_origin(&self, url: &Url, what: &str) -> Result<(), Error> {
        if url.origin() == self.origin.origin() {
            Ok(())
        } else {
            Err(Error::ForeignLink { what: what.into(), origin: url.origin().ascii_serialization() })
        }
    }

    /// GETs `url` and parses its JSON body, retrying 429/503 within the deadline.
    pub fn get_json(&self, url: &Url, what: &str) -> Result<Value, Error> {
        self.same_origin(url, what)?;
        let client = client()?;
        let mut backoff = Backoff::new(FIRST_RETRY_WAIT, MAX_RETRY_WAIT);
        loop {
            self.pace(what)?;
            let remaining = self.remaining(what)?;
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            let response = client
                .get(url.clone())
                .header("OSDI-API-Token", self.api_key)
                .header(header::ACCEPT, "application/json")
                .timeout(self.timeout.min(remaining))
                .send()
                .map_err(|e| self.transport_error(what, &e))?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                let wait = retry_after(&response).unwrap_or_else(|| backoff.next(None));
                if Instant::now() + wait >= self.deadline {
                    return Err(Error::Deadline {
                        what: format!("{what} (Action Network answered {status} and asked to wait {:.1} s)", wait.as_secs_f64()),
                    });
                }
                // Read to its end and dropped, the answer leaves its connection to the pool for the
                // retry; held over the wait, it would be closed and the retry would open another.
                // Whether the read succeeds does not matter: the request is sent again.
                let _ = read_capped(response, what, self);
                // Every process of the host waits, not only this one: the next `pace` of any of
                // them falls after the wait.
                let told_all = self.shared.is_some_and(|store| store.push_back(unix_now() + wait.as_secs_f64()).is_ok());
                if !told_all {
                    thread::sleep(wait);
                }
                continue;
            }
            if status.is_redirection() {
                return Err(self.unfollowed_redirect(response, what));
            }
            let body = read_capped(response, what, self)?;
            if !status.is_success() {
                return Err(Error::Status { what: what.into(), status: status.as_u16(), message: error_text(&body) });
            }
            return serde_json::from_slice(&body).map_err(|e| Error::BadJson { what: what.into(), detail: e.to_string() });
        }
    }

    /// Says why a 3xx answer ends the call. The client follows same-origin 301, 302, 303, 307
    /// and 308 itself, so one that gets here points elsewhere, is one hop too many, or is not
    /// a redirect the client follows (300, 304, or no usable `Location`).
    fn unfollowed_redirect(&self, response: reqwest::blocking::Response, what: &str) -> Error {
        let status = response.status();
        let followed = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let location = response.headers().get(header::LOCATION).and_then(|l| l.to_str().ok());
        // Relative to the URL that answered, which a redirect already followed may have changed.
        match location.and_then(|l| response.url().join(l).ok()) {
            Some(target) if followed && target.origin() != self.origin.origin() => {
                Error::ForeignLink { what: format!("redirect of the {what}"), origin: target.origin().ascii_serialization() }
            }
            Some(_) if followed => Error::TooManyRedirects { what: what.into(), max: MAX_REDIRECTS },
            _ => {
                let message = read_capped(response, what, self).ok().and_then(|body| error_text(&body));
                Error::Status { what: what.into(), status: status.as_u16(), message }
            }
        }
    }

    fn remaining(&self, what: &str) -> Result<Duration, Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.deadline_passed(what.into()))
        } else {
            Ok(left)
        }
    }

    /// Waits for the host's next request slot (the shared store's), or this process's when
    /// there is no usable store; never past the deadline.
    fn pace(&self, what: &str) -> Result<(), Error> {
        if let Some(store) = self.shared {
            let mut retaken = false;
            loop {
                let now = unix_now();
                let latest = now + self.deadline.saturating_duration_since(Instant::now()).as_secs_f64();
                let (until, taken) = match store.reserve(self.min_interval.as_secs_f64(), latest) {
                    Ok(Slot::Taken(slot)) => (slot, true),
                    Ok(Slot::Later(at)) => (at, false),
                    Ok(Slot::Late) => return Err(self.deadline_passed(format!("{what} (waiting for a request slot under max_rps)"))),
                    Err(()) => break,
                };
                thread::sleep(Duration::try_from_secs_f64(until - unix_now()).unwrap_or(Duration::ZERO));
                // Woken late (a busy machine), the slot is spent: sending now would come closer
                // than one interval to the next host's slot. A new one is asked for, once per
                // request: on a machine too busy to wake in time twice, asking on would only
                // use up the deadline.
                let late_by = unix_now() - until;
                if taken && (retaken || late_by <= (self.min_interval.as_secs_f64() / 10.0).min(LATE_WAKE_TOLERANCE)) {
                    return Ok(());
                }
                retaken |= taken;
            }
        }
        let slot = {
            let mut last = LAST_REQUEST.lock();
            let now = Instant::now();
            let slot = last.map_or(now, |at| (at + self.min_interval).max(now));
            if slot >= self.deadline {
                return Err(self.deadline_passed(format!("{what} (waiting for a request slot under max_rps)")));
            }
            *last = Some(slot);
            slot
        };
        thread::sleep(slot.saturating_duration_since(Instant::now()));
        Ok(())
    }

    /// The deadline's error, naming the site-wide store's failure when this call fell back
    /// to the host's files (its pace then differs from the site's).
    fn deadline_passed(&self, what: String) -> Error {
        match self.shared.and_then(|store| store.site_failure()) {
            Some(failure) => Error::Deadline { what: format!("{what}; {failure}") },
            None => Error::Deadline { what },
        }
    }

    fn transport_error(&self, what: &str, err: &reqwest::Error) -> Error {
        if err.is_timeout() {
            let limit = if Instant::now() + Duration::from_millis(5) >= self.deadline { "the call's deadline" } else { "the request timeout" };
            Error::Timeout { what: what.into(), limit: limit.into() }
        } else {
            Error::Transport { what: what.into(), cause: describe(err) }
        }
    }
}

/// Reads at most `BODY_CAP` bytes of a body, refusing larger ones.
fn read_capped(response: reqwest::blocking::Response, what: &str, session: &Session) -> Result<Vec<u8>, Error> {
    if response.content_length().is_some_and(|len| len > BODY_CAP) {
        return Err(Error::TooLarge { what: what.into(), cap: BODY_CAP });
    }
    let mut body = Vec::new();
    response
        .take(BODY_CAP + 1)
        .read_to_end(&mut body)
        .map_err(|e| match e.get_ref().and_then(|inner| inner.downcast_ref::<reqwest::Error>()) {
            Some(inner) => session.transport_error(what, inner),
            None if e.kind() == std::io::ErrorKind::TimedOut => {
                Error::Timeout { what: what.into(), limit: "the request timeout".into() }
            }
            None => Error::Transport { what: what.into(), cause: e.to_string() },
        })?;
    if body.len() as u64 > BODY_CAP {
        return Err(Error::TooLarge { what: what.into(), cap: BODY_CAP });
    }
    Ok(body)
}

/// Action Network's `{"error": "..."}` text, when the body has one.
fn error_text(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("error")?.as_str().map(|s| s.chars().take(300).collect())
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
fn retry_after(response: &reqwest::blocking::Response) -> Option<Duration> {
    let seconds: f64 = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// reqwest's own message hides the cause ("error sending request for url (...)") and carries
/// the URL, whose query holds the member's email; the kind and the source chain say what
/// happened without it.
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "reading the answer failed"
    } else if err.is_builder() {
        "invalid request"
    } else {
        "request failed"
    };
    let mut parts = vec![kind.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}
