//! What differs on Mosquitto 2.1: subscriptions seen through SUBSCRIBE events (whose data carries no
//! client id), brokers of both versions relaying to each other, the TICK the plugin asks for, 2.1's
//! configuration keys, sessions ending, and QUOTA_EXCEEDED for a publish the plugin cannot queue.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

fn topics(node: &DevNode, user: &str) -> Vec<String> {
    node.profile_topics(user).unwrap_or_default()
}

on_both_brokers! {
    /// The bug: on 2.1 a live subscription on B never reached B's profile, so nothing crossed.
    fn a_live_subscription_is_relayed_end_to_end() {
        let p = Pair::start(&["plugin_opt_publish live/#"], &[]);
        assert!(p.b.log_text().contains(broker_version().log_banner()));
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("live/+/temp", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "live/+/temp");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("live/kitchen/temp", b"21", QoS::AtLeastOnce, false);
        let got = sub.expect(T, "live/kitchen/temp from A");
        assert_eq!((got.topic.as_str(), got.payload.as_slice()), ("live/kitchen/temp", &b"21"[..]));
    }
}

on_both_brokers! {
    /// A on this test's version publishes, B on the other version subscribes: 2.0 -> 2.1 in the 2.0
    /// variant, 2.1 -> 2.0 in the 2.1 variant.
    fn brokers_of_different_versions_relay_to_each_other() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let a = Broker::start(
            d,
            "a",
            &plugin_conf(&node, d, "alice", &["plugin_opt_follow bob", "plugin_opt_publish mixed/#"]),
        );
        let other = broker_version().other();
        let b = with_broker_version(other, || {
            Broker::start(d, "b", &plugin_conf(&node, d, "bob", &["plugin_opt_follow alice"]))
        });
        a.wait_ready();
        b.wait_ready();
        assert!(a.log_text().contains(broker_version().log_banner()), "{}", a.log_text());
        assert!(b.log_text().contains(other.log_banner()), "{}", b.log_text());
        let sub = Mqtt::connect(b.port, "sub-b", true);
        assert!(sub.subscribe("mixed/#", QoS::AtLeastOnce));
        wait_interest(&node, "bob", "mixed/#");
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish("mixed/1", b"across versions", QoS::AtLeastOnce, false);
        assert_eq!(sub.expect(T, "mixed/1 on the other version").payload, b"across versions");
    }
}

