//! The receipts resource: what a receiver writes, in its own DHT "s" resource per sender, about the
//! messages of that sender it handed to its broker.
//!
//! Name: `mqtt_ack_<sender>` (at most 25 bytes: Twister names have at most 16, resources 32).
//! Value: `{"v":1,"e":[[<epoch>,"<ranges>"], ...]}`, one pair per sender epoch (oldest first), the
//! ranges in `crate::ranges`' compact text. Only strings, integers and arrays: the DHT bencodes values.
//! The encoder keeps the whole signed value within Twister's 8 KB (the oldest epochs, then the lowest
//! ranges go first: a sender forgets a message once it saw it acknowledged, so what was read before is
//! no longer needed); the decoder treats the value as untrusted (bounded, never panics).

use crate::ranges::RangeSet;
use serde_json::{json, Value};

pub use crate::bus::Acks;

pub const RESOURCE_PREFIX: &str = "mqtt_ack_";
pub const VERSION: i64 = 1;
/// Epochs kept per sender (in memory and in the resource); older ones are forgotten.
pub const MAX_EPOCHS: usize = 16;
/// Ranges kept per epoch; one more joins the two lowest (`RangeSet`'s bound: the gap between them
/// counts as acknowledged, as the receiver's duplicate filter then counts it as seen).
pub const MAX_RANGES: usize = 1024;

/// An empty set of acknowledged seqs, bounded.
pub fn empty() -> RangeSet {
    RangeSet::new(MAX_RANGES)
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReceiptError {
    #[error("not a receipts value")]
    NotReceipts,
    #[error("receipts version {0} is newer than this plugin reads")]
    Version(i64),
    #[error("more than {MAX_EPOCHS} epochs")]
    TooManyEpochs,
    #[error("epoch {0}: malformed ranges")]
    Ranges(u64),
}

/// The resource a receiver acknowledges `sender`'s messages in.
pub fn resource(sender: &str) -> String {
    format!("{RESOURCE_PREFIX}{sender}")
}

fn value_of(acks: &Acks) -> Value {
    let epochs: Vec<Value> = acks
        .iter()
        .filter(|(_, set)| !set.is_empty())
        .map(|(epoch, set)| json!([epoch, set.to_text()]))
        .collect();
    json!({"v": VERSION, "e": epochs})
}

/// The size of `acks` as a DHT value, unbounded (tests).
#[cfg(test)]
pub fn value_size(acks: &Acks) -> usize {
    twister_rules::dht_value_size(&value_of(acks), true)
}

fn fits(value: &Value) -> bool {
    twister_rules::dht_value_size(value, true) <= twister_rules::MAX_DHT_SINGLE
}

/// The value to write: every epoch's ranges when they fit in a DHT "s" value, else the newest part
/// that does (see the module's comment).
pub fn encode(acks: &Acks) -> Value {
    let value = value_of(acks);
    if fits(&value) {
        return value;
    }
    let mut kept: Acks = acks
        .iter()
        .rev()
        .take(MAX_EPOCHS)
        .map(|(e, s)| (*e, s.clone()))
        .collect();
    loop {
        let value = value_of(&kept);
        if fits(&value) {
            return value;
        }
        if kept.len() > 1 {
            kept.pop_first();
            continue;
        }
        // One epoch too large: keep the newer half of its ranges.
        let Some(mut entry) = kept.first_entry() else {
            return value;
        };
        let set = entry.get_mut();
        let ranges: Vec<(u64, u64)> = set.iter().collect();
        let mut newer = empty();
        for (lo, hi) in &ranges[ranges.len() / 2..] {
            newer.insert_range(*lo, *hi);
        }
        if newer.len() == set.len() {
            return value;
        }
        *set = newer;
    }
}

/// Reads a receipts value written by `encode` (by any receiver: untrusted).
pub fn decode(value: &Value) -> Result<Acks, ReceiptError> {
    let obj = value.as_object().ok_or(ReceiptError::NotReceipts)?;
    let version = obj
        .get("v")
        .and_then(Value::as_i64)
        .ok_or(ReceiptError::NotReceipts)?;
    if version > VERSION {
        return Err(ReceiptError::Version(version));
    }
    let epochs = obj
        .get("e")
        .and_then(Value::as_array)
        .ok_or(ReceiptError::NotReceipts)?;
    if epochs.len() > MAX_EPOCHS {
        return Err(ReceiptError::TooManyEpochs);
    }
    let mut acks = Acks::new();
    for pair in epochs {
        let (Some(epoch), Some(text)) = (
            pair.get(0).and_then(Value::as_u64),
            pair.get(1).and_then(Value::as_str),
        ) else {
            return Err(ReceiptError::NotReceipts);
        };
        let set = RangeSet::from_text(text, MAX_RANGES).map_err(|_| ReceiptError::Ranges(epoch))?;
        acks.entry(epoch).or_insert_with(empty).merge(&set);
    }
    Ok(acks)
}

/// Adds `from` into `into`, keeping at most `MAX_EPOCHS` (the newest).
pub fn merge(into: &mut Acks, from: &Acks) {
    for (epoch, set) in from {
        into.entry(*epoch).or_insert_with(empty).merge(set);
    }
    while into.len() > MAX_EPOCHS {
        into.pop_first();
    }
}
