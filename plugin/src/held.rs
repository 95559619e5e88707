//! Messages from the network that arrive after a restart, before the clients whose subscriptions they
//! match have subscribed again. The worker reads followed users' backlog as soon as it is ready; a
//! message that only a previous run's subscription wanted waits here (bounded) instead of being dropped
//! and moved past, and is injected once a matching subscription is back.

use crate::wire::Message;
use std::collections::VecDeque;

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

#[cfg(test)]
mod tests {
    use super::*;

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
