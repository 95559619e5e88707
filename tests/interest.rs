//! Subscription interest: the broker's live subscriptions end up in its Twister profile.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn topics(node: &DevNode, user: &str) -> Vec<String> {
    node.profile_topics(user).unwrap_or_default()
}

on_both_brokers! {
    fn profile_follows_subscribe_unsubscribe_and_disconnect_and_keeps_other_keys() {
        let node = DevNode::start();
        // bob exists with a profile written by another Twister client.
        node.user("bob");
        node.ok(
            "dhtput",
            json!(["bob", "profile", "s", {"fullname": "Bob B", "bio": "hi"}, "bob", 1]),
        );
        let dir = workdir();
        let b = Broker::start(
            dir.path(),
            "b",
            &plugin_conf(
                &node,
                dir.path(),
                "bob",
                &["plugin_opt_subscribe cmd/bob/#"],
            ),
        );
        b.wait_ready();
        wait_interest(&node, "bob", "cmd/bob/#");

        let c1 = Mqtt::connect(b.port, "c1", true);
        assert!(c1.subscribe("x/+/y", QoS::AtMostOnce));
        assert!(c1.subscribe("$share/workers/jobs/#", QoS::AtMostOnce));
        wait_interest(&node, "bob", "jobs/#");
        wait_interest(&node, "bob", "x/+/y");
        let profile = node.ok("dhtget", json!(["bob", "profile", "s"]));
        let v = &profile[0]["p"]["v"];
        assert_eq!(
            (v["fullname"].as_str(), v["bio"].as_str()),
            (Some("Bob B"), Some("hi")),
            "other keys kept: {v}"
        );
        assert!(profile[0]["p"]["seq"].as_i64().unwrap() > 1);

        let c2 = Mqtt::connect(b.port, "c2", true);
        assert!(c2.subscribe("x/+/y", QoS::AtMostOnce));
        c1.unsubscribe("x/+/y");
        // c2 still holds x/+/y
        std::thread::sleep(Duration::from_millis(400));
        assert!(topics(&node, "bob").contains(&"x/+/y".to_string()));
        c2.disconnect();
        wait_for(
            T,
            "x/+/y to leave the profile once its last holder is gone",
            || (!topics(&node, "bob").contains(&"x/+/y".to_string())).then_some(()),
        );
        c1.unsubscribe("$share/workers/jobs/#");
        wait_for(T, "jobs/# to leave the profile", || {
            (topics(&node, "bob") == vec!["cmd/bob/#".to_string()]).then_some(())
        });
    }
}

on_both_brokers! {
    fn a_persistent_session_keeps_its_interest_after_disconnect() {
        let node = DevNode::start();
        let dir = workdir();
        let b = Broker::start(dir.path(), "b", &plugin_conf(&node, dir.path(), "bob", &[]));
        b.wait_ready();
        let keep = Mqtt::connect(b.port, "keeper", false);
        assert!(keep.subscribe("kept/#", QoS::AtLeastOnce));
        let gone = Mqtt::connect(b.port, "leaver", true);
        assert!(gone.subscribe("gone/#", QoS::AtLeastOnce));
        wait_interest(&node, "bob", "kept/#");
        wait_interest(&node, "bob", "gone/#");
        keep.disconnect();
        gone.disconnect();
        wait_for(T, "gone/# to leave", || {
            (!topics(&node, "bob").contains(&"gone/#".to_string())).then_some(())
        });
        assert!(
            topics(&node, "bob").contains(&"kept/#".to_string()),
            "a persistent session still receives, so it still wants"
        );
    }
}
