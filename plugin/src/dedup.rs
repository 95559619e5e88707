//! Receiver dedup: which message ids (`wire::MessageId`) of each followed sender were handed on
//! already, so that a second copy (the sender's spool replayed after its crash, a retransmission, a
//! post read again after our own crash) is never injected twice. Pure: no I/O, no clock; kept in the
//! state file (`crate::state`) and written before the messages are handed to the broker.
//!
//! Per sender, per epoch a `RangeSet` of seqs. Bounded: at most `Limits::ranges` ranges per epoch
//! (the lowest gaps are joined, see `crate::ranges`) and `Limits::epochs` epochs per sender (the
//! oldest forgotten: an id of a forgotten epoch counts as seen, never injected again; the last
//! `FORGOTTEN_EPOCHS` forgotten epochs are remembered by number, so an epoch never seen, older or
//! not, is new). What the bounds make it forget is counted (`Forgotten`). Messages without an id
//! (posts of writers older than ids, the poc format) are not deduplicated.

use crate::ranges::RangeSet;
use crate::wire::MessageId;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Forgotten epochs remembered per sender (8 bytes each).
pub const FORGOTTEN_EPOCHS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Ranges kept per (sender, epoch).
    pub ranges: usize,
    /// Epochs kept per sender.
    pub epochs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A sender restarted without a spool starts an epoch per run; 8 outlive any retransmission.
        // 512 ranges: gaps are seqs sent to others only; the oldest go first.
        Limits {
            ranges: 512,
            epochs: 8,
        }
    }
}

/// What the bounds made the set forget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Epochs dropped from a sender's table.
    pub epochs: u64,
    /// Seqs never seen that count as seen because their gap was joined.
    pub absorbed: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Sender {
    epochs: BTreeMap<u64, RangeSet>,
    /// When each kept epoch was last seen (this sender's count of checks): the bound forgets the
    /// least recently seen epoch, not the lowest (a sender's clock may go back).
    touched: BTreeMap<u64, u64>,
    clock: u64,
    /// Epochs dropped by the bound, the newest `FORGOTTEN_EPOCHS`: their ids count as seen. By number,
    /// not as "everything below": a sender whose clock went back must not lose every new message.
    forgotten: BTreeSet<u64>,
}

impl Sender {
    fn touch(&mut self, epoch: u64) {
        self.clock += 1;
        self.touched.insert(epoch, self.clock);
    }

    /// Forgets the epoch seen least recently.
    fn forget_oldest(&mut self) -> bool {
        let Some(oldest) = self
            .epochs
            .keys()
            .min_by_key(|e| self.touched.get(e).copied().unwrap_or(0))
            .copied()
        else {
            return false;
        };
        self.epochs.remove(&oldest);
        self.touched.remove(&oldest);
        self.forgotten.insert(oldest);
        while self.forgotten.len() > FORGOTTEN_EPOCHS {
            self.forgotten.pop_first();
        }
        true
    }
}

/// What `check` says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    /// Not seen before (now recorded).
    First,
    /// Seen before: drop it.
    Again,
    /// Of an epoch forgotten by the bound: dropped as possibly seen.
    Forgotten,
    /// No id: cannot tell.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dedup {
    limits: Limits,
    senders: BTreeMap<String, Sender>,
    /// Of epochs and of gaps forgotten before this run's absorbed counts were taken.
    forgotten: Forgotten,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::new(Limits::default())
    }
}

impl Dedup {
    pub fn new(limits: Limits) -> Self {
        Dedup {
            limits: Limits {
                ranges: limits.ranges.max(1),
                epochs: limits.epochs.max(1),
            },
            senders: BTreeMap::new(),
            forgotten: Forgotten::default(),
        }
    }

    /// Whether the message `id` of `from` is new; records it when it is.
    pub fn check(&mut self, from: &str, id: Option<MessageId>) -> Sight {
        let Some(id) = id else {
            return Sight::Unknown;
        };
        let limits = self.limits;
        let sender = self.senders.entry(from.to_string()).or_default();
        if sender.forgotten.contains(&id.epoch) {
            return Sight::Forgotten;
        }
        let set = sender
            .epochs
            .entry(id.epoch)
            .or_insert_with(|| RangeSet::new(limits.ranges));
        let before = set.absorbed();
        let first = set.insert(id.seq);
        self.forgotten.absorbed += set.absorbed() - before;
        sender.touch(id.epoch);
        while sender.epochs.len() > limits.epochs && sender.forget_oldest() {
            self.forgotten.epochs += 1;
        }
        if first {
            Sight::First
        } else {
            Sight::Again
        }
    }

