//! Mosquitto 2.1's event structs and codes, absent from 2.0's headers (read only: tails omitted).

use super::bindings::mosquitto;
use std::ffi::{c_char, c_int, c_long, c_void};

/// Mosquitto 2.1's subscription events.
pub const MOSQ_EVT_SUBSCRIBE_V21: c_int = 12;
pub const MOSQ_EVT_UNSUBSCRIBE_V21: c_int = 13;
/// Mosquitto 2.1's CONNECT and CLIENT_OFFLINE events (a persistent session's connection ended; 2.1
/// sends DISCONNECT only when a session ends).
pub const MOSQ_EVT_CONNECT_V21: c_int = 11;
pub const MOSQ_EVT_CLIENT_OFFLINE_V21: c_int = 28;
/// 2.1's persistence event for a session deleted: the only one an expired session gives.
pub const MOSQ_EVT_PERSIST_CLIENT_DELETE_V21: c_int = 20;
/// 2.1's way for MESSAGE to refuse a publish without disconnecting its client: the broker drops it and
/// answers a QoS 1/2 publisher with reason code 0x97 "quota exceeded" (only MQTT 5 sees the code).
/// 2.0 disconnects a client on any non-zero answer.
pub const MOSQ_ERR_QUOTA_EXCEEDED_V21: c_int = -6;

#[repr(C)]
pub struct SubscriptionV21 {
    pub clientid: *mut c_char,
    pub topic_filter: *mut c_char,
    pub properties: *mut c_void,
    pub identifier: u32,
    pub options: u8,
    pub padding: [u8; 3],
    pub future2: [*mut c_void; 8],
}

/// `struct mosquitto_evt_subscribe` / `_unsubscribe` of Mosquitto 2.1.
/// 2.1.2 fills `data.topic_filter` but leaves `data.clientid` NULL; the client is `client`.
#[repr(C)]
pub struct EvtSubscribeV21 {
    pub future: *mut c_void,
    pub client: *mut mosquitto,
    pub data: SubscriptionV21,
}

/// `struct mosquitto_evt_tick` of Mosquitto 2.1: where 2.0 has `next_ns` (never read by 2.0), 2.1 has
/// `next_ms`, which the broker reads after the callback as "call me again in".
#[repr(C)]
pub struct EvtTickV21 {
    pub future: *mut c_void,
    pub now_ns: c_long,
    pub next_ms: c_long,
    pub now_s: libc::time_t,
    pub next_s: libc::time_t,
    pub future2: [*mut c_void; 4],
}

/// The start of `struct mosquitto_evt_persist_client` of Mosquitto 2.1 (read only: the rest omitted).
#[repr(C)]
pub struct EvtPersistClientV21 {
    pub future: *mut c_void,
    pub clientid: *mut c_char,
}

/// `struct mosquitto_evt_connect` of Mosquitto 2.1 (also the start of every session event's data).
#[repr(C)]
pub struct EvtConnectV21 {
    pub future: *mut c_void,
    pub client: *mut mosquitto,
    pub future2: [*mut c_void; 4],
}
