//! Durability end to end: posts twisterd forgets are posted again, kill -9 of the sending broker and
//! of the dev node lose nothing acknowledged, and a 200 KB payload crosses. Every message arrives
//! exactly once: what is sent again carries its first id and the receiver drops duplicates.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// The receiving broker queues every message for its subscriber: Mosquitto's default (1,000 queued
/// beyond 20 in flight per client) drops the rest of a replayed burst at the subscriber, not in the
/// relay.
const RECEIVER_QUEUE: &str = "max_queued_messages 0";

/// Counts how many times each number arrives on `fwd/n` at `sub` until every one below `n` has (or
/// 90 s pass), then what else arrives within a short while (late duplicates). Other topics (a
/// warm-up message sent again from the spool) are not counted.
fn tally(sub: &Mqtt, n: usize) -> BTreeMap<usize, usize> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    let mut count = |m: Received| {
        if m.topic == "fwd/n" {
            let i: usize = String::from_utf8_lossy(&m.payload).parse().unwrap();
            *counts.entry(i).or_default() += 1;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = std::collections::BTreeSet::new();
    while (0..n).any(|i| !seen.contains(&i)) && Instant::now() < deadline {
        if let Some(m) = sub.recv(Duration::from_millis(200)) {
            if m.topic == "fwd/n" {
                seen.insert(
                    String::from_utf8_lossy(&m.payload)
                        .parse::<usize>()
                        .unwrap(),
                );
            }
            count(m);
        }
    }
    while let Some(m) = sub.recv(Duration::from_secs(1)) {
        count(m);
    }
    counts
}

/// (lost, duplicated) among "0".."n-1".
fn lost_and_duplicated(counts: &BTreeMap<usize, usize>, n: usize) -> (Vec<usize>, usize) {
    let lost = (0..n).filter(|i| !counts.contains_key(i)).collect();
    let duplicated = counts.values().map(|c| c - 1).sum();
    (lost, duplicated)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: a plain kill(2) of a child process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// The numbers of alice's posts the node holds that carry `fwd/n <i>` lines (v2 posts decoded).
fn messages_posted(node: &DevNode) -> Vec<usize> {
    let mut out: Vec<usize> = readable_posts(node, "alice", 500)
        .iter()
        .flat_map(|p| p.lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| l.strip_prefix("fwd/n ").and_then(|n| n.parse().ok()))
        .collect();
    out.sort();
    out
}

/// A (alice, publishing fwd/# through a spool, plus `a_extra`) and B (bob, subscribing to fwd/# and
/// queueing every message for its subscriber, plus `b_extra`), both ready, and B's clean subscriber
/// `sub_id` on fwd/#.
fn alice_spooling_to_bob(
    node: &DevNode,
    d: &std::path::Path,
    a_extra: &[&str],
    b_extra: &[&str],
    sub_id: &str,
) -> (Broker, Broker, Mqtt) {
    let spool = format!("plugin_opt_spool_dir {}/spool-a", d.display());
    let a_lines = [
        &["plugin_opt_follow bob", "plugin_opt_publish fwd/#", &spool][..],
        a_extra,
    ]
    .concat();
    let b_lines = [
        &[
            "plugin_opt_follow alice",
            "plugin_opt_subscribe fwd/#",
            RECEIVER_QUEUE,
        ][..],
        b_extra,
    ]
    .concat();
    let a = Broker::start(d, "a", &plugin_conf(node, d, "alice", &a_lines));
    let b = Broker::start(d, "b", &plugin_conf(node, d, "bob", &b_lines));
    a.wait_ready();
    b.wait_ready();
    let sub = Mqtt::connect(b.port, sub_id, true);
    assert!(sub.subscribe("fwd/#", QoS::AtLeastOnce));
    (a, b, sub)
}

/// Makes the dev node forget alice's newest two posts (twisterd killed just after storing them);
/// their numbers.
fn forget_alices_newest_two(node: &DevNode) -> Vec<i64> {
    let forgotten = node.ok("devnode_fault", json!([{"forget_newest": {"alice": 2}}]));
    forgotten["forgotten"]["alice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_i64().unwrap())
        .collect()
}

/// How many posts of alice the node holds under number `k`.
fn alices_posts_numbered(node: &DevNode, k: i64) -> usize {
    let p = node.ok(
        "getposts",
        json!([1, [{"username": "alice", "max_id": k, "since_id": k - 1}]]),
    );
    p.as_array().map_or(0, Vec::len)
}

on_both_brokers! {
    fn posts_twisterd_forgets_are_posted_again_under_new_numbers() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let (a, b, sub) = alice_spooling_to_bob(&node, d, &["plugin_opt_release_hold_ms 60000"], &[], "durable-sub");
        let publisher = Mqtt::connect(a.port, "durable-pub", true);
        publisher.publish("fwd/warm", b"up", QoS::AtLeastOnce, false);
        sub.expect(T, "the warm-up message: B reads alice");

        // B frozen: it reads nothing of what follows until twisterd has forgotten some of it.
        signal(b.pid(), libc::SIGSTOP);
        let n = 24;
        for burst in 0..4 {
            for i in burst * 6..(burst + 1) * 6 {
                publisher.publish("fwd/n", i.to_string().as_bytes(), QoS::AtLeastOnce, false);
            }
            // One post per burst or so: the forgotten ones carry several messages.
            wait_for(T, "the burst posted", || {
                (messages_posted(&node).len() >= (burst + 1) * 6).then_some(())
            });
        }
        let last_before = node.ok("getlasthave", json!(["bob"]))["alice"].as_i64().unwrap();
        let forgotten = forget_alices_newest_two(&node);
        assert_eq!(forgotten, [last_before, last_before - 1]);
        let missing = n - messages_posted(&node).len();
        assert!(missing > 0, "the forgotten posts carried messages");
        a.wait_log("posting their", T);
        wait_for(T, "every message in alice's posts again", || {
            (messages_posted(&node) == (0..n).collect::<Vec<_>>()).then_some(())
        });
        // Never under a number twisterd forgot: peers may hold the first post with it.
        let last_after = node.ok("getlasthave", json!(["bob"]))["alice"].as_i64().unwrap();
        assert!(last_after > last_before, "new numbers: {last_after} after {last_before}");
        for k in &forgotten {
            assert_eq!(alices_posts_numbered(&node, *k), 0, "post {k} stays unused");
        }

        signal(b.pid(), libc::SIGCONT);
        let counts = tally(&sub, n);
        let (lost, duplicated) = lost_and_duplicated(&counts, n);
        eprintln!("forgotten posts {forgotten:?} carried {missing} messages: lost {}, duplicated {duplicated}", lost.len());
        assert!(lost.is_empty(), "lost {lost:?}");
        // B never read the forgotten posts: each message arrives once.
        assert_eq!(duplicated, 0, "{counts:?}");
    }
}

on_both_brokers! {
    fn the_sending_broker_killed_mid_stream_loses_no_acknowledged_message() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let (a, _b, sub) = alice_spooling_to_bob(&node, d, &[], &[], "kill-sub");

        let acked = Arc::new(AtomicUsize::new(0));
        let a_pid = a.pid();
        let publisher = {
            let (acked, port) = (acked.clone(), a.port);
            // Killed mid-stream: some messages posted, some queued, one in flight.
            std::thread::spawn(move || {
                publish_acknowledged(port, &format!("publisher-{port}"), "fwd/n", usize::MAX, &acked, |i| {
                    if i == 1000 {
                        signal(a_pid, libc::SIGKILL);
                    }
                })
            })
        };
        publisher.join().unwrap();
        let a_port = a.port;
        drop(a);
        let acked = acked.load(Ordering::SeqCst);

        let a2 = Broker::start_conf(d, "a2", &std::fs::read_to_string(d.join("a.conf")).unwrap(), a_port);
        a2.wait_ready();
        let replayed = a2.log_text().lines().find(|l| l.contains("not posted before the last stop")).unwrap_or_default().to_string();
        let counts = tally(&sub, acked);
        let (lost, duplicated) = lost_and_duplicated(&counts, acked);
        eprintln!("broker kill -9: {acked} acknowledged, lost {}, duplicated {duplicated}; {replayed}", lost.len());
        assert!(lost.is_empty(), "lost {} acknowledged messages: {lost:?}", lost.len());
        // The replay carries the first copies' ids: the receiver drops what it already had.
        assert_eq!(duplicated, 0, "each message once");
    }
}

on_both_brokers! {
    fn the_dev_node_killed_and_restarted_from_its_data_directory_loses_nothing() {
        let data = tempfile::tempdir().unwrap();
        let datadir = format!("-datadir={}", data.path().display());
        let mut node = DevNode::start_with(&["-blockinterval=0.2", &datadir], 0);
        let dir = workdir();
        let d = dir.path();
        let rpc_timeout = "plugin_opt_rpc_timeout_ms 1000";
        let (a, b, sub) = alice_spooling_to_bob(&node, d, &[rpc_timeout], &[rpc_timeout], "node-kill-sub");

        let n = 2000;
        let kill_at = 500;
        let acked = Arc::new(AtomicUsize::new(0));
        let node_pid = node.pid();
        let (killed, kill_done) = std::sync::mpsc::channel();
        let publisher = {
            let (acked, port) = (acked.clone(), a.port);
            std::thread::spawn(move || {
                publish_acknowledged(port, &format!("publisher-{port}"), "fwd/n", n, &acked, |i| {
                    if i == kill_at {
                        signal(node_pid, libc::SIGKILL);
                        let _ = killed.send(());
                    }
                })
            })
        };
        kill_done.recv_timeout(T).expect("the publisher reached the kill");
        let at_kill = kill_at;
        // Dead (a zombie of ours, or gone): its port and data directory are free again.
        let stat = format!("/proc/{}/stat", node.pid());
        wait_for(T, "the dev node to die", || {
            let s = std::fs::read_to_string(&stat).unwrap_or_default();
            (s.is_empty() || s.contains(") Z ")).then_some(())
        });
        node.restart();
        publisher.join().unwrap();
        assert_eq!(acked.load(Ordering::SeqCst), n, "the broker acknowledges through the outage");

        let counts = tally(&sub, n);
        let (lost, duplicated) = lost_and_duplicated(&counts, n);
        eprintln!("dev node kill -9 at message {at_kill}: {n} sent, lost {}, duplicated {duplicated}", lost.len());
        assert!(lost.is_empty(), "lost {} messages: {lost:?}", lost.len());
        assert_eq!(duplicated, 0, "each message once");
        drop((a, b));
    }
}

on_both_brokers! {
    fn a_200_kb_payload_crosses_with_the_maximum_raised() {
        let pair = Pair::start(
            &["plugin_opt_publish big/#", "plugin_opt_max_message_bytes 262144"],
            &["plugin_opt_subscribe big/#", "plugin_opt_max_message_bytes 262144"],
        );
        let sub = Mqtt::connect(pair.b.port, "big-sub", true);
        assert!(sub.subscribe("big/#", QoS::AtLeastOnce));
        // Bytes that do not compress: ~150 fragments.
        let payload = mqtt_twister_wire::Rng(7).bytes_exact(200 * 1024);
        let publisher = Mqtt::connect(pair.a.port, "big-pub", true);
        publisher.publish("big/blob", &payload, QoS::AtLeastOnce, false);
        let got = sub.expect(Duration::from_secs(120), "the 200 KB message on B");
        assert_eq!(got.topic, "big/blob");
        assert_eq!(got.payload.len(), payload.len());
        assert!(got.payload == payload, "the same bytes");
        assert!(sub.recv(Duration::from_secs(1)).is_none(), "once");
    }
}

/// The `next_k` the state file at `path` holds.
fn saved_next_k(path: &std::path::Path) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["next_k"].as_i64()
}

