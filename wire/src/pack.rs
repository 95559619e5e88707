//! How many queued messages one post or DM carries: the longest first part of the queue whose v2
//! text fits the text budget. Compressed sizes do not grow strictly with the number of messages, so
//! every answer is a text that was made and measured, never an estimate.

use crate::{batch, frame, text_len, text_of_frame, Options, Record, MAX_BATCH_BYTES, MAX_RECORDS};

/// The longest first part of `records` whose text is at most `budget` bytes: how many messages and
/// the text. None when even the first message alone does not fit (it must be cut into fragments).
pub fn pack(
    seq: u64,
    records: &[Record],
    budget: usize,
    options: Options,
) -> Option<(usize, String)> {
    // At most MAX_RECORDS messages and MAX_BATCH_BYTES of batch: what every reader accepts.
    let mut raw_len = batch::header_len(seq, 0) + batch::IDS_HEADER_BOUND;
    let mut most = 0;
    for r in records.iter().take(MAX_RECORDS) {
        let next = raw_len + batch::record_len(r) + batch::id_len_bound(r) + 1;
        if next > MAX_BATCH_BYTES {
            break;
        }
        raw_len = next;
        most += 1;
    }
    let try_n = |n: usize| -> Option<Vec<u8>> {
        let f = frame(&batch::encode(seq, records[..n].iter()), options);
        (text_len(f.len()) <= budget).then_some(f)
    };
    if most == 0 {
        return None;
    }
    if let Some(f) = try_n(most) {
        return Some((most, text_of_frame(&f)));
    }
    // fits(lo) (lo = 0: nothing), !fits(hi).
    let (mut lo, mut hi, mut best) = (0, most, None);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match try_n(mid) {
            Some(f) => {
                lo = mid;
                best = Some(f);
            }
            None => hi = mid,
        }
    }
    best.map(|f| (lo, text_of_frame(&f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode;
    use crate::testing::{random_record, Rng};
    use twister_rules::{
        dm_size, max_dm_bytes, max_post_ascii, post_size, PostHeader, MAX_POST_BYTES,
    };

    fn header(user: &str, k: i64) -> PostHeader<'_> {
        PostHeader {
            user,
            k,
            lastk: Some(k - 1),
            height: 9_999_999,
            time: 9_999_999_999,
            reply: None,
        }
    }

    /// The property: over random batches, names and numbers, what the packer returns is a post (and a
    /// DM) twisterd's exact size model accepts, carrying the first `n` messages, and one more would
    /// not have fitted in that text budget... or the packer needed a fragment.
    #[test]
    fn the_packer_never_exceeds_a_post_or_a_dm() {
        let mut rng = Rng(2024);
        let names = ["a", "alice", "sixteen_chars_xx", "bench_user_1"];
        for case in 0..400 {
            let user = names[rng.below(4) as usize];
            let k = rng.below(1_000_000) as i64 + 1;
            let n = 1 + rng.below(120) as usize;
            let max_payload = [8, 64, 300, 1500, 3000][rng.below(5) as usize];
            let records: Vec<Record> = (0..n)
                .map(|_| random_record(&mut rng, max_payload))
                .collect();
            let seq = rng.next() >> rng.below(64);
            let h = header(user, k);
            let to = names[rng.below(4) as usize];
            for (budget, dm) in [(max_post_ascii(&h), false), (max_dm_bytes(&h, to), true)] {
                let Some((count, text)) = pack(seq, &records, budget, Options::default()) else {
                    // Only when the first message alone is too big for this budget.
                    let alone = crate::encode(seq, &records[..1], Options::default());
                    assert!(
                        alone.len() > budget,
                        "case {case}: refused a message that fits"
                    );
                    continue;
                };
                let size = if dm {
                    dm_size(&h, to, text.len())
                } else {
                    post_size(&h, &text)
                };
                assert!(
                    size <= MAX_POST_BYTES,
                    "case {case}: {size} bytes (dm {dm})"
                );
                assert!(count >= 1 && count <= records.len());
                let (s, got) = decode(&text).unwrap();
                assert_eq!((s, &got[..]), (seq, &records[..count]), "case {case}");
            }
        }
    }

    #[test]
    fn a_message_too_big_for_any_post_is_left_for_fragments() {
        let big = random_record(&mut Rng(1), 0);
        let big = Record {
            payload: Rng(2).bytes_exact(5000),
            fragment: None,
            ..big
        };
        assert!(pack(1, &[big], 1873, Options::default()).is_none());
    }

    #[test]
    fn limits_of_every_reader_are_kept() {
        let tiny = Record {
            topic: "t".into(),
            payload: vec![],
            qos: 0,
            retain: false,
            fragment: None,
            id: None,
        };
        let many = vec![tiny; 3000];
        let (n, text) = pack(1, &many, 1873, Options::default()).unwrap();
        assert_eq!(n, MAX_RECORDS);
        assert_eq!(decode(&text).unwrap().1.len(), MAX_RECORDS);
        let zeros = Record {
            topic: "z".into(),
            payload: vec![0; 20_000],
            qos: 0,
            retain: false,
            fragment: None,
            id: None,
        };
        let (n, _) = pack(1, &vec![zeros; 10], 1873, Options::default()).unwrap();
        assert!(
            n * 20_000 <= MAX_BATCH_BYTES,
            "{n} messages of 20,000 bytes"
        );
    }
}
