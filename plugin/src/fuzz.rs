//! Property tests over the network input path: the post/DM decoder (v1, poc; the dense v2 in
//! `run_dense`) and the reassembler, fed with a
//! deterministic, seeded mix of structured envelopes (colliding, repeated, contradicting and empty
//! fragments, odd topics and numbers), mutations of them and random bytes. No input may panic, the
//! reassembler's accounts must stay exact and within its limits, and an honest sender's fragments,
//! shuffled and repeated among the junk, must always join back into its message.
//!
//! `fuzz_small` runs with the unit tests; `make fuzz` runs `fuzz_millions` in release
//! (`MQTT_TWISTER_FUZZ_INPUTS`, default 10 million; `MQTT_TWISTER_FUZZ_SEED`).

use crate::reassembly::{Limits, Reassembler};
use crate::wire::{self, Message};
use mqtt_twister_wire::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const TOPICS: [&str; 11] = [
    "t",
    "a/b",
    "",
    "#",
    "a/+",
    "$SYS/x",
    "\\u0001",
    "\\u0085x",
    "\\uffff",
    "\\u00fc/\\u20ac",
    "z/z/z/z/z/z/z/z",
];

/// A number the way a hostile sender might write it.
fn number(rng: &mut Rng, small: u64) -> String {
    match rng.below(12) {
        0 => "-1".into(),
        1 => "1.5".into(),
        2 => "18446744073709551615".into(),
        3 => "18446744073709551616".into(),
        4 => "4294967296".into(),
        5 => "100000".into(),
        6 => "100001".into(),
        7 => "\"3\"".into(),
        8 => "0".into(),
        _ => rng.below(small).to_string(),
    }
}

/// Few ids, indexes and counts, so that fragments collide, repeat, contradict and complete.
fn fragment_member(rng: &mut Rng, junk: bool) -> String {
    if !junk {
        return match rng.below(10) {
            0..=2 => String::new(),
            _ => format!(
                ",\"f\":[{},{},{}]",
                rng.below(6),
                rng.below(4),
                1 + rng.below(4)
            ),
        };
    }
    match rng.below(5) {
        0 => ",\"f\":[]".into(),
        1 => ",\"f\":null".into(),
        2 => format!(",\"f\":[{}]", number(rng, 4)),
        3 => format!(
            ",\"f\":[{},{},{},{}]",
            rng.below(4),
            rng.below(4),
            rng.below(4),
            rng.below(4)
        ),
        _ => format!(
            ",\"f\":[{},{},{}]",
            number(rng, 6),
            number(rng, 6),
            number(rng, 6)
        ),
    }
}

fn payload_member(rng: &mut Rng, junk: bool) -> String {
    if junk {
        return match rng.below(4) {
            0 => ",\"p\":\"!!\"".to_string(),
            1 => format!(",\"x\":{}", number(rng, 9)),
            2 => String::new(),
            _ => ",\"p\":\"eA==\",\"x\":\"\"".to_string(),
        };
    }
    if rng.chance(30) {
        return ",\"p\":\"\"".to_string();
    }
    let max = if rng.chance(5) { 1500 } else { 12 };
    let m = Message {
        topic: String::new(),
        payload: rng.bytes(max),
        qos: 0,
        retain: false,
    };
    // `{"t":""` + payload member + `,"q":0}`: keep the payload member (`p` or `x`) only.
    wire::encode_item(&m)
        .strip_prefix("{\"t\":\"\"")
        .and_then(|s| s.strip_suffix(",\"q\":0}"))
        .unwrap_or("")
        .to_string()
}

/// One batch item; each member is junk with `junk` percent chance.
fn item(rng: &mut Rng, junk: u64) -> String {
    let topic = if rng.chance(junk) {
        "\\ud800"
    } else {
        *rng.pick(&TOPICS)
    };
    let junk_payload = rng.chance(junk);
    let payload = payload_member(rng, junk_payload);
    let qos = if rng.chance(junk) {
        match rng.below(2) {
            0 => String::new(),
            _ => format!(",\"q\":{}", number(rng, 4)),
        }
    } else {
        format!(",\"q\":{}", rng.below(3))
    };
    let retain = match rng.below(10) {
        0 => ",\"r\":1".to_string(),
        1 => ",\"r\":true".to_string(),
        2 if rng.chance(junk) => ",\"r\":\"x\"".to_string(),
        _ => String::new(),
    };
    let junk_fragment = rng.chance(junk);
    let fragment = fragment_member(rng, junk_fragment);
    format!("{{\"t\":\"{topic}\"{payload}{qos}{retain}{fragment}}}")
}

