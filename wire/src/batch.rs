//! A batch of messages as bytes, before compression: what v2 carries.
//!
//! `varint seq, varint count`, then per message `flags, varint topic length, topic,
//! [varint id, varint index, varint count when a fragment], varint payload length, payload`.
//! `flags`: bits 0-1 QoS, bit 2 retain, bit 3 fragment; the other bits are 0. Bytes after the last
//! message are ignored by readers older than message ids: later writers append sections there,
//! `varint tag, varint length, body`, and a reader skips the tags it does not know. Every length is
//! checked against what is left, so a hostile batch is an error, never a panic or a large allocation.
//!
//! Section `IDS_TAG`: the messages' ids (`MessageId`), one code per message in order: 0 no id, 1 an
//! id in full (`varint epoch, varint seq`), `n >= 2` the previous id's epoch and the seq after the
//! previous one moved by `unzigzag(n - 2)`: consecutive ids take one byte each (2), the fragments of
//! one message repeat their id (3).

use crate::{Fragment, MessageId, Record, WireError, MAX_FRAGMENTS, MAX_RECORDS};

/// The tag of the ids section.
pub const IDS_TAG: u64 = 1;

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

/// Most bytes the ids section may add for `r` (its code), and for the section's own header.
pub fn id_len_bound(r: &Record) -> usize {
    match r.id {
        None => 1,
        Some(id) => 1 + varint_len(id.epoch) + varint_len(id.seq),
    }
}
pub const IDS_HEADER_BOUND: usize = 1 + 3;

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// The code of `id` after `prev` of the same epoch, when its step fits one.
fn step_code(prev: MessageId, id: MessageId) -> Option<u64> {
    let step = i64::try_from(i128::from(id.seq) - i128::from(prev.seq) - 1).ok()?;
    zigzag(step).checked_add(2)
}

/// The ids section's body for these records; None when none has an id.
fn ids_body<'a>(records: impl Iterator<Item = &'a Record>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut last: Option<MessageId> = None;
    let mut any = false;
    for r in records {
        match (r.id, last) {
            (None, _) => body.push(0),
            (Some(id), Some(prev)) if prev.epoch == id.epoch && step_code(prev, id).is_some() => {
                put_varint(&mut body, step_code(prev, id).unwrap_or(1));
                any = true;
                last = Some(id);
            }
            (Some(id), _) => {
                body.push(1);
                put_varint(&mut body, id.epoch);
                put_varint(&mut body, id.seq);
                any = true;
                last = Some(id);
            }
        }
    }
    any.then_some(body)
}

pub fn encode<'a>(seq: u64, records: impl ExactSizeIterator<Item = &'a Record> + Clone) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, seq);
    put_varint(&mut out, records.len() as u64);
    for r in records.clone() {
        put_record(&mut out, r);
    }
    if let Some(body) = ids_body(records) {
        put_varint(&mut out, IDS_TAG);
        put_varint(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
    }
    out
}

