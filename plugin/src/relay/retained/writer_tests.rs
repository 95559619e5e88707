//! The writer's decisions: coalescing, write order, tombstones, oversize, the puts cap, sharding,
//! retries, refresh, sequence numbers, restart state; records and names.

use super::writer::{
    Put, Refusal, Target, Writer, MAX_PUTS_PER_SECOND, ORDER_WAIT_MS, REFRESH_AFTER_MS,
};
use super::*;

/// 2026-11-27, in unix milliseconds.
pub(super) const NOW: u64 = 1_795_000_000_000;
pub(super) const INTERVAL: u64 = 1000;

fn value_puts(puts: &[Put]) -> Vec<&Put> {
    puts.iter().filter(|p| p.target == Target::Value).collect()
}

pub(super) fn record_of(put: &Put) -> Record {
    let topic = put.topic.clone().unwrap();
    decode_record(put.value.as_ref().unwrap(), &topic).unwrap()
}

#[test]
fn a_burst_on_one_topic_is_written_once_with_its_newest_value() {
    let mut w = Writer::new(INTERVAL);
    for i in 0..50 {
        w.publish("home/door", format!("v{i}").as_bytes(), 1, NOW)
            .unwrap();
    }
    let puts = w.take_puts(NOW, Some(7), false);
    let values = value_puts(&puts);
    assert_eq!(values.len(), 1);
    let r = record_of(values[0]);
    assert_eq!(r.payload, b"v49");
    assert_eq!((r.qos, r.watermark, r.kind), (1, Some(7), Kind::Value));
    assert_eq!(w.counters.coalesced, 49);
    // Then nothing until the interval passed, whatever comes meanwhile: newest wins again.
    w.publish("home/door", b"v50", 1, NOW + 10).unwrap();
    w.publish("home/door", b"v51", 1, NOW + 20).unwrap();
    assert!(value_puts(&w.take_puts(NOW + 500, Some(7), false)).is_empty());
    let later = w.take_puts(NOW + INTERVAL, Some(9), false);
    let r2 = record_of(value_puts(&later)[0]);
    assert_eq!(r2.payload, b"v51");
    assert!(r2.seq > r.seq, "seq grows: {} then {}", r.seq, r2.seq);
}

#[test]
fn values_go_before_their_shard_and_shards_before_the_root() {
    let mut w = Writer::new(INTERVAL);
    w.publish("a", b"1", 0, NOW).unwrap();
    w.publish("b", b"2", 0, NOW).unwrap();
    let puts = w.take_puts(NOW, Some(0), false);
    let order: Vec<Target> = puts.iter().map(|p| p.target).collect();
    assert_eq!(
        order,
        vec![Target::Value, Target::Value, Target::Shard(0), Target::Root]
    );
    let (entries, bad) = decode_shard(puts[2].value.as_ref().unwrap()).unwrap();
    assert_eq!(bad, 0);
    let topics: Vec<&str> = entries.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(topics, ["a", "b"]);
    assert_eq!(
        entries[0].seq, puts[0].seq,
        "the index lists the value's seq"
    );
    assert_eq!(
        decode_root(puts[3].value.as_ref().unwrap()).unwrap(),
        vec![puts[2].seq]
    );
    for p in &puts {
        assert!(
            p.resource.len() <= twister_rules::MAX_DHT_RESOURCE,
            "{}",
            p.resource
        );
        assert!(fits(p.value.as_ref().unwrap()));
    }
}

#[test]
fn an_empty_payload_is_a_tombstone_in_the_value_and_the_index() {
    let mut w = Writer::new(INTERVAL);
    w.publish("t", b"on", 0, NOW).unwrap();
    w.take_puts(NOW, Some(1), false);
    w.publish("t", b"", 0, NOW + 5000).unwrap();
    let puts = w.take_puts(NOW + 5000, Some(2), false);
    let r = record_of(value_puts(&puts)[0]);
    assert_eq!((r.kind, r.payload.len()), (Kind::Cleared, 0));
    let shard = puts.iter().find(|p| p.target == Target::Shard(0)).unwrap();
    let (entries, _) = decode_shard(shard.value.as_ref().unwrap()).unwrap();
    assert_eq!(entries[0].kind, Kind::Cleared, "kept in the index");
    assert_eq!(w.counters.clears, 1);
}

