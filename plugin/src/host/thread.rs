//! What only the broker's thread may do: log, publish into the broker, ask about a client. `log` and
//! `publish` take the `BrokerThread` token (`token.rs`, where compile-fail tests show that the token
//! cannot leave the broker's thread).

use super::bindings::*;
use super::views::{Broker, Client, PublishRefused};
use super::BrokerThread;
use crate::bus::Level;
use crate::wire::Message;
use std::ffi::{c_char, c_int, CStr, CString};
use std::marker::PhantomData;
use std::ptr;

/// A borrowed C string as UTF-8, or None.
///
/// SAFETY (for callers): `p` is null or points to a NUL-terminated string alive for `'a`.
#[inline(always)]
pub(super) unsafe fn str_of<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// A borrowed C string's bytes (without its NUL), or None.
///
/// SAFETY (for callers): `p` is null or points to a NUL-terminated string alive for `'a`.
#[inline(always)]
pub(super) unsafe fn bytes_of<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// The client of the current event, valid for the length of the callback (`'a`).
pub struct ClientRef<'a> {
    client: *mut mosquitto,
    _event: PhantomData<&'a BrokerThread>,
}

impl ClientRef<'_> {
    /// SAFETY (for callers): `client` is null or the client of the event being handled.
    pub(super) unsafe fn new(client: *mut mosquitto) -> Self {
        ClientRef {
            client,
            _event: PhantomData,
        }
    }
}

impl Client for ClientRef<'_> {
    fn id(&self) -> Option<&str> {
        if self.client.is_null() {
            return None;
        }
        // SAFETY: the client of this event, valid for this call; its id lives as long as the client.
        unsafe { str_of(mosquitto_client_id(self.client)) }
    }

    fn protocol_version(&self) -> i32 {
        if self.client.is_null() {
            return 0;
        }
        // SAFETY: the client of this event, valid for this call.
        unsafe { mosquitto_client_protocol_version(self.client) }
    }

    fn clean_session(&self) -> bool {
        if self.client.is_null() {
            return true;
        }
        // SAFETY: the client of this event, valid for this call.
        unsafe { mosquitto_client_clean_session(self.client) }
    }
}

fn level_code(level: Level) -> c_int {
    (match level {
        Level::Error => MOSQ_LOG_ERR,
        Level::Warning => MOSQ_LOG_WARNING,
        Level::Notice => MOSQ_LOG_NOTICE,
        Level::Info => MOSQ_LOG_INFO,
        Level::Debug => MOSQ_LOG_DEBUG,
    }) as c_int
}

/// A topic the broker would take in a PUBLISH from a client, by the broker's own checks (the ones its
/// packet reader applies: valid MQTT UTF-8 without control characters or non-characters, no wildcard,
/// not too long or too deep), plus ours: not empty, no `$` topic.
fn broker_takes_topic(topic: &str) -> Result<CString, &'static str> {
    if !crate::topic::is_injectable(topic) {
        return Err("empty, a wildcard, NUL or a $ topic");
    }
    let c = CString::new(topic).map_err(|_| "NUL")?;
    let len = c_int::try_from(topic.len()).map_err(|_| "too long")?;
    // SAFETY: a pure function the broker exports to plugins; it reads `len` bytes of `c`, which has them.
    if unsafe { mosquitto_validate_utf8(c.as_ptr(), len) } != MOSQ_ERR_SUCCESS as c_int {
        return Err("not valid MQTT UTF-8: control characters, non-characters or bad encoding");
    }
    // SAFETY: a pure function the broker exports to plugins; it reads `c` up to its NUL.
    if unsafe { mosquitto_pub_topic_check(c.as_ptr()) } != MOSQ_ERR_SUCCESS as c_int {
        return Err("wildcards, too long or too many levels");
    }
    Ok(c)
}

impl Broker for BrokerThread {
    /// Writes to the broker's log.
    fn log(&self, level: Level, line: &str) {
        let Ok(text) = CString::new(line.replace('\0', " ")) else {
            return;
        };
        // SAFETY: on the broker's thread (self); "%s" with one NUL-terminated string argument.
        unsafe { mosquitto_log_printf(level_code(level), c"%s".as_ptr(), text.as_ptr()) };
    }

    /// Publishes a message into the broker when the broker would take its topic from a client.
    fn publish(&self, m: Message) -> Result<(), PublishRefused> {
        let topic = broker_takes_topic(&m.topic).map_err(PublishRefused::Topic)?;
        let len = m.payload.len();
        let payload = if len == 0 {
            ptr::null_mut()
        } else {
            // SAFETY: the broker's allocator, so the broker can free the payload it takes over.
            let p = unsafe { mosquitto_malloc(len) };
            if p.is_null() {
                return Err(PublishRefused::OutOfMemory);
            }
            // SAFETY: p has len writable bytes and does not overlap the Vec.
            unsafe { ptr::copy_nonoverlapping(m.payload.as_ptr(), p as *mut u8, len) };
            p
        };
        // SAFETY: broker thread (self); clientid NULL; topic is copied by the broker; on success the
        // broker owns payload (allocated with mosquitto_malloc), on failure it is still ours to free.
        let rc = unsafe {
            mosquitto_broker_publish(
                ptr::null(),
                topic.as_ptr(),
                len as c_int,
                payload,
                m.qos as c_int,
                m.retain,
                ptr::null_mut(),
            )
        };
        if rc != MOSQ_ERR_SUCCESS as c_int {
            if !payload.is_null() {
                // SAFETY: the broker did not take the payload.
                unsafe { mosquitto_free(payload) };
            }
            return Err(PublishRefused::Broker(rc));
        }
        Ok(())
    }
}
