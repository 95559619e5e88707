//! The plugin's view of subscriptions equals the broker's: persistent sessions resumed without
//! subscribing again, sessions restored from Mosquitto's persistence, shared and plain forms of one
//! filter, a receiving broker killed and restarted; and QoS 2 retransmissions forwarded once.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Waits until `user` has posted a message whose text contains `needle`.
fn wait_posted(node: &DevNode, user: &str, needle: &str) {
    wait_for(T, &format!("{user}'s post of {needle}"), || {
        let posts = readable_posts(node, user, 200);
        posts.iter().any(|p| p.contains(needle)).then_some(())
    });
}

/// The interest a broker advertised first after `from` (its log's length before a restart).
fn first_profile_after(b: &Broker, from: usize) -> String {
    const LINE: &str = "profile interest is now ";
    wait_for(T, "the restarted broker's first profile", || {
        let log = b.log_text();
        let new = log.get(from..)?;
        let at = new.find(LINE)?;
        new[at..].lines().next().map(String::from)
    })
}

/// Receives until `last` arrives (or the time is up); every payload received, in order.
fn receive_until(sub: &Mqtt, last: &str, timeout: Duration) -> Vec<String> {
    receive_from(|t| sub.recv(t).map(|m| m.payload), last, timeout)
}

fn receive_from(
    recv: impl Fn(Duration) -> Option<Vec<u8>>,
    last: &str,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        let Some(payload) = recv(Duration::from_millis(200)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&payload).into_owned();
        let done = text == last;
        got.push(text);
        if done {
            break;
        }
    }
    got
}

