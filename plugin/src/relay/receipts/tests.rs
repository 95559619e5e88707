//! Receipts: the resource's codec, the receiving ledger and the sending tracker.

use super::codec::{self, Acks};
use super::ledger::{resolve, Ledger, Write};
use super::tracker::{Resend, Settings, Tracker, Via};
use super::{public_receivers, MessageId};
use crate::wire::Message;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn id(epoch: u64, seq: u64) -> MessageId {
    MessageId { epoch, seq }
}

fn acks(pairs: &[(u64, &[u64])]) -> Acks {
    let mut a = Acks::new();
    for (epoch, seqs) in pairs {
        let set = a.entry(*epoch).or_insert_with(codec::empty);
        for s in *seqs {
            set.insert(*s);
        }
    }
    a
}

fn msg(topic: &str, qos: u8) -> Message {
    Message {
        topic: topic.into(),
        payload: b"x".to_vec(),
        qos,
        retain: false,
    }
}

fn users(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const SECOND: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings {
        timeout: 10 * SECOND,
        max_backoff: 60 * SECOND,
        give_up: 600 * SECOND,
    }
}

// ----- codec -----

#[test]
fn the_resource_name_fits_twisters_limit_for_the_longest_user_name() {
    let longest = "a".repeat(twister_rules::MAX_USERNAME);
    assert!(codec::resource(&longest).len() <= twister_rules::MAX_DHT_RESOURCE);
    assert_eq!(codec::resource("bob"), "mqtt_ack_bob");
}

#[test]
fn receipts_round_trip_through_the_dht_value() {
    let a = acks(&[(1700, &[1, 2, 3, 5, 9]), (1800, &[1])]);
    let value = codec::encode(&a);
    assert_eq!(codec::decode(&value), Ok(a));
    // Contiguous acknowledgements cost one range whatever their number.
    let mut long = Acks::new();
    for s in 1..=100_000 {
        long.entry(7).or_insert_with(codec::empty).insert(s);
    }
    assert!(codec::encode(&long).to_string().len() < 64);
}

#[test]
fn receipts_too_large_for_one_value_keep_the_newest_within_8_kb() {
    let mut a = Acks::new();
    // 20 epochs of 2,000 separate ranges: far more than 8 KB as text.
    for epoch in 0..20u64 {
        let set = a.entry(epoch).or_insert_with(codec::empty);
        for s in 0..2_000u64 {
            set.insert(s * 2);
        }
    }
    let value = codec::encode(&a);
    assert!(twister_rules::dht_value_size(&value, true) <= twister_rules::MAX_DHT_SINGLE);
    let back = codec::decode(&value).unwrap();
    // The newest epochs are kept, the oldest went.
    let kept: Vec<u64> = back.keys().copied().collect();
    assert!(
        kept.len() < 20 && kept.contains(&19) && !kept.contains(&0),
        "{kept:?}"
    );
    assert!(back[&19].contains(3_998));
    assert!(!back[&19].contains(3_997));
}

#[test]
fn malformed_or_hostile_receipts_are_errors_not_panics() {
    let bad = [
        json!(null),
        json!("text"),
        json!({"v": 1}),
        json!({"v": 2, "e": []}),
        json!({"v": 1, "e": [[1]]}),
        json!({"v": 1, "e": [["1", "1-2"]]}),
        json!({"v": 1, "e": [[1, "9-2"]]}),
        json!({"v": 1, "e": [[1, "X!"]]}),
        json!({"v": 1, "e": [[1, "1,0"]]}),
        json!({"v": 1, "e": [[-1, "1"]]}),
        json!({"v": 1, "e": (0..17).map(|e| json!([e, "1"])).collect::<Vec<Value>>()}),
    ];
    for v in bad {
        assert!(codec::decode(&v).is_err(), "{v}");
    }
    assert_eq!(codec::decode(&json!({"v": 1, "e": []})), Ok(Acks::new()));
}

// ----- ledger (receiving side) -----

