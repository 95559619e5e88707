//! Peering: dev nodes joined into one small network, as twisterd nodes are (`-connect`, `-addnode`,
//! `-listen`, `-bind`, `-port`).
//!
//! Protocol: newline-delimited JSON objects over TCP, each with a type `t`:
//! - `{"t":"hello","node":<random id>,"digest":{chain, have, dht}}` first on every connection, both
//!   ways: the chain (height, registrations, mempool), the post numbers held per user as ranges and
//!   the DHT keys with their newest "s" seq and item count. The other side answers with every update
//!   the digest shows missing (anti-entropy), so a node that was cut off or restarted catches up.
//! - `{"t":"chain",...}`, `{"t":"piece",...}`, `{"t":"dht",...}`: one change (`node::Update`), sent
//!   when it happens and passed on by every node it changed, so it crosses nodes not directly linked.
//! - `{"t":"ping"}` every second when idle; a connection silent for `DEAD_AFTER` is closed.
//!
//! Outbound links reconnect with backoff (`BACKOFF_MIN` doubling to `BACKOFF_MAX`). Input is bounded:
//! lines up to `MAX_LINE`, malformed input closes the connection (logged, counted), a peer that does
//! not read is dropped once `MAX_QUEUED` lines wait for it (it catches up when it reconnects).

mod session;

use crate::log::LogLevel;
use crate::node::Update;
use crate::rpc::Shared;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MAX_LINE: u64 = 16 << 20;
pub const MAX_QUEUED: usize = 100_000;
pub const MAX_SESSIONS: usize = 64;
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
pub const PING_EVERY: Duration = Duration::from_secs(1);
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerOptions {
    /// Where to accept peers (None: no listener).
    pub listen: Option<SocketAddr>,
    /// `-connect` and `-addnode` addresses (HOST:PORT), kept connected.
    pub connect: Vec<String>,
}

impl PeerOptions {
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || !self.connect.is_empty()
    }
}

/// An open connection, as the hub sees it.
struct Link {
    id: u64,
    tx: Sender<Arc<str>>,
    queued: Arc<AtomicUsize>,
    stream: TcpStream,
}

pub struct Hub {
    links: Mutex<Vec<Link>>,
    next_id: AtomicU64,
    /// This node's random id: a connection to ourselves is recognised by it and closed.
    pub node_id: String,
    pub log_level: LogLevel,
    pub malformed: AtomicU64,
}

impl Hub {
    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn log(&self, level: LogLevel, msg: &str) {
        crate::log::log(level, self.log_level, msg);
    }

    fn register(&self, stream: &TcpStream) -> Option<(u64, Receiver<Arc<str>>, Arc<AtomicUsize>)> {
        let stream = stream.try_clone().ok()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.links().push(Link {
            id,
            tx,
            queued: queued.clone(),
            stream,
        });
        Some((id, rx, queued))
    }

    fn unregister(&self, id: u64) {
        self.links().retain(|l| l.id != id);
    }

    pub fn count(&self) -> usize {
        self.links().len()
    }

    /// Queues `line` for every link but `except`; a link too far behind is closed.
    pub fn broadcast(&self, line: Arc<str>, except: Option<u64>) {
        for l in self.links().iter() {
            if Some(l.id) == except {
                continue;
            }
            if l.queued.load(Ordering::Relaxed) >= MAX_QUEUED {
                let _ = l.stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            l.queued.fetch_add(1, Ordering::Relaxed);
            let _ = l.tx.send(line.clone());
        }
    }
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = crate::node::unix_now() as u64 ^ u64::from(std::process::id()) << 32;
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts the listener, the outbound links and the hub; returns the address peers reach us on.
pub fn start(
    shared: Arc<Shared>,
    opts: &PeerOptions,
    updates: Receiver<Update>,
    log_level: LogLevel,
) -> Result<Option<SocketAddr>, String> {
    let hub = Arc::new(Hub {
        links: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(1),
        node_id: random_id(),
        log_level,
        malformed: AtomicU64::new(0),
    });
    let mut bound = None;
    if let Some(addr) = opts.listen {
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen for peers on {addr}: {e}"))?;
        bound = Some(listener.local_addr().map_err(|e| e.to_string())?);
        let (shared, hub) = (shared.clone(), hub.clone());
        spawn("peer-accept", move || accept(listener, shared, hub))?;
    }
    for addr in &opts.connect {
        let (shared, hub, addr) = (shared.clone(), hub.clone(), addr.clone());
        spawn("peer-connect", move || keep_connected(&addr, shared, hub))?;
    }
    spawn("peer-hub", move || run_hub(shared, hub, updates))?;
    Ok(bound)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| format!("cannot start {name}: {e}"))
}

fn accept(listener: TcpListener, shared: Arc<Shared>, hub: Arc<Hub>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if hub.count() >= MAX_SESSIONS {
            continue;
        }
        let (shared, hub) = (shared.clone(), hub.clone());
        let _ = spawn("peer-in", move || session::run(stream, &shared, &hub));
    }
}

/// Keeps one outbound link up: connects, runs it until it breaks, waits (backoff), again.
fn keep_connected(addr: &str, shared: Arc<Shared>, hub: Arc<Hub>) {
    let mut backoff = BACKOFF_MIN;
    let mut said_down = false;
    loop {
        let target = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .ok()
            .and_then(|mut a| a.next());
        let stream = target.and_then(|t| TcpStream::connect_timeout(&t, CONNECT_TIMEOUT).ok());
        match stream {
            Some(s) => {
                said_down = false;
                let began = Instant::now();
                session::run(s, &shared, &hub);
                if began.elapsed() > Duration::from_secs(5) {
                    backoff = BACKOFF_MIN;
                }
            }
            None if !said_down => {
                said_down = true;
                hub.log(
                    LogLevel::Info,
                    &format!("peer {addr} unreachable, retrying"),
                );
            }
            None => {}
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Sends the node's own changes to every peer, and mines blocks when they are due even if no RPC
/// comes (the chain advances on calls otherwise).
fn run_hub(shared: Arc<Shared>, hub: Arc<Hub>, updates: Receiver<Update>) {
    loop {
        match updates.recv_timeout(Duration::from_millis(100)) {
            Ok(u) => match serde_json::to_string(&u) {
                Ok(line) => hub.broadcast(line.into(), None),
                Err(e) => hub.log(LogLevel::Error, &format!("cannot encode an update: {e}")),
            },
            Err(RecvTimeoutError::Timeout) => {
                let mut node = shared.node();
                node.advance_chain(Instant::now());
                node.peer_connections = hub.count();
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