on_both_brokers! {
    fn a_persistent_session_reconnecting_without_subscribing_again_still_receives() {
        let p = Pair::start(&["plugin_opt_publish p/#"], &[]);
        let sub = Mqtt::connect(p.b.port, "durable", false);
        assert!(sub.subscribe("p/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "p/#");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("p/0", b"first", QoS::AtLeastOnce, false);
        assert_eq!(sub.expect(T, "p/0").payload, b"first");
        // Twice: each reconnection takes the session over from the context before.
        let mut sub = sub;
        for round in 1..=2 {
            sub.disconnect();
            sub = Mqtt::connect(p.b.port, "durable", false);
            // A marker subscription by another client: once it is in the profile, the worker has
            // handled the takeover before it.
            let marker = format!("marker/{round}");
            let other = Mqtt::connect(p.b.port, &format!("other-{round}"), true);
            assert!(other.subscribe(&marker, QoS::AtMostOnce));
            wait_interest(&p.node, "bob", &marker);
            assert!(
                p.node.profile_topics("bob").unwrap_or_default().contains(&"p/#".to_string()),
                "round {round}: the resumed session still wants p/#"
            );
            let text = format!("after reconnection {round}");
            publ.publish(&format!("p/{round}"), text.as_bytes(), QoS::AtLeastOnce, false);
            let got = sub.expect(T, "a message for the resumed session");
            assert_eq!(got.payload, text.as_bytes());
        }
    }

    fn a_persistent_session_taken_over_while_connected_still_receives() {
        let p = Pair::start(&["plugin_opt_publish t/#"], &[]);
        let mut first = RawMqtt::connect(p.b.port, "live", false);
        first.subscribe(1, "t/#");
        wait_interest(&p.node, "bob", "t/#");
        // The client reconnects before the broker noticed its old connection is gone.
        let mut second = RawMqtt::connect(p.b.port, "live", false);
        let other = Mqtt::connect(p.b.port, "other", true);
        assert!(other.subscribe("marker/live", QoS::AtMostOnce));
        wait_interest(&p.node, "bob", "marker/live");
        assert!(
            p.node.profile_topics("bob").unwrap_or_default().contains(&"t/#".to_string()),
            "the session taken over still wants t/#"
        );
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("t/1", b"to the new connection", QoS::AtLeastOnce, false);
        let (kind, body) = second.read();
        assert_eq!(kind & 0xF0, 0x30, "a PUBLISH");
        assert!(body.ends_with(b"to the new connection"), "{body:?}");
        drop(first);
    }

    fn a_subscription_restored_by_mosquitto_persistence_is_honoured_after_a_restart() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let a = Broker::start(d, "a", &plugin_conf(&node, d, "alice", &["plugin_opt_follow bob", "plugin_opt_publish r/#"]));
        let b_conf = plugin_conf(&node, d, "bob", &["plugin_opt_follow alice", &mosquitto_persistence(d)]);
        let mut b = Broker::start(d, "b", &b_conf);
        a.wait_ready();
        b.wait_ready();
        let sub = Mqtt::connect(b.port, "durable", false);
        assert!(sub.subscribe("r/#", QoS::AtLeastOnce));
        wait_interest(&node, "bob", "r/#");
        sub.disconnect();
        let port = b.port;
        b.stop(); // Mosquitto writes its persistence file
        let log_before = b.log_text().len();
        let b = Broker::start_on(d, "b", &b_conf, port);
        b.wait_ready();
        let advertised = first_profile_after(&b, log_before);
        assert!(advertised.contains("\"r/#\""), "advertised at once: {advertised}");
        b.wait_log("interest of the last run taken up: 1 sessions, 1 persistent, 1 restored by the broker (clean stop)", T);
        wait_interest(&node, "bob", "r/#");
        let publ = Mqtt::connect(a.port, "pub-a", true);
        publ.publish("r/1", b"for the restored session", QoS::AtLeastOnce, false);
        wait_posted(&node, "alice", "for the restored session");
        // Injected for the session the broker holds, queued there until the client comes back.
        let sub = Mqtt::connect(b.port, "durable", false);
        let got = sub.expect(T, "the message queued for the restored session");
        assert_eq!((got.topic.as_str(), got.payload.as_slice()), ("r/1", &b"for the restored session"[..]));
    }

    fn unsubscribing_the_shared_form_keeps_the_plain_subscription_of_the_same_filter() {
        let p = Pair::start(&["plugin_opt_publish x/#"], &[]);
        let sub = Mqtt::connect(p.b.port, "both", true);
        assert!(sub.subscribe("x/#", QoS::AtLeastOnce));
        assert!(sub.subscribe("$share/g/x/#", QoS::AtLeastOnce));
        assert!(sub.subscribe("$share/h/x/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "x/#");
        sub.unsubscribe("$share/g/x/#");
        sub.unsubscribe("x/#");
        assert!(sub.subscribe("marker/1", QoS::AtMostOnce));
        wait_interest(&p.node, "bob", "marker/1");
        assert!(
            p.node.profile_topics("bob").unwrap_or_default().contains(&"x/#".to_string()),
            "$share/h/x/# still holds x/#"
        );
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        publ.publish("x/1", b"still wanted", QoS::AtLeastOnce, false);
        assert_eq!(sub.expect(T, "x/1 through the remaining shared subscription").payload, b"still wanted");
        sub.unsubscribe("$share/h/x/#");
        wait_for(T, "x/# to leave the profile with its last subscription", || {
            (!p.node.profile_topics("bob").unwrap_or_default().contains(&"x/#".to_string())).then_some(())
        });
    }

    fn an_expired_persistent_session_takes_its_interest_where_the_broker_tells() {
        let p = Pair::start(&[], &[]);
        // MQTT 5: persistent (clean start off) with a session expiry of 2 s.
        let mut raw = RawMqtt::connect_v5(p.b.port, "short-lived", false, 2);
        raw.subscribe_v5(1, "e/#");
        wait_interest(&p.node, "bob", "e/#");
        raw.send(&[0xE0, 0x00]); // DISCONNECT, normal
        drop(raw);
        let wants = || p.node.profile_topics("bob").unwrap_or_default().contains(&"e/#".to_string());
        match broker_version() {
            // The session's deletion is a persistence event (PERSIST_CLIENT_DELETE).
            BrokerVersion::V2_1 => wait_for(T, "e/# to leave with the expired session", || (!wants()).then_some(())),
            // 2.0 tells a plugin nothing about expiry: the interest stays (README).
            BrokerVersion::V2_0 => {
                std::thread::sleep(Duration::from_secs(4));
                let other = Mqtt::connect(p.b.port, "marker", true);
                assert!(other.subscribe("marker/expiry", QoS::AtMostOnce));
                wait_interest(&p.node, "bob", "marker/expiry");
                assert!(wants(), "2.0: still wanted after the session expired");
            }
        }
    }

    fn a_receiving_broker_killed_and_restarted_with_clean_sessions_loses_nothing() {
        killed_and_restarted(Sessions::Clean);
    }

    fn a_receiving_broker_killed_and_restarted_with_persistent_sessions_loses_nothing() {
        killed_and_restarted(Sessions::Persistent);
    }

    fn a_receiving_broker_killed_and_restarted_with_mosquitto_persistence_loses_nothing() {
        killed_and_restarted(Sessions::MosquittoPersistence);
    }

    fn a_qos2_message_retransmitted_with_dup_is_forwarded_once() {
        let p = Pair::start(&["plugin_opt_publish q/#"], &[]);
        let (far, local) = p.far_and_local("q/#", QoS::ExactlyOnce);

        // PUBREC received, connection lost before PUBREL, sent again with DUP; then something new
        // after it, identical content included, which is forwarded.
        publish_qos2_retransmitted_with_dup(p.a.port, "dup-pub");

        let far_got = receive_until(&far, "end", T);
        let local_got = receive_until(&local, "end", T);
        assert_eq!(local_got, vec!["exactly once", "exactly once", "end"], "the broker itself delivers the retransmission once");
        assert_eq!(far_got, local_got, "far away as locally");
        assert!(far.recv(Duration::from_millis(500)).is_none(), "nothing more");
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sessions {
    Clean,
    Persistent,
    MosquittoPersistence,
}

/// B is killed (-9) while subscribed, A publishes while it is down, B restarts and its client comes
/// back as a real client would: a clean one subscribes again, a persistent one subscribes again when
/// the broker lost its session and not when the broker restored it.
fn killed_and_restarted(kind: Sessions) {
    let node = DevNode::start();
    let dir = workdir();
    let d = dir.path();
    let persistence = kind == Sessions::MosquittoPersistence;
    let (a, b, b_conf) = sender_and_receiver(&node, d, "k/#", persistence);
    let clean = kind == Sessions::Clean;
    let sub = Mqtt::connect(b.port, "receiver", clean);
    assert!(sub.subscribe("k/#", QoS::AtLeastOnce));
    wait_interest(&node, "bob", "k/#");
    let publ = Mqtt::connect(a.port, "pub-a", true);
    const BEFORE: usize = 50;
    const DOWN: usize = 300;
    const AFTER: usize = 50;
    for i in 0..BEFORE {
        publ.publish("k/n", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    let before = receive_until(&sub, &format!("m{}", BEFORE - 1), T);
    assert_eq!(before.len(), BEFORE, "all received before the kill");
    // Let the state file (and Mosquitto's autosave) catch up, as they would in a running system.
    std::thread::sleep(Duration::from_millis(2500));
    let port = b.port;
    let log_before = b.log_text().len();
    drop(b); // SIGKILL
    drop(sub);
    for i in BEFORE..BEFORE + DOWN {
        publ.publish("k/n", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    wait_posted(&node, "alice", &format!("m{}", BEFORE + DOWN - 1));
    let b = Broker::start_on(d, "b", &b_conf, port);
    b.wait_ready();
    // Before any client is back, the interest they may come back with is advertised.
    let advertised = first_profile_after(&b, log_before);
    assert!(
        advertised.contains("\"k/#\""),
        "{kind:?}: advertised at once: {advertised}"
    );
    let (payloads, messages) = std::sync::mpsc::channel();
    let sub = Resuming::connect(b.port, "receiver", clean, &payloads);
    sub.resubscribe("k/#", QoS::AtLeastOnce);
    let total = BEFORE + DOWN + AFTER;
    for i in BEFORE + DOWN..total {
        publ.publish("k/n", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    let got = receive_from(
        |t| messages.recv_timeout(t).ok().map(String::into_bytes),
        &format!("m{}", total - 1),
        Duration::from_secs(40),
    );
    let mut counts = vec![0usize; total];
    for g in &got {
        if let Some(n) = g
            .strip_prefix('m')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < total)
        {
            counts[n] += 1;
        }
    }
    let missing: Vec<usize> = (BEFORE..total).filter(|n| counts[*n] == 0).collect();
    let duplicates: usize = counts.iter().map(|c| c.saturating_sub(1)).sum();
    let replayed = (0..BEFORE).filter(|n| counts[*n] > 0).count();
    eprintln!(
        "{kind:?} on {:?} (session present: {}): received {} after the restart, {} missing, {duplicates} duplicates, {replayed} from before the kill again",
        broker_version(),
        sub.session_present,
        got.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{kind:?}: {} of {} messages published while B was down or after missing: {:?}...\nB's log:\n{}",
        missing.len(),
        DOWN + AFTER,
        &missing[..missing.len().min(20)],
        b.log_text()
    );
}
