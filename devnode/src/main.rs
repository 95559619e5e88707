//! twister-devnode: a twisterd-compatible JSON-RPC node for one machine.

mod error;
mod escapes;
mod fault;
mod http;
mod log;
mod node;
mod options;
mod params;
mod peer;
mod rpc;
mod store;

use log::{log, LogLevel};
use node::Node;
use options::{Options, OptionsError};
use rpc::Shared;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn flush(shared: &Shared, max: LogLevel) {
    if let Err(e) = shared.make_durable() {
        log(
            LogLevel::Error,
            max,
            &format!("saving state failed (will retry): {e}"),
        );
    }
}

/// twisterd's `stop` (and SIGTERM) waits for its RPC clients to close their connections, kept-alive
/// idle ones included; so does this node, up to STOP_WAIT_FOR_CLIENTS.
const STOP_WAIT_FOR_CLIENTS: Duration = Duration::from_secs(60);

fn wait_for_clients(open: &AtomicUsize, max: LogLevel) {
    let until = Instant::now() + STOP_WAIT_FOR_CLIENTS;
    let mut said = false;
    loop {
        let n = open.load(Ordering::SeqCst);
        if n == 0 {
            return;
        }
        if Instant::now() >= until {
            log(
                LogLevel::Error,
                max,
                &format!(
                    "stopping with {n} RPC connections still open after {STOP_WAIT_FOR_CLIENTS:?}"
                ),
            );
            return;
        }
        if !said {
            said = true;
            log(
                LogLevel::Info,
                max,
                &format!(
                    "stopping: waiting for {n} open RPC connections to close, as twisterd does"
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(o: Options) -> Result<(), String> {
    let store = match &o.datadir {
        Some(dir) => Some(Store::open(dir).map_err(|e| e.to_string())?),
        None => None,
    };
    let state = match &store {
        Some(s) => {
            let (state, unreadable) = s.load().map_err(|e| e.to_string())?;
            if unreadable > 0 {
                log(
                    LogLevel::Error,
                    o.log_level,
                    &format!("{unreadable} unreadable lines of the pieces log skipped"),
                );
            }
            state
        }
        None => Default::default(),
    };
    let mut node = Node::new(state, o.blocks, o.spam_interval_s);
    let updates = if o.peers.enabled() {
        let (tx, rx) = std::sync::mpsc::channel();
        node.set_peers(tx);
        Some(rx)
    } else {
        None
    };
    let shared = Arc::new(Shared::new(node, store));
    if o.fault_latency_ms > 0 || o.fault_busy > 0.0 || o.fault_http500 > 0.0 {
        let v = serde_json::json!({"latency_ms": o.fault_latency_ms, "busy": o.fault_busy, "http500": o.fault_http500});
        shared.faults().configure(&v).map_err(|e| e.message)?;
    }
    let listener = TcpListener::bind(("127.0.0.1", o.rpc_port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", o.rpc_port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", o.rpc_user, o.rpc_password));
    let cfg = Arc::new(http::HttpConfig {
        authorization: format!("Basic {token}"),
        max_body: o.max_body,
        max_connections: 512,
    });
    let stopping = Arc::new(AtomicBool::new(false));
    let open_connections = Arc::new(AtomicUsize::new(0));
    install_signal_handlers();
    for flag in &o.ignored {
        log(
            LogLevel::Info,
            o.log_level,
            &format!("ignoring twisterd flag {flag} (no meaning on one machine)"),
        );
    }
    {
        let (shared, stopping, open) = (shared.clone(), stopping.clone(), open_connections.clone());
        std::thread::Builder::new()
            .name("rpc-accept".into())
            .spawn(move || http::serve(listener, shared, cfg, stopping, open))
            .map_err(|e| e.to_string())?;
    }
    let peers_at = match updates {
        Some(rx) => peer::start(shared.clone(), &o.peers, rx, o.log_level)?,
        None => None,
    };
    let height = shared.node().state.height;
    let blocks = match o.blocks.interval() {
        Some(d) => format!("a block every {:?}", d),
        None => "blocks on demand".into(),
    };
    let dir = o
        .datadir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "(memory)".into());
    let peering = match (peers_at, o.peers.connect.len()) {
        (Some(a), n) => format!(", peers on {a}, {n} outbound"),
        (None, n) if n > 0 => format!(", {n} outbound peers"),
        _ => String::new(),
    };
    println!(
        "twister-devnode ready on http://{addr}/ height {height}, {blocks}, datadir {dir}{peering}"
    );

    let mut last_flush = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let stop_rpc = shared.node().stop_requested;
        if SIGNALLED.load(Ordering::SeqCst) || stop_rpc {
            stopping.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees `stopping` and closes the listener.
            let _ = std::net::TcpStream::connect(addr);
            wait_for_clients(&open_connections, o.log_level);
            flush(&shared, o.log_level);
            log(LogLevel::Info, o.log_level, "stopped, state saved");
            return Ok(());
        }
        if last_flush.elapsed() >= o.flush {
            flush(&shared, o.log_level);
            last_flush = Instant::now();
        }
    }
}

fn main() {
    let opts = match options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(OptionsError::Help(text)) => {
            println!("{text}");
            return;
        }
        Err(e) => {
            eprintln!("twister-devnode: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(opts) {
        eprintln!("twister-devnode: {e}");
        std::process::exit(1);
    }
}
