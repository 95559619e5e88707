//! The sending side: QoS 1/2 messages kept until every intended receiver acknowledged them, sent
//! again when a receipt does not come in time (with backoff), given up after the operator's time.
//!
//! Intended receivers are decided when a message is queued (`track`): the DM recipient of a private
//! forward; for a public post, the expected receivers whose published interest matched its topic
//! then. The clock of an attempt starts when the post holding it is answered as stored (`posted`): a
//! message still queued (waiting for the post budget, say) is never sent again meanwhile, which would
//! only add copies to the queue. A resend of
//! a public post nobody acknowledged is a public post again; one some receivers acknowledged goes as a
//! DM to each receiver still missing it (the others are not sent it twice). A resend keeps the
//! message's id: receivers drop copies they already have.

use super::codec::Acks;
use super::MessageId;
use crate::wire::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Times to a receipt remembered (the newest), for the operator's percentiles.
pub const LATENCY_SAMPLES: usize = 10_000;

/// Messages kept at most, and their topics and payloads in bytes; beyond, the oldest are given up
/// (counted per receiver like the give-up time).
pub const MAX_TRACKED: usize = 100_000;
pub const MAX_TRACKED_BYTES: usize = 64 << 20;

fn size_of(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How long a receipt may take before the message is sent again (doubled at each resend).
    pub timeout: Duration,
    /// The longest wait between two resends.
    pub max_backoff: Duration,
    /// After this long without every receipt, the message is released anyway.
    pub give_up: Duration,
}

/// How a message was first sent: on the public timeline (and maybe as DMs too), or only as DMs to
/// its receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Public,
    Private,
}

/// A message to queue again: `to: None` a public post, else a DM.
#[derive(Debug, Clone, PartialEq)]
pub struct Resend {
    pub id: MessageId,
    pub message: Message,
    pub to: Option<String>,
}

/// What `handle_timeout` decided.
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    pub resends: Vec<Resend>,
    /// Messages released without a receipt, per receiver that never acknowledged them.
    pub gave_up: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counters {
    pub tracked: u64,
    pub acknowledged: u64,
    pub resent: u64,
    pub gave_up: u64,
}

#[derive(Debug)]
struct Entry {
    message: Message,
    via: Via,
    first: Instant,
    /// Start of the current attempt's wait: when its post was stored.
    clock: Instant,
    /// The current attempt's post was stored (no resend before).
    posted: bool,
    attempts: u32,
    intended: usize,
    waiting: BTreeSet<String>,
}

#[derive(Debug)]
pub struct Tracker {
    settings: Settings,
    entries: BTreeMap<MessageId, Entry>,
    released: Vec<MessageId>,
    /// From queueing to each receiver's receipt, newest last.
    latencies: std::collections::VecDeque<Duration>,
    /// No entry is due before this (a lower bound, made exact by `handle_timeout`'s scan), so the
    /// driver's frequent calls cost nothing until then.
    next_due: Option<Instant>,
    /// Topic and payload bytes of the messages kept.
    bytes: usize,
    pub counters: Counters,
}

/// Per receiver: messages not acknowledged and the instant the oldest was first queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Unacknowledged {
    pub receiver: String,
    pub messages: usize,
    pub oldest: Instant,
}

impl Tracker {
    pub fn new(settings: Settings) -> Self {
        Tracker {
            settings,
            entries: BTreeMap::new(),
            released: Vec::new(),
            latencies: Default::default(),
            next_due: None,
            bytes: 0,
            counters: Counters::default(),
        }
    }

    /// A message queued for `receivers` (those expected to acknowledge it). QoS 0, or nobody to wait
    /// for: released at once. Returns whether it is kept.
    pub fn track(
        &mut self,
        id: MessageId,
        message: Message,
        via: Via,
        receivers: BTreeSet<String>,
        now: Instant,
    ) -> bool {
        if message.qos == 0 || receivers.is_empty() {
            self.released.push(id);
            return false;
        }
        self.counters.tracked += 1;
        let due = now + self.settings.give_up;
        self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
        if self.entries.len() >= MAX_TRACKED || self.bytes + size_of(&message) > MAX_TRACKED_BYTES {
            self.next_due = Some(now);
        }
        let entry = Entry {
            message,
            via,
            first: now,
            clock: now,
            posted: false,
            attempts: 0,
            intended: receivers.len(),
            waiting: receivers,
        };
        match self.entries.get_mut(&id) {
            // The same message queued another way too (public and private): one entry for both.
            Some(e) => {
                if via == Via::Public {
                    e.via = Via::Public;
                }
                for r in entry.waiting {
                    if e.waiting.insert(r) {
                        e.intended += 1;
                    }
                }
            }
            None => {
                self.bytes += size_of(&entry.message);
                self.entries.insert(id, entry);
            }
        }
        true
    }

