//! An MQTT client (rumqttc) on its own pump thread: subscribe, publish, receive with timeouts.

use crate::*;
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

pub enum Ack {
    Sub(Vec<rumqttc::SubscribeReasonCode>),
    Other,
}

/// An MQTT client whose incoming publishes and acknowledgements are read on a background thread.
pub struct Mqtt {
    pub client: Client,
    messages: Receiver<Received>,
    acks: Receiver<Ack>,
}

fn pump(
    mut connection: Connection,
    messages: std::sync::mpsc::Sender<Received>,
    acks: std::sync::mpsc::Sender<Ack>,
) {
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = messages.send(Received {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                    retain: p.retain,
                });
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let _ = acks.send(Ack::Sub(s.return_codes));
            }
            Ok(Event::Incoming(Packet::ConnAck(_)))
            | Ok(Event::Incoming(Packet::UnsubAck(_)))
            | Ok(Event::Incoming(Packet::PubAck(_)))
            | Ok(Event::Incoming(Packet::PubComp(_))) => {
                let _ = acks.send(Ack::Other);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

impl Mqtt {
    pub fn connect(port: u16, id: &str, clean: bool) -> Mqtt {
        Self::connect_from(None, port, id, clean)
    }

    /// Connects to 127.0.0.1:`port` inside the network namespace `netns` (see `hosts`): the client's
    /// thread enters the namespace before it opens its socket.
    pub fn connect_in(netns: &str, port: u16, id: &str, clean: bool) -> Mqtt {
        Self::connect_from(Some(netns.to_string()), port, id, clean)
    }

    fn connect_from(netns: Option<String>, port: u16, id: &str, clean: bool) -> Mqtt {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(clean);
        // rumqttc refuses packets over 10 KiB by default.
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, connection) = Client::new(opts, 256);
        let (mtx, messages) = channel();
        let (atx, acks) = channel();
        std::thread::spawn(move || {
            if let Some(ns) = netns {
                if let Err(e) = hosts::enter_netns(&ns) {
                    eprintln!("cannot enter network namespace {ns}: {e}");
                    return;
                }
            }
            pump(connection, mtx, atx)
        });
        let m = Mqtt {
            client,
            messages,
            acks,
        };
        m.expect_ack("CONNACK");
        m
    }

    fn expect_ack(&self, what: &str) -> Ack {
        self.acks
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {what}"))
    }

    /// Subscribes and waits for the SUBACK; true when the broker granted it.
    pub fn subscribe(&self, filter: &str, qos: QoS) -> bool {
        self.client.subscribe(filter, qos).unwrap();
        loop {
            if let Ack::Sub(codes) = self.expect_ack("SUBACK") {
                return codes
                    .iter()
                    .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
            }
        }
    }

    pub fn unsubscribe(&self, filter: &str) {
        self.client.unsubscribe(filter).unwrap();
    }

    pub fn publish(&self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .unwrap();
    }

    pub fn recv(&self, timeout: Duration) -> Option<Received> {
        self.messages.recv_timeout(timeout).ok()
    }

    pub fn expect(&self, timeout: Duration, what: &str) -> Received {
        self.recv(timeout)
            .unwrap_or_else(|| panic!("nothing received: {what}"))
    }

    pub fn disconnect(self) {
        let _ = self.client.disconnect();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publishes "0", "1", ... at QoS 1 on `topic` as client `id`, each after the PUBACK of the one
/// before, until `total` are acknowledged or the connection breaks (a killed broker ends it quietly).
/// `acked` counts the acknowledged ones: exactly "0".."acked-1". `at(i)` runs just after message `i`
/// is sent, before its PUBACK (to kill something mid-stream).
pub fn publish_acknowledged(
    port: u16,
    id: &str,
    topic: &str,
    total: usize,
    acked: &std::sync::atomic::AtomicUsize,
    mut at: impl FnMut(usize),
) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(opts, 10);
    let (tx, pubacks) = channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return, // the broker is gone: no further acknowledgement
            }
        }
    });
    for i in 0..total {
        if client
            .publish(topic, QoS::AtLeastOnce, false, i.to_string())
            .is_err()
        {
            return;
        }
        at(i);
        if pubacks.recv_timeout(Duration::from_secs(30)).is_err() {
            return;
        }
        acked.store(i + 1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A client that does what real ones do after reconnecting: it subscribes again only when the broker
/// says it lost the session (CONNACK's session-present flag). The payloads it receives go, as text, to
/// a channel the test owns, which can outlive one connection.
pub struct Resuming {
    pub client: Client,
    /// CONNACK's session-present flag.
    pub session_present: bool,
    subacks: Receiver<()>,
}

impl Resuming {
    pub fn connect(
        port: u16,
        id: &str,
        clean: bool,
        payloads: &std::sync::mpsc::Sender<String>,
    ) -> Resuming {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(clean);
        let (client, mut connection) = Client::new(opts, 1024);
        let (ctx, connack) = channel();
        let (stx, subacks) = channel();
        let payloads = payloads.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        let _ = ctx.send(a.session_present);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = payloads.send(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = stx.send(());
                    }
                    Ok(_) => {}
                    // The broker went away: this connection is over (no silent reconnection).
                    Err(_) => return,
                }
            }
        });
        let session_present = connack
            .recv_timeout(Duration::from_secs(10))
            .expect("CONNACK");
        Resuming {
            client,
            session_present,
            subacks,
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub fn subscribe(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).unwrap();
        self.subacks
            .recv_timeout(Duration::from_secs(10))
            .expect("SUBACK");
    }

    /// Subscribes to `filter` unless the broker kept the session; true when it subscribed.
    pub fn resubscribe(&self, filter: &str, qos: QoS) -> bool {
        if self.session_present {
            return false;
        }
        self.subscribe(filter, qos);
        true
    }
}