#[test]
fn a_message_is_acknowledged_only_once_the_broker_took_it_and_writes_are_batched() {
    let t0 = Instant::now();
    let interval = SECOND;
    let mut ledger = Ledger::default();
    ledger.handed("alice", id(5, 1), true);
    ledger.handed("alice", id(5, 2), true);
    // Handed, not yet taken by the broker: nothing to write.
    assert!(ledger.writes_due(t0, interval).is_empty());
    assert_eq!(ledger.next_write(t0, interval), None);
    ledger.broker_caught_up();
    assert_eq!(ledger.next_write(t0, interval), Some(t0));
    let first = ledger.writes_due(t0, interval);
    assert_eq!(
        first,
        vec![Write {
            sender: "alice".into(),
            resource: "mqtt_ack_alice".into(),
            acks: acks(&[(5, &[1, 2])]),
            seq: None,
        }]
    );
    // More arrives while the first write is under way: no second write at once.
    ledger.handed("alice", id(5, 3), true);
    ledger.broker_caught_up();
    assert!(ledger.writes_due(t0 + 2 * interval, interval).is_empty());
    ledger.written("alice", Ok((4, Acks::new())));
    // One write per interval: the next after the interval, with the next seq.
    assert!(ledger.writes_due(t0 + interval / 2, interval).is_empty());
    let second = ledger.writes_due(t0 + interval, interval);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].seq, Some(5));
    assert_eq!(second[0].acks, acks(&[(5, &[1, 2, 3])]));
    ledger.written("alice", Ok((5, Acks::new())));
    // Nothing new: nothing written.
    assert!(ledger.writes_due(t0 + 10 * interval, interval).is_empty());
}

/// The DHT as the driver sees it: one "s" value per resource with its seq.
#[derive(Default)]
struct Dht {
    stored: BTreeMap<String, (Value, i64)>,
}

impl Dht {
    /// What `crate::dht` does with a write: read first when the seq is unknown, put with seq.
    fn carry_out(&mut self, ledger: &mut Ledger, w: &Write) {
        let stored = self.stored.get(&w.resource).map(|(v, s)| (v, *s));
        let stored = if w.seq.is_none() { stored } else { None };
        let (value, seq, before) = resolve(w, stored);
        let current = self.stored.get(&w.resource).map_or(0, |(_, s)| *s);
        if seq > current {
            self.stored.insert(w.resource.clone(), (value, seq));
        }
        ledger.written(&w.sender, Ok((seq, before)));
    }

    fn acks(&self, resource: &str) -> Acks {
        codec::decode(&self.stored[resource].0).unwrap()
    }
}

#[test]
fn receipt_ranges_merge_and_survive_a_restart_of_the_receiver() {
    let t0 = Instant::now();
    let mut dht = Dht::default();
    let mut first_run = Ledger::default();
    for s in 1..=5 {
        first_run.handed("alice", id(5, s), true);
    }
    first_run.broker_caught_up();
    for w in first_run.writes_due(t0, SECOND) {
        dht.carry_out(&mut first_run, &w);
    }
    assert_eq!(dht.acks("mqtt_ack_alice"), acks(&[(5, &[1, 2, 3, 4, 5])]));
    // A new run knows nothing of it; it acknowledges 7 and 8 (6 is still on its way).
    let mut second_run = Ledger::default();
    second_run.handed("alice", id(5, 7), true);
    second_run.handed("alice", id(5, 8), true);
    second_run.broker_caught_up();
    for w in second_run.writes_due(t0, SECOND) {
        assert_eq!(
            w.seq, None,
            "the first write of a run reads the resource first"
        );
        dht.carry_out(&mut second_run, &w);
    }
    assert_eq!(
        dht.stored["mqtt_ack_alice"].1, 2,
        "written above the stored seq"
    );
    assert_eq!(
        dht.acks("mqtt_ack_alice"),
        acks(&[(5, &[1, 2, 3, 4, 5, 7, 8])])
    );
    // 6 arrives: the ranges merge into one.
    second_run.handed("alice", id(5, 6), true);
    second_run.broker_caught_up();
    for w in second_run.writes_due(t0 + SECOND, SECOND) {
        dht.carry_out(&mut second_run, &w);
    }
    let all = dht.acks("mqtt_ack_alice");
    assert_eq!(all[&5].iter().collect::<Vec<_>>(), [(1, 8)]);
    assert_eq!(second_run.acks("alice"), Some(&all));
}