#[test]
fn a_value_too_large_for_the_dht_is_marked_oversize_not_left_stale() {
    let mut w = Writer::new(INTERVAL);
    w.publish("big", b"small", 0, NOW).unwrap();
    w.take_puts(NOW, Some(1), false);
    w.publish("big", &vec![b'x'; 9000], 0, NOW + 2000).unwrap();
    let puts = w.take_puts(NOW + 2000, Some(2), false);
    let r = record_of(value_puts(&puts)[0]);
    assert_eq!((r.kind, r.payload.len()), (Kind::Oversize, 0));
    assert_eq!(w.counters.oversize, 1);
    // Binary payloads go as base64: the largest that fits is smaller, and exactly measured.
    let mut fits_at = 0;
    for len in (5000..8200).step_by(50) {
        let rec = Record {
            topic: "big".into(),
            seq: 1,
            kind: Kind::Value,
            qos: 0,
            watermark: Some(i64::from(i32::MAX)),
            id: Some(MessageId {
                epoch: u64::MAX,
                seq: u64::MAX,
            }),
            payload: vec![0u8; len],
        };
        if fits(&encode_record(&rec)) {
            fits_at = len;
        }
    }
    assert!((5800..6100).contains(&fits_at), "{fits_at}");
}

#[test]
fn without_a_watermark_a_value_waits_for_the_posts_then_goes_unordered() {
    let mut w = Writer::new(INTERVAL);
    w.publish("t", b"1", 0, NOW).unwrap();
    assert!(value_puts(&w.take_puts(NOW + 2000, None, false)).is_empty());
    let puts = w.take_puts(NOW + ORDER_WAIT_MS, None, false);
    assert_eq!(record_of(value_puts(&puts)[0]).watermark, None);
}

#[test]
fn puts_per_second_are_capped_and_the_rest_follows() {
    let mut w = Writer::new(INTERVAL);
    for i in 0..50 {
        w.publish(&format!("t/{i}"), b"x", 0, NOW).unwrap();
    }
    let first = w.take_puts(NOW, Some(0), false);
    assert_eq!(value_puts(&first).len(), MAX_PUTS_PER_SECOND);
    let second = w.take_puts(NOW + 1000, Some(0), false);
    assert_eq!(value_puts(&second).len(), MAX_PUTS_PER_SECOND);
    let third = w.take_puts(NOW + 2000, Some(0), false);
    assert_eq!(value_puts(&third).len(), 50 - 2 * MAX_PUTS_PER_SECOND);
    assert!(!w.has_pending() || w.next_due().is_some());
    // At shutdown everything goes at once.
    for i in 0..50 {
        w.publish(&format!("t/{i}"), b"y", 0, NOW + 3000).unwrap();
    }
    assert_eq!(value_puts(&w.take_puts(NOW + 3000, None, true)).len(), 50);
}

#[test]
fn many_topics_are_sharded_and_a_full_index_refuses() {
    let mut w = Writer::new(INTERVAL);
    let long = "x".repeat(MAX_TOPIC_BYTES - 8);
    let mut placed = 0;
    loop {
        match w.publish(&format!("{long}/{placed:05}"), b"1", 0, NOW) {
            Ok(()) => placed += 1,
            Err(e) => {
                assert_eq!(e, Refusal::IndexFull);
                break;
            }
        }
    }
    assert!(placed >= 7 * MAX_SHARDS, "{placed} topics of 1 KB");
    assert_eq!(
        w.publish(&"y".repeat(MAX_TOPIC_BYTES + 1), b"1", 0, NOW),
        Err(Refusal::TopicTooLong)
    );
    let puts = w.take_puts(NOW, Some(0), true);
    let shards: Vec<&Put> = puts
        .iter()
        .filter(|p| matches!(p.target, Target::Shard(_)))
        .collect();
    assert_eq!(shards.len(), MAX_SHARDS);
    for s in shards {
        assert!(fits(s.value.as_ref().unwrap()), "{} over 8 KB", s.resource);
    }
}

#[test]
fn failed_puts_are_sent_again_with_a_higher_seq() {
    let mut w = Writer::new(INTERVAL);
    w.publish("t", b"1", 0, NOW).unwrap();
    let puts = w.take_puts(NOW, Some(0), false);
    let first_seq = puts[0].seq;
    w.failed(puts, NOW);
    assert!(
        w.take_puts(NOW + 10, Some(0), false).is_empty(),
        "waits the interval"
    );
    let again = w.take_puts(NOW + INTERVAL, Some(0), false);
    let order: Vec<Target> = again.iter().map(|p| p.target).collect();
    assert_eq!(order, vec![Target::Value, Target::Shard(0), Target::Root]);
    let r = record_of(&again[0]);
    assert_eq!(r.payload, b"1");
    assert!(r.seq > first_seq && again[0].seq == r.seq);
}

