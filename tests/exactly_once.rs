//! Exactly once at the far subscriber, by message id: a receiving broker killed -9 mid-stream and
//! restarted (QoS 1 and 2, clean and persistent sessions), a QoS 2 PUBLISH retransmitted with DUP,
//! and three brokers following each other (a chain and a triangle, public and private) where each
//! subscriber gets each message once, in publish order, and no broker forwards what it injected.

use mqtt_twister_harness::*;
use rumqttc::{Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn qos_of(n: u8) -> QoS {
    match n {
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtMostOnce,
    }
}

/// A publisher that counts what the broker acknowledged (PUBACK for QoS 1, PUBREC for QoS 2).
struct Publisher {
    client: rumqttc::Client,
    acked: Arc<AtomicUsize>,
}

impl Publisher {
    fn connect(port: u16, id: &str) -> Publisher {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        let (client, mut connection) = rumqttc::Client::new(opts, 1024);
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        let (ready, connected) = channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ready.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_)))
                    | Ok(Event::Incoming(Packet::PubRec(_))) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        connected
            .recv_timeout(Duration::from_secs(10))
            .expect("CONNACK");
        Publisher { client, acked }
    }

    fn publish(&self, topic: &str, payload: String, qos: u8) {
        self.client
            .publish(topic, qos_of(qos), false, payload.into_bytes())
            .unwrap();
    }

    fn wait_acked(&self, n: usize) {
        wait_for(T, &format!("{n} acknowledgements"), || {
            (self.acked.load(Ordering::SeqCst) >= n).then_some(())
        });
    }
}

/// The far subscriber: its messages go on one channel across reconnections; it subscribes again only
/// when the broker lost its session, as real clients do.
fn connect_far(port: u16, id: &str, clean: bool, qos: u8, tx: &Sender<String>) -> Resuming {
    let far = Resuming::connect(port, id, clean, tx);
    far.resubscribe("k/#", qos_of(qos));
    far
}

/// Counts per message number `m<i>` of what arrived: (missing numbers, copies beyond the first).
fn tally(got: &[String], total: usize) -> (Vec<usize>, usize) {
    let mut counts = vec![0usize; total];
    for g in got {
        if let Some(n) = g.strip_prefix('m').and_then(|n| n.parse::<usize>().ok()) {
            if n < total {
                counts[n] += 1;
            }
        }
    }
    let missing = (0..total).filter(|n| counts[*n] == 0).collect();
    let duplicated = counts.iter().map(|c| c.saturating_sub(1)).sum();
    (missing, duplicated)
}

