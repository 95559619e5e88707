//! A batch of messages as bytes, before compression: what v2 carries.
//!
//! `varint seq, varint count`, then per message `flags, varint topic length, topic,
//! [varint id, varint index, varint count when a fragment], varint payload length, payload`.
//! `flags`: bits 0-1 QoS, bit 2 retain, bit 3 fragment; the other bits are 0. Bytes after the last
//! message are ignored: later writers may append what older readers need not know. Every length is
//! checked against what is left, so a hostile batch is an error, never a panic or a large allocation.

use crate::{Fragment, Record, WireError, MAX_FRAGMENTS, MAX_RECORDS};

const QOS_MASK: u8 = 0b11;
const RETAIN: u8 = 0b100;
const FRAGMENT: u8 = 0b1000;

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7).max(1)
}

/// Bytes one record takes in a batch.
pub fn record_len(r: &Record) -> usize {
    let fragment = r.fragment.map_or(0, |f| {
        varint_len(f.id) + varint_len(u64::from(f.index)) + varint_len(u64::from(f.count))
    });
    1 + varint_len(r.topic.len() as u64)
        + r.topic.len()
        + fragment
        + varint_len(r.payload.len() as u64)
        + r.payload.len()
}

/// Bytes of the batch header.
pub fn header_len(seq: u64, count: usize) -> usize {
    varint_len(seq) + varint_len(count as u64)
}

pub fn put_record(out: &mut Vec<u8>, r: &Record) {
    let mut flags = r.qos.min(2);
    if r.retain {
        flags |= RETAIN;
    }
    if r.fragment.is_some() {
        flags |= FRAGMENT;
    }
    out.push(flags);
    put_varint(out, r.topic.len() as u64);
    out.extend_from_slice(r.topic.as_bytes());
    if let Some(f) = r.fragment {
        put_varint(out, f.id);
        put_varint(out, u64::from(f.index));
        put_varint(out, u64::from(f.count));
    }
    put_varint(out, r.payload.len() as u64);
    out.extend_from_slice(&r.payload);
}

pub fn encode<'a>(seq: u64, records: impl ExactSizeIterator<Item = &'a Record>) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, seq);
    put_varint(&mut out, records.len() as u64);
    for r in records {
        put_record(&mut out, r);
    }
    out
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, WireError> {
        let (b, rest) = self.data.split_first().ok_or(WireError::Truncated)?;
        self.data = rest;
        Ok(*b)
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(WireError::Malformed("number too large"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Malformed("number too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.data.len())
            .ok_or(WireError::Truncated)?;
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
}

/// The sequence number and the messages of a batch.
pub fn decode(data: &[u8]) -> Result<(u64, Vec<Record>), WireError> {
    let mut r = Reader { data };
    let seq = r.varint()?;
    let count = r.varint()?;
    if count > MAX_RECORDS as u64 {
        return Err(WireError::TooManyRecords);
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let flags = r.byte()?;
        if flags & !(QOS_MASK | RETAIN | FRAGMENT) != 0 || flags & QOS_MASK == 3 {
            return Err(WireError::Malformed("unknown flags"));
        }
        let topic = std::str::from_utf8(r.bytes()?)
            .map_err(|_| WireError::Malformed("topic is not UTF-8"))?
            .to_string();
        let fragment = if flags & FRAGMENT != 0 {
            let (id, index, count) = (r.varint()?, r.varint()?, r.varint()?);
            if index >= count || count > u64::from(MAX_FRAGMENTS) {
                return Err(WireError::Malformed("bad fragment"));
            }
            Some(Fragment {
                id,
                index: index as u32,
                count: count as u32,
            })
        } else {
            None
        };
        let payload = r.bytes()?.to_vec();
        records.push(Record {
            topic,
            payload,
            qos: flags & QOS_MASK,
            retain: flags & RETAIN != 0,
            fragment,
        });
    }
    Ok((seq, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random_record, Rng};

    #[test]
    fn varints_round_trip_and_have_the_stated_length() {
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(Reader { data: &out }.varint().unwrap(), v);
        }
        // 10 bytes whose last carries more than the 64th bit.
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader { data: &over }.varint().is_err());
    }

    #[test]
    fn batches_round_trip_and_lengths_add_up() {
        let mut rng = Rng(3);
        for _ in 0..300 {
            let n = rng.below(20) as usize;
            let records: Vec<Record> = (0..n).map(|_| random_record(&mut rng, 300)).collect();
            let seq = rng.next() >> rng.below(64);
            let data = encode(seq, records.iter());
            let expected: usize =
                header_len(seq, n) + records.iter().map(record_len).sum::<usize>();
            assert_eq!(data.len(), expected);
            assert_eq!(decode(&data).unwrap(), (seq, records));
        }
    }

    #[test]
    fn later_additions_after_the_messages_are_ignored() {
        let r = random_record(&mut Rng(5), 10);
        let mut data = encode(9, [&r].into_iter());
        data.extend_from_slice(b"receipts of a later version");
        assert_eq!(decode(&data).unwrap(), (9, vec![r]));
    }

    #[test]
    fn every_truncation_and_bad_field_is_an_error() {
        let mut rng = Rng(11);
        let records: Vec<Record> = (0..5).map(|_| random_record(&mut rng, 40)).collect();
        let data = encode(1, records.iter());
        for cut in 0..data.len() {
            assert!(decode(&data[..cut]).is_err(), "cut at {cut}");
        }
        let one = |flags: u8, rest: &[u8]| {
            let mut d = vec![0, 1, flags];
            d.extend_from_slice(rest);
            decode(&d)
        };
        assert!(one(3, &[0, 0]).is_err(), "qos 3");
        assert!(one(0x10, &[0, 0]).is_err(), "unknown flag");
        assert!(one(0, &[2, 0xff, 0xfe, 0]).is_err(), "topic not UTF-8");
        assert!(one(FRAGMENT, &[0, 1, 2, 2, 0]).is_err(), "index >= count");
        assert!(
            one(0, &[0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err(),
            "length beyond the end"
        );
        assert!(decode(&[0, 0xff, 0xff, 0x03]).is_err(), "too many records");
    }
}