#[test]
fn old_resources_are_refreshed_before_twisterd_expires_them() {
    let mut w = Writer::new(INTERVAL);
    w.publish("t", b"1", 0, NOW).unwrap();
    w.take_puts(NOW, Some(0), false);
    assert!(w.take_puts(NOW + 3_600_000, None, false).is_empty());
    let later = NOW + REFRESH_AFTER_MS;
    let puts = w.take_puts(later, None, false);
    let order: Vec<Target> = puts.iter().map(|p| p.target).collect();
    assert_eq!(order, vec![Target::Value, Target::Shard(0), Target::Root]);
    assert_eq!(puts[0].value, None, "a refresh re-puts what the DHT holds");
    assert_eq!(w.counters.refreshed, 1);
}

#[test]
fn sequence_numbers_follow_the_clock_and_stay_in_twisterds_32_bits() {
    assert_eq!(next_seq(0, NOW), 1_795_000_000 - 1_704_067_200);
    assert_eq!(
        next_seq(1_000_000_000, NOW),
        1_000_000_001,
        "at least one more"
    );
    assert_eq!(next_seq(i64::from(i32::MAX), NOW), i64::from(i32::MAX));
    // A publisher that lost its state still writes above what it wrote an hour before.
    let before = next_seq(0, NOW);
    assert!(next_seq(0, NOW + 3_600_000) > before);
}

#[test]
fn the_writer_state_survives_a_restart() {
    let mut w = Writer::new(INTERVAL);
    w.publish("a", b"1", 0, NOW).unwrap();
    w.publish("b", b"", 0, NOW).unwrap();
    w.take_puts(NOW, Some(0), false);
    let back = Writer::from_json(&w.to_json(), INTERVAL);
    assert_eq!(back.to_json(), w.to_json());
    assert!(!back.has_pending());
    let mut back = back;
    back.publish("a", b"2", 0, NOW + 5000).unwrap();
    let puts = back.take_puts(NOW + 5000, Some(3), false);
    let (entries, _) = decode_shard(puts[1].value.as_ref().unwrap()).unwrap();
    assert_eq!(entries.len(), 2, "b stays listed: {entries:?}");
    // Garbage starts afresh rather than failing.
    let junk = Writer::from_json(
        &json!({"topics": 3, "shards": [[1]], "root": "x"}),
        INTERVAL,
    );
    assert!(!junk.has_pending());
}

#[test]
fn records_round_trip_text_and_binary_and_reject_what_is_malformed() {
    for payload in [
        b"21.5".to_vec(),
        "é中".as_bytes().to_vec(),
        vec![0, 1, 255, 10],
    ] {
        let r = Record {
            topic: "s/1".into(),
            seq: 5,
            kind: Kind::Value,
            qos: 2,
            watermark: Some(3),
            id: Some(MessageId {
                epoch: 1_764_000_000_000,
                seq: 7,
            }),
            payload,
        };
        let v = encode_record(&r);
        let text = v.to_string();
        assert!(
            !text.contains("true") && !text.contains("null") && !text.contains('.')
                || text.contains("21.5")
        );
        assert_eq!(decode_record(&v, "s/1").unwrap(), r);
    }
    let good = encode_record(&Record {
        topic: "s/1".into(),
        seq: 5,
        kind: Kind::Value,
        qos: 0,
        watermark: None,
        id: None,
        payload: b"x".to_vec(),
    });
    assert!(
        decode_record(&good, "s/2").is_err(),
        "another topic's value"
    );
    for (key, bad) in [
        ("q", json!(3)),
        ("q", json!("<uninitialized>")),
        ("c", json!("z")),
        ("s", json!(1.5)),
        ("x", json!(7)),
    ] {
        let mut v = good.clone();
        v[key] = bad;
        assert!(decode_record(&v, "s/1").is_err(), "{key}");
    }
    let (entries, bad) = decode_shard(
        &json!({"e": [["a", 1, "v"], ["$SYS/x", 2, "v"], ["b", "x", "v"], 5, ["c", 3, "c"]]}),
    )
    .unwrap();
    assert_eq!((entries.len(), bad), (2, 3));
    assert!(
        decode_shard(&json!({"e": vec![json!(["a", 1, "v"]); MAX_SHARD_ENTRIES + 1]})).is_err()
    );
    assert!(decode_root(&json!({"n": vec![1; MAX_SHARDS + 1]})).is_err());
    assert!(decode_root(&json!("<uninitialized>")).is_err());
}

#[test]
fn value_names_are_short_stable_and_distinct() {
    let a = value_name("home/door");
    assert_eq!(a, value_name("home/door"));
    assert_ne!(a, value_name("home/doos"));
    assert_eq!(a.len(), 30);
    assert!(a
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(value_name(&"x".repeat(5000)).len(), 30);
}
