//! The subscriber broker's side: what it knows of each followed user's retained values, which index
//! shards and values a sync fetches, and which fetched values it injects (newest wins).

use super::*;
use crate::wire::Message;
use std::collections::BTreeMap;

/// Values (and tombstones) fetched per user in one sync; the rest waits for the next.
pub const MAX_FETCH_PER_SYNC: usize = 128;
/// Topics tracked per followed user; values of further topics are not fetched.
pub const MAX_TOPICS_PER_USER: usize = 16_384;
/// Syncs a value waits for its posts at most: numbers the publisher skipped (a post of unknown
/// outcome at a stop, one twisterd forgot) are never read, so a watermark may stay above what exists.
pub const MAX_DEFERRALS: u32 = 5;

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
    /// Syncs each value waited for its posts so far (not kept across restarts).
    deferrals: BTreeMap<String, u32>,
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

/// What a sync brought, decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// To publish into the broker as retained messages.
    pub messages: Vec<Message>,
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

    /// A sync's result: the messages to publish as retained into the broker, newest wins.
    /// `read_below`: every post of the user below this number has been read (None: not known yet).
    /// A value whose watermark is above it waits: the posts carrying it (or newer) are still to be
    /// read, and it is fetched again by a later sync if they do not bring it.
    pub fn apply(&mut self, synced: Synced, read_below: Option<i64>) -> Applied {
        let state = self.users.entry(synced.user).or_default();
        for e in synced.index_only {
            if let Some(known) = track(state, &e.topic) {
                known.seq = known.seq.max(e.seq);
            }
        }
        let mut out = Applied::default();
        for r in synced.records {
            let posts_unread = r
                .watermark
                .is_some_and(|w| read_below.is_none_or(|below| below < w));
            if posts_unread && r.kind != Kind::Oversize {
                let waited = state.deferrals.entry(r.topic.clone()).or_insert(0);
                *waited += 1;
                if *waited <= MAX_DEFERRALS {
                    out.deferred += 1;
                    continue;
                }
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
            if live_is_newer || known.digest == Some(d) {
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
