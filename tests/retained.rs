//! Retained values kept in the publisher's DHT resources: a broker started later gets them, a clear
//! made while a broker was down reaches it when it returns, and a burst converges to the newest value.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// The value resource of `topic`, as README describes it: `mqtv` + 26 base32 characters of the
/// topic's 128-bit FNV-1a hash (low bits first).
fn value_name(topic: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in topic.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut name = String::from("mqtv");
    for _ in 0..26 {
        name.push(char::from(alphabet[(h & 31) as usize]));
        h >>= 5;
    }
    name
}

/// The `p.v` of a DHT "s" resource, if any.
fn dht(node: &DevNode, user: &str, resource: &str) -> Option<Value> {
    let got = node.ok("dhtget", json!([user, resource, "s"]));
    got.get(0).map(|i| i["p"]["v"].clone())
}

/// Waits until `user`'s index lists `topic` with `kind` ("v" value, "c" cleared) and its value
/// resource says the same (with `payload` for a value).
fn wait_stored(node: &DevNode, user: &str, topic: &str, kind: &str, payload: &str) {
    wait_for(
        T,
        &format!("{user}'s DHT to hold {topic} as {kind} {payload:?}"),
        || {
            let root = dht(node, user, "mqti")?;
            let shards = root["n"].as_array()?.len();
            let listed = (0..shards).any(|i| {
                dht(node, user, &format!("mqti{i}")).is_some_and(|s| {
                    s["e"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| e[0] == topic && e[2] == kind)
                })
            });
            let v = dht(node, user, &value_name(topic))?;
            (listed && v["c"] == kind && (kind != "v" || v["x"] == payload)).then_some(())
        },
    );
}

/// What a new subscriber to `filter` on the broker at `port` gets at once: the retained messages.
fn retained_on(port: u16, filter: &str) -> Vec<Received> {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!("probe-{}", N.fetch_add(1, Ordering::Relaxed));
    let c = Mqtt::connect(port, &id, true);
    assert!(c.subscribe(filter, QoS::AtLeastOnce));
    let mut got = Vec::new();
    // Retained messages follow the SUBACK at once; a quiet half second means they are all here.
    while let Some(m) = c.recv(Duration::from_millis(500)) {
        got.push(m);
    }
    c.disconnect();
    got
}

fn conf(node: &DevNode, dir: &std::path::Path, user: &str, extra: &[&str]) -> String {
    plugin_conf(node, dir, user, extra)
}

on_both_brokers! {
    fn a_retained_value_set_on_a_reaches_a_broker_started_later() {
        let node = DevNode::start();
        let dir = workdir();
        let a = Broker::start(dir.path(), "a", &conf(&node, dir.path(), "alice", &["plugin_opt_publish sensors/#"]));
        a.wait_ready();
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish("sensors/door", b"open", QoS::AtLeastOnce, true);
        let binary: Vec<u8> = vec![0, 1, 2, 255, b'"', b'\\'];
        publ.publish("sensors/raw", &binary, QoS::AtMostOnce, true);
        publ.publish("sensors/live", b"not retained", QoS::AtMostOnce, false);
        wait_stored(&node, "alice", "sensors/door", "v", "open");
        // B starts after: its reading of alice's posts begins at her newest, so only the DHT has them.
        let b = Broker::start(dir.path(), "b", &conf(&node, dir.path(), "bob", &["plugin_opt_follow alice"]));
        b.wait_ready();
        b.wait_log("retained values of alice from the DHT: 2 set", T);
        let mut got = retained_on(b.port, "sensors/#");
        got.sort_by(|x, y| x.topic.cmp(&y.topic));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].topic.as_str(), got[0].payload.as_slice()), ("sensors/door", &b"open"[..]));
        assert_eq!((got[1].topic.as_str(), got[1].payload.clone()), ("sensors/raw", binary));
        assert!(got.iter().all(|m| m.retain), "{got:?}");
        assert_eq!((got[0].qos, got[1].qos), (1, 0), "QoS kept");
        assert!(dht(&node, "alice", &value_name("sensors/live")).is_none(), "only retained values are stored");
    }
}

