//! Replays every request recorded from a real twisterd 0.9.40 (tests/data/transcripts*.jsonl, a copy of
//! the recording in shared/twister, kept in the repository so that every clone replays it)
//! against a fresh dev node prepared the same way, and compares HTTP statuses, result shapes (keys and
//! JSON types), error codes and messages.
//!
//! The recording spans three nodes; the dev node is one machine with one wallet, and it does not
//! implement twisterd's methods the plugin does not use. Those exchanges are listed in `EXPECTED`
//! with the reason; any other difference fails the test, and so does an expected one that disappears
//! (so the list stays true).

mod support;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use support::*;

fn transcripts() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("transcripts") && f.ends_with(".jsonl"))
    });
    files.sort();
    files
}

/// JSON type plus, for objects, the keys and their shapes; arrays compare their first elements.
fn shape_diff(path: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let wk: Vec<&String> = w.keys().collect();
            let gk: Vec<&String> = g.keys().collect();
            let (mut ws, mut gs) = (wk.clone(), gk.clone());
            ws.sort();
            gs.sort();
            // Objects keyed by user name (getlasthave, getdirectmsgs) hold data, not a schema.
            let data_keyed = path.ends_with("getlasthave")
                || path.ends_with("getdirectmsgs")
                || path.ends_with("getnumpieces");
            if ws != gs && !data_keyed {
                return Some(format!("{path}: keys {ws:?} != {gs:?}"));
            }
            w.iter()
                .filter_map(|(k, wv)| {
                    g.get(k)
                        .and_then(|gv| shape_diff(&format!("{path}.{k}"), wv, gv))
                })
                .next()
        }
        // Which elements a list holds (and in what order, for posts of the same second) depends on
        // three nodes' timing: the recorded first element must have the shape of one of ours.
        (Value::Array(w), Value::Array(g)) => match w.first() {
            Some(wf) if !g.is_empty() => {
                let diffs: Vec<String> = g
                    .iter()
                    .filter_map(|gv| shape_diff(&format!("{path}[]"), wf, gv))
                    .collect();
                (diffs.len() == g.len()).then(|| diffs[0].clone())
            }
            _ => None,
        },
        (Value::Number(w), Value::Number(g)) if w.is_f64() == g.is_f64() => None,
        (w, g) if std::mem::discriminant(w) == std::mem::discriminant(g) => None,
        (w, g) => Some(format!("{path}: {} != {}", kind(w), kind(g))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "real",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "array",
        Value::Object(_) => "obj",
    }
}

/// Recorded exchanges the dev node answers differently on purpose, with why.
const EXPECTED: &[(usize, &str)] = &[
    (15, "getrawmempool: not implemented (no transactions on one machine)"),
    (16, "getrawmempool: not implemented"),
    (17, "getrawmempool: not implemented"),
    (18, "getrawmempool: not implemented"),
    (26, "getrawmempool: not implemented"),
    (27, "getmininginfo: not implemented"),
    (29, "dumppubkey: not implemented (no real keys)"),
    (30, "dumppubkey: not implemented"),
    (31, "listusernamespartial: not implemented"),
    (32, "getrawtransaction: not implemented"),
    (40, "getnumpieces: not implemented"),
    (41, "listusernamespartial: not implemented"),
    (42, "listusernamespartial: not implemented"),
    (53, "torrentstatus: not implemented (no torrents)"),
    (56, "torrentstatus: not implemented"),
    (67, "getpeerinfo: not implemented (no peers)"),
    (78, "getnumpieces: not implemented"),
    (84, "getnumpieces: not implemented"),
    (94, "getnumpieces: not implemented"),
    (97, "newpostmsg as bob on node 1: one machine has one wallet, and bob is in it"),
    (204, "dhtput signed by bob on node 1: bob is in the dev node's one wallet, so the next check answers"),
    (223, "getmentions: not implemented"),
    (227, "newrtmsg: not implemented"),
    (228, "newpostcustom: not implemented"),
    (230, "peekpost: not implemented"),
    (231, "getpieceavailability: not implemented"),
    (232, "getpiecemaxseen: not implemented"),
    (233, "usernametouid: not implemented"),
    (234, "uidtousername: not implemented"),
    (235, "search: not implemented"),
    (236, "gettrendinghashtags: not implemented"),
    (237, "getspamposts: not implemented"),
    (238, "getspammsg: not implemented"),
    (239, "getfavs: not implemented"),
    (240, "signmessage: not implemented (no real keys)"),
    (241, "getpeerinfo: not implemented"),
    (243, "getbestblockhash: not implemented"),
    (244, "getlastsoftcheckpoint: not implemented"),
    (245, "torrentstatus: not implemented"),
    (254, "raw getposts of the newpostcustom post: newpostcustom is not implemented, so no such post"),
    (258, "peekpost: not implemented"),
    (259, "peekpost: not implemented"),
    (275, "peekpost: not implemented"),
    (276, "node 3's first getposts carries its own promoted post; one machine showed it once, earlier"),
];

