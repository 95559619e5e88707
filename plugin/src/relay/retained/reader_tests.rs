//! The reader's decisions: which shards and values to fetch, newest wins, clears, the order against
//! live messages (watermarks, ids).

use super::reader::{shards_to_read, to_fetch, Plan, Progress, Reader, Synced, MAX_WAIT_MS};
use super::writer::Writer;
use super::writer_tests::{record_of, INTERVAL, NOW};
use super::*;
use std::collections::BTreeMap;

fn rec(topic: &str, seq: i64, kind: Kind, watermark: Option<i64>, payload: &[u8]) -> Record {
    Record {
        topic: topic.into(),
        seq,
        kind,
        qos: 1,
        watermark,
        id: None,
        payload: payload.to_vec(),
    }
}

fn never(_: MessageId) -> bool {
    false
}

/// The inbox read every post below `read_below` and handed on no id.
fn at(read_below: Option<i64>) -> Progress<'static> {
    Progress {
        read_below,
        last_listed: None,
        handed_on: &never,
    }
}

/// Every post below this was read: no value waits for its posts.
const READ: i64 = 1000;

fn synced(records: Vec<Record>) -> Synced {
    Synced {
        user: "alice".into(),
        records,
        ..Default::default()
    }
}

#[test]
fn the_reader_fetches_changed_shards_and_lacking_values_wanted_first() {
    assert_eq!(shards_to_read(&[5, 7], &[5, 8, 1]), vec![1, 2]);
    assert!(shards_to_read(&[5], &[5]).is_empty());
    let entries = vec![
        IndexEntry {
            topic: "x/1".into(),
            seq: 3,
            kind: Kind::Value,
        },
        IndexEntry {
            topic: "y/1".into(),
            seq: 4,
            kind: Kind::Cleared,
        },
        IndexEntry {
            topic: "y/2".into(),
            seq: 4,
            kind: Kind::Oversize,
        },
        IndexEntry {
            topic: "y/3".into(),
            seq: 2,
            kind: Kind::Value,
        },
    ];
    let known: BTreeMap<String, i64> = [("y/3".to_string(), 2)].into();
    let (fetch, index_only, more) = to_fetch(&entries, &known, &["y/#".into()], 1);
    assert_eq!(
        fetch.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        ["y/1"]
    );
    assert_eq!(index_only.len(), 1);
    assert!(more);
    let (fetch, _, more) = to_fetch(&entries, &known, &[], 10);
    assert_eq!(fetch.len(), 2);
    assert!(!more);
}

#[test]
fn newest_wins_by_seq_and_a_clear_applies() {
    let mut r = Reader::default();
    let out = r
        .apply(
            synced(vec![rec("t", 10, Kind::Value, Some(4), b"on")]),
            &at(Some(READ)),
            NOW,
        )
        .messages;
    assert_eq!(out.len(), 1);
    assert!(out[0].retain);
    assert!(r
        .apply(
            synced(vec![rec("t", 9, Kind::Value, Some(4), b"older")]),
            &at(Some(READ)),
            NOW
        )
        .messages
        .is_empty());
    assert!(
        r.apply(
            synced(vec![rec("t", 11, Kind::Value, Some(5), b"on")]),
            &at(Some(READ)),
            NOW
        )
        .messages
        .is_empty(),
        "the same value again"
    );
    let cleared = r
        .apply(
            synced(vec![rec("t", 12, Kind::Cleared, Some(6), b"")]),
            &at(Some(READ)),
            NOW,
        )
        .messages;
    assert_eq!(
        (cleared.len(), cleared[0].payload.len(), cleared[0].retain),
        (1, 0, true)
    );
    assert_eq!(
        (r.counters.injected, r.counters.cleared, r.counters.skipped),
        (1, 1, 2)
    );
    assert_eq!(r.plan("alice", &[]).known.get("t"), Some(&12));
}

