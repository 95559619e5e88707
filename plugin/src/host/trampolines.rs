//! One `extern "C"` trampoline per callback kind, generic over the safe handler. Each runs the
//! handler inside a panic guard (no panic crosses into the broker), reads the raw event data into a
//! view, and turns the handler's answer into the broker's return code.

use super::bindings::*;
use super::raw::*;
use super::thread::{bytes_of, str_of, ClientRef};
use super::views::{
    AclAccess, AclCheckEvent, AclVerdict, Broker, DisconnectEvent, MessageAnswer, MessageEvent,
    SubscribeEvent, TickEvent,
};
use super::BrokerThread;
use crate::bus::Level;
use crate::interest::BrokerSessionEvent;
use std::ffi::{c_int, c_long, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub type Callback = unsafe extern "C" fn(c_int, *mut c_void, *mut c_void) -> c_int;

/// What the plugin does with each event (`crate::plugin::Plugin`), called on the broker's thread.
pub trait Callbacks {
    fn message(&mut self, ev: &MessageEvent<ClientRef>) -> MessageAnswer;
    fn acl_check(&mut self, ev: &AclCheckEvent<ClientRef>) -> AclVerdict;
    fn subscription(&mut self, ev: &SubscribeEvent);
    fn session(&mut self, ev: &DisconnectEvent);
    fn session_deleted(&mut self, client: &str);
    fn tick(&mut self, broker: &BrokerThread, ev: &mut TickEvent, pace: bool);
}

const SUCCESS: c_int = MOSQ_ERR_SUCCESS as c_int;
const DEFER: c_int = MOSQ_ERR_PLUGIN_DEFER as c_int;

/// Runs `f` on the broker's thread; a panic is logged and answered with `on_panic`.
pub fn guarded(name: &str, on_panic: c_int, f: impl FnOnce(&BrokerThread) -> c_int) -> c_int {
    let here = BrokerThread::here();
    match catch_unwind(AssertUnwindSafe(|| f(&here))) {
        Ok(rc) => rc,
        Err(_) => {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                here.log(
                    Level::Error,
                    &format!("mqtt-twister: internal error in {name} (ignored; please report)"),
                )
            }));
            on_panic
        }
    }
}

/// SAFETY (for callers): `userdata` is the handler pointer registered with the callback, alive until
/// cleanup; callbacks run one at a time on the broker's thread, so the borrow is exclusive.
unsafe fn handler<'a, H>(userdata: *mut c_void) -> Option<&'a mut H> {
    // SAFETY: guaranteed by the caller.
    unsafe { (userdata as *mut H).as_mut() }
}

pub unsafe extern "C" fn message<H: Callbacks>(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("MESSAGE", SUCCESS, |_| {
        // SAFETY: userdata is our handler; event_data is the broker's mosquitto_evt_message.
        let (Some(h), Some(ev)) = (unsafe { handler::<H>(userdata) }, unsafe {
            (event_data as *const mosquitto_evt_message).as_ref()
        }) else {
            return SUCCESS;
        };
        // SAFETY: the topic is a NUL-terminated string owned by the message for this call. Its bytes:
        // the plugin checks UTF-8 only for a topic that it forwards.
        let Some(topic) = (unsafe { bytes_of(ev.topic) }) else {
            return SUCCESS;
        };
        let payload: &[u8] = if ev.payload.is_null() || ev.payloadlen == 0 {
            &[]
        } else {
            // SAFETY: the broker guarantees payloadlen readable bytes at payload for this call.
            unsafe { std::slice::from_raw_parts(ev.payload as *const u8, ev.payloadlen as usize) }
        };
        let view = MessageEvent {
            topic,
            payload,
            qos: ev.qos,
            retain: ev.retain,
            // SAFETY: the client of this event.
            client: unsafe { ClientRef::new(ev.client) },
        };
        match h.message(&view) {
            MessageAnswer::Accept => SUCCESS,
            MessageAnswer::RefuseQuotaExceeded => MOSQ_ERR_QUOTA_EXCEEDED_V21,
            MessageAnswer::RefuseClosingConnection => MOSQ_ERR_ADMINISTRATIVE_ACTION as c_int,
        }
    })
}

pub unsafe extern "C" fn acl_check<H: Callbacks>(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("ACL_CHECK", DEFER, |_| {
        // SAFETY: userdata is our handler; event_data is the broker's mosquitto_evt_acl_check.
        let (Some(h), Some(ev)) = (unsafe { handler::<H>(userdata) }, unsafe {
            (event_data as *const mosquitto_evt_acl_check).as_ref()
        }) else {
            return DEFER;
        };
        let access = match ev.access as u32 {
            MOSQ_ACL_SUBSCRIBE => AclAccess::Subscribe,
            MOSQ_ACL_UNSUBSCRIBE => AclAccess::Unsubscribe,
            MOSQ_ACL_WRITE => AclAccess::Write,
            _ => AclAccess::Read,
        };
        let topic = match access {
            // The hot path (a check per publish and per delivery): no topic read.
            AclAccess::Read | AclAccess::Write => None,
            AclAccess::Subscribe | AclAccess::Unsubscribe => {
                // SAFETY: ev is this call's event data.
                return unsafe { subscription_check(h, ev, access) };
            }
        };
        let view = AclCheckEvent {
            access,
            topic,
            // SAFETY: the client of this event.
            client: unsafe { ClientRef::new(ev.client) },
        };
        acl_code(h.acl_check(&view))
    })
}

