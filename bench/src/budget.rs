//! P6 throughput under the real post budget: messages per hour one Twister user sustains when a block
//! comes every 10 minutes (twisterd then allows 2 posts a block, 12 an hour), with blocks mined on
//! demand and time scaled (a block every BLOCK_EVERY of real time stands for 10 minutes). The sender
//! has a backlog of realistic telemetry (P4's corpus) far beyond its budget, so every post it may make
//! is made: after its first 20-odd posts are spent, what arrives at the receiver per block is what the
//! budget sustains. Compared with the physical limit (12 posts x a post's text, uncompressed) and with
//! one message per post (12 an hour, what the 2014 bridge carried).

use super::*;

/// One block per simulated 10 minutes.
const BLOCK_EVERY: Duration = Duration::from_secs(3);
/// Simulated hours measured once the initial budget is spent.
const HOURS: usize = 2;
const POSTS_PER_HOUR: f64 = 12.0;

fn lasthave(node: &DevNode, user: &str) -> i64 {
    node.ok("getlasthave", json!([user, [user]]))[user]
        .as_i64()
        .unwrap_or(-1)
}

/// Receives until nothing came for `quiet`; returns (messages, payload bytes).
fn drain(sub: &Mqtt, quiet: Duration) -> (usize, usize) {
    let (mut n, mut bytes) = (0, 0);
    while let Some(m) = sub.recv(quiet) {
        n += 1;
        bytes += m.payload.len();
    }
    (n, bytes)
}

pub fn p6(report: &mut Report) {
    let node = DevNode::start_with(&["-blockinterval=0", "-flushms=1000"], 0);
    let (a_user, b_user) = ("sender", "receiver");
    for u in [a_user, b_user] {
        node.ok("createwalletuser", json!([u]));
        node.ok("sendnewusertransaction", json!([u]));
    }
    node.ok("devnode_mine", json!([2]));
    let dir = workdir();
    let start = |name: &str, user: &str, lines: &[&str]| {
        let mut all = vec![bench_conf().trim_end(), "plugin_opt_max_queue 10000000"];
        all.extend_from_slice(lines);
        let b = Broker::start(
            dir.path(),
            name,
            &plugin_conf(&node, dir.path(), user, &all),
        );
        b.wait_ready();
        b
    };
    let a = start(
        "p6-a",
        a_user,
        &["plugin_opt_publish campus/#", "plugin_opt_follow receiver"],
    );
    let b = start(
        "p6-b",
        b_user,
        &["plugin_opt_subscribe campus/#", "plugin_opt_follow sender"],
    );
    wait_interest(&node, b_user, "campus/#");
    let sub = Mqtt::connect(b.port, "p6-sub", true);
    assert!(sub.subscribe("campus/#", QoS::AtLeastOnce));
    let publ = Mqtt::connect(a.port, "p6-pub", true);
    let corpus = density::telemetry(20_000);
    for (topic, payload) in &corpus {
        publ.publish(topic, payload, QoS::AtLeastOnce, false);
    }
    // The initial budget (23 posts) is spent at once on the backlog; then blocks rebuild the
    // reserve (4 posts) before the next post: measured from the first post after that.
    a.wait_log("out of post budget", Duration::from_secs(120));
    let (mut initial, _) = drain(&sub, Duration::from_secs(3));
    let spent = lasthave(&node, a_user);
    let mut warmup = 0;
    while lasthave(&node, a_user) == spent && warmup < 20 {
        node.ok("devnode_mine", json!([1]));
        warmup += 1;
        initial += drain(&sub, BLOCK_EVERY).0;
    }
    initial += drain(&sub, Duration::from_secs(3)).0;
    let k0 = lasthave(&node, a_user);
    let blocks = HOURS * 6;
    let (mut msgs, mut bytes) = (0, 0);
    for _ in 0..blocks {
        let before = lasthave(&node, a_user);
        node.ok("devnode_mine", json!([1]));
        let mined = Instant::now();
        // Both posts the block allows (or a while, on a very loaded machine).
        while lasthave(&node, a_user) < before + 2 && mined.elapsed() < Duration::from_secs(30) {
            let (n, by) = drain(&sub, Duration::from_millis(100));
            msgs += n;
            bytes += by;
        }
        while mined.elapsed() < BLOCK_EVERY {
            let (n, by) = drain(&sub, Duration::from_millis(100));
            msgs += n;
            bytes += by;
        }
    }
    let (n, by) = drain(&sub, Duration::from_secs(3));
    msgs += n;
    bytes += by;
    let posts = lasthave(&node, a_user) - k0;
    let refused = node.ok("devnode_stats", json!([]))["counters"]["posts_refused_budget"]
        .as_i64()
        .unwrap_or(-1);
    println!(
        "P6   initial budget and {warmup} blocks rebuilding the reserve carried {initial} messages; then {blocks} blocks: {posts} posts, {msgs} messages, {bytes} payload bytes; posts refused {refused}"
    );
    let per_hour = msgs as f64 / HOURS as f64;
    let bytes_per_hour = bytes as f64 / HOURS as f64;
    let m = report.figure("P6", "messages per hour, telemetry", "msg/h", &[per_hour]);
    report.figure(
        "P6",
        "posts per hour",
        "posts",
        &[posts as f64 / HOURS as f64],
    );
    report.figure("P6", "payload bytes per hour", "bytes", &[bytes_per_hour]);
    report.ratio(
        "P6 payload bytes per hour / physical limit (12 posts x 1,873 bytes)",
        bytes_per_hour / (POSTS_PER_HOUR * density::CAPACITY),
        "report",
    );
    report.ratio(
        "P6 messages per hour / one message per post (12)",
        m / POSTS_PER_HOUR,
        "report",
    );
}
