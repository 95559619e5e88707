//! The driver carrying the interest's DHT calls through the DHT thread and feeding the answers back
//! (the decisions themselves are unit-tested in `crate::relay::interest`): our profile written with
//! its other keys kept, a recipient's interest read and used for routing.

use super::*;
use crate::relay::interest::private::Routed;
use crate::route::{Route, RuleSet};
use serde_json::{json, Value};
use std::sync::Mutex;

/// A twisterd's DHT: each user's profile, its value and seq.
#[derive(Default)]
struct Profiles(BTreeMap<String, (Value, i64)>);

struct FakeDht(Arc<Mutex<Profiles>>);

impl Twister for FakeDht {
    fn call(&self, method: &str, params: Value) -> Result<Value, TwisterError> {
        let mut p = self.0.lock().unwrap();
        let user = params[0].as_str().unwrap_or_default().to_string();
        match method {
            "dhtget" => Ok(match p.0.get(&user) {
                Some((v, seq)) => {
                    json!([{"p": {"seq": seq, "v": v, "target": {"n": user}}, "sig_user": user}])
                }
                None => json!([]),
            }),
            "dhtput" => {
                p.0.insert(user, (params[3].clone(), params[5].as_i64().unwrap()));
                Ok(Value::Null)
            }
            _ => Ok(Value::Null),
        }
    }
}

/// twisterd for everything but the DHT: answers nothing useful (nothing to read, nothing posted).
struct Quiet;

impl Twister for Quiet {
    fn call(&self, _method: &str, _params: Value) -> Result<Value, TwisterError> {
        Ok(Value::Null)
    }
}

#[test]
fn the_driver_carries_the_profile_write_and_the_recipients_reads_through_the_dht_thread() {
    let opts: Vec<(String, String)> = [
        ("rpc_user", "u"),
        ("rpc_password", "p"),
        ("user", "alice"),
        ("subscribe", "fixed/#"),
        ("private", "doors/# bob"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = Arc::new(crate::config::parse(&opts).unwrap());
    let profiles = Arc::new(Mutex::new(Profiles::default()));
    {
        let mut p = profiles.lock().unwrap();
        p.0.insert(
            "alice".into(),
            (json!({"fullname": "Kitchen", "mqtt_topics": ["old/#"]}), 2),
        );
        p.0.insert("bob".into(), (json!({"mqtt_topics": ["doors/+"]}), 5));
    }
    let (_to_worker, inbox) = crossbeam_channel::bounded(16);
    let (to_broker, from_worker) = crate::bus::to_broker(1024, 1024);
    let (dht_tx, _) = crossbeam_channel::bounded(16);
    let health = Arc::new(Health::default());
    let dht = DhtThread::spawn(
        cfg.clone(),
        Box::new(FakeDht(profiles.clone())),
        dht_tx,
        to_broker.clone(),
        health.clone(),
    );
    let start = Start {
        saved: None,
        restored: None,
        interest: None,
        counters: Counters::default(),
        drops: Drops::default(),
        dht,
        doorbell: Doorbell::new(None, String::new()),
        health,
        receipts: None,
        injections: None,
        settled: None,
    };
    let mut w = Worker::new(cfg, Box::new(Quiet), inbox, to_broker, start);
    w.ready = true;
    w.local.start(Instant::now());
    w.private.start(Instant::now());
    let mut private_rules = RuleSet::default();
    private_rules.insert(0);
    let door = Outgoing {
        message: Message {
            topic: "doors/1".into(),
            payload: b"x".to_vec(),
            qos: 1,
            retain: false,
        },
        route: Route {
            public: false,
            private_rules,
        },
        id: None,
    };
    let written = || profiles.lock().unwrap().0.get("alice").cloned();
    let mut answers = 0;
    let mut logs: Vec<String> = Vec::new();
    let said = |logs: &[String], end: &str| logs.iter().any(|l| l.ends_with(end));
    for _ in 0..20 {
        w.step(Instant::now());
        logs.extend(std::iter::from_fn(|| match from_worker.try_recv() {
            Some(ToBroker::Log(_, line)) => Some(line),
            Some(_) => Some(String::new()),
            None => None,
        }));
        let done = said(&logs, "profile interest is now [\"fixed/#\"]")
            && w.private.route(&door) == Routed::Send(vec!["bob".into()]);
        if done {
            break;
        }
        if let Event::Dht(answer) = w.wait_event(Duration::from_secs(5)) {
            answers += 1;
            w.dht_answer(answer);
        }
    }
    assert_eq!(
        written(),
        Some((
            json!({"fullname": "Kitchen", "mqtt_topics": ["fixed/#"]}),
            3
        )),
        "written with the next seq, the other keys kept"
    );
    assert_eq!(
        w.private.route(&door),
        Routed::Send(vec!["bob".into()]),
        "bob's interest read and used"
    );
    // Our profile: read, put, read back; bob's: one read.
    assert_eq!(answers, 4);
    assert!(
        said(&logs, "profile interest is now [\"fixed/#\"]"),
        "{logs:?}"
    );
    assert!(
        said(&logs, "interest of recipient bob: [\"doors/+\"]"),
        "{logs:?}"
    );
}