    /// The post or DM holding `id` is answered as stored: its receipt's clock starts now.
    pub fn posted(&mut self, id: MessageId, now: Instant) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.posted {
            return;
        }
        e.posted = true;
        e.clock = now;
        let attempts = e.attempts;
        let due = now + self.wait(attempts);
        self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
    }

    /// `receiver`'s receipts for our messages; returns how many messages they acknowledged now.
    pub fn acknowledged(&mut self, receiver: &str, acks: &Acks, now: Instant) -> usize {
        let mut newly = 0;
        let mut done = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            let acked = acks.get(&id.epoch).is_some_and(|set| set.contains(id.seq));
            if acked && e.waiting.remove(receiver) {
                newly += 1;
                if self.latencies.len() == LATENCY_SAMPLES {
                    self.latencies.pop_front();
                }
                self.latencies
                    .push_back(now.saturating_duration_since(e.first));
                if e.waiting.is_empty() {
                    done.push(*id);
                }
            }
        }
        for id in done {
            self.remove(id);
            self.released.push(id);
            self.counters.acknowledged += 1;
        }
        newly
    }

    fn wait(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(16)).unwrap_or(u32::MAX);
        self.settings
            .timeout
            .saturating_mul(factor)
            .min(self.settings.max_backoff.max(self.settings.timeout))
    }

    /// When `e` is due for a resend (`None`: its current copy is not posted yet).
    fn resend_at(&self, e: &Entry) -> Option<Instant> {
        e.posted.then(|| e.clock + self.wait(e.attempts))
    }

    fn give_up_at(&self, e: &Entry) -> Instant {
        e.first + self.settings.give_up
    }

    /// Resends what waited too long for a receipt and gives up what waited longer than allowed.
    pub fn handle_timeout(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if self.next_due.is_none_or(|d| now < d) {
            return due;
        }
        let mut expired = BTreeSet::new();
        for (id, e) in &self.entries {
            if now >= self.give_up_at(e) {
                expired.insert(*id);
            }
        }
        // Beyond the bounds, the oldest go (ids grow with time within an epoch, epochs too).
        let mut count = self.entries.len();
        let mut bytes = self.bytes;
        for (id, e) in &self.entries {
            if count <= MAX_TRACKED && bytes <= MAX_TRACKED_BYTES {
                break;
            }
            expired.insert(*id);
            count -= 1;
            bytes -= size_of(&e.message);
        }
        for id in expired {
            if let Some(e) = self.remove(id) {
                for r in e.waiting {
                    *due.gave_up.entry(r).or_default() += 1;
                }
                self.released.push(id);
                self.counters.gave_up += 1;
            }
        }
        let waits: Vec<(MessageId, Instant)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| Some((*id, self.resend_at(e)?)))
            .collect();
        for (id, at) in waits {
            if now < at {
                continue;
            }
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            e.attempts = e.attempts.saturating_add(1);
            e.clock = now;
            // The resent copy's own post starts the next wait.
            e.posted = false;
            self.counters.resent += 1;
            let everyone = e.waiting.len() == e.intended;
            if e.via == Via::Public && everyone {
                due.resends.push(Resend {
                    id,
                    message: e.message.clone(),
                    to: None,
                });
            } else {
                due.resends.extend(e.waiting.iter().map(|r| Resend {
                    id,
                    message: e.message.clone(),
                    to: Some(r.clone()),
                }));
            }
        }
        self.next_due = self
            .entries
            .values()
            .map(|e| {
                let give_up = self.give_up_at(e);
                self.resend_at(e).map_or(give_up, |r| r.min(give_up))
            })
            .min();
        due
    }

    fn remove(&mut self, id: MessageId) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        self.bytes -= size_of(&e.message);
        Some(e)
    }

    /// When `handle_timeout` is next due (it may find nothing due then), never before `now`.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.next_due.map(|t| t.max(now))
    }

    /// Ids no longer kept (acknowledged by all, QoS 0, or given up), since the last call.
    pub fn take_released(&mut self) -> Vec<MessageId> {
        std::mem::take(&mut self.released)
    }

    /// Whether `id` still waits for a receipt (the spool keeps its record meanwhile).
    pub fn is_kept(&self, id: MessageId) -> bool {
        self.entries.contains_key(&id)
    }

    /// The receivers some message waits for: whose receipts to read.
    pub fn awaited(&self) -> BTreeSet<String> {
        self.entries
            .values()
            .flat_map(|e| e.waiting.iter().cloned())
            .collect()
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `q`-quantile (0..=1) of the remembered times from queueing to a receipt.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.latencies.iter().copied().collect();
        sorted.sort();
        let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        sorted.get(rank).copied()
    }

    /// What each receiver has not acknowledged yet, for the operator.
    pub fn unacknowledged(&self) -> Vec<Unacknowledged> {
        let mut per: BTreeMap<&str, (usize, Instant)> = BTreeMap::new();
        for e in self.entries.values() {
            for r in &e.waiting {
                let slot = per.entry(r.as_str()).or_insert((0, e.first));
                slot.0 += 1;
                slot.1 = slot.1.min(e.first);
            }
        }
        per.into_iter()
            .map(|(r, (messages, oldest))| Unacknowledged {
                receiver: r.to_string(),
                messages,
                oldest,
            })
            .collect()
    }
}
