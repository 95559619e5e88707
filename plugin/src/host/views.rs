//! Typed, safe views of the broker's event data, handed to the plugin's callbacks (`crate::plugin`).
//! They borrow what the broker owns for the length of one callback. No unsafe here and no broker
//! symbol, so the callbacks' logic is unit-tested with fake clients and a fake broker.

use crate::bus::Level;
use crate::interest::BrokerSessionEvent;
use crate::wire::Message;
use std::time::Duration;

/// What a callback may ask about the client of an event. Each answer is one call into the broker,
/// made only when the callback needs it.
pub trait Client {
    fn id(&self) -> Option<&str>;
    /// The MQTT protocol level: 3 (3.1), 4 (3.1.1), 5, or 0 when unknown.
    fn protocol_version(&self) -> i32;
    fn clean_session(&self) -> bool;
}

/// MESSAGE: a client published (on Mosquitto 2.0, also messages the broker itself publishes).
pub struct MessageEvent<'a, C> {
    /// The topic's bytes, not yet checked as UTF-8: most topics are routed nowhere, and only the topic
    /// of a message that leaves is checked (the broker has checked it already).
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub client: C,
}

/// What MESSAGE answers the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageAnswer {
    Accept,
    /// Mosquitto 2.1 only: refuse this one publish (QUOTA_EXCEEDED), without disconnecting the client.
    RefuseQuotaExceeded,
    /// Refuse it unacknowledged by closing the client's connection (ADMINISTRATIVE_ACTION); the
    /// client resends it after reconnecting.
    RefuseClosingConnection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAccess {
    Read,
    Write,
    Subscribe,
    Unsubscribe,
}

/// ACL_CHECK (Mosquitto 2.0, where subscriptions are seen only through it). The topic is read only
/// for subscribe and unsubscribe checks: reads and writes are the hot path.
pub struct AclCheckEvent<'a, C> {
    pub access: AclAccess,
    pub topic: Option<&'a str>,
    pub client: C,
}

/// What ACL_CHECK answers the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclVerdict {
    Defer,
    Allow,
}

/// SUBSCRIBE / UNSUBSCRIBE (Mosquitto 2.1).
pub struct SubscribeEvent<'a> {
    pub client: &'a str,
    pub filter: &'a str,
    pub subscribe: bool,
}

/// DISCONNECT (2.0 and 2.1), CONNECT and CLIENT_OFFLINE (2.1): what happened to a client's session.
pub struct DisconnectEvent<'a> {
    pub client: &'a str,
    pub seen: BrokerSessionEvent,
    pub clean_session: bool,
}

/// TICK. On Mosquitto 2.1 the callback may ask for the next TICK sooner than the broker would
/// otherwise turn its loop; 2.0 ignores the request.
#[derive(Debug, Default)]
pub struct TickEvent {
    next_within: Option<Duration>,
}

impl TickEvent {
    pub fn request_next_within(&mut self, delay: Duration) {
        self.next_within = Some(delay);
    }

    pub fn next_requested(&self) -> Option<Duration> {
        self.next_within
    }
}

/// Why a message from the network was not published into the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRefused {
    /// Not a topic the broker takes in a PUBLISH from a client (the reason, for the log).
    Topic(&'static str),
    OutOfMemory,
    /// The broker's own error code.
    Broker(i32),
}

/// What a callback may do to the broker: only on the broker's thread (the host implements it on
/// `host::BrokerThread`, which nothing off that thread can hold).
pub trait Broker {
    fn log(&self, level: Level, line: &str);
    fn publish(&self, m: Message) -> Result<(), PublishRefused>;
}
