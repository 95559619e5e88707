//! Makes `wire/src/telemetry.dict`, the zstd dictionary of codec 2, from a generated corpus of typical
//! MQTT telemetry: zigbee2mqtt, Tasmota, Shelly, ESPHome/Homie plain values, OwnTracks, Home
//! Assistant discovery and generic industrial JSON, batched as the packer batches them. The benchmark
//! measures on a corpus of its own (other topics, field names and values), not on this one.
//!
//! The dictionary is part of the wire format: once released, a new one is a new codec number.
//!
//! Usage: cargo run --release -p mqtt-twister-wire --bin train-dictionary [OUT] [SIZE]

use mqtt_twister_wire::{batch, Record, Rng};

/// A decimal in [lo, hi) with `decimals` digits after the point.
fn real(rng: &mut Rng, lo: f64, hi: f64, decimals: usize) -> String {
    let v = lo + (hi - lo) * (rng.below(1_000_000) as f64 / 1e6);
    format!("{v:.decimals$}")
}

const ROOMS: [&str; 12] = [
    "kitchen",
    "living_room",
    "bedroom",
    "bathroom",
    "garage",
    "office",
    "hallway",
    "basement",
    "attic",
    "garden",
    "laundry",
    "porch",
];

fn message(rng: &mut Rng, t: u64) -> (String, String) {
    let room = rng.pick(&ROOMS);
    let n = rng.below(8);
    let time = 1_700_000_000 + t;
    match rng.below(10) {
        0 | 1 => (
            format!("zigbee2mqtt/{room}_sensor_{n}"),
            format!(
                r#"{{"battery":{},"humidity":{},"linkquality":{},"temperature":{},"voltage":{}}}"#,
                60 + rng.below(41),
                real(rng, 20.0, 80.0, 2),
                rng.below(255),
                real(rng, -5.0, 35.0, 2),
                2700 + rng.below(400)
            ),
        ),
        2 => (
            format!(
                "zigbee2mqtt/{room}_{}",
                rng.pick(&["motion", "door", "light", "plug"])
            ),
            match rng.below(3) {
                0 => format!(
                    r#"{{"battery":{},"illuminance":{},"illuminance_lux":{},"linkquality":{},"occupancy":{},"voltage":{}}}"#,
                    rng.below(101),
                    rng.below(40000),
                    rng.below(2000),
                    rng.below(255),
                    rng.pick(&["true", "false"]),
                    2800 + rng.below(300)
                ),
                1 => format!(
                    r#"{{"battery":{},"contact":{},"linkquality":{},"tamper":false,"voltage":{}}}"#,
                    rng.below(101),
                    rng.pick(&["true", "false"]),
                    rng.below(255),
                    2800 + rng.below(300)
                ),
                _ => format!(
                    r#"{{"brightness":{},"color_mode":"color_temp","color_temp":{},"linkquality":{},"state":"{}"}}"#,
                    rng.below(255),
                    150 + rng.below(350),
                    rng.below(255),
                    rng.pick(&["ON", "OFF"])
                ),
            },
        ),
        3 => (
            format!("tele/tasmota_{:06X}/SENSOR", rng.below(0xffffff)),
            format!(
                r#"{{"Time":"2024-{:02}-{:02}T{:02}:{:02}:{:02}","ENERGY":{{"TotalStartTime":"2023-11-02T18:21:44","Total":{},"Yesterday":{},"Today":{},"Power":{},"ApparentPower":{},"ReactivePower":{},"Factor":{},"Voltage":{},"Current":{}}}}}"#,
                1 + rng.below(12),
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                real(rng, 0.0, 900.0, 3),
                real(rng, 0.0, 9.0, 3),
                real(rng, 0.0, 9.0, 3),
                rng.below(2500),
                rng.below(2600),
                rng.below(300),
                real(rng, 0.3, 1.0, 2),
                225 + rng.below(12),
                real(rng, 0.0, 10.0, 3)
            ),
        ),
        4 => (
            format!("tele/tasmota_{:06X}/STATE", rng.below(0xffffff)),
            format!(
                r#"{{"Time":"2024-05-{:02}T{:02}:{:02}:{:02}","Uptime":"{}T{:02}:{:02}:{:02}","UptimeSec":{},"Heap":{},"SleepMode":"Dynamic","Sleep":50,"LoadAvg":{},"MqttCount":{},"POWER":"{}","Wifi":{{"AP":1,"SSId":"home","BSSId":"AA:BB:CC:{:02X}:{:02X}:{:02X}","Channel":{},"Mode":"11n","RSSI":{},"Signal":-{},"LinkCount":1,"Downtime":"0T00:00:03"}}}}"#,
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.below(40),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.below(3_000_000),
                20 + rng.below(15),
                10 + rng.below(30),
                1 + rng.below(5),
                rng.pick(&["ON", "OFF"]),
                rng.below(256),
                rng.below(256),
                rng.below(256),
                1 + rng.below(13),
                rng.below(100),
                40 + rng.below(50)
            ),
        ),
        5 => (
            format!(
                "shellies/shellyplug-s-{:06X}/relay/0/{}",
                rng.below(0xffffff),
                rng.pick(&["power", "energy"])
            ),
            real(rng, 0.0, 3000.0, 2),
        ),
        6 => (
            format!(
                "{}/sensor/{room}_{}/state",
                rng.pick(&["esphome", "esp32", "weather_station"]),
                rng.pick(&[
                    "temperature",
                    "humidity",
                    "pressure",
                    "co2",
                    "pm25",
                    "wifi_signal"
                ])
            ),
            real(rng, 0.0, 1100.0, 1),
        ),
        7 => (
            format!("owntracks/{}/phone", rng.pick(&["alice", "bob", "carol"])),
            format!(
                r#"{{"_type":"location","acc":{},"alt":{},"batt":{},"conn":"{}","lat":{},"lon":{},"tid":"ph","tst":{},"vac":{},"vel":{}}}"#,
                rng.below(50),
                rng.below(400),
                rng.below(101),
                rng.pick(&["w", "m"]),
                real(rng, -60.0, 60.0, 6),
                real(rng, -120.0, 120.0, 6),
                time,
                rng.below(30),
                rng.below(120)
            ),
        ),
        8 => (
            format!(
                "factory/line{}/machine{}/telemetry",
                1 + rng.below(6),
                1 + rng.below(40)
            ),
            format!(
                r#"{{"ts":{}{:03},"device_id":"m-{:04}","status":"{}","temperature":{},"pressure":{},"vibration":{},"rpm":{},"current":{},"errors":{}}}"#,
                time,
                rng.below(1000),
                rng.below(10000),
                rng.pick(&["running", "idle", "stopped", "error"]),
                real(rng, 20.0, 95.0, 1),
                real(rng, 0.8, 6.5, 2),
                real(rng, 0.0, 12.0, 3),
                rng.below(3600),
                real(rng, 0.0, 30.0, 2),
                rng.below(3)
            ),
        ),
        _ => (
            format!("homeassistant/sensor/{room}_{n}/state"),
            format!(
                r#"{{"state":"{}","attributes":{{"unit_of_measurement":"{}","device_class":"{}","friendly_name":"{} {}"}},"last_changed":"2024-05-{:02}T{:02}:{:02}:{:02}.{:06}+00:00"}}"#,
                real(rng, 0.0, 100.0, 1),
                rng.pick(&["°C", "%", "hPa", "ppm", "lx", "W"]),
                rng.pick(&[
                    "temperature",
                    "humidity",
                    "pressure",
                    "carbon_dioxide",
                    "illuminance",
                    "power"
                ]),
                room,
                rng.pick(&["Temperature", "Humidity", "Sensor"]),
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.below(1_000_000)
            ),
        ),
    }
}

