//! When our interest goes to our Twister profile: a burst of subscription changes makes one write
//! (`plugin_opt_profile_debounce_ms` after the first change), a failed write is tried again after a
//! backoff that doubles from `FIRST_BACKOFF` up to `MAX_BACKOFF`, and nothing is written before the
//! relay started (then at once). No clock: `now` comes with each call.

use std::time::{Duration, Instant};

pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct ProfileWriter {
    debounce: Duration,
    /// The next write is due then.
    due: Option<Instant>,
    backoff: Duration,
    started: bool,
}

impl ProfileWriter {
    pub fn new(debounce: Duration) -> Self {
        ProfileWriter {
            debounce,
            due: None,
            backoff: FIRST_BACKOFF,
            started: false,
        }
    }

    /// The interest changed: a write is due `debounce` after the first change not written yet.
    pub fn changed(&mut self, now: Instant) {
        if self.due.is_none() {
            self.due = Some(now + self.debounce);
        }
    }

    /// The relay started: our interest is written at once.
    pub fn start(&mut self, now: Instant) {
        self.started = true;
        self.due = Some(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.filter(|_| self.started)
    }

    /// True when a write is due now (once per deadline).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if !self.started || self.due.is_none_or(|t| now < t) {
            return false;
        }
        self.due = None;
        true
    }

    /// A write finished; a failure asks for the next one after the backoff, and says why.
    pub fn written(&mut self, result: Result<(), String>, now: Instant) -> Option<String> {
        match result {
            Ok(()) => {
                self.backoff = FIRST_BACKOFF;
                None
            }
            Err(e) => {
                self.due = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Some(format!(
                    "writing our interest to the Twister profile failed: {e}; retrying"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(1000);

    #[test]
    fn nothing_is_written_before_the_start_then_at_once() {
        let t0 = Instant::now();
        let mut p = ProfileWriter::new(DEBOUNCE);
        p.changed(t0);
        assert_eq!(p.poll_timeout(), None);
        assert!(!p.handle_timeout(t0 + DEBOUNCE * 5));
        p.start(t0 + DEBOUNCE * 5);
        assert_eq!(p.poll_timeout(), Some(t0 + DEBOUNCE * 5));
        assert!(p.handle_timeout(t0 + DEBOUNCE * 5));
        assert_eq!(p.poll_timeout(), None, "written: no deadline left");
    }

    #[test]
    fn a_burst_of_changes_makes_one_write_a_debounce_after_the_first() {
        let t0 = Instant::now();
        let mut p = ProfileWriter::new(DEBOUNCE);
        p.start(t0);
        assert!(p.handle_timeout(t0));
        let t1 = t0 + Duration::from_secs(10);
        for i in 0..100 {
            p.changed(t1 + Duration::from_millis(i));
        }
        assert_eq!(p.poll_timeout(), Some(t1 + DEBOUNCE));
        assert!(!p.handle_timeout(t1 + DEBOUNCE - Duration::from_millis(1)));
        assert!(p.handle_timeout(t1 + DEBOUNCE));
        assert!(!p.handle_timeout(t1 + DEBOUNCE * 2), "one write");
    }

    #[test]
    fn a_failed_write_is_retried_with_a_doubling_capped_backoff_reset_by_success() {
        let t0 = Instant::now();
        let mut p = ProfileWriter::new(DEBOUNCE);
        p.start(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            assert!(p.handle_timeout(now));
            let line = p.written(Err("dhtput: down".into()), now).unwrap();
            assert!(line.contains("dhtput: down; retrying"), "{line}");
            let next = p.poll_timeout().unwrap();
            waits.push(next - now);
            now = next;
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert!(p.handle_timeout(now));
        assert_eq!(p.written(Ok(()), now), None);
        assert_eq!(p.poll_timeout(), None);
        p.changed(now);
        assert!(p.handle_timeout(now + DEBOUNCE));
        p.written(Err("x".into()), now + DEBOUNCE);
        assert_eq!(p.poll_timeout(), Some(now + DEBOUNCE + FIRST_BACKOFF));
    }
}
