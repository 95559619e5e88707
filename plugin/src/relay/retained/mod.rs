//! Retained values in the DHT, the decisions (no I/O, no clock: "now" is given in unix milliseconds).
//!
//! A retained publish on a public route is posted as every forward is, and also kept as the publisher's
//! retained value in its own DHT "s" resources, so that a broker that starts later, or was down when a
//! value was cleared, finds it:
//! - one value resource per topic, `mqtv<26 base32 chars of a 128-bit hash of the topic>` (30 bytes,
//!   under twisterd's 32): `{"t": topic, "s": seq, "q": qos, "w": watermark, "c": "v"|"c"|"o",
//!   "x": text | "b": base64}`; `c` is `v` (a value), `c` (cleared: a tombstone) or `o` (a value too
//!   large for one DHT item: not stored, so a reader never takes an older value for the newest);
//! - index shards `mqti<n>`: `{"e": [[topic, seq, kind], ...]}`, filled in order, each within 8 KB;
//! - the index root `mqti`: `{"n": [seq of shard 0, seq of shard 1, ...]}`, so a reader reads only the
//!   shards that changed since it last read them.
//!
//! Only strings and integers are written (twisterd turns booleans, floats and null into
//! `"<uninitialized>"`). Sequence numbers grow with the clock (seconds since 2024) and by one at least,
//! so a publisher that lost its state file still writes above what it wrote before, and they stay in
//! twisterd's 32-bit `seq`.
//!
//! Newest wins by the publisher's sequence. The live path (posts) carries no sequence, so a value
//! records a *watermark*: the publisher's next post number when it was written, with every message
//! taken before it already posted. A reader that injected a live retained message from post `k`
//! takes a DHT value only when `k < watermark` (the live one is older), and treats a live message
//! from a post below the watermark of a value it took as stale (injected without the retain flag).
//! A value also carries the id of the message that set it (`"i": [epoch, seq]`, absent from older
//! writers): a reader that handed the live copy on skips the value, and one that injects the value
//! first records the id, so the live copy is dropped as a duplicate (`crate::dedup`).
//!
//! - `writer`: what to write, when (per-resource interval, coalescing to the newest), index layout.
//! - `reader`: what a subscriber broker knows, which shards and values to fetch, newest wins.

pub mod reader;
pub mod writer;

#[cfg(test)]
mod reader_tests;
#[cfg(test)]
mod writer_tests;

use crate::wire::MessageId;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// The index root's resource name.
pub const ROOT: &str = "mqti";
const SHARD_PREFIX: &str = "mqti";
const VALUE_PREFIX: &str = "mqtv";
/// Index shards at most (the root lists one seq per shard).
pub const MAX_SHARDS: usize = 64;
/// Entries a reader accepts in one shard.
pub const MAX_SHARD_ENTRIES: usize = 2048;
/// Longest topic kept in the DHT (longer ones are forwarded, not stored).
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Sequence numbers count seconds from here (2024-01-01 UTC): far from twisterd's 32-bit limit.
const SEQ_EPOCH_S: i64 = 1_704_067_200;

/// What a topic's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Value,
    Cleared,
    /// Too large for one DHT item: not stored.
    Oversize,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Value => "v",
            Kind::Cleared => "c",
            Kind::Oversize => "o",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "v" => Some(Kind::Value),
            "c" => Some(Kind::Cleared),
            "o" => Some(Kind::Oversize),
            _ => None,
        }
    }
}

/// One topic in an index shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub topic: String,
    pub seq: i64,
    pub kind: Kind,
}

/// A value resource, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub seq: i64,
    pub kind: Kind,
    pub qos: u8,
    /// The publisher's next post number when written, every earlier message posted; None: unordered.
    pub watermark: Option<i64>,
    /// The id of the message that set it (its live copy carries the same), None from older writers.
    pub id: Option<MessageId>,
    pub payload: Vec<u8>,
}

pub fn shard_name(index: usize) -> String {
    format!("{SHARD_PREFIX}{index}")
}