/// Batches as the packer makes them: 20 to 80 messages, a sequence number, QoS 0 or 1.
fn corpus(seed: u64, batches: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..batches)
        .map(|b| {
            let n = 20 + rng.below(60) as usize;
            let records: Vec<Record> = (0..n)
                .map(|i| {
                    let (topic, payload) = message(&mut rng, (b * 100 + i) as u64);
                    Record {
                        topic,
                        payload: payload.into_bytes(),
                        qos: rng.below(2) as u8,
                        retain: rng.below(20) == 0,
                        fragment: None,
                        id: None,
                    }
                })
                .collect();
            batch::encode(b as u64 * 7, records.iter())
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .unwrap_or_else(|| "wire/src/telemetry.dict".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16 << 10);
    let samples = corpus(1, 4000);
    let dict = zstd::dict::from_samples(&samples, size).expect("training the dictionary");
    // Held out: batches the dictionary was not trained on.
    let held = corpus(99, 200);
    let raw: usize = held.iter().map(Vec::len).sum();
    let mut plain = 0;
    let mut with = 0;
    for s in &held {
        plain += zstd::bulk::compress(s, 19).expect("zstd").len();
        let mut c = zstd::bulk::Compressor::with_dictionary(19, &dict).expect("zstd");
        with += c.compress(s).expect("zstd").len();
    }
    std::fs::write(&out, &dict).expect("writing the dictionary");
    println!(
        "{out}: {} bytes; held-out batches: {raw} bytes, zstd {plain} ({:.2}x), with the dictionary {with} ({:.2}x)",
        dict.len(),
        raw as f64 / plain as f64,
        raw as f64 / with as f64
    );
}
