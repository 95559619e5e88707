use super::*;
use crate::rpc::{execute, Shared};

/// A node whose chain moves only when the test mines.
pub(super) fn node() -> Shared {
    Shared::new(Node::new(State::default(), Blocks::Manual, 0), None)
}

pub(super) fn call(s: &Shared, method: &str, params: Value) -> Result<Value, RpcError> {
    execute(s, &json!({"method": method, "params": params, "id": 1}))
}

pub(super) fn ok(s: &Shared, method: &str, params: Value) -> Value {
    call(s, method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e}"))
}

pub(super) fn err(s: &Shared, method: &str, params: Value) -> RpcError {
    call(s, method, params.clone()).expect_err(&format!("{method} {params} should fail"))
}

pub(super) fn mine(s: &Shared, n: i64) {
    ok(s, "devnode_mine", json!([n]));
}

/// Creates, registers and waits the block after registration, as the plugin's start-up does.
pub(super) fn user(s: &Shared, name: &str) {
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
