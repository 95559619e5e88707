//! The crash-safe spool (`plugin_opt_spool_dir`): what a broker acknowledged survives its kill -9.

use mqtt_twister_harness::*;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Publishes "0", "1", ... at QoS 1 on `topic`, each after the PUBACK of the one before, until the
/// connection breaks. `acked` counts the acknowledged ones: exactly "0".."acked-1". `kill` is sent
/// while message `kill_at` is in flight.
fn publish_acknowledged(
    port: u16,
    topic: &str,
    acked: Arc<AtomicUsize>,
    kill_at: usize,
    kill: Sender<()>,
) {
    let mut opts = MqttOptions::new("spool-publisher", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(opts, 10);
    let (tx, acks) = channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return, // the broker is gone: no further acknowledgement
            }
        }
    });
    let mut i = 0usize;
    loop {
        if client
            .publish(topic, QoS::AtLeastOnce, false, i.to_string())
            .is_err()
        {
            return;
        }
        if i == kill_at {
            let _ = kill.send(());
        }
        if acks.recv_timeout(T).is_err() {
            return;
        }
        i += 1;
        acked.store(i, Ordering::SeqCst);
    }
}

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
            std::thread::spawn(move || publish_acknowledged(port, "stream/n", acked, 300, kill))
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
