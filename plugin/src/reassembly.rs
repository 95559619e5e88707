//! Joins the fragments of messages too large for one post. Every fragment comes from the network, so
//! nothing here trusts it: no panic and no unchecked arithmetic on any input, O(log n) work per fragment
//! (amortised over the evictions it causes), and bounded memory per sender and in total, counting every
//! held fragment, empty or not, with its bookkeeping. Time comes in as `now`: nothing here reads a
//! clock, so tests drive it with made-up instants.

use crate::wire::{Fragment, Message, MAX_FRAGMENTS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one held fragment costs besides its payload: its map entry and its allocation.
pub const FRAGMENT_OVERHEAD: usize = 96;
/// What one unfinished message costs besides its fragments, topic and sender name: its entries in the
/// three indexes.
pub const MESSAGE_OVERHEAD: usize = 512;
/// What one sender with unfinished messages costs besides its name.
pub const SENDER_OVERHEAD: usize = 192;

/// How much the reassembler may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Accounted bytes over all senders.
    pub total_bytes: usize,
    /// Accounted bytes of one sender; also the largest message that can be joined.
    pub sender_bytes: usize,
    pub total_messages: usize,
    pub sender_messages: usize,
    /// An unfinished message that got no new fragment for this long is dropped.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            total_bytes: 32 << 20,
            // The largest message a sender may cut (plugin_opt_max_message_bytes is at most 10 MiB)
            // plus the cost of its fragments.
            sender_bytes: 12 << 20,
            total_messages: 1024,
            // A sender's fragments come one message after the other per destination (its public
            // timeline, its DMs to us); the rest is room for messages whose last fragments never came.
            sender_messages: 16,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Why a fragment was not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error(
        "fragment {index} of message {id} is not in 0..{count} (at most {MAX_FRAGMENTS} fragments)"
    )]
    Invalid { id: u64, index: u32, count: u32 },
    #[error(
        "fragment {index} of message {id} contradicts the ones before it ({what}); the first kept"
    )]
    Contradicts {
        id: u64,
        index: u32,
        what: &'static str,
    },
    #[error("message {id} would hold more than {limit} bytes unfinished: dropped")]
    TooLarge { id: u64, limit: usize },
}

/// What happened to fragments and unfinished messages, for the counters and the log.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Stats {
    pub joined: u64,
    pub duplicates: u64,
    pub refused: u64,
    /// Dropped after `idle_timeout` without a new fragment.
    pub expired: u64,
    /// Dropped to stay within the limits, the one idle longest first.
    pub evicted: u64,
}

/// Position in the order of last progress; the counter keeps keys unique when instants are equal.
type Stamp = (Instant, u64);
type Key = (String, u64);

struct Unfinished {
    topic: String,
    qos: u8,
    retain: bool,
    count: u32,
    parts: BTreeMap<u32, Vec<u8>>,
    payload_bytes: usize,
    cost: usize,
    stamp: Stamp,
}

struct Sender {
    /// Its unfinished messages plus its own overhead.
    cost: usize,
    by_progress: BTreeMap<Stamp, u64>,
}

#[derive(Default)]
pub struct Reassembler {
    limits: Limits,
    unfinished: BTreeMap<Key, Unfinished>,
    senders: BTreeMap<String, Sender>,
    by_progress: BTreeMap<Stamp, Key>,
    cost: usize,
    next_stamp: u64,
    pub stats: Stats,
}

