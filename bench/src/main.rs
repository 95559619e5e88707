//! make bench: what the plugin costs a broker's local clients, and how relaying over Twister compares
//! with Mosquitto's own bridge. Setups are alternated (A B A B ...) in one run and every figure is
//! reported as median and spread; the result is the ratios, since absolute numbers on a shared
//! machine mean little.
//!
//! Usage: mqtt-twister-bench [--rounds N] [--messages N] [--json FILE] [--only P1,P2,...]

mod budget;
mod density;
mod durability;
mod receipts;

use mqtt_twister_harness::*;
use rumqttc::QoS;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 64;
const PUBLISHERS: usize = 4;

struct Args {
    rounds: usize,
    messages: usize,
    json: PathBuf,
    only: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        rounds: 5,
        messages: 20_000,
        json: PathBuf::from("target/bench.jsonl"),
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value().parse().expect("--rounds N"),
            "--messages" => a.messages = value().parse().expect("--messages N"),
            "--json" => a.json = PathBuf::from(value()),
            "--only" => {
                a.only = value()
                    .split(',')
                    .map(|s| s.trim().to_uppercase())
                    .collect()
            }
            "--help" | "-h" => {
                println!("mqtt-twister-bench [--rounds N] [--messages N] [--json FILE] [--only P1,P2,P3,P4,P5,P6,P7,P8,P9,D1,D2]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (see --help)"),
        }
    }
    a
}