/// B is killed -9 while A's publisher streams QoS `qos` messages to B's subscriber, and restarted
/// 1.5 s later; the subscriber comes back as a real one would. Returns (lost, duplicated).
fn receiver_killed_mid_stream(qos: u8, clean: bool, persistence: bool) -> (usize, usize) {
    const TOTAL: usize = 400;
    const KILL_AFTER: usize = 120;
    let node = DevNode::start();
    let dir = workdir();
    let d = dir.path();
    let (a, b, b_conf) = sender_and_receiver(&node, d, "k/#", persistence);
    let (tx, rx) = channel();
    let far = connect_far(b.port, "far", clean, qos, &tx);
    wait_interest(&node, "bob", "k/#");
    let publisher = Publisher::connect(a.port, "pub");
    let stream = std::thread::spawn(move || {
        for i in 0..TOTAL {
            publisher.publish("k/n", format!("m{i}"), qos);
            std::thread::sleep(Duration::from_millis(8));
        }
        publisher.wait_acked(TOTAL);
        publisher
    });
    let mut got: Vec<String> = Vec::new();
    wait_for(T, "the first messages at the far subscriber", || {
        got.extend(rx.try_iter());
        (got.len() >= KILL_AFTER).then_some(())
    });
    let port = b.port;
    drop(b); // SIGKILL, mid-stream
    drop(far);
    let killed_at = got.len();
    std::thread::sleep(Duration::from_millis(1500));
    let b = Broker::start_on(d, "b", &b_conf, port);
    b.wait_ready();
    let far = connect_far(port, "far", clean, qos, &tx);
    let publisher = stream.join().expect("publisher");
    assert_eq!(
        publisher.acked.load(Ordering::SeqCst),
        TOTAL,
        "every publish acknowledged by A"
    );
    let last = format!("m{}", TOTAL - 1);
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && !got.contains(&last) {
        got.extend(rx.recv_timeout(Duration::from_millis(200)));
    }
    // Anything late (a duplicate) has a moment to show up.
    let settle = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < settle {
        got.extend(rx.recv_timeout(Duration::from_millis(100)));
    }
    let (missing, duplicated) = tally(&got, TOTAL);
    eprintln!(
        "QoS {qos}, {} session{} on {:?}: killed after {killed_at} received, session present after the restart: {}; lost {} {:?}, duplicated {duplicated}",
        if clean { "clean" } else { "persistent" },
        if persistence { ", Mosquitto persistence" } else { "" },
        broker_version(),
        far.session_present,
        missing.len(),
        &missing[..missing.len().min(20)],
    );
    assert!(got.contains(&last), "the stream goes on after the restart");
    assert_eq!(
        duplicated,
        0,
        "no message twice at the far subscriber\nB's log:\n{}",
        b.log_text()
    );
    // What B read is written down before it is handed to the broker: a kill between the two (or
    // before Mosquitto wrote it to the subscriber) loses what one poll read, at most a few messages
    // here (one every 8 ms, a poll every 50 ms); receipts and retransmission are to close that.
    assert!(
        missing.len() <= 10,
        "lost {} messages: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    drop(a);
    (missing.len(), duplicated)
}

on_both_brokers! {
    fn a_receiving_broker_killed_mid_stream_of_qos1_with_a_clean_session_delivers_nothing_twice() {
        receiver_killed_mid_stream(1, true, false);
    }

    fn a_receiving_broker_killed_mid_stream_of_qos1_with_a_persistent_session_delivers_nothing_twice() {
        receiver_killed_mid_stream(1, false, false);
    }

    fn a_receiving_broker_killed_mid_stream_of_qos2_with_a_clean_session_delivers_nothing_twice() {
        receiver_killed_mid_stream(2, true, false);
    }

    fn a_receiving_broker_killed_mid_stream_of_qos2_with_a_persistent_session_delivers_nothing_twice() {
        receiver_killed_mid_stream(2, false, false);
    }

    fn a_receiving_broker_with_mosquitto_persistence_killed_mid_stream_of_qos1_delivers_nothing_twice() {
        receiver_killed_mid_stream(1, false, true);
    }

    fn a_receiving_broker_with_mosquitto_persistence_killed_mid_stream_of_qos2_delivers_nothing_twice() {
        receiver_killed_mid_stream(2, false, true);
    }
}

/// Payloads received until `last` (or the time is up), then a moment more for late copies.
fn receive_until(sub: &Mqtt, last: &str) -> Vec<String> {
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if let Some(m) = sub.recv(Duration::from_millis(200)) {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            let done = text == last;
            got.push(text);
            if done {
                break;
            }
        }
    }
    while let Some(m) = sub.recv(Duration::from_millis(1000)) {
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    got
}

/// (the far subscriber's payloads, the local subscriber's) for a QoS 2 message retransmitted with DUP
/// by a client that lost its connection after PUBREC, before PUBREL, and reconnected with its session.
fn dup_retransmitted(a_lines: &[&str], b_lines: &[&str]) -> (Vec<String>, Vec<String>) {
    let p = Pair::start(a_lines, b_lines);
    let (far, local) = p.far_and_local("q/#", QoS::ExactlyOnce);
    // The same content again as a new message (new packet id) is a second message.
    publish_qos2_retransmitted_with_dup(p.a.port, "dup-pub");
    (receive_until(&far, "end"), receive_until(&local, "end"))
}

on_both_brokers! {
    fn a_qos2_publish_retransmitted_with_dup_before_pubrel_is_delivered_once_far_away() {
        for (a_extra, b_extra) in [
            (vec!["plugin_opt_publish q/#"], vec![]),
            // The private path, and the spool numbering the messages.
            (vec!["plugin_opt_private q/# bob", "plugin_opt_wire_format v1"], vec![]),
        ] {
            let dir = workdir();
            let spool = format!("plugin_opt_spool_dir {}/spool-a", dir.path().display());
            let mut a_lines = a_extra.clone();
            a_lines.push(&spool);
            let (far, local) = dup_retransmitted(&a_lines, &b_extra);
            let expected = ["exactly once", "exactly once", "end"];
            assert_eq!(local, expected, "{a_extra:?}: the broker delivers it once locally");
            assert_eq!(far, expected, "{a_extra:?}: far away as locally");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    Public,
    Private,
}

/// Three brokers a, b, c (users alice, bob, carol) following each other along `links`; each forwards
/// every topic `t/#` (so a broker that forwarded what it injected would be seen) and has a local
/// subscriber to `t/#`; each publishes 100 QoS 1 messages on its own topic. Every subscriber must get
/// its own broker's and its linked peers' messages once each, in publish order, and nothing else.
fn three_brokers(links: &[(usize, usize)], path: Path) {
    const N: usize = 100;
    let names = ["alice", "bob", "carol"];
    let node = DevNode::start();
    let dir = workdir();
    let d = dir.path();
    let peers = |i: usize| -> Vec<usize> {
        links
            .iter()
            .filter_map(|&(x, y)| match (x == i, y == i) {
                (true, _) => Some(y),
                (_, true) => Some(x),
                _ => None,
            })
            .collect()
    };
    let brokers: Vec<Broker> = (0..3)
        .map(|i| {
            let follow: Vec<&str> = peers(i).iter().map(|p| names[*p]).collect();
            let follow_line = format!("plugin_opt_follow {}", follow.join(" "));
            let forward = match path {
                Path::Public => "plugin_opt_publish t/#".to_string(),
                Path::Private => format!("plugin_opt_private t/# {}", follow.join(",")),
            };
            Broker::start(
                d,
                &names[i][..1],
                &plugin_conf(&node, d, names[i], &[&follow_line, &forward]),
            )
        })
        .collect();
    for b in &brokers {
        b.wait_ready();
    }
    let subs: Vec<Mqtt> = brokers
        .iter()
        .map(|b| {
            let s = Mqtt::connect(b.port, "sub", true);
            assert!(s.subscribe("t/#", QoS::AtLeastOnce));
            s
        })
        .collect();
    for name in names {
        wait_interest(&node, name, "t/#");
    }
    if path == Path::Private {
        // A private message goes to the recipients whose interest its broker knows when it routes
        // it: each broker must have read its recipients' interest first.
        for (i, b) in brokers.iter().enumerate() {
            for p in peers(i) {
                b.wait_log(
                    &format!("interest of recipient {}: [\"t/#\"]", names[p]),
                    Duration::from_secs(10),
                );
            }
        }
    }
    let publishers: Vec<Publisher> = brokers
        .iter()
        .map(|b| Publisher::connect(b.port, "pub"))
        .collect();
    for i in 0..N {
        for (p, name) in publishers.iter().zip(names) {
            p.publish(&format!("t/{name}"), format!("{name}:{i}"), 1);
        }
        if i % 10 == 9 {
            // Past the batch delay: the messages spread over several posts (or DMs) each.
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    for p in &publishers {
        p.wait_acked(N);
    }
    for (i, sub) in subs.iter().enumerate() {
        let mut from: Vec<usize> = peers(i);
        from.push(i);
        let expected_total = from.len() * N;
        let mut got: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && got.len() < expected_total {
            if let Some(m) = sub.recv(Duration::from_millis(200)) {
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
        }
        // Anything more (a copy, a message forwarded again) has a moment to show up.
        while let Some(m) = sub.recv(Duration::from_millis(1500)) {
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        let mut per_sender: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for g in &got {
            let (who, n) = g.split_once(':').expect("name:n");
            let who = names.iter().find(|n| **n == who).expect("a known sender");
            per_sender
                .entry(who)
                .or_default()
                .push(n.parse().expect("n"));
        }
        eprintln!(
            "{path:?}, links {links:?} on {:?}: {} got {}",
            broker_version(),
            names[i],
            per_sender
                .iter()
                .map(|(w, v)| format!("{} from {w}", v.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let want: Vec<usize> = (0..N).collect();
        for (j, name) in names.iter().enumerate() {
            let got_from = per_sender.get(name).cloned().unwrap_or_default();
            if from.contains(&j) {
                assert_eq!(
                    got_from, want,
                    "{path:?}: {}'s subscriber gets {name}'s messages once each, in order",
                    names[i]
                );
            } else {
                assert!(
                    got_from.is_empty(),
                    "{path:?}: {}'s subscriber got {} of {name}'s messages: forwarded again by a broker that injected them",
                    names[i],
                    got_from.len()
                );
            }
        }
    }
    if path == Path::Public {
        // Each user posted its own messages only.
        for name in names {
            for post in readable_posts(&node, name, 1000) {
                for line in post.lines() {
                    assert!(
                        line.starts_with(&format!("t/{name} {name}:")),
                        "{name} posted {line}"
                    );
                }
            }
        }
    }
}

on_both_brokers! {
    fn a_chain_of_three_brokers_delivers_each_message_once_in_order_and_never_forwards_it_again() {
        three_brokers(&[(0, 1), (1, 2)], Path::Public);
    }

    fn a_triangle_of_brokers_delivers_each_message_once_in_order_on_the_public_path() {
        three_brokers(&[(0, 1), (1, 2), (0, 2)], Path::Public);
    }

    fn a_triangle_of_brokers_delivers_each_message_once_in_order_on_the_private_path() {
        three_brokers(&[(0, 1), (1, 2), (0, 2)], Path::Private);
    }
}
