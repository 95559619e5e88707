//! The receiving side, exactly once across a kill -9 between the state save and the injection
//! (`plugin/src/injected`): the receiver writes its read cursor before its broker's thread injects
//! what it read, at a later TICK. The debug builds' slow-injection hook
//! (`plugin::TEST_SLOW_INJECT_TOPIC`: one message per second) keeps a whole post's messages waiting
//! for TICK for seconds; the receiving broker is killed -9 in the middle. The messages the broker
//! had not taken are not seen as seen nor acknowledged, so the sender's retransmissions deliver them;
//! those it had taken are in the injection log and are not delivered again.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use std::time::Duration;

/// Generous: these tests run on a loaded 2-core machine, next to others.
const T: Duration = Duration::from_secs(60);
/// Topics under the debug builds' slow-injection hook.
const SLOW: &str = "mqtt-twister/test/slow-inject/";
/// What the sender says when nothing waits for a receipt any more after a resend.
const ALL_ACKNOWLEDGED: &str = "every message acknowledged again";

/// How many of `m0..m{total}` arrived, the missing ones, and copies beyond the first.
fn tally(got: &[String], total: usize) -> (Vec<usize>, usize) {
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
    let missing = (0..total).filter(|n| counts[*n] == 0).collect();
    (missing, counts.iter().map(|c| c.saturating_sub(1)).sum())
}

fn drain(sub: &Mqtt, got: &mut Vec<String>, wait: Duration) {
    while let Some(m) = sub.recv(wait) {
        got.push(String::from_utf8_lossy(&m.payload).to_string());
    }
}

on_both_brokers! {
    fn a_receiving_broker_killed_while_received_messages_wait_for_tick_loses_and_duplicates_none() {
        let node = DevNode::start();
        let dir = workdir();
        let d = dir.path();
        let filter = format!("{SLOW}#");
        let publish = format!("plugin_opt_publish {filter}");
        let a_conf = plugin_conf(
            &node,
            d,
            "alice",
            &[
                &publish,
                "plugin_opt_follow bob",
                "plugin_opt_receivers bob",
                // No resend before the kill, nor before the subscriber is back on B.
                "plugin_opt_receipt_timeout_ms 8000",
                "plugin_opt_receipt_interval_ms 200",
            ],
        );
        let a = Broker::start(d, "a", &a_conf);
        let subscribe = format!("plugin_opt_subscribe {filter}");
        let b_conf = plugin_conf(&node, d, "bob", &["plugin_opt_follow alice", &subscribe]);
        let b = Broker::start(d, "b", &b_conf);
        a.wait_ready();
        b.wait_ready();
        wait_interest(&node, "bob", &filter);
        a.wait_log(&format!("interest of recipient bob: [\"{filter}\"]"), T);
        let sub = Mqtt::connect(b.port, "receiver", true);
        assert!(sub.subscribe(&filter, QoS::AtLeastOnce));
        let publ = Mqtt::connect(a.port, "pub", true);
        const TOTAL: usize = 12;
        const BEFORE_KILL: usize = 4;
        let topic = format!("{SLOW}n");
        for i in 0..TOTAL {
            publ.publish(&topic, format!("m{i}").as_bytes(), QoS::AtLeastOnce, false);
        }
        // B read them (its state file, with its cursor, is saved before TICK takes them) and TICK
        // injects one per second: kill it after a few.
        let mut got = Vec::new();
        while got.len() < BEFORE_KILL {
            let m = sub.recv(T).expect("the first messages at B");
            got.push(String::from_utf8_lossy(&m.payload).to_string());
        }
        let port = b.port;
        drop(b); // SIGKILL, between two injections
        drop(sub);
        let injected_before = got.len();
        assert!(
            injected_before < TOTAL,
            "killed after every message arrived: the window was not open"
        );
        let b = Broker::start_on(d, "b", &b_conf, port);
        b.wait_ready();
        // Another client and filter: a returning subscription of the last run would be given again
        // what was injected before it came back (`relay/hold/returning.rs`: duplicates rather than
        // loss), which is not what this test is about.
        let sub = Mqtt::connect(b.port, "receiver-2", true);
        assert!(sub.subscribe(&topic, QoS::AtLeastOnce));
        // The rest comes by alice's retransmissions (B's cursor is past the post), until every one
        // arrived or alice has every receipt (then nothing more comes: what is missing is lost).
        let said_before = a.log_text().len();
        let acknowledged = || a.log_text()[said_before..].contains(ALL_ACKNOWLEDGED);
        wait_for(T * 2, "every message at B, or alice's last receipt", || {
            drain(&sub, &mut got, Duration::from_millis(200));
            (tally(&got, TOTAL).0.is_empty() || acknowledged()).then_some(())
        });
        wait_for(T, "alice's last receipt", || acknowledged().then_some(()));
        drain(&sub, &mut got, Duration::from_secs(2));
        let (missing, twice) = tally(&got, TOTAL);
        assert!(
            missing.is_empty(),
            "killed after {injected_before}: {} lost: {missing:?}",
            missing.len()
        );
        assert_eq!(
            twice,
            0,
            "no message twice: {got:?}\nB's log:\n{}\nA's log:\n{}",
            b.log_text(),
            a.log_text()
        );
        eprintln!(
            "killed after {injected_before} of {TOTAL}; every message once ({} received)",
            got.len()
        );
    }
}