/// Median and spread (min, max) of a sample.
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(v: &[f64]) -> Stat {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    Stat {
        median,
        min: *s.first().unwrap_or(&f64::NAN),
        max: *s.last().unwrap_or(&f64::NAN),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Report {
    out: std::fs::File,
    ratios: Vec<String>,
}

impl Report {
    fn figure(&mut self, figure: &str, setup: &str, unit: &str, samples: &[f64]) -> f64 {
        let s = stat(samples);
        println!(
            "{figure:<4} {setup:<34} median {:>10.1} {unit:<6} spread {:.1}..{:.1} ({} runs)",
            s.median,
            s.min,
            s.max,
            samples.len()
        );
        let line = json!({"figure": figure, "setup": setup, "unit": unit, "median": s.median, "min": s.min, "max": s.max, "samples": samples});
        writeln!(self.out, "{line}").unwrap();
        s.median
    }

    fn ratio(&mut self, name: &str, value: f64, target: &str) {
        let line = format!("ratio {name}: {value:.3} (target {target})");
        writeln!(
            self.out,
            "{}",
            json!({"ratio": name, "value": value, "target": target})
        )
        .unwrap();
        self.ratios.push(line);
    }
}

fn bench_conf() -> &'static str {
    // No limit on queued or in-flight messages: the bench counts every message.
    "max_queued_messages 0\nmax_inflight_messages 0\n"
}

/// Sends `total` messages from `PUBLISHERS` connections and returns messages/second as received by
/// `sub` (which must already be subscribed), with the number received.
fn publish_and_count(
    pub_port: u16,
    sub: &Mqtt,
    topic: &str,
    total: usize,
    qos: QoS,
    timeout: Duration,
) -> (f64, usize) {
    let per = total / PUBLISHERS;
    let start = Instant::now();
    let handles: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let topic = format!("{topic}/{i}");
            std::thread::spawn(move || {
                let c = Mqtt::connect(
                    pub_port,
                    &format!("bench-pub-{i}-{}", std::process::id()),
                    true,
                );
                let payload = vec![b'x'; PAYLOAD];
                for _ in 0..per {
                    c.publish(&topic, &payload, qos, false);
                }
                c
            })
        })
        .collect();
    let mut got = 0;
    let deadline = start + timeout;
    while got < per * PUBLISHERS && Instant::now() < deadline {
        if sub.recv(Duration::from_millis(200)).is_some() {
            got += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for h in handles {
        if let Ok(c) = h.join() {
            c.disconnect();
        }
    }
    (got as f64 / secs, got)
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

struct Ctx {
    node: DevNode,
    dir: tempfile::TempDir,
    users: std::cell::Cell<usize>,
}

impl Ctx {
    /// A fresh Twister user name for the next broker.
    fn user(&self, prefix: &str) -> String {
        self.users.set(self.users.get() + 1);
        format!("{prefix}{}", self.users.get())
    }
}

/// A broker with the plugin for Twister user `user`, plus `extra` configuration lines.
fn plugin_broker(ctx: &Ctx, name: &str, user: &str, extra: &[&str]) -> Broker {
    let mut lines: Vec<&str> = vec![bench_conf().trim_end(), "plugin_opt_max_queue 10000000"];
    lines.extend_from_slice(extra);
    let b = Broker::start(
        ctx.dir.path(),
        name,
        &plugin_conf(&ctx.node, ctx.dir.path(), user, &lines),
    );
    b.wait_ready();
    b
}

/// P1 on the broker version of this thread. 2.0's figures keep their names; 2.1's say "on 2.1"
/// (no ACL callback is registered there, so the plugin should cost less).
fn p1(ctx: &mut Ctx, args: &Args, report: &mut Report) {
    let on = match broker_version() {
        BrokerVersion::V2_0 => "",
        BrokerVersion::V2_1 => " on 2.1",
    };
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let q = qos as u8;
        let mut plain = Vec::new();
        let mut nomatch = Vec::new();
        let mut forward = Vec::new();
        for round in 0..args.rounds {
            for setup in 0..3 {
                let name = format!("p1-q{q}-r{round}-s{setup}");
                let broker = match setup {
                    0 => Broker::start(ctx.dir.path(), &name, bench_conf()),
                    1 => plugin_broker(
                        ctx,
                        &name,
                        &ctx.user("u"),
                        &["plugin_opt_publish elsewhere/#"],
                    ),
                    _ => plugin_broker(ctx, &name, &ctx.user("u"), &["plugin_opt_publish bench/#"]),
                };
                let rate = local_rate(&broker, &name, args.messages, qos);
                [&mut plain, &mut nomatch, &mut forward][setup].push(rate);
            }
        }
        let p = report.figure(
            "P1",
            &format!("plain mosquitto qos{q}{on}"),
            "msg/s",
            &plain,
        );
        let a = report.figure(
            "P1",
            &format!("plugin, no forward match qos{q}{on}"),
            "msg/s",
            &nomatch,
        );
        let b = report.figure(
            "P1",
            &format!("plugin, all forwarded qos{q}{on}"),
            "msg/s",
            &forward,
        );
        report.ratio(
            &format!("P1a qos{q}{on} plugin(no match)/plain"),
            a / p,
            ">= 0.97",
        );
        report.ratio(
            &format!("P1b qos{q}{on} plugin(all forwarded)/plain"),
            b / p,
            ">= 0.90",
        );
    }
}

/// Messages/second `broker`'s local subscriber on bench/# receives of `messages` published on it
/// at `qos` (a shortfall is said, under `name`).
fn local_rate(broker: &Broker, name: &str, messages: usize, qos: QoS) -> f64 {
    let sub = Mqtt::connect(broker.port, "bench-sub", true);
    assert!(sub.subscribe("bench/#", qos));
    let (rate, got) = publish_and_count(
        broker.port,
        &sub,
        "bench",
        messages,
        qos,
        Duration::from_secs(60),
    );
    if got < messages {
        eprintln!("  {name}: received {got} of {messages}");
    }
    rate
}

/// Relay A -> B through the dev node: the brokers and their Twister users.
fn relay_pair(ctx: &mut Ctx, name: &str, poll_ms: u64) -> (Broker, Broker, String, String) {
    let (a_user, b_user) = (ctx.user("ra"), ctx.user("rb"));
    let poll = format!("plugin_opt_poll_interval_ms {poll_ms}");
    relay_pair_of(ctx, name, (a_user, b_user), &[&poll], &[&poll])
}

/// A (`users.0`, publishing bench/# with a 10 ms batch delay, following B) and B (`users.1`,
/// following A), each with its `extra` configuration lines; the brokers and their users.
fn relay_pair_of(
    ctx: &mut Ctx,
    name: &str,
    (a_user, b_user): (String, String),
    a_extra: &[&str],
    b_extra: &[&str],
) -> (Broker, Broker, String, String) {
    let follow_b = format!("plugin_opt_follow {b_user}");
    let a_lines = [
        &[
            "plugin_opt_publish bench/#",
            &follow_b,
            "plugin_opt_batch_delay_ms 10",
        ][..],
        a_extra,
    ]
    .concat();
    let a = plugin_broker(ctx, &format!("{name}-a"), &a_user, &a_lines);
    let follow_a = format!("plugin_opt_follow {a_user}");
    let b_lines = [&[follow_a.as_str()][..], b_extra].concat();
    let b = plugin_broker(ctx, &format!("{name}-b"), &b_user, &b_lines);
    (a, b, a_user, b_user)
}

fn bridge_pair(ctx: &Ctx, name: &str) -> (Broker, Broker) {
    let b = Broker::start(ctx.dir.path(), &format!("{name}-b"), bench_conf());
    let conf = format!(
        "{}connection {name}\naddress 127.0.0.1:{}\ntopic bench/# out 0\ncleansession true\n",
        bench_conf(),
        b.port
    );
    let a = Broker::start(ctx.dir.path(), &format!("{name}-a"), &conf);
    // The bridge is up when a message crosses.
    let probe = Mqtt::connect(b.port, "probe", true);
    assert!(probe.subscribe("bench/probe", QoS::AtMostOnce));
    let p = Mqtt::connect(a.port, "probe-pub", true);
    wait_for(
        Duration::from_secs(10),
        "the bridge to carry a message",
        || {
            p.publish("bench/probe", b"x", QoS::AtMostOnce, false);
            probe.recv(Duration::from_millis(200))
        },
    );
    (a, b)
}

fn p2(ctx: &mut Ctx, args: &Args, report: &mut Report) {
    let n = (args.messages / 4).max(PUBLISHERS * 100);
    let mut relay = Vec::new();
    let mut bridge = Vec::new();
    for round in 0..args.rounds {
        let (a, b, _, b_user) = relay_pair(ctx, &format!("p2-relay-{round}"), 50);
        let sub = Mqtt::connect(b.port, "bench-sub", true);
        assert!(sub.subscribe("bench/#", QoS::AtMostOnce));
        wait_interest(&ctx.node, &b_user, "bench/#");
        let (rate, got) = publish_and_count(
            a.port,
            &sub,
            "bench",
            n,
            QoS::AtMostOnce,
            Duration::from_secs(120),
        );
        if got < n {
            eprintln!("  relay round {round}: received {got} of {n}");
        }
        relay.push(rate);
        drop((a, b));
        let (a, b) = bridge_pair(ctx, &format!("p2bridge{round}"));
        let sub = Mqtt::connect(b.port, "bench-sub", true);
        assert!(sub.subscribe("bench/#", QoS::AtMostOnce));
        let (rate, _) = publish_and_count(
            a.port,
            &sub,
            "bench",
            n,
            QoS::AtMostOnce,
            Duration::from_secs(120),
        );
        bridge.push(rate);
    }
    let r = report.figure("P2", "relay through twisterd (dev node)", "msg/s", &relay);
    let br = report.figure("P2", "mosquitto bridge", "msg/s", &bridge);
    report.ratio("P2 relay/bridge", r / br, ">= 0.5");
}

/// Latencies in ms of `count` messages sent at `rate` per second from `a` to a subscriber on `b`.
fn latencies(a: u16, b: u16, rate: u32, count: usize) -> Vec<f64> {
    let sub = Mqtt::connect(b, "lat-sub", true);
    assert!(sub.subscribe("bench/lat", QoS::AtMostOnce));
    let publ = Mqtt::connect(a, "lat-pub", true);
    let epoch = Instant::now();
    let sender = std::thread::spawn(move || {
        let gap = Duration::from_secs_f64(1.0 / rate as f64);
        for i in 0..count {
            let due = epoch + gap * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut payload = (epoch.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
            payload.resize(PAYLOAD, b'x');
            publ.publish("bench/lat", &payload, QoS::AtMostOnce, false);
        }
        publ
    });
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(count as u64 / rate as u64 + 15);
    while lat.len() < count && Instant::now() < deadline {
        if let Some(m) = sub.recv(Duration::from_millis(200)) {
            let sent = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
            lat.push((epoch.elapsed().as_nanos() as u64 - sent) as f64 / 1e6);
        }
    }
    let _ = sender.join();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    lat
}

fn p3(ctx: &mut Ctx, args: &Args, report: &mut Report) {
    let count = 500; // 5 s at 100 msg/s
    let mut relay = (Vec::new(), Vec::new(), Vec::new());
    let mut bridge = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds.min(3) {
        let (a, b, _, b_user) = relay_pair(ctx, &format!("p3-relay-{round}"), 50);
        let l = {
            let sub = Mqtt::connect(b.port, "warm", true);
            assert!(sub.subscribe("bench/lat", QoS::AtMostOnce));
            wait_interest(&ctx.node, &b_user, "bench/lat");
            latencies(a.port, b.port, 100, count)
        };
        relay.0.push(percentile(&l, 0.5));
        relay.1.push(percentile(&l, 0.99));
        relay.2.push(*l.last().unwrap_or(&f64::NAN));
        drop((a, b));
        let (a, b) = bridge_pair(ctx, &format!("p3bridge{round}"));
        let l = latencies(a.port, b.port, 100, count);
        bridge.0.push(percentile(&l, 0.5));
        bridge.1.push(percentile(&l, 0.99));
        bridge.2.push(*l.last().unwrap_or(&f64::NAN));
    }
    let p50 = report.figure("P3", "relay p50 (poll 50 ms)", "ms", &relay.0);
    let p99 = report.figure("P3", "relay p99", "ms", &relay.1);
    report.figure("P3", "relay max", "ms", &relay.2);
    let b50 = report.figure("P3", "bridge p50", "ms", &bridge.0);
    report.figure("P3", "bridge p99", "ms", &bridge.1);
    report.figure("P3", "bridge max", "ms", &bridge.2);
    report.ratio("P3 relay p50 ms", p50, "<= 60");
    report.ratio("P3 relay p99 ms", p99, "<= 200");
    report.ratio("P3 relay p50 / bridge p50", p50 / b50, "report");
}

fn p5(ctx: &mut Ctx, args: &Args, report: &mut Report) {
    let mut idle = (Vec::new(), Vec::new());
    let mut loaded = (Vec::new(), Vec::new());
    for round in 0..args.rounds.min(3) {
        for with_plugin in [false, true] {
            let name = format!("p5-{round}-{with_plugin}");
            let broker = if with_plugin {
                plugin_broker(ctx, &name, &ctx.user("u"), &["plugin_opt_publish bench/#"])
            } else {
                Broker::start(ctx.dir.path(), &name, bench_conf())
            };
            std::thread::sleep(Duration::from_millis(300));
            let i = rss_kib(broker.pid());
            let sub = Mqtt::connect(broker.port, "bench-sub", true);
            assert!(sub.subscribe("bench/#", QoS::AtLeastOnce));
            publish_and_count(
                broker.port,
                &sub,
                "bench",
                args.messages,
                QoS::AtLeastOnce,
                Duration::from_secs(60),
            );
            let l = rss_kib(broker.pid());
            if with_plugin {
                idle.1.push(i);
                loaded.1.push(l);
            } else {
                idle.0.push(i);
                loaded.0.push(l);
            }
        }
    }
    let pi = report.figure("P5", "RSS idle, plain", "KiB", &idle.0);
    let wi = report.figure("P5", "RSS idle, plugin", "KiB", &idle.1);
    let pl = report.figure("P5", "RSS after load, plain", "KiB", &loaded.0);
    let wl = report.figure(
        "P5",
        "RSS after load, plugin (all forwarded)",
        "KiB",
        &loaded.1,
    );
    report.ratio("P5 RSS idle plugin/plain", wi / pi, "report");
    report.ratio("P5 RSS loaded plugin/plain", wl / pl, "report");
}

/// D1: small RPCs per second from several keep-alive clients; D2: memory per stored post.
fn devnode_figures(args: &Args, report: &mut Report) {
    let mut rates = Vec::new();
    let mut per_post = Vec::new();
    for _ in 0..args.rounds.min(3) {
        let node = DevNode::start_with(&["-blockinterval=0"], 0);
        node.ok("createwalletuser", json!(["d"]));
        node.ok("sendnewusertransaction", json!(["d"]));
        node.ok("devnode_mine", json!([30_000]));
        node.ok("follow", json!(["d", ["d"]]));
        let clients = 4;
        let window = Duration::from_secs(2);
        let url = node.url.clone();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let start = Instant::now();
                    let mut calls = 0u64;
                    while start.elapsed() < window {
                        rpc(&url, "getlasthave", json!(["d"])).expect("getlasthave");
                        calls += 1;
                    }
                    calls as f64 / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        rates.push(threads.into_iter().map(|t| t.join().unwrap()).sum::<f64>());
        let pid = node.pid();
        let before = rss_kib(pid);
        let posts = 20_000;
        for k in 0..posts {
            node.ok("newpostmsg", json!(["d", k, format!("{k:0>100}")]));
        }
        per_post.push((rss_kib(pid) - before) * 1024.0 / posts as f64);
    }
    let r = report.figure("D1", "dev node small RPCs, 4 clients", "call/s", &rates);
    report.ratio("D1 dev node calls/s", r, ">= 5000");
    let b = report.figure(
        "D2",
        "dev node memory per stored post (100 chars)",
        "bytes",
        &per_post,
    );
    report.ratio("D2 dev node bytes per stored post", b, "report");
}

fn main() {
    // Mosquitto 2.0 unless a figure says otherwise (P1 runs on 2.1 too).
    with_broker_version(BrokerVersion::V2_0, run);
}

fn run() {
    let args = parse_args();
    let _ = plugin_path();
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.json)
        .unwrap_or_else(|e| panic!("{}: {e}", args.json.display()));
    let mut report = Report {
        out,
        ratios: Vec::new(),
    };
    writeln!(report.out, "{}", json!({"run": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), "rounds": args.rounds, "messages": args.messages})).unwrap();
    // Blocks every millisecond: the post budget never binds here.
    let node = DevNode::start_with(&["-blockinterval=0.001", "-flushms=1000"], 0);
    let mut ctx = Ctx {
        node,
        dir: workdir(),
        users: Default::default(),
    };
    let want = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    println!(
        "mqtt-twister bench: {} rounds, {} messages of {PAYLOAD} bytes, {PUBLISHERS} publishers",
        args.rounds, args.messages
    );
    if want("P1") {
        p1(&mut ctx, &args, &mut report);
        with_broker_version(BrokerVersion::V2_1, || p1(&mut ctx, &args, &mut report));
    }
    if want("P2") {
        p2(&mut ctx, &args, &mut report);
    }
    if want("P4") {
        density::p4(&mut ctx, &mut report);
    }
    if want("P3") {
        p3(&mut ctx, &args, &mut report);
    }
    if want("P6") {
        budget::p6(&mut report);
    }
    if want("P5") {
        p5(&mut ctx, &args, &mut report);
    }
    if want("P7") {
        durability::p7(&mut ctx, &args, &mut report);
    }
    if want("P8") || want("P9") {
        receipts::p8_p9(&mut ctx, &args, &mut report);
    }
    if want("D1") || want("D2") {
        devnode_figures(&args, &mut report);
    }
    println!();
    for r in &report.ratios {
        println!("{r}");
    }
    println!("(figures appended to {})", args.json.display());
}
