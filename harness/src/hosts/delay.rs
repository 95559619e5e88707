//! Per-packet delay without netem: iptables sends every packet entering a host from the bridge to an
//! NFQUEUE; this thread, inside the host's namespace, holds each one for the delay and then accepts it
//! (nfnetlink_queue, spoken directly over a netlink socket; only metadata is copied to us). Packets
//! keep their order; TCP sees the delay on data, ACKs and retransmissions alike.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NF_ACCEPT: u32 = 1;
const NLM_F_REQUEST: u16 = 1;
const QUEUE_MAXLEN: u32 = 20_000;

pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// One nfnetlink message of the queue subsystem: header, nfgenmsg, then `attrs`.
fn message(kind: u16, family: u8, queue: u16, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + attrs.len());
    let len = (16 + 4 + attrs.len()) as u32;
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

fn send(fd: i32, m: &[u8]) -> std::io::Result<()> {
    // SAFETY: sending a buffer we own on a socket we own; the kernel address is the default (0).
    let n = unsafe { libc::send(fd, m.as_ptr().cast(), m.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The packet ids of the queue messages in one datagram.
fn packet_ids(buf: &[u8], out: &mut Vec<u32>) {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            return;
        }
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let mut a = off + 20;
            while a + 4 <= off + len {
                let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
                let akind = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]) & 0x3fff;
                if alen < 4 || a + alen > off + len {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    out.push(u32::from_be_bytes([
                        buf[a + 4],
                        buf[a + 5],
                        buf[a + 6],
                        buf[a + 7],
                    ]));
                }
                a += (alen + 3) & !3;
            }
        }
        off += (len + 3) & !3;
    }
}

fn open(queue: u16) -> std::io::Result<i32> {
    // SAFETY: plain socket creation; the fd is closed by the caller.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sockaddr_nl with the family set is a valid kernel-assigned address.
    let bound = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    let rcvbuf: i32 = 4 << 20;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 5_000,
    };
    // SAFETY: setsockopt with pointers to live values of the sizes given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const i32).cast(),
            4,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    if bound < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut cmd = Vec::new();
    attr(
        &mut cmd,
        NFQA_CFG_CMD,
        &[NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8],
    );
    let mut params = Vec::new();
    let mut p = 0xffffu32.to_be_bytes().to_vec();
    p.push(NFQNL_COPY_META);
    attr(&mut params, NFQA_CFG_PARAMS, &p);
    attr(
        &mut params,
        NFQA_CFG_QUEUE_MAXLEN,
        &QUEUE_MAXLEN.to_be_bytes(),
    );
    let result = send(fd, &message(NFQNL_MSG_CONFIG, 0, queue, &cmd))
        .and_then(|_| send(fd, &message(NFQNL_MSG_CONFIG, 0, queue, &params)));
    if let Err(e) = result {
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

fn run(fd: i32, queue: u16, delay: Duration, stop: &AtomicBool) {
    let mut held: VecDeque<(Instant, u32)> = VecDeque::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut ids = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: receiving into a buffer we own, at most its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            ids.clear();
            packet_ids(&buf[..n as usize], &mut ids);
            let due = Instant::now() + delay;
            held.extend(ids.iter().map(|id| (due, *id)));
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, id)) = held.pop_front() else {
                break;
            };
            let mut v = NF_ACCEPT.to_be_bytes().to_vec();
            v.extend_from_slice(&id.to_be_bytes());
            let mut a = Vec::new();
            attr(&mut a, NFQA_VERDICT_HDR, &v);
            let _ = send(fd, &message(NFQNL_MSG_VERDICT, 0, queue, &a));
        }
    }
    // SAFETY: closing the fd we opened; packets still held are dropped by the kernel.
    unsafe { libc::close(fd) };
}

impl Delayer {
    /// Starts holding the packets of NFQUEUE `queue` in namespace `ns` for `delay` each.
    pub fn start(ns: &str, queue: u16, delay: Duration) -> Delayer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = channel();
        let (ns, ns_name) = (ns.to_string(), ns.to_string());
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let fd = super::enter_netns(&ns).and_then(|_| open(queue));
            match fd {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    run(fd, queue, delay, &stop2);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cannot bind NFQUEUE {queue} in {ns_name}: {e}"),
            Err(_) => panic!("the delay thread died"),
        }
        Delayer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
