//! The plugin's side of the dense wire format v2 (the `mqtt-twister-wire` crate): reading v2 texts
//! into `wire::Item`s, and packing the worker's queued items (v1 item texts, the queue's neutral form)
//! into one v2 post or DM.

use super::json::{self as wire, Fragment, Item, Message, WireError};
use mqtt_twister_wire as v2;

/// True for a text `decode_items` must read as v2 (or a later dense version): `{"v":N}` then data.
pub fn is_dense(text: &str) -> bool {
    v2::version(text).is_some_and(|v| v >= 2)
}

/// The messages and fragments of a v2 text.
pub fn decode_items(text: &str) -> Result<Vec<Item>, WireError> {
    let (_seq, records) = v2::decode(text).map_err(|e| match e {
        v2::WireError::Version(v) => WireError::Version(i64::try_from(v).unwrap_or(i64::MAX)),
        other => WireError::Dense(other),
    })?;
    Ok(records
        .into_iter()
        .map(|r| Item {
            message: Message {
                topic: r.topic,
                payload: r.payload,
                qos: r.qos,
                retain: r.retain,
            },
            fragment: r.fragment.map(|f| Fragment {
                id: f.id,
                index: f.index,
                count: f.count,
            }),
            id: r.id,
        })
        .collect())
}

fn record(item: &str) -> Option<v2::Record> {
    let it = wire::item_message(item)?;
    Some(v2::Record {
        topic: it.message.topic,
        payload: it.message.payload,
        qos: it.message.qos,
        retain: it.message.retain,
        fragment: it.fragment.map(|f| v2::Fragment {
            id: f.id,
            index: f.index,
            count: f.count,
        }),
        id: it.id,
    })
}

/// As many of the first queued items as one text of at most `budget` bytes carries, and that text;
/// None when the first alone does not fit (it is then cut into fragments or dropped).
pub fn pack<'a>(
    items: impl IntoIterator<Item = &'a str>,
    seq: u64,
    budget: usize,
) -> Option<(usize, String)> {
    // Only what one batch can hold is read from the queue.
    let mut records = Vec::new();
    let mut bytes = 0;
    for item in items.into_iter().take(v2::MAX_RECORDS) {
        let Some(r) = record(item) else { break };
        bytes += r.payload.len() + r.topic.len();
        records.push(r);
        if bytes > v2::MAX_BATCH_BYTES {
            break;
        }
    }
    v2::pack::pack(seq, &records, budget, v2::Options::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::json::tests::msg;
    use std::collections::VecDeque;

    #[test]
    fn queued_items_cross_in_one_dense_post_and_read_back() {
        let batch: Vec<Message> = (0..60)
            .map(|i| {
                msg(
                    &format!("sensors/room{}/climate", i % 9),
                    format!(
                        r#"{{"temperature":2{}.{},"humidity":{}}}"#,
                        i % 10,
                        i % 7,
                        40 + i
                    )
                    .as_bytes(),
                    (i % 3) as u8,
                    i % 5 == 0,
                )
            })
            .chain([msg("bin/€", &[0, 255, 0x40, 0x23, 10], 1, false)])
            .collect();
        let queue: VecDeque<String> = batch
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let id = wire::MessageId {
                    epoch: 1_790_000_000_000,
                    seq: 100 + i as u64,
                };
                wire::encode_item_with_id(m, Some(id))
            })
            .collect();
        let (n, text) = pack(queue.iter().map(String::as_str), 3, 1873).unwrap();
        assert_eq!(n, batch.len(), "all in one post");
        let v1_len: usize = queue.iter().map(String::len).sum();
        assert!(
            text.len() * 3 < v1_len,
            "{} bytes for {v1_len} of v1",
            text.len()
        );
        assert!(!text.contains(['@', '#', '\0']));
        assert!(is_dense(&text));
        assert_eq!(crate::wire::decode(&text).unwrap(), batch);
        let ids: Vec<Option<u64>> = crate::wire::decode_items(&text)
            .unwrap()
            .iter()
            .map(|it| it.id.map(|id| id.seq))
            .collect();
        assert_eq!(ids, (100..161).map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn fragments_keep_their_place_in_a_dense_post() {
        let m = msg("big", &[7u8; 5000], 2, true);
        let id = wire::MessageId { epoch: 3, seq: 4 };
        let parts = wire::encode_fragments(&m, 77, 1800, Some(id)).unwrap();
        let queue: VecDeque<String> = parts.iter().cloned().collect();
        let (n, text) = pack(queue.iter().map(String::as_str), 1, 1873).unwrap();
        assert_eq!(
            n,
            parts.len(),
            "repetitive fragments compress into one post"
        );
        let items = crate::wire::decode_items(&text).unwrap();
        assert_eq!(items.len(), parts.len());
        assert_eq!(items[1].fragment.map(|f| (f.id, f.index)), Some((77, 1)));
        assert!(items.iter().all(|it| it.id == Some(id)));
    }

    #[test]
    fn other_dense_versions_are_named_and_garbage_is_an_error() {
        assert_eq!(
            crate::wire::decode_items("{\"v\":3}xyz"),
            Err(WireError::Version(3))
        );
        assert!(crate::wire::decode_items("{\"v\":2}@@").is_err());
        assert!(!is_dense(r#"{"v":1,"m":[]}"#) && !is_dense(r#"{"topic":"a"}"#));
    }
}
