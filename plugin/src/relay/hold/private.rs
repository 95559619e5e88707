//! Private forwards that no listed recipient's known interest matches yet. A recipient's interest is
//! read from its Twister profile every plugin_opt_interest_refresh_ms; a subscription made there just
//! after the last read would lose every message until the next one. So such a message is held for a
//! bounded grace period while the recipients' interest is read again at once (and every REREAD_EVERY
//! while messages are held); it is routed as soon as an interest matches, or dropped and counted when
//! the grace period ends. This is the container and its clock; what to route is decided in
//! `crate::relay::interest::private`.

use crate::bus::Outgoing;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a private message waits for a recipient's interest.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often the recipients' interest is read again while messages wait.
pub const REREAD_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct PrivateHold {
    items: VecDeque<(Instant, Outgoing)>,
    next_reread: Option<Instant>,
}

impl PrivateHold {
    /// Holds `msg`; true when the recipients' interest should be read again now.
    pub fn push(&mut self, now: Instant, msg: Outgoing) -> bool {
        self.items.push_back((now, msg));
        self.reread_due(now)
    }

    /// Puts back a message taken out, keeping the time it has waited.
    pub fn keep(&mut self, since: Instant, msg: Outgoing) {
        self.items.push_back((since, msg));
    }

    /// True (once per REREAD_EVERY) while messages wait.
    pub fn reread_due(&mut self, now: Instant) -> bool {
        if self.items.is_empty() || self.next_reread.is_some_and(|t| now < t) {
            return false;
        }
        self.next_reread = Some(now + REREAD_EVERY);
        true
    }

    /// Every held message, oldest first, with the time it was held.
    pub fn take_all(&mut self) -> Vec<(Instant, Outgoing)> {
        self.items.drain(..).collect()
    }

    /// The messages that waited GRACE or longer, taken out.
    pub fn expired(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while self
            .items
            .front()
            .is_some_and(|(since, _)| now.saturating_duration_since(*since) >= GRACE)
        {
            if let Some((_, m)) = self.items.pop_front() {
                out.push(m);
            }
        }
        out
    }

    /// When `expired` or `reread_due` will next have something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (since, _) = self.items.front()?;
        let expiry = *since + GRACE;
        Some(self.next_reread.map_or(expiry, |r| r.min(expiry)))
    }

    pub fn messages(&self) -> impl Iterator<Item = &Outgoing> {
        self.items.iter().map(|(_, m)| m)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::route::RuleSet;
    use crate::wire::Message;

    /// A message on its way to the first private rule's recipients (also for the interest's tests).
    pub(crate) fn msg(topic: &str) -> Outgoing {
        let mut private_rules = RuleSet::default();
        private_rules.insert(0);
        Outgoing {
            message: Message {
                topic: topic.into(),
                payload: b"x".to_vec(),
                qos: 1,
                retain: false,
            },
            id: None,
            route: crate::route::Route {
                public: false,
                private_rules,
            },
        }
    }

    #[test]
    fn held_messages_ask_for_a_reread_at_once_then_at_most_every_interval() {
        let mut h = PrivateHold::default();
        let t0 = Instant::now();
        assert!(!h.reread_due(t0), "nothing held: nothing to read");
        assert!(h.push(t0, msg("doors/1")), "read again at once");
        assert!(!h.push(t0, msg("doors/2")));
        assert!(!h.reread_due(t0 + REREAD_EVERY / 2));
        assert!(h.reread_due(t0 + REREAD_EVERY));
        assert_eq!(h.next_deadline(), Some(t0 + 2 * REREAD_EVERY));
    }

    #[test]
    fn a_held_message_waits_the_grace_period_then_expires_in_order() {
        let mut h = PrivateHold::default();
        let t0 = Instant::now();
        h.push(t0, msg("doors/1"));
        h.push(t0 + Duration::from_secs(3), msg("doors/2"));
        assert!(h.expired(t0 + GRACE - Duration::from_millis(1)).is_empty());
        let gone = h.expired(t0 + GRACE);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].message.topic, "doors/1");
        assert_eq!(h.len(), 1);
        // Taken out to be routed, one put back keeps its age.
        let all = h.take_all();
        assert!(h.is_empty());
        let (since, m) = all.into_iter().next().unwrap();
        h.keep(since, m);
        assert_eq!(
            h.expired(t0 + Duration::from_secs(3) + GRACE)[0]
                .message
                .topic,
            "doors/2"
        );
    }
}
