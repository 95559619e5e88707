//! Messages crossing from one Mosquitto to another through the plugin and the dev node.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

on_both_brokers! {
    fn public_forward_reaches_a_subscriber_on_the_other_broker() {
        let p = Pair::start(&["plugin_opt_publish sensors/#"], &[]);
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("sensors/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "sensors/#");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish(
            "private/not-forwarded",
            b"stay home",
            QoS::AtLeastOnce,
            false,
        );
        publ.publish("sensors/kitchen/temp", b"21.5", QoS::AtLeastOnce, false);
        let got = sub.expect(T, "sensors/kitchen/temp from A");
        assert_eq!(got.topic, "sensors/kitchen/temp");
        assert_eq!(got.payload, b"21.5");
        assert_eq!(got.qos, 1, "QoS 1 end to end");
        // binary payloads survive
        let bin: Vec<u8> = (0..=255).collect();
        publ.publish("sensors/raw", &bin, QoS::AtMostOnce, false);
        assert_eq!(sub.expect(T, "binary").payload, bin);
        // It went through Twister: alice's public timeline holds the posts.
        let posts = readable_posts(&p.node, "alice", 10).concat();
        assert!(posts.contains("sensors/kitchen/temp 21.5"), "{posts}");
        assert!(
            !posts.contains("stay home") && !posts.contains("private/not-forwarded"),
            "only forwarded topics leave the broker"
        );
    }
}

on_both_brokers! {
    fn wildcard_interest_keeps_only_matching_topics() {
        let p = Pair::start(&["plugin_opt_publish sensors/#"], &[]);
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("sensors/+/temp", QoS::AtMostOnce));
        wait_interest(&p.node, "bob", "sensors/+/temp");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        // Posts are read in order: if hum were injected it would arrive before temp.
        publ.publish("sensors/1/hum", b"40", QoS::AtLeastOnce, false);
        publ.publish("sensors/1/temp", b"20", QoS::AtLeastOnce, false);
        let got = sub.expect(T, "sensors/1/temp");
        assert_eq!(got.topic, "sensors/1/temp");
        publ.publish("sensors/2/temp", b"19", QoS::AtLeastOnce, false);
        assert_eq!(sub.expect(T, "sensors/2/temp").topic, "sensors/2/temp");
    }
}

on_both_brokers! {
    fn a_burst_is_batched_into_few_posts_and_arrives_complete_and_in_order() {
        let p = Pair::start(
            &[
                "plugin_opt_publish burst/#",
                "plugin_opt_batch_delay_ms 200",
            ],
            &[],
        );
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("burst/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "burst/#");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        for i in 0..60 {
            publ.publish(
                &format!("burst/{i}"),
                format!("m{i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            );
        }
        for i in 0..60 {
            let got = sub.expect(T, &format!("burst/{i}"));
            assert_eq!(got.topic, format!("burst/{i}"));
        }
        let last_k = p.node.ok("getlasthave", json!(["alice", ["alice"]]))["alice"]
            .as_i64()
            .unwrap();
        assert!(
            last_k < 20,
            "60 messages should take a handful of posts, took {}",
            last_k + 1
        );
    }
}

on_both_brokers! {
    fn retained_messages_wait_on_the_other_broker_for_later_subscribers() {
        let p = Pair::start(&["plugin_opt_publish status/#"], &[]);
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("status/door", b"open", QoS::AtLeastOnce, true);
        // Nobody on B subscribes to status/#: the retained message is stored anyway.
        let late = wait_for(T, "retained status/door on B", || {
            let c = Mqtt::connect(p.b.port, "late", true);
            c.subscribe("status/#", QoS::AtLeastOnce);
            let r = c.recv(Duration::from_millis(300));
            c.disconnect();
            r.filter(|r| r.retain)
        });
        assert_eq!(
            (late.topic.as_str(), late.payload.as_slice(), late.retain),
            ("status/door", &b"open"[..], true)
        );
    }
}

on_both_brokers! {
    fn private_forward_goes_only_to_interested_recipients() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let a = Broker::start(
            d,
            "a",
            &plugin_conf(
                &node,
                d,
                "alice",
                &[
                    "plugin_opt_follow bob carol",
                    "plugin_opt_private doors/# bob,carol",
                ],
            ),
        );
        let b = Broker::start(
            d,
            "b",
            &plugin_conf(&node, d, "bob", &["plugin_opt_follow alice"]),
        );
        let c = Broker::start(
            d,
            "c",
            &plugin_conf(&node, d, "carol", &["plugin_opt_follow alice"]),
        );
        for x in [&a, &b, &c] {
            x.wait_ready();
        }
        let sub_b = Mqtt::connect(b.port, "sub-b", true);
        assert!(sub_b.subscribe("doors/#", QoS::AtLeastOnce));
        let sub_c = Mqtt::connect(c.port, "sub-c", true);
        assert!(sub_c.subscribe("windows/#", QoS::AtLeastOnce));
        wait_interest(&node, "bob", "doors/#");
        wait_interest(&node, "carol", "windows/#");
        let publ = Mqtt::connect(a.port, "pub-a", true);
        // A learns bob's interest within its refresh interval: publish until one arrives.
        let got = wait_for(T, "a private message at bob", || {
            publ.publish("doors/front", b"opened", QoS::AtLeastOnce, false);
            sub_b.recv(Duration::from_millis(500))
        });
        assert_eq!(got.topic, "doors/front");
        // Nothing public, nothing for carol.
        assert_eq!(
            node.ok("getposts", json!([10, [{"username": "alice"}]])),
            json!([])
        );
        let to_carol = node.ok(
            "getdirectmsgs",
            json!(["alice", 100, [{"username": "carol"}]]),
        );
        assert_eq!(to_carol, json!({}), "carol does not want doors/#");
        let to_bob = node.ok(
            "getdirectmsgs",
            json!(["bob", 100, [{"username": "alice"}]]),
        );
        assert!(!to_bob["alice"].as_array().unwrap().is_empty());
        assert!(sub_c.recv(Duration::from_millis(300)).is_none());
    }
}