/// Reads the ids section into `records`.
fn read_ids(body: &[u8], records: &mut [Record]) -> Result<(), WireError> {
    let mut r = Reader { data: body };
    let mut last: Option<MessageId> = None;
    for rec in records.iter_mut() {
        let code = r.varint()?;
        rec.id = match (code, last) {
            (0, _) => None,
            (1, _) => Some(MessageId {
                epoch: r.varint()?,
                seq: r.varint()?,
            }),
            (n, Some(prev)) => {
                let seq = i128::from(prev.seq) + 1 + i128::from(unzigzag(n - 2));
                let seq = u64::try_from(seq)
                    .map_err(|_| WireError::Malformed("message id out of range"))?;
                Some(MessageId {
                    epoch: prev.epoch,
                    seq,
                })
            }
            (_, None) => return Err(WireError::Malformed("message id relative to none")),
        };
        if rec.id.is_some() {
            last = rec.id;
        }
    }
    if !r.data.is_empty() {
        return Err(WireError::Malformed("more message ids than messages"));
    }
    Ok(())
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
            id: None,
        });
    }
    // Sections after the messages; what does not read as one is a later writer's and is ignored.
    while !r.data.is_empty() {
        let mut section = Reader { data: r.data };
        let Ok(tag) = section.varint() else { break };
        let body = match section.bytes() {
            Ok(body) => body,
            Err(e) if tag == IDS_TAG => return Err(e),
            Err(_) => break,
        };
        r.data = section.data;
        if tag == IDS_TAG {
            read_ids(body, &mut records)?;
        }
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

    /// The same records without message ids.
    fn without_ids(records: &[Record]) -> Vec<Record> {
        records
            .iter()
            .map(|r| Record {
                id: None,
                ..r.clone()
            })
            .collect()
    }

    #[test]
    fn batches_round_trip_and_lengths_add_up() {
        let mut rng = Rng(3);
        for _ in 0..300 {
            let n = rng.below(20) as usize;
            let records: Vec<Record> = (0..n).map(|_| random_record(&mut rng, 300)).collect();
            let seq = rng.next() >> rng.below(64);
            let plain = without_ids(&records);
            let expected: usize =
                header_len(seq, n) + records.iter().map(record_len).sum::<usize>();
            assert_eq!(encode(seq, plain.iter()).len(), expected);
            let data = encode(seq, records.iter());
            let ids_bound = IDS_HEADER_BOUND + records.iter().map(id_len_bound).sum::<usize>();
            assert!(data.len() <= expected + ids_bound);
            assert_eq!(decode(&data).unwrap(), (seq, records));
        }
    }

    #[test]
    fn later_additions_after_the_messages_are_ignored() {
        let r = Record {
            id: None,
            ..random_record(&mut Rng(5), 10)
        };
        let mut data = encode(9, [&r].into_iter());
        data.extend_from_slice(b"receipts of a later version");
        assert_eq!(decode(&data).unwrap(), (9, vec![r.clone()]));
        // A section of a tag this reader does not know, then the ids: the ids are read.
        let with_id = Record {
            id: Some(MessageId { epoch: 4, seq: 9 }),
            ..r.clone()
        };
        let mut data = encode(9, [&with_id].into_iter());
        let ids_at = encode(9, [&r].into_iter()).len();
        let mut unknown = Vec::new();
        put_varint(&mut unknown, 77);
        put_varint(&mut unknown, 3);
        unknown.extend_from_slice(b"xyz");
        data.splice(ids_at..ids_at, unknown);
        assert_eq!(decode(&data).unwrap(), (9, vec![with_id]));
    }

    #[test]
    fn ids_take_a_byte_per_consecutive_message_and_round_trip_in_any_mix() {
        let mut rng = Rng(17);
        let base = random_record(&mut rng, 5);
        let with = |id: Option<(u64, u64)>| Record {
            id: id.map(|(epoch, seq)| MessageId { epoch, seq }),
            ..base.clone()
        };
        let plain: Vec<Record> = (0..50).map(|_| with(None)).collect();
        let consecutive: Vec<Record> = (0..50)
            .map(|i| with(Some((1_790_000_000_123, 1000 + i))))
            .collect();
        let no_ids = encode(3, plain.iter()).len();
        let ids = encode(3, consecutive.iter()).len();
        assert!(
            ids - no_ids <= 2 + 1 + 6 + 2 + 49,
            "{} bytes of ids",
            ids - no_ids
        );
        for _ in 0..300 {
            let records: Vec<Record> = (0..rng.below(30))
                .map(|_| {
                    let epoch = [0, 7, u64::MAX][rng.below(3) as usize];
                    let seq = match rng.below(4) {
                        0 => rng.next(),
                        1 => u64::MAX - rng.below(3),
                        _ => rng.below(5),
                    };
                    Record {
                        id: (rng.below(4) > 0).then_some(MessageId { epoch, seq }),
                        ..random_record(&mut rng, 20)
                    }
                })
                .collect();
            let data = encode(1, records.iter());
            assert_eq!(decode(&data).unwrap(), (1, records));
        }
    }

    #[test]
    fn a_bad_ids_section_is_an_error() {
        let r = Record {
            id: None,
            ..random_record(&mut Rng(8), 5)
        };
        let mut two = encode(1, [&r, &r].into_iter());
        for body in [
            &[1u8, 5, 5][..],
            &[2, 0],
            &[0, 0, 0],
            &[
                1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 2,
            ],
        ] {
            let mut data = two.clone();
            put_varint(&mut data, IDS_TAG);
            put_varint(&mut data, body.len() as u64);
            data.extend_from_slice(body);
            assert!(decode(&data).is_err(), "{body:?}");
        }
        put_varint(&mut two, IDS_TAG);
        put_varint(&mut two, 2);
        two.extend_from_slice(&[0, 0]);
        assert_eq!(decode(&two).unwrap().1, vec![r.clone(), r]);
    }

    #[test]
    fn every_truncation_and_bad_field_is_an_error() {
        let mut rng = Rng(11);
        let records: Vec<Record> = (0..5).map(|_| random_record(&mut rng, 40)).collect();
        let plain = without_ids(&records);
        let data = encode(1, plain.iter());
        for cut in 0..data.len() {
            assert!(decode(&data[..cut]).is_err(), "cut at {cut}");
        }
        // With ids: a cut inside the ids section is an error too.
        let with_ids = encode(1, records.iter());
        assert!(with_ids.len() > data.len() + 2);
        for cut in data.len() + 1..with_ids.len() {
            assert!(decode(&with_ids[..cut]).is_err(), "cut at {cut}");
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