#[test]
fn a_message_still_in_the_channel_to_the_broker_is_not_acknowledged() {
    let t0 = Instant::now();
    let mut ledger = Ledger::default();
    // 1 and 2 go into the channel; 3 is not wanted here (handled, nothing sent).
    ledger.sent_to_broker();
    ledger.handed("alice", id(5, 1), true);
    ledger.sent_to_broker();
    ledger.handed("alice", id(5, 2), true);
    ledger.handed("alice", id(5, 3), true);
    // The broker took the first only.
    ledger.broker_backlog(1);
    let w = ledger.writes_due(t0, SECOND);
    assert_eq!(w[0].acks, acks(&[(5, &[1])]));
    ledger.written("alice", Ok((1, Acks::new())));
    ledger.broker_backlog(0);
    let w = ledger.writes_due(t0 + SECOND, SECOND);
    assert_eq!(w[0].acks, acks(&[(5, &[1, 2, 3])]));
}

#[test]
fn qos_0_messages_make_no_write_of_their_own_and_join_the_next() {
    let t0 = Instant::now();
    let mut ledger = Ledger::default();
    for s in 1..=3 {
        ledger.handed("alice", id(5, s), false);
    }
    ledger.broker_caught_up();
    assert!(
        ledger.writes_due(t0, SECOND).is_empty(),
        "QoS 0 alone: no write"
    );
    ledger.handed("alice", id(5, 4), true);
    ledger.broker_caught_up();
    let w = ledger.writes_due(t0, SECOND);
    assert_eq!(
        w[0].acks[&5].iter().collect::<Vec<_>>(),
        [(1, 4)],
        "one range"
    );
    ledger.written("alice", Ok((1, Acks::new())));
    // A copy of a message acknowledged and written: nothing new to write.
    ledger.handed("alice", id(5, 4), true);
    ledger.broker_caught_up();
    assert!(ledger.writes_due(t0 + 5 * SECOND, SECOND).is_empty());
}

#[test]
fn a_failed_write_is_retried_after_reading_the_resource_again() {
    let t0 = Instant::now();
    let mut ledger = Ledger::default();
    ledger.handed("alice", id(1, 1), true);
    ledger.broker_caught_up();
    let w = ledger.writes_due(t0, SECOND);
    ledger.written("alice", Ok((3, Acks::new())));
    assert_eq!(w.len(), 1);
    ledger.handed("alice", id(1, 2), true);
    ledger.broker_caught_up();
    let w = ledger.writes_due(t0 + SECOND, SECOND);
    assert_eq!(w[0].seq, Some(4));
    ledger.written("alice", Err("dhtput: timeout".into()));
    let w = ledger.writes_due(t0 + 2 * SECOND, SECOND);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].seq, None);
    assert_eq!(w[0].acks, acks(&[(1, &[1, 2])]));
}

#[test]
fn the_ledger_stays_bounded_per_sender() {
    let mut ledger = Ledger::default();
    for epoch in 0..(codec::MAX_EPOCHS as u64 + 4) {
        ledger.handed("alice", id(epoch, 1), true);
    }
    for s in 0..(codec::MAX_RANGES as u64 + 10) {
        ledger.handed("alice", id(100, s * 2), true);
    }
    ledger.broker_caught_up();
    let a = ledger.acks("alice").unwrap();
    assert_eq!(a.len(), codec::MAX_EPOCHS);
    assert_eq!(a[&100].len(), codec::MAX_RANGES);
    assert_eq!(ledger.forgotten, 5);
}

// ----- tracker (sending side) -----

#[test]
fn qos_0_and_messages_nobody_is_expected_to_acknowledge_are_released_at_once() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    assert!(!t.track(id(1, 1), msg("a", 0), Via::Public, users(&["bob"]), t0));
    assert!(!t.track(id(1, 2), msg("a", 1), Via::Public, users(&[]), t0));
    assert!(t.track(id(1, 3), msg("a", 1), Via::Public, users(&["bob"]), t0));
    assert_eq!(t.take_released(), [id(1, 1), id(1, 2)]);
    assert!(t.is_kept(id(1, 3)));
}

#[test]
fn only_receipts_of_intended_receivers_release_a_message() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    t.track(
        id(1, 1),
        msg("a", 1),
        Via::Public,
        users(&["bob", "carol"]),
        t0,
    );
    let a = acks(&[(1, &[1])]);
    // Someone who was never meant to receive it acknowledges it: nothing changes.
    assert_eq!(t.acknowledged("mallory", &a, t0), 0);
    // Another epoch's receipt does not count either.
    assert_eq!(t.acknowledged("bob", &acks(&[(2, &[1])]), t0), 0);
    assert_eq!(t.acknowledged("bob", &a, t0), 1);
    assert!(t.take_released().is_empty());
    assert_eq!(t.awaited(), users(&["carol"]));
    assert_eq!(t.acknowledged("carol", &a, t0), 1);
    assert_eq!(t.take_released(), [id(1, 1)]);
    assert!(t.is_empty());
    // A repeated receipt changes nothing.
    assert_eq!(t.acknowledged("carol", &a, t0), 0);
    assert_eq!(t.latency_quantile(0.5), Some(Duration::ZERO));
}

