//! The spool's bytes: segment header, records, the taken mark, and the scan that reads back what a
//! crash, a torn write or a flipped bit left. Pure functions over byte slices.
//!
//! Segment (a file of `segment_bytes`): a 64-byte header (`MQTSPOOL`, format version, CRC), then
//! records, each at an 8-byte boundary, then zeros. Record (little-endian):
//!
//! ```text
//! 0  u32 len        header + body, unpadded; 0 = no record here
//! 4  u32 crc        CRC-32 of bytes 0..4 and 8..len
//! 8  u64 seq        the spool id: one more than the record appended before it
//! 16 u8  qos        0..=2
//! 17 u8  flags      bit 0: retain
//! 18 u16 topic_len
//! 20 u16 route_len  opaque routing bytes of the relay
//! 22 u16 0
//! 24 u32 payload_len
//! 28 u32 0
//! 32 route, topic, payload
//! ```

use crate::wire::Message;

pub const SEGMENT_HEADER: usize = 64;
pub const RECORD_HEADER: usize = 32;
pub const FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: &[u8; 8] = b"MQTSPOOL";
const MARK_MAGIC: u32 = 0x4b52_4d54; // "TMRK"
/// The mark file holds two slots written in turn: a torn write spoils one, the other stays.
pub const MARK_SLOT: usize = 32;

pub fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes a record of this message and route takes in a segment, padding included.
pub fn record_size(topic: usize, payload: usize, route: usize) -> usize {
    align8(RECORD_HEADER + route + topic + payload)
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn record_crc(record: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&record[0..4]);
    h.update(&record[8..]);
    h.finalize()
}

pub fn segment_header() -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = header_crc(&h);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Whether `b` starts with a header this version writes.
pub fn header_ok(b: &[u8]) -> bool {
    b.len() >= SEGMENT_HEADER
        && &b[0..8] == SEGMENT_MAGIC
        && u32_at(b, 8) == FORMAT_VERSION
        && u32_at(b, 12) == header_crc(b)
}

/// CRC-32 of the header without its CRC field (the reserved bytes, zeros, are covered too).
fn header_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..12]);
    h.update(&b[16..SEGMENT_HEADER]);
    h.finalize()
}

/// Writes the record of `m` with id `seq` at the start of `out`, which holds at least
/// `record_size(..)` bytes; returns that size. Plain copies into memory: no allocation, no syscall.
pub fn write_record(out: &mut [u8], seq: u64, m: &Message, route: &[u8]) -> usize {
    let len = RECORD_HEADER + route.len() + m.topic.len() + m.payload.len();
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16] = m.qos;
    out[17] = u8::from(m.retain);
    out[18..20].copy_from_slice(&(m.topic.len() as u16).to_le_bytes());
    out[20..22].copy_from_slice(&(route.len() as u16).to_le_bytes());
    out[22..24].fill(0);
    out[24..28].copy_from_slice(&(m.payload.len() as u32).to_le_bytes());
    out[28..32].fill(0);
    let mut at = RECORD_HEADER;
    for part in [route, m.topic.as_bytes(), &m.payload] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    let crc = record_crc(&out[..len]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[len..align8(len)].fill(0);
    align8(len)
}

/// A record read back from a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub message: Message,
    pub route: Vec<u8>,
}

/// The record at the start of `b`, when it is whole and its CRC matches.
fn read_record(b: &[u8]) -> Option<(Record, usize)> {
    if b.len() < RECORD_HEADER {
        return None;
    }
    let len = u32_at(b, 0) as usize;
    let (topic_len, route_len) = (u16_at(b, 18), u16_at(b, 20));
    let payload_len = u32_at(b, 24) as usize;
    let plausible = len <= b.len()
        && len == RECORD_HEADER + route_len + topic_len + payload_len
        && b[16] <= 2
        && b[17] <= 1
        && u16_at(b, 22) == 0
        && u32_at(b, 28) == 0;
    if !plausible || u32_at(b, 4) != record_crc(&b[..len]) {
        return None;
    }
    let route_end = RECORD_HEADER + route_len;
    let topic_end = route_end + topic_len;
    let topic = std::str::from_utf8(&b[route_end..topic_end]).ok()?;
    let record = Record {
        seq: u64_at(b, 8),
        route: b[RECORD_HEADER..route_end].to_vec(),
        message: Message {
            topic: topic.to_owned(),
            payload: b[topic_end..len].to_vec(),
            qos: b[16],
            retain: b[17] == 1,
        },
    };
    Some((record, align8(len)))
}

/// What a scan of one segment found.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    pub records: Vec<Record>,
    /// The header was missing or not this format's (the records were read all the same).
    pub bad_header: bool,
    /// Bytes that held neither a whole record nor zeros (torn or damaged records), skipped.
    pub unreadable_bytes: usize,
}

/// Reads every whole record of a segment's bytes. A damaged record is skipped by looking for the next
/// whole record at each 8-byte boundary after it, so one flipped bit costs one record, not the rest.
pub fn scan(b: &[u8]) -> Scan {
    let mut s = Scan {
        bad_header: !header_ok(b),
        ..Scan::default()
    };
    let mut at = SEGMENT_HEADER;
    let mut damaged_since: Option<usize> = None;
    while at + RECORD_HEADER <= b.len() {
        if let Some((record, size)) = read_record(&b[at..]) {
            if let Some(from) = damaged_since.take() {
                s.unreadable_bytes += at - from;
            }
            s.records.push(record);
            at += size;
            continue;
        }
        if damaged_since.is_none() {
            if u32_at(b, at) == 0 && b[at..].iter().all(|&x| x == 0) {
                // The never-written rest of the segment.
                return s;
            }
            damaged_since = Some(at);
        }
        at += 8;
    }
    // What is left is too short for a record: a torn one, unless it is all zeros.
    let from = damaged_since.unwrap_or(at).min(b.len());
    let end = b.iter().rposition(|&x| x != 0).map_or(from, |i| i + 1);
    s.unreadable_bytes += end.max(from) - from;
    s
}

/// One slot of the mark file: "every record up to `taken` is taken", written as the `count`-th mark.
pub fn mark_slot(count: u64, taken: u64, epoch: u64) -> [u8; MARK_SLOT] {
    let mut m = [0u8; MARK_SLOT];
    m[0..4].copy_from_slice(&MARK_MAGIC.to_le_bytes());
    m[8..16].copy_from_slice(&count.to_le_bytes());
    m[16..24].copy_from_slice(&taken.to_le_bytes());
    m[24..32].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&m[8..]);
    m[4..8].copy_from_slice(&crc.to_le_bytes());
    m
}

/// The newest valid mark of the file's two slots: (count, taken).
pub fn read_mark(b: &[u8]) -> Option<(u64, u64)> {
    read_mark_and_epoch(b).map(|(count, taken, _)| (count, taken))
}

/// The newest valid mark with the spool's epoch: (count, taken, epoch); epoch 0 in marks written
/// before epochs existed.
pub fn read_mark_and_epoch(b: &[u8]) -> Option<(u64, u64, u64)> {
    b.chunks_exact(MARK_SLOT)
        .take(2)
        .filter(|m| u32_at(m, 0) == MARK_MAGIC && u32_at(m, 4) == crc32fast::hash(&m[8..]))
        .map(|m| (u64_at(m, 8), u64_at(m, 16), u64_at(m, 24)))
        .max()
}
