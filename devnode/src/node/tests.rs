use super::*;
use crate::rpc::{execute, Shared};

/// A node whose chain moves only when the test mines.
fn node() -> Shared {
    Shared::new(Node::new(State::default(), Blocks::Manual, 0), None)
}

fn call(s: &Shared, method: &str, params: Value) -> Result<Value, RpcError> {
    execute(s, &json!({"method": method, "params": params, "id": 1}))
}

fn ok(s: &Shared, method: &str, params: Value) -> Value {
    call(s, method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e}"))
}

fn err(s: &Shared, method: &str, params: Value) -> RpcError {
    call(s, method, params.clone()).expect_err(&format!("{method} {params} should fail"))
}

fn mine(s: &Shared, n: i64) {
    ok(s, "devnode_mine", json!([n]));
}

/// Creates, registers and waits the block after registration, as the plugin's start-up does.
fn user(s: &Shared, name: &str) {
    ok(s, "createwalletuser", json!([name]));
    ok(s, "sendnewusertransaction", json!([name]));
    mine(s, 2);
    ok(s, "follow", json!([name, [name]]));
}

#[test]
fn registration_needs_a_block_and_posting_one_more() {
    let s = node();
    mine(&s, 1);
    ok(&s, "createwalletuser", json!(["alice"]));
    assert_eq!(
        err(&s, "createwalletuser", json!(["alice"])).message,
        "Error: this username exists in wallet"
    );
    ok(&s, "sendnewusertransaction", json!(["alice"]));
    assert_eq!(
        err(&s, "sendnewusertransaction", json!(["alice"])).code,
        RPC_VERIFY_REJECTED
    );
    // in the mempool only
    assert_eq!(
        err(&s, "newpostmsg", json!(["alice", 0, "x"])).message,
        "too much posts from user 'alice' rejecting post"
    );
    mine(&s, 1);
    assert_eq!(
        err(&s, "newpostmsg", json!(["alice", 0, "x"])).message,
        "bad post signature"
    );
    mine(&s, 1);
    ok(&s, "newpostmsg", json!(["alice", 0, "x"]));
}

#[test]
fn invalid_names_are_created_but_never_registered() {
    let s = node();
    for name in ["Alice", "this_name_is_longer_than16", "a-b"] {
        ok(&s, "createwalletuser", json!([name]));
        let e = err(&s, "sendnewusertransaction", json!([name]));
        assert_eq!(
            (e.code, e.message.as_str()),
            (RPC_VERIFY_REJECTED, "TX rejected")
        );
    }
    assert_eq!(
        err(&s, "sendnewusertransaction", json!(["ghost"])).code,
        RPC_WALLET_INVALID_ACCOUNT_NAME
    );
}

#[test]
fn post_budget_is_twice_the_blocks_since_registration_plus_twenty() {
    let s = node();
    mine(&s, 1); // registration lands in block 2, as in the recording
    user(&s, "alice"); // height 3
    mine(&s, 21); // height 24: limit 2*(24-2)+20 = 64
    ok(&s, "newpostmsg", json!(["alice", 64, "edge"]));
    assert_eq!(
        err(&s, "newpostmsg", json!(["alice", 65, "over"])).code,
        RPC_INVALID_PARAMS
    );
    assert_eq!(
        err(&s, "newpostmsg", json!(["alice", -1, "neg"])).code,
        RPC_INVALID_PARAMS
    );
    mine(&s, 1);
    ok(&s, "newpostmsg", json!(["alice", 65, "now fits"]));
    // Counted for tests that must prove the plugin stays within its budget.
    let stats = ok(&s, "devnode_stats", json!([]));
    assert_eq!(stats["counters"]["posts_refused_budget"], json!(2));
}

#[test]
fn reused_k_is_ignored_silently_and_gaps_are_fine() {
    let s = node();
    user(&s, "alice");
    ok(&s, "newpostmsg", json!(["alice", 3, "first"]));
    let again = ok(&s, "newpostmsg", json!(["alice", 3, "DUPLICATE"]));
    assert_eq!(again["userpost"]["msg"], "DUPLICATE"); // the call still answers a signed post
    ok(&s, "newpostmsg", json!(["alice", 10, "gap"]));
    let five = ok(&s, "newpostmsg", json!(["alice", 5, "out of order"]));
    assert_eq!(five["userpost"]["lastk"], 10);
    let posts = ok(
        &s,
        "getposts",
        json!([10, [{"username": "alice", "since_id": 2, "max_id": 3}]]),
    );
    assert_eq!(posts.as_array().unwrap().len(), 1);
    assert_eq!(posts[0]["userpost"]["msg"], "first");
    assert_eq!(ok(&s, "getlasthave", json!(["alice"]))["alice"], 10);
}