#[test]
fn a_live_message_orders_against_the_dht_by_the_watermark() {
    let mut r = Reader::default();
    // Live from post 20; a value written when the next post was 15 is older: skipped.
    assert!(r.live("alice", 20, "t", b"live"));
    assert!(r
        .apply(
            synced(vec![rec("t", 10, Kind::Value, Some(15), b"old")]),
            &at(Some(READ)),
            NOW
        )
        .messages
        .is_empty());
    // A value written after post 20 (watermark 21) is newer: taken.
    assert_eq!(
        r.apply(
            synced(vec![rec("t", 11, Kind::Value, Some(21), b"new")]),
            &at(Some(READ)),
            NOW
        )
        .messages
        .len(),
        1
    );
    // A live message from post 20 arriving after it (a restart catching up) is stale...
    assert!(!r.live("alice", 20, "t", b"live"));
    // ...one from post 21 on is not.
    assert!(r.live("alice", 21, "t", b"newer"));
    // An unordered value never replaces a live one.
    assert!(r
        .apply(
            synced(vec![rec("t", 12, Kind::Value, None, b"unordered")]),
            &at(Some(READ)),
            NOW
        )
        .messages
        .is_empty());
    // With nothing live, an unordered value is taken.
    assert_eq!(
        r.apply(
            synced(vec![rec("u", 1, Kind::Value, None, b"x")]),
            &at(Some(READ)),
            NOW
        )
        .messages
        .len(),
        1
    );
    assert_eq!(r.counters.stale_live, 1);
}

#[test]
fn the_reader_state_survives_a_restart_for_followed_users_only() {
    let mut r = Reader::default();
    r.live("alice", 3, "a", b"1");
    r.apply(
        Synced {
            user: "bob".into(),
            shards: vec![(0, 7)],
            records: vec![rec("b", 4, Kind::Value, Some(2), b"2")],
            ..Default::default()
        },
        &at(Some(READ)),
        NOW,
    );
    let v = r.to_json();
    let back = Reader::from_json(&v, &["alice".into(), "bob".into()]);
    assert_eq!(back.to_json(), v);
    let plan: Plan = back.plan("bob", &["b".into()]);
    assert_eq!((plan.shards, plan.known.get("b")), (vec![7], Some(&4)));
    let only_alice = Reader::from_json(&v, &["alice".into()]);
    assert!(only_alice.plan("bob", &[]).known.is_empty());
    assert!(
        Reader::from_json(&json!({"alice": {"topics": 5}}), &["alice".into()])
            .plan("alice", &[])
            .known
            .is_empty()
    );
}

#[test]
fn a_value_whose_posts_are_still_unread_waits_for_them() {
    let mut r = Reader::default();
    let value = || Synced {
        user: "alice".into(),
        shards: vec![(0, 9)],
        records: vec![rec("t", 10, Kind::Value, Some(15), b"v")],
        ..Default::default()
    };
    // Posts up to 13 read: the ones below 15 (which carry the value or older) are not all read.
    let waits = r.apply(value(), &at(Some(14)), NOW);
    assert_eq!((waits.messages.len(), waits.deferred), (0, 1));
    assert!(r.plan("alice", &[]).known.is_empty(), "fetched again later");
    assert!(
        r.plan("alice", &[]).shards.is_empty(),
        "its shard is read again"
    );
    assert_eq!(
        r.apply(value(), &at(None), NOW).deferred,
        1,
        "reading not started yet"
    );
    // Once they are read, it is taken (nothing live came for it).
    let taken = r.apply(value(), &at(Some(15)), NOW);
    assert_eq!((taken.messages.len(), taken.deferred), (1, 0));
    assert_eq!(r.plan("alice", &[]).shards, vec![9]);
    // An unordered value without an id (an older writer) does not wait.
    let unordered = Synced {
        user: "alice".into(),
        records: vec![rec("u", 1, Kind::Value, None, b"x")],
        ..Default::default()
    };
    assert_eq!(r.apply(unordered, &at(None), NOW).messages.len(), 1);
}

const ID: MessageId = MessageId {
    epoch: 1_794_000_000_000,
    seq: 42,
};

fn with_id(mut r: Record) -> Record {
    r.id = Some(ID);
    r
}

fn big_text() -> Synced {
    synced(vec![with_id(rec(
        "big/text",
        10,
        Kind::Value,
        Some(20),
        b"t",
    ))])
}

#[test]
fn a_value_waits_without_limit_while_its_posts_are_listed_and_unread() {
    // The flaky failure: the publisher's posts 5..19 (a fragmented message, then this value) are
    // listed, the reader is slow to read them. Before: taken after 5 syncs, ahead of them.
    let mut r = Reader::default();
    let listed = Progress {
        read_below: Some(5),
        last_listed: Some(19),
        handed_on: &never,
    };
    for later in [0, MAX_WAIT_MS, 100 * MAX_WAIT_MS] {
        let waits = r.apply(big_text(), &listed, NOW + later);
        assert_eq!((waits.messages.len(), waits.deferred), (0, 1), "{later}");
    }
    // Read (the live copy handed on with the posts before it): nothing more to inject.
    let seen = |id: MessageId| id == ID;
    let read = Progress {
        read_below: Some(20),
        last_listed: Some(19),
        handed_on: &seen,
    };
    let done = r.apply(big_text(), &read, NOW + 101 * MAX_WAIT_MS);
    assert_eq!((done.messages.len(), done.deferred), (0, 0));
    assert_eq!(r.counters.skipped, 1);
    assert_eq!(r.plan("alice", &[]).known.get("big/text"), Some(&10));
}

