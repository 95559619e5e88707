//! Peering dev nodes over real TCP and real HTTP: what one node is told reaches the others (chain,
//! registrations, posts, DMs, DHT values), a node cut off catches up when the link returns, a node
//! restarted from its data directory resumes, and what a call changed is on disk before it is answered.

mod support;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn height(n: &Node) -> i64 {
    n.ok("getblockcount", json!([])).as_i64().unwrap()
}

/// A user in `n`'s wallet, registered (by whichever node mines) and following itself.
fn user(n: &Node, name: &str) {
    n.ok("createwalletuser", json!([name]));
    n.ok("sendnewusertransaction", json!([name]));
    wait_until(&format!("{name} registered"), || {
        n.ok("follow", json!([name, [name]]));
        n.ok("getfollowing", json!([name]))
            .as_array()
            .unwrap()
            .contains(&json!(name))
    });
    // Posts are signed one block below the best: able to post two blocks after registration.
    let h = height(n);
    wait_until("two more blocks", || height(n) >= h + 2);
}

fn last_have(n: &Node, local: &str, of: &str) -> i64 {
    n.ok("getlasthave", json!([local]))[of]
        .as_i64()
        .unwrap_or(-1)
}

fn texts(n: &Node, of: &str) -> Vec<String> {
    let posts = n.ok("getposts", json!([1000, [{"username": of}]]));
    let mut v: Vec<(i64, String)> = posts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["userpost"]["k"].as_i64().unwrap(),
                p["userpost"]["msg"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, t)| t).collect()
}

/// A miner (A) listening for peers, and B connected to it, mining nothing itself.
fn pair(b_extra: &[&str]) -> (Node, Node) {
    let a = Node::start(&[
        "-blockinterval=0.1",
        "-spaminterval=0",
        "-listen",
        "-port=0",
    ]);
    let connect = format!("-connect={}", a.peer_addr());
    let mut args = vec!["-blockinterval=0", "-spaminterval=0", connect.as_str()];
    args.extend_from_slice(b_extra);
    let b = Node::start(&args);
    (a, b)
}

#[test]
fn chain_users_posts_dms_and_dht_values_replicate() {
    let (a, b) = pair(&[]);
    wait_until("a connection on both", || {
        a.ok("getinfo", json!([]))["connections"] == json!(1)
            && b.ok("getinfo", json!([]))["connections"] == json!(1)
    });
    // B mines nothing: its registration is mined by A, and B follows A's chain.
    user(&a, "alice");
    user(&b, "bob");
    let h = height(&a);
    wait_until("B at A's height", || height(&b) >= h);
    // Each node answers only for its own wallet.
    assert_eq!(b.ok("listwalletusers", json!([])), json!(["bob"]));
    assert!(b.call("newpostmsg", json!(["alice", 1, "forged"])).is_err());

    a.ok("follow", json!(["alice", ["bob"]]));
    b.ok("follow", json!(["bob", ["alice"]]));
    b.ok("newpostmsg", json!(["bob", 1, "from b"]));
    a.ok("newpostmsg", json!(["alice", 1, "from a"]));
    wait_until("bob's post on A", || last_have(&a, "alice", "bob") == 1);
    wait_until("alice's post on B", || last_have(&b, "bob", "alice") == 1);
    assert_eq!(texts(&a, "bob"), vec!["from b"]);
    assert_eq!(texts(&b, "alice"), vec!["from a"]);

    a.ok("newdirectmsg", json!(["alice", 2, "bob", "secret for bob"]));
    wait_until("the DM on B", || {
        let dms = b.ok("getdirectmsgs", json!(["bob", 10, [{"username": "alice"}]]));
        dms["alice"][0]["text"] == json!("secret for bob")
    });

    a.ok(
        "dhtput",
        json!(["alice", "profile", "s", {"bio": "one"}, "alice", 1]),
    );
    wait_until("the DHT value on B", || {
        b.ok("dhtget", json!(["alice", "profile", "s"]))[0]["p"]["v"]["bio"] == json!("one")
    });
    // A newer seq replaces it everywhere; an older one does not come back.
    a.ok(
        "dhtput",
        json!(["alice", "profile", "s", {"bio": "two"}, "alice", 2]),
    );
    wait_until("the newer DHT value on B", || {
        b.ok("dhtget", json!(["alice", "profile", "s"]))[0]["p"]["v"]["bio"] == json!("two")
    });
}