#[test]
fn long_text_is_split_and_size_limit_matches_twisterd() {
    let s = node();
    user(&s, "alice");
    mine(&s, 60);
    // Size depends on the digits of height and time; compute the edge for this node's header.
    let height = s.node().state.height - 1;
    let h = PostHeader {
        user: "alice",
        k: 29,
        lastk: None,
        height,
        time: unix_now(),
        reply: None,
    };
    let max = rules::max_post_ascii(&h);
    let post = ok(&s, "newpostmsg", json!(["alice", 29, "a".repeat(max)]));
    let up = &post["userpost"];
    assert_eq!(up["msg"].as_str().unwrap().len(), 140);
    assert_eq!(up["msg2"].as_str().unwrap().len(), max - 140);
    let e = err(&s, "newpostmsg", json!(["alice", 31, "a".repeat(max + 2)]));
    assert_eq!(e.message, "bad bencoded post size");
    let empty = ok(&s, "newpostmsg", json!(["alice", 32, ""]));
    assert_eq!(empty["userpost"]["msg2"], "");
}

#[test]
fn only_wallet_users_sign() {
    let s = node();
    user(&s, "alice");
    let e = err(&s, "newpostmsg", json!(["mallory", 0, "x"]));
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            RPC_INTERNAL_ERROR,
            "error signing post with private key of user"
        )
    );
    assert_eq!(
        err(&s, "newdirectmsg", json!(["mallory", 0, "alice", "x"])).code,
        RPC_INTERNAL_ERROR
    );
    assert_eq!(
        err(&s, "follow", json!(["mallory", ["alice"]])).code,
        RPC_WALLET_INVALID_ACCOUNT_NAME
    );
    assert_eq!(
        err(
            &s,
            "dhtput",
            json!(["mallory", "profile", "s", "v", "mallory", 1])
        )
        .message,
        "Error: no sig_user in wallet"
    );
}

#[test]
fn wrong_types_and_counts_answer_like_json_spirit() {
    let s = node();
    user(&s, "alice");
    let e = err(&s, "newpostmsg", json!(["alice", "11", "k as string"]));
    assert_eq!(
        (e.code, e.message.as_str()),
        (RPC_MISC_ERROR, "value is type str, expected int")
    );
    let e = err(&s, "newpostmsg", json!(["alice", 11]));
    assert!(
        e.message.starts_with("newpostmsg <username> <k> <msg>"),
        "{}",
        e.message
    );
    let e = err(&s, "getposts", json!([10, {"username": "alice"}]));
    assert_eq!(e.message, "value is type obj, expected array");
    let e = err(&s, "follow", json!(["alice", [1]]));
    assert_eq!(e.message, "value is type int, expected str");
    assert_eq!(
        err(&s, "nosuchmethod", json!([])).code,
        RPC_METHOD_NOT_FOUND
    );
    assert_eq!(
        execute(&s, &json!({"method": "getinfo", "params": {"a": 1}}))
            .unwrap_err()
            .code,
        RPC_INVALID_REQUEST
    );
    assert_eq!(
        execute(&s, &json!({"params": []})).unwrap_err().code,
        RPC_INVALID_REQUEST
    );
    assert_eq!(
        execute(&s, &json!(5)).unwrap_err().code,
        RPC_INVALID_REQUEST
    );
}

