//! Seeded randomness for the property tests: the same cases on every run.

use crate::{Fragment, Record};

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub fn bytes_exact(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        self.bytes_exact(n)
    }
}

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
