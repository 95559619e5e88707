//! The broker refuses to start on a wrong plugin_opt, naming the key; access is what it is without the
//! plugin.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use std::time::Duration;

fn refused(node: &DevNode, extra: &[&str]) -> String {
    let dir = workdir();
    let mut b = Broker::start(
        dir.path(),
        "b",
        &plugin_conf(node, dir.path(), "bob", extra),
    );
    let status = b.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "mosquitto should refuse {extra:?}");
    b.log_text()
}

on_both_brokers! {
    fn every_bad_option_stops_the_broker_with_its_key_named() {
        let node = DevNode::start();
        let cases: &[(&str, &str)] = &[
            (
                "plugin_opt_poll_interval_ms soon",
                "plugin_opt_poll_interval_ms",
            ),
            ("plugin_opt_follow Not-A-User", "plugin_opt_follow"),
            ("plugin_opt_publish a/#/b", "plugin_opt_publish"),
            ("plugin_opt_private doors/#", "plugin_opt_private"),
            ("plugin_opt_subscribe a+", "plugin_opt_subscribe"),
            ("plugin_opt_access sometimes", "plugin_opt_access"),
            ("plugin_opt_create_user maybe", "plugin_opt_create_user"),
            ("plugin_opt_max_queue -3", "plugin_opt_max_queue"),
            ("plugin_opt_rpc_url nowhere", "plugin_opt_rpc_url"),
            ("plugin_opt_wire_format xml", "plugin_opt_wire_format"),
            ("plugin_opt_colour blue", "plugin_opt_colour"),
            (
                "plugin_opt_rpc_password_file /nonexistent/pw",
                "plugin_opt_rpc_password",
            ),
            (
                "plugin_opt_state_file /nonexistent/dir/state",
                "plugin_opt_state_file",
            ),
            ("plugin_opt_user Bob", "plugin_opt_user"),
        ];
        for (line, key) in cases {
            let log = refused(&node, &[line]);
            assert!(
                log.contains(key),
                "{line}: the log should name {key}:\n{log}"
            );
        }
    }
}

on_both_brokers! {
    fn missing_required_options_are_named() {
        let node = DevNode::start();
        let dir = workdir();
        let conf = format!(
            "plugin {}\nplugin_opt_rpc_url {}\n",
            plugin_path().display(),
            node.url
        );
        let mut b = Broker::start(dir.path(), "b", &conf);
        assert!(!b.wait_exit(Duration::from_secs(10)).success());
        assert!(
            b.log_text().contains("plugin_opt_rpc_user is required"),
            "{}",
            b.log_text()
        );
    }
}

/// B's configuration with `per_listener_settings true` first, as Mosquitto requires, and no doorbell:
/// what arrives from the network is published only from the plugin's TICK.
fn per_listener_broker(node: &DevNode, dir: &std::path::Path) -> Broker {
    let port = free_port();
    let plugin = plugin_conf(
        node,
        dir,
        "bob",
        &["plugin_opt_follow alice", "plugin_opt_wakeup false"],
    );
    let text = format!(
        "per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous true\n{LOG_LINES}{plugin}"
    );
    Broker::start_conf(dir, "b", &text, port)
}

on_both_brokers! {
    /// 2.0 never calls a per-listener plugin's TICK, so the plugin refuses; 2.1 does (deprecated key).
    fn per_listener_settings_is_refused_on_2_0_and_relays_on_2_1() {
        let node = DevNode::start();
        let dir = workdir();
        let mut b = per_listener_broker(&node, dir.path());
        if broker_version() == BrokerVersion::V2_0 {
            let status = b.wait_exit(Duration::from_secs(10));
            assert!(!status.success());
            assert!(
                b.log_text()
                    .contains("per_listener_settings true is not supported on Mosquitto 2.0"),
                "{}",
                b.log_text()
            );
            return;
        }
        b.wait_ready();
        let a = Broker::start(
            dir.path(),
            "a",
            &plugin_conf(
                &node,
                dir.path(),
                "alice",
                &["plugin_opt_follow bob", "plugin_opt_publish per/#"],
            ),
        );
        a.wait_ready();
        let sub = Mqtt::connect(b.port, "sub-b", true);
        assert!(sub.subscribe("per/#", QoS::AtLeastOnce));
        wait_interest(&node, "bob", "per/#");
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish("per/1", b"crossed", QoS::AtLeastOnce, false);
        let got = sub.expect(Duration::from_secs(15), "per/1 on the per-listener broker");
        assert_eq!(got.payload, b"crossed");
    }
}

