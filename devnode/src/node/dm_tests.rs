//! Direct messages: who may send, what each side lists, windows, sizes, twisterd's order.

use super::tests::{err, mine, node, ok, user};
use super::*;

#[test]
fn dms_reach_only_followers_and_only_sender_and_recipient() {
    let s = node();
    for u in ["alice", "bob", "carol"] {
        user(&s, u);
    }
    ok(&s, "follow", json!(["bob", ["alice"]]));
    ok(&s, "newdirectmsg", json!(["alice", 0, "bob", "hi bob"]));
    ok(
        &s,
        "newdirectmsg",
        json!(["alice", 1, "carol", "hi carol (not following)"]),
    );
    let bob = ok(
        &s,
        "getdirectmsgs",
        json!(["bob", 10, [{"username": "alice"}]]),
    );
    assert_eq!(bob["alice"][0]["text"], "hi bob");
    assert_eq!(bob["alice"][0]["fromMe"], false);
    assert_eq!(bob["alice"][0]["k"], 0);
    assert_eq!(
        ok(
            &s,
            "getdirectmsgs",
            json!(["carol", 10, [{"username": "alice"}]])
        ),
        json!({})
    );
    let alice = ok(
        &s,
        "getdirectmsgs",
        json!(["alice", 10, [{"username": "bob"}, {"username": "carol"}]]),
    );
    assert_eq!(alice["bob"][0]["fromMe"], true);
    assert_eq!(alice["carol"][0]["text"], "hi carol (not following)");
    // Following later does not bring back a dropped DM; rescandirectmsgs does.
    ok(&s, "follow", json!(["carol", ["alice"]]));
    assert_eq!(
        ok(
            &s,
            "getdirectmsgs",
            json!(["carol", 10, [{"username": "alice"}]])
        ),
        json!({})
    );
    ok(&s, "rescandirectmsgs", json!(["carol"]));
    assert_eq!(
        ok(
            &s,
            "getdirectmsgs",
            json!(["carol", 10, [{"username": "alice"}]])
        )["alice"][0]["k"],
        1
    );
    ok(&s, "rescandirectmsgs", json!(["carol"]));
    assert_eq!(
        ok(
            &s,
            "getdirectmsgs",
            json!(["carol", 10, [{"username": "alice"}]])
        )["alice"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // unregistered recipient
    let e = err(&s, "newdirectmsg", json!(["alice", 2, "ghost", "x"]));
    assert_eq!(e.message, "error encrypting to pubkey of destination user");
}

#[test]
fn identical_dms_in_one_second_are_kept_once_by_the_recipient() {
    let s = node();
    user(&s, "alice");
    user(&s, "bob");
    ok(&s, "follow", json!(["bob", ["alice"]]));
    ok(&s, "newdirectmsg", json!(["alice", 0, "bob", "same"]));
    ok(&s, "newdirectmsg", json!(["alice", 1, "bob", "same"]));
    let bob = ok(
        &s,
        "getdirectmsgs",
        json!(["bob", 10, [{"username": "alice"}]]),
    );
    let alice = ok(
        &s,
        "getdirectmsgs",
        json!(["alice", 10, [{"username": "bob"}]]),
    );
    assert_eq!(alice["bob"].as_array().unwrap().len(), 2);
    let same_second = alice["bob"][0]["time"] == alice["bob"][1]["time"];
    assert_eq!(
        bob["alice"].as_array().unwrap().len(),
        if same_second { 1 } else { 2 }
    );
}

#[test]
fn getdirectmsgs_windows_are_on_positions() {
    let s = node();
    user(&s, "alice");
    user(&s, "bob");
    ok(&s, "follow", json!(["bob", ["alice"]]));
    for k in 0..5 {
        ok(
            &s,
            "newdirectmsg",
            json!(["alice", k, "bob", format!("m{k}")]),
        );
    }
    let last2 = ok(
        &s,
        "getdirectmsgs",
        json!(["bob", 2, [{"username": "alice"}]]),
    );
    let ids: Vec<i64> = last2["alice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![3, 4]);
    let since = ok(
        &s,
        "getdirectmsgs",
        json!(["bob", 10, [{"username": "alice", "since_id": 2}]]),
    );
    assert_eq!(since["alice"].as_array().unwrap().len(), 2);
    let upto = ok(
        &s,
        "getdirectmsgs",
        json!(["bob", 10, [{"username": "alice", "max_id": 1}]]),
    );
    assert_eq!(upto["alice"].as_array().unwrap().len(), 2);
}

#[test]
fn dm_size_limit_and_copy_self() {
    let s = node();
    user(&s, "alice");
    user(&s, "bob");
    mine(&s, 40);
    let h = PostHeader {
        user: "alice",
        k: 69,
        lastk: None,
        height: s.node().state.height - 1,
        time: unix_now(),
        reply: None,
    };
    let max = rules::max_dm_bytes(&h, "bob");
    ok(
        &s,
        "newdirectmsg",
        json!(["alice", 69, "bob", "a".repeat(max)]),
    );
    let e = err(
        &s,
        "newdirectmsg",
        json!(["alice", 70, "bob", "a".repeat(max + 1)]),
    );
    assert_eq!(e.message, "bad bencoded post size");
    ok(
        &s,
        "newdirectmsg",
        json!(["alice", 62, "bob", "copy", true]),
    );
    assert_eq!(ok(&s, "getlasthave", json!(["alice"]))["alice"], 69);
    let mine_view = ok(
        &s,
        "getdirectmsgs",
        json!(["alice", 10, [{"username": "bob"}]]),
    );
    assert!(mine_view["bob"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["k"] == 63 && e["text"] == "copy"));
}

fn dm(time: i64, k: i64) -> DmEntry {
    DmEntry {
        time,
        text: format!("m{k}"),
        from_me: false,
        from: "alice".into(),
        k,
    }
}

#[test]
fn dms_of_one_second_are_listed_newest_first_as_twisterd_stores_them() {
    let mut conv = Vec::new();
    for (time, k) in [(100, 0), (100, 1), (101, 2), (101, 3), (101, 4), (102, 5)] {
        insert_dm(&mut conv, dm(time, k));
    }
    let ks: Vec<i64> = conv.iter().map(|e| e.k).collect();
    assert_eq!(ks, vec![1, 0, 4, 3, 2, 5]);
    // One that arrives late with an older time goes before that second's others: ids shift.
    insert_dm(&mut conv, dm(101, 9));
    let ks: Vec<i64> = conv.iter().map(|e| e.k).collect();
    assert_eq!(ks, vec![1, 0, 9, 4, 3, 2, 5]);
}

#[test]
fn getdirectmsgs_lists_in_twisterds_order_not_by_k() {
    let s = node();
    user(&s, "alice");
    user(&s, "bob");
    ok(&s, "follow", json!(["bob", ["alice"]]));
    for k in 0..20 {
        ok(
            &s,
            "newdirectmsg",
            json!(["alice", k, "bob", format!("m{k}")]),
        );
    }
    for (who, peer) in [("bob", "alice"), ("alice", "bob")] {
        let got = ok(&s, "getdirectmsgs", json!([who, 100, [{"username": peer}]]));
        let list = got[peer].as_array().unwrap();
        assert_eq!(list.len(), 20);
        for (i, pair) in list.windows(2).enumerate() {
            let (t0, t1) = (pair[0]["time"].as_i64(), pair[1]["time"].as_i64());
            let (k0, k1) = (pair[0]["k"].as_i64(), pair[1]["k"].as_i64());
            assert!(
                t0 < t1 || (t0 == t1 && k0 > k1),
                "{who}: by time, newest first within a second: {pair:?}"
            );
            assert_eq!(pair[0]["id"], json!(i));
        }
    }
}
