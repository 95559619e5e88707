//! Brokers on hosts of their own: each host a network namespace with its own dev node (peering with the
//! others, like twisterd nodes on the Twister network) and its own Mosquitto with the plugin. Links are
//! cut, nodes killed, the network made slow and lossy; each subscriber counts what it gets.
//! Needs root (network namespaces); see `harness/src/hosts.rs`.

use mqtt_twister_harness::hosts::{HostSpec, Hosts, Network};
use mqtt_twister_harness::*;
use rumqttc::QoS;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const NAMES: [(&str, &str); 3] = [("a", "alice"), ("b", "bob"), ("c", "carol")];

/// Three hosts a, b, c (users alice, bob, carol), each following the two others and posting `t/#`.
fn three_hosts(net: Network) -> Hosts {
    let specs: Vec<HostSpec> = NAMES
        .iter()
        .map(|(name, user)| {
            let others: Vec<&str> = NAMES
                .iter()
                .filter(|(_, u)| u != user)
                .map(|(_, u)| *u)
                .collect();
            HostSpec {
                name,
                user,
                plugin: vec![
                    format!("plugin_opt_follow {}", others.join(",")),
                    "plugin_opt_publish t/#".into(),
                    "plugin_opt_batch_delay_ms 100".into(),
                    "plugin_opt_poll_interval_ms 100".into(),
                ],
            }
        })
        .collect();
    Hosts::start(&specs, net)
}

fn payload(from: &str, i: usize) -> Vec<u8> {
    format!("{from}-{i:05}").into_bytes()
}

