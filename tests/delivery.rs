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
