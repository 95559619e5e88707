//! The post budget spent as a budget (issue 10), against the dev node with blocks only on demand:
//! a burst far beyond the budget delivered whole once blocks come, with no post refused beyond the one
//! that teaches the registration height; and a steady 2 msg/s for a simulated hour at the real cadence
//! (one block per simulated 10 minutes, time scaled 60x) within the budget, queued or conflated.

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The registration block of alice and bob (the chain starts at 0).
const REGISTERED: i64 = 1;

/// A dev node mining only when asked, alice and bob registered at height 1 and able to post (height
/// 2: 23 posts, k 0..=22), and the pair of brokers on it.
fn pair_on_demand(a_extra: &[&str], b_extra: &[&str]) -> Pair {
    let node = DevNode::start_with(&["-blockinterval=0"], 0);
    for u in ["alice", "bob"] {
        node.ok("createwalletuser", json!([u]));
        node.ok("sendnewusertransaction", json!([u]));
    }
    node.ok("devnode_mine", json!([2]));
    assert_eq!(height(&node), REGISTERED + 1);
    Pair::start_with(node, a_extra, b_extra)
}

fn height(node: &DevNode) -> i64 {
    node.ok("getblockcount", json!([])).as_i64().unwrap()
}

fn refused_for_budget(node: &DevNode) -> i64 {
    node.ok("devnode_stats", json!([]))["counters"]["posts_refused_budget"]
        .as_i64()
        .unwrap()
}

/// Posts alice used (her last k + 1), as twisterd counts them.
fn posts_used(node: &DevNode) -> i64 {
    let last: Value = node.ok("getlasthave", json!(["bob", ["alice"]]));
    last["alice"].as_i64().unwrap_or(-1) + 1
}

/// twisterd's rule: k <= 2 * (height - registration) + 20, numbers from 0.
fn budget_at(height: i64) -> i64 {
    2 * (height - REGISTERED) + 20 + 1
}

/// Hands each message received to `got` until it says it has all, mining a block whenever nothing
/// arrived for a while (at most `max_blocks`): blocks come while the sender waits for them.
fn receive_with_blocks(
    p: &Pair,
    sub: &Mqtt,
    max_blocks: usize,
    mut got: impl FnMut(Received) -> bool,
) -> usize {
    let mut mined = 0;
    loop {
        match sub.recv(Duration::from_millis(500)) {
            Some(m) => {
                if got(m) {
                    return mined;
                }
            }
            None => {
                assert!(mined < max_blocks, "not done after {mined} blocks");
                p.node.ok("devnode_mine", json!([1]));
                mined += 1;
            }
        }
    }
}

