//! The DHT: single-writer resources with increasing seq, multi-writer ones, limits and encoding.

use super::tests::{err, node, ok, user};
use super::*;

#[test]
fn dht_single_needs_increasing_seq_and_its_owner() {
    let s = node();
    user(&s, "alice");
    user(&s, "bob");
    assert_eq!(
        err(
            &s,
            "dhtput",
            json!(["alice", "profile", "s", {"a": "1"}, "alice"])
        )
        .message,
        "Seq parameter required for single"
    );
    assert_eq!(
        err(
            &s,
            "dhtput",
            json!(["bob", "profile", "s", {"a": "1"}, "alice", 1])
        )
        .message,
        "Username must be the same as sig_user for single"
    );
    ok(
        &s,
        "dhtput",
        json!(["alice", "profile", "s", {"v": "4"}, "alice", 4]),
    );
    ok(
        &s,
        "dhtput",
        json!(["alice", "profile", "s", {"v": "same"}, "alice", 4]),
    );
    ok(
        &s,
        "dhtput",
        json!(["alice", "profile", "s", {"v": "lower"}, "alice", 3]),
    );
    let got = ok(&s, "dhtget", json!(["alice", "profile", "s"]));
    assert_eq!(got[0]["p"]["v"]["v"], "4");
    assert_eq!(got[0]["p"]["seq"], 4);
    assert_eq!(
        got[0]["p"]["target"],
        json!({"n": "alice", "r": "profile", "t": "s"})
    );
    assert_eq!(got[0]["sig_user"], "alice");
    ok(
        &s,
        "dhtput",
        json!(["alice", "profile", "s", {"v": "jump"}, "alice", 100]),
    );
    assert_eq!(
        ok(&s, "dhtget", json!(["alice", "profile", "s"]))[0]["p"]["seq"],
        100
    );
    assert_eq!(
        ok(&s, "dhtget", json!(["alice", "nothing", "s", 1, 1, 1])),
        json!([])
    );
    assert_eq!(
        err(&s, "dhtget", json!(["alice", "profile", "s", "10"])).message,
        "value is type str, expected int"
    );
}

#[test]
fn dht_seq_is_read_as_twisterds_32_bit_int() {
    let s = node();
    user(&s, "alice");
    // 2^32 + 5 keeps its low 32 bits: 5.
    ok(
        &s,
        "dhtput",
        json!(["alice", "r", "s", "a", "alice", 4_294_967_301_i64]),
    );
    assert_eq!(
        ok(&s, "dhtget", json!(["alice", "r", "s"]))[0]["p"]["seq"],
        5
    );
    // 2^31 is negative as a 32-bit int: twisterd stores nothing.
    ok(
        &s,
        "dhtput",
        json!(["alice", "r", "s", "b", "alice", 2_147_483_648_i64]),
    );
    let got = ok(&s, "dhtget", json!(["alice", "r", "s"]));
    assert_eq!(
        (got[0]["p"]["seq"].clone(), got[0]["p"]["v"].clone()),
        (json!(5), json!("a"))
    );
    ok(
        &s,
        "dhtput",
        json!(["alice", "r", "s", "c", "alice", i64::from(i32::MAX)]),
    );
    assert_eq!(
        ok(&s, "dhtget", json!(["alice", "r", "s"]))[0]["p"]["v"],
        "c"
    );
}

#[test]
fn dht_limits_drop_silently_and_bencode_loses_bools_floats_null() {
    let s = node();
    user(&s, "alice");
    ok(
        &s,
        "dhtput",
        json!(["alice", "x".repeat(33), "s", "v", "alice", 1]),
    );
    assert_eq!(
        ok(&s, "dhtget", json!(["alice", "x".repeat(33), "s"])),
        json!([])
    );
    ok(
        &s,
        "dhtput",
        json!(["alice", "big", "s", "a".repeat(8200), "alice", 1]),
    );
    assert_eq!(ok(&s, "dhtget", json!(["alice", "big", "s"])), json!([]));
    ok(
        &s,
        "dhtput",
        json!(["alice", "fits", "s", "a".repeat(8000), "alice", 1]),
    );
    assert_eq!(
        ok(&s, "dhtget", json!(["alice", "fits", "s"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(
        &s,
        "dhtput",
        json!(["alice", "float", "s", {"f": 1.5, "b": true, "z": null, "i": 3}, "alice", 1]),
    );
    let v = &ok(&s, "dhtget", json!(["alice", "float", "s"]))[0]["p"]["v"];
    assert_eq!(
        v,
        &json!({"b": "<uninitialized>", "f": "<uninitialized>", "i": 3, "z": "<uninitialized>"})
    );
}

#[test]
fn dht_multi_any_writer_newest_first_keeps_32() {
    let s = node();
    user(&s, "alice");
    user(&s, "carol");
    ok(
        &s,
        "dhtput",
        json!(["bob", "inbox", "m", {"from": "alice"}, "alice"]),
    );
    ok(
        &s,
        "dhtput",
        json!(["bob", "inbox", "m", {"from": "carol"}, "carol"]),
    );
    let got = ok(&s, "dhtget", json!(["bob", "inbox", "m"]));
    assert_eq!(got[0]["sig_user"], "carol");
    assert!(got[0]["p"].get("seq").is_none());
    ok(
        &s,
        "dhtput",
        json!(["bob", "big", "m", "a".repeat(800), "alice"]),
    );
    assert_eq!(ok(&s, "dhtget", json!(["bob", "big", "m"])), json!([]));
    for i in 0..40 {
        ok(
            &s,
            "dhtput",
            json!(["tag", "hashtag", "m", format!("item {i}"), "alice"]),
        );
    }
    let got = ok(&s, "dhtget", json!(["tag", "hashtag", "m"]));
    assert_eq!(got.as_array().unwrap().len(), 32);
    assert_eq!(got[0]["p"]["v"], "item 39");
}
