//! Seeded randomness for the property tests: the same cases on every run.

pub use crate::Rng;
use crate::{Fragment, Record};

/// A message of any shape: text or binary payload up to `max_payload` bytes, odd topics, flags.
pub fn random_record(rng: &mut Rng, max_payload: u64) -> Record {
    let topic = match rng.below(4) {
        0 => format!("sensors/room{}/temp", rng.below(50)),
        1 => String::from_utf8_lossy(&rng.bytes(30)).into_owned(),
        2 => "ü/€/@x/#y".repeat(1 + rng.below(3) as usize),
        _ => String::new(),
    };
    let payload = match rng.below(3) {
        0 => format!(r#"{{"t":{},"h":{}}}"#, rng.below(400), rng.below(100)).into_bytes(),
        1 => rng.bytes(max_payload),
        _ => vec![b'a'; rng.below(max_payload + 1) as usize],
    };
    let fragment = (rng.below(5) == 0).then(|| {
        let count = 1 + rng.below(100) as u32;
        Fragment {
            id: rng.next(),
            index: rng.below(u64::from(count)) as u32,
            count,
        }
    });
    let id = (rng.below(3) > 0).then(|| crate::MessageId {
        epoch: 1_790_000_000_000 + rng.below(3),
        seq: rng.below(1 << 40),
    });
    Record {
        topic,
        payload,
        qos: rng.below(3) as u8,
        retain: rng.below(2) == 0,
        fragment,
        id,
    }
}
