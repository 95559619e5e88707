//! One peer connection, inbound or outbound: hello both ways, then updates; pings keep it checked.

use super::{Hub, DEAD_AFTER, MAX_LINE, PING_EVERY};
use crate::log::LogLevel;
use crate::node::{Digest, Update};
use crate::rpc::Shared;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

#[derive(Serialize, Deserialize)]
struct Hello {
    node: String,
    digest: Digest,
}

enum Frame {
    Hello(Box<Hello>),
    Ping,
    Update(Box<Update>),
}

fn parse(line: &str) -> Result<Frame, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    match v.get("t").and_then(Value::as_str) {
        Some("hello") => serde_json::from_value(v)
            .map(|h| Frame::Hello(Box::new(h)))
            .map_err(|e| e.to_string()),
        Some("ping") => Ok(Frame::Ping),
        Some(_) => serde_json::from_value(v)
            .map(|u| Frame::Update(Box::new(u)))
            .map_err(|e| e.to_string()),
        None => Err("no type".into()),
    }
}

fn hello_line(shared: &Shared, hub: &Hub) -> Option<String> {
    let digest = shared.node().digest();
    let mut v = serde_json::to_value(Hello {
        node: hub.node_id.clone(),
        digest,
    })
    .ok()?;
    v.as_object_mut()?.insert("t".into(), "hello".into());
    Some(v.to_string())
}

/// Writes queued lines; a ping when nothing was sent for a second. Ends when the link is dropped.
fn write_loop(mut stream: TcpStream, rx: Receiver<Arc<str>>, queued: Arc<AtomicUsize>) {
    loop {
        let line: Arc<str> = match rx.recv_timeout(PING_EVERY) {
            Ok(l) => {
                queued.fetch_sub(1, Ordering::Relaxed);
                l
            }
            Err(RecvTimeoutError::Timeout) => Arc::from(r#"{"t":"ping"}"#),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let ok = stream
            .write_all(line.as_bytes())
            .and_then(|_| stream.write_all(b"\n"));
        if ok.is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Runs one connection until it breaks or the peer misbehaves.
pub fn run(stream: TcpStream, shared: &Shared, hub: &Hub) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(DEAD_AFTER));
    // A peer that stops reading must not block us forever either.
    let _ = stream.set_write_timeout(Some(DEAD_AFTER));
    let Some((id, rx, queued)) = hub.register(&stream) else {
        return;
    };
    let writer = match stream.try_clone() {
        Ok(w) => {
            let queued = queued.clone();
            std::thread::Builder::new()
                .name("peer-write".into())
                .spawn(move || write_loop(w, rx, queued))
                .ok()
        }
        Err(_) => None,
    };
    let send = |line: String| {
        queued.fetch_add(1, Ordering::Relaxed);
        hub.send_to(id, line.into());
    };
    if let (Some(_), Some(hello)) = (&writer, hello_line(shared, hub)) {
        hub.log(LogLevel::Info, &format!("peer {peer} connected"));
        send(hello);
        read_loop(&stream, shared, hub, id, &peer, &send);
    }
    hub.unregister(id);
    let _ = stream.shutdown(Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    shared.node().peer_connections = hub.count();
    hub.log(LogLevel::Info, &format!("peer {peer} disconnected"));
}

fn read_loop(
    stream: &TcpStream,
    shared: &Shared,
    hub: &Hub,
    id: u64,
    peer: &str,
    send: &dyn Fn(String),
) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    {
        shared.node().peer_connections = hub.count();
    }
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => {
                return hub.refuse(peer, "line too long");
            }
            Ok(_) => {}
        }
        match parse(line.trim_end()) {
            Err(e) => return hub.refuse(peer, &e),
            Ok(Frame::Ping) => {}
            Ok(Frame::Hello(h)) => {
                if h.node == hub.node_id {
                    hub.log(LogLevel::Info, &format!("peer {peer} is this node: closed"));
                    return;
                }
                let missing = shared.node().missing_from(&h.digest);
                for u in missing {
                    if let Ok(l) = serde_json::to_string(&u) {
                        send(l);
                    }
                }
            }
            Ok(Frame::Update(u)) => {
                let changed = shared.node().apply_update(&u);
                match changed {
                    Ok(true) => hub.broadcast(Arc::from(line.trim_end()), Some(id)),
                    Ok(false) => {}
                    Err(e) => return hub.refuse(peer, &e),
                }
            }
        }
    }
}

impl Hub {
    fn send_to(&self, id: u64, line: Arc<str>) {
        if let Some(l) = self.links().iter().find(|l| l.id == id) {
            let _ = l.tx.send(line);
        }
    }

    fn refuse(&self, peer: &str, why: &str) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
        let why: String = why.chars().take(200).collect();
        self.log(
            LogLevel::Error,
            &format!("peer {peer} sent malformed input ({why}): connection closed"),
        );
    }
}
