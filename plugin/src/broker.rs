//! Everything that touches the broker: the only user of the bindings and the only home of `unsafe`.
//!
//! Callbacks run on the broker's thread. Each one runs inside a panic guard, copies what it needs and
//! `try_send`s it to the worker; none blocks or does I/O. Messages from the network come back through a
//! channel drained in TICK, the only place this plugin calls `mosquitto_broker_publish`.

use crate::access::{self, AclAnswer};
use crate::bindings::*;
use crate::bus::{Level, Outgoing, ToBroker, ToWorker};
use crate::config::{self, Config};
use crate::interest::{BrokerSessionEvent, RestoredSessions, SessionEvent};
use crate::qos2::{self, Qos2Dedup};
use crate::spool::intake::{Intake, Verdict};
use crate::spool::keeper::Keeper;
use crate::startup::{
    load_state, open_spool, resolve_password, restored_sessions, spool_with_worker,
};
use crate::supervise::{WorkerHandle, STOP_WAIT};
use crate::twister::{HttpTwister, Twister};
use crate::wake::Doorbell;
use crate::watch::Watch;
use crate::wire::Message;
use crossbeam_channel::TrySendError;
use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Mosquitto 2.1's subscription events, absent from 2.0's headers.
const MOSQ_EVT_SUBSCRIBE_V21: c_int = 12;
const MOSQ_EVT_UNSUBSCRIBE_V21: c_int = 13;
/// 2.1's way for MESSAGE to refuse a publish without disconnecting its client: the broker drops it and
/// answers a QoS 1/2 publisher with reason code 0x97 "quota exceeded" (only MQTT 5 sees the code).
/// 2.0 disconnects a client on any non-zero answer.
const MOSQ_ERR_QUOTA_EXCEEDED_V21: c_int = -6;
/// On 2.1 the pacing TICK asks to run again this soon. 2.1 otherwise sleeps up to 5 s (10 s without
/// clients) between loop turns; 2.0 turns at least every 100 ms and ignores the request.
const TICK_PACE_MS: c_long = 100;
/// Mosquitto 2.1's CONNECT and CLIENT_OFFLINE events (a persistent session's connection ended; 2.1
/// sends DISCONNECT only when a session ends).
const MOSQ_EVT_CONNECT_V21: c_int = 11;
const MOSQ_EVT_CLIENT_OFFLINE_V21: c_int = 28;
/// 2.1's persistence event for a session deleted: the only one an expired session gives.
const MOSQ_EVT_PERSIST_CLIENT_DELETE_V21: c_int = 20;
/// Items injected per TICK at most, so one tick never stalls the broker.
const INJECT_PER_TICK: usize = 2048;

#[repr(C)]
struct SubscriptionV21 {
    clientid: *mut c_char,
    topic_filter: *mut c_char,
    properties: *mut c_void,
    identifier: u32,
    options: u8,
    padding: [u8; 3],
    future2: [*mut c_void; 8],
}

/// `struct mosquitto_evt_subscribe` / `_unsubscribe` of Mosquitto 2.1 (read only: the tail is omitted).
/// 2.1.2 fills `data.topic_filter` but leaves `data.clientid` NULL; the client is `client`.
#[repr(C)]
struct EvtSubscribeV21 {
    future: *mut c_void,
    client: *mut mosquitto,
    data: SubscriptionV21,
}

