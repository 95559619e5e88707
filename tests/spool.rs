//! The crash-safe spool (`plugin_opt_spool_dir`): what a broker acknowledged survives its kill -9.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// How many times each number arrived.
fn tally(
    sub: &Mqtt,
    counts: &mut BTreeMap<usize, usize>,
    until: impl Fn(&BTreeMap<usize, usize>) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !until(counts) && std::time::Instant::now() < deadline {
        if let Some(m) = sub.recv(Duration::from_millis(200)) {
            let n: usize = String::from_utf8_lossy(&m.payload).parse().unwrap();
            *counts.entry(n).or_default() += 1;
        }
    }
}

on_both_brokers! {
    fn a_broker_killed_mid_stream_loses_no_acknowledged_message() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let spool = format!("plugin_opt_spool_dir {}/spool-a", d.display());
        let a_conf = plugin_conf(
            &node,
            d,
            "alice",
            &["plugin_opt_follow bob", "plugin_opt_publish stream/#", &spool],
        );
        let a = Broker::start(d, "a", &a_conf);
        let b = Broker::start(
            d,
            "b",
            &plugin_conf(
                &node,
                d,
                "bob",
                &["plugin_opt_follow alice", "plugin_opt_subscribe stream/#"],
            ),
        );
        a.wait_ready();
        b.wait_ready();
        let sub = Mqtt::connect(b.port, "spool-sub", true);
        assert!(sub.subscribe("stream/#", QoS::AtLeastOnce));

        // twisterd slow to answer: what A acknowledges waits in its queue, unposted, when it dies.
        node.ok("devnode_fault", json!([{"latency_ms": 400}]));
        let acked = Arc::new(AtomicUsize::new(0));
        let (kill, killing) = channel();
        let publisher = {
            let (acked, port) = (acked.clone(), a.port);
            // `kill` is sent while message 300 is in flight.
            std::thread::spawn(move || {
                publish_acknowledged(port, "spool-publisher", "stream/n", usize::MAX, &acked, |i| {
                    if i == 300 {
                        let _ = kill.send(());
                    }
                })
            })
        };
        killing.recv_timeout(T).expect("300 messages acknowledged by A");
        let a_port = a.port;
        drop(a); // SIGKILL, while the publisher has a message in flight
        publisher.join().unwrap();
        let acked = acked.load(Ordering::SeqCst);
        node.ok("devnode_fault", json!([{}]));

        // The same configuration again: the spool replays what was not posted.
        let a2 = Broker::start_conf(d, "a2", &std::fs::read_to_string(d.join("a.conf")).unwrap(), a_port);
        a2.wait_ready();
        a2.wait_log("spool", T);
        let mut counts = BTreeMap::new();
        tally(&sub, &mut counts, |c| (0..acked).all(|n| c.contains_key(&n)));
        let lost: Vec<usize> = (0..acked).filter(|n| !counts.contains_key(n)).collect();
        let duplicates: usize = counts.values().map(|c| c - 1).sum();
        eprintln!(
            "{acked} acknowledged before the kill, lost {}, duplicates {duplicates}",
            lost.len()
        );
        assert!(lost.is_empty(), "lost {} acknowledged messages: {lost:?}", lost.len());
        assert!(
            a2.log_text().contains("messages not posted before the last stop are queued again"),
            "the restart replayed from the spool:\n{}",
            a2.log_text()
        );
    }
}

on_both_brokers! {
    /// A full spool: QoS 0 is dropped first (counted), room stays for QoS 1 until the spool is full;
    /// then a QoS 1 publish is refused, never acknowledged: on 2.1 an MQTT 5 publisher reads "quota
    /// exceeded" (0x97) and stays connected; on 2.0 the connection is closed without a PUBACK.
    fn a_full_spool_sheds_qos_0_first_then_refuses_qos_1() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let spool = format!("plugin_opt_spool_dir {}/spool-a", d.display());
        let mut node = node;
        let a = Broker::start(
            d,
            "a",
            &plugin_conf(
                &node,
                d,
                "alice",
                &[
                    "plugin_opt_publish full/#",
                    "plugin_opt_max_message_bytes 1000",
                    "plugin_opt_spool_max_bytes 300000",
                    &spool,
                ],
            ),
        );
        a.wait_ready();
        node.stop(); // nothing is posted, so nothing leaves the spool
        let local = Mqtt::connect(a.port, "local", true);
        assert!(local.subscribe("full/#", QoS::AtLeastOnce));
        let payload = [b'x'; 900];
        // MQTT 5: rumqttc's 3.1.1 client cannot read a PUBACK's reason.
        let mut publ = RawMqtt::connect_v5(a.port, "pub5", true, 0);
        // Four segments of about 74 such records: QoS 0 fills three, the fourth is kept for QoS 1/2.
        for i in 0..400 {
            publ.publish_v5(&format!("full/zero/{i}"), &payload, 0).unwrap();
        }
        let mut accepted = 0;
        let refused = loop {
            match publ.publish_v5(&format!("full/one/{accepted}"), &payload, 1) {
                Some(code) if code < 0x80 => accepted += 1,
                other => break other,
            }
            assert!(accepted < 400, "the spool never refused");
        };
        assert!(accepted >= 20, "room was kept for QoS 1: {accepted} accepted, then {refused:?}");
        match broker_version() {
            BrokerVersion::V2_1 => assert_eq!(refused, Some(0x97), "quota exceeded"),
            BrokerVersion::V2_0 => assert_eq!(refused, None, "closed without a PUBACK"),
        }
        // What was accepted reached the local subscriber; the refused message did not.
        let mut got = Vec::new();
        while let Some(m) = local.recv(Duration::from_millis(500)) {
            got.push(m.topic);
        }
        assert!(!got.contains(&format!("full/one/{accepted}")), "a refused message is not delivered");
        assert_eq!(got.iter().filter(|t| t.starts_with("full/one/")).count(), accepted);
        a.wait_log("QoS 0 messages dropped and", Duration::from_secs(25));
        let log = a.log_text();
        let line = log.lines().rfind(|l| l.contains("QoS 0 messages dropped and")).unwrap();
        eprintln!("{line}");
        assert!(!line.contains(" 0 QoS 0 messages dropped"), "{line}");
    }
}
