//! Jittered exponential backoff, shared by the lock's polling and the HTTP client's retries.

use std::time::Duration;

pub struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) | 1;
        Backoff { next: first, max, seed }
    }

    /// The next wait: a random point in [next/2, next], never past `remaining`; then `next`
    /// doubles up to the maximum.
    pub fn next(&mut self, remaining: Option<Duration>) -> Duration {
        // xorshift64: the jitter only has to differ between processes, not be unpredictable.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = self.next / 2;
        let wait = half + Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1));
        self.next = (self.next * 2).min(self.max);
        remaining.map_or(wait, |r| wait.min(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_stay_jittered_and_capped() {
        let mut backoff = Backoff::new(Duration::from_millis(8), Duration::from_millis(50));
        let waits: Vec<_> = (0..8).map(|_| backoff.next(None)).collect();
        assert!(waits[0] >= Duration::from_millis(4) && waits[0] <= Duration::from_millis(8));
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(50)));
        assert!(waits[7] >= Duration::from_millis(25));
        assert_eq!(backoff.next(Some(Duration::from_micros(10))), Duration::from_micros(10));
    }
}