fn acl_code(verdict: AclVerdict) -> c_int {
    match verdict {
        AclVerdict::Defer => DEFER,
        AclVerdict::Allow => SUCCESS,
    }
}

/// A subscribe or unsubscribe check, out of line so that the read and write checks stay small.
///
/// SAFETY (for callers): `ev` is the broker's event data for the current ACL_CHECK.
#[inline(never)]
unsafe fn subscription_check<H: Callbacks>(
    h: &mut H,
    ev: &mosquitto_evt_acl_check,
    access: AclAccess,
) -> c_int {
    let view = AclCheckEvent {
        access,
        // SAFETY: the filter is a NUL-terminated string owned by the broker for this call.
        topic: unsafe { str_of(ev.topic) },
        // SAFETY: the client of this event.
        client: unsafe { ClientRef::new(ev.client) },
    };
    acl_code(h.acl_check(&view))
}

/// SUBSCRIBE and UNSUBSCRIBE (2.1).
pub unsafe extern "C" fn subscription<H: Callbacks>(
    event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("SUBSCRIBE", SUCCESS, |_| {
        // SAFETY: on Mosquitto 2.1 event_data is a mosquitto_evt_subscribe/_unsubscribe.
        let (Some(h), Some(ev)) = (unsafe { handler::<H>(userdata) }, unsafe {
            (event_data as *const EvtSubscribeV21).as_ref()
        }) else {
            return SUCCESS;
        };
        // SAFETY: the client of this event.
        let client = unsafe { ClientRef::new(ev.client) };
        // SAFETY: both strings are owned by the broker for this call. 2.1.2 leaves data.clientid NULL:
        // the id is then the event's client's.
        let id = unsafe { str_of(ev.data.clientid) }.or_else(|| super::views::Client::id(&client));
        let (Some(id), Some(filter)) = (id, unsafe { str_of(ev.data.topic_filter) }) else {
            return SUCCESS;
        };
        h.subscription(&SubscribeEvent {
            client: id,
            filter,
            subscribe: event == MOSQ_EVT_SUBSCRIBE_V21,
        });
        SUCCESS
    })
}

/// DISCONNECT (2.0 and 2.1), CONNECT and CLIENT_OFFLINE (2.1).
pub unsafe extern "C" fn session<H: Callbacks>(
    event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("session event", SUCCESS, |_| {
        // SAFETY: userdata is our handler; the data of all three events begins with (future, client).
        let (Some(h), Some(ev)) = (unsafe { handler::<H>(userdata) }, unsafe {
            (event_data as *const EvtConnectV21).as_ref()
        }) else {
            return SUCCESS;
        };
        // SAFETY: the client of this event.
        let client = unsafe { ClientRef::new(ev.client) };
        let Some(id) = super::views::Client::id(&client) else {
            return SUCCESS;
        };
        let seen = if event == MOSQ_EVT_CONNECT_V21 {
            BrokerSessionEvent::Connect
        } else if event == MOSQ_EVT_CLIENT_OFFLINE_V21 {
            BrokerSessionEvent::ClientOffline
        } else {
            // SAFETY: DISCONNECT's data is a mosquitto_evt_disconnect (future, client, reason).
            let reason = unsafe { (event_data as *const mosquitto_evt_disconnect).as_ref() };
            BrokerSessionEvent::Disconnect {
                reason: reason.map_or(-1, |d| d.reason),
            }
        };
        h.session(&DisconnectEvent {
            client: id,
            seen,
            clean_session: super::views::Client::clean_session(&client),
        });
        SUCCESS
    })
}

/// PERSIST_CLIENT_DELETE (2.1): a persistent session was deleted. The broker calls it for any plugin
/// registered, with no other effect.
pub unsafe extern "C" fn session_deleted<H: Callbacks>(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("PERSIST_CLIENT_DELETE", SUCCESS, |_| {
        // SAFETY: userdata is our handler; 2.1's mosquitto_evt_persist_client begins with (future,
        // data.clientid), the id a NUL-terminated string owned by the broker for this call.
        let (Some(h), Some(ev)) = (unsafe { handler::<H>(userdata) }, unsafe {
            (event_data as *const EvtPersistClientV21).as_ref()
        }) else {
            return SUCCESS;
        };
        // SAFETY: as above.
        if let Some(client) = unsafe { str_of(ev.clientid) } {
            h.session_deleted(client);
        }
        SUCCESS
    })
}

/// TICK. `PACE` (registered on 2.1 only, as a second TICK callback): the handler asks for the next
/// TICK, which is written back into 2.1's event. It cannot be the same registration: 2.1 skips a
/// callback until its own delay is over, so a loop turn woken earlier (by the doorbell, say) would
/// find nothing due to drain the worker's channel.
pub unsafe extern "C" fn tick<H: Callbacks, const PACE: bool>(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("TICK", SUCCESS, |here| {
        // SAFETY: userdata is our handler.
        let Some(h) = (unsafe { handler::<H>(userdata) }) else {
            return SUCCESS;
        };
        let mut view = TickEvent::default();
        h.tick(here, &mut view, PACE);
        if let (true, Some(next)) = (PACE, view.next_requested()) {
            // SAFETY: on 2.1 (where PACE is registered) event_data is the broker's mosquitto_evt_tick
            // for this call, which it reads back after we return.
            if let Some(ev) = unsafe { (event_data as *mut EvtTickV21).as_mut() } {
                ev.next_s = 0;
                ev.next_ms = c_long::try_from(next.as_millis()).unwrap_or(c_long::MAX);
            }
        }
        SUCCESS
    })
}
