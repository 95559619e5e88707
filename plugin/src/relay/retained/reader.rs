//! The subscriber broker's side: what it knows of each followed user's retained values, which index
//! shards and values a sync fetches, and which fetched values it injects (newest wins).

use super::*;
use crate::wire::{Message, MessageId};
use std::collections::BTreeMap;

/// Values (and tombstones) fetched per user in one sync; the rest waits for the next.
pub const MAX_FETCH_PER_SYNC: usize = 128;
/// Topics tracked per followed user; values of further topics are not fetched.
pub const MAX_TOPICS_PER_USER: usize = 16_384;
/// How long a value waits at most for posts twisterd does not list yet (its post is slow to reach
/// this node, or the numbers were skipped or forgotten by the publisher and will never be read).
/// Posts that are listed but not yet read are always waited for: the next read brings them.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Known {
    /// Highest DHT seq seen for the topic.
    seq: i64,
    /// Post number of the newest live retained message injected.
    live_k: Option<i64>,
    /// Digest of the value the broker holds from us (live or fetched).
    digest: Option<u64>,
    /// Watermark of the fetched value last injected (None once a live one replaced it).
    watermark: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct UserState {
    shards: Vec<i64>,
    topics: BTreeMap<String, Known>,
    /// Since when each value waits for its posts (unix ms; not kept across restarts).
    deferrals: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub injected: u64,
    pub cleared: u64,
    /// Fetched values older than what the broker holds, or the same value.
    pub skipped: u64,
    /// Live retained messages older than a value fetched before (injected without the retain flag).
    pub stale_live: u64,
    pub malformed: u64,
}

/// What the DHT thread needs to sync one user: what is known, and the broker's interest (fetched first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub user: String,
    pub shards: Vec<i64>,
    pub known: BTreeMap<String, i64>,
    pub filters: Vec<String>,
}

/// What one sync of a user brought back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Synced {
    pub user: String,
    /// Shards read whose every lacking entry was fetched: (index, seq).
    pub shards: Vec<(usize, i64)>,
    pub records: Vec<Record>,
    /// Entries known from the index alone (values too large for the DHT).
    pub index_only: Vec<IndexEntry>,
    /// More was lacking than one sync fetches.
    pub more: bool,
    /// Malformed resources or failed calls, said in the log.
    pub problems: Vec<String>,
}

/// The shards whose seq in the root is above the one last read.
pub fn shards_to_read(known: &[i64], root: &[i64]) -> Vec<usize> {
    root.iter()
        .enumerate()
        .filter(|(i, seq)| **seq > known.get(*i).copied().unwrap_or(0))
        .map(|(i, _)| i)
        .collect()
}

/// Of a shard's entries, those newer than known: values and tombstones to fetch (the ones the broker's
/// interest matches first, at most `room`), and entries the index alone settles. The bool: some were
/// left for the next sync.
pub fn to_fetch(
    entries: &[IndexEntry],
    known: &BTreeMap<String, i64>,
    filters: &[String],
    room: usize,
) -> (Vec<IndexEntry>, Vec<IndexEntry>, bool) {
    let newer = entries
        .iter()
        .filter(|e| e.seq > known.get(&e.topic).copied().unwrap_or(0));
    let (index_only, mut fetch): (Vec<IndexEntry>, Vec<IndexEntry>) =
        newer.cloned().partition(|e| e.kind == Kind::Oversize);
    let wanted = |e: &IndexEntry| filters.iter().any(|f| crate::topic::matches(f, &e.topic));
    fetch.sort_by_key(|e| !wanted(e));
    let more = fetch.len() > room;
    fetch.truncate(room);
    (fetch, index_only, more)
}

/// How far the publisher's posts were read when a sync is applied (from the inbox).
pub struct Progress<'a> {
    /// Every post below this number was read and its messages handed on (None: not known yet).
    pub read_below: Option<i64>,
    /// The publisher's last post number twisterd listed (None: not known yet).
    pub last_listed: Option<i64>,
    /// True when the live copy of this message was handed on (`crate::dedup`).
    pub handed_on: &'a dyn Fn(MessageId) -> bool,
}

/// Why a fetched value waits, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Every post that may carry it or an earlier message was read: decide now.
    Ready,
    /// Those posts are listed and not read yet: the next read brings them.
    Unread,
    /// Those posts are not listed (yet): wait, bounded by `MAX_WAIT_MS`.
    Unlisted,
}

/// Where a fetched value stands against the live path. A value with an id but no watermark (its
/// publisher could not order it) waits for its live copy like one whose posts are unlisted.
fn order(r: &Record, progress: &Progress) -> Order {
    let Some(w) = r.watermark else {
        return if r.id.is_some() {
            Order::Unlisted
        } else {
            Order::Ready
        };
    };
    if progress.read_below.is_some_and(|below| below >= w) {
        Order::Ready
    } else if progress.last_listed.is_some_and(|last| last + 1 >= w) {
        Order::Unread
    } else {
        Order::Unlisted
    }
}

/// What a sync brought, decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// To publish into the broker as retained messages.
    pub messages: Vec<Message>,
    /// The ids of those messages: their live copies are duplicates from now on.
    pub ids: Vec<MessageId>,
    /// Values left for a later sync: their posts are not read yet.
    pub deferred: usize,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reader {
    users: BTreeMap<String, UserState>,
    pub counters: Counters,
}

impl Reader {
    pub fn plan(&self, user: &str, filters: &[String]) -> Plan {
        let state = self.users.get(user);
        Plan {
            user: user.to_string(),
            shards: state.map(|s| s.shards.clone()).unwrap_or_default(),
            known: state
                .map(|s| s.topics.iter().map(|(t, k)| (t.clone(), k.seq)).collect())
                .unwrap_or_default(),
            filters: filters.to_vec(),
        }
    }

