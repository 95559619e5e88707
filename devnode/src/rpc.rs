//! JSON-RPC 1.0 framing as twisterd does it: single requests and batches, `params` must be an array,
//! errors with twisterd's codes and HTTP statuses, and the connection closed after a lone error.

use crate::error::*;
use crate::fault::Faults;
use crate::node::{find_method, Node};
use crate::params::Params;
use crate::store::Store;
use serde_json::{json, Value};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub struct Shared {
    pub node: Mutex<Node>,
    pub faults: Mutex<Faults>,
    /// With -datadir: where the state goes, and what was written there.
    durable: Option<(Store, Mutex<Saved>)>,
}

#[derive(Default)]
struct Saved {
    /// The node's generation last on disk.
    generation: u64,
    /// Pieces' log lines not yet written (kept across a failed write).
    pending: Vec<String>,
}

impl Shared {
    pub fn new(mut node: Node, store: Option<Store>) -> Self {
        if store.is_some() {
            node.journal = Some(Vec::new());
        }
        Shared {
            node: Mutex::new(node),
            faults: Mutex::new(Faults::default()),
            durable: store.map(|s| (s, Mutex::new(Saved::default()))),
        }
    }

    /// Writes what changed since the last write (new pieces appended to the log; the snapshot when
    /// anything else changed) and returns once it is on disk. Called before a reply is sent, so what
    /// a call changed survives kill -9 once answered, and every flush interval (for what peers sent).
    /// Concurrent callers share one write (group commit).
    pub fn make_durable(&self) -> Result<(), String> {
        let Some((store, saved)) = &self.durable else {
            return Ok(());
        };
        let mut saved = saved.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, snapshot) = {
            let mut node = self.node();
            if node.generation <= saved.generation {
                return Ok(());
            }
            let fresh = node
                .journal
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            for (user, k) in fresh {
                let piece = node
                    .state
                    .torrents
                    .get(&user)
                    .and_then(|t| t.pieces.get(&k));
                if let Some(line) = piece.and_then(|p| crate::store::piece_line(&user, k, p).ok()) {
                    saved.pending.push(line);
                }
            }
            let snapshot = if node.dirty {
                node.dirty = false;
                Some(crate::store::snapshot_bytes(&node.state))
            } else {
                None
            };
            (node.generation, snapshot)
        };
        if !saved.pending.is_empty() {
            if let Err(e) = store.append(&saved.pending) {
                if snapshot.is_some() {
                    self.node().dirty = true;
                }
                return Err(e.to_string());
            }
            saved.pending.clear();
        }
        if let Some(bytes) = snapshot {
            let result = match bytes {
                Ok(b) => store.save_bytes(&b).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                self.node().dirty = true;
                return Err(e);
            }
        }
        saved.generation = generation;
        Ok(())
    }

    /// Forgets the newest pieces of users, in memory and on disk (see `Node::forget_newest`).
    fn forget_newest(&self, forget: &[(String, usize)]) -> Result<Value, RpcError> {
        let failed = |e: String| RpcError::new(RPC_MISC_ERROR, format!("devnode_fault: {e}"));
        // What is pending goes to disk first, so that the log is rewritten without it afterwards.
        self.make_durable().map_err(failed)?;
        let mut out = serde_json::Map::new();
        let mut gone = Vec::new();
        {
            let mut node = self.node();
            for (user, n) in forget {
                let ks = node.forget_newest(user, *n);
                gone.extend(ks.iter().map(|k| (user.clone(), *k)));
                out.insert(user.clone(), json!(ks));
            }
        }
        if let Some((store, _)) = &self.durable {
            store.forget(&gone).map_err(|e| failed(e.to_string()))?;
        }
        self.make_durable().map_err(failed)?;
        Ok(Value::Object(out))
    }

    /// A panic while holding the lock must not take the node down: the state is only ever changed
    /// after every check passed, so it is still consistent.
    pub fn node(&self) -> MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// twisterd closes the connection after an error reply.
    pub close: bool,
}

fn envelope(result: Result<Value, RpcError>, id: Value) -> Value {
    match result {
        Ok(v) => json!({"result": v, "error": null, "id": id}),
        Err(e) => json!({"result": null, "error": e.to_json(), "id": id}),
    }
}

