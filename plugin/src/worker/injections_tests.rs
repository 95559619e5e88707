//! The decision of `worker/injections.rs`, with the injection log on real files (mapped memory
//! modelled by the spool's `Heap`) and the start-up merge of `startup::open_injection_log`: an id
//! handed to the broker's thread but never injected (a kill -9 in between) is neither kept as seen
//! nor acknowledged, so it is delivered when it comes again; an injected one is kept and
//! acknowledged, and never delivered twice.

use super::injections::Handled;
use super::*;
use crate::injected::{self, Mark};
use crate::spool::tests::Heap;
use crate::wire::MessageId;

struct Quiet;

impl Twister for Quiet {
    fn call(&self, _: &str, _: serde_json::Value) -> Result<serde_json::Value, TwisterError> {
        Ok(serde_json::Value::Null)
    }
}

fn config(state_file: &std::path::Path) -> Arc<Config> {
    let opts: Vec<(String, String)> = [
        ("rpc_user", "u"),
        ("rpc_password", "p"),
        ("user", "bob"),
        ("follow", "alice"),
        ("subscribe", "t/#"),
        ("state_file", state_file.to_str().unwrap()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Arc::new(crate::config::parse(&opts).unwrap())
}

fn worker(cfg: &Arc<Config>, reader: injected::Reader) -> (Worker, crate::bus::FromWorker) {
    let (_to_worker, inbox) = crossbeam_channel::bounded(16);
    let (to_broker, from_worker) = crate::bus::to_broker(1024, 1024);
    let (dht_tx, _) = crossbeam_channel::bounded(16);
    let health = Arc::new(Health::default());
    let dht = DhtThread::spawn(
        cfg.clone(),
        Box::new(Quiet),
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
        injections: Some(reader),
        settled: None,
    };
    let w = Worker::new(cfg.clone(), Box::new(Quiet), inbox, to_broker, start);
    (w, from_worker)
}

fn id(seq: u64) -> MessageId {
    MessageId { epoch: 77, seq }
}

fn message(n: u64) -> Message {
    Message {
        topic: format!("t/{n}"),
        payload: b"x".to_vec(),
        qos: 1,
        retain: false,
    }
}

/// The seqs of alice's epoch 77 acknowledged so far.
fn acknowledged(w: &mut Worker) -> Vec<u64> {
    w.receipts.ledger.broker_caught_up();
    let acks = w.receipts.ledger.acks("alice");
    (1..=3)
        .filter(|s| {
            acks.and_then(|a| a.get(&77))
                .is_some_and(|r| r.contains(*s))
        })
        .collect()
}

#[test]
fn an_id_handed_but_not_injected_is_delivered_again_and_an_injected_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("bob.state");
    let cfg = config(&state_file);
    let log = injected::path_beside(&state_file);
    let (mut broker_thread, handle) = injected::open_with(&log, &Heap::default(), 8).unwrap();
    let (mut w, from_worker) = worker(&cfg, handle.reader());
    // Read: 1 and 2 wanted here, 3 not wanted (settled at once: nothing to inject).
    for seq in 1..=2 {
        w.hand_one(Handled::Read {
            from: "alice".into(),
            id: Some(id(seq)),
            wanted: Some(message(seq)),
            urgent: true,
        });
    }
    w.hand_one(Handled::Read {
        from: "alice".into(),
        id: Some(id(3)),
        wanted: None,
        urgent: true,
    });
    // A copy of 1 before the broker took it: not acknowledged.
    w.hand_one(Handled::Again {
        from: "alice".into(),
        id: id(1),
    });
    assert_eq!(
        acknowledged(&mut w),
        vec![3],
        "only what needs no injection"
    );
    // The broker's thread takes 1 and 2 off the channel; it injects 2 (and writes it down), then the
    // process is killed before it injects 1.
    let mut marks = Vec::new();
    while let Some(item) = from_worker.try_recv() {
        if let ToBroker::PublishRecorded(m, mark) = item {
            marks.push((m.topic, mark));
        }
    }
    assert_eq!(marks.len(), 2, "both handed with their marks");
    assert_eq!(marks[1].0, "t/2");
    assert!(broker_thread.record(&marks[1].1));
    drop(broker_thread); // kill -9: the mapping's stores are in the file
    w.take_injections();
    assert_eq!(acknowledged(&mut w), vec![2, 3], "2 once the log has it");
    w.hand_one(Handled::Again {
        from: "alice".into(),
        id: id(2),
    });
    // The state file keeps 2 and 3 as seen, not 1.
    w.state_dirty = true;
    w.save_state_now();
    let saved = Saved::load(&state_file).unwrap().unwrap();
    assert!(!saved.seen.seen("alice", id(1)));
    assert!(saved.seen.seen("alice", id(2)) && saved.seen.seen("alice", id(3)));
    drop(w);

    // Killed before the save: the start merges the log into the state file's set.
    std::fs::remove_file(&state_file).unwrap();
    let (mut broker_thread, _) = injected::open_with(&log, &Heap::default(), 8).unwrap();
    assert!(broker_thread.record(&Mark::new("alice", id(2), true).unwrap()));
    drop(broker_thread);
    let mut saved = None;
    let opened = crate::startup::open_injection_log(&cfg, &Heap::default(), &mut saved).unwrap();
    assert!(opened.is_some());
    let mut seen = saved.expect("created by the merge").seen;
    assert!(
        Saved::load(&state_file)
            .unwrap()
            .unwrap()
            .seen
            .seen("alice", id(2)),
        "written to the state file before the log starts afresh"
    );
    assert_eq!(
        seen.check("alice", Some(id(1))),
        crate::dedup::Sight::First,
        "handed, never injected: delivered when it comes again"
    );
    assert_eq!(
        seen.check("alice", Some(id(2))),
        crate::dedup::Sight::Again,
        "injected: not delivered again"
    );
    assert_eq!(
        injected::recover(&log).unwrap(),
        injected::Recovered::default(),
        "the log starts afresh"
    );
}