    /// True if `id` of `from` was recorded (or counts as seen), without recording it.
    pub fn seen(&self, from: &str, id: MessageId) -> bool {
        self.senders.get(from).is_some_and(|s| {
            s.forgotten.contains(&id.epoch)
                || s.epochs.get(&id.epoch).is_some_and(|r| r.contains(id.seq))
        })
    }

    /// The seqs seen of `from`'s `epoch` (for receipts).
    pub fn ranges(&self, from: &str, epoch: u64) -> Option<&RangeSet> {
        self.senders.get(from)?.epochs.get(&epoch)
    }

    pub fn forgotten(&self) -> Forgotten {
        self.forgotten
    }

    /// Ranges held in all: what memory and the state file hold is proportional to it.
    pub fn ranges_held(&self) -> usize {
        self.senders
            .values()
            .flat_map(|s| s.epochs.values())
            .map(RangeSet::len)
            .sum()
    }

    /// Senders no longer followed are dropped (their ids would never be checked again).
    pub fn retain_senders(&mut self, keep: impl Fn(&str) -> bool) {
        self.senders.retain(|name, _| keep(name));
    }

    /// `{"<sender>": {"forgotten": [epoch, ..], "epochs": {"<epoch>": "<ranges text>"}, "recent":
    /// [epoch, ..]}}` (`recent`: least recently seen first) plus the
    /// counts under `"$forgotten"` (not a user name: Twister names are `a-z 0-9 _`).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (name, s) in &self.senders {
            let epochs: Map<String, Value> = s
                .epochs
                .iter()
                .map(|(e, r)| (e.to_string(), Value::String(r.to_text())))
                .collect();
            out.insert(name.clone(), {
                let mut recent: Vec<(u64, u64)> = s.touched.iter().map(|(e, t)| (*t, *e)).collect();
                recent.sort_unstable();
                let recent: Vec<u64> = recent.into_iter().map(|(_, e)| e).collect();
                json!({"forgotten": s.forgotten, "epochs": epochs, "recent": recent})
            });
        }
        out.insert(
            "$forgotten".into(),
            json!({"epochs": self.forgotten.epochs, "absorbed": self.forgotten.absorbed}),
        );
        Value::Object(out)
    }

    /// Reads what `to_json` wrote; what does not read is skipped (a sender's entry at most), and
    /// what exceeds `limits` is cut to them.
    pub fn from_json(v: &Value, limits: Limits) -> Dedup {
        let mut d = Dedup::new(limits);
        let Some(obj) = v.as_object() else {
            return d;
        };
        for (name, entry) in obj {
            if name == "$forgotten" {
                d.forgotten.epochs = entry["epochs"].as_u64().unwrap_or(0);
                d.forgotten.absorbed = entry["absorbed"].as_u64().unwrap_or(0);
                continue;
            }
            let mut s = Sender {
                forgotten: entry["forgotten"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect(),
                ..Sender::default()
            };
            while s.forgotten.len() > FORGOTTEN_EPOCHS {
                s.forgotten.pop_first();
            }
            for (epoch, text) in entry["epochs"].as_object().into_iter().flatten() {
                let (Ok(epoch), Some(text)) = (epoch.parse::<u64>(), text.as_str()) else {
                    continue;
                };
                // Written by us with at most `ranges` ranges; a smaller bound now keeps the newest.
                let Ok(read) = RangeSet::from_text(text, usize::MAX) else {
                    continue;
                };
                let mut set = RangeSet::new(d.limits.ranges);
                set.merge(&read);
                s.epochs.insert(epoch, set);
            }
            for e in entry["recent"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
            {
                if s.epochs.contains_key(&e) {
                    s.touch(e);
                }
            }
            while s.epochs.len() > d.limits.epochs && s.forget_oldest() {}
            d.senders.insert(name.clone(), s);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> Option<MessageId> {
        Some(MessageId { epoch, seq })
    }

    #[test]
    fn each_id_is_first_once_per_sender_and_messages_without_ids_always_pass() {
        let mut d = Dedup::default();
        assert_eq!(d.check("alice", id(1, 1)), Sight::First);
        assert_eq!(d.check("alice", id(1, 1)), Sight::Again);
        assert_eq!(d.check("bob", id(1, 1)), Sight::First, "per sender");
        assert_eq!(d.check("alice", id(2, 1)), Sight::First, "per epoch");
        assert_eq!(d.check("alice", None), Sight::Unknown);
        assert_eq!(d.check("alice", None), Sight::Unknown);
        assert!(d.seen("alice", MessageId { epoch: 1, seq: 1 }));
        assert!(!d.seen("alice", MessageId { epoch: 1, seq: 2 }));
    }

    #[test]
    fn a_restart_from_the_state_file_keeps_what_was_seen() {
        let mut d = Dedup::default();
        for seq in (1..=1000).filter(|s| s % 3 != 0) {
            assert_eq!(d.check("alice", id(1_790_000_000_000, seq)), Sight::First);
        }
        d.check("bob", id(5, u64::MAX));
        let text = d.to_json().to_string();
        let mut back = Dedup::from_json(&serde_json::from_str(&text).unwrap(), Limits::default());
        assert_eq!(back.to_json(), d.to_json());
        for seq in 1..=1000 {
            let expected = if seq % 3 == 0 {
                Sight::First
            } else {
                Sight::Again
            };
            assert_eq!(
                back.check("alice", id(1_790_000_000_000, seq)),
                expected,
                "{seq}"
            );
        }
        assert_eq!(back.check("bob", id(5, u64::MAX)), Sight::Again);
        assert_eq!(back.forgotten(), Forgotten::default(), "nothing forgotten");
        // Junk in the file costs a sender's entry at most.
        let junk = serde_json::json!({"x": 5, "carol": {"epochs": {"7": "zz,,", "8": "1+1"}}, "$forgotten": []});
        let d = Dedup::from_json(&junk, Limits::default());
        assert!(d.seen("carol", MessageId { epoch: 8, seq: 2 }));
        assert!(!d.seen("carol", MessageId { epoch: 7, seq: 1 }));
    }

    #[test]
    fn memory_stays_bounded_whatever_a_sender_sends() {
        let limits = Limits {
            ranges: 16,
            epochs: 3,
        };
        let mut d = Dedup::new(limits);
        // Every other seq of many epochs, epochs in any order: a hostile or very restarted sender.
        let mut x = 0x1234_5678_9abc_def0u64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let epoch = 100 + x % 40;
            d.check("mallory", id(epoch, (i * 2) % 5000));
            assert!(d.ranges_held() <= limits.ranges * limits.epochs);
        }
        let f = d.forgotten();
        assert!(f.epochs > 0 && f.absorbed > 0, "{f:?}");
        // An epoch forgotten is never injected again; one never seen is new, however old.
        let forgotten = (100..140)
            .find(|e| d.ranges("mallory", *e).is_none())
            .unwrap();
        assert_eq!(d.check("mallory", id(forgotten, 1)), Sight::Forgotten);
        assert_eq!(d.check("mallory", id(1, 1)), Sight::First);
        for i in 0..1000 {
            d.check("mallory", id(1_000 + i, 1));
        }
        let text = d.to_json().to_string();
        assert!(
            text.len() < 3 * 16 * 12 + FORGOTTEN_EPOCHS * 8 + 300,
            "{}",
            text.len()
        );
    }

    #[test]
    fn a_smaller_bound_at_start_keeps_every_id_seen() {
        let mut d = Dedup::default();
        for epoch in 1..=6 {
            for seq in (1..100).step_by(2) {
                d.check("alice", id(epoch, seq));
            }
        }
        let small = Dedup::from_json(
            &d.to_json(),
            Limits {
                ranges: 4,
                epochs: 2,
            },
        );
        for epoch in 1..=6 {
            for seq in (1..100).step_by(2) {
                assert!(small.seen("alice", MessageId { epoch, seq }));
            }
        }
    }

    #[test]
    fn a_sender_whose_clock_went_back_is_not_taken_for_a_forgotten_epoch() {
        let limits = Limits {
            ranges: 16,
            epochs: 3,
        };
        let mut d = Dedup::new(limits);
        for epoch in [100, 101, 102] {
            assert_eq!(d.check("alice", id(epoch, 1)), Sight::First);
        }
        // A new run with an epoch below every one kept: new, and it stays (the least recently seen
        // epoch, 100, is the one forgotten).
        for seq in 1..=5 {
            assert_eq!(d.check("alice", id(50, seq)), Sight::First);
        }
        assert_eq!(d.check("alice", id(50, 3)), Sight::Again);
        assert_eq!(d.check("alice", id(100, 2)), Sight::Forgotten);
        assert_eq!(d.check("alice", id(101, 1)), Sight::Again);
        // The order survives a restart: 102 is now the least recently seen.
        let mut back = Dedup::from_json(&d.to_json(), limits);
        assert_eq!(back.check("alice", id(103, 1)), Sight::First);
        assert_eq!(back.check("alice", id(102, 1)), Sight::Forgotten);
        assert_eq!(back.check("alice", id(50, 5)), Sight::Again);
    }
}
