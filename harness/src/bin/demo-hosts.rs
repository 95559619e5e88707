//! `make demo-hosts`: three hosts (network namespaces), each with its own dev node and Mosquitto with
//! the plugin; a message crosses from one host to another; host c is cut off, a message published
//! meanwhile reaches it after the heal. Needs root. Everything it made is removed when it ends.

use mqtt_twister_harness::hosts::{HostSpec, Hosts, Network};
use mqtt_twister_harness::{with_broker_version, BrokerVersion};
use rumqttc::QoS;
use std::time::{Duration, Instant};

fn step(began: Instant, text: &str) {
    println!("[{:5.1} s] {text}", began.elapsed().as_secs_f64());
}

fn main() {
    // The system's Mosquitto (Debian's 2.0).
    with_broker_version(BrokerVersion::V2_0, demo)
}

fn demo() {
    let began = Instant::now();
    let users = [("a", "alice"), ("b", "bob"), ("c", "carol")];
    let specs: Vec<HostSpec> = users
        .iter()
        .map(|(name, user)| HostSpec {
            name,
            user,
            plugin: vec![
                format!(
                    "plugin_opt_follow {}",
                    users
                        .iter()
                        .filter(|(_, u)| u != user)
                        .map(|(_, u)| *u)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                "plugin_opt_publish demo/#".into(),
            ],
        })
        .collect();
    step(began, "starting hosts a, b, c: one network namespace each (198.18.0.1-3 on a bridge in its own namespace), each with its own dev node (peering) and Mosquitto with the plugin");
    let hosts = Hosts::start(&specs, Network::default());
    for h in &hosts.hosts {
        step(
            began,
            &format!(
                "host {}: namespace {}, address {}, Twister user {}",
                h.name, h.ns, h.addr, h.user
            ),
        );
    }
    let (a, c) = (hosts.host("a"), hosts.host("c"));
    let sub = c.mqtt("demo-sub-c");
    sub.subscribe("demo/#", QoS::AtLeastOnce);
    step(began, "a client on host c subscribed to demo/#");
    a.wait_interest("carol", "demo/#");
    step(
        began,
        "host a's dev node sees carol's interest (her profile came over the peer links)",
    );
    let publ = a.mqtt("demo-pub-a");
    publ.publish("demo/hello", b"hello from host a", QoS::AtLeastOnce, false);
    step(began, "published demo/hello on host a");
    let got = sub.expect(Duration::from_secs(30), "demo/hello on host c");
    step(
        began,
        &format!(
            "host c received {}: {}",
            got.topic,
            String::from_utf8_lossy(&got.payload)
        ),
    );
    hosts.cut("c");
    step(began, "cut host c's link to the bridge");
    publ.publish(
        "demo/during-cut",
        b"published while c was cut off",
        QoS::AtLeastOnce,
        false,
    );
    step(began, "published demo/during-cut on host a");
    match sub.recv(Duration::from_secs(5)) {
        None => step(
            began,
            "nothing reached host c in 5 s, as expected while it is cut off",
        ),
        Some(m) => panic!("{} crossed a cut link", m.topic),
    }
    hosts.heal("c");
    step(began, "restored host c's link");
    let got = sub.expect(
        Duration::from_secs(60),
        "demo/during-cut on host c after the heal",
    );
    step(
        began,
        &format!(
            "host c received {} after the heal: {}",
            got.topic,
            String::from_utf8_lossy(&got.payload)
        ),
    );
    drop(hosts);
    step(began, "removed every namespace, link and process");
}
