//! P4 density: MQTT payload bytes one post carries, as a multiple of a post's text capacity (1,873
//! bytes of ASCII for a user of 5 characters, twister-rules' size model), on corpora the benchmark
//! makes itself: telemetry (sensor JSON on 320 topics, not the corpus the dictionary was trained on),
//! random bytes, and 64-byte payloads (messages per post).
//!
//! Two ways: pure packing with the v2 packer, exactly as the plugin packs (with the dictionary, and
//! without it to show what the dictionary adds); and end to end, where a broker with the plugin posts
//! each corpus through the dev node in v1 and in v2, the posts are counted on the node and every
//! message must arrive at a second broker (the dev node accepted them and the reader decoded them).

use super::*;
use mqtt_twister_wire::{pack::pack, Options, Record, Rng};
use twister_rules::{max_post_ascii, PostHeader};

/// Text capacity of a post by a user of 5 characters (the recorded twisterd limit).
pub const CAPACITY: f64 = 1873.0;

/// A building's sensors: 4 floors x 8 zones x 10 kinds = 320 topics, each reporting JSON readings
/// whose values drift a little between reports.
pub fn telemetry(n: usize) -> Vec<(String, Vec<u8>)> {
    const KINDS: [&str; 10] = [
        "air",
        "power",
        "water",
        "door",
        "hvac",
        "light",
        "noise",
        "occupancy",
        "smoke",
        "pump",
    ];
    let mut rng = Rng(4);
    (0..n)
        .map(|i| {
            let floor = rng.below(4);
            let zone = rng.below(8);
            let k = rng.below(10) as usize;
            let topic = format!("campus/bldg-7/floor{floor}/zone{zone}/{}", KINDS[k]);
            let ts = 1_718_000_000_000u64 + i as u64 * 250 + rng.below(200);
            let dev = format!("{}-{floor}{zone}", &KINDS[k][..3]);
            let payload = match k {
                0 => format!(r#"{{"dev":"{dev}","ts":{ts},"co2_ppm":{},"temp_c":{:.2},"rh_pct":{:.1},"voc_ppb":{},"bat_v":{:.2}}}"#, 400 + rng.below(800), 19.0 + rng.below(600) as f64 / 100.0, 30.0 + rng.below(400) as f64 / 10.0, rng.below(500), 2.9 + rng.below(30) as f64 / 100.0),
                1 => format!(r#"{{"dev":"{dev}","ts":{ts},"kw":{:.3},"kwh_total":{:.1},"v":{:.1},"a":{:.2},"pf":{:.2}}}"#, rng.below(50_000) as f64 / 1000.0, 10_000.0 + rng.below(100_000) as f64 / 10.0, 228.0 + rng.below(40) as f64 / 10.0, rng.below(3000) as f64 / 100.0, 0.8 + rng.below(20) as f64 / 100.0),
                2 => format!(r#"{{"dev":"{dev}","ts":{ts},"flow_lpm":{:.2},"pressure_bar":{:.2},"leak":{}}}"#, rng.below(4000) as f64 / 100.0, 2.0 + rng.below(200) as f64 / 100.0, rng.below(50) == 0),
                3 => format!(r#"{{"dev":"{dev}","ts":{ts},"open":{},"tamper":false,"bat_pct":{}}}"#, rng.below(2) == 0, 40 + rng.below(60)),
                4 => format!(r#"{{"dev":"{dev}","ts":{ts},"mode":"{}","setpoint_c":{:.1},"supply_c":{:.1},"return_c":{:.1},"fan_pct":{}}}"#, ["heat", "cool", "auto", "off"][rng.below(4) as usize], 20.0 + rng.below(10) as f64 / 2.0, 14.0 + rng.below(200) as f64 / 10.0, 18.0 + rng.below(100) as f64 / 10.0, rng.below(101)),
                5 => format!(r#"{{"dev":"{dev}","ts":{ts},"on":{},"lux":{},"dim_pct":{}}}"#, rng.below(2) == 0, rng.below(1200), rng.below(101)),
                6 => format!(r#"{{"dev":"{dev}","ts":{ts},"db_avg":{:.1},"db_peak":{:.1}}}"#, 30.0 + rng.below(400) as f64 / 10.0, 50.0 + rng.below(400) as f64 / 10.0),
                7 => format!(r#"{{"dev":"{dev}","ts":{ts},"people":{},"motion":{}}}"#, rng.below(25), rng.below(2) == 0),
                8 => format!(r#"{{"dev":"{dev}","ts":{ts},"smoke":false,"temp_c":{:.1},"self_test":"ok","bat_pct":{}}}"#, 18.0 + rng.below(100) as f64 / 10.0, 50 + rng.below(50)),
                _ => format!(r#"{{"dev":"{dev}","ts":{ts},"rpm":{},"state":"{}","vibration_mm_s":{:.2},"hours":{}}}"#, rng.below(3000), ["running", "idle", "fault"][rng.below(3) as usize], rng.below(1000) as f64 / 100.0, 1000 + rng.below(50_000)),
            };
            (topic, payload.into_bytes())
        })
        .collect()
}

fn random_bytes(n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng(5);
    (0..n)
        .map(|i| {
            let payload = (0..size).map(|_| rng.next() as u8).collect();
            (format!("blob/cam{}/frame", i % 10), payload)
        })
        .collect()
}

/// 64-byte payloads: a JSON reading filled to 64 bytes with a random hex tag (no padding that would
/// compress away).
fn small(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng(6);
    (0..n)
        .map(|i| {
            let mut p = format!(
                r#"{{"id":{},"t":{},"v":{},"tag":""#,
                i % 40,
                1_718_000_000 + i,
                rng.below(10_000)
            );
            while p.len() < 62 {
                p.push(char::from(b"0123456789abcdef"[rng.below(16) as usize]));
            }
            p.push_str("\"}");
            (format!("fleet/unit{}/v", i % 40), p.into_bytes())
        })
        .collect()
}

/// Payload bytes and messages per post when the v2 packer fills posts from `corpus` in order.
fn pure_packing(corpus: &[(String, Vec<u8>)], options: Options) -> (f64, f64) {
    let header = PostHeader {
        user: "bench",
        k: 1000,
        lastk: Some(1000),
        height: 99_999_999,
        time: 9_999_999_999,
        reply: None,
    };
    let budget = max_post_ascii(&header);
    // Every forwarded message carries its id (consecutive within a post, one byte each).
    let records: Vec<Record> = corpus
        .iter()
        .enumerate()
        .map(|(i, (t, p))| Record {
            topic: t.clone(),
            payload: p.clone(),
            qos: 0,
            retain: false,
            fragment: None,
            id: Some(mqtt_twister_wire::MessageId {
                epoch: 1_790_000_000_000,
                seq: i as u64 + 1,
            }),
        })
        .collect();
    let (mut at, mut posts, mut bytes, mut msgs) = (0, 0usize, 0usize, 0usize);
    // Full posts only: the last, partly filled one is not counted.
    while let Some((n, text)) = pack(posts as u64, &records[at..], budget, options) {
        assert!(text.len() <= budget);
        if at + n == records.len() {
            break;
        }
        bytes += records[at..at + n]
            .iter()
            .map(|r| r.payload.len())
            .sum::<usize>();
        msgs += n;
        posts += 1;
        at += n;
    }
    assert!(posts > 0, "the corpus fills at least one post");
    (bytes as f64 / posts as f64, msgs as f64 / posts as f64)
}

/// Payload bytes per post when a broker with the plugin posts `corpus` in `format` through the dev
/// node; every message must reach the other broker.
fn end_to_end(ctx: &mut Ctx, name: &str, format: &str, corpus: &[(String, Vec<u8>)]) -> (f64, f64) {
    let (a_user, b_user) = (ctx.user("da"), ctx.user("db"));
    let wire = format!("plugin_opt_wire_format {format}");
    let a = plugin_broker(
        ctx,
        &format!("{name}-a"),
        &a_user,
        &[
            "plugin_opt_publish p4/#",
            &format!("plugin_opt_follow {b_user}"),
            // Long enough for the whole corpus to be queued before the first post: full posts.
            "plugin_opt_batch_delay_ms 3000",
            "plugin_opt_max_message_bytes 1000000",
            &wire,
        ],
    );
    let b = plugin_broker(
        ctx,
        &format!("{name}-b"),
        &b_user,
        &[
            &format!("plugin_opt_follow {a_user}"),
            "plugin_opt_poll_interval_ms 100",
        ],
    );
    let sub = Mqtt::connect(b.port, "p4-sub", true);
    assert!(sub.subscribe("p4/#", QoS::AtMostOnce));
    wait_interest(&ctx.node, &b_user, "p4/#");
    let last = |node: &DevNode| {
        node.ok("getlasthave", json!([a_user, [a_user]]))[&a_user]
            .as_i64()
            .unwrap_or(-1)
    };
    let before = last(&ctx.node);
    let publ = Mqtt::connect(a.port, "p4-pub", true);
    for (topic, payload) in corpus {
        publ.publish(&format!("p4/{topic}"), payload, QoS::AtLeastOnce, false);
    }
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while got < corpus.len() && Instant::now() < deadline {
        if let Some(m) = sub.recv(Duration::from_millis(500)) {
            assert_eq!(
                m.payload, corpus[got].1,
                "{name}: message {got} arrives intact, in order"
            );
            got += 1;
        }
    }
    assert_eq!(got, corpus.len(), "{name}: every message crossed");
    let posts = (last(&ctx.node) - before) as f64;
    let bytes: usize = corpus.iter().map(|(_, p)| p.len()).sum();
    drop((a, b));
    (bytes as f64 / posts, corpus.len() as f64 / posts)
}

pub fn p4(ctx: &mut Ctx, report: &mut Report) {
    let corpora = [
        ("telemetry", telemetry(6000)),
        ("random 256 B", random_bytes(600, 256)),
        ("64 B payloads", small(3000)),
    ];
    for (name, corpus) in [
        ("random 1 KiB", random_bytes(300, 1024)),
        ("random 64 B", random_bytes(3000, 64)),
    ] {
        let (bytes, msgs) = pure_packing(&corpus, Options::default());
        report.figure(
            "P4",
            &format!("v2 packing, {name}"),
            "x cap",
            &[bytes / CAPACITY],
        );
        report.figure(
            "P4",
            &format!("v2 packing, {name} msgs/post"),
            "msgs",
            &[msgs],
        );
    }
    for (name, corpus) in &corpora {
        let (dict_bytes, dict_msgs) = pure_packing(corpus, Options::default());
        let (plain_bytes, _) = pure_packing(
            corpus,
            Options {
                dictionary: false,
                plain: true,
            },
        );
        report.figure(
            "P4",
            &format!("v2 packing, {name}"),
            "x cap",
            &[dict_bytes / CAPACITY],
        );
        report.figure(
            "P4",
            &format!("v2 no dictionary, {name}"),
            "x cap",
            &[plain_bytes / CAPACITY],
        );
        if name.starts_with("64") {
            report.figure("P4", "v2 packing, 64 B msgs/post", "msgs", &[dict_msgs]);
        }
    }
    let mut e2e = Vec::new();
    for (name, corpus) in &corpora {
        // The end-to-end runs use part of each corpus: a few dozen posts are enough.
        let part = &corpus[..corpus.len() / 3];
        for format in ["v1", "v2"] {
            let (bytes, msgs) =
                end_to_end(ctx, &format!("p4-{format}-{}", e2e.len()), format, part);
            report.figure(
                "P4",
                &format!("{format} end to end, {name}"),
                "x cap",
                &[bytes / CAPACITY],
            );
            if name.starts_with("64") {
                report.figure(
                    "P4",
                    &format!("{format} end to end, 64 B msgs/post"),
                    "msgs",
                    &[msgs],
                );
            }
            e2e.push((name.to_string(), format, bytes / CAPACITY, msgs));
        }
    }
    let (t, _) = pure_packing(&corpora[0].1, Options::default());
    let (r, _) = pure_packing(&corpora[1].1, Options::default());
    let (_, m) = pure_packing(&corpora[2].1, Options::default());
    report.ratio(
        "P4 density v2, telemetry (x capacity)",
        t / CAPACITY,
        ">= 3",
    );
    report.ratio(
        "P4 density v2, random bytes (x capacity)",
        r / CAPACITY,
        ">= 0.9 (valid UTF-8 allows at most ~0.898)",
    );
    report.ratio("P4 v2 messages per post at 64 B", m, "report");
    for (name, format, x, msgs) in e2e {
        let what = if name.starts_with("64") {
            format!("{x:.3}x, {msgs:.1} msgs/post")
        } else {
            format!("{x:.3}x")
        };
        report.ratios.push(format!(
            "P4 end to end {format}, {name}: {what} (last post partly filled)"
        ));
    }
}
