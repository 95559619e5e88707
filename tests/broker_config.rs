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

#[test]
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

#[test]
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

#[test]
fn per_listener_settings_is_refused_on_mosquitto_2_0() {
    let node = DevNode::start();
    let log = refused(&node, &["per_listener_settings true"]);
    assert!(log.contains("per_listener_settings"), "{log}");
}

#[test]
fn another_plugin_needs_an_explicit_access_mode() {
    let node = DevNode::start();
    // Our plugin is loaded first and refuses before the broker even looks at the other one.
    let log = refused(
        &node,
        &["auth_plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"],
    );
    assert!(
        log.contains("plugin_opt_access") && log.contains("mosquitto_dynamic_security"),
        "{log}"
    );
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

#[test]
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
    assert!(with.log_text().contains("access: Allow"));
}

#[test]
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
    assert!(with.log_text().contains("access: Defer"));
    wait_interest(&node, "bob", "public/a");
}
