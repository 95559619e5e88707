//! Delivery under trouble: answers that come too late, the post budget, DM order, twisterd stopping
//! while brokers are attached, and messages not forwarded being counted and said.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

on_both_brokers! {
    /// twisterd's `stop` waits for its RPC clients' connections to close: a plugin that kept an idle
    /// connection open made a node restart hang for 70 s.
    fn twisterd_stops_while_a_broker_is_attached() {
        // The default poll interval: the plugin is idle most of the time between polls.
        let mut p = Pair::start(
            &["plugin_opt_poll_interval_ms 1000", "plugin_opt_publish x/#"],
            &["plugin_opt_poll_interval_ms 1000", "plugin_opt_subscribe x/#"],
        );
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("x/#", QoS::AtLeastOnce));
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("x/1", b"before the stop", QoS::AtLeastOnce, false);
        assert_eq!(sub.expect(T, "x/1").payload, b"before the stop");
        let asked = Instant::now();
        p.node.stop();
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "twisterd took {took:?} to stop with two brokers attached"
        );
    }
}

/// A's private forwards on `p/#` reach B once A knows B's interest: publishes `p/warm` until one
/// arrives at `sub`.
fn warm_up_private(publ: &Mqtt, sub: &Mqtt) {
    wait_for(T, "a first private message at bob", || {
        publ.publish("p/warm", b"", QoS::AtLeastOnce, false);
        sub.recv(Duration::from_millis(300))
            .filter(|m| m.topic == "p/warm")
    });
}

on_both_brokers! {
    /// twisterd lists DMs by time (1 s resolution), newest first within a second: on a real network
    /// private messages of one topic arrived 0,1,3,2,4,7,6,5,...
    fn private_messages_of_one_topic_arrive_in_order() {
        // B's interest is configured: what is tested here does not depend on how it is learnt.
        let p = Pair::start(&["plugin_opt_private p/# bob"], &["plugin_opt_subscribe p/#"]);
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("p/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "p/#");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        warm_up_private(&publ, &sub);
        // Several DMs a second, read by B several at a time.
        let n = 300;
        for i in 0..n {
            publ.publish("p/x", i.to_string().as_bytes(), QoS::AtLeastOnce, false);
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut got = Vec::new();
        while got.len() < n {
            let m = sub.expect(T, &format!("message {} of {n}", got.len()));
            if m.topic == "p/x" {
                got.push(String::from_utf8(m.payload).unwrap().parse::<usize>().unwrap());
            }
        }
        let dms = p.node.ok("getdirectmsgs", json!(["bob", 1000, [{"username": "alice"}]]));
        let listed: Vec<i64> = dms["alice"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["k"].as_i64().unwrap())
            .collect();
        assert!(
            listed.windows(2).any(|w| w[0] > w[1]),
            "the node listed the DMs by k ({listed:?}): the test shows nothing"
        );
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "in order, once each");
    }
}