on_both_brokers! {
    fn a_value_cleared_on_a_while_b_is_down_is_gone_when_b_returns() {
        let node = DevNode::start();
        let dir = workdir();
        let persistence = format!(
            "persistence true\npersistence_location {}/\nautosave_interval 1\n",
            dir.path().display()
        );
        let a = Broker::start(dir.path(), "a", &conf(&node, dir.path(), "alice", &["plugin_opt_publish sensors/#"]));
        let b_conf = |state: &str| {
            let state = format!("plugin_opt_state_file {}/{state}", dir.path().display());
            persistence.clone() + &conf(&node, dir.path(), "bob", &["plugin_opt_follow alice", &state])
        };
        let mut b = Broker::start(dir.path(), "b", &b_conf("bob.state"));
        a.wait_ready();
        b.wait_ready();
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish("sensors/door", b"open", QoS::AtLeastOnce, true);
        wait_for(T, "B to hold sensors/door", || {
            retained_on(b.port, "sensors/door").first().filter(|m| m.payload == b"open").map(drop)
        });
        b.stop();
        publ.publish("sensors/door", b"", QoS::AtLeastOnce, true);
        publ.publish("sensors/window", b"shut", QoS::AtLeastOnce, true);
        wait_stored(&node, "alice", "sensors/door", "c", "");
        wait_stored(&node, "alice", "sensors/window", "v", "shut");
        // B returns with Mosquitto's persistence (which still holds "open") and without the plugin's
        // read positions (a lost state file): alice's posts of the meantime are not read again, the
        // DHT's tombstone must clear the value.
        let b = Broker::start(dir.path(), "b2", &b_conf("bob-new.state"));
        b.wait_ready();
        b.wait_log("retained values of alice from the DHT: 1 set, 1 cleared", T);
        let got = retained_on(b.port, "sensors/#");
        let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["sensors/window"], "{got:?}");
        assert!(got[0].retain);
    }
}

on_both_brokers! {
    fn a_burst_of_retained_updates_converges_to_the_newest_everywhere() {
        let p = Pair::start(&["plugin_opt_publish sensors/#"], &[]);
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("sensors/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "sensors/#");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        let started = Instant::now();
        for i in 0..40 {
            publ.publish("sensors/level", format!("{i}").as_bytes(), QoS::AtLeastOnce, true);
        }
        // Live, every update arrives at B's subscriber, in order.
        for i in 0..40 {
            let m = sub.expect(T, "an update");
            assert_eq!(m.payload, format!("{i}").as_bytes());
        }
        wait_stored(&p.node, "alice", "sensors/level", "v", "39");
        let stored_after = started.elapsed();
        let seq = p.node.ok("dhtget", json!(["alice", value_name("sensors/level"), "s"]))[0]["p"]["seq"].as_i64().unwrap();
        eprintln!("burst of 40 stored as its newest in {stored_after:?} (value seq {seq})");
        for (name, port) in [("A", p.a.port), ("B", p.b.port)] {
            let got = retained_on(port, "sensors/level");
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            assert_eq!((got[0].payload.as_slice(), got[0].retain), (&b"39"[..], true), "{name}");
        }
        // A broker that starts now gets the newest from the DHT.
        let c = Broker::start(p.dir.path(), "c", &plugin_conf(&p.node, p.dir.path(), "carol", &["plugin_opt_follow alice"]));
        c.wait_ready();
        c.wait_log("retained values of alice from the DHT: 1 set", T);
        let got = retained_on(c.port, "sensors/level");
        assert_eq!(got.len(), 1, "C: {got:?}");
        assert_eq!((got[0].payload.as_slice(), got[0].retain), (&b"39"[..], true), "C");
        // B already holds the newest: a sync of B (its interest changing) injects nothing again.
        let more = Mqtt::connect(p.b.port, "sub-b2", true);
        assert!(more.subscribe("other/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "other/#");
        assert!(sub.recv(Duration::from_millis(1500)).is_none(), "no second copy at B");
        // B injected nothing from the DHT (a sync during the burst may say that a value waits for
        // posts, "... from the DHT wait for ...": that is not an injection).
        assert!(!p.b.log_text().contains("retained values of alice from the DHT:"), "B had it live");
    }
}

on_both_brokers! {
    fn malformed_retained_values_of_a_followed_user_are_skipped_and_said() {
        let node = DevNode::start();
        let dir = workdir();
        node.user("mallory");
        let put = |resource: &str, value: Value| {
            node.ok("dhtput", json!(["mallory", resource, "s", value, "mallory", 1]));
        };
        put("mqti", json!({"n": [1, 1]}));
        put("mqti0", json!({"e": [["sensors/evil", 1, "v"], ["sensors/x", "one", "v"], 42]}));
        put("mqti1", json!("<uninitialized>"));
        // A value under the name of one topic claiming another: refused.
        put(
            &value_name("sensors/evil"),
            json!({"t": "sensors/door", "s": 1, "q": 0, "w": -1, "c": "v", "x": "pwned"}),
        );
        let a = Broker::start(dir.path(), "a", &conf(&node, dir.path(), "alice", &["plugin_opt_publish sensors/#"]));
        a.wait_ready();
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish("sensors/door", b"open", QoS::AtLeastOnce, true);
        wait_stored(&node, "alice", "sensors/door", "v", "open");
        let b = Broker::start(dir.path(), "b", &conf(&node, dir.path(), "bob", &["plugin_opt_follow alice, mallory"]));
        b.wait_ready();
        b.wait_log("retained values of mallory in the DHT: 3 problems, skipped", T);
        b.wait_log("retained values of alice from the DHT: 1 set", T);
        let got = retained_on(b.port, "sensors/#");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].topic.as_str(), got[0].payload.as_slice()), ("sensors/door", &b"open"[..]));
        assert!(b.log_text().contains("(first: mqti0: 2 malformed entries skipped)"), "{}", b.log_text());
    }
}
