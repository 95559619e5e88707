//! Receipts and retransmission (issue 11): a receiver acknowledges QoS 1/2 messages in its DHT
//! resource, the sender resends what is not acknowledged in time. A DM twisterd dropped because the
//! recipient did not follow the sender yet arrives once the recipient follows; a message no receiver
//! acknowledged survives a crash of the sender in its spool; a receiving broker down for a while gets
//! every QoS 1 message once, also when it lost its state file.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use std::time::Duration;

/// Generous: these tests run on a loaded 2-core machine, next to others.
const T: Duration = Duration::from_secs(60);

/// Receipts fast for tests: first resend after 1 s, receipts written and read every 200 ms.
const FAST_RECEIPTS: [&str; 2] = [
    "plugin_opt_receipt_timeout_ms 1000",
    "plugin_opt_receipt_interval_ms 200",
];

/// What the sender says when nothing waits for a receipt any more after a resend.
const ALL_ACKNOWLEDGED: &str = "every message acknowledged again";

/// The sender's receipts line, said when it stops.
fn receipts_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("receipts: kept"))
        .unwrap_or_else(|| panic!("no receipts line in the log:\n{log}"))
        .to_string()
}

/// The number after `key` in `line`.
fn number_after(line: &str, key: &str) -> u64 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line}"))
        + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number after {key:?} in {line}"))
}

fn dms_dropped_not_following(node: &DevNode) -> u64 {
    node.ok("devnode_stats", serde_json::json!([]))["counters"]["dms_dropped_not_following"]
        .as_u64()
        .unwrap_or(0)
}

/// Every payload `sub` receives within `quiet` of the one before, until `last` arrived and then
/// `quiet` passed without anything more.
fn receive_all(sub: &Mqtt, last: &str, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let mut seen_last = false;
    loop {
        let wait = if seen_last { quiet } else { T };
        match sub.recv(wait) {
            Some(m) => {
                let text = String::from_utf8_lossy(&m.payload).to_string();
                seen_last |= text == last;
                got.push(text);
            }
            None if seen_last => return got,
            None => panic!("timed out waiting for {last}; got {} messages", got.len()),
        }
    }
}

/// How many of `m0..m{total}` arrived, missing ones, and copies beyond the first.
fn tally(got: &[String], total: usize) -> (usize, Vec<usize>, usize) {
    let mut counts = vec![0usize; total];
    for g in got {
        if let Some(n) = g
            .strip_prefix('m')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < total)
        {
            counts[n] += 1;
        }
    }
    let missing: Vec<usize> = (0..total).filter(|n| counts[*n] == 0).collect();
    let twice = counts.iter().map(|c| c.saturating_sub(1)).sum();
    (total - missing.len(), missing, twice)
}