#[test]
fn a_value_whose_posts_are_not_listed_yet_waits_at_most_max_wait() {
    let mut r = Reader::default();
    // Its post is slow to reach this node (or its number was skipped): not listed yet.
    let unlisted = Progress {
        read_below: Some(5),
        last_listed: Some(4),
        handed_on: &never,
    };
    assert_eq!(r.apply(big_text(), &unlisted, NOW).deferred, 1);
    assert_eq!(
        r.apply(big_text(), &unlisted, NOW + MAX_WAIT_MS - 1)
            .deferred,
        1
    );
    // Never listed: taken, and its id said, so a live copy arriving after all is a duplicate.
    let taken = r.apply(big_text(), &unlisted, NOW + MAX_WAIT_MS);
    assert_eq!((taken.messages.len(), taken.ids), (1, vec![ID]));
    // Listed now, not read: waits again, however long it waited before.
    let mut r = Reader::default();
    assert_eq!(r.apply(big_text(), &unlisted, NOW).deferred, 1);
    let listed = Progress {
        last_listed: Some(19),
        ..unlisted
    };
    assert_eq!(
        r.apply(big_text(), &listed, NOW + 2 * MAX_WAIT_MS).deferred,
        1
    );
}

#[test]
fn a_value_whose_live_copy_was_handed_on_is_never_injected_again() {
    let mut r = Reader::default();
    let seen = |id: MessageId| id == ID;
    // The live copy came (in a post below the watermark, read), another value on the topic before it
    // was injected from the DHT: the same message is not injected a second time, whatever the digest.
    r.apply(
        synced(vec![rec("big/text", 5, Kind::Value, Some(3), b"older")]),
        &at(Some(READ)),
        NOW,
    );
    let read = Progress {
        read_below: Some(READ),
        last_listed: Some(READ),
        handed_on: &seen,
    };
    let out = r.apply(big_text(), &read, NOW);
    assert_eq!((out.messages.len(), out.deferred), (0, 0));
    // A value without a watermark (its publisher's posts did not drain in time) but with an id waits
    // for its live copy, which makes it a duplicate.
    let mut r = Reader::default();
    let unordered = || synced(vec![with_id(rec("u", 1, Kind::Value, None, b"x"))]);
    assert_eq!(r.apply(unordered(), &at(Some(READ)), NOW).deferred, 1);
    let out = r.apply(unordered(), &read, NOW + 2000);
    assert_eq!((out.messages.len(), out.deferred), (0, 0));
    // Its live copy never came (this broker started after it): taken after the wait.
    let mut r = Reader::default();
    assert_eq!(r.apply(unordered(), &at(Some(READ)), NOW).deferred, 1);
    let out = r.apply(unordered(), &at(Some(READ)), NOW + MAX_WAIT_MS);
    assert_eq!((out.messages.len(), out.ids), (1, vec![ID]));
}

#[test]
fn the_value_carries_the_id_of_the_newest_message_that_set_it() {
    let mut w = Writer::new(INTERVAL);
    let older = MessageId { seq: 41, ..ID };
    w.publish_message("t", b"1", 1, Some(older), NOW).unwrap();
    w.publish_message("t", b"2", 1, Some(ID), NOW + 10).unwrap();
    let puts = w.take_puts(NOW + 10, Some(7), false);
    let r = record_of(&puts[0]);
    assert_eq!((r.payload.as_slice(), r.id), (&b"2"[..], Some(ID)));
    // Old values without an id stay readable; a malformed id is refused.
    let mut v = encode_record(&r);
    v.as_object_mut().unwrap().remove("i");
    assert_eq!(decode_record(&v, "t").unwrap().id, None);
    v["i"] = json!([1, -2]);
    assert!(decode_record(&v, "t").is_err());
    v["i"] = json!("1.2");
    assert!(decode_record(&v, "t").is_err());
}