fn sender_overhead(name: &str) -> usize {
    SENDER_OVERHEAD.saturating_add(name.len())
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        // One sender can never be allowed more than everyone together.
        let limits = Limits {
            sender_bytes: limits.sender_bytes.min(limits.total_bytes),
            sender_messages: limits.sender_messages.min(limits.total_messages),
            ..limits
        };
        Reassembler {
            limits,
            ..Default::default()
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes held, as accounted: payloads plus the bookkeeping of every fragment, message and sender.
    pub fn cost(&self) -> usize {
        self.cost
    }

    pub fn unfinished(&self) -> usize {
        self.unfinished.len()
    }

    /// Adds one fragment of `from`'s message; the whole message once its last fragment is in.
    pub fn add(
        &mut self,
        from: &str,
        f: Fragment,
        part: Message,
        now: Instant,
    ) -> Result<Option<Message>, Refused> {
        self.expire(now);
        if f.count == 0 || f.index >= f.count || f.count > MAX_FRAGMENTS {
            return self.refuse(Refused::Invalid {
                id: f.id,
                index: f.index,
                count: f.count,
            });
        }
        let key = (from.to_string(), f.id);
        let mut payload = part.payload;
        payload.shrink_to_fit();
        let fragment_cost = FRAGMENT_OVERHEAD.saturating_add(payload.capacity());
        let too_large = Refused::TooLarge {
            id: f.id,
            limit: self.limits.sender_bytes,
        };
        let Some(held) = self.unfinished.get_mut(&key) else {
            if f.count == 1 {
                self.stats.joined += 1;
                return Ok(Some(Message { payload, ..part }));
            }
            let cost = MESSAGE_OVERHEAD
                .saturating_add(from.len().saturating_mul(2))
                .saturating_add(part.topic.capacity())
                .saturating_add(fragment_cost);
            if cost > self.limits.sender_bytes {
                return self.refuse(too_large);
            }
            let stamp = self.stamp(now);
            let payload_bytes = payload.len();
            let mut parts = BTreeMap::new();
            parts.insert(f.index, payload);
            self.unfinished.insert(
                key.clone(),
                Unfinished {
                    topic: part.topic,
                    qos: part.qos,
                    retain: part.retain,
                    count: f.count,
                    parts,
                    payload_bytes,
                    cost,
                    stamp,
                },
            );
            self.by_progress.insert(stamp, key.clone());
            let sender = self.senders.entry(from.to_string()).or_insert_with(|| {
                self.cost = self.cost.saturating_add(sender_overhead(from));
                Sender {
                    cost: sender_overhead(from),
                    by_progress: BTreeMap::new(),
                }
            });
            sender.cost = sender.cost.saturating_add(cost);
            sender.by_progress.insert(stamp, f.id);
            self.cost = self.cost.saturating_add(cost);
            self.enforce_limits(from);
            return Ok(None);
        };
        let contradiction = if held.count != f.count {
            Some("fragment count")
        } else if held.topic != part.topic {
            Some("topic")
        } else if held.qos != part.qos {
            Some("qos")
        } else if held.retain != part.retain {
            Some("retain flag")
        } else {
            match held.parts.get(&f.index) {
                Some(same) if *same == payload => {
                    self.stats.duplicates += 1;
                    return Ok(None);
                }
                Some(_) => Some("another payload for the same index"),
                None => None,
            }
        };
        if let Some(what) = contradiction {
            return self.refuse(Refused::Contradicts {
                id: f.id,
                index: f.index,
                what,
            });
        }
        let (Some(cost), Some(payload_bytes)) = (
            held.cost.checked_add(fragment_cost),
            held.payload_bytes.checked_add(payload.len()),
        ) else {
            self.remove(&key);
            return self.refuse(too_large);
        };
        if cost > self.limits.sender_bytes {
            self.remove(&key);
            return self.refuse(too_large);
        }
        held.parts.insert(f.index, payload);
        held.cost = cost;
        held.payload_bytes = payload_bytes;
        let complete = held.parts.len() >= held.count as usize;
        if let Some(sender) = self.senders.get_mut(from) {
            sender.cost = sender.cost.saturating_add(fragment_cost);
        }
        self.cost = self.cost.saturating_add(fragment_cost);
        if complete {
            let Some(done) = self.remove(&key) else {
                return Ok(None);
            };
            self.stats.joined += 1;
            let mut joined = Vec::with_capacity(done.payload_bytes);
            for p in done.parts.into_values() {
                joined.extend_from_slice(&p);
            }
            return Ok(Some(Message {
                topic: done.topic,
                payload: joined,
                qos: done.qos,
                retain: done.retain,
            }));
        }
        self.restamp(&key, now);
        self.enforce_limits(from);
        Ok(None)
    }

    fn refuse<T>(&mut self, why: Refused) -> Result<T, Refused> {
        self.stats.refused += 1;
        Err(why)
    }

    fn stamp(&mut self, now: Instant) -> Stamp {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        (now, self.next_stamp)
    }

    /// Moves `key` to the newest end of both progress orders.
    fn restamp(&mut self, key: &Key, now: Instant) {
        let stamp = self.stamp(now);
        let Some(held) = self.unfinished.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut held.stamp, stamp);
        self.by_progress.remove(&old);
        self.by_progress.insert(stamp, key.clone());
        if let Some(sender) = self.senders.get_mut(&key.0) {
            sender.by_progress.remove(&old);
            sender.by_progress.insert(stamp, key.1);
        }
    }

    /// Takes an unfinished message out of every index and the accounts.
    fn remove(&mut self, key: &Key) -> Option<Unfinished> {
        let held = self.unfinished.remove(key)?;
        self.by_progress.remove(&held.stamp);
        self.cost = self.cost.saturating_sub(held.cost);
        if let Some(sender) = self.senders.get_mut(&key.0) {
            sender.by_progress.remove(&held.stamp);
            sender.cost = sender.cost.saturating_sub(held.cost);
            if sender.by_progress.is_empty() {
                self.senders.remove(&key.0);
                self.cost = self.cost.saturating_sub(sender_overhead(&key.0));
            }
        }
        Some(held)
    }

    /// Drops the messages idle longest until `from` and everyone together are within the limits.
    fn enforce_limits(&mut self, from: &str) {
        while let Some(sender) = self.senders.get(from) {
            if sender.cost <= self.limits.sender_bytes
                && sender.by_progress.len() <= self.limits.sender_messages
            {
                break;
            }
            let Some((_, id)) = sender.by_progress.first_key_value() else {
                break;
            };
            let key = (from.to_string(), *id);
            self.remove(&key);
            self.stats.evicted += 1;
        }
        while self.cost > self.limits.total_bytes
            || self.unfinished.len() > self.limits.total_messages
        {
            let Some((_, key)) = self.by_progress.first_key_value() else {
                break;
            };
            let key = key.clone();
            self.remove(&key);
            self.stats.evicted += 1;
        }
    }

    /// Drops the messages that got no new fragment for longer than the idle timeout.
    pub fn expire(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.limits.idle_timeout) else {
            return;
        };
        while let Some((stamp, key)) = self.by_progress.first_key_value() {
            if stamp.0 >= cutoff {
                break;
            }
            let key = key.clone();
            self.remove(&key);
            self.stats.expired += 1;
        }
    }

    /// The ids of `from`'s unfinished messages (tests).
    #[cfg(test)]
    pub fn held(&self, from: &str) -> Vec<u64> {
        self.unfinished
            .keys()
            .filter(|(s, _)| s == from)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Recounts everything from scratch: the accounts must equal it (tests and the fuzz run).
    #[cfg(test)]
    pub fn check_accounts(&self) {
        let mut total = 0usize;
        for (name, sender) in &self.senders {
            let mut own = sender_overhead(name);
            for (stamp, id) in &sender.by_progress {
                let held = &self.unfinished[&(name.clone(), *id)];
                assert_eq!(held.stamp, *stamp);
                assert_eq!(self.by_progress[stamp], (name.clone(), *id));
                let parts: usize = held
                    .parts
                    .values()
                    .map(|p| FRAGMENT_OVERHEAD + p.capacity())
                    .sum();
                let base = MESSAGE_OVERHEAD + 2 * name.len() + held.topic.capacity();
                assert_eq!(held.cost, base + parts);
                assert_eq!(
                    held.payload_bytes,
                    held.parts.values().map(Vec::len).sum::<usize>()
                );
                assert!(held.parts.len() < held.count as usize);
                own += held.cost;
            }
            assert_eq!(sender.cost, own, "{name}");
            assert!(sender.cost <= self.limits.sender_bytes);
            assert!(sender.by_progress.len() <= self.limits.sender_messages);
            total += own;
        }
        assert_eq!(self.by_progress.len(), self.unfinished.len());
        assert_eq!(self.cost, total);
        assert!(self.cost <= self.limits.total_bytes);
        assert!(self.unfinished.len() <= self.limits.total_messages);
    }
}

#[cfg(test)]
mod tests;