    /// A retained message from `user`'s post `k` reached us live. False: it is older than a value
    /// fetched from the DHT before, and must not replace it (inject it without the retain flag).
    pub fn live(&mut self, user: &str, k: i64, topic: &str, payload: &[u8]) -> bool {
        let state = self.users.entry(user.to_string()).or_default();
        if !state.topics.contains_key(topic) && state.topics.len() >= MAX_TOPICS_PER_USER {
            return true;
        }
        let known = state.topics.entry(topic.to_string()).or_default();
        if known.watermark.is_some_and(|w| k < w) {
            self.counters.stale_live += 1;
            return false;
        }
        known.live_k = Some(known.live_k.map_or(k, |l| l.max(k)));
        known.digest = Some(digest(payload));
        known.watermark = None;
        true
    }

    /// A sync's result: the messages to publish as retained into the broker, newest wins, never ahead
    /// of the publisher's live messages that precede them: a value whose watermark is above what was
    /// read of the publisher's posts waits (fetched again by a later sync) while those posts are listed
    /// and unread, and at most `MAX_WAIT_MS` from `now_ms` while they are not listed. A value whose
    /// live copy was handed on is skipped.
    pub fn apply(&mut self, synced: Synced, progress: &Progress, now_ms: u64) -> Applied {
        let state = self.users.entry(synced.user).or_default();
        for e in synced.index_only {
            if let Some(known) = track(state, &e.topic) {
                known.seq = known.seq.max(e.seq);
            }
        }
        let mut out = Applied::default();
        for r in synced.records {
            let live_copy_seen = r.id.is_some_and(|id| (progress.handed_on)(id));
            let waits = match order(&r, progress) {
                _ if live_copy_seen || r.kind == Kind::Oversize => false,
                Order::Ready => false,
                Order::Unread => true,
                Order::Unlisted => {
                    let since = *state.deferrals.entry(r.topic.clone()).or_insert(now_ms);
                    now_ms < since.saturating_add(MAX_WAIT_MS)
                }
            };
            if waits {
                out.deferred += 1;
                continue;
            }
            state.deferrals.remove(&r.topic);
            let Some(known) = track(state, &r.topic) else {
                continue;
            };
            if r.seq <= known.seq {
                self.counters.skipped += 1;
                continue;
            }
            known.seq = known.seq.max(r.seq);
            if r.kind == Kind::Oversize {
                continue;
            }
            let live_is_newer = known
                .live_k
                .is_some_and(|k| r.watermark.is_none_or(|w| k >= w));
            let d = digest(&r.payload);
            if live_is_newer || live_copy_seen || known.digest == Some(d) {
                self.counters.skipped += 1;
                continue;
            }
            known.digest = Some(d);
            known.watermark = r.watermark;
            if r.kind == Kind::Cleared {
                self.counters.cleared += 1;
            } else {
                self.counters.injected += 1;
            }
            out.ids.extend(r.id);
            out.messages.push(Message {
                topic: r.topic,
                payload: r.payload,
                qos: r.qos,
                retain: true,
            });
        }
        // A shard is marked read only when none of its values wait: they are fetched again.
        if out.deferred == 0 {
            for (i, seq) in synced.shards {
                if i < MAX_SHARDS {
                    if state.shards.len() <= i {
                        state.shards.resize(i + 1, 0);
                    }
                    state.shards[i] = state.shards[i].max(seq);
                }
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let users: serde_json::Map<String, Value> = self
            .users
            .iter()
            .map(|(u, s)| {
                let topics: serde_json::Map<String, Value> = s
                    .topics
                    .iter()
                    .map(|(t, k)| {
                        (
                            t.clone(),
                            json!([
                                k.seq,
                                k.live_k.unwrap_or(-1),
                                k.digest.map_or(String::new(), |d| format!("{d:x}")),
                                k.watermark.unwrap_or(-1)
                            ]),
                        )
                    })
                    .collect();
                (u.clone(), json!({"shards": s.shards, "topics": topics}))
            })
            .collect();
        Value::Object(users)
    }

    /// Restores `to_json`'s output for the users followed now; malformed parts are dropped.
    pub fn from_json(v: &Value, followed: &[String]) -> Self {
        let mut r = Reader::default();
        for user in followed {
            let Some(u) = v.get(user) else { continue };
            let mut s = UserState {
                shards: u["shards"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(MAX_SHARDS)
                    .map(|x| x.as_i64().unwrap_or(0))
                    .collect(),
                topics: BTreeMap::new(),
                deferrals: BTreeMap::new(),
            };
            for (t, k) in u["topics"]
                .as_object()
                .into_iter()
                .flatten()
                .take(MAX_TOPICS_PER_USER)
            {
                let opt = |x: &Value| x.as_i64().filter(|n| *n >= 0);
                s.topics.insert(
                    t.clone(),
                    Known {
                        seq: k[0].as_i64().unwrap_or(0),
                        live_k: opt(&k[1]),
                        digest: k[2].as_str().and_then(|d| u64::from_str_radix(d, 16).ok()),
                        watermark: opt(&k[3]),
                    },
                );
            }
            r.users.insert(user.clone(), s);
        }
        r
    }
}

/// The topic's entry, created while the user has room for more.
fn track<'a>(state: &'a mut UserState, topic: &str) -> Option<&'a mut Known> {
    if !state.topics.contains_key(topic) && state.topics.len() >= MAX_TOPICS_PER_USER {
        return None;
    }
    Some(state.topics.entry(topic.to_string()).or_default())
}