/// `struct mosquitto_evt_tick` of Mosquitto 2.1: where 2.0 has `next_ns` (never read by 2.0), 2.1 has
/// `next_ms`, which the broker reads after the callback as "call me again in".
#[repr(C)]
struct EvtTickV21 {
    future: *mut c_void,
    now_ns: c_long,
    next_ms: c_long,
    now_s: libc::time_t,
    next_s: libc::time_t,
    future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_connect` of Mosquitto 2.1 (also the start of every session event's data).
#[repr(C)]
struct EvtConnectV21 {
    future: *mut c_void,
    client: *mut mosquitto,
    future2: [*mut c_void; 4],
}

/// The start of `struct mosquitto_evt_persist_client` of Mosquitto 2.1 (read only: the rest omitted).
#[repr(C)]
struct EvtPersistClientV21 {
    future: *mut c_void,
    clientid: *mut c_char,
}

type Callback = unsafe extern "C" fn(c_int, *mut c_void, *mut c_void) -> c_int;

struct Plugin {
    id: *mut mosquitto_plugin_id_t,
    cfg: Arc<Config>,
    worker: WorkerHandle,
    acl: AclAnswer,
    /// Running in Mosquitto 2.1 (SUBSCRIBE and session events, QUOTA_EXCEEDED, `next_ms` in TICK).
    v21: bool,
    qos2: Qos2Dedup,
    registered: Vec<(c_int, Callback)>,
    dropped: u64,
    /// Publishes refused with QUOTA_EXCEEDED (2.1, MQTT 5, QoS > 0) because the queue was full.
    refused: u64,
    /// The pacing TICK (2.1) has said once that it asks for the next TICK.
    pace_said: bool,
    dropped_reported: u64,
    last_drop_report: Instant,
    /// This library stays loaded whatever the broker does (`keep_library_loaded`).
    pinned: bool,
    watch: Watch,
    /// The crash-safe spool (`plugin_opt_spool_dir`): written in MESSAGE, kept by its own thread.
    spool: Option<Intake>,
    /// Stopped after the worker (dropped after it), so that the worker's last progress is written.
    keeper: Option<Keeper>,
}

/// Maps the spool's segment files: the spool's one unsafe operation, kept in the host layer.
struct MappedSegments;

impl crate::spool::Storage for MappedSegments {
    fn map(
        &self,
        file: &std::fs::File,
        len: usize,
    ) -> std::io::Result<Box<dyn crate::spool::Mapped>> {
        // SAFETY: memmap2 requires that nothing truncates or rewrites the file behind the mapping.
        // Segment files live in the spool directory, which one process at a time uses (locked at
        // open); the spool sizes and truncates a segment file only while it is not mapped, maps it
        // only once its `len` bytes are written, and reads and writes the mapping only through this
        // one owner. A file changed by hand anyway would corrupt records (caught by their CRC at the
        // next start) or, if truncated, fault the broker: documented in the README.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file)? };
        Ok(Box::new(map))
    }
}

/// How a QoS 1/2 publish is refused without being acknowledged. 2.1 answers an MQTT 5 publisher with
/// "quota exceeded"; for everyone else (2.0, and MQTT 3.1.1 on 2.1, where "quota exceeded" would be a
/// plain PUBACK) the only refusal is closing the connection, after which the client resends it.
fn refusal(v21: bool, client: *mut mosquitto) -> c_int {
    if v21 && protocol_version(client) == 5 {
        MOSQ_ERR_QUOTA_EXCEEDED_V21
    } else {
        MOSQ_ERR_ADMINISTRATIVE_ACTION as c_int
    }
}

// ----- logging -----

fn level_code(level: Level) -> c_int {
    (match level {
        Level::Error => MOSQ_LOG_ERR,
        Level::Warning => MOSQ_LOG_WARNING,
        Level::Notice => MOSQ_LOG_NOTICE,
        Level::Info => MOSQ_LOG_INFO,
        Level::Debug => MOSQ_LOG_DEBUG,
    }) as c_int
}

/// Writes to the broker's log. Broker thread only.
fn log_now(level: Level, msg: &str) {
    let Ok(text) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: called on the broker's thread; "%s" with one NUL-terminated string argument.
    unsafe { mosquitto_log_printf(level_code(level), c"%s".as_ptr(), text.as_ptr()) };
}

fn guarded(name: &str, on_panic: c_int, f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(_) => {
            let _ = catch_unwind(|| {
                log_now(
                    Level::Error,
                    &format!("mqtt-twister: internal error in {name} (ignored; please report)"),
                )
            });
            on_panic
        }
    }
}

// ----- small readers of C data -----

/// A borrowed C string as UTF-8, or None.
///
/// SAFETY (for callers): `p` is null or points to a NUL-terminated string alive for `'a`.
unsafe fn str_of<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

fn client_id(client: *mut mosquitto) -> Option<String> {
    if client.is_null() {
        return None;
    }
    // SAFETY: `client` comes from the broker's event data for the current callback; the returned
    // string belongs to the client and is copied before returning.
    unsafe { str_of(mosquitto_client_id(client)) }.map(str::to_owned)
}

/// The MQTT protocol level of a client: 3 (3.1), 4 (3.1.1), 5, or 0 when unknown.
fn protocol_version(client: *mut mosquitto) -> c_int {
    if client.is_null() {
        return 0;
    }
    // SAFETY: `client` comes from the broker's event data for the current callback.
    unsafe { mosquitto_client_protocol_version(client) }
}

/// SAFETY (for callers): `userdata` is the pointer `plugin_init` stored, alive until cleanup.
unsafe fn plugin<'a>(userdata: *mut c_void) -> Option<&'a mut Plugin> {
    // SAFETY: guaranteed by the caller; callbacks run one at a time on the broker's thread.
    unsafe { (userdata as *mut Plugin).as_mut() }
}

impl Plugin {
    fn send(&mut self, m: ToWorker) {
        let Some(tx) = &self.worker.to_worker else {
            return;
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(m) {
            self.dropped += 1;
        }
    }
}

// ----- callbacks -----

unsafe extern "C" fn on_message(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    // 2.0 disconnects the publisher on any code but 0. On 2.1, QUOTA_EXCEEDED refuses this one publish:
    // used when the queue is full and the publisher learns it (MQTT 5, QoS 1 or 2) and can retry; the
    // refused message reaches no local subscriber either, so everyone else's messages still pass.
    guarded("MESSAGE", 0, || {
        // SAFETY: userdata is our Plugin; event_data is the broker's mosquitto_evt_message for this call.
        let (Some(p), Some(ev)) = (unsafe { plugin(userdata) }, unsafe {
            (event_data as *const mosquitto_evt_message).as_ref()
        }) else {
            return 0;
        };
        // SAFETY: the topic is a NUL-terminated string owned by the message for this call.
        let Some(topic) = (unsafe { str_of(ev.topic) }) else {
            return 0;
        };
        let route = p.cfg.router.route(topic);
        if route.is_empty() {
            return 0;
        }
        let may_refuse = p.v21 && ev.qos > 0;
        if may_refuse && p.worker.backlog_full() && protocol_version(ev.client) == 5 {
            p.refused += 1;
            return MOSQ_ERR_QUOTA_EXCEEDED_V21;
        }
        let payload: &[u8] = if ev.payload.is_null() || ev.payloadlen == 0 {
            &[]
        } else {
            // SAFETY: the broker guarantees payloadlen readable bytes at payload for this call.
            unsafe { std::slice::from_raw_parts(ev.payload as *const u8, ev.payloadlen as usize) }
        };
        let mut qos2_seen = None;
        if ev.qos == 2 && !ev.client.is_null() {
            // SAFETY: the client of this event, valid for this call; its id is only borrowed here.
            let id = unsafe { str_of(mosquitto_client_id(ev.client)) };
            // SAFETY: as above.
            let clean = unsafe { mosquitto_client_clean_session(ev.client) };
            let fp = qos2::fingerprint(topic, payload, ev.retain);
            if id.is_some_and(|id| !p.qos2.first_time(id, clean, fp)) {
                return 0; // a retransmission: forwarded already
            }
            qos2_seen = id.map(|id| (id, fp));
        }
        let m = Message {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos: ev.qos,
            retain: ev.retain,
        };
        if let Some(spool) = p.spool.as_mut() {
            let worker = &p.worker;
            let hand = |message| worker.publish(Outgoing { message, route });
            return match spool.take(m, !worker.backlog_full(), hand) {
                Verdict::Accepted(_) | Verdict::Dropped => 0,
                Verdict::Refused => {
                    if let Some((id, fp)) = qos2_seen {
                        p.qos2.refused(id, fp);
                    }
                    refusal(p.v21, ev.client)
                }
            };
        }
        let queued = p.worker.publish(Outgoing { message: m, route });
        if !queued {
            if may_refuse && protocol_version(ev.client) == 5 {
                p.refused += 1;
                return MOSQ_ERR_QUOTA_EXCEEDED_V21;
            }
            p.dropped += 1;
        }
        0
    })
}

unsafe extern "C" fn on_acl_check(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("ACL_CHECK", MOSQ_ERR_PLUGIN_DEFER as c_int, || {
        // SAFETY: userdata is our Plugin; event_data is the broker's mosquitto_evt_acl_check.
        let (Some(p), Some(ev)) = (unsafe { plugin(userdata) }, unsafe {
            (event_data as *const mosquitto_evt_acl_check).as_ref()
        }) else {
            return MOSQ_ERR_PLUGIN_DEFER as c_int;
        };
        let answer = match p.acl {
            AclAnswer::Defer => MOSQ_ERR_PLUGIN_DEFER as c_int,
            AclAnswer::Allow => MOSQ_ERR_SUCCESS as c_int,
        };
        let subscribe = ev.access == MOSQ_ACL_SUBSCRIBE as c_int;
        if !subscribe && ev.access != MOSQ_ACL_UNSUBSCRIBE as c_int {
            return answer; // reads and writes: the hot path, nothing to do
        }
        // SAFETY: the filter is a NUL-terminated string owned by the broker for this call.
        let (Some(client), Some(filter)) = (client_id(ev.client), unsafe { str_of(ev.topic) })
        else {
            return answer;
        };
        let filter = filter.to_owned();
        // 2.0 has no CONNECT event: the session kind is read on the live connection.
        // SAFETY: the client pointer is valid for this call.
        let persistent = !unsafe { mosquitto_client_clean_session(ev.client) };
        p.send(ToWorker::Session {
            client: client.clone(),
            event: SessionEvent::Connected {
                persistent,
                new_connection: false,
            },
        });
        p.send(if subscribe {
            ToWorker::Subscribe { client, filter }
        } else {
            ToWorker::Unsubscribe { client, filter }
        });
        answer
    })
}

unsafe extern "C" fn on_subscribe_v21(
    event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("SUBSCRIBE", MOSQ_ERR_SUCCESS as c_int, || {
        // SAFETY: on Mosquitto 2.1 event_data is a mosquitto_evt_subscribe/_unsubscribe.
        let (Some(p), Some(ev)) = (unsafe { plugin(userdata) }, unsafe {
            (event_data as *const EvtSubscribeV21).as_ref()
        }) else {
            return MOSQ_ERR_SUCCESS as c_int;
        };
        // SAFETY: both strings are owned by the broker for this call. 2.1.2 leaves data.clientid NULL:
        // the id is then the event's client's.
        let client = unsafe { str_of(ev.data.clientid) }
            .map(str::to_owned)
            .or_else(|| client_id(ev.client));
        let (Some(client), Some(filter)) = (client, unsafe { str_of(ev.data.topic_filter) }) else {
            return MOSQ_ERR_SUCCESS as c_int;
        };
        let filter = filter.to_owned();
        p.send(if event == MOSQ_EVT_SUBSCRIBE_V21 {
            ToWorker::Subscribe { client, filter }
        } else {
            ToWorker::Unsubscribe { client, filter }
        });
        MOSQ_ERR_SUCCESS as c_int
    })
}

/// DISCONNECT (2.0 and 2.1), CONNECT and CLIENT_OFFLINE (2.1): what happens to a client's session.
unsafe extern "C" fn on_session(
    event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("session event", MOSQ_ERR_SUCCESS as c_int, || {
        // SAFETY: userdata is our Plugin; the data of all three events begins with (future, client).
        let (Some(p), Some(ev)) = (unsafe { plugin(userdata) }, unsafe {
            (event_data as *const EvtConnectV21).as_ref()
        }) else {
            return MOSQ_ERR_SUCCESS as c_int;
        };
        let Some(client) = client_id(ev.client) else {
            return MOSQ_ERR_SUCCESS as c_int;
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
        // SAFETY: the client pointer is valid for this call.
        let clean = unsafe { mosquitto_client_clean_session(ev.client) };
        let event = SessionEvent::from_broker(seen, p.v21, clean);
        match event {
            SessionEvent::Ended => p.qos2.session_ended(&client),
            SessionEvent::Connected { .. } => {}
            _ => p.qos2.connection_ended(&client),
        }
        p.send(ToWorker::Session { client, event });
        MOSQ_ERR_SUCCESS as c_int
    })
}

/// Mosquitto 2.1: a persistent session was deleted (expired, or discarded by a clean start). The
/// broker calls it for any plugin registered, with no other effect.
unsafe extern "C" fn on_session_deleted_v21(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("PERSIST_CLIENT_DELETE", MOSQ_ERR_SUCCESS as c_int, || {
        // SAFETY: userdata is our Plugin; 2.1's mosquitto_evt_persist_client begins with (future,
        // data.clientid), the id a NUL-terminated string owned by the broker for this call.
        let (Some(p), Some(ev)) = (unsafe { plugin(userdata) }, unsafe {
            (event_data as *const EvtPersistClientV21).as_ref()
        }) else {
            return MOSQ_ERR_SUCCESS as c_int;
        };
        // SAFETY: as above.
        if let Some(client) = unsafe { str_of(ev.clientid) }.map(str::to_owned) {
            p.qos2.session_ended(&client);
            p.send(ToWorker::Session {
                client,
                event: SessionEvent::Ended,
            });
        }
        MOSQ_ERR_SUCCESS as c_int
    })
}

/// Runs on every turn of the broker's loop (2.1: it asks for no delay, so it is always due), so a
/// doorbell's wake-up always finds it.
unsafe extern "C" fn on_tick(
    _event: c_int,
    _event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("TICK", MOSQ_ERR_SUCCESS as c_int, || {
        // SAFETY: userdata is our Plugin.
        if let Some(p) = unsafe { plugin(userdata) } {
            drain(p);
        }
        MOSQ_ERR_SUCCESS as c_int
    })
}

/// 2.1 only: a second TICK callback that asks to run again within TICK_PACE_MS, which bounds how long
/// the broker's loop sleeps. It cannot be `on_tick`: 2.1 skips a callback until its own delay is over,
/// so a loop turn woken earlier (by the doorbell, say) would find nothing due to drain the channel.
unsafe extern "C" fn on_tick_pace(
    _event: c_int,
    event_data: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    guarded("TICK", MOSQ_ERR_SUCCESS as c_int, || {
        // SAFETY: on 2.1 event_data is the broker's mosquitto_evt_tick for this call, which it reads
        // back after we return.
        if let Some(ev) = unsafe { (event_data as *mut EvtTickV21).as_mut() } {
            ev.next_s = 0;
            ev.next_ms = TICK_PACE_MS;
        }
        // SAFETY: userdata is our Plugin.
        if let Some(p) = unsafe { plugin(userdata) } {
            if !p.pace_said {
                p.pace_said = true;
                log_now(
                    Level::Info,
                    &format!("mqtt-twister: Mosquitto 2.1: asking the broker for the next TICK within {TICK_PACE_MS} ms"),
                );
            }
            drain(p);
        }
        MOSQ_ERR_SUCCESS as c_int
    })
}

/// Publishes and logs what the worker sent, and reports drops now and then. Broker thread only.
fn drain(p: &mut Plugin) {
    // Nothing pending costs one try_recv.
    for _ in 0..INJECT_PER_TICK {
        match p.worker.from_worker.try_recv() {
            Ok(ToBroker::Publish(m)) => p.inject(m),
            Ok(ToBroker::Log(level, text)) => log_now(level, &text),
            Err(_) => break,
        }
    }
    let trouble = p.dropped + p.refused;
    if trouble > p.dropped_reported && p.last_drop_report.elapsed() >= Duration::from_secs(10) {
        log_now(
            Level::Warning,
            &format!(
                "mqtt-twister: {}, {} events dropped and {} publishes refused (quota exceeded) so far",
                Watch::why_dropped(p.worker.thread_ended(), p.worker.health()),
                p.dropped,
                p.refused
            ),
        );
        p.dropped_reported = trouble;
        p.last_drop_report = Instant::now();
    }
    p.report_health();
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

impl Plugin {
    /// Publishes a message from the network into the broker when the broker would take its topic from
    /// a client; otherwise counts and logs (rate-limited) the refusal. Broker thread only.
    fn inject(&mut self, m: Message) {
        match broker_takes_topic(&m.topic) {
            Ok(topic) => publish_into_broker(topic, m),
            Err(why) => {
                if let Some(line) = self.watch.refused(&m.topic, why, Instant::now()) {
                    log_now(Level::Warning, &line);
                }
            }
        }
    }

    /// Says in the broker's log when the worker thread is gone or shows no sign of life.
    fn report_health(&mut self) {
        let ended = self.worker.thread_ended();
        for (level, line) in self
            .watch
            .health_lines(ended, self.worker.health(), Instant::now())
        {
            log_now(level, &line);
        }
    }
}

/// Publishes a message into the broker. Broker thread only.
fn publish_into_broker(topic: CString, m: Message) {
    let len = m.payload.len();
    let payload = if len == 0 {
        ptr::null_mut()
    } else {
        // SAFETY: the broker's allocator, so the broker can free the payload it takes over.
        let p = unsafe { mosquitto_malloc(len) };
        if p.is_null() {
            log_now(
                Level::Error,
                "mqtt-twister: out of memory injecting a message",
            );
            return;
        }
        // SAFETY: p has len writable bytes and does not overlap the Vec.
        unsafe { ptr::copy_nonoverlapping(m.payload.as_ptr(), p as *mut u8, len) };
        p
    };
    // SAFETY: broker thread (TICK); clientid NULL; topic is copied by the broker; on success the broker
    // owns payload (allocated with mosquitto_malloc), on failure it is still ours to free.
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
        log_now(
            Level::Warning,
            &format!("mqtt-twister: broker refused a message from the network (error {rc})"),
        );
    }
}

// ----- plugin entry points -----

pub fn plugin_version(count: c_int, versions: *const c_int) -> c_int {
    if versions.is_null() || count <= 0 {
        return -1;
    }
    // SAFETY: the broker passes `count` readable ints.
    let offered = unsafe { std::slice::from_raw_parts(versions, count as usize) };
    if offered.contains(&5) {
        5
    } else {
        -1
    }
}

/// SAFETY (for callers): `opts` points to `count` options alive for this call.
unsafe fn read_options(opts: *mut mosquitto_opt, count: c_int) -> Vec<(String, String)> {
    if opts.is_null() || count <= 0 {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    let list = unsafe { std::slice::from_raw_parts(opts, count as usize) };
    list.iter()
        .map(|o| {
            // SAFETY: key and value are NUL-terminated strings (or null) owned by the broker.
            let text = |p: *mut c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            };
            (text(o.key), text(o.value))
        })
        .collect()
}

/// Mosquitto 2.1 exports functions 2.0 does not; this one tells them apart.
fn is_mosquitto_21() -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mosquitto_plugin_set_info".as_ptr()) }.is_null()
}

/// Keeps this library mapped for the life of the process, so that a worker left behind at cleanup
/// (stuck on twisterd) never runs code the broker has unloaded: the library opens itself again with
/// RTLD_NODELETE, found through dladdr. False when that failed.
fn keep_library_loaded() -> bool {
    // SAFETY: Dl_info is plain C data, for which all zeroes is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let here = keep_library_loaded as *const c_void;
    // SAFETY: dladdr only reads the loader's tables for an address inside this library and fills `info`.
    if unsafe { libc::dladdr(here, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: dli_fname is the loader's NUL-terminated path of this very library, which is loaded:
    // RTLD_NOLOAD takes one more reference to it, RTLD_NODELETE keeps it mapped after every dlclose.
    // The handle is deliberately never closed.
    let handle = unsafe {
        libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        )
    };
    !handle.is_null()
}

fn refuse(msg: &str) -> c_int {
    log_now(Level::Error, &format!("mqtt-twister: {msg}"));
    eprintln!("mqtt-twister: {msg}");
    MOSQ_ERR_INVAL as c_int
}

/// Mosquitto 2.1's `mosquitto_client(id)` (absent from 2.0): whether the broker holds a session for
/// `id`. Broker thread only.
fn broker_holds_session_v21() -> Option<impl Fn(&str) -> bool> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mosquitto_client".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: the symbol is Mosquitto 2.1's `struct mosquitto *mosquitto_client(const char *clientid)`.
    let find: unsafe extern "C" fn(*const c_char) -> *mut mosquitto =
        unsafe { std::mem::transmute(sym) };
    Some(move |id: &str| {
        CString::new(id)
            // SAFETY: called on the broker thread (plugin init); a NUL-terminated id; the result is
            // only compared with NULL.
            .is_ok_and(|id| !unsafe { find(id.as_ptr()) }.is_null())
    })
}

fn register(p: &mut Plugin, event: c_int, cb: Callback) -> bool {
    let userdata = p as *mut Plugin as *mut c_void;
    // SAFETY: `id` is the identifier the broker gave init; `p` lives (boxed) until cleanup, which
    // unregisters every callback before freeing it.
    let rc = unsafe { mosquitto_callback_register(p.id, event, Some(cb), ptr::null(), userdata) };
    if rc == MOSQ_ERR_SUCCESS as c_int {
        p.registered.push((event, cb));
        true
    } else {
        false
    }
}

fn unregister_all(p: &mut Plugin) {
    for (event, cb) in p.registered.drain(..) {
        // SAFETY: exactly the (event, callback) pairs registered with this identifier.
        unsafe { mosquitto_callback_unregister(p.id, event, Some(cb), ptr::null()) };
    }
}

pub fn plugin_init(
    id: *mut mosquitto_plugin_id_t,
    userdata: *mut *mut c_void,
    opts: *mut mosquitto_opt,
    count: c_int,
) -> c_int {
    guarded("init", MOSQ_ERR_UNKNOWN as c_int, || {
        // SAFETY: the broker passes `count` options valid for this call.
        let options = unsafe { read_options(opts, count) };
        let cfg = match config::parse(&options) {
            Ok(c) => Arc::new(c),
            Err(e) => return refuse(&e.to_string()),
        };
        let password = match resolve_password(&cfg) {
            Ok(p) => p,
            Err(e) => return refuse(&e),
        };
        let v21 = is_mosquitto_21();
        let broker_conf = access::read_running_broker();
        if !v21
            && broker_conf
                .as_ref()
                .is_some_and(|c| c.per_listener_settings)
        {
            return refuse("per_listener_settings true is not supported on Mosquitto 2.0: the broker never calls the plugin's TICK there, so nothing would ever arrive from the network. Set per_listener_settings false.");
        }
        // 2.1 tells subscriptions through events: no ACL check is registered, access stays as it is.
        let acl = if v21 {
            AclAnswer::Defer
        } else {
            match access::decide(cfg.access, broker_conf.as_ref()) {
                Ok(a) => a,
                Err(e) => return refuse(&e),
            }
        };
        let mut saved = match load_state(&cfg) {
            Ok(s) => s,
            Err(e) => return refuse(&e),
        };
        let spool = match open_spool(&cfg, Box::new(MappedSegments), &mut saved) {
            Ok(s) => s,
            Err(e) => return refuse(&e),
        };
        let (url, user) = (cfg.rpc_url.clone(), cfg.rpc_user.clone());
        let make_rpc = move |timeout| {
            Box::new(HttpTwister::new(&url, &user, &password, timeout)) as Box<dyn Twister>
        };
        let wake = broker_conf
            .as_ref()
            .and_then(|c| c.wake_address())
            .filter(|_| cfg.wakeup);
        let doorbell = Doorbell::new(wake, format!("mqtt-twister-wake-{}", cfg.user));
        let persistence = broker_conf.as_ref().is_some_and(|c| c.persistence);
        let restored = match (persistence, v21.then(broker_holds_session_v21).flatten()) {
            (false, _) => RestoredSessions::None,
            (true, Some(holds)) => restored_sessions(saved.as_ref(), holds),
            // 2.0 cannot ask which it restored.
            (true, None) => RestoredSessions::All,
        };
        let worker = match WorkerHandle::spawn(cfg.clone(), make_rpc, saved, doorbell, restored) {
            Ok(w) => w,
            Err(e) => return refuse(&format!("cannot start the worker thread: {e}")),
        };
        let (spool, keeper) = match spool {
            None => (None, None),
            Some((spool, appender, report)) => {
                if let Some(line) = report {
                    log_now(Level::Warning, &line);
                }
                match spool_with_worker(spool, appender, &worker) {
                    Ok((intake, keeper)) => (Some(intake), Some(keeper)),
                    Err(e) => return refuse(&format!("cannot start the spool's thread: {e}")),
                }
            }
        };
        let mut p = Box::new(Plugin {
            id,
            cfg: cfg.clone(),
            worker,
            acl,
            v21,
            qos2: Qos2Dedup::default(),
            registered: Vec::new(),
            dropped: 0,
            refused: 0,
            pace_said: false,
            dropped_reported: 0,
            last_drop_report: Instant::now(),
            pinned: keep_library_loaded(),
            watch: Watch::new(cfg.rpc_timeout),
            spool,
            keeper,
        });
        if !p.pinned {
            log_now(Level::Warning, "mqtt-twister: could not keep the library loaded: the broker's stop waits for the worker however long it takes");
        }
        let mut ok = register(&mut p, MOSQ_EVT_MESSAGE as c_int, on_message)
            && register(&mut p, MOSQ_EVT_TICK as c_int, on_tick)
            && (!v21 || register(&mut p, MOSQ_EVT_TICK as c_int, on_tick_pace))
            && register(&mut p, MOSQ_EVT_DISCONNECT as c_int, on_session);
        if ok && v21 {
            ok = register(&mut p, MOSQ_EVT_CONNECT_V21, on_session)
                && register(&mut p, MOSQ_EVT_CLIENT_OFFLINE_V21, on_session);
            // 2.1 refuses persistence events to plugins under `persistence true` (and logs an error):
            // there the expiry of an offline session stays unseen.
            if ok && !persistence {
                register(
                    &mut p,
                    MOSQ_EVT_PERSIST_CLIENT_DELETE_V21,
                    on_session_deleted_v21,
                );
            }
        }
        let (via, access) = if v21 {
            ok = ok
                && register(&mut p, MOSQ_EVT_SUBSCRIBE_V21, on_subscribe_v21)
                && register(&mut p, MOSQ_EVT_UNSUBSCRIBE_V21, on_subscribe_v21);
            ("SUBSCRIBE events", "unchanged, no ACL check".to_string())
        } else {
            ok = ok && register(&mut p, MOSQ_EVT_ACL_CHECK as c_int, on_acl_check);
            ("ACL checks", format!("{acl:?}"))
        };
        if !ok {
            unregister_all(&mut p);
            p.worker.stop(STOP_WAIT);
            return refuse("the broker refused to register a callback");
        }
        log_now(
            Level::Notice,
            &format!(
                "mqtt-twister: loaded for Twister user '{}' at {} (subscriptions seen through {via}; access: {access})",
                cfg.user, cfg.rpc_url
            ),
        );
        if userdata.is_null() {
            unregister_all(&mut p);
            return refuse("the broker gave no place for plugin data");
        }
        // SAFETY: userdata is the broker's slot for this plugin's data; freed in plugin_cleanup.
        unsafe { *userdata = Box::into_raw(p) as *mut c_void };
        MOSQ_ERR_SUCCESS as c_int
    })
}

pub fn plugin_cleanup(userdata: *mut c_void, _opts: *mut mosquitto_opt, _count: c_int) -> c_int {
    guarded("cleanup", MOSQ_ERR_SUCCESS as c_int, || {
        if userdata.is_null() {
            return MOSQ_ERR_SUCCESS as c_int;
        }
        // SAFETY: the pointer plugin_init made with Box::into_raw; the broker calls cleanup once.
        let mut p = unsafe { Box::from_raw(userdata as *mut Plugin) };
        unregister_all(&mut p);
        // The broker unloads the library right after. A worker that does not stop in time (stuck on
        // twisterd) is left behind, which is safe only because the library stays loaded.
        let wait = if p.pinned { STOP_WAIT } else { Duration::MAX };
        let stopped = p.worker.stop(wait);
        // The worker's last progress is written down; what it did not take is replayed next start.
        if let Some(keeper) = p.keeper.as_mut() {
            keeper.stop();
        }
        while let Ok(m) = p.worker.from_worker.try_recv() {
            if let ToBroker::Log(level, text) = m {
                log_now(level, &text);
            }
        }
        if !stopped {
            log_now(Level::Warning, &format!("mqtt-twister: the worker did not stop within {} s (waiting on twisterd?): left behind; what it had not posted is lost, and the state file may be a second old", STOP_WAIT.as_secs()));
        }
        MOSQ_ERR_SUCCESS as c_int
    })
}
