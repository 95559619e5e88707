//! Restarts, outages and bad input from the network.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

on_both_brokers! {
    fn a_broker_restart_neither_replays_nor_skips() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let persist = format!(
            "persistence true\npersistence_location {}/\nautosave_interval 1",
            d.display()
        );
        let a = Broker::start(
            d,
            "a",
            &plugin_conf(
                &node,
                d,
                "alice",
                &["plugin_opt_follow bob", "plugin_opt_publish cont/#"],
            ),
        );
        let b_conf = plugin_conf(
            &node,
            d,
            "bob",
            &[
                "plugin_opt_follow alice",
                "plugin_opt_subscribe cont/#",
                &persist,
            ],
        );
        let mut b = Broker::start(d, "b", &b_conf);
        a.wait_ready();
        b.wait_ready();
        let publ = Mqtt::connect(a.port, "pub-a", true);
        let sub = Mqtt::connect(b.port, "durable", false);
        assert!(sub.subscribe("cont/#", QoS::AtLeastOnce));
        publ.publish("cont/1", b"before", QoS::AtLeastOnce, false);
        assert_eq!(sub.expect(T, "cont/1").payload, b"before");
        sub.disconnect();

        let port = b.port;
        b.stop();
        publ.publish("cont/2", b"while B was down", QoS::AtLeastOnce, false);
        // Wait until A has posted it before B comes back.
        wait_for(T, "alice's post of cont/2", || {
            let posts = readable_posts(&node, "alice", 50);
            posts.iter().any(|p| p.contains("while B was down")).then_some(())
        });
        let b = Broker::start_on(d, "b", &b_conf, port);
        b.wait_ready();
        let sub = Mqtt::connect(b.port, "durable", false);
        let first = sub.expect(T, "cont/2 after the restart");
        assert_eq!(
            (first.topic.as_str(), first.payload.as_slice()),
            ("cont/2", &b"while B was down"[..]),
            "cont/1 must not be replayed"
        );
        publ.publish("cont/3", b"after", QoS::AtLeastOnce, false);
        assert_eq!(sub.expect(T, "cont/3").topic, "cont/3");
    }
}

on_both_brokers! {
    fn twisterd_down_then_back_loses_nothing_and_local_clients_carry_on() {
        let data = workdir();
        let datadir = format!("-datadir={}", data.path().join("node").display());
        let node = DevNode::start_with(&["-blockinterval=0.2", &datadir], 0);
        let timeout = "plugin_opt_rpc_timeout_ms 1000";
        let mut p = Pair::start_with(node, &["plugin_opt_publish out/#", timeout], &[timeout]);
        let (a, b) = (&p.a, &p.b);
        let remote = Mqtt::connect(b.port, "remote", true);
        assert!(remote.subscribe("out/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "out/#");

        p.node.stop();
        let local = Mqtt::connect(a.port, "local", true);
        assert!(local.subscribe("out/#", QoS::AtLeastOnce));
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish("out/1", b"during the outage", QoS::AtLeastOnce, false);
        assert_eq!(
            local
                .expect(T, "local delivery while twisterd is down")
                .payload,
            b"during the outage"
        );
        a.wait_log("twisterd unreachable", T);

        p.node.restart();
        let a = &p.a;
        let got = remote.expect(Duration::from_secs(40), "out/1 once twisterd is back");
        assert_eq!(got.payload, b"during the outage");
        a.wait_log("twisterd answers again", T);
        let log = a.log_text();
        // The worker's RPC state: one line when twisterd goes, one when it is back. (A profile write
        // that the DHT thread tried during the outage says so on a line of its own.)
        let went = log
            .lines()
            .filter(|l| l.contains("twisterd call") && l.contains("twisterd unreachable"))
            .count();
        assert_eq!(went, 1, "one log line per change of state:\n{log}");
        assert!(!log.contains(RPC_PASSWORD), "credentials never logged");
    }
}

on_both_brokers! {
    fn malformed_posts_from_a_followed_user_are_skipped_and_counted() {
        let p = Pair::start(
            &["plugin_opt_publish ok/#"],
            &["plugin_opt_follow mallory", "plugin_opt_subscribe ok/#"],
        );
        p.node.user("mallory");
        p.b.wait_log("now following [\"mallory\"]", T);
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("ok/#", QoS::AtLeastOnce));
        let garbage = [
            "just words".to_string(),
            r#"{"topic": "$SYS/broker/clients", "payload": "eA==", "qos": 0}"#.to_string(),
            r#"{"v":1,"m":[{"t":"ok/+","p":"eA==","q":0}]}"#.to_string(),
            r#"{"v":1,"m":[{"t":"ok/x","p":"***","q":0}]}"#.to_string(),
            r#"{"v":9,"m":[]}"#.to_string(),
            "{\"topic\":\"ok/a\",\"payload\":\"eA==\",\"qos\":7}".to_string(),
        ];
        for (k, text) in garbage.iter().enumerate() {
            p.node
                .ok("newpostmsg", json!(["mallory", k as i64 + 1, text]));
        }
        // A 2014 proof-of-concept message from mallory is fine, and so is alice's.
        p.node.ok(
            "newpostmsg",
            json!([
                "mallory",
                10,
                r#"{"topic": "ok/poc", "payload": "b2xk", "qos": 0}"#
            ]),
        );
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("ok/alice", b"valid", QoS::AtLeastOnce, false);
        let mut got: Vec<String> = (0..2)
            .map(|_| sub.expect(T, "the two valid messages").topic)
            .collect();
        got.sort();
        assert_eq!(got, vec!["ok/alice", "ok/poc"]);
        assert!(
            sub.recv(Duration::from_millis(300)).is_none(),
            "nothing from the garbage"
        );
        let log = p.b.log_text();
        assert_eq!(
            log.matches("of mallory:").count() + log.matches("from mallory").count(),
            garbage.len(),
            "each skipped post logged once:\n{log}"
        );
        assert!(p.b.log_text().contains("malformed so far"));
    }
}

on_both_brokers! {
    fn a_message_over_the_size_limit_is_refused_with_a_log_line_and_others_pass() {
        let p = Pair::start(
            &[
                "plugin_opt_publish big/#",
                "plugin_opt_max_message_bytes 3000",
            ],
            &["plugin_opt_subscribe big/#"],
        );
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("big/#", QoS::AtLeastOnce));
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("big/huge", &vec![7u8; 4000], QoS::AtLeastOnce, false);
        publ.publish("big/fits", &vec![7u8; 1200], QoS::AtLeastOnce, false);
        let got = sub.expect(T, "the message within the limit");
        assert_eq!((got.topic.as_str(), got.payload.len()), ("big/fits", 1200));
        p.a.wait_log(
            "dropped a message of 4000 bytes: more than plugin_opt_max_message_bytes (3000)",
            T,
        );
    }
}

