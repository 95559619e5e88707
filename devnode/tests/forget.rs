//! The `forget_newest` fault over real HTTP: a node with a data directory forgets the newest pieces of
//! a user, in memory and on disk, as a twisterd killed right after storing them; its peer keeps them.

mod support;
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_have(n: &Node, local: &str, of: &str) -> i64 {
    n.ok("getlasthave", json!([local]))[of]
        .as_i64()
        .unwrap_or(-1)
}

#[test]
fn a_node_forgets_its_newest_pieces_for_good_while_its_peer_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = format!("-datadir={}", dir.path().display());
    let a = Node::start(&[
        "-blockinterval=0.1",
        "-spaminterval=0",
        "-listen",
        "-port=0",
    ]);
    let connect = format!("-connect={}", a.peer_addr());
    let mut b = Node::start(&["-blockinterval=0", "-spaminterval=0", &connect, &datadir]);
    b.ok("createwalletuser", json!(["alice"]));
    b.ok("sendnewusertransaction", json!(["alice"]));
    wait_until("alice registered and able to post", || {
        b.ok("follow", json!(["alice", ["alice"]]));
        b.call("newpostmsg", json!(["alice", 1, "post 1"])).is_ok()
    });
    for k in 2..=5 {
        b.ok("newpostmsg", json!(["alice", k, format!("post {k}")]));
    }
    a.ok("createwalletuser", json!(["carol"]));
    a.ok("sendnewusertransaction", json!(["carol"]));
    wait_until("carol following alice on A", || {
        a.ok("follow", json!(["carol", ["alice"]]));
        last_have(&a, "carol", "alice") == 5
    });

    let answer = b.ok("devnode_fault", json!([{"forget_newest": {"alice": 2}}]));
    assert_eq!(answer["forgotten"], json!({"alice": [5, 4]}));
    // Killed and restarted alone from its data directory: the forgotten pieces stay forgotten.
    b.signal(libc::SIGKILL);
    b.wait();
    let b = Node::start(&["-blockinterval=0", "-spaminterval=0", &datadir]);
    assert_eq!(last_have(&b, "alice", "alice"), 3);
    assert_eq!(last_have(&a, "carol", "alice"), 5, "the peer keeps them");
    // Its owner's next post under a forgotten number is taken: other text under a number peers hold.
    b.ok("newpostmsg", json!(["alice", 4, "another post 4"]));
    assert_eq!(last_have(&b, "alice", "alice"), 4);
}
