//! Messages from the network that arrive after a restart, before the clients whose subscriptions they
//! match have subscribed again. The relay reads followed users' backlog as soon as it is ready; a
//! message that only a previous run's subscription wanted waits here (bounded) instead of being dropped
//! and moved past, and is injected once a matching subscription is back. The wait ends
//! `RESUBSCRIBE_GRACE` after the start (`Returning`: the deadline and what it holds; no clock, `now`
//! comes with each call).

use crate::wire::Message;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// After a restart, how long messages only a previous run's subscriptions wanted wait for their clients
/// to subscribe again.
pub const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(60);

/// Messages held at most, and their payload and topic bytes at most.
pub const HELD_MESSAGES: usize = 10_000;
pub const HELD_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct Held {
    /// With whether it was injected already (a copy kept in case the session it went to was lost).
    messages: VecDeque<(Message, bool)>,
    bytes: usize,
    /// Messages dropped because the bound was reached.
    pub overflowed: u64,
}

fn size(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

impl Held {
    /// Keeps `m`; beyond the bounds the oldest are dropped (counted in `overflowed` unless injected).
    pub fn hold(&mut self, m: Message, injected: bool) {
        self.bytes += size(&m);
        self.messages.push_back((m, injected));
        while self.messages.len() > HELD_MESSAGES || self.bytes > HELD_BYTES {
            let Some((old, injected)) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= size(&old);
            self.overflowed += u64::from(!injected);
        }
    }

    /// Takes out, in arrival order, the messages `wanted` now accepts.
    pub fn take_wanted(&mut self, wanted: impl Fn(&str) -> bool) -> Vec<Message> {
        if self.messages.is_empty() {
            return Vec::new();
        }
        let (take, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.messages)
            .into_iter()
            .partition(|(m, _)| wanted(&m.topic));
        self.messages = keep;
        self.bytes = self.messages.iter().map(|(m, _)| size(m)).sum();
        take.into_iter().map(|(m, _)| m).collect()
    }

    /// Drops everything; how many of them were never injected.
    pub fn clear(&mut self) -> usize {
        self.bytes = 0;
        std::mem::take(&mut self.messages)
            .into_iter()
            .filter(|(_, injected)| !injected)
            .count()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// The wait for a previous run's subscriptions to come back: held messages and the end of the wait.
#[derive(Default)]
pub struct Returning {
    held: Held,
    until: Option<Instant>,
}

impl Returning {
    /// The relay started at `now` with subscriptions of the last run that may come back.
    pub fn start(&mut self, now: Instant) {
        self.until = Some(now + RESUBSCRIBE_GRACE);
    }

    /// Still waiting for the last run's subscriptions.
    pub fn waiting(&self) -> bool {
        self.until.is_some()
    }

    /// A message from the network that a returning subscription may want (`may_come_back`, the
    /// interest's answer) is kept while waiting, a copy also when it is injected now (`injected`: for
    /// a session the broker may have lost).
    pub fn delivered(&mut self, m: &Message, may_come_back: bool, injected: bool) {
        if self.waiting() && may_come_back {
            self.held.hold(m.clone(), injected);
        }
    }

    /// Subscriptions of the last run came back (`filters`): the held messages they match, in order.
    pub fn returned(&mut self, filters: &[String]) -> Vec<Message> {
        if filters.is_empty() {
            return Vec::new();
        }
        self.held
            .take_wanted(|t| filters.iter().any(|f| crate::topic::matches(f, t)))
    }

    /// When the wait ends.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.until
    }

    /// At the end of the wait: everything held is given up; `Some(messages dropped)` (held and never
    /// injected, or pushed out by the bound) once, when it ends.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<u64> {
        if self.until.is_none_or(|t| now < t) {
            return None;
        }
        self.until = None;
        Some(self.held.clear() as u64 + self.held.overflowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_only_while_waiting_and_given_back_when_a_subscription_returns() {
        let t0 = Instant::now();
        let mut r = Returning::default();
        r.delivered(&msg("a/1", 1), true, false);
        assert!(r.held.is_empty(), "not waiting: nothing held");
        r.start(t0);
        r.delivered(&msg("a/1", 1), true, false);
        r.delivered(&msg("b/1", 1), false, false);
        assert_eq!(
            r.held.len(),
            1,
            "only what a returning subscription may want"
        );
        assert!(r.returned(&[]).is_empty());
        let back = r.returned(&["a/#".to_string()]);
        assert_eq!(back, vec![msg("a/1", 1)]);
        assert!(r.held.is_empty());
    }

    #[test]
    fn the_wait_ends_once_at_its_deadline_and_counts_what_was_never_injected() {
        let t0 = Instant::now();
        let mut r = Returning::default();
        r.start(t0);
        assert_eq!(r.poll_timeout(), Some(t0 + RESUBSCRIBE_GRACE));
        r.delivered(&msg("a/1", 1), true, false);
        r.delivered(&msg("a/2", 1), true, true);
        assert_eq!(
            r.handle_timeout(t0 + RESUBSCRIBE_GRACE - Duration::from_millis(1)),
            None
        );
        assert_eq!(r.handle_timeout(t0 + RESUBSCRIBE_GRACE), Some(1));
        assert!(!r.waiting() && r.held.is_empty());
        assert_eq!(r.poll_timeout(), None, "no deadline left behind");
        assert_eq!(r.handle_timeout(t0 + RESUBSCRIBE_GRACE * 2), None);
    }

    fn msg(topic: &str, n: usize) -> Message {
        Message {
            topic: topic.into(),
            payload: vec![0; n],
            qos: 1,
            retain: false,
        }
    }

    #[test]
    fn releases_what_becomes_wanted_in_order_and_keeps_the_rest() {
        let mut h = Held::default();
        h.hold(msg("a/1", 1), false);
        h.hold(msg("b/1", 1), false);
        h.hold(msg("a/2", 1), true);
        h.hold(msg("c/1", 1), true);
        let got: Vec<String> = h
            .take_wanted(|t| t.starts_with("a/"))
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(got, vec!["a/1", "a/2"]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.bytes, 8);
        assert_eq!(
            h.clear(),
            1,
            "the copy of an injected one is not counted as dropped"
        );
        assert!(h.is_empty());
    }

    #[test]
    fn bounded_in_count_and_bytes() {
        let mut h = Held::default();
        for _ in 0..HELD_MESSAGES + 5 {
            h.hold(msg("t", 0), false);
        }
        assert_eq!((h.len(), h.overflowed), (HELD_MESSAGES, 5));
        let mut h = Held::default();
        for _ in 0..5 {
            h.hold(msg("t", HELD_BYTES / 4), false);
        }
        assert!(h.bytes <= HELD_BYTES);
        assert_eq!(h.overflowed, 2);
    }
}