#[test]
fn getposts_reads_followed_torrents_newest_first_with_windows_and_flags() {
    let s = node();
    user(&s, "alice");
    user(&s, "bob");
    user(&s, "dave");
    for k in 0..5 {
        ok(&s, "newpostmsg", json!(["alice", k, format!("a{k}")]));
    }
    ok(
        &s,
        "newpostmsg",
        json!(["dave", 0, "nobody follows dave but dave"]),
    );
    ok(&s, "unfollow", json!(["dave", ["dave"]]));
    ok(&s, "createwalletuser", json!(["eve"]));
    ok(&s, "sendnewusertransaction", json!(["eve"]));
    mine(&s, 2);
    ok(&s, "newpostmsg", json!(["eve", 0, "unfollowed"]));
    assert_eq!(
        ok(&s, "getposts", json!([10, [{"username": "eve"}]])),
        json!([])
    );
    let all = ok(&s, "getposts", json!([10, [{"username": "alice"}]]));
    let ks: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["userpost"]["k"].as_i64().unwrap())
        .collect();
    assert_eq!(ks, vec![4, 3, 2, 1, 0]);
    let two = ok(
        &s,
        "getposts",
        json!([2, [{"username": "alice", "since_id": 1, "max_id": 4}]]),
    );
    let ks: Vec<i64> = two
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["userpost"]["k"].as_i64().unwrap())
        .collect();
    assert_eq!(ks, vec![4, 3]);
    // DMs are pieces too: hidden by default, shown with flags 2/2, counted by getlasthave.
    ok(&s, "follow", json!(["bob", ["alice"]]));
    ok(&s, "newdirectmsg", json!(["alice", 5, "bob", "secret"]));
    assert_eq!(
        ok(
            &s,
            "getposts",
            json!([10, [{"username": "alice", "since_id": 4}]])
        ),
        json!([])
    );
    let dms = ok(&s, "getposts", json!([10, [{"username": "alice"}], 2, 2]));
    assert_eq!(dms.as_array().unwrap().len(), 1);
    assert!(dms[0]["userpost"]["dm"]["body"].is_string());
    assert!(
        !dms.to_string().contains("secret"),
        "DM text must not be readable from the piece"
    );
    assert_eq!(ok(&s, "getlasthave", json!(["bob"]))["alice"], 5);
    assert_eq!(
        ok(&s, "getlasthave", json!(["bob", ["bob"]])),
        json!({"bob": -1})
    );
}

#[test]
fn the_promoted_post_comes_first_once_per_interval() {
    let s = Shared::new(Node::new(State::default(), Blocks::Manual, 3600), None);
    user(&s, "alice");
    ok(&s, "newpostmsg", json!(["alice", 0, "x"]));
    let first = ok(&s, "getposts", json!([1, [{"username": "alice"}]]));
    assert_eq!(first[0]["sig_userpost"], "");
    assert_eq!(first[0]["userpost"]["n"], "nobody");
    assert_eq!(
        first.as_array().unwrap().len(),
        1,
        "the promoted post takes one slot of count"
    );
    let second = ok(&s, "getposts", json!([1, [{"username": "alice"}]]));
    assert_eq!(second[0]["userpost"]["n"], "alice");
}

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

#[test]
fn blocks_advance_on_their_interval() {
    let s = Shared::new(
        Node::new(State::default(), Blocks::Every(Duration::from_millis(1)), 0),
        None,
    );
    let later = Instant::now() + Duration::from_millis(50);
    s.node().advance_chain(later);
    assert!(s.node().state.height >= 40, "{}", s.node().state.height);
}

#[test]
fn state_survives_serialization() {
    let s = node();
    user(&s, "alice");
    user(&s, "bob");
    ok(&s, "follow", json!(["bob", ["alice"]]));
    ok(&s, "newpostmsg", json!(["alice", 0, "kept"]));
    ok(&s, "newdirectmsg", json!(["alice", 1, "bob", "dm kept"]));
    let bytes = serde_json::to_vec(&s.node().state).unwrap();
    let restored = Shared::new(
        Node::new(serde_json::from_slice(&bytes).unwrap(), Blocks::Manual, 0),
        None,
    );
    assert_eq!(
        ok(&restored, "getposts", json!([5, [{"username": "alice"}]]))[0]["userpost"]["msg"],
        "kept"
    );
    assert_eq!(
        ok(
            &restored,
            "getdirectmsgs",
            json!(["bob", 5, [{"username": "alice"}]])
        )["alice"][0]["text"],
        "dm kept"
    );
    assert_eq!(
        ok(&restored, "getfollowing", json!(["bob"])),
        json!(["alice", "bob"])
    );
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
