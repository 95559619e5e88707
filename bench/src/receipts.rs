//! P8 receipt cost and P9 time to a receipt (issue 11). A sends QoS 1 messages to B, which is its
//! expected receiver (`plugin_opt_receivers`); B acknowledges them in its DHT resource
//! `mqtt_ack_<A>`, A reads it.
//!
//! - P8: posts and DHT writes B spends on receipts per 1,000 QoS 1 messages (at 100 and 10 msg/s). The
//!   writes are the resource's `seq` (each write of a run is the stored seq + 1, from 1); the posts
//!   are B's post count (B posts nothing else).
//! - P9: from A taking a message to A reading B's receipt of it, p50 and p99, at 10 msg/s, as A's
//!   worker measures it (its stop line).

use super::*;

/// Default receipt settings (written and read every second).
fn receipt_pair(ctx: &mut Ctx, name: &str) -> (Broker, Broker, String, String) {
    let (a_user, b_user) = (ctx.user("ka"), ctx.user("kb"));
    let receivers = format!("plugin_opt_receivers {b_user}");
    let poll = "plugin_opt_poll_interval_ms 50";
    relay_pair_of(ctx, name, (a_user, b_user), &[&receivers, poll], &[poll])
}

/// How many seqs a `crate::ranges` text holds (`gap[+extra]` in base 36, comma separated).
fn ranges_count(text: &str) -> u64 {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('+') {
            Some((_, extra)) => u64::from_str_radix(extra, 36).unwrap_or(0) + 1,
            None => 1,
        })
        .sum()
}

/// B's receipts of A's messages as the DHT holds them: acknowledged messages and the write count.
fn acknowledged(node: &DevNode, a_user: &str, b_user: &str) -> (u64, u64) {
    let got = node.ok(
        "dhtget",
        json!([b_user, format!("mqtt_ack_{a_user}"), "s", 1000]),
    );
    let Some(item) = got.as_array().and_then(|a| a.first()) else {
        return (0, 0);
    };
    let acked = item["p"]["v"]["e"]
        .as_array()
        .map(|epochs| {
            epochs
                .iter()
                .map(|e| ranges_count(e[1].as_str().unwrap_or("")))
                .sum()
        })
        .unwrap_or(0);
    (acked, item["p"]["seq"].as_u64().unwrap_or(0))
}

/// Publishes `count` QoS 1 messages at `rate` per second on A, all received on B; returns when B
/// acknowledged them all.
fn send_and_wait(ctx: &Ctx, a: &Broker, b: &Broker, users: (&str, &str), rate: u32, count: usize) {
    let sub = Mqtt::connect(b.port, "receipts-sub", true);
    assert!(sub.subscribe("bench/r", QoS::AtLeastOnce));
    wait_interest(&ctx.node, users.1, "bench/r");
    // Public messages wait for the receivers whose interest A knows: let A read B's first.
    a.wait_log(
        &format!("interest of recipient {}: [\"bench/r\"]", users.1),
        Duration::from_secs(20),
    );
    let publ = Mqtt::connect(a.port, "receipts-pub", true);
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let payload = vec![b'x'; PAYLOAD];
    for i in 0..count {
        if let Some(wait) = (start + gap * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        publ.publish("bench/r", &payload, QoS::AtLeastOnce, false);
    }
    let mut got = 0;
    while got < count {
        sub.expect(Duration::from_secs(30), "a relayed message");
        got += 1;
    }
    wait_for(Duration::from_secs(60), "every receipt", || {
        (acknowledged(&ctx.node, users.0, users.1).0 >= count as u64).then_some(())
    });
}

pub fn p8_p9(ctx: &mut Ctx, args: &Args, report: &mut Report) {
    let mut writes = Vec::new();
    let mut writes_slow = Vec::new();
    let mut posts = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for round in 0..args.rounds.min(2) {
        let (a, b, a_user, b_user) = receipt_pair(ctx, &format!("p8-{round}"));
        send_and_wait(ctx, &a, &b, (&a_user, &b_user), 100, 1000);
        let (_, seq) = acknowledged(&ctx.node, &a_user, &b_user);
        writes.push(seq as f64);
        let lasthave = ctx.node.ok("getlasthave", json!([a_user, [b_user]]));
        posts.push((lasthave[&b_user].as_i64().unwrap_or(-1) + 1) as f64);
        drop((a, b));

        let (mut a, b, a_user, b_user) = receipt_pair(ctx, &format!("p9-{round}"));
        send_and_wait(ctx, &a, &b, (&a_user, &b_user), 10, 300);
        let (_, seq) = acknowledged(&ctx.node, &a_user, &b_user);
        writes_slow.push(seq as f64 * 1000.0 / 300.0);
        // A has read the last receipt once its own summary counts every message acknowledged.
        std::thread::sleep(Duration::from_secs(3));
        let log_from = a.log_text().len();
        a.stop();
        let log = a.log_text()[log_from..].to_string();
        let line = log
            .lines()
            .find(|l| l.contains("receipts: kept"))
            .unwrap_or_else(|| panic!("no receipts line in A's log: {log}"));
        let ms = |key: &str| -> f64 {
            let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
            line[at..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        p50.push(ms("p50 "));
        p99.push(ms("p99 "));
        drop(b);
    }
    let w = report.figure(
        "P8",
        "DHT writes per 1,000 QoS 1 (100/s)",
        "writes",
        &writes,
    );
    let ws = report.figure(
        "P8",
        "DHT writes per 1,000 QoS 1 (10/s)",
        "writes",
        &writes_slow,
    );
    let p = report.figure("P8", "posts per 1,000 QoS 1 (100/s)", "posts", &posts);
    let m50 = report.figure("P9", "publish to receipt at sender p50", "ms", &p50);
    let m99 = report.figure("P9", "publish to receipt at sender p99", "ms", &p99);
    report.ratio("P8 receipt DHT writes per 1,000 QoS 1", w, "report");
    report.ratio(
        "P8 receipt DHT writes per 1,000 QoS 1 at 10 msg/s",
        ws,
        "report",
    );
    report.ratio("P8 receipt posts per 1,000 QoS 1", p, "0");
    report.ratio("P9 time to receipt p50 ms (10 msg/s)", m50, "report");
    report.ratio("P9 time to receipt p99 ms (10 msg/s)", m99, "report");
}