#[test]
fn times_to_a_receipt_are_kept_for_percentiles() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    for s in 1..=100u64 {
        t.track(id(1, s), msg("a", 1), Via::Private, users(&["bob"]), t0);
    }
    assert_eq!(t.latency_quantile(0.5), None);
    for s in 1..=100u64 {
        let at = t0 + Duration::from_millis(s * 10);
        t.acknowledged("bob", &acks(&[(1, &[s])]), at);
    }
    assert_eq!(t.latency_quantile(0.5), Some(Duration::from_millis(510)));
    assert_eq!(t.latency_quantile(0.99), Some(Duration::from_millis(990)));
    assert_eq!(t.counters.acknowledged, 100);
}

#[test]
fn unacknowledged_messages_are_resent_with_backoff_from_the_confirmed_post() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    let m = msg("a", 1);
    t.track(id(1, 1), m.clone(), Via::Private, users(&["bob"]), t0);
    // The post budget holds it back 30 s: still queued, it is not resent (only given up, at last).
    assert!(t.handle_timeout(t0 + 29 * SECOND).resends.is_empty());
    assert_eq!(t.poll_timeout(t0), Some(t0 + 600 * SECOND));
    // The receipt's clock starts when the DM is stored.
    let posted = t0 + 30 * SECOND;
    t.posted(id(1, 1), posted);
    assert_eq!(t.poll_timeout(posted), Some(posted + 10 * SECOND));
    assert!(t.handle_timeout(posted + 9 * SECOND).resends.is_empty());
    let mut at = posted;
    let mut waits = Vec::new();
    for _ in 0..5 {
        let next = t.poll_timeout(at).unwrap();
        waits.push((next - at).as_secs());
        let due = t.handle_timeout(next);
        assert_eq!(
            due.resends,
            [Resend {
                id: id(1, 1),
                message: m.clone(),
                to: Some("bob".into())
            }]
        );
        // Not again before the resent copy's own post is stored.
        assert!(t.handle_timeout(next + 300 * SECOND).resends.is_empty());
        t.posted(id(1, 1), next);
        at = next;
    }
    // 10 s, then doubling, capped at 60 s.
    assert_eq!(waits, [10, 20, 40, 60, 60]);
    assert_eq!(t.counters.resent, 5);
}

#[test]
fn a_private_message_to_two_recipients_goes_again_only_to_the_one_missing() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    t.track(
        id(1, 1),
        msg("a", 1),
        Via::Private,
        users(&["bob", "carol"]),
        t0,
    );
    // The same message also public, expected by dave: one entry waits for all three.
    t.track(id(1, 1), msg("a", 1), Via::Public, users(&["dave"]), t0);
    t.posted(id(1, 1), t0);
    assert_eq!(t.len(), 1);
    assert_eq!(t.awaited(), users(&["bob", "carol", "dave"]));
    t.acknowledged("bob", &acks(&[(1, &[1])]), t0);
    let to: Vec<Option<String>> = t
        .handle_timeout(t0 + 10 * SECOND)
        .resends
        .into_iter()
        .map(|r| r.to)
        .collect();
    assert_eq!(to, [Some("carol".to_string()), Some("dave".to_string())]);
}

#[test]
fn a_public_post_some_receivers_acknowledged_goes_again_only_to_the_others() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    t.track(
        id(1, 1),
        msg("a", 2),
        Via::Public,
        users(&["bob", "carol", "dave"]),
        t0,
    );
    t.track(
        id(1, 2),
        msg("a", 1),
        Via::Public,
        users(&["bob", "carol"]),
        t0,
    );
    t.posted(id(1, 1), t0);
    t.posted(id(1, 2), t0);
    t.acknowledged("bob", &acks(&[(1, &[1])]), t0);
    let due = t.handle_timeout(t0 + 10 * SECOND);
    let sent: Vec<(u64, Option<String>)> = due
        .resends
        .iter()
        .map(|r| (r.id.seq, r.to.clone()))
        .collect();
    // 1: bob has it, a DM each to carol and dave. 2: nobody has it, one public post again.
    assert_eq!(
        sent,
        [
            (1, Some("carol".into())),
            (1, Some("dave".into())),
            (2, None)
        ]
    );
}