/// Blocks the recording says were mined outside the RPCs it lists.
fn mined_in_note(note: &str) -> i64 {
    if note.starts_with("mined 20 blocks") {
        20
    } else if note.starts_with("mined 30 more blocks") {
        30
    } else if note.starts_with("carol registered") {
        2
    } else {
        0
    }
}

#[test]
fn replays_the_recorded_twisterd_session() {
    let files = transcripts();
    assert!(
        !files.is_empty(),
        "devnode/tests/data/transcripts*.jsonl is missing: the recording of a real twisterd must be replayed"
    );
    // Regtest: blocks only when asked; the promoted post as on a fresh node.
    let n = Node::start(&["-blockinterval=0"]);
    // The recording starts "right after start + 1 block mined".
    n.ok("devnode_mine", json!([1]));
    let mut report: BTreeMap<usize, String> = BTreeMap::new();
    let mut matched = 0;
    let mut index = 0;
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let i = index;
            index += 1;
            let rec: Value = serde_json::from_str(line).unwrap();
            let note = rec["note"].as_str().unwrap_or("");
            let Some(want) = rec.get("response") else {
                let blocks = mined_in_note(note);
                if blocks > 0 {
                    n.ok("devnode_mine", json!([blocks]));
                }
                continue;
            };
            let want_status = rec["http_status"].as_u64().unwrap() as u16;
            // A post signed at height H was made at best height H+1: mine what the recording did not note.
            if let Some(h) = want["result"]["userpost"]["height"].as_i64() {
                let best = n.ok("getblockcount", json!([])).as_i64().unwrap();
                if best < h + 1 {
                    n.ok("devnode_mine", json!([h + 1 - best]));
                }
            }
            let (status, got) = if rec["method"].is_string() {
                let body = json!({"jsonrpc": "1.0", "id": 1, "method": rec["method"], "params": rec["params"]}).to_string();
                n.post(&body)
            } else if rec["http_method"] == "GET" {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", n.port)).unwrap();
                let (head, body) = raw_exchange(
                    &mut s,
                    &format!("GET / HTTP/1.1\r\nAuthorization: {}\r\n\r\n", basic()),
                );
                (head[9..12].parse().unwrap(), Value::String(body))
            } else if note.contains("wrong password") {
                n.post_as(rec["request_body"].as_str().unwrap(), Some((USER, "wrong")))
            } else if note.contains("no Authorization") {
                n.post_as(rec["request_body"].as_str().unwrap(), None)
            } else {
                n.post(rec["request_body"].as_str().unwrap())
            };
            let method = rec["method"].as_str().unwrap_or("(raw)");
            let diff = if status != want_status {
                Some(format!("HTTP {status}, recorded {want_status}"))
            } else if let (Some(we), Some(ge)) =
                (want.get("error").filter(|e| !e.is_null()), got.get("error"))
            {
                (we != ge).then(|| format!("error {ge}, recorded {we}"))
            } else if want.is_string() != got.is_string() {
                Some("body kind differs".into())
            } else if want.is_string() {
                None // HTML pages
            } else if want.is_array() {
                // a batch
                shape_diff(method, want, &got)
            } else {
                shape_diff(method, &want["result"], &got["result"])
            };
            match diff {
                Some(d) => {
                    report.insert(i, format!("#{i} {method} {}: {d} ({note})", rec["params"]));
                }
                None => matched += 1,
            }
        }
    }
    let expected: BTreeMap<usize, &str> = EXPECTED.iter().copied().collect();
    let unexpected: Vec<&String> = report
        .iter()
        .filter(|(i, _)| !expected.contains_key(i))
        .map(|(_, r)| r)
        .collect();
    let vanished: Vec<String> = expected
        .iter()
        .filter(|(i, _)| !report.contains_key(i))
        .map(|(i, why)| format!("#{i} {why}"))
        .collect();
    eprintln!(
        "conformance: {matched} exchanges match, {} differ as expected",
        report.len() - unexpected.len()
    );
    for (i, r) in &report {
        eprintln!(
            "  {} {r}",
            if expected.contains_key(i) {
                "expected:"
            } else {
                "UNEXPECTED:"
            }
        );
    }
    assert!(matched >= 150, "too few exchanges compared: {matched}");
    assert!(
        unexpected.is_empty(),
        "unexpected differences from twisterd:\n{}",
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        vanished.is_empty(),
        "these now match twisterd: remove them from EXPECTED:\n{}",
        vanished.join("\n")
    );
}
