//! The DHT thread's part of retained values (`crate::relay::retained` decides everything): it carries
//! out the writer's puts in order, and syncs followed users: their index root, the shards that
//! changed, then the values the broker lacks. `dhtget` may wait seconds for the network: this runs on
//! the DHT thread, never on the worker's post and poll path. What it read goes back to the worker on
//! the job's own channel, followed by a wake-up.

use crate::relay::retained::reader::{shards_to_read, to_fetch, Plan, Synced, MAX_FETCH_PER_SYNC};
use crate::relay::retained::writer::Put;
use crate::relay::retained::{self as r};
use crate::twister::Client;
use crossbeam_channel::Sender;

/// How long one dhtget may wait for the network, in milliseconds.
const GET_TIMEOUT_MS: u64 = 3000;

/// Work for the DHT thread; answers go to `reply`.
pub struct RetainedJob {
    pub puts: Vec<Put>,
    pub syncs: Vec<Plan>,
    pub reply: Sender<RetainedReply>,
}

#[derive(Debug)]
pub enum RetainedReply {
    /// Puts twisterd did not take, with why.
    Failed(Vec<Put>, String),
    Synced(Synced),
}

/// Carries out `puts` in order. The first failure ends the batch: what is left is returned with it
/// (twisterd is unreachable or refuses, and order matters: a shard is never written before its values).
pub fn put_all(rpc: &Client, user: &str, puts: Vec<Put>) -> Option<(Vec<Put>, String)> {
    let mut rest = puts.into_iter();
    while let Some(put) = rest.next() {
        let value = match &put.value {
            Some(v) => Some(v.clone()),
            None => match refreshed(rpc, user, &put) {
                Ok(v) => v,
                Err(e) => {
                    let mut failed = vec![put];
                    failed.extend(rest);
                    return Some((failed, e));
                }
            },
        };
        let Some(value) = value else { continue };
        if let Err(e) = rpc.dht_put(user, &put.resource, &value, put.seq) {
            let mut failed = vec![put];
            failed.extend(rest);
            return Some((failed, format!("dhtput: {e}")));
        }
    }
    None
}

/// The value a refresh writes again: what the DHT holds now under the new seq (None: nothing there).
fn refreshed(rpc: &Client, user: &str, put: &Put) -> Result<Option<serde_json::Value>, String> {
    let got = rpc
        .dht_get(user, &put.resource, GET_TIMEOUT_MS)
        .map_err(|e| format!("dhtget: {e}"))?;
    let Some(topic) = &put.topic else {
        return Ok(None);
    };
    if got.value.is_null() || r::decode_record(&got.value, topic).is_err() {
        return Ok(None);
    }
    let mut v = got.value;
    v["s"] = serde_json::json!(put.seq);
    Ok(Some(v))
}