fn reply(status: u16, v: &Value, close: bool) -> Reply {
    Reply {
        status,
        body: serde_json::to_vec(v).unwrap_or_default(),
        close,
    }
}

pub fn handle_body(shared: &Shared, body: &[u8]) -> Reply {
    let reply = handle_parsed(shared, body);
    if let Err(e) = shared.make_durable() {
        eprintln!("twister-devnode: saving state before answering failed: {e}");
    }
    reply
}

fn handle_parsed(shared: &Shared, body: &[u8]) -> Reply {
    let read = crate::escapes::as_twisterd_reads(body);
    let parsed: Value = match serde_json::from_slice(&read) {
        Ok(v) => v,
        Err(_) if read.as_ref() != body && serde_json::from_slice::<Value>(body).is_ok() => {
            // Valid JSON whose escapes twisterd turns into bytes that are not UTF-8: twisterd's text
            // checks refuse it (newpostmsg's words; its other calls fail in their own ways).
            let id = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            let e = RpcError::new(
                RPC_INTERNAL_ERROR,
                "error signing post with private key of user",
            );
            return reply(e.http_status(), &envelope(Err(e), id), true);
        }
        Err(_) => {
            let e = RpcError::new(RPC_PARSE_ERROR, "Parse error");
            return reply(e.http_status(), &envelope(Err(e), Value::Null), true);
        }
    };
    match &parsed {
        Value::Array(batch) => {
            let replies: Vec<Value> = batch
                .iter()
                .map(|req| {
                    let id = req.get("id").cloned().unwrap_or(Value::Null);
                    envelope(execute(shared, req), id)
                })
                .collect();
            reply(200, &Value::Array(replies), false)
        }
        Value::Object(_) => {
            let id = parsed.get("id").cloned().unwrap_or(Value::Null);
            match execute(shared, &parsed) {
                Ok(v) => reply(200, &envelope(Ok(v), id), false),
                Err(e) => reply(e.http_status(), &envelope(Err(e), id), true),
            }
        }
        _ => {
            let e = RpcError::new(RPC_PARSE_ERROR, "Top-level object parse error");
            reply(e.http_status(), &envelope(Err(e), Value::Null), true)
        }
    }
}

/// One request object: framing checks, then the method under the node's lock.
pub fn execute(shared: &Shared, req: &Value) -> Result<Value, RpcError> {
    let Some(obj) = req.as_object() else {
        return Err(RpcError::new(RPC_INVALID_REQUEST, "Invalid Request object"));
    };
    let method = match obj.get("method") {
        None => return Err(RpcError::new(RPC_INVALID_REQUEST, "Missing method")),
        Some(Value::String(m)) => m.as_str(),
        Some(_) => {
            return Err(RpcError::new(
                RPC_INVALID_REQUEST,
                "Method must be a string",
            ))
        }
    };
    let empty = Vec::new();
    let params = match obj.get("params") {
        None | Some(Value::Null) => &empty,
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(RpcError::new(
                RPC_INVALID_REQUEST,
                "Params must be an array",
            ))
        }
    };
    if method == "devnode_fault" {
        let p = Params::new(params, 1, 1, crate::fault::USAGE)?;
        let v = p.value(0)?;
        let forget = crate::fault::forget_request(v)?;
        let mut answer = {
            let mut faults = shared.faults();
            faults.configure(v)?;
            faults.describe()
        };
        if !forget.is_empty() {
            answer["forgotten"] = shared.forget_newest(&forget)?;
        }
        return Ok(answer);
    }
    let Some(m) = find_method(method) else {
        return Err(RpcError::new(RPC_METHOD_NOT_FOUND, "Method not found"));
    };
    let mut node = shared.node();
    node.advance_chain(Instant::now());
    node.counters.calls += 1;
    let result = Params::new(params, m.min, m.max, m.usage).and_then(|p| (m.call)(&mut node, &p));
    match &result {
        Ok(_) if m.mutates => node.touch(),
        Ok(_) => {}
        Err(_) => node.counters.errors += 1,
    }
    result
}
