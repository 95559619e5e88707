//! A retained value fetched from the publisher's DHT resources never overtakes the publisher's live
//! messages that precede it, and the live copy of the same message is not delivered a second time.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
/// B reads posts this often: long enough for a DHT sync to find A's value before B reads the posts
/// carrying it (the old rule took such a value after five syncs, 2 s apart).
const SLOW_POLL_MS: u64 = 40_000;

/// The value resource of `topic` (README: `mqtv` + 26 base32 characters of its FNV-1a hash).
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

fn dht(node: &DevNode, user: &str, resource: &str) -> Option<Value> {
    let got = node.ok("dhtget", json!([user, resource, "s"]));
    got.get(0).map(|i| i["p"]["v"].clone())
}

on_both_brokers! {
    fn a_retained_value_from_the_dht_waits_for_the_unread_posts_before_it() {
        let poll = format!("plugin_opt_poll_interval_ms {SLOW_POLL_MS}");
        let p = Pair::start(&["plugin_opt_publish big/#"], &[&poll]);
        let (a, b, node) = (&p.a, &p.b, &p.node);
        let sub = Mqtt::connect(b.port, "sub-b", true);
        assert!(sub.subscribe("big/#", QoS::AtLeastOnce));
        wait_interest(node, "bob", "big/#");
        let publ = Mqtt::connect(a.port, "pub-a", true);
        let binary: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let text = "{\"reading\": 21.5} ".repeat(300);
        publ.publish("big/binary", &binary, QoS::AtLeastOnce, false);
        publ.publish("big/text", text.as_bytes(), QoS::AtLeastOnce, true);
        publ.publish("big/small", b"after", QoS::AtLeastOnce, false);
        // A's value is in the DHT, ordered after its posts and carrying the message's id.
        let value = wait_for(T, "alice's value of big/text in the DHT", || {
            dht(node, "alice", &value_name("big/text")).filter(|v| v["x"] == text.as_str())
        });
        assert!(value["w"].as_i64().unwrap() > 0, "{value}");
        assert_eq!(value["i"].as_array().map(Vec::len), Some(2), "{value}");
        // A new subscription on B: its sync fetches the value while B has not read the posts yet.
        let other = Mqtt::connect(b.port, "other-b", true);
        assert!(other.subscribe("elsewhere/#", QoS::AtLeastOnce));
        b.wait_log("retained values of alice from the DHT wait for alice's posts", T);
        assert!(
            sub.recv(Duration::from_millis(100)).is_none(),
            "B delivered something before reading A's posts"
        );
        // B's next poll reads the posts: everything in order, once.
        let wait = Duration::from_millis(SLOW_POLL_MS) + T;
        let first = sub.expect(wait, "the 20,000-byte message");
        assert_eq!(
            (first.topic.as_str(), first.payload == binary),
            ("big/binary", true)
        );
        let second = sub.expect(T, "the text message");
        assert_eq!(
            (second.topic.as_str(), second.payload == text.as_bytes()),
            ("big/text", true)
        );
        assert_eq!(sub.expect(T, "the small one after").payload, b"after");
        // The value, fetched again (every 2 s) after the posts were read, is the message delivered.
        assert!(
            sub.recv(Duration::from_secs(5)).is_none(),
            "a second copy of the retained message"
        );
        // The broker holds the value once, as retained.
        let probe = Mqtt::connect(b.port, "probe-b", true);
        assert!(probe.subscribe("big/text", QoS::AtLeastOnce));
        let kept = probe.expect(T, "big/text as B's retained value");
        assert!(kept.retain && kept.payload == text.as_bytes());
        assert!(probe.recv(Duration::from_millis(500)).is_none());
    }
}