on_both_brokers! {
    fn a_dm_twisterd_dropped_because_the_recipient_did_not_follow_yet_is_sent_again_and_arrives_once() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let mut a_lines = vec!["plugin_opt_private p/# bob"];
        a_lines.extend(FAST_RECEIPTS);
        let mut a = Broker::start(d, "a", &plugin_conf(&node, d, "alice", &a_lines));
        // bob wants p/# but does not follow alice yet: twisterd drops her DMs to him.
        let b_conf = plugin_conf(&node, d, "bob", &["plugin_opt_subscribe p/#"]);
        let mut b = Broker::start(d, "b", &b_conf);
        a.wait_ready();
        b.wait_ready();
        wait_interest(&node, "bob", "p/#");
        a.wait_log("interest of recipient bob: [\"p/#\"]", T);
        let publ = Mqtt::connect(a.port, "pub", true);
        publ.publish("p/x", b"dropped once", QoS::AtLeastOnce, false);
        wait_for(T, "twisterd to drop alice's DM to bob", || {
            (dms_dropped_not_following(&node) >= 1).then_some(())
        });
        // bob comes back following alice; his subscriber is there before anything is resent to it.
        b.stop();
        let b_conf = plugin_conf(
            &node,
            d,
            "bob",
            &["plugin_opt_subscribe p/#", "plugin_opt_follow alice"],
        );
        let b = Broker::start_on(d, "b", &b_conf, b.port);
        b.wait_ready();
        let sub = Mqtt::connect(b.port, "sub", true);
        assert!(sub.subscribe("p/#", QoS::AtLeastOnce));
        let got = receive_all(&sub, "dropped once", Duration::from_secs(3));
        assert_eq!(got, ["dropped once"], "the resent DM arrives, once");
        // alice saw bob's receipt: nothing waits any more, and it was resent to get there.
        a.wait_log(ALL_ACKNOWLEDGED, T);
        a.stop();
        let line = receipts_line(&a.log_text());
        assert_eq!(number_after(&line, "acknowledged "), 1, "{line}");
        assert_eq!(number_after(&line, "still unacknowledged "), 0, "{line}");
        assert!(number_after(&line, "resent ") >= 1, "{line}");
        assert!(sub.recv(Duration::from_millis(500)).is_none(), "nothing more");
    }

    fn a_qos1_message_no_receiver_acknowledged_survives_a_crash_of_the_sender_in_its_spool() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        // bob's interest is in his profile; then he is away, and forgets where he read alice.
        let b_conf = plugin_conf(
            &node,
            d,
            "bob",
            &["plugin_opt_follow alice", "plugin_opt_subscribe k/#"],
        );
        let mut b = Broker::start(d, "b", &b_conf);
        b.wait_ready();
        wait_interest(&node, "bob", "k/#");
        b.stop();
        std::fs::remove_file(d.join("bob.state")).unwrap();
        // alice spools, releases a record 100 ms after its post is confirmed unless it waits for a
        // receipt, and resends only after a minute (none in this test).
        let spool = format!("plugin_opt_spool_dir {}/spool-a", d.display());
        let a_lines = [
            "plugin_opt_publish k/#",
            "plugin_opt_receivers bob",
            "plugin_opt_release_hold_ms 100",
            "plugin_opt_receipt_timeout_ms 60000",
            spool.as_str(),
        ];
        let a_conf = plugin_conf(&node, d, "alice", &a_lines);
        let a = Broker::start(d, "a", &a_conf);
        a.wait_ready();
        a.wait_log("interest of recipient bob: [\"k/#\"]", T);
        let publ = Mqtt::connect(a.port, "pub", true);
        publ.publish("k/1", b"kept for bob", QoS::AtLeastOnce, false);
        wait_for(T, "alice's post of the message", || {
            readable_posts(&node, "alice", 50)
                .iter()
                .any(|p| p.contains("kept for bob"))
                .then_some(())
        });
        // Confirmed, held 100 ms, and the spool's mark written (once a second) meanwhile.
        std::thread::sleep(Duration::from_secs(3));
        let port = a.port;
        drop(publ);
        drop(a); // SIGKILL
        // bob comes back reading alice from her newest post on: only a replay can bring it now.
        let b = Broker::start_on(d, "b", &b_conf, b.port);
        b.wait_ready();
        let sub = Mqtt::connect(b.port, "sub", true);
        assert!(sub.subscribe("k/#", QoS::AtLeastOnce));
        wait_for(T, "bob's read position in his state file", || {
            d.join("bob.state").exists().then_some(())
        });
        let a = Broker::start_on(d, "a", &a_conf, port);
        a.wait_ready();
        let got = receive_all(&sub, "kept for bob", Duration::from_secs(2));
        assert_eq!(got, ["kept for bob"], "replayed from the spool, once");
        drop(a);
    }


    fn messages_kept_for_receipts_survive_a_restart_of_the_senders_worker() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let mut a_lines = vec!["plugin_opt_private p/# bob", "plugin_opt_follow bob"];
        a_lines.extend(FAST_RECEIPTS);
        let mut a = Broker::start(d, "a", &plugin_conf(&node, d, "alice", &a_lines));
        // bob does not follow alice yet: her DM is dropped; he can make her worker panic (debug
        // builds: a message on mqtt-twister/test/panic).
        let b_lines = ["plugin_opt_subscribe p/#", "plugin_opt_publish mqtt-twister/test/#"];
        let mut b = Broker::start(d, "b", &plugin_conf(&node, d, "bob", &b_lines));
        a.wait_ready();
        b.wait_ready();
        a.wait_log("interest of recipient bob: [\"p/#\"]", T);
        let publ = Mqtt::connect(a.port, "pub", true);
        publ.publish("p/x", b"kept across a restart", QoS::AtLeastOnce, false);
        wait_for(T, "twisterd to drop alice's DM to bob", || {
            (dms_dropped_not_following(&node) >= 1).then_some(())
        });
        let panicker = Mqtt::connect(b.port, "panicker", true);
        panicker.publish("mqtt-twister/test/panic", b"worker", QoS::AtLeastOnce, false);
        a.wait_log("internal error in the worker", T);
        b.stop();
        let mut b_lines = b_lines.to_vec();
        b_lines.push("plugin_opt_follow alice");
        let b = Broker::start_on(d, "b", &plugin_conf(&node, d, "bob", &b_lines), b.port);
        b.wait_ready();
        let sub = Mqtt::connect(b.port, "sub", true);
        assert!(sub.subscribe("p/#", QoS::AtLeastOnce));
        // The restarted worker still keeps the message and resends it.
        let got = receive_all(&sub, "kept across a restart", Duration::from_secs(3));
        assert_eq!(got, ["kept across a restart"]);
        a.wait_log(ALL_ACKNOWLEDGED, T);
        a.stop();
    }

    fn an_unacknowledged_message_is_given_up_after_the_operators_time_and_said_per_receiver() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let mut a = Broker::start(
            d,
            "a",
            &plugin_conf(
                &node,
                d,
                "alice",
                &[
                    "plugin_opt_private p/# bob",
                    "plugin_opt_receipt_timeout_ms 500",
                    "plugin_opt_receipt_interval_ms 200",
                    "plugin_opt_receipt_give_up_ms 4000",
                ],
            ),
        );
        // bob wants p/# but never follows alice: her DMs never reach him, he never acknowledges.
        let b = Broker::start(d, "b", &plugin_conf(&node, d, "bob", &["plugin_opt_subscribe p/#"]));
        a.wait_ready();
        b.wait_ready();
        a.wait_log("interest of recipient bob: [\"p/#\"]", T);
        let publ = Mqtt::connect(a.port, "pub", true);
        publ.publish("p/x", b"never acknowledged", QoS::AtLeastOnce, false);
        a.wait_log("unacknowledged by bob: 1 messages", T);
        a.wait_log("gave up waiting for bob to acknowledge 1 messages", T);
        a.stop();
        let line = receipts_line(&a.log_text());
        assert_eq!(number_after(&line, "gave up "), 1, "{line}");
        assert_eq!(number_after(&line, "acknowledged "), 0, "{line}");
        assert_eq!(number_after(&line, "still unacknowledged "), 0, "{line}");
        assert!(number_after(&line, "resent ") >= 1, "{line}");
    }

    fn every_qos1_message_reaches_a_receiving_broker_that_was_down_once() {
        down_and_back(false);
    }

    fn every_qos1_message_reaches_a_receiving_broker_that_lost_its_state_once() {
        down_and_back(true);
    }
}