on_both_brokers! {
    /// Without the doorbell, messages from the network are published from TICK. 2.1 would sleep up to
    /// 5 s between loop turns: the plugin asks for the next TICK (it says so once), and every message
    /// arrives. 2.0 turns its loop every 100 ms by itself and is not asked.
    fn with_the_wakeup_off_messages_arrive_through_the_tick_the_plugin_asks_for() {
        let p = Pair::start(
            &["plugin_opt_publish quiet/#"],
            &["plugin_opt_wakeup false"],
        );
        assert!(p.b.log_text().contains("plugin_opt_wakeup false"), "{}", p.b.log_text());
        const ASKS: &str = "asking the broker for the next TICK within 100 ms";
        match broker_version() {
            BrokerVersion::V2_1 => p.b.wait_log(ASKS, T),
            BrokerVersion::V2_0 => assert!(!p.b.log_text().contains(ASKS)),
        }
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("quiet/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "quiet/#");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        // One at a time, each after the last arrived: every one waits for a TICK on an idle broker.
        for i in 0..5 {
            let topic = format!("quiet/{i}");
            publ.publish(&topic, b"x", QoS::AtLeastOnce, false);
            assert_eq!(sub.expect(T, &topic).topic, topic);
        }
    }
}

/// A configuration of B with its own listener and `body` (no global `allow_anonymous`).
fn start_b(node: &DevNode, dir: &std::path::Path, listener: &str, plugin_lines: &str) -> Broker {
    let port = free_port();
    let opts = plugin_conf(node, dir, "bob", &["plugin_opt_follow alice"]);
    // plugin_conf's first line is `plugin PATH`; the callers say how the plugin is loaded.
    let opts: String = opts.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let text = format!(
        "listener {port} 127.0.0.1\n{listener}{LOG_LINES}{plugin_lines}{opts}",
        plugin_lines = plugin_lines.replace("PATH", &plugin_path().display().to_string())
    );
    Broker::start_conf(dir, "b", &text, port)
}

/// Checks a B started by `start_b` on 2.1: ready, woken through its own listener, relaying.
fn relays_with_the_doorbell(node: &DevNode, dir: &std::path::Path, b: &Broker) {
    b.wait_ready();
    b.wait_log(
        &format!("wake the broker through its listener 127.0.0.1:{}", b.port),
        T,
    );
    let a = Broker::start(
        dir,
        "a",
        &plugin_conf(
            node,
            dir,
            "alice",
            &["plugin_opt_follow bob", "plugin_opt_publish keys/#"],
        ),
    );
    a.wait_ready();
    let sub = Mqtt::connect(b.port, "sub-b", true);
    assert!(sub.subscribe("keys/#", QoS::AtLeastOnce));
    wait_interest(node, "bob", "keys/#");
    let publ = Mqtt::connect(a.port, "pub-a", true);
    publ.publish("keys/1", b"k", QoS::AtLeastOnce, false);
    assert_eq!(sub.expect(T, "keys/1").payload, b"k");
}

on_both_brokers! {
    /// `listener_allow_anonymous true` (2.1) opens the listener to the plugin's doorbell; with
    /// `global_plugin` the plugin is loaded as usual. 2.0 does not know the keys and refuses them.
    fn listener_allow_anonymous_and_global_plugin_on_2_1() {
        let node = DevNode::start();
        let dir = workdir();
        let mut b = start_b(&node, dir.path(), "listener_allow_anonymous true\n", "global_plugin PATH\n");
        if broker_version() == BrokerVersion::V2_0 {
            assert!(!b.wait_exit(T).success());
            assert!(b.log_text().contains("Unknown configuration variable \"listener_allow_anonymous\""));
            return;
        }
        relays_with_the_doorbell(&node, dir.path(), &b);
    }
}

on_both_brokers! {
    /// 2.1 loads a plugin by name (`plugin_load`) and attaches it to a listener (`plugin_use`); the
    /// plugin is ours, not "another plugin". 2.0 does not know the keys.
    fn plugin_load_and_plugin_use_on_2_1() {
        let node = DevNode::start();
        let dir = workdir();
        let mut b = start_b(
            &node,
            dir.path(),
            "allow_anonymous true\n",
            "plugin_load twister PATH\nplugin_use twister\n",
        );
        if broker_version() == BrokerVersion::V2_0 {
            assert!(!b.wait_exit(T).success());
            assert!(b.log_text().contains("Unknown configuration variable \"plugin_load\""));
            return;
        }
        relays_with_the_doorbell(&node, dir.path(), &b);
    }
}

on_both_brokers! {
    /// Interest follows sessions: an MQTT 5 session that ends with its connection (clean start off,
    /// session expiry 0) takes its subscriptions with it on 2.1, where DISCONNECT comes only when the
    /// session ends; a session that outlives its connection keeps them on both versions. (2.0 sends
    /// DISCONNECT for every client and tells no session expiry: there, only the clean-session flag
    /// counts, so the ending MQTT 5 session's interest stays — a limitation of 2.0.)
    fn interest_follows_mqtt5_sessions() {
        let node = DevNode::start();
        let dir = workdir();
        let b = Broker::start(dir.path(), "b", &plugin_conf(&node, dir.path(), "bob", &[]));
        b.wait_ready();
        let mut ends = RawMqtt::connect_v5(b.port, "ends", false, 0);
        ends.subscribe_v5(1, "ends/#");
        let mut stays = RawMqtt::connect_v5(b.port, "stays", false, 3600);
        stays.subscribe_v5(1, "stays/#");
        let clean = Mqtt::connect(b.port, "clean", true);
        assert!(clean.subscribe("clean/#", QoS::AtLeastOnce));
        for f in ["ends/#", "stays/#", "clean/#"] {
            wait_interest(&node, "bob", f);
        }
        ends.disconnect();
        stays.disconnect();
        clean.disconnect();
        // The clean session's filter leaving shows the disconnects were seen.
        wait_for(T, "clean/# to leave the profile", || {
            (!topics(&node, "bob").contains(&"clean/#".to_string())).then_some(())
        });
        if broker_version() == BrokerVersion::V2_1 {
            wait_for(T, "ends/# to leave with its session", || {
                (!topics(&node, "bob").contains(&"ends/#".to_string())).then_some(())
            });
        }
        assert!(topics(&node, "bob").contains(&"stays/#".to_string()), "a kept session still wants");
        // The kept session comes back and unsubscribes: its interest goes.
        let back = Mqtt::connect(b.port, "stays", false);
        back.unsubscribe("stays/#");
        wait_for(T, "stays/# to leave after UNSUBSCRIBE", || {
            (!topics(&node, "bob").contains(&"stays/#".to_string())).then_some(())
        });
    }
}

on_both_brokers! {
    /// With the plugin's queue full (twisterd gone, `plugin_opt_max_queue 2`), 2.1 refuses a QoS 1
    /// publish of an MQTT 5 client with reason 0x97 "quota exceeded" and keeps the client connected;
    /// such a message reaches no local subscriber either (the publisher may retry). 2.0 cannot refuse
    /// without disconnecting: it accepts and the plugin drops the forward, counting it.
    fn a_full_queue_refuses_mqtt5_publishes_on_2_1_only() {
        let mut p = Pair::start(&["plugin_opt_publish q/#", "plugin_opt_max_queue 2"], &[]);
        let local = Mqtt::connect(p.a.port, "local", true);
        assert!(local.subscribe("q/#", QoS::AtLeastOnce));
        p.node.stop();
        let mut publ = RawMqtt::connect_v5(p.a.port, "pub5", true, 0);
        let mut codes = Vec::new();
        for i in 0..20 {
            let code = publ.publish_v5(&format!("q/{i}"), b"m", 1).expect("PUBACK");
            codes.push(code);
            if code >= 0x80 {
                break;
            }
            local.expect(T, "an accepted message delivered locally");
            // Give the worker a turn to count what it queued.
            std::thread::sleep(Duration::from_millis(50));
        }
        publ.ping();
        // Not forwarded, so never refused: a local topic passes even now (0x10: nobody subscribes).
        assert_eq!(publ.publish_v5("local/x", b"l", 1).expect("PUBACK"), 0x10);
        match broker_version() {
            BrokerVersion::V2_1 => {
                assert_eq!(codes.last(), Some(&0x97), "quota exceeded once the queue is full: {codes:?}");
                assert!(codes.len() >= 3, "the first two fit the queue: {codes:?}");
                assert!(local.recv(Duration::from_millis(300)).is_none(), "a refused message is not delivered");
                p.a.wait_log("publishes refused (quota exceeded)", Duration::from_secs(20));
            }
            BrokerVersion::V2_0 => {
                assert!(codes.iter().all(|c| *c == 0) && codes.len() == 20, "{codes:?}");
                p.a.wait_log("(plugin_opt_max_queue)", T);
            }
        }
    }
}
