//! The publisher's side: which retained values to write to the DHT and when. A burst on one topic is
//! coalesced to its newest value; each resource is written at most once per interval, and all puts
//! together at most `MAX_PUTS_PER_SECOND`; values are written before the shard that lists them and
//! shards before the root, so a reader that sees a new index entry finds its value.

use super::*;
use std::collections::BTreeMap;

/// Puts per second at most, all resources together: each put makes twisterd look up and store on
/// the closest DHT nodes, and re-put every minute until it reads it back.
pub const MAX_PUTS_PER_SECOND: usize = 20;
/// How long a value waits for the publisher's posts to drain (so it gets a watermark) before it is
/// written without one.
pub const ORDER_WAIT_MS: u64 = 10_000;
/// Resources are written again after this long: twisterd expires items of names it does not know
/// about 2016 blocks (two weeks) after they were put.
pub const REFRESH_AFTER_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Value,
    Shard(usize),
    Root,
}

/// One `dhtput` to make, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Put {
    pub target: Target,
    pub resource: String,
    pub seq: i64,
    /// What to write; `None`: read the value the DHT holds and write it again under `seq` (a refresh).
    pub value: Option<Value>,
    /// The topic of a value put.
    pub topic: Option<String>,
}

/// Why a retained value is not kept in the DHT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TopicTooLong,
    IndexFull,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub values: u64,
    pub clears: u64,
    /// Values too large for one DHT item (written as `Kind::Oversize`).
    pub oversize: u64,
    /// Values replaced by a newer one before they were written.
    pub coalesced: u64,
    pub refused: u64,
    pub refreshed: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Pending {
    payload: Vec<u8>,
    qos: u8,
    id: Option<MessageId>,
    since_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct TopicState {
    seq: i64,
    shard: usize,
    kind: Kind,
    written_ms: u64,
    pending: Option<Pending>,
    /// A value put that failed, sent again when the interval allows.
    retry: Option<Put>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Shard {
    seq: i64,
    written_ms: u64,
    topics: Vec<String>,
    bytes: usize,
    dirty: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Writer {
    interval_ms: u64,
    topics: BTreeMap<String, TopicState>,
    shards: Vec<Shard>,
    root_seq: i64,
    root_written_ms: u64,
    root_dirty: bool,
    window_start_ms: u64,
    window_puts: usize,
    pub counters: Counters,
}

/// Bytes one index entry of `topic` takes in a shard, its seq at the largest twisterd keeps.
fn entry_bytes(topic: &str) -> usize {
    use twister_rules::{bint_len, bstr_len};
    2 + bstr_len(topic.len()) + bint_len(i64::from(i32::MAX)) + bstr_len(1)
}

fn shard_overhead() -> usize {
    twister_rules::dht_value_size(&encode_shard(&[]), true)
}

impl Writer {
    pub fn new(interval_ms: u64) -> Self {
        Writer {
            interval_ms,
            topics: BTreeMap::new(),
            shards: Vec::new(),
            root_seq: 0,
            root_written_ms: 0,
            root_dirty: false,
            window_start_ms: 0,
            window_puts: 0,
            counters: Counters::default(),
        }
    }

    /// A retained publish on a public route (an empty payload clears the topic), without an id.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        self.publish_message(topic, payload, qos, None, now_ms)
    }

    /// A retained publish on a public route, with the id its posts carry (kept in the value, so a
    /// reader that got the live copy recognises it).
    pub fn publish_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        id: Option<MessageId>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        if topic.len() > MAX_TOPIC_BYTES {
            self.counters.refused += 1;
            return Err(Refusal::TopicTooLong);
        }
        if !self.topics.contains_key(topic) {
            let shard = self.place(topic).ok_or_else(|| {
                self.counters.refused += 1;
                Refusal::IndexFull
            })?;
            self.topics.insert(
                topic.to_string(),
                TopicState {
                    seq: 0,
                    shard,
                    kind: Kind::Cleared,
                    written_ms: 0,
                    pending: None,
                    retry: None,
                },
            );
        }
        let Some(t) = self.topics.get_mut(topic) else {
            return Ok(());
        };
        let since_ms = match t.pending.take() {
            Some(p) => {
                self.counters.coalesced += 1;
                p.since_ms
            }
            None => now_ms,
        };
        t.retry = None;
        t.pending = Some(Pending {
            payload: payload.to_vec(),
            qos,
            id,
            since_ms,
        });
        Ok(())
    }

    /// The shard a new topic goes to: the last one while it has room, else a new one.
    fn place(&mut self, topic: &str) -> Option<usize> {
        let need = entry_bytes(topic);
        let limit = twister_rules::MAX_DHT_SINGLE;
        if let Some(last) = self.shards.len().checked_sub(1) {
            let s = &mut self.shards[last];
            if shard_overhead() + s.bytes + need <= limit {
                s.bytes += need;
                s.topics.push(topic.to_string());
                return Some(last);
            }
        }
        if self.shards.len() >= MAX_SHARDS || shard_overhead() + need > limit {
            return None;
        }
        self.shards.push(Shard {
            bytes: need,
            topics: vec![topic.to_string()],
            ..Shard::default()
        });
        self.root_dirty = true;
        Some(self.shards.len() - 1)
    }

    fn writable(&self, written_ms: u64, now_ms: u64, force: bool) -> bool {
        force || now_ms >= written_ms.saturating_add(self.interval_ms)
    }

    /// Room in this second's put budget.
    fn room(&mut self, now_ms: u64, force: bool) -> bool {
        if now_ms >= self.window_start_ms.saturating_add(1000) {
            self.window_start_ms = now_ms;
            self.window_puts = 0;
        }
        if force || self.window_puts < MAX_PUTS_PER_SECOND {
            self.window_puts += 1;
            true
        } else {
            false
        }
    }

    /// The puts due now, in order. `watermark`: our next post number when every message taken so far
    /// is posted, else None. `force` (at shutdown) ignores intervals, the rate and the wait for order.
    pub fn take_puts(&mut self, now_ms: u64, watermark: Option<i64>, force: bool) -> Vec<Put> {
        let mut puts = Vec::new();
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for topic in names {
            let Some(t) = self.topics.get(&topic) else {
                continue;
            };
            if !self.writable(t.written_ms, now_ms, force) {
                continue;
            }
            let ordered_or_late = |p: &Pending| {
                watermark.is_some() || force || now_ms >= p.since_ms.saturating_add(ORDER_WAIT_MS)
            };
            let stale = now_ms >= t.written_ms.saturating_add(REFRESH_AFTER_MS);
            let wants = match (&t.pending, &t.retry) {
                (Some(p), _) => ordered_or_late(p),
                (None, Some(_)) => true,
                (None, None) => stale && t.seq > 0 && t.kind != Kind::Oversize,
            };
            if !wants || !self.room(now_ms, force) {
                continue;
            }
            if let Some(put) = self.value_put(&topic, now_ms, watermark) {
                puts.push(put);
            }
        }
        for (i, s) in self.shards.iter_mut().enumerate() {
            let stale = now_ms >= s.written_ms.saturating_add(REFRESH_AFTER_MS) && s.seq > 0;
            if !(s.dirty || stale) || !(force || now_ms >= s.written_ms + self.interval_ms) {
                continue;
            }
            s.seq = next_seq(s.seq, now_ms);
            s.written_ms = now_ms;
            s.dirty = false;
            let entries: Vec<IndexEntry> = s
                .topics
                .iter()
                .filter_map(|t| {
                    let st = self.topics.get(t)?;
                    (st.seq > 0).then(|| IndexEntry {
                        topic: t.clone(),
                        seq: st.seq,
                        kind: st.kind,
                    })
                })
                .collect();
            puts.push(Put {
                target: Target::Shard(i),
                resource: shard_name(i),
                seq: s.seq,
                value: Some(encode_shard(&entries)),
                topic: None,
            });
            self.root_dirty = true;
        }
        let root_stale =
            now_ms >= self.root_written_ms.saturating_add(REFRESH_AFTER_MS) && self.root_seq > 0;
        let shards_written = self.shards.iter().all(|s| s.seq > 0);
        if (self.root_dirty || root_stale)
            && shards_written
            && self.writable(self.root_written_ms, now_ms, force)
        {
            self.root_seq = next_seq(self.root_seq, now_ms);
            self.root_written_ms = now_ms;
            self.root_dirty = false;
            let seqs: Vec<i64> = self.shards.iter().map(|s| s.seq).collect();
            puts.push(Put {
                target: Target::Root,
                resource: ROOT.into(),
                seq: self.root_seq,
                value: Some(encode_root(&seqs)),
                topic: None,
            });
        }
        puts
    }

    /// The put of one topic's value (pending, a retry, or a refresh), its index entry marked for writing.
    fn value_put(&mut self, topic: &str, now_ms: u64, watermark: Option<i64>) -> Option<Put> {
        let t = self.topics.get_mut(topic)?;
        let seq = next_seq(t.seq, now_ms);
        let put = if let Some(p) = t.pending.take() {
            let kind = if p.payload.is_empty() {
                Kind::Cleared
            } else {
                Kind::Value
            };
            let mut record = Record {
                topic: topic.to_string(),
                seq,
                kind,
                qos: p.qos,
                watermark,
                id: p.id,
                payload: p.payload,
            };
            let mut value = encode_record(&record);
            if !fits(&value) {
                record.kind = Kind::Oversize;
                record.payload.clear();
                value = encode_record(&record);
                self.counters.oversize += 1;
            } else if kind == Kind::Cleared {
                self.counters.clears += 1;
            } else {
                self.counters.values += 1;
            }
            t.kind = record.kind;
            Put {
                target: Target::Value,
                resource: value_name(topic),
                seq,
                value: Some(value),
                topic: Some(topic.to_string()),
            }
        } else if let Some(mut retry) = t.retry.take() {
            // The value keeps its content; the seq moves on (the failed put may have been stored).
            if let Some(v) = retry.value.as_mut() {
                v["s"] = json!(seq);
            }
            retry.seq = seq;
            retry
        } else {
            self.counters.refreshed += 1;
            Put {
                target: Target::Value,
                resource: value_name(topic),
                seq,
                value: None,
                topic: Some(topic.to_string()),
            }
        };
        t.seq = seq;
        t.written_ms = now_ms;
        let shard = t.shard;
        if let Some(s) = self.shards.get_mut(shard) {
            s.dirty = true;
        }
        Some(put)
    }

    /// Puts twisterd did not take (no answer, or an error): written again after the interval.
    pub fn failed(&mut self, puts: Vec<Put>, now_ms: u64) {
        for put in puts {
            match put.target {
                Target::Value => {
                    let Some(t) = put.topic.as_ref().and_then(|n| self.topics.get_mut(n)) else {
                        continue;
                    };
                    t.written_ms = now_ms;
                    if t.pending.is_none() && put.value.is_some() {
                        t.retry = Some(put);
                    }
                }
                Target::Shard(i) => {
                    if let Some(s) = self.shards.get_mut(i) {
                        s.dirty = true;
                        s.written_ms = now_ms;
                    }
                }
                Target::Root => {
                    self.root_dirty = true;
                    self.root_written_ms = now_ms;
                }
            }
        }
    }

    /// When `take_puts` may next have something to do (None: nothing pending).
    pub fn next_due(&self) -> Option<u64> {
        let mut due: Option<u64> = None;
        let mut at = |t: u64| due = Some(due.map_or(t, |d| d.min(t)));
        for t in self.topics.values() {
            if t.pending.is_some() || t.retry.is_some() {
                at(t.written_ms.saturating_add(self.interval_ms));
            }
        }
        for s in self.shards.iter().filter(|s| s.dirty) {
            at(s.written_ms.saturating_add(self.interval_ms));
        }
        if self.root_dirty {
            at(self.root_written_ms.saturating_add(self.interval_ms));
        }
        due
    }

    pub fn has_pending(&self) -> bool {
        self.root_dirty
            || self.shards.iter().any(|s| s.dirty)
            || self
                .topics
                .values()
                .any(|t| t.pending.is_some() || t.retry.is_some())
    }

    /// What the state file keeps: sequence numbers, shard layout and write times (not pending values).
    pub fn to_json(&self) -> Value {
        let topics: serde_json::Map<String, Value> = self
            .topics
            .iter()
            .filter(|(_, t)| t.seq > 0)
            .map(|(n, t)| {
                (
                    n.clone(),
                    json!([t.seq, t.shard, t.kind.code(), t.written_ms]),
                )
            })
            .collect();
        let shards: Vec<Value> = self
            .shards
            .iter()
            .map(|s| json!([s.seq, s.written_ms, s.topics]))
            .collect();
        json!({"topics": topics, "shards": shards, "root": [self.root_seq, self.root_written_ms]})
    }

    /// Restores `to_json`'s output; anything malformed starts that part afresh.
    pub fn from_json(v: &Value, interval_ms: u64) -> Self {
        let mut w = Writer::new(interval_ms);
        if let Some([seq, at]) = v
            .get("root")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .and_then(|a| <&[Value; 2]>::try_from(a).ok())
        {
            w.root_seq = seq.as_i64().unwrap_or(0);
            w.root_written_ms = at.as_u64().unwrap_or(0);
        }
        for s in v
            .get("shards")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(MAX_SHARDS)
        {
            let topics: Vec<String> = s[2]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from))
                .collect();
            w.shards.push(Shard {
                seq: s[0].as_i64().unwrap_or(0),
                written_ms: s[1].as_u64().unwrap_or(0),
                bytes: topics.iter().map(|t| entry_bytes(t)).sum(),
                topics,
                dirty: false,
            });
        }
        for (name, t) in v
            .get("topics")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let shard = t[1].as_u64().and_then(|s| usize::try_from(s).ok());
            let listed =
                shard.is_some_and(|s| w.shards.get(s).is_some_and(|sh| sh.topics.contains(name)));
            let (Some(seq), Some(shard), Some(kind)) =
                (t[0].as_i64(), shard, t[2].as_str().and_then(Kind::parse))
            else {
                continue;
            };
            if !listed {
                continue;
            }
            w.topics.insert(
                name.clone(),
                TopicState {
                    seq,
                    shard,
                    kind,
                    written_ms: t[3].as_u64().unwrap_or(0),
                    pending: None,
                    retry: None,
                },
            );
        }
        // A shard listing a topic the file does not describe is written again without it.
        for s in &mut w.shards {
            let before = s.topics.len();
            s.topics.retain(|t| w.topics.contains_key(t));
            if s.topics.len() != before {
                s.bytes = s.topics.iter().map(|t| entry_bytes(t)).sum();
                s.dirty = true;
            }
        }
        w
    }
}
