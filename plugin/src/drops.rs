//! Messages the worker does not forward, counted by reason and said in the broker's log, rate-limited:
//! the first of each reason at once, then at most one line per reason every LOG_EVERY with the count.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A private forward that no listed recipient's published interest matched in time.
    NoRecipientInterested,
    /// plugin_opt_max_queue messages were already waiting for a post.
    QueueFull,
    /// Larger than plugin_opt_max_message_bytes, or than one post in the poc format.
    TooBig,
    /// A message from the network found the queue to the broker's thread full.
    BrokerQueueFull,
    /// An unfinished message from the network: no new fragment for too long, or beyond the limits on
    /// what senders may leave unfinished (`reassembly`).
    Unfinished,
    /// Not a drop here: posted in the poc format with more than 140 characters, which twisterd
    /// splits into `msg` + `msg2`; the 2014 bridge reads only `msg` and loses it.
    SplitForThe2014Bridge,
    /// A QoS 0 value replaced by a newer one of its topic while posts were scarce
    /// (`plugin_opt_over_budget <filter> conflate`).
    Conflated,
}

pub const REASONS: [Reason; 7] = [
    Reason::NoRecipientInterested,
    Reason::QueueFull,
    Reason::TooBig,
    Reason::BrokerQueueFull,
    Reason::Unfinished,
    Reason::SplitForThe2014Bridge,
    Reason::Conflated,
];

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoRecipientInterested => "no recipient interested",
            Reason::QueueFull => "queue full",
            Reason::TooBig => "too big",
            Reason::BrokerQueueFull => "broker queue full",
            Reason::Unfinished => "unfinished",
            Reason::SplitForThe2014Bridge => "lost at 2014 bridges",
            Reason::Conflated => "conflated",
        }
    }

    fn index(self) -> usize {
        REASONS.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// One line per reason at most this often (the first one at once).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Drops {
    counts: [u64; REASONS.len()],
    next_log: [Option<Instant>; REASONS.len()],
    /// Counted since the last line said for that reason.
    unsaid: [u64; REASONS.len()],
}

impl Drops {
    /// Counts one; returns the line to log when one is due.
    pub fn count(&mut self, reason: Reason, detail: &str, now: Instant) -> Option<String> {
        let i = reason.index();
        self.counts[i] += 1;
        self.unsaid[i] += 1;
        if self.next_log[i].is_some_and(|t| now < t) {
            return None;
        }
        self.next_log[i] = Some(now + LOG_EVERY);
        let also = match self.unsaid[i] {
            1 => String::new(),
            n => format!("; {} more since the last line", n - 1),
        };
        self.unsaid[i] = 0;
        let verb = match reason {
            Reason::SplitForThe2014Bridge => "posted",
            _ => "dropped",
        };
        Some(format!(
            "{verb} {detail} [{}: {} so far{also}]",
            reason.label(),
            self.counts[i]
        ))
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason.index()]
    }

    /// Messages not forwarded, in all (the bridge warning is not a drop).
    pub fn dropped(&self) -> u64 {
        REASONS
            .iter()
            .filter(|r| **r != Reason::SplitForThe2014Bridge)
            .map(|r| self.get(*r))
            .sum()
    }

    /// "3 (queue full), 1 (too big)": every reason counted, for the summary at stop.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = REASONS
            .iter()
            .filter(|r| **r != Reason::SplitForThe2014Bridge)
            .map(|r| format!("{} ({})", self.get(*r), r.label()))
            .collect();
        parts.join(" + ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_is_counted_and_lines_are_rate_limited_per_reason() {
        let mut d = Drops::default();
        let t0 = Instant::now();
        let first = d.count(Reason::QueueFull, "a message on x/1", t0).unwrap();
        assert_eq!(first, "dropped a message on x/1 [queue full: 1 so far]");
        for _ in 0..5 {
            assert_eq!(d.count(Reason::QueueFull, "m", t0), None);
        }
        // Another reason has its own line.
        assert!(d.count(Reason::TooBig, "big", t0).is_some());
        let later = d.count(Reason::QueueFull, "m", t0 + LOG_EVERY).unwrap();
        assert_eq!(
            later,
            "dropped m [queue full: 7 so far; 5 more since the last line]"
        );
        assert_eq!((d.get(Reason::QueueFull), d.dropped()), (7, 8));
        assert!(d
            .count(Reason::SplitForThe2014Bridge, "x", t0)
            .unwrap()
            .starts_with("posted x [lost at 2014 bridges: 1"));
        assert_eq!(d.dropped(), 8, "a warning is not a drop");
        assert_eq!(
            d.summary(),
            "0 (no recipient interested) + 7 (queue full) + 1 (too big) + 0 (broker queue full) + 0 (unfinished) + 0 (conflated)"
        );
    }
}
