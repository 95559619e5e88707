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
mod tests {
    use super::*;

    fn part(topic: &str, bytes: &[u8]) -> Message {
        Message {
            topic: topic.into(),
            payload: bytes.to_vec(),
            qos: 1,
            retain: false,
        }
    }

    fn frag(id: u64, index: u32, count: u32) -> Fragment {
        Fragment { id, index, count }
    }

    #[test]
    fn fragments_join_in_any_order_once_each() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        assert_eq!(
            r.add("alice", frag(7, 2, 3), part("t", b"ghi"), now),
            Ok(None)
        );
        assert_eq!(
            r.add("alice", frag(7, 0, 3), part("t", b"abc"), now),
            Ok(None)
        );
        assert_eq!(
            r.add("alice", frag(7, 0, 3), part("t", b"abc"), now),
            Ok(None),
            "a duplicate changes nothing"
        );
        assert_eq!(r.stats.duplicates, 1);
        // Same id from another sender is another message.
        assert_eq!(r.add("bob", frag(7, 0, 2), part("u", b"x"), now), Ok(None));
        r.check_accounts();
        let whole = r
            .add("alice", frag(7, 1, 3), part("t", b"def"), now)
            .unwrap()
            .unwrap();
        assert_eq!(
            (whole.topic.as_str(), whole.payload.as_slice(), whole.qos),
            ("t", &b"abcdefghi"[..], 1)
        );
        r.check_accounts();
        assert_eq!(r.unfinished(), 1, "only bob's message is still held");
        let single = r.add("carol", frag(9, 0, 1), part("s", b"one"), now);
        assert_eq!(single.unwrap().unwrap().payload, b"one");
    }

    #[test]
    fn a_fragment_that_contradicts_the_others_is_refused() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        r.add("alice", frag(1, 0, 3), part("t", b"a"), now).unwrap();
        let contradicting = [
            (frag(1, 1, 4), part("t", b"b")),
            (frag(1, 1, 3), part("other", b"b")),
            (
                frag(1, 1, 3),
                Message {
                    qos: 2,
                    ..part("t", b"b")
                },
            ),
            (
                frag(1, 1, 3),
                Message {
                    retain: true,
                    ..part("t", b"b")
                },
            ),
            (frag(1, 0, 3), part("t", b"not a")),
        ];
        for (f, p) in contradicting {
            assert!(
                matches!(
                    r.add("alice", f, p.clone(), now),
                    Err(Refused::Contradicts { .. })
                ),
                "{f:?} {p:?}"
            );
            r.check_accounts();
        }
        assert!(matches!(
            r.add("alice", frag(1, 3, 3), part("t", b"x"), now),
            Err(Refused::Invalid { .. })
        ));
        assert!(matches!(
            r.add("alice", frag(1, 0, 0), part("t", b"x"), now),
            Err(Refused::Invalid { .. })
        ));
        assert_eq!(r.stats.refused, 7);
        r.add("alice", frag(1, 1, 3), part("t", b"b"), now).unwrap();
        let whole = r.add("alice", frag(1, 2, 3), part("t", b"c"), now).unwrap();
        assert_eq!(
            whole.unwrap().payload,
            b"abc",
            "the first of each index kept"
        );
        assert_eq!(r.cost(), 0);
    }

    /// The crafted post of issue 7: three fragment items, the second repeating the first's id and
    /// index with a larger payload. The old byte count ignored the repeat, then subtracted the larger
    /// payload: a panic in debug builds, an endless eviction loop in release builds.
    #[test]
    fn a_repeated_index_with_another_payload_keeps_the_accounts_exact() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        assert_eq!(
            r.add("mallory", frag(5, 0, 2), part("t", b"a"), now),
            Ok(None)
        );
        let bigger = vec![b'B'; 1300];
        assert!(r
            .add("mallory", frag(5, 0, 2), part("t", &bigger), now)
            .is_err());
        r.check_accounts();
        let whole = r
            .add("mallory", frag(5, 1, 2), part("t", b"c"), now)
            .unwrap();
        assert_eq!(whole.unwrap().payload, b"ac");
        r.check_accounts();
        assert_eq!((r.cost(), r.unfinished()), (0, 0));
    }

    #[test]
    fn a_flood_of_empty_fragments_is_bounded_per_sender_and_in_total() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        let limits = r.limits();
        r.add("alice", frag(1, 0, 2), part("t", b"first half"), now)
            .unwrap();
        // The case of issue 7: 178,000 zero-length fragments, each opening a message.
        for id in 0..178_000u64 {
            assert_eq!(
                r.add("mallory", frag(id, 0, 2), part("z", b""), now),
                Ok(None)
            );
        }
        r.check_accounts();
        assert_eq!(r.unfinished(), 1 + limits.sender_messages);
        assert!(r.cost() < 1 + limits.sender_messages * 1024, "{}", r.cost());
        assert_eq!(r.stats.evicted, 178_000 - limits.sender_messages as u64);
        // Fragments of one message: each empty one costs its bookkeeping, up to the sender's limit.
        for index in 0..100_000u32 {
            let _ = r.add(
                "mallory",
                frag(u64::MAX, index, 100_000),
                part("z", b""),
                now,
            );
            if index % 10_000 == 0 {
                r.check_accounts();
            }
        }
        r.check_accounts();
        assert!(r.cost() <= limits.total_bytes);
        // Many senders at once meet the total limits.
        for n in 0..5_000u64 {
            let _ = r.add(&format!("sybil{n}"), frag(n, 0, 2), part("z", b""), now);
        }
        r.check_accounts();
        assert_eq!(r.unfinished(), limits.total_messages);
        // Alice's message was the one idle longest: it went first.
        assert_eq!(
            r.add("alice", frag(1, 1, 2), part("t", b"second"), now),
            Ok(None)
        );
    }

    #[test]
    fn one_flooding_sender_does_not_push_out_another_senders_message() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        r.add("alice", frag(1, 0, 2), part("t", b"ab"), now)
            .unwrap();
        for id in 0..10_000u64 {
            let _ = r.add("mallory", frag(id, 0, 3), part("z", &[0u8; 100]), now);
        }
        let whole = r
            .add("alice", frag(1, 1, 2), part("t", b"cd"), now)
            .unwrap();
        assert_eq!(whole.unwrap().payload, b"abcd");
    }

    #[test]
    fn unfinished_messages_are_bounded_in_bytes() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        let big = vec![0u8; 4 << 20];
        for (n, id) in (0..20).enumerate() {
            let sender = format!("s{}", n % 5);
            r.add(&sender, frag(id, 0, 2), part("t", &big), now)
                .unwrap();
            r.check_accounts();
        }
        assert!(r.unfinished() < 20, "the idle longest were dropped");
        assert!(
            matches!(r.add("s0", frag(0, 1, 2), part("t", b"x"), now), Ok(None)),
            "message 0 went first: this fragment starts it again"
        );
        let limit = r.limits().sender_bytes;
        let mut small = Reassembler::new(Limits {
            sender_bytes: 1 << 20,
            ..Limits::default()
        });
        assert!(limit > 1 << 20);
        small
            .add("s", frag(1, 0, 3), part("t", &vec![1; 600 << 10]), now)
            .unwrap();
        assert!(matches!(
            small.add("s", frag(1, 1, 3), part("t", &vec![2; 600 << 10]), now),
            Err(Refused::TooLarge { .. })
        ));
        small.check_accounts();
        assert_eq!(
            small.unfinished(),
            0,
            "a message beyond the limit is dropped at once"
        );
    }

    #[test]
    fn idle_messages_expire_in_order_of_last_progress() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Reassembler::default();
        let timeout = r.limits().idle_timeout.as_secs();
        for id in 0..5u64 {
            r.add("alice", frag(id, 0, 3), part("t", b"a"), at(id * 10))
                .unwrap();
        }
        // Message 1 progresses later: now it is the one idle shortest.
        r.add("alice", frag(1, 1, 3), part("t", b"b"), at(100))
            .unwrap();
        r.expire(at(timeout + 25));
        assert_eq!(
            r.held("alice"),
            vec![1, 3, 4],
            "0 and 2 idle since 0 and 20 s"
        );
        r.expire(at(timeout + 45));
        assert_eq!(r.held("alice"), vec![1]);
        assert_eq!(r.stats.expired, 4);
        r.check_accounts();
        // Exactly the timeout idle is not yet too long.
        let done = r.add("alice", frag(1, 2, 3), part("t", b"c"), at(timeout + 100));
        assert_eq!(done.unwrap().unwrap().payload, b"abc");
        // A clock that goes backwards breaks nothing.
        r.add("bob", frag(1, 0, 2), part("t", b"a"), at(timeout + 200))
            .unwrap();
        r.add("bob", frag(2, 0, 2), part("t", b"a"), t0).unwrap();
        r.expire(t0);
        assert_eq!(r.held("bob"), vec![1, 2]);
        r.expire(at(timeout + 199));
        assert_eq!(r.held("bob"), vec![1], "ordered by time, not by arrival");
        r.check_accounts();
    }
}
