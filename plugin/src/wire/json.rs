//! The JSON formats a post or DM carries, and the types every format decodes into. Two are read here: the 2014 proof-of-concept's one message per post,
//! `{"topic": .., "payload": <base64>, "qos": n}`, and the project's envelope, version 1:
//!
//! `{"v":1,"s":<sequence>,"m":[{"t":<topic>,"p":<base64>,"q":<qos>[,"r":1]}, ...]}`
//!
//! `s` numbers the posts of one sender (it also keeps two DMs from ever having the same text, which
//! twisterd would store once); `m` is a batch. Readers ignore members they do not know, so message ids
//! and acknowledgements can be added later without breaking them: an item's optional `"i":[epoch,seq]`
//! is its message id (`MessageId`; readers older than ids skip it, posts older than ids lack it). The text is pure ASCII (every
//! non-ASCII character, `@` and `#` escaped), so its byte length is its size in a post and it never
//! triggers Twister's mentions or hashtags.

pub use mqtt_twister_wire::MessageId;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("not JSON")]
    NotJson,
    #[error("not a forwarded MQTT message")]
    NotMqtt,
    #[error("envelope version {0} is newer than this plugin reads")]
    Version(i64),
    #[error("message {0}: {1}")]
    Item(usize, &'static str),
    #[error("{0} bytes: longer than any post or DM")]
    TooLong(usize),
    #[error("more than {MAX_ITEMS} messages in one post")]
    TooManyItems,
    #[error("dense envelope: {0}")]
    Dense(mqtt_twister_wire::WireError),
}

/// Longest text read from the network: a post or DM holds about 2 KB, so a longer one is not ours.
pub const MAX_TEXT_BYTES: usize = 16 << 10;
/// Most items read from one text (a post holds about a hundred of the smallest).
pub const MAX_ITEMS: usize = 512;

pub const ENVELOPE_CLOSE: &str = "]}";

/// Appends `s` as a JSON string using ASCII only.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' if c != '@' && c != '#' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Length of `s` as `push_json_string` writes it, quotes excluded.
fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            ' '..='~' if c != '@' && c != '#' => 1,
            c => 6 * c.len_utf16(),
        })
        .sum()
}

/// One batch item without an id.
pub fn encode_item(m: &Message) -> String {
    encode_item_with_id(m, None)
}

fn push_id(s: &mut String, id: Option<MessageId>) {
    if let Some(id) = id {
        s.push_str(&format!(",\"i\":[{},{}]", id.epoch, id.seq));
    }
}

/// One batch item, encoded once when the message is queued.
pub fn encode_item_with_id(m: &Message, id: Option<MessageId>) -> String {
    let mut s = String::with_capacity(m.topic.len() + m.payload.len() * 4 / 3 + 32);
    s.push_str("{\"t\":");
    push_json_string(&mut s, &m.topic);
    // Text payloads travel as text when that is shorter than base64 (it is for plain ASCII):
    // Twister's post budget makes every byte count.
    match std::str::from_utf8(&m.payload) {
        Ok(text) if escaped_len(text) <= m.payload.len().div_ceil(3) * 4 => {
            s.push_str(",\"x\":");
            push_json_string(&mut s, text);
        }
        _ => {
            s.push_str(",\"p\":\"");
            B64.encode_string(&m.payload, &mut s);
            s.push('"');
        }
    }
    s.push_str(",\"q\":");
    s.push(char::from(b'0' + m.qos.min(2)));
    if m.retain {
        s.push_str(",\"r\":1");
    }
    push_id(&mut s, id);
    s.push('}');
    s
}

pub fn envelope_open(seq: u64) -> String {
    format!("{{\"v\":1,\"s\":{seq},\"m\":[")
}

/// The envelope's size around `n` items of `items_len` bytes in all.
pub fn envelope_size(seq: u64, n: usize, items_len: usize) -> usize {
    envelope_open(seq).len() + items_len + n.saturating_sub(1) + ENVELOPE_CLOSE.len()
}

/// Joins encoded items into one envelope text.
pub fn envelope<'a>(seq: u64, items: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = envelope_open(seq);
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push_str(ENVELOPE_CLOSE);
    s
}

/// The message inside a queued item of either format (a v1 batch item or a proof-of-concept text).
pub fn item_message(item: &str) -> Option<Item> {
    let one =
        |v: Result<Vec<Item>, WireError>| v.ok().filter(|m| m.len() == 1).and_then(|mut m| m.pop());
    // Our own queue: whole messages up to plugin_opt_max_message_bytes, beyond MAX_TEXT_BYTES.
    one(parse_items(item)).or_else(|| one(parse_items(&envelope(0, [item]))))
}

/// A part of a message too large for one post: `"f":[id,index,count]` in a v1 item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fragment {
    pub id: u64,
    pub index: u32,
    pub count: u32,
}

/// A decoded item: a whole message, or one fragment of one (its payload is then the fragment's part).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub message: Message,
    pub fragment: Option<Fragment>,
    /// The message's id at its sender (a fragment carries its whole message's); None from writers
    /// older than ids and in the poc format.
    pub id: Option<MessageId>,
}

/// Most fragments one message may be cut into.
pub const MAX_FRAGMENTS: u32 = 100_000;

