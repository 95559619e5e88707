//! A few bytes of MQTT over TCP, to send what a library would not (a DUP retransmission, an MQTT 5
//! session expiry) and read exactly what the broker answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An MQTT 3.1.1 (or 5, `connect_v5`) client on a plain socket; reads time out after 10 s.
pub struct RawMqtt {
    stream: TcpStream,
    /// The packet id `publish_v5` used last.
    last_mid: u16,
}

impl RawMqtt {
    fn open(port: u16) -> RawMqtt {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawMqtt {
            stream,
            last_mid: 0,
        }
    }

    /// MQTT 3.1.1, keep alive 60 s; asserts the CONNACK accepted it.
    pub fn connect(port: u16, id: &str, clean: bool) -> RawMqtt {
        let mut raw = Self::open(port);
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
        body.push(if clean { 0x02 } else { 0x00 });
        body.extend_from_slice(&[0, 60]);
        body.extend_from_slice(&(id.len() as u16).to_be_bytes());
        body.extend_from_slice(id.as_bytes());
        raw.packet(0x10, &body);
        raw.expect_connack();
        raw
    }

    /// MQTT 5, keep alive 60 s, with a session expiry interval; asserts the CONNACK accepted it.
    pub fn connect_v5(port: u16, id: &str, clean_start: bool, session_expiry: u32) -> RawMqtt {
        let mut raw = Self::open(port);
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5];
        body.push(if clean_start { 0x02 } else { 0x00 });
        body.extend_from_slice(&[0, 60]);
        body.extend_from_slice(&[5, 0x11]); // properties: session expiry interval
        body.extend_from_slice(&session_expiry.to_be_bytes());
        body.extend_from_slice(&(id.len() as u16).to_be_bytes());
        body.extend_from_slice(id.as_bytes());
        raw.packet(0x10, &body);
        raw.expect_connack();
        raw
    }

    fn expect_connack(&mut self) {
        let (kind, rest) = self.read();
        assert_eq!((kind, rest.get(1)), (0x20, Some(&0)), "CONNACK accepted");
    }

    /// SUBSCRIBE at QoS 1 (MQTT 3.1.1); asserts the SUBACK granted QoS 1.
    pub fn subscribe(&mut self, mid: u16, filter: &str) {
        self.subscribe_with(mid, filter, &[]);
    }

    /// SUBSCRIBE at QoS 1 with no properties (MQTT 5); asserts the SUBACK granted QoS 1.
    pub fn subscribe_v5(&mut self, mid: u16, filter: &str) {
        self.subscribe_with(mid, filter, &[0]);
    }

    fn subscribe_with(&mut self, mid: u16, filter: &str, properties: &[u8]) {
        let mut body = mid.to_be_bytes().to_vec();
        body.extend_from_slice(properties);
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(0x01); // QoS 1
        self.packet(0x82, &body);
        let (kind, rest) = self.read();
        assert_eq!(
            (kind, rest.last()),
            (0x90, Some(&0x01)),
            "SUBACK granted QoS 1"
        );
    }

    /// Sends a packet: `header`, the remaining length, `body`.
    pub fn packet(&mut self, header: u8, body: &[u8]) {
        self.send(&framed(header, body));
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// PUBLISH at QoS 2 with packet id `mid`, the DUP flag set when `dup`.
    pub fn publish_qos2(&mut self, mid: u16, topic: &str, payload: &[u8], dup: bool) {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&mid.to_be_bytes());
        body.extend_from_slice(payload);
        self.packet(if dup { 0x3C } else { 0x34 }, &body);
    }

    /// The next packet: its type byte and body.
    pub fn read(&mut self) -> (u8, Vec<u8>) {
        self.try_read().expect("a packet from the broker")
    }

    /// The next packet, or None when the broker closed the connection (or said nothing in time).
    pub fn try_read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut byte = [0u8; 1];
        self.stream.read_exact(&mut byte).ok()?;
        let kind = byte[0];
        let (mut len, mut shift) = (0usize, 0);
        loop {
            self.stream.read_exact(&mut byte).ok()?;
            len |= ((byte[0] & 0x7F) as usize) << shift;
            shift += 7;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).ok()?;
        Some((kind, body))
    }

    /// Asserts the next packet is of type `kind` (high nibble) for packet id `mid`.
    pub fn expect(&mut self, kind: u8, mid: u16, what: &str) {
        let (k, body) = self.read();
        assert_eq!(
            (k & 0xF0, body.get(..2)),
            (kind, Some(&mid.to_be_bytes()[..])),
            "{what}"
        );
    }

    /// PUBLISH at QoS 0 or 1 over MQTT 5 (no properties) under the next packet id. QoS 1: the
    /// PUBACK's reason code (below 0x80: accepted), None when the broker closed the connection
    /// instead; QoS 0: Some(0) once written.
    pub fn publish_v5(&mut self, topic: &str, payload: &[u8], qos: u8) -> Option<u8> {
        self.last_mid += 1;
        let mid = self.last_mid;
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&mid.to_be_bytes());
        }
        body.push(0); // no properties
        body.extend_from_slice(payload);
        // Written without unwrap: a broker refusing the message may have closed the connection.
        self.stream
            .write_all(&framed(0x30 | (qos << 1), &body))
            .ok()?;
        if qos == 0 {
            return Some(0);
        }
        let (kind, ack) = self.try_read()?;
        assert_eq!((kind, &ack[..2]), (0x40, &mid.to_be_bytes()[..]), "PUBACK");
        Some(ack.get(2).copied().unwrap_or(0))
    }

    /// Still connected: a PINGREQ is answered.
    pub fn ping(&mut self) {
        self.send(&[0xC0, 0]);
        assert_eq!(self.read().0, 0xD0, "PINGRESP");
    }

    /// DISCONNECT, normal.
    pub fn disconnect(mut self) {
        self.send(&[0xE0, 0]);
    }

    /// PUBREL, then PUBCOMP.
    pub fn release(&mut self, mid: u16) {
        let [hi, lo] = mid.to_be_bytes();
        self.send(&[0x62, 0x02, hi, lo]);
        self.expect(0x70, mid, "PUBCOMP");
    }
}

/// A packet: `header`, the remaining length, `body`.
fn framed(header: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![header];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

/// A QoS 2 publisher (client `id`, persistent session) loses its connection after the PUBREC of
/// "exactly once" on q/once, before its PUBREL, comes back with its session and sends it again with
/// DUP, completing the flow; then the same content as a new message (a new packet id), then "end"
/// on q/end. Subscribers should get "exactly once" twice, then "end".
pub fn publish_qos2_retransmitted_with_dup(port: u16, id: &str) {
    let mut raw = RawMqtt::connect(port, id, false);
    raw.publish_qos2(7, "q/once", b"exactly once", false);
    raw.expect(0x50, 7, "PUBREC");
    drop(raw);
    let mut raw = RawMqtt::connect(port, id, false);
    raw.publish_qos2(7, "q/once", b"exactly once", true);
    raw.expect(0x50, 7, "PUBREC of the retransmission");
    raw.release(7);
    raw.publish_qos2(8, "q/once", b"exactly once", false);
    raw.expect(0x50, 8, "PUBREC");
    raw.release(8);
    raw.publish_qos2(9, "q/end", b"end", false);
    raw.expect(0x50, 9, "PUBREC");
    raw.release(9);
}
