//! Every deadline of the relay and its driver in one place. A deadline is an instant handed in by the caller (the
//! relay reads no clock); `next(now)` never answers an instant before `now`, so a driver that sleeps
//! until it can never spin on a deadline left in the past.

use std::time::Instant;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Posting failed: not before this instant (backoff).
    PostRetry,
    /// The next try of the start-up (wallet, follows, registration).
    Startup,
    /// The next `getlasthave` of followed users.
    Poll,
    /// Following users who were not registered yet, again.
    Refollow,
}

const TIMERS: usize = 4;

#[derive(Debug, Default, Clone)]
pub struct Timers {
    at: [Option<Instant>; TIMERS],
}

impl Timers {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer as usize] = Some(at);
    }

    pub fn clear(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    pub fn due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| now >= t)
    }

    /// The earliest deadline, never before `now`.
    pub fn next(&self, now: Instant) -> Option<Instant> {
        self.at.iter().flatten().min().map(|t| (*t).max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_deadline_in_the_past_comes_back_as_now() {
        let now = Instant::now();
        let mut t = Timers::default();
        assert_eq!(t.next(now), None);
        t.set(Timer::PostRetry, now + Duration::from_secs(1));
        assert_eq!(t.next(now), Some(now + Duration::from_secs(1)));
        let later = now + Duration::from_secs(5);
        assert!(t.due(Timer::PostRetry, later));
        assert_eq!(t.next(later), Some(later));
        t.clear(Timer::PostRetry);
        assert!(!t.due(Timer::PostRetry, later));
    }
}