/// Everything `sub` receives until `want` messages came (or `timeout`), then 2 s more to catch
/// duplicates; the payloads in arrival order.
fn collect(sub: &Mqtt, want: usize, timeout: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    while got.len() < want && Instant::now() < deadline {
        if let Some(m) = sub.recv(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }
    while let Some(m) = sub.recv(Duration::from_secs(2)) {
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    got
}

/// Drains what arrived so far without waiting.
fn drain(sub: &Mqtt, into: &mut Vec<String>) {
    while let Some(m) = sub.recv(Duration::from_millis(1)) {
        into.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
}

/// Asserts `got` is exactly `from`'s messages 0..n, once each and in order.
fn assert_exactly_in_order(who: &str, got: &[String], from: &str, n: usize) {
    let want: Vec<String> = (0..n)
        .map(|i| String::from_utf8(payload(from, i)).unwrap())
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for g in got {
        *counts.entry(g.as_str()).or_default() += 1;
    }
    let missing = want
        .iter()
        .filter(|w| !counts.contains_key(w.as_str()))
        .count();
    let twice = counts.values().filter(|c| **c > 1).count();
    eprintln!(
        "{who}: {} received, {} distinct, {missing} missing, {twice} duplicated (of {n})",
        got.len(),
        counts.len()
    );
    assert_eq!(missing, 0, "{who}: messages lost");
    assert_eq!(twice, 0, "{who}: messages delivered twice");
    assert_eq!(got, want.as_slice(), "{who}: not in publish order");
}

fn report(scenario: &str, began: Instant) {
    eprintln!(
        "scenario {scenario} on {:?}: {:.1} s",
        broker_version(),
        began.elapsed().as_secs_f64()
    );
}

on_both_brokers! {
    fn a_message_crosses_between_hosts_and_everything_is_removed_afterwards() {
        let began = Instant::now();
        let hosts = three_hosts(Network::default());
        let (a, c) = (hosts.host("a"), hosts.host("c"));
        let sub = c.mqtt("sub-c");
        assert!(sub.subscribe("t/#", QoS::AtLeastOnce));
        a.wait_interest("carol", "t/#");
        let publ = a.mqtt("pub-a");
        publ.publish("t/hello", b"across hosts", QoS::AtLeastOnce, false);
        let got = sub.expect(Duration::from_secs(20), "the message from host a on host c");
        assert_eq!(got.payload, b"across hosts");
        // Each host has its own node: the post came to c's node over the peer link.
        assert!(c.ok("getinfo", serde_json::json!([]))["connections"].as_u64().unwrap() >= 1);
        let namespaces = hosts.namespaces();
        drop(hosts);
        let listed = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        for ns in namespaces {
            assert!(!listed.contains(&ns), "{ns} left behind");
        }
        report("smoke", began);
    }
}

on_both_brokers! {
    fn partition_c_cut_off_for_30_s_gets_everything_once_in_order_after_the_heal() {
        let began = Instant::now();
        let hosts = three_hosts(Network::default());
        let (a, b, c) = (hosts.host("a"), hosts.host("b"), hosts.host("c"));
        let sub_c = c.mqtt("sub-c");
        assert!(sub_c.subscribe("t/a/#", QoS::AtLeastOnce));
        let sub_b = b.mqtt("sub-b");
        assert!(sub_b.subscribe("t/#", QoS::AtLeastOnce));
        let local_a = a.mqtt("local-a");
        assert!(local_a.subscribe("t/#", QoS::AtLeastOnce));
        a.wait_interest("carol", "t/a/#");
        a.wait_interest("bob", "t/#");
        c.wait_interest("alice", "t/#");
        c.wait_interest("bob", "t/#");
        let publ = a.mqtt("pub-a");
        let publ_c = c.mqtt("pub-c");

        // 20 msg/s: 2 s linked, 30 s cut, 2 s after the heal.
        let (before, during, after) = (40, 600, 40);
        let total = before + during + after;
        let tick = Duration::from_millis(50);
        let start = Instant::now();
        let (mut on_a, mut on_b, mut on_c) = (Vec::new(), Vec::new(), Vec::new());
        let mut cut_at = None;
        for i in 0..total {
            if i == before {
                hosts.cut("c");
                cut_at = Some(Instant::now());
            }
            if i == before + during {
                // Nothing published after the cut reached c before the heal.
                drain(&sub_c, &mut on_c);
                let leaked = on_c.iter().filter(|m| m.as_str() >= "a-00040").count();
                assert_eq!(leaked, 0, "messages crossed the cut: {on_c:?}");
                // Local clients on a and b never noticed: they got all a published so far, at once.
                drain(&local_a, &mut on_a);
                drain(&sub_b, &mut on_b);
                let from_a = |v: &Vec<String>| v.iter().filter(|m| m.starts_with("a-")).count();
                eprintln!(
                    "at the heal: local subscriber on a {} of {i}, subscriber on b {} of {i}",
                    from_a(&on_a),
                    from_a(&on_b)
                );
                // (Slack of one second for a loaded machine; a broker held up by the cut would be 30 s behind.)
                assert!(from_a(&on_a) + 20 >= i, "a's local subscriber fell behind during the cut");
                assert!(from_a(&on_b) + 60 >= i, "b fell behind during the cut");
                hosts.heal("c");
                eprintln!("cut for {:.1} s", cut_at.unwrap().elapsed().as_secs_f64());
            }
            if (before..before + 10).contains(&i) {
                publ_c.publish(&format!("t/c/{i}"), &payload("c", i - before), QoS::AtLeastOnce, false);
            }
            publ.publish(&format!("t/a/{i}"), &payload("a", i), QoS::AtLeastOnce, false);
            let due = start + tick * (i as u32 + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let healed = Instant::now();
        let mut got_c = on_c;
        drain(&sub_c, &mut got_c);
        got_c.extend(collect(&sub_c, total - got_c.len(), Duration::from_secs(90)));
        eprintln!("c caught up {:.1} s after the heal (incl. 2 s watching for duplicates)", healed.elapsed().as_secs_f64());
        assert_exactly_in_order("c's subscriber", &got_c, "a", total);
        // What c published during the cut reached b (and a's subscriber) after the heal.
        on_b.extend(collect(&sub_b, total + 10 - on_b.len(), Duration::from_secs(60)));
        let from_c: Vec<String> = on_b.iter().filter(|m| m.starts_with("c-")).cloned().collect();
        assert_exactly_in_order("b's subscriber, c's messages", &from_c, "c", 10);
        let from_a: Vec<String> = on_b.iter().filter(|m| m.starts_with("a-")).cloned().collect();
        assert_exactly_in_order("b's subscriber, a's messages", &from_a, "a", total);
        on_a.extend(collect(&local_a, total + 10 - on_a.len(), Duration::from_secs(60)));
        let c_on_a: Vec<String> = on_a.iter().filter(|m| m.starts_with("c-")).cloned().collect();
        assert_exactly_in_order("a's subscriber, c's messages", &c_on_a, "c", 10);
        report("partition", began);
    }
}

on_both_brokers! {
    fn node_loss_c_dev_node_killed_and_restarted_mid_stream_loses_nothing() {
        let began = Instant::now();
        let mut hosts = three_hosts(Network::default());
        let sub_c = hosts.host("c").mqtt("sub-c");
        assert!(sub_c.subscribe("t/a/#", QoS::AtLeastOnce));
        let sub_a = hosts.host("a").mqtt("sub-a");
        assert!(sub_a.subscribe("t/c/#", QoS::AtLeastOnce));
        hosts.host("a").wait_interest("carol", "t/a/#");
        hosts.host("c").wait_interest("alice", "t/c/#");
        let publ = hosts.host("a").mqtt("pub-a");
        // c publishes too: its posts acknowledged before the kill must survive it.
        let publ_c = hosts.host("c").mqtt("pub-c");
        let total = 300;
        let mut from_c = 0;
        let start = Instant::now();
        for i in 0..total {
            if i == 60 {
                hosts.host_mut("c").kill_node();
            }
            if i == 100 {
                hosts.host_mut("c").start_node();
            }
            if i % 3 == 0 {
                publ_c.publish(&format!("t/c/{i}"), &payload("c", from_c), QoS::AtLeastOnce, false);
                from_c += 1;
            }
            publ.publish(&format!("t/a/{i}"), &payload("a", i), QoS::AtLeastOnce, false);
            let due = start + Duration::from_millis(50) * (i as u32 + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let got = collect(&sub_c, total, Duration::from_secs(60));
        assert_exactly_in_order("c's subscriber", &got, "a", total);
        let got = collect(&sub_a, from_c, Duration::from_secs(60));
        assert_exactly_in_order("a's subscriber, c's messages", &got, "c", from_c);
        report("node loss", began);
    }
}

on_both_brokers! {
    fn slow_lossy_network_delivers_everything_once() {
        let began = Instant::now();
        let net = Network {
            delay: Some(Duration::from_millis(200)),
            loss_percent: 5,
            ..Network::default()
        };
        let hosts = three_hosts(net);
        let (a, b, c) = (hosts.host("a"), hosts.host("b"), hosts.host("c"));
        let sub_b = b.mqtt("sub-b");
        let sub_c = c.mqtt("sub-c");
        assert!(sub_b.subscribe("t/a/#", QoS::AtLeastOnce));
        assert!(sub_c.subscribe("t/a/#", QoS::AtLeastOnce));
        a.wait_interest("bob", "t/a/#");
        a.wait_interest("carol", "t/a/#");
        // Each packet is held 200 ms on its way into a host: a round trip takes 400 ms.
        let rtt = hosts.round_trip("a", "b");
        eprintln!("round trip a -> b: {} ms", rtt.as_millis());
        assert!(rtt >= Duration::from_millis(400), "{rtt:?}: no delay between hosts");
        let publ = a.mqtt("pub-a");
        // The link delay is there: a message takes longer than one crossing.
        let sent = Instant::now();
        publ.publish("t/a/probe", b"probe", QoS::AtLeastOnce, false);
        sub_b.expect(Duration::from_secs(30), "the probe on b");
        let latency = sent.elapsed();
        eprintln!("one message a -> b over the slow link: {} ms", latency.as_millis());
        assert!(latency >= Duration::from_millis(200), "{latency:?}: no delay between hosts");
        sub_c.expect(Duration::from_secs(30), "the probe on c");
        let total = 200;
        let start = Instant::now();
        for i in 0..total {
            publ.publish(&format!("t/a/{i}"), &payload("a", i), QoS::AtLeastOnce, false);
            let due = start + Duration::from_millis(50) * (i as u32 + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let got_b = collect(&sub_b, total, Duration::from_secs(60));
        let got_c = collect(&sub_c, total, Duration::from_secs(30));
        assert_exactly_in_order("b's subscriber", &got_b, "a", total);
        assert_exactly_in_order("c's subscriber", &got_c, "a", total);
        let dropped: Vec<u64> = NAMES.iter().map(|(n, _)| hosts.dropped_packets(n)).collect();
        eprintln!("packets dropped entering a, b, c: {dropped:?}");
        assert!(dropped.iter().sum::<u64>() > 0, "the loss rule dropped nothing");
        report("slow lossy", began);
    }
}

on_both_brokers! {
    fn triangle_every_host_publishing_each_subscriber_counts_exactly() {
        let began = Instant::now();
        let hosts = three_hosts(Network::default());
        let subs: Vec<Mqtt> = NAMES
            .iter()
            .map(|(name, _)| {
                let s = hosts.host(name).mqtt(&format!("sub-{name}"));
                assert!(s.subscribe("t/#", QoS::AtLeastOnce));
                s
            })
            .collect();
        for (name, _) in NAMES {
            for (_, user) in NAMES.iter().filter(|(n, _)| *n != name) {
                hosts.host(name).wait_interest(user, "t/#");
            }
        }
        let pubs: Vec<Mqtt> = NAMES
            .iter()
            .map(|(name, _)| hosts.host(name).mqtt(&format!("pub-{name}")))
            .collect();
        let each = 100;
        for i in 0..each {
            for ((name, _), p) in NAMES.iter().zip(&pubs) {
                p.publish(&format!("t/{name}/{i}"), &payload(name, i), QoS::AtLeastOnce, false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for ((name, _), sub) in NAMES.iter().zip(&subs) {
            let got = collect(sub, 3 * each, Duration::from_secs(60));
            for (from, _) in NAMES {
                let mine: Vec<String> = got
                    .iter()
                    .filter(|m| m.starts_with(&format!("{from}-")))
                    .cloned()
                    .collect();
                assert_exactly_in_order(&format!("{name}'s subscriber, {from}'s messages"), &mine, from, each);
            }
            assert_eq!(got.len(), 3 * each, "{name}: exactly what it should");
        }
        report("triangle", began);
    }
}

fn listed_namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

on_both_brokers! {
    fn leftovers_of_a_killed_run_and_a_failing_test_leave_nothing_behind() {
        // A namespace of a test process that no longer runs (no such pid), with a process in it.
        let stale = &format!("mqtwh-2147483646-{:?}-a", broker_version());
        let _ = std::process::Command::new("ip").args(["netns", "add", stale]).status();
        let mut sleeper = std::process::Command::new("ip")
            .args(["netns", "exec", stale, "sleep", "600"])
            .spawn()
            .unwrap();
        // A test that fails while its hosts run.
        let names = std::sync::Mutex::new(Vec::new());
        let outcome = std::panic::catch_unwind(|| {
            let hosts = three_hosts(Network::default());
            *names.lock().unwrap() = hosts.namespaces();
            panic!("a failing test");
        });
        assert!(outcome.is_err());
        let names = names.into_inner().unwrap();
        assert_eq!(names.len(), 4);
        let listed = listed_namespaces();
        assert!(!listed.contains(stale), "the leftover namespace was removed at start");
        let waited = wait_for(Duration::from_secs(5), "the leftover's process killed", || {
            sleeper.try_wait().unwrap()
        });
        assert!(!waited.success());
        for ns in names {
            assert!(!listed.contains(&ns), "{ns} left behind by a failing test");
        }
    }
}
