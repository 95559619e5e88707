//! The worker driving the relay's outbox against a scripted twisterd (the decisions themselves are
//! unit-tested in `crate::relay::outbox`): numbers, unknown outcomes and the budget end to end
//! through the typed client.

use super::*;
use crate::relay::outbox::POSTS_PER_FLUSH;
use crate::twister::TwisterError;
use serde_json::{json, Value};
use std::sync::Mutex;

/// A twisterd whose answers the test scripts: every call is recorded; a post is stored unless
/// told otherwise, and its answer may be lost (as when it comes after the RPC timeout), or the post
/// itself (`forget`: lost on the way, no answer).
#[derive(Default)]
struct Script {
    calls: Vec<(String, Value)>,
    stored: BTreeMap<i64, String>,
    lose_answers: usize,
    forget: usize,
    height: i64,
    budget: i64,
}

struct Fake(Arc<Mutex<Script>>);

impl Twister for Fake {
    fn call(&self, method: &str, params: Value) -> Result<Value, TwisterError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push((method.to_string(), params.clone()));
        match method {
            "newpostmsg" => {
                let k = params[1].as_i64().unwrap();
                if k > s.budget {
                    return Err(TwisterError::refused(
                        -32602,
                        "too much posts from user 'alice' rejecting post",
                    ));
                }
                if s.forget > 0 {
                    s.forget -= 1;
                    return Err(TwisterError::Transport("timed out reading response".into()));
                }
                // A used k keeps its first text, as twisterd does.
                let text = params[2].as_str().unwrap().to_string();
                s.stored.entry(k).or_insert(text);
                if s.lose_answers > 0 {
                    s.lose_answers -= 1;
                    return Err(TwisterError::Transport("timed out reading response".into()));
                }
                Ok(json!({"userpost": {"k": k}}))
            }
            "getlasthave" => {
                Ok(json!({"alice": s.stored.keys().next_back().copied().unwrap_or(-1)}))
            }
            "getinfo" => Ok(json!({"blocks": s.height})),
            _ => Ok(Value::Null),
        }
    }
}