/// One sync of one followed user. Nothing read is trusted: sizes, counts and shapes are checked, and
/// what is wrong is said in `problems` and skipped.
pub fn sync(rpc: &Client, plan: &Plan) -> Synced {
    let user = plan.user.as_str();
    let mut out = Synced {
        user: plan.user.clone(),
        ..Synced::default()
    };
    let root = match rpc.dht_get(user, r::ROOT, GET_TIMEOUT_MS) {
        Ok(root) => root,
        Err(e) => {
            out.problems.push(format!("dhtget {}: {e}", r::ROOT));
            return out;
        }
    };
    if root.value.is_null() {
        return out;
    }
    let shard_seqs = match r::decode_root(&root.value) {
        Ok(s) => s,
        Err(e) => {
            out.problems.push(format!("index root: {e}"));
            return out;
        }
    };
    let mut room = MAX_FETCH_PER_SYNC;
    for i in shards_to_read(&plan.shards, &shard_seqs) {
        let name = r::shard_name(i);
        let got = match rpc.dht_get(user, &name, GET_TIMEOUT_MS) {
            Ok(g) if !g.value.is_null() => g,
            Ok(_) => {
                out.problems.push(format!("{name} is listed but not found"));
                continue;
            }
            Err(e) => {
                out.problems.push(format!("dhtget {name}: {e}"));
                continue;
            }
        };
        let entries = match r::decode_shard(&got.value) {
            Ok((entries, 0)) => entries,
            Ok((entries, bad)) => {
                out.problems
                    .push(format!("{name}: {bad} malformed entries skipped"));
                entries
            }
            Err(e) => {
                out.problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        let (fetch, index_only, more) = to_fetch(&entries, &plan.known, &plan.filters, room);
        out.index_only.extend(index_only);
        out.more |= more;
        let mut complete = !more;
        for e in fetch {
            room = room.saturating_sub(1);
            let value = r::value_name(&e.topic);
            match rpc.dht_get(user, &value, GET_TIMEOUT_MS) {
                Ok(v) if v.value.is_null() => {
                    // Not there yet (the DHT is eventually consistent): read again next time.
                    complete = false;
                }
                Ok(v) => match r::decode_record(&v.value, &e.topic) {
                    Ok(mut rec) => {
                        // The DHT's seq is the one the owner signed.
                        rec.seq = v.seq;
                        out.records.push(rec);
                    }
                    Err(why) => out.problems.push(format!("{value} ({}): {why}", e.topic)),
                },
                Err(why) => {
                    complete = false;
                    out.problems.push(format!("dhtget {value}: {why}"));
                }
            }
        }
        if complete {
            out.shards.push((i, got.seq));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::retained::writer::Writer;
    use crate::relay::retained::{encode_record, Kind, Record};
    use crate::twister::{Twister, TwisterError};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// One user's "s" resources, as dhtput and dhtget see them (highest seq wins); `down` fails calls.
    #[derive(Clone, Default)]
    struct FakeDht {
        items: Arc<Mutex<BTreeMap<String, (i64, Value)>>>,
        down: Arc<Mutex<bool>>,
    }

    impl Twister for FakeDht {
        fn call(&self, method: &str, params: Value) -> Result<Value, TwisterError> {
            if *self.down.lock().unwrap() {
                return Err(TwisterError::Transport("down".into()));
            }
            let resource = params[1].as_str().unwrap().to_string();
            let mut items = self.items.lock().unwrap();
            match method {
                "dhtput" => {
                    let seq = params[5].as_i64().unwrap();
                    if items.get(&resource).is_none_or(|(s, _)| seq > *s) {
                        items.insert(resource, (seq, params[3].clone()));
                    }
                    Ok(Value::Null)
                }
                "dhtget" => Ok(match items.get(&resource) {
                    Some((seq, v)) => json!([{"p": {"seq": seq, "v": v}, "sig_user": "alice"}]),
                    None => json!([]),
                }),
                other => panic!("{other}"),
            }
        }
    }

    fn client(dht: &FakeDht) -> Client {
        Client::new(Box::new(dht.clone()))
    }

    const NOW: u64 = 1_795_000_000_000;

    #[test]
    fn what_the_writer_puts_a_sync_reads_back() {
        let dht = FakeDht::default();
        let mut w = Writer::new(1000);
        w.publish("a/1", b"on", 1, NOW).unwrap();
        w.publish("a/2", &[0, 255], 0, NOW).unwrap();
        w.publish("b/1", b"x", 0, NOW).unwrap();
        assert!(put_all(&client(&dht), "alice", w.take_puts(NOW, Some(3), false)).is_none());
        let plan = Plan {
            user: "alice".into(),
            filters: vec!["b/#".into()],
            ..Plan::default()
        };
        let synced = sync(&client(&dht), &plan);
        assert!(synced.problems.is_empty(), "{:?}", synced.problems);
        assert_eq!(synced.records.len(), 3);
        assert_eq!(
            synced.records[0].topic, "b/1",
            "the broker's interest first"
        );
        assert_eq!(synced.shards.len(), 1);
        // Nothing changed: the next sync reads the root only and fetches nothing.
        let plan2 = Plan {
            shards: vec![synced.shards[0].1],
            ..plan
        };
        assert!(sync(&client(&dht), &plan2).records.is_empty());
    }

    #[test]
    fn malformed_resources_are_skipped_and_said_and_a_missing_value_is_read_again() {
        let dht = FakeDht::default();
        let put = |r: &str, v: Value| {
            dht.items.lock().unwrap().insert(r.into(), (1, v));
        };
        put(r::ROOT, json!({"n": [1, 1]}));
        put(
            &r::shard_name(0),
            json!({"e": [["good", 1, "v"], ["bad", 1, "v"], ["gone", 1, "v"], ["$SYS/x", 1, "v"], 7]}),
        );
        put(&r::shard_name(1), json!("<uninitialized>"));
        let good = Record {
            topic: "good".into(),
            seq: 1,
            kind: Kind::Value,
            qos: 0,
            watermark: None,
            id: None,
            payload: b"1".to_vec(),
        };
        put(&r::value_name("good"), encode_record(&good));
        // Another topic's value under this name: refused.
        put(&r::value_name("bad"), encode_record(&good));
        let synced = sync(
            &client(&dht),
            &Plan {
                user: "alice".into(),
                ..Plan::default()
            },
        );
        assert_eq!(synced.records, vec![good]);
        assert_eq!(synced.problems.len(), 3, "{:?}", synced.problems);
        assert!(
            synced.problems[0].contains("2 malformed entries"),
            "{:?}",
            synced.problems
        );
        assert!(
            synced.shards.is_empty(),
            "'gone' is not there yet: shard 0 is read again next time"
        );
    }

    #[test]
    fn a_refresh_writes_what_the_dht_holds_under_the_new_seq() {
        let dht = FakeDht::default();
        let mut w = Writer::new(1000);
        w.publish("a", b"kept", 2, NOW).unwrap();
        assert!(put_all(&client(&dht), "alice", w.take_puts(NOW, Some(4), false)).is_none());
        let week = NOW + crate::relay::retained::writer::REFRESH_AFTER_MS;
        let puts = w.take_puts(week, None, false);
        assert_eq!(puts[0].value, None);
        assert!(put_all(&client(&dht), "alice", puts.clone()).is_none());
        let (seq, v) = dht.items.lock().unwrap()[&r::value_name("a")].clone();
        assert_eq!(seq, puts[0].seq);
        let rec = r::decode_record(&v, "a").unwrap();
        assert_eq!(
            (rec.seq, rec.payload, rec.qos, rec.watermark),
            (seq, b"kept".to_vec(), 2, Some(4))
        );
        // Nothing there (or not ours): nothing is written.
        dht.items.lock().unwrap().clear();
        let mut w2 = Writer::new(1000);
        w2.publish("b", b"1", 0, NOW).unwrap();
        w2.take_puts(NOW, Some(0), false);
        assert!(put_all(&client(&dht), "alice", w2.take_puts(week, None, false)).is_none());
        assert!(!dht.items.lock().unwrap().contains_key(&r::value_name("b")));
    }

    #[test]
    fn a_failed_put_returns_itself_and_everything_after_it() {
        let dht = FakeDht::default();
        let mut w = Writer::new(1000);
        w.publish("a", b"1", 0, NOW).unwrap();
        let puts = w.take_puts(NOW, Some(0), false);
        *dht.down.lock().unwrap() = true;
        let (failed, why) = put_all(&client(&dht), "alice", puts.clone()).unwrap();
        assert_eq!(failed, puts);
        assert!(why.contains("dhtput"), "{why}");
        assert!(dht.items.lock().unwrap().is_empty());
    }
}
