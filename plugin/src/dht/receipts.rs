//! Receipts in the DHT (`crate::relay::receipts`): a receiver writes its own resource per sender; a
//! sender reads each receiver's resource about it and accepts it only when the receiver signed it.

use super::DHTGET_TIMEOUT_MS;
use crate::relay::receipts::codec::{self, Acks};
use crate::relay::receipts::ledger::{resolve, Write, Written};
use crate::twister::Client;

/// Carries out one write of our receipts for `write.sender` (reading the resource first when its seq
/// is unknown).
pub fn write(rpc: &Client, user: &str, write: &Write) -> Written {
    let stored = match write.seq {
        Some(_) => None,
        None => {
            let got = rpc
                .dht_get(user, &write.resource, DHTGET_TIMEOUT_MS)
                .map_err(|e| format!("dhtget: {e}"))?;
            // Only our own earlier value is merged; seq 0 means nothing stored yet.
            let ours = got.writer.as_deref() == Some(user);
            Some((
                if ours {
                    got.value
                } else {
                    serde_json::Value::Null
                },
                got.seq,
            ))
        }
    };
    let (value, seq, before) = resolve(write, stored.as_ref().map(|(v, s)| (v, *s)));
    rpc.dht_put(user, &write.resource, &value, seq)
        .map_err(|e| format!("dhtput: {e}"))?;
    Ok((seq, before))
}

/// `receiver`'s receipts of our (`user`'s) messages; nothing when it wrote none yet.
pub fn read(rpc: &Client, user: &str, receiver: &str) -> Result<Acks, String> {
    let got = rpc
        .dht_get(receiver, &codec::resource(user), DHTGET_TIMEOUT_MS)
        .map_err(|e| format!("dhtget: {e}"))?;
    if got.seq == 0 && got.value.is_null() {
        return Ok(Acks::new());
    }
    match got.writer.as_deref() {
        Some(w) if w == receiver => {}
        other => {
            return Err(format!(
                "the value is signed by {}, not by {receiver}: ignored",
                other.unwrap_or("someone else")
            ))
        }
    }
    codec::decode(&got.value).map_err(|e| format!("malformed receipts: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::receipts::ledger::Ledger;
    use crate::relay::receipts::MessageId;
    use crate::twister::{Twister, TwisterError};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    type Stored = BTreeMap<(String, String), (Value, i64, String)>;

    /// DHT "s" values as twisterd keeps them: the highest seq wins, the signer is kept.
    #[derive(Clone, Default)]
    struct Dht(Arc<Mutex<Stored>>);

    impl Twister for Dht {
        fn call(&self, method: &str, p: Value) -> Result<Value, TwisterError> {
            let mut stored = self.0.lock().unwrap();
            let key = (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            );
            match method {
                "dhtput" => {
                    let seq = p[5].as_i64().unwrap();
                    if stored.get(&key).is_none_or(|(_, s, _)| seq > *s) {
                        let signer = p[4].as_str().unwrap().to_string();
                        stored.insert(key, (p[3].clone(), seq, signer));
                    }
                    Ok(Value::Null)
                }
                "dhtget" => Ok(match stored.get(&key) {
                    None => json!([]),
                    Some((v, seq, signer)) => json!([{
                        "p": {"seq": seq, "v": v, "target": {"n": key.0, "r": key.1, "t": "s"}},
                        "sig_user": signer,
                    }]),
                }),
                other => panic!("unexpected {other}"),
            }
        }
    }

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 9, seq }
    }

    #[test]
    fn receipts_written_by_the_receiver_are_read_by_the_sender_across_a_restart() {
        let dht = Dht::default();
        let rpc = Client::new(Box::new(dht.clone()));
        let now = Instant::now();
        // bob receives alice's 1..=3, writes; restarts; receives 4, writes again.
        for (run, seqs) in [(1, 1..=3u64), (2, 4..=4)] {
            let mut ledger = Ledger::default();
            for s in seqs {
                ledger.handed("alice", id(s), true);
            }
            ledger.broker_caught_up();
            for w in ledger.writes_due(now, Duration::from_secs(1)) {
                let done = write(&rpc, "bob", &w);
                assert_eq!(done.as_ref().map(|d| d.0), Ok(run), "seq of run {run}");
                ledger.written(&w.sender, done);
            }
        }
        let acks = read(&rpc, "alice", "bob").unwrap();
        assert_eq!(acks[&9].iter().collect::<Vec<_>>(), [(1, 4)]);
        // Nothing written by carol yet: no receipts, no error.
        assert!(read(&rpc, "alice", "carol").unwrap().is_empty());
    }

    #[test]
    fn receipts_not_signed_by_the_receiver_are_refused() {
        let dht = Dht::default();
        let forged = json!({"v": 1, "e": [[9, "1+63"]]});
        dht.0.lock().unwrap().insert(
            ("bob".into(), codec::resource("alice")),
            (forged, 5, "mallory".into()),
        );
        let rpc = Client::new(Box::new(dht));
        let e = read(&rpc, "alice", "bob").unwrap_err();
        assert!(e.contains("not by bob"), "{e}");
    }
}