fn worker(script: &Arc<Mutex<Script>>) -> (Worker, crate::bus::FromWorker) {
    let opts: Vec<(String, String)> = [
        ("rpc_user", "u"),
        ("rpc_password", "p"),
        ("user", "alice"),
        ("publish", "t/#"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = Arc::new(crate::config::parse(&opts).unwrap());
    let (_to_worker, inbox) = crossbeam_channel::bounded(16);
    let (to_broker, from_worker) = crate::bus::to_broker(1024, 1024);
    let (dht_tx, _) = crossbeam_channel::bounded(16);
    let health = Arc::new(Health::default());
    let dht = DhtThread::spawn(
        cfg.clone(),
        Box::new(Fake(Arc::default())),
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
    let mut w = Worker::new(cfg, Box::new(Fake(script.clone())), inbox, to_broker, start);
    w.ready = true;
    (w, from_worker)
}

fn publish(w: &mut Worker, from: usize, n: usize) {
    for i in from..from + n {
        let topic = format!("t/{i}");
        let route = w.cfg.router.route(&topic);
        w.outbound(Outgoing {
            message: Message {
                topic,
                payload: b"x".to_vec(),
                qos: 1,
                retain: false,
            },
            route,
            id: None,
        });
    }
}

/// What a flush did before the relay core: send up to `posts` posts now.
fn flush(w: &mut Worker, posts: usize) {
    w.outbox.flush_now(posts, Instant::now());
    w.drive_outbox();
}

fn posts_sent(script: &Arc<Mutex<Script>>) -> Vec<(i64, String)> {
    let s = script.lock().unwrap();
    s.calls
        .iter()
        .filter(|(m, _)| m == "newpostmsg")
        .map(|(_, p)| (p[1].as_i64().unwrap(), p[2].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_post_of_unknown_outcome_is_verified_and_its_number_never_gets_other_text() {
    let script = Arc::new(Mutex::new(Script {
        lose_answers: 1,
        budget: 100,
        ..Default::default()
    }));
    let (mut w, _logs) = worker(&script);
    publish(&mut w, 0, 3);
    flush(&mut w, POSTS_PER_FLUSH);
    assert_eq!(posts_sent(&script).len(), 1, "stops at the unknown outcome");
    assert!(w.outbox.has_unknown_outcome());
    // More messages arrive; the next flush first asks twisterd, finds post 0 stored, and
    // carries on with post 1 for the new ones only.
    publish(&mut w, 3, 2);
    flush(&mut w, POSTS_PER_FLUSH);
    let sent = posts_sent(&script);
    let methods: Vec<String> = script
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|(m, _)| m.clone())
        .collect();
    assert_eq!(methods, ["newpostmsg", "getlasthave", "newpostmsg"]);
    assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        (
            w.queued(),
            w.outbox.next_k(),
            w.outbox.has_unknown_outcome()
        ),
        (0, 2, false)
    );
    let s = script.lock().unwrap();
    assert_eq!(s.stored.len(), 2, "every message stored, under two numbers");
    let topics = |k: i64| -> Vec<String> {
        crate::wire::decode(&s.stored[&k])
            .unwrap()
            .into_iter()
            .map(|m| m.topic)
            .collect()
    };
    assert!(
        topics(0).contains(&"t/2".to_string())
            && !topics(0).contains(&"t/3".to_string())
            && topics(1).contains(&"t/4".to_string()),
        "{:?}",
        s.stored
    );
}

#[test]
fn a_post_not_stored_yet_goes_again_with_the_same_text_and_number() {
    let script = Arc::new(Mutex::new(Script {
        budget: 100,
        forget: 1,
        ..Default::default()
    }));
    let (mut w, _logs) = worker(&script);
    publish(&mut w, 0, 2);
    flush(&mut w, 1);
    let first = posts_sent(&script)[0].clone();
    assert!(w.outbox.has_unknown_outcome());
    // twisterd never got it (getlasthave says -1): the same text goes under the same number,
    // although more messages wait now.
    publish(&mut w, 2, 5);
    flush(&mut w, 1);
    assert_eq!(posts_sent(&script), vec![first.clone(), first.clone()]);
    assert_eq!((w.queued(), w.outbox.next_k()), (5, first.0 + 1));
}

#[test]
fn out_of_budget_nothing_is_tried_until_the_height_allows_it() {
    let script = Arc::new(Mutex::new(Script {
        budget: 0,
        height: 100,
        ..Default::default()
    }));
    let (mut w, _logs) = worker(&script);
    w.outbox.k_at_least(21);
    publish(&mut w, 0, 1);
    flush(&mut w, POSTS_PER_FLUSH);
    assert!(w.outbox.waiting_for_a_block());
    assert_eq!(
        w.outbox.poll_timeout(Instant::now()),
        None,
        "no timer: the height wakes it"
    );
    for _ in 0..3 {
        w.watch_height();
        flush(&mut w, POSTS_PER_FLUSH);
    }
    assert_eq!(posts_sent(&script).len(), 1, "no refused post repeated");
    {
        let mut s = script.lock().unwrap();
        s.height = 101;
        s.budget = 22;
    }
    // The refusal told the registration (100): at 101 posts 21 and 22 are allowed, and kept in
    // reserve (plugin_opt_budget_reserve 4); at 103 two more are, and the message goes.
    w.watch_height();
    assert_eq!(w.outbox.poll_timeout(Instant::now()), None);
    {
        let mut s = script.lock().unwrap();
        s.height = 103;
        s.budget = 26;
    }
    w.watch_height();
    assert!(w.outbox.poll_timeout(Instant::now()).is_some());
    flush(&mut w, POSTS_PER_FLUSH);
    assert_eq!(posts_sent(&script).len(), 2);
    assert_eq!(w.queued(), 0);
}
