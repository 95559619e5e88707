//! The injection log's record (64 bytes, little-endian), and the scan that reads back what a kill
//! left. Pure functions over byte slices.
//!
//! ```text
//! 0  u32 crc        CRC-32 of bytes 4..64
//! 4  u32 magic      "INJ1"
//! 8  u64 n          the record's number in the log (slot n % slots)
//! 16 u64 epoch      the message id (`wire::MessageId`)
//! 24 u64 seq
//! 32 u8  sender_len 1..=30
//! 33 u8  urgent     1: QoS 1/2, its sender waits for the receipt
//! 34 sender         the Twister user who sent it, zero-padded
//! ```
//!
//! A slot of zeros is empty; anything else whose CRC fails is torn or damaged.

use super::Recovered;
use crate::wire::MessageId;

pub const RECORD: usize = 64;
/// Longest sender name a record holds (Twister names are at most 16 characters).
pub const MAX_SENDER: usize = RECORD - 34;
const MAGIC: u32 = u32::from_le_bytes(*b"INJ1");

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub n: u64,
    pub sender: String,
    pub id: MessageId,
    pub urgent: bool,
}

/// The record the worker prepares for a message it hands to the broker's thread: all but its number
/// and CRC, which the broker's thread adds when it writes it (`Recorder::record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark([u8; RECORD]);

impl Mark {
    /// None when the sender's name does not fit (then the message is settled when handed, as
    /// without the log).
    pub fn new(sender: &str, id: MessageId, urgent: bool) -> Option<Mark> {
        let name = sender.as_bytes();
        if name.is_empty() || name.len() > MAX_SENDER {
            return None;
        }
        let mut b = [0u8; RECORD];
        b[4..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[16..24].copy_from_slice(&id.epoch.to_le_bytes());
        b[24..32].copy_from_slice(&id.seq.to_le_bytes());
        b[32] = name.len() as u8;
        b[33] = u8::from(urgent);
        b[34..34 + name.len()].copy_from_slice(name);
        Some(Mark(b))
    }

    /// Copies the record, numbered `n`, into `out` (`RECORD` bytes).
    #[inline]
    pub fn write_into(&self, out: &mut [u8], n: u64) {
        let mut b = self.0;
        b[8..16].copy_from_slice(&n.to_le_bytes());
        let crc = crc32fast::hash(&b[4..]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        out.copy_from_slice(&b);
    }
}

/// A whole record. None: empty, torn or damaged.
pub fn decode(b: &[u8]) -> Option<Decoded> {
    if b.len() < RECORD {
        return None;
    }
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let crc = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if crc != crc32fast::hash(&b[4..RECORD]) || b[4..8] != MAGIC.to_le_bytes() {
        return None;
    }
    let len = b[32] as usize;
    if len == 0 || len > MAX_SENDER {
        return None;
    }
    let sender = std::str::from_utf8(&b[34..34 + len]).ok()?.to_string();
    Some(Decoded {
        n: u64_at(8),
        sender,
        id: MessageId {
            epoch: u64_at(16),
            seq: u64_at(24),
        },
        urgent: b[33] == 1,
    })
}

/// Every whole record of a log file's bytes, in record order; slots not empty and not whole are
/// counted (a partial slot at the end of a truncated file too).
pub fn scan(bytes: &[u8]) -> Recovered {
    let mut found: Vec<Decoded> = Vec::new();
    let mut damaged = 0;
    for slot in bytes.chunks(RECORD) {
        if slot.iter().all(|b| *b == 0) {
            continue;
        }
        match decode(slot) {
            Some(r) => found.push(r),
            None => damaged += 1,
        }
    }
    found.sort_by_key(|r| r.n);
    Recovered {
        injected: found.into_iter().map(|r| (r.sender, r.id)).collect(),
        damaged,
    }
}