/// B is killed (-9) while A publishes QoS 1; it comes back after a while (`lose_state`: without its
/// state file, so it reads alice from her newest post on and only receipts bring the rest).
fn down_and_back(lose_state: bool) {
    let node = DevNode::start();
    let dir = workdir();
    let d = dir.path();
    let mut a_lines = vec![
        "plugin_opt_publish k/#",
        "plugin_opt_follow bob",
        "plugin_opt_receivers bob",
    ];
    a_lines.extend(FAST_RECEIPTS);
    let mut a = Broker::start(d, "a", &plugin_conf(&node, d, "alice", &a_lines));
    let b_conf = plugin_conf(
        &node,
        d,
        "bob",
        &["plugin_opt_follow alice", "plugin_opt_subscribe k/#"],
    );
    let b = Broker::start(d, "b", &b_conf);
    a.wait_ready();
    b.wait_ready();
    wait_interest(&node, "bob", "k/#");
    a.wait_log("interest of recipient bob: [\"k/#\"]", T);
    let sub = Mqtt::connect(b.port, "receiver", true);
    assert!(sub.subscribe("k/#", QoS::AtLeastOnce));
    let publ = Mqtt::connect(a.port, "pub", true);
    const BEFORE: usize = 50;
    const DOWN: usize = 200;
    const AFTER: usize = 50;
    const TOTAL: usize = BEFORE + DOWN + AFTER;
    for i in 0..BEFORE {
        publ.publish("k/n", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    let before = receive_all(
        &sub,
        &format!("m{}", BEFORE - 1),
        Duration::from_millis(500),
    );
    assert_eq!(tally(&before, BEFORE).0, BEFORE);
    // Let the state file catch up (saved every second), as in a running system.
    std::thread::sleep(Duration::from_millis(2500));
    let port = b.port;
    drop(sub);
    drop(b); // SIGKILL
    for i in BEFORE..BEFORE + DOWN {
        publ.publish("k/n", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    // Down a while: alice resends meanwhile, unanswered.
    a.wait_log("unacknowledged by bob: ", T);
    if lose_state {
        std::fs::remove_file(d.join("bob.state")).unwrap();
    }
    let b = Broker::start_on(d, "b", &b_conf, port);
    b.wait_ready();
    let sub = Mqtt::connect(b.port, "receiver", true);
    assert!(sub.subscribe("k/#", QoS::AtLeastOnce));
    for i in BEFORE + DOWN..TOTAL {
        publ.publish("k/n", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    // Every message since the kill, then alice's last receipt read, then any late copies.
    let mut got = Vec::new();
    wait_for(T * 2, "every message since the kill at B", || {
        while let Some(m) = sub.recv(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(&m.payload).to_string());
        }
        let (_, missing, _) = tally(&got, TOTAL);
        missing.iter().all(|n| *n < BEFORE).then_some(())
    });
    a.wait_log(ALL_ACKNOWLEDGED, T);
    got.extend(receive_rest(&sub, Duration::from_secs(2)));
    let (_, missing, twice) = tally(&got, TOTAL);
    let missing_after_kill: Vec<usize> = missing.into_iter().filter(|n| *n >= BEFORE).collect();
    assert!(
        missing_after_kill.is_empty(),
        "missing {missing_after_kill:?}"
    );
    assert_eq!(twice, 0, "no message twice");
    a.stop();
    let line = receipts_line(&a.log_text());
    assert_eq!(number_after(&line, "kept "), TOTAL as u64, "{line}");
    assert_eq!(number_after(&line, "still unacknowledged "), 0, "{line}");
    assert!(number_after(&line, "resent ") >= 1, "{line}");
}

fn receive_rest(sub: &Mqtt, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(m) = sub.recv(quiet) {
        got.push(String::from_utf8_lossy(&m.payload).to_string());
    }
    got
}