on_both_brokers! {
    fn messages_larger_than_a_post_cross_in_fragments_publicly_and_privately() {
        let p = Pair::start(
            &[
                "plugin_opt_publish big/#",
                "plugin_opt_private secret/# bob",
            ],
            &[],
        );
        let (a, b, node) = (&p.a, &p.b, &p.node);
        let sub = Mqtt::connect(b.port, "sub-b", true);
        assert!(sub.subscribe("big/#", QoS::AtLeastOnce));
        assert!(sub.subscribe("secret/#", QoS::AtLeastOnce));
        wait_interest(&node, "bob", "secret/#");
        let publ = Mqtt::connect(a.port, "pub-a", true);
        let binary: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let text = "{\"reading\": 21.5} ".repeat(300).into_bytes();
        publ.publish("big/binary", &binary, QoS::AtLeastOnce, false);
        publ.publish("big/text", &text, QoS::AtLeastOnce, true);
        publ.publish("big/small", b"after", QoS::AtLeastOnce, false);
        let first = sub.expect(T, "the 20,000-byte message");
        assert_eq!(
            (first.topic.as_str(), first.payload == binary),
            ("big/binary", true)
        );
        let second = sub.expect(T, "the text message");
        assert_eq!(
            (second.topic.as_str(), second.payload == text),
            ("big/text", true)
        );
        assert_eq!(sub.expect(T, "the small one after").payload, b"after");
        // A private forward to bob (once alice knows his interest) is cut for a DM's smaller room.
        let secret: Vec<u8> = (0..5_000u32).map(|i| (i % 256) as u8).collect();
        let got = wait_for(T, "the large private message", || {
            publ.publish("secret/plan", &secret, QoS::AtLeastOnce, false);
            sub.recv(Duration::from_millis(700))
        });
        assert_eq!(
            (got.topic.as_str(), got.payload == secret),
            ("secret/plan", true)
        );
    }
}

/// CPU ticks (1/100 s) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

on_both_brokers! {
    fn an_idle_broker_with_the_plugin_stays_idle_even_with_twisterd_down() {
        let mut p = Pair::start(
            &["plugin_opt_publish x/#", "plugin_opt_poll_interval_ms 100"],
            &[],
        );
        for phase in ["twisterd up", "twisterd down"] {
            let before = cpu_ticks(p.a.pid());
            std::thread::sleep(Duration::from_secs(2));
            let used = cpu_ticks(p.a.pid()) - before;
            // A worker that spins burns about 200 ticks in 2 s; an idle one a handful.
            assert!(
                used < 60,
                "{phase}: the broker used {used} CPU ticks in 2 s while idle"
            );
            p.node.stop();
        }
    }
}

on_both_brokers! {
    fn messages_not_yet_posted_survive_a_broker_restart() {
        let data = workdir();
        let datadir = format!("-datadir={}", data.path().join("node").display());
        let mut node = DevNode::start_with(&["-blockinterval=0.2", &datadir], 0);
        let dir = workdir();
        let d = dir.path();
        let a_conf = plugin_conf(
            &node,
            d,
            "alice",
            &[
                "plugin_opt_follow bob",
                "plugin_opt_publish out/#",
                "plugin_opt_rpc_timeout_ms 500",
            ],
        );
        let mut a = Broker::start(d, "a", &a_conf);
        let b = Broker::start(
            d,
            "b",
            &plugin_conf(
                &node,
                d,
                "bob",
                &["plugin_opt_follow alice", "plugin_opt_subscribe out/#"],
            ),
        );
        a.wait_ready();
        b.wait_ready();
        let remote = Mqtt::connect(b.port, "remote", true);
        assert!(remote.subscribe("out/#", QoS::AtLeastOnce));

        node.stop();
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish(
            "out/kept",
            b"accepted while twisterd was down",
            QoS::AtLeastOnce,
            false,
        );
        a.wait_log("twisterd unreachable", T);
        let port = a.port;
        publ.disconnect();
        a.stop();
        assert!(
            a.log_text()
                .contains("stopping with 1 messages not yet posted (kept in the state file"),
            "{}",
            a.log_text()
        );

        node.restart();
        let a = Broker::start_on(d, "a", &a_conf, port);
        a.wait_log(
            "1 messages not posted before the last stop are queued again",
            T,
        );
        let got = remote.expect(
            Duration::from_secs(30),
            "the message kept across A's restart",
        );
        assert_eq!(
            (got.topic.as_str(), got.payload.as_slice()),
            ("out/kept", &b"accepted while twisterd was down"[..])
        );
    }
}
