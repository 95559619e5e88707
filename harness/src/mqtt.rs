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
