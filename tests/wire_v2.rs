//! The dense wire format v2 end to end: telemetry crossing in few posts, binary payloads exact, and
//! writers of v1 and of the proof of concept read by a v2 broker (and v2 read by one writing v1).

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A post's whole text, as a reader joins it.
fn text_of(post: &Value) -> String {
    let up = &post["userpost"];
    format!(
        "{}{}",
        up["msg"].as_str().unwrap_or(""),
        up["msg2"].as_str().unwrap_or("")
    )
}

fn posts_of(node: &DevNode, user: &str) -> Vec<Value> {
    let posts = node.ok("getposts", json!([1000, [{"username": user}]]));
    posts
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["userpost"]["n"] == user)
        .cloned()
        .collect()
}

/// Sensor JSON of the kind the dense format is made for.
fn reading(i: usize) -> (String, Vec<u8>) {
    let topic = format!("telemetry/site{}/room{}/climate", i % 4, i % 50);
    let payload = format!(
        r#"{{"sensor":"th-{:03}","temperature":{}.{},"humidity":{},"battery":{},"rssi":-{}}}"#,
        i % 50,
        18 + i % 7,
        i % 10,
        35 + i % 30,
        80 + i % 20,
        50 + i % 40
    );
    (topic, payload.into_bytes())
}

on_both_brokers! {
    fn a_telemetry_burst_crosses_in_few_dense_posts_with_binary_payloads_exact() {
        let p = Pair::start(
            &["plugin_opt_publish telemetry/#", "plugin_opt_batch_delay_ms 300"],
            &[],
        );
        let sub = Mqtt::connect(p.b.port, "sub-b", true);
        assert!(sub.subscribe("telemetry/#", QoS::AtLeastOnce));
        wait_interest(&p.node, "bob", "telemetry/#");
        let publ = Mqtt::connect(p.a.port, "pub-a", true);
        let mut sent: Vec<(String, Vec<u8>)> = (0..400).map(reading).collect();
        // Binary payloads among them: every byte value, the characters the format leaves out, noise.
        let mut noise = 0x9e37_79b9_u32;
        let random: Vec<u8> = (0..700)
            .map(|_| {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                noise as u8
            })
            .collect();
        sent.insert(100, ("telemetry/raw/all".into(), (0..=255).collect()));
        sent.insert(200, ("telemetry/raw/@alice".into(), b"@alice #mqtt \0\n\"\\".to_vec()));
        sent.insert(300, ("telemetry/raw/noise".into(), random));
        sent.insert(301, ("telemetry/raw/empty".into(), Vec::new()));
        for (topic, payload) in &sent {
            publ.publish(topic, payload, QoS::AtLeastOnce, false);
        }
        for (i, (topic, payload)) in sent.iter().enumerate() {
            let got = sub.expect(T, &format!("message {i} on {topic}"));
            assert_eq!((&got.topic, &got.payload), (topic, payload), "message {i}, in order");
        }
        let payload_bytes: usize = sent.iter().map(|(_, p)| p.len()).sum();
        let posts = posts_of(&p.node, "alice");
        assert!(!posts.is_empty());
        for post in &posts {
            let text = text_of(post);
            assert!(text.starts_with("{\"v\":2}"), "a v2 post: {text:?}");
            assert!(!text.contains(['@', '#', '\0']), "no mention, hashtag or NUL: {text:?}");
        }
        // 1,873 bytes of text per post for alice: the batch must carry well over that per post.
        let per_post = payload_bytes as f64 / posts.len() as f64;
        assert!(
            per_post > 2.0 * 1873.0,
            "{} posts for {payload_bytes} payload bytes: {per_post:.0} per post",
            posts.len()
        );
        let stats = p.node.ok("devnode_stats", json!([]));
        assert_eq!(stats["counters"]["posts_stored"], json!(posts.len()), "every post accepted");
    }
}

/// A pair where A writes `format` and B the default (v2); each publishes to the other.
fn interoperate(format: &str) {
    let setting = format!("plugin_opt_wire_format {format}");
    let p = Pair::start(
        &["plugin_opt_publish from-a/#", &setting],
        &["plugin_opt_publish from-b/#"],
    );
    let sub_b = Mqtt::connect(p.b.port, "sub-b", true);
    assert!(sub_b.subscribe("from-a/#", QoS::AtLeastOnce));
    let sub_a = Mqtt::connect(p.a.port, "sub-a", true);
    assert!(sub_a.subscribe("from-b/#", QoS::AtLeastOnce));
    wait_interest(&p.node, "bob", "from-a/#");
    wait_interest(&p.node, "alice", "from-b/#");
    let pub_a = Mqtt::connect(p.a.port, "pub-a", true);
    let pub_b = Mqtt::connect(p.b.port, "pub-b", true);
    let binary: Vec<u8> = (0..=255).rev().collect();
    for i in 0..5 {
        let (topic, payload) = reading(i);
        pub_a.publish(
            &format!("from-a/{topic}"),
            &payload,
            QoS::AtLeastOnce,
            false,
        );
        pub_b.publish(
            &format!("from-b/{topic}"),
            &payload,
            QoS::AtLeastOnce,
            false,
        );
    }
    pub_a.publish("from-a/bin", &binary, QoS::AtLeastOnce, false);
    pub_b.publish("from-b/bin", &binary, QoS::AtLeastOnce, false);
    for (sub, side) in [(&sub_b, "from-a"), (&sub_a, "from-b")] {
        for i in 0..5 {
            let (topic, payload) = reading(i);
            let got = sub.expect(T, &format!("{side} message {i}"));
            assert_eq!(
                (got.topic, got.payload),
                (format!("{side}/{topic}"), payload)
            );
        }
        let got = sub.expect(T, &format!("{side} binary"));
        assert_eq!(
            (got.topic.as_str(), &got.payload),
            (&*format!("{side}/bin"), &binary)
        );
    }
    let start = match format {
        "v1" => "{\"v\":1,",
        "poc" => "{\"topic\":",
        _ => "{\"v\":2}",
    };
    for post in posts_of(&p.node, "alice") {
        assert!(
            text_of(&post).starts_with(start),
            "alice writes {format}: {}",
            text_of(&post)
        );
    }
    for post in posts_of(&p.node, "bob") {
        assert!(text_of(&post).starts_with("{\"v\":2}"), "bob writes v2");
    }
}

on_both_brokers! {
    fn a_v1_writer_and_a_v2_writer_read_each_other() {
        interoperate("v1");
    }
}

on_both_brokers! {
    fn a_proof_of_concept_writer_and_a_v2_writer_read_each_other() {
        interoperate("poc");
    }
}