const DYNSEC: &str = "auth_plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";

on_both_brokers! {
    /// On 2.0 our ACL answer depends on whether the other plugin decides access; on 2.1 we answer no
    /// ACL check, so another plugin changes nothing.
    fn another_plugin_needs_an_explicit_access_mode_on_2_0_only() {
        let node = DevNode::start();
        if broker_version() == BrokerVersion::V2_0 {
            // Our plugin is loaded first and refuses before the broker even looks at the other one.
            let log = refused(&node, &[DYNSEC]);
            assert!(
                log.contains("plugin_opt_access") && log.contains("mosquitto_dynamic_security"),
                "{log}"
            );
            return;
        }
        let dir = workdir();
        let b = Broker::start(
            dir.path(),
            "b",
            &plugin_conf(&node, dir.path(), "bob", &[DYNSEC]),
        );
        b.wait_ready();
        assert!(b.log_text().contains("access: unchanged, no ACL check"), "{}", b.log_text());
    }
}

/// What an anonymous client can do: subscribe (granted?), and receive its own publish on each topic.
fn access_profile(port: u16, topics: &[&str]) -> Vec<(String, bool, bool)> {
    let c = Mqtt::connect(port, "probe", true);
    topics
        .iter()
        .map(|t| {
            let granted = c.subscribe(t, QoS::AtLeastOnce);
            c.publish(t, b"x", QoS::AtLeastOnce, false);
            let delivered = c.recv(Duration::from_millis(400)).is_some();
            (t.to_string(), granted, delivered)
        })
        .collect()
}

const PROBES: &[&str] = &["public/a", "secret/a", "other/b"];

/// How the plugin's start-up line states its access answer: 2.1 gets no ACL check to answer.
fn access_line(answer_on_2_0: &str) -> String {
    match broker_version() {
        BrokerVersion::V2_0 => format!("access: {answer_on_2_0}"),
        BrokerVersion::V2_1 => "access: unchanged, no ACL check".into(),
    }
}

on_both_brokers! {
    fn access_is_unchanged_without_an_acl_file() {
        let node = DevNode::start();
        let dir = workdir();
        let plain = Broker::start(dir.path(), "plain", "");
        let with = Broker::start(
            dir.path(),
            "with",
            &plugin_conf(&node, dir.path(), "bob", &[]),
        );
        with.wait_ready();
        let expected = access_profile(plain.port, PROBES);
        assert!(
            expected.iter().all(|(_, g, d)| *g && *d),
            "plain broker allows everything: {expected:?}"
        );
        assert_eq!(access_profile(with.port, PROBES), expected);
        assert!(with.log_text().contains(&access_line("Allow")));
    }
}

on_both_brokers! {
    fn access_is_unchanged_with_an_acl_file_and_interest_is_still_seen() {
        let node = DevNode::start();
        let dir = workdir();
        let acl = dir.path().join("acl");
        std::fs::write(&acl, "topic readwrite public/#\ntopic read other/#\n").unwrap();
        let acl_line = format!("acl_file {}", acl.display());
        let plain = Broker::start(dir.path(), "plain", &format!("{acl_line}\n"));
        let with = Broker::start(
            dir.path(),
            "with",
            &plugin_conf(&node, dir.path(), "bob", &[&acl_line]),
        );
        with.wait_ready();
        let expected = access_profile(plain.port, PROBES);
        assert_eq!(expected[0], ("public/a".to_string(), true, true));
        assert!(!expected[1].2, "secret/a is not allowed: {expected:?}");
        assert_eq!(access_profile(with.port, PROBES), expected);
        assert!(with.log_text().contains(&access_line("Defer")));
        wait_interest(&node, "bob", "public/a");
    }
}
