//! Waking the broker's event loop. Mosquitto 2.0 runs TICK (where messages from the network are
//! published) about every 100 ms when its clients are quiet; a 2-byte PINGREQ on the plugin's own MQTT
//! connection to the broker makes the loop turn, and TICK run, at once. Without an anonymous TCP
//! listener to connect to, messages simply wait for the next TICK.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const RETRY: Duration = Duration::from_secs(5);

pub struct Doorbell {
    addr: Option<SocketAddr>,
    client_id: String,
    stream: Option<TcpStream>,
    retry_at: Instant,
}

/// An MQTT 3.1.1 CONNECT: clean session, no keepalive (the broker never drops us for silence).
pub fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

impl Doorbell {
    pub fn new(addr: Option<SocketAddr>, client_id: String) -> Self {
        Doorbell {
            addr,
            client_id,
            stream: None,
            retry_at: Instant::now(),
        }
    }

    /// A new doorbell to the same listener (for a restarted worker).
    pub fn same_again(&self) -> Doorbell {
        Doorbell::new(self.addr, self.client_id.clone())
    }

    pub fn enabled(&self) -> Option<SocketAddr> {
        self.addr
    }

    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_nodelay(true)?;
        s.write_all(&connect_packet(&self.client_id))?;
        s.set_nonblocking(true)?;
        Ok(s)
    }

    /// Makes the broker's loop turn now. Returns false when it could not (it then retries later).
    pub fn ring(&mut self) -> bool {
        let Some(addr) = self.addr else { return false };
        if self.stream.is_none() && Instant::now() >= self.retry_at {
            match self.connect(addr) {
                Ok(s) => self.stream = Some(s),
                Err(_) => self.retry_at = Instant::now() + RETRY,
            }
        }
        let Some(s) = self.stream.as_mut() else {
            return false;
        };
        // Drop what the broker sent back (CONNACK, PINGRESPs) so its buffers never fill.
        let mut buf = [0u8; 256];
        let alive = loop {
            match s.read(&mut buf) {
                Ok(0) => break false,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        if alive && s.write_all(&PINGREQ).is_ok() {
            return true;
        }
        self.stream = None;
        self.retry_at = Instant::now() + RETRY;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn connect_packet_is_well_formed() {
        let p = connect_packet("abc");
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(&p[2..8], &[0, 4, b'M', b'Q', b'T', b'T']);
        assert_eq!(&p[p.len() - 5..], &[0, 3, b'a', b'b', b'c']);
        assert_eq!(
            connect_packet(&"x".repeat(200))[1..3],
            [0xD4, 0x01],
            "two-byte remaining length"
        );
    }

    #[test]
    fn rings_with_a_pingreq_after_connecting_and_reconnects_after_loss() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut bell = Doorbell::new(Some(listener.local_addr().unwrap()), "me".into());
        assert!(bell.ring());
        let (mut peer, _) = listener.accept().unwrap();
        let mut got = vec![0u8; connect_packet("me").len() + 2];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[got.len() - 2..], &PINGREQ);
        drop(peer);
        // The loss is noticed at the next ring; it reconnects after RETRY.
        std::thread::sleep(Duration::from_millis(50));
        let _ = bell.ring();
        assert!(!Doorbell::new(None, "x".into()).ring());
    }
}
