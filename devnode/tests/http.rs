//! The dev node driven as a client drives twisterd: over HTTP, with its command line, signals and data
//! directory.

mod support;
use serde_json::{json, Value};
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn authentication_like_twisterd() {
    let n = Node::start(&[]);
    let t = Instant::now();
    let (status, body) = n.post_as(r#"{"method":"getinfo"}"#, Some((USER, "wrong")));
    assert_eq!(status, 401);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "twisterd pauses before a 401"
    );
    assert!(body.as_str().unwrap().contains("401 Unauthorized"));
    let (status, _) = n.post_as(r#"{"method":"getinfo"}"#, None);
    assert_eq!(status, 401);
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    let (head, _) = raw_exchange(&mut s, "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
    assert!(
        head.contains("WWW-Authenticate: Basic realm=\"jsonrpc\""),
        "{head}"
    );
}

#[test]
fn framing_statuses_and_batches() {
    let n = Node::start(&[]);
    let (s, v) = n.post(r#"{"jsonrpc":"1.0","id":"x","method":"getblockcount","params":[]}"#);
    assert_eq!(
        (s, v["result"].clone(), v["id"].clone(), v["error"].clone()),
        (200, json!(0), json!("x"), Value::Null)
    );
    let (s, v) = n.post(r#"{"id":1,"method":"getblockcount"}"#);
    assert_eq!((s, v["result"].clone()), (200, json!(0)), "params omitted");
    let (s, v) = n.post(r#"{"method":"getblockcount","params":[]}"#);
    assert_eq!((s, v["id"].clone()), (200, Value::Null));
    let (s, v) = n.post(r#"{"id":1,"method":"nosuchmethod","params":[]}"#);
    assert_eq!(
        (
            s,
            v["error"]["code"].as_i64(),
            v["error"]["message"].as_str()
        ),
        (404, Some(-32601), Some("Method not found"))
    );
    let (s, v) = n.post(r#"{"id":1,"method":"getposts","params":{"count":1}}"#);
    assert_eq!(
        (
            s,
            v["error"]["code"].as_i64(),
            v["error"]["message"].as_str()
        ),
        (400, Some(-32600), Some("Params must be an array"))
    );
    let (s, v) = n.post(r#"{"id":1,"method":"getblockcount""#);
    assert_eq!(
        (s, v["error"]["code"].as_i64(), v["id"].clone()),
        (500, Some(-32700), Value::Null)
    );
    let (s, v) = n.post("\u{ff}\u{fe}");
    assert_eq!((s, v["error"]["code"].as_i64()), (500, Some(-32700)));
    let (s, v) = n.post(r#"{"id":1,"method":"createwalletuser","params":[7]}"#);
    assert_eq!(
        (s, v["error"]["message"].as_str()),
        (500, Some("value is type int, expected str"))
    );
    let (s, v) = n.post(
        r#"[{"id":1,"method":"getblockcount","params":[]},{"id":2,"method":"nope","params":[]},5]"#,
    );
    assert_eq!(s, 200);
    assert_eq!(v[0]["result"], json!(0));
    assert_eq!(v[1]["error"]["code"], json!(-32601));
    assert_eq!(v[2]["error"]["code"], json!(-32600));
}

#[test]
fn keep_alive_until_an_error_then_close() {
    let n = Node::start(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    for _ in 0..3 {
        let (head, body) = raw_exchange(
            &mut s,
            &rpc_request(r#"{"id":1,"method":"getblockcount","params":[]}"#),
        );
        assert!(
            head.starts_with("HTTP/1.1 200") && head.contains("Connection: keep-alive"),
            "{head}"
        );
        assert!(body.contains("\"result\":0"));
    }
    let (head, _) = raw_exchange(
        &mut s,
        &rpc_request(r#"{"id":1,"method":"nope","params":[]}"#),
    );
    assert!(
        head.starts_with("HTTP/1.1 404") && head.contains("Connection: close"),
        "{head}"
    );
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the error reply"
    );
}

#[test]
fn oversized_bodies_and_other_verbs_are_refused() {
    let n = Node::start(&["-maxbody=1000"]);
    let body = format!(
        r#"{{"id":1,"method":"getinfo","params":["{}"]}}"#,
        "a".repeat(2000)
    );
    let (s, _) = n.post(&body);
    assert_eq!(s, 413);
    let mut st = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    let (head, _) = raw_exchange(
        &mut st,
        &format!("GET / HTTP/1.1\r\nAuthorization: {}\r\n\r\n", basic()),
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // The node still answers after all that.
    assert_eq!(n.ok("getblockcount", json!([])), json!(0));
}

#[test]
fn command_line_refuses_weak_credentials_and_unknown_flags() {
    for args in [
        vec!["-rpcuser=u", "-rpcpassword="],
        vec!["-rpcuser=same", "-rpcpassword=same"],
        vec!["-rpcuser=u"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_twister-devnode"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("rpcpassword"),
            "{args:?}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twister-devnode"))
        .args(["-rpcuser=u", "-rpcpassword=p", "-bogus=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-bogus"));
}

#[test]
fn state_survives_sigterm_and_sigkill_without_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = format!("-datadir={}", dir.path().display());
    let mut n = Node::start(&["-blockinterval=0", &datadir]);
    n.ok("createwalletuser", json!(["alice"]));
    n.ok("sendnewusertransaction", json!(["alice"]));
    n.ok("devnode_mine", json!([2]));
    n.ok("follow", json!(["alice", ["alice"]]));
    n.ok("newpostmsg", json!(["alice", 0, "kept across restarts"]));
    n.ok(
        "dhtput",
        json!(["alice", "profile", "s", {"fullname": "A"}, "alice", 1]),
    );
    n.signal(libc::SIGTERM);
    assert!(n.wait().success(), "clean exit on SIGTERM");
    let mut n = Node::start(&["-blockinterval=0", &datadir]);
    assert_eq!(n.ok("getblockcount", json!([])), json!(2));
    assert_eq!(
        n.ok("getposts", json!([5, [{"username": "alice"}]]))[1]["userpost"]["msg"],
        "kept across restarts",
        "[0] is the promoted post"
    );
    assert_eq!(
        n.ok("dhtget", json!(["alice", "profile", "s"]))[0]["p"]["v"]["fullname"],
        "A"
    );
    // A kill at any moment leaves a loadable snapshot (the older or the newer one).
    n.ok("devnode_mine", json!([30]));
    for k in 1..40 {
        n.ok("newpostmsg", json!(["alice", k, format!("post {k}")]));
    }
    n.signal(libc::SIGKILL);
    n.wait();
    let n = Node::start(&["-blockinterval=0", &datadir]);
    let last = n.ok("getlasthave", json!(["alice"]))["alice"]
        .as_i64()
        .unwrap();
    assert!((0..=39).contains(&last), "{last}");
}

#[test]
fn stop_rpc_shuts_down_cleanly() {
    let mut n = Node::start(&[]);
    assert_eq!(n.ok("stop", json!([])), json!("twister server stopping"));
    assert!(n.wait().success());
}

#[test]
fn faults_can_be_injected_and_cleared() {
    let n = Node::start(&["-blockinterval=0"]);
    n.ok("devnode_fault", json!([{"busy": 1.0}]));
    let (s, v) = n.post(r#"{"id":1,"method":"getblockcount","params":[]}"#);
    assert_eq!((s, v["error"]["code"].as_i64()), (500, Some(-25)));
    // devnode_fault itself is served too, so faults can always be cleared.
    n.ok("devnode_fault", json!([{"http500": 1.0}]));
    let (s, v) = n.post(r#"{"id":1,"method":"getblockcount","params":[]}"#);
    assert_eq!(s, 500);
    assert!(v.is_string(), "an HTML page, not JSON");
    n.ok("devnode_fault", json!([{"latency_ms": 300}]));
    let t = Instant::now();
    n.ok("getblockcount", json!([]));
    assert!(t.elapsed() >= Duration::from_millis(300));
    n.ok("devnode_fault", json!([{"stall_ms": 300}]));
    let t = Instant::now();
    n.ok("getblockcount", json!([]));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "held until the stall ends"
    );
    n.ok("devnode_fault", json!([{"refuse_ms": 400}]));
    let refused =
        std::panic::catch_unwind(|| n.post(r#"{"id":1,"method":"getblockcount","params":[]}"#));
    assert!(refused.is_err(), "connections are dropped while refusing");
    std::thread::sleep(Duration::from_millis(450));
    n.ok("devnode_fault", json!([{}]));
    assert_eq!(n.ok("getblockcount", json!([])), json!(0));
    assert_eq!(
        n.call("devnode_fault", json!([{"nope": 1}])).unwrap_err().0,
        -32602
    );
}

#[test]
fn fault_flags_on_the_command_line() {
    let n = Node::start(&["-fault-busy=1"]);
    let (s, v) = n.post(r#"{"id":1,"method":"getblockcount","params":[]}"#);
    assert_eq!((s, v["error"]["code"].as_i64()), (500, Some(-25)));
}

#[test]
fn concurrent_clients_are_all_served() {
    let n = Node::start(&["-blockinterval=0"]);
    n.ok("createwalletuser", json!(["alice"]));
    n.ok("sendnewusertransaction", json!(["alice"]));
    n.ok("devnode_mine", json!([600]));
    n.ok("follow", json!(["alice", ["alice"]]));
    let url = n.url();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::agent();
                for i in 0..50 {
                    let k = t * 50 + i;
                    let body = json!({"id": k, "method": "newpostmsg", "params": ["alice", k, format!("t{t} i{i}")]}).to_string();
                    let r = agent.post(&url).set("Authorization", &basic()).send_string(&body).unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(n.ok("getlasthave", json!(["alice"]))["alice"], json!(399));
    let stats = n.ok("devnode_stats", json!([]));
    assert_eq!(stats["pieces"], json!(400));
}

#[test]
fn stop_waits_for_a_kept_alive_client_connection_as_twisterd_does() {
    for stop in ["SIGTERM", "stop RPC"] {
        let mut n = Node::start(&[]);
        let mut idle = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
        let (head, _) = raw_exchange(
            &mut idle,
            &rpc_request(r#"{"id":1,"method":"getblockcount","params":[]}"#),
        );
        assert!(head.contains("Connection: keep-alive"), "{head}");
        match stop {
            "SIGTERM" => n.signal(libc::SIGTERM),
            _ => assert_eq!(n.ok("stop", json!([])), json!("twister server stopping")),
        }
        // Served on while it stays open, and the node does not exit.
        let (head, body) = raw_exchange(
            &mut idle,
            &rpc_request(r#"{"id":2,"method":"getblockcount","params":[]}"#),
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{stop}: {head}");
        assert!(body.contains("\"result\":0"), "{body}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            n.child.try_wait().unwrap().is_none(),
            "{stop}: exited while a client still held a connection"
        );
        assert!(
            TcpStream::connect(("127.0.0.1", n.port)).is_err(),
            "{stop}: no new connection is accepted once stopping"
        );
        let closed = Instant::now();
        drop(idle);
        assert!(n.wait().success());
        assert!(closed.elapsed() < Duration::from_secs(5), "{stop}");
    }
}

#[test]
fn late_answers_come_after_the_call_was_carried_out() {
    let n = Node::start(&["-blockinterval=0"]);
    n.ok("createwalletuser", json!(["alice"]));
    n.ok("sendnewusertransaction", json!(["alice"]));
    n.ok("devnode_mine", json!([2]));
    n.ok("follow", json!(["alice", ["alice"]]));
    n.ok("devnode_fault", json!([{"late_ms": 800}]));
    let impatient = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(200))
        .build();
    let body =
        json!({"id": 1, "method": "newpostmsg", "params": ["alice", 0, "stored, answered late"]});
    let sent = Instant::now();
    let r = impatient
        .post(&n.url())
        .set("Authorization", &basic())
        .send_string(&body.to_string());
    assert!(r.is_err(), "the caller gave up before the answer");
    assert!(sent.elapsed() < Duration::from_millis(700));
    // Stored already: the node's own calls are never held, and the post is there.
    let stats = n.ok("devnode_stats", json!([]));
    assert_eq!(stats["counters"]["posts_stored"], json!(1), "{stats}");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(n.ok("getlasthave", json!(["alice"]))["alice"], json!(0));
}
