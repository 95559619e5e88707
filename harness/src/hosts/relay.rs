//! A TCP relay that delays every chunk by a fixed time, both ways: the link delay between hosts, since
//! this kernel has no netem (and no fq for timestamp-based delay). It runs on threads that entered the
//! switch namespace, listening on the bridge's address; a dev node connects to it instead of its peer.
//! It delays what crosses the dev nodes' links (the only traffic between hosts); it does not reorder
//! or drop (loss is iptables' job, on the packets of both legs).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Relay {
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(switch_ns: &str, listen: &str, to: &str, delay: Duration) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (ns, listen, to) = (switch_ns.to_string(), listen.to_string(), to.to_string());
        let (ready_tx, ready_rx) = channel();
        {
            let (stop, open) = (stop.clone(), open.clone());
            std::thread::spawn(move || {
                let listener = super::enter_netns(&ns)
                    .map_err(|e| e.to_string())
                    .and_then(|_| TcpListener::bind(&listen).map_err(|e| e.to_string()));
                let listener = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = listener.set_nonblocking(true);
                let _ = ready_tx.send(Ok(()));
                accept_loop(listener, &to, delay, &stop, &open);
            });
        }
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("relay cannot listen: {e}"),
            Err(_) => panic!("relay thread died"),
        }
        Relay { stop, open }
    }
}

fn accept_loop(
    listener: TcpListener,
    to: &str,
    delay: Duration,
    stop: &AtomicBool,
    open: &Mutex<Vec<TcpStream>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        // This thread is in the switch namespace: the connection to the host starts there too.
        let Ok(server) = TcpStream::connect_timeout(
            &to.parse().expect("relay target address"),
            Duration::from_secs(2),
        ) else {
            continue;
        };
        for s in [&client, &server] {
            let _ = s.set_nodelay(true);
            if let Ok(c) = s.try_clone() {
                open.lock().unwrap_or_else(|p| p.into_inner()).push(c);
            }
        }
        for (from, into) in [(&client, &server), (&server, &client)] {
            if let (Ok(from), Ok(into)) = (from.try_clone(), into.try_clone()) {
                pipe(from, into, delay);
            }
        }
    }
}

/// Reads chunks from `from` and writes each to `into` once `delay` has passed since it was read.
fn pipe(mut from: TcpStream, into: TcpStream, delay: Duration) {
    let (tx, rx) = channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping tx ends the writer after what is queued.
    });
    std::thread::spawn(move || write_delayed(rx, into));
}

fn write_delayed(rx: Receiver<(Instant, Vec<u8>)>, mut into: TcpStream) {
    while let Ok((due, chunk)) = rx.recv() {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if into.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = into.shutdown(Shutdown::Both);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