/// A TCP relay whose link can be cut (open connections reset, new ones refused) and restored.
struct Relay {
    addr: String,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(t) = TcpStream::connect(&to) else {
                    continue;
                };
                open2
                    .lock()
                    .unwrap()
                    .extend([s.try_clone().unwrap(), t.try_clone().unwrap()]);
                for (mut from, mut into) in
                    [(s.try_clone().unwrap(), t.try_clone().unwrap()), (t, s)]
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, up, open }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_node_cut_off_catches_up_when_the_link_returns() {
    let a = Node::start(&[
        "-blockinterval=0.1",
        "-spaminterval=0",
        "-listen",
        "-port=0",
    ]);
    let relay = Relay::start(a.peer_addr());
    let b = Node::start(&[
        "-blockinterval=0",
        "-spaminterval=0",
        &format!("-connect={}", relay.addr),
    ]);
    user(&a, "alice");
    user(&b, "bob");
    b.ok("follow", json!(["bob", ["alice"]]));
    a.ok("follow", json!(["alice", ["bob"]]));
    a.ok("newpostmsg", json!(["alice", 1, "before"]));
    wait_until("the first post on B", || last_have(&b, "bob", "alice") == 1);

    relay.cut();
    wait_until("B to see the link gone", || {
        b.ok("getinfo", json!([]))["connections"] == json!(0)
    });
    for k in 2..=20 {
        a.ok("newpostmsg", json!(["alice", k, format!("during {k}")]));
    }
    b.ok("newpostmsg", json!(["bob", 1, "bob during the cut"]));
    let h = height(&a);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        last_have(&b, "bob", "alice"),
        1,
        "nothing crosses a cut link"
    );
    assert!(
        height(&b) < h + 5,
        "B does not mine and hears no blocks while cut"
    );

    relay.heal();
    wait_until("B caught up with alice", || {
        last_have(&b, "bob", "alice") == 20
    });
    wait_until("A got what bob posted during the cut", || {
        last_have(&a, "alice", "bob") == 1
    });
    wait_until("B at A's height", || height(&b) >= height(&a) - 1);
    let got = texts(&b, "alice");
    assert_eq!(got.len(), 20);
    assert_eq!(got[19], "during 20");
    assert_eq!(texts(&a, "bob"), vec!["bob during the cut"]);
}

#[test]
fn a_node_restarted_from_its_datadir_resumes_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = format!("-datadir={}", dir.path().display());
    let (a, mut b) = pair(&[&datadir]);
    user(&a, "alice");
    user(&b, "bob");
    b.ok("follow", json!(["bob", ["alice"]]));
    a.ok("newpostmsg", json!(["alice", 1, "one"]));
    wait_until("the post on B", || last_have(&b, "bob", "alice") == 1);
    b.ok("newpostmsg", json!(["bob", 1, "bob's"]));

    b.signal(libc::SIGKILL);
    b.wait();
    for k in 2..=10 {
        a.ok(
            "newpostmsg",
            json!(["alice", k, format!("while B was down {k}")]),
        );
    }
    let b = Node::start(&[
        "-blockinterval=0",
        "-spaminterval=0",
        &datadir,
        &format!("-connect={}", a.peer_addr()),
    ]);
    // Its wallet, follows and own posts came back from disk; the rest from A.
    assert_eq!(b.ok("listwalletusers", json!([])), json!(["bob"]));
    assert_eq!(last_have(&b, "bob", "bob"), 1);
    wait_until("B caught up", || last_have(&b, "bob", "alice") == 10);
    assert_eq!(texts(&b, "alice").len(), 10);
}

#[test]
fn what_a_call_changed_is_on_disk_before_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = format!("-datadir={}", dir.path().display());
    // A flush interval longer than the test: only the write before the answer can save the posts.
    let args = [
        "-blockinterval=0",
        "-spaminterval=0",
        "-flushms=600000",
        &datadir,
    ];
    let mut n = Node::start(&args);
    n.ok("createwalletuser", json!(["alice"]));
    n.ok("sendnewusertransaction", json!(["alice"]));
    n.ok("devnode_mine", json!([2]));
    n.ok("follow", json!(["alice", ["alice"]]));
    for k in 1..=20 {
        n.ok("newpostmsg", json!(["alice", k, format!("post {k}")]));
    }
    n.ok(
        "newdirectmsg",
        json!(["alice", 21, "alice", "note to self"]),
    );
    n.ok(
        "dhtput",
        json!(["alice", "profile", "s", {"bio": "kept"}, "alice", 1]),
    );
    n.signal(libc::SIGKILL);
    n.wait();
    let n = Node::start(&args);
    assert_eq!(last_have(&n, "alice", "alice"), 21);
    let posts: Value = n.ok("getposts", json!([100, [{"username": "alice"}]]));
    assert_eq!(posts.as_array().unwrap().len(), 20);
    let dms = n.ok(
        "getdirectmsgs",
        json!(["alice", 10, [{"username": "alice"}]]),
    );
    assert_eq!(dms["alice"][0]["text"], json!("note to self"));
    assert_eq!(
        n.ok("dhtget", json!(["alice", "profile", "s"]))[0]["p"]["v"]["bio"],
        json!("kept")
    );
}

#[test]
fn malformed_peer_input_closes_the_connection_and_changes_nothing() {
    let a = Node::start(&["-blockinterval=0", "-spaminterval=0", "-listen", "-port=0"]);
    let h = height(&a);
    for bad in [
        "not json\n".to_string(),
        "{\"t\":\"chain\",\"height\":-5,\"registered\":{},\"mempool\":[]}\n".into(),
        "{\"t\":\"chain\",\"height\":9,\"registered\":{\"BAD NAME\":1},\"mempool\":[]}\n".into(),
        format!("{}\n", "x".repeat(17 << 20)),
    ] {
        let mut s = TcpStream::connect(a.peer_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bad.as_bytes());
        // The node closes the connection (an end or a reset, not the read timeout).
        let mut sink = Vec::new();
        if let Err(e) = s.read_to_end(&mut sink) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "connection left open after {:?}",
                &bad[..bad.len().min(40)]
            );
        }
    }
    assert_eq!(height(&a), h);
    // A well-formed update is taken.
    let mut s = TcpStream::connect(a.peer_addr()).unwrap();
    s.write_all(b"{\"t\":\"chain\",\"height\":7,\"registered\":{\"carol\":3},\"mempool\":[]}\n")
        .unwrap();
    wait_until("the chain from the peer", || height(&a) == 7);
}