/// FNV-1a over 128 bits: a stable name per topic (not a defence: only the owner writes its resources,
/// and a reader checks the topic inside the value).
fn hash128(bytes: &[u8]) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in bytes {
        h ^= u128::from(*b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

/// The value resource of `topic`: 4 + 26 characters.
pub fn value_name(topic: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut h = hash128(topic.as_bytes());
    let mut name = String::from(VALUE_PREFIX);
    for _ in 0..26 {
        name.push(char::from(ALPHABET[(h & 31) as usize]));
        h >>= 5;
    }
    name
}

/// A short digest of a payload, to tell the same value from another without keeping it.
pub fn digest(payload: &[u8]) -> u64 {
    let h = hash128(payload);
    (h as u64) ^ ((h >> 64) as u64)
}

/// The next sequence number of a resource last written with `last`: above it, and at least the clock.
pub fn next_seq(last: i64, now_ms: u64) -> i64 {
    let clock = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX) - SEQ_EPOCH_S;
    (last + 1).max(clock).min(i64::from(i32::MAX))
}

/// Text when the payload is UTF-8 without control characters (it then goes raw through JSON-RPC),
/// base64 otherwise.
fn payload_field(payload: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(payload) {
        Ok(s) if !s.chars().any(|c| c.is_control()) => ("x", s.to_string()),
        _ => ("b", B64.encode(payload)),
    }
}

/// The value resource's content.
pub fn encode_record(r: &Record) -> Value {
    let mut v = json!({
        "t": r.topic,
        "s": r.seq,
        "q": r.qos,
        "w": r.watermark.unwrap_or(-1),
        "c": r.kind.code(),
    });
    if let Some(id) = r.id {
        v["i"] = json!([id.epoch, id.seq]);
    }
    if r.kind == Kind::Value {
        let (key, text) = payload_field(&r.payload);
        v[key] = Value::String(text);
    }
    v
}

/// True when `value` fits one DHT "s" item as twisterd measures it.
pub fn fits(value: &Value) -> bool {
    twister_rules::dht_value_size(value, true) <= twister_rules::MAX_DHT_SINGLE
}

fn int(v: &Value, key: &str) -> Result<i64, String> {
    v.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("no integer '{key}'"))
}

/// A value resource read from the DHT (untrusted): checked against the topic it was fetched for.
pub fn decode_record(v: &Value, topic: &str) -> Result<Record, String> {
    let t = v.get("t").and_then(Value::as_str).ok_or("no topic")?;
    if t != topic {
        return Err(format!("holds topic {t:?}, not {topic:?}"));
    }
    let seq = int(v, "s")?;
    let qos = u8::try_from(int(v, "q")?)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or("bad qos")?;
    let watermark = Some(int(v, "w")?).filter(|w| *w >= 0);
    let id = match v.get("i") {
        None => None,
        Some(i) => match i.as_array().map(Vec::as_slice) {
            Some([epoch, seq]) => Some(MessageId {
                epoch: epoch.as_u64().ok_or("bad id")?,
                seq: seq.as_u64().ok_or("bad id")?,
            }),
            _ => return Err("bad id".into()),
        },
    };
    let kind = v
        .get("c")
        .and_then(Value::as_str)
        .and_then(Kind::parse)
        .ok_or("bad kind")?;
    let payload = match kind {
        Kind::Value => match (v.get("x"), v.get("b")) {
            (Some(Value::String(x)), None) => x.as_bytes().to_vec(),
            (None, Some(Value::String(b))) => B64.decode(b).map_err(|_| "bad base64")?,
            _ => return Err("no payload".into()),
        },
        Kind::Cleared | Kind::Oversize => Vec::new(),
    };
    if kind == Kind::Value && payload.is_empty() {
        return Err("an empty value (a clear is written as one)".into());
    }
    Ok(Record {
        topic: t.to_string(),
        seq,
        kind,
        qos,
        watermark,
        id,
        payload,
    })
}

pub fn encode_shard(entries: &[IndexEntry]) -> Value {
    let e: Vec<Value> = entries
        .iter()
        .map(|e| json!([e.topic, e.seq, e.kind.code()]))
        .collect();
    json!({ "e": e })
}

/// An index shard read from the DHT; malformed entries are skipped and counted.
pub fn decode_shard(v: &Value) -> Result<(Vec<IndexEntry>, usize), String> {
    let list = v.get("e").and_then(Value::as_array).ok_or("no entries")?;
    if list.len() > MAX_SHARD_ENTRIES {
        return Err(format!(
            "{} entries (at most {MAX_SHARD_ENTRIES})",
            list.len()
        ));
    }
    let mut bad = 0;
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let parsed = e.as_array().and_then(|a| match a.as_slice() {
            [t, s, k] => Some(IndexEntry {
                topic: t.as_str()?.to_string(),
                seq: s.as_i64()?,
                kind: Kind::parse(k.as_str()?)?,
            }),
            _ => None,
        });
        match parsed {
            Some(e)
                if crate::topic::is_injectable(&e.topic) && e.topic.len() <= MAX_TOPIC_BYTES =>
            {
                out.push(e)
            }
            _ => bad += 1,
        }
    }
    Ok((out, bad))
}

pub fn encode_root(shard_seqs: &[i64]) -> Value {
    json!({ "n": shard_seqs })
}

pub fn decode_root(v: &Value) -> Result<Vec<i64>, String> {
    let list = v
        .get("n")
        .and_then(Value::as_array)
        .ok_or("no shard list")?;
    if list.len() > MAX_SHARDS {
        return Err(format!("{} shards (at most {MAX_SHARDS})", list.len()));
    }
    list.iter()
        .map(|s| {
            s.as_i64()
                .ok_or_else(|| "a shard seq is not an integer".to_string())
        })
        .collect()
}