/// Cuts `m` (of id `message_id`) into v1 items of at most `max_item` bytes each, numbered `id`; None
/// when even an empty fragment would not fit.
pub fn encode_fragments(
    m: &Message,
    id: u64,
    max_item: usize,
    message_id: Option<MessageId>,
) -> Option<Vec<String>> {
    let item_with = |part: &[u8], index: u32, count: u32| {
        let mut s = String::from("{\"t\":");
        push_json_string(&mut s, &m.topic);
        s.push_str(",\"p\":\"");
        B64.encode_string(part, &mut s);
        s.push_str(&format!("\",\"q\":{}", m.qos.min(2)));
        if m.retain {
            s.push_str(",\"r\":1");
        }
        s.push_str(&format!(",\"f\":[{id},{index},{count}]"));
        push_id(&mut s, message_id);
        s.push('}');
        s
    };
    let overhead = item_with(&[], MAX_FRAGMENTS - 1, MAX_FRAGMENTS).len();
    let chunk = max_item.checked_sub(overhead)? / 4 * 3;
    if chunk == 0 {
        return None;
    }
    let parts: Vec<&[u8]> = m.payload.chunks(chunk).collect();
    let count = u32::try_from(parts.len())
        .ok()
        .filter(|c| *c <= MAX_FRAGMENTS)?;
    Some(
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| item_with(p, i as u32, count))
            .collect(),
    )
}

/// The proof-of-concept's format: one message, no retain flag.
pub fn encode_poc(m: &Message) -> String {
    let mut s = String::from("{\"topic\":");
    push_json_string(&mut s, &m.topic);
    s.push_str(",\"payload\":\"");
    B64.encode_string(&m.payload, &mut s);
    s.push_str(&format!("\",\"qos\":{}}}", m.qos.min(2)));
    s
}

fn item(
    v: &Value,
    i: usize,
    topic_key: &str,
    payload_key: &str,
    qos_key: &str,
    retain_key: &str,
) -> Result<Item, WireError> {
    let topic = v
        .get(topic_key)
        .and_then(Value::as_str)
        .ok_or(WireError::Item(i, "no topic"))?;
    let bad_b64 = WireError::Item(i, "payload is not base64");
    let payload = match (v.get(payload_key), v.get("x")) {
        (Some(p), None) => B64
            .decode(p.as_str().ok_or(bad_b64.clone())?)
            .map_err(|_| bad_b64)?,
        // The envelope's text payload (not in the proof-of-concept's format).
        (None, Some(x)) if payload_key == "p" => x
            .as_str()
            .ok_or(WireError::Item(i, "text payload is not a string"))?
            .as_bytes()
            .to_vec(),
        _ => return Err(WireError::Item(i, "no payload")),
    };
    let qos = match v.get(qos_key) {
        None => 0,
        Some(q) => q
            .as_u64()
            .filter(|q| *q <= 2)
            .ok_or(WireError::Item(i, "qos is not 0, 1 or 2"))? as u8,
    };
    let retain = match v.get(retain_key) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(r) => r.as_u64().ok_or(WireError::Item(i, "bad retain flag"))? != 0,
    };
    let fragment = match v.get("f") {
        None => None,
        Some(f) => Some(fragment_of(f).ok_or(WireError::Item(i, "bad fragment"))?),
    };
    // Only in v1 items: the poc format has none (its `topic` key tells it apart).
    let id = match v.get("i").filter(|_| topic_key == "t") {
        None => None,
        Some(id) => Some(id_of(id).ok_or(WireError::Item(i, "bad message id"))?),
    };
    Ok(Item {
        message: Message {
            topic: topic.to_string(),
            payload,
            qos,
            retain,
        },
        fragment,
        id,
    })
}

/// `[epoch, seq]`, two unsigned integers; nothing else.
fn id_of(v: &Value) -> Option<MessageId> {
    let [epoch, seq] = v.as_array()?.as_slice() else {
        return None;
    };
    Some(MessageId {
        epoch: epoch.as_u64()?,
        seq: seq.as_u64()?,
    })
}

/// `[id, index, count]` with `index < count <= MAX_FRAGMENTS`; nothing else.
fn fragment_of(f: &Value) -> Option<Fragment> {
    let [id, index, count] = f.as_array()?.as_slice() else {
        return None;
    };
    let count = u32::try_from(count.as_u64()?).ok()?;
    let index = u32::try_from(index.as_u64()?).ok()?;
    (index < count && count <= MAX_FRAGMENTS).then_some(Fragment {
        id: id.as_u64()?,
        index,
        count,
    })
}

/// Reads a JSON text: an envelope of version 1 or a proof-of-concept message.
pub(super) fn parse_items(text: &str) -> Result<Vec<Item>, WireError> {
    // serde_json refuses nesting deeper than 128 levels: no recursion without bound.
    let v: Value = serde_json::from_str(text).map_err(|_| WireError::NotJson)?;
    if !v.is_object() {
        return Err(WireError::NotMqtt);
    }
    if let Some(version) = v.get("v") {
        let version = version.as_i64().ok_or(WireError::NotMqtt)?;
        if version != 1 {
            return Err(WireError::Version(version));
        }
        let items = v
            .get("m")
            .and_then(Value::as_array)
            .ok_or(WireError::NotMqtt)?;
        if items.len() > MAX_ITEMS {
            return Err(WireError::TooManyItems);
        }
        return items
            .iter()
            .enumerate()
            .map(|(i, it)| item(it, i, "t", "p", "q", "r"))
            .collect();
    }
    if v.get("topic").is_some() {
        let poc = item(&v, 0, "topic", "payload", "qos", "retain")?;
        if poc.fragment.is_some() {
            return Err(WireError::NotMqtt);
        }
        return Ok(vec![poc]);
    }
    Err(WireError::NotMqtt)
}

#[cfg(test)]
#[path = "json_tests.rs"]
pub(super) mod tests;