#[test]
fn after_the_give_up_time_messages_are_released_and_counted_per_receiver() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    t.track(
        id(1, 1),
        msg("a", 1),
        Via::Public,
        users(&["bob", "carol"]),
        t0,
    );
    t.track(
        id(1, 2),
        msg("a", 1),
        Via::Private,
        users(&["bob"]),
        t0 + SECOND,
    );
    t.acknowledged("carol", &acks(&[(1, &[1])]), t0);
    let u = t.unacknowledged();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].receiver.as_str(), u[0].messages, u[0].oldest),
        ("bob", 2, t0)
    );
    let due = t.handle_timeout(t0 + 600 * SECOND);
    assert_eq!(due.gave_up, BTreeMap::from([("bob".to_string(), 1)]));
    assert_eq!(t.take_released(), [id(1, 1)]);
    let due = t.handle_timeout(t0 + 601 * SECOND);
    assert_eq!(due.gave_up, BTreeMap::from([("bob".to_string(), 1)]));
    assert_eq!(t.counters.gave_up, 2);
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(t0), None);
}

#[test]
fn public_messages_wait_for_the_expected_receivers_whose_interest_matches() {
    let expected = vec!["bob".to_string(), "carol".to_string(), "dave".to_string()];
    let interest = BTreeMap::from([
        ("bob".to_string(), vec!["a/#".to_string()]),
        ("carol".to_string(), vec!["b/#".to_string()]),
        ("mallory".to_string(), vec!["#".to_string()]),
    ]);
    // dave's interest is unknown, mallory is not expected.
    assert_eq!(
        public_receivers(&expected, &interest, "a/1"),
        users(&["bob"])
    );
    assert_eq!(public_receivers(&expected, &interest, "c"), users(&[]));
}

#[test]
fn one_epoch_too_large_for_one_value_keeps_its_highest_ranges() {
    let mut a = Acks::new();
    let set = a.entry(3).or_insert_with(codec::empty);
    for s in 1..=1000u64 {
        set.insert(s * 1_000_000_000_000_000);
    }
    assert!(codec::value_size(&a) > twister_rules::MAX_DHT_SINGLE);
    let value = codec::encode(&a);
    assert!(twister_rules::dht_value_size(&value, true) <= twister_rules::MAX_DHT_SINGLE);
    let back = codec::decode(&value).unwrap();
    assert!(back[&3].contains(1000 * 1_000_000_000_000_000));
    assert!(!back[&3].contains(1_000_000_000_000_000));
}

#[test]
fn the_tracker_stays_bounded_giving_up_the_oldest() {
    let t0 = Instant::now();
    let mut t = Tracker::new(settings());
    let n = super::tracker::MAX_TRACKED as u64;
    for s in 1..=n + 2 {
        t.track(id(1, s), msg("a", 1), Via::Private, users(&["bob"]), t0);
    }
    // Due at once although no timeout passed: the two oldest are given up.
    assert_eq!(t.poll_timeout(t0), Some(t0));
    let due = t.handle_timeout(t0);
    assert!(due.resends.is_empty());
    assert_eq!(due.gave_up, BTreeMap::from([("bob".to_string(), 2)]));
    assert_eq!(t.take_released()[..], [id(1, 1), id(1, 2)]);
    assert_eq!(t.len(), n as usize);
    assert!(t.is_kept(id(1, 3)));
}

#[test]
fn a_write_under_way_when_the_worker_restarts_is_made_again_after_reading_the_resource() {
    let t0 = Instant::now();
    let mut ledger = Ledger::default();
    ledger.handed("alice", id(1, 1), true);
    ledger.broker_caught_up();
    ledger.writes_due(t0, SECOND);
    ledger.written("alice", Ok((7, Acks::new())));
    ledger.handed("alice", id(1, 2), true);
    ledger.broker_caught_up();
    assert_eq!(ledger.writes_due(t0 + SECOND, SECOND)[0].seq, Some(8));
    // The worker restarts before the answer: the answer may never come to the new one.
    ledger.restarted();
    let again = ledger.writes_due(t0 + 2 * SECOND, SECOND);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].seq, None, "read the resource first");
    assert_eq!(again[0].acks, acks(&[(1, &[1, 2])]));
}