fn envelope(rng: &mut Rng) -> String {
    let n = match rng.below(20) {
        0 => {
            let many = rng.below(600);
            40 + many
        }
        _ => rng.below(6),
    };
    let junk = if rng.chance(25) { 20 } else { 0 };
    let items: Vec<String> = (0..n).map(|_| item(rng, junk)).collect();
    let version = if rng.chance(3) {
        number(rng, 3)
    } else {
        "1".into()
    };
    wire::envelope(0, items.iter().map(String::as_str)).replacen(
        "\"v\":1",
        &format!("\"v\":{version}"),
        1,
    )
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(3) {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 => bytes.insert(at, *rng.pick(b"{}[]\",:0123456789-.\\eE\x00\xff")),
            _ if at < bytes.len() => bytes[at] = rng.next() as u8,
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn input(rng: &mut Rng) -> String {
    match rng.below(20) {
        0 => String::from_utf8_lossy(&rng.bytes(300)).into_owned(),
        1 => {
            let depth = rng.below(3000) as usize;
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
        2 => format!(
            "{{\"topic\":\"{}\",\"payload\":\"eA==\",\"qos\":{}}}",
            rng.pick(&TOPICS),
            number(rng, 3)
        ),
        3..=6 => {
            let e = envelope(rng);
            mutate(rng, &e)
        }
        _ => envelope(rng),
    }
}

/// An honest sender's message cut by the real encoder, fed shuffled and with repeats.
fn honest_round(rng: &mut Rng, r: &mut Reassembler, id: u64, now: Instant) -> bool {
    let m = Message {
        topic: "honest/\u{fc}".into(),
        payload: (0..=rng.below(6000)).map(|_| rng.next() as u8).collect(),
        qos: rng.below(3) as u8,
        retain: rng.chance(50),
    };
    let Some(mut items) = wire::encode_fragments(&m, id, 400 + rng.below(1400) as usize, None)
    else {
        return true;
    };
    let repeats: Vec<String> = items.iter().filter(|_| rng.chance(20)).cloned().collect();
    items.extend(repeats);
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut joined = None;
    for text in items {
        let decoded = wire::decode_items(&wire::envelope(1, [text.as_str()]));
        for it in decoded.unwrap_or_default() {
            let Some(f) = it.fragment else { return false };
            match r.add("honest", f, it.message, now) {
                // Repeats that come after the last fragment start the message again, harmlessly.
                Ok(Some(whole)) if whole == m => joined = Some(whole),
                Ok(None) => {}
                _ => return false,
            }
        }
    }
    joined.is_some()
}

#[derive(Debug, Default)]
struct Outcome {
    inputs: u64,
    panics: u64,
    items: u64,
    fragments: u64,
    joined: u64,
    honest_failures: u64,
    peak_cost: [usize; 2],
    stats: [crate::reassembly::Stats; 2],
}

/// The second reassembler's total limit: small, so that every limit is met all the time.
const TIGHT_TOTAL_BYTES: usize = 48 << 10;

fn run(inputs: u64, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    let tight = Limits {
        total_bytes: TIGHT_TOTAL_BYTES,
        sender_bytes: 64 << 10,
        total_messages: 96,
        sender_messages: 8,
        idle_timeout: Duration::from_secs(30),
    };
    let mut rs = [Reassembler::new(Limits::default()), Reassembler::new(tight)];
    let senders: Vec<String> = (0..40).map(|n| format!("user{n}")).collect();
    let t0 = Instant::now();
    let mut clock = Duration::ZERO;
    let mut out = Outcome::default();
    for n in 0..inputs {
        out.inputs += 1;
        let jump = if rng.chance(1) { 100_000 } else { 50 };
        clock += Duration::from_millis(rng.below(jump));
        let now = t0 + clock;
        let text = input(&mut rng);
        let sender = rng.pick(&senders).clone();
        let step = catch_unwind(AssertUnwindSafe(|| {
            let items = wire::decode_items(&text).unwrap_or_default();
            let mut counts = (items.len() as u64, 0u64, 0u64);
            for (which, r) in rs.iter_mut().enumerate() {
                for it in &items {
                    let Some(f) = it.fragment else { continue };
                    counts.1 += 1;
                    if let Ok(Some(whole)) = r.add(&sender, f, it.message.clone(), now) {
                        counts.2 += 1;
                        assert!(whole.payload.len() <= r.limits().sender_bytes);
                    }
                }
                assert!(r.cost() <= r.limits().total_bytes);
                assert!(r.unfinished() <= r.limits().total_messages);
                out.peak_cost[which] = out.peak_cost[which].max(r.cost());
            }
            counts
        }));
        match step {
            Ok((items, fragments, joined)) => {
                out.items += items;
                out.fragments += fragments;
                out.joined += joined;
            }
            Err(_) => out.panics += 1,
        }
        if n % 1000 == 0 && !honest_round(&mut rng, &mut rs[0], n, now) {
            out.honest_failures += 1;
        }
        if n % 50_000 == 0 {
            for r in &rs {
                r.check_accounts();
            }
        }
    }
    for (which, r) in rs.iter().enumerate() {
        r.check_accounts();
        out.stats[which] = r.stats;
    }
    out
}

fn inputs_from_env(default: u64) -> u64 {
    std::env::var("MQTT_TWISTER_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn check(out: &Outcome, inputs: u64) {
    assert_eq!(out.inputs, inputs);
    assert_eq!(out.panics, 0, "{out:?}");
    assert_eq!(out.honest_failures, 0, "{out:?}");
    assert!(
        out.fragments > inputs / 10,
        "the mix reaches the reassembler: {out:?}"
    );
    assert!(out.joined > 0, "some fragments complete messages: {out:?}");
    let tight = out.stats[1];
    assert!(
        tight.evicted > 0 && tight.expired > 0 && tight.refused > 0 && tight.duplicates > 0,
        "every path of the reassembler is taken: {out:?}"
    );
}

#[test]
fn fuzz_small() {
    let out = run(20_000, 7);
    check(&out, 20_000);
}

/// `make fuzz`: millions of inputs in release.
#[test]
#[ignore]
fn fuzz_millions() {
    let inputs = inputs_from_env(10_000_000);
    let seed = std::env::var("MQTT_TWISTER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2024);
    let started = Instant::now();
    let out = run(inputs, seed);
    eprintln!(
        "fuzz: {} inputs (seed {seed}) in {:.1} s: {} panics, {} items, {} fragments, {} messages joined, peak accounted bytes {} (limit {}) and {} (limit {}); {:?}",
        out.inputs,
        started.elapsed().as_secs_f64(),
        out.panics,
        out.items,
        out.fragments,
        out.joined,
        out.peak_cost[0],
        Limits::default().total_bytes,
        out.peak_cost[1],
        TIGHT_TOTAL_BYTES,
        out.stats
    );
    check(&out, inputs);
}

/// The dense (v2) decoder: texts from the real v2 encoder (an envelope's items, fragments too),
/// frames of random bytes under every codec byte (so the zstd and batch decoders meet hostile
/// input), and mutations of both. Returns (panics, honest texts that did not read back exactly,
/// texts read as batches).
fn run_dense(inputs: u64, seed: u64) -> (u64, u64, u64) {
    use mqtt_twister_wire as v2;
    let mut rng = Rng(seed);
    let (mut panics, mut dishonest, mut read) = (0, 0, 0);
    for _ in 0..inputs {
        let (text, honest) = if rng.chance(50) {
            let items = wire::decode_items(&envelope(&mut rng)).unwrap_or_default();
            let records: Vec<v2::Record> = items
                .into_iter()
                .map(|it| v2::Record {
                    topic: it.message.topic,
                    payload: it.message.payload,
                    qos: it.message.qos,
                    retain: it.message.retain,
                    fragment: it.fragment.map(|f| v2::Fragment {
                        id: f.id,
                        index: f.index,
                        count: f.count,
                    }),
                    id: it.id,
                })
                .collect();
            let seq = rng.next();
            (
                v2::encode(seq, &records, v2::Options::default()),
                Some((seq, records)),
            )
        } else {
            let mut frame = vec![rng.below(4) as u8];
            frame.extend(rng.bytes(600));
            (v2::text_of_frame(&frame), None)
        };
        let mutated = rng.chance(40);
        let text = if mutated {
            mutate(&mut rng, &text)
        } else {
            text
        };
        match catch_unwind(AssertUnwindSafe(|| {
            (wire::decode_items(&text).is_ok(), v2::decode(&text).ok())
        })) {
            Err(_) => panics += 1,
            Ok((ok, batch)) => {
                read += u64::from(ok);
                if honest.is_some() && !mutated && batch != honest {
                    dishonest += 1;
                }
            }
        }
    }
    (panics, dishonest, read)
}

#[test]
fn fuzz_dense_small() {
    let (panics, dishonest, read) = run_dense(5_000, 8);
    assert_eq!((panics, dishonest), (0, 0));
    assert!(read > 1000, "honest texts are read: {read}");
}

/// `make fuzz`: the dense decoder with millions of inputs in release.
#[test]
#[ignore]
fn fuzz_dense_millions() {
    let inputs = inputs_from_env(1_000_000);
    let started = Instant::now();
    let (panics, dishonest, read) = run_dense(inputs, 2025);
    eprintln!(
        "fuzz (dense v2): {inputs} inputs in {:.1} s: {panics} panics, {dishonest} honest texts misread, {read} read as batches",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((panics, dishonest), (0, 0));
}