on_both_brokers! {
    /// 10,000 QoS 1 messages at once, about three times what 23 posts carry: the plugin fills posts,
    /// keeps its reserve, waits for blocks, and delivers every message once and in order, with no
    /// post refused but the one that teaches it the registration height.
    fn a_burst_far_beyond_the_budget_is_delivered_whole_once_blocks_come() {
        let p = pair_on_demand(
            &["plugin_opt_publish burst/#", "plugin_opt_max_queue 20000"],
            &["plugin_opt_subscribe burst/#", "max_queued_messages 0"],
        );
        wait_interest(&p.node, "bob", "burst/#");
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("burst/#", QoS::AtLeastOnce));
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        let n = 10_000;
        for i in 0..n {
            // Readings of a few sensors with an id that does not compress: more posts than the
            // budget holds.
            let id = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
            let payload = format!("{{\"seq\":{i},\"id\":\"{id:08x}\"}}");
            publ.publish(&format!("burst/sensor{}", i % 8), payload.as_bytes(), QoS::AtLeastOnce, false);
        }
        let mut seqs: Vec<usize> = Vec::with_capacity(n);
        let blocks = receive_with_blocks(
            &p,
            &sub,
            400,
            |m| {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                seqs.push(v["seq"].as_u64().unwrap() as usize);
                seqs.len() >= n
            },
        );
        // Nothing more comes.
        assert!(sub.recv(Duration::from_secs(2)).is_none(), "a message twice");
        assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "every message once, in order");
        let used = posts_used(&p.node);
        let h = height(&p.node);
        let refused = refused_for_budget(&p.node);
        // The largest batch: messages in the fullest post (each decoded message is one line).
        let largest = readable_posts(&p.node, "alice", used as usize + 1)
            .iter()
            .map(|post| post.lines().count())
            .max()
            .unwrap_or(0);
        eprintln!(
            "{n} messages in {used} posts, {blocks} blocks mined, {} per post, largest batch {largest}, {refused} refused",
            n as i64 / used
        );
        assert!(largest > 1 && largest <= 512, "largest batch {largest}");
        assert!(used > budget_at(REGISTERED + 1), "the budget was short: {used} posts");
        assert!(blocks > 0);
        assert!(used <= budget_at(h));
        assert!(refused <= 1, "{refused} posts refused: at most the one that teaches the registration");
        let log = p.a.log_text();
        assert!(log.contains("out of post budget: 0 posts left"), "said in the log");
        assert!(log.contains("next post allowed at height"));
        assert!(!log.contains("queue full"), "nothing dropped");
    }

    /// 2 msg/s for a simulated hour (7,200 QoS 1 messages, 60x faster, a block per simulated 10
    /// minutes): posts stay within the budget, and everything is delivered in order (the backlog
    /// once blocks come after the hour).
    fn a_steady_2_msg_per_s_for_an_hour_stays_within_the_budget() {
        let p = pair_on_demand(
            &["plugin_opt_publish tele/#"],
            &["plugin_opt_subscribe tele/#", "max_queued_messages 0"],
        );
        wait_interest(&p.node, "bob", "tele/#");
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("tele/#", QoS::AtLeastOnce));
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        let sent = simulated_hour(&p, &publ, QoS::AtLeastOnce);
        let mut got: Vec<(String, String)> = Vec::new();
        receive_with_blocks(
            &p,
            &sub,
            300,
            |m| {
                got.push((m.topic, String::from_utf8(m.payload).unwrap()));
                got.len() >= sent.len()
            },
        );
        assert!(sub.recv(Duration::from_secs(2)).is_none(), "a message twice");
        assert_eq!(got, sent, "every message once, in order");
        let refused = refused_for_budget(&p.node);
        assert!(refused <= 1, "{refused} posts refused");
    }

    /// The same hour of QoS 0 telemetry with `plugin_opt_over_budget tele/# conflate`: within the
    /// budget, and the newest value of every topic arrives.
    fn conflated_telemetry_delivers_the_newest_value_of_each_topic_within_the_budget() {
        let p = pair_on_demand(
            &["plugin_opt_publish tele/#", "plugin_opt_over_budget tele/# conflate"],
            &["plugin_opt_subscribe tele/#", "max_queued_messages 0"],
        );
        wait_interest(&p.node, "bob", "tele/#");
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("tele/#", QoS::AtMostOnce));
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        let sent = simulated_hour(&p, &publ, QoS::AtMostOnce);
        let newest: BTreeMap<String, String> = sent.iter().cloned().collect();
        let mut latest: BTreeMap<String, String> = BTreeMap::new();
        let mut received = 0;
        receive_with_blocks(
            &p,
            &sub,
            300,
            |m| {
                received += 1;
                latest.insert(m.topic, String::from_utf8(m.payload).unwrap());
                latest == newest
            },
        );
        let refused = refused_for_budget(&p.node);
        assert!(refused <= 1, "{refused} posts refused");
        assert!(p.a.log_text().contains("conflated"), "conflation counted in the log");
        eprintln!("conflated: {received} of {} values delivered, the newest of each topic", sent.len());
    }
}

/// Publishes 2 msg/s of a simulated hour on 40 topics, 60x faster than real time, and mines a block
/// every simulated 10 minutes; checks the posts used against the budget at every block. Returns what
/// was sent, in order.
fn simulated_hour(p: &Pair, publ: &Mqtt, qos: QoS) -> Vec<(String, String)> {
    let per_block = 1200; // 10 minutes at 2 msg/s
    let scaled = Duration::from_millis(500) / 60;
    let start = Instant::now();
    let mut sent = Vec::new();
    for i in 0..7200usize {
        let topic = format!("tele/room{}", i % 40);
        let payload = format!("{{\"t\":{},\"v\":{}}}", 1_700_000_000 + i / 2, 200 + i % 37);
        publ.publish(&topic, payload.as_bytes(), qos, false);
        sent.push((topic, payload));
        if i % per_block == per_block - 1 {
            let used = posts_used(&p.node);
            let h = height(&p.node);
            assert!(used <= budget_at(h), "{used} posts at height {h}");
            p.node.ok("devnode_mine", json!([1]));
        }
        // Pace the input at 60x real time (the plugin measures the block interval it sees).
        if let Some(wait) = (scaled * (i as u32 + 1)).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let used = posts_used(&p.node);
    let h = height(&p.node);
    eprintln!(
        "after the hour: {used} posts used, budget {} at height {h}",
        budget_at(h)
    );
    assert!(used <= budget_at(h));
    sent
}