on_both_brokers! {
    fn a_restart_after_twisterd_forgot_posts_never_reuses_their_numbers() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let (a, b, sub) = alice_spooling_to_bob(&node, d, &["plugin_opt_release_hold_ms 60000"], &[], "restart-sub");
        let publisher = Mqtt::connect(a.port, "restart-pub", true);
        publisher.publish("fwd/warm", b"up", QoS::AtLeastOnce, false);
        sub.expect(T, "the warm-up message");
        // The state file as it was before the burst: it is written once a second, so a kill -9 can
        // leave it this far behind.
        let state = d.join("alice.state");
        let last = || node.ok("getlasthave", json!(["bob"]))["alice"].as_i64().unwrap();
        let warm = last();
        wait_for(T, "the state file at the warm-up post", || {
            (saved_next_k(&state) == Some(warm + 1)).then_some(())
        });
        let stale = std::fs::read(&state).unwrap();

        let n = 12;
        for burst in 0..3 {
            for i in burst * 4..(burst + 1) * 4 {
                publisher.publish("fwd/n", i.to_string().as_bytes(), QoS::AtLeastOnce, false);
            }
            wait_for(T, "the burst posted", || {
                (messages_posted(&node).len() >= (burst + 1) * 4).then_some(())
            });
        }
        let a_port = a.port;
        drop(a); // SIGKILL
        let forgotten = forget_alices_newest_two(&node);
        assert!(forgotten.iter().all(|k| *k > warm), "{forgotten:?} after {warm}");
        std::fs::write(&state, stale).unwrap();

        // Restarted: the spool replays what was not released, under numbers above every one used.
        let a2 = Broker::start_conf(d, "a2", &std::fs::read_to_string(d.join("a.conf")).unwrap(), a_port);
        a2.wait_ready();
        wait_for(T, "every message in alice's posts again", || {
            let posted = messages_posted(&node);
            (0..n).all(|i| posted.contains(&i)).then_some(())
        });
        for k in &forgotten {
            assert_eq!(alices_posts_numbered(&node, *k), 0, "post {k}, forgotten by twisterd, stays unused");
        }
        let counts = tally(&sub, n);
        let (lost, duplicated) = lost_and_duplicated(&counts, n);
        eprintln!("restart after forgotten posts {forgotten:?}: lost {}, duplicated {duplicated}", lost.len());
        assert!(lost.is_empty(), "lost {lost:?}");
        // Sent again from the spool with their ids: the receiver drops what it already had.
        assert_eq!(duplicated, 0, "each message once: {counts:?}");
        drop(b);
    }
}
