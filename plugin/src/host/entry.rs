//! The plugin's entry points (`mosquitto_plugin_version`, `_init`, `_cleanup`, exported from lib.rs)
//! and callback registration. What the plugin does is `crate::plugin`; this only reads the broker's
//! options, learns which broker runs (2.0 or 2.1), keeps the library loaded and registers the
//! trampolines.

use super::bindings::*;
use super::raw::*;
use super::thread::ClientRef;
use super::trampolines::{self, guarded, Callback, Callbacks};
use super::views::{
    AclCheckEvent, AclVerdict, Broker, DisconnectEvent, MessageAnswer, MessageEvent,
    SubscribeEvent, TickEvent,
};
use super::BrokerThread;
use crate::bus::Level;
use crate::plugin::{HostFacts, Plugin};
use crate::supervise::STOP_WAIT;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

pub type PluginId = mosquitto_plugin_id_t;
pub type Opt = mosquitto_opt;

impl Callbacks for Plugin {
    #[inline(always)]
    fn message(&mut self, ev: &MessageEvent<ClientRef>) -> MessageAnswer {
        Plugin::message(self, ev)
    }
    #[inline(always)]
    fn acl_check(&mut self, ev: &AclCheckEvent<ClientRef>) -> AclVerdict {
        Plugin::acl_check(self, ev)
    }
    fn subscription(&mut self, ev: &SubscribeEvent) {
        Plugin::subscription(self, ev)
    }
    fn session(&mut self, ev: &DisconnectEvent) {
        Plugin::session(self, ev)
    }
    fn session_deleted(&mut self, client: &str) {
        Plugin::session_deleted(self, client)
    }
    fn tick(&mut self, broker: &BrokerThread, ev: &mut TickEvent, pace: bool) {
        Plugin::tick(self, broker, ev, pace)
    }
}

/// What the broker's slot for plugin data points to, from init to cleanup.
struct Loaded {
    id: *mut mosquitto_plugin_id_t,
    registered: Vec<(c_int, Callback)>,
    plugin: Plugin,
}

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
            let text = |p: *mut c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    // SAFETY: key and value are NUL-terminated strings owned by the broker.
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
pub fn keep_library_loaded() -> bool {
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

/// Mosquitto 2.1's `mosquitto_client(id)` (absent from 2.0): whether the broker holds a session for
/// `id`. Broker thread only (it is used during init).
fn broker_holds_session_v21(_: &BrokerThread) -> Option<impl Fn(&str) -> bool> {
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

fn refuse(here: &BrokerThread, msg: &str) -> c_int {
    here.log(Level::Error, &format!("mqtt-twister: {msg}"));
    eprintln!("mqtt-twister: {msg}");
    MOSQ_ERR_INVAL as c_int
}

fn register(l: &mut Loaded, event: c_int, cb: Callback) -> bool {
    let userdata = &mut l.plugin as *mut Plugin as *mut c_void;
    // SAFETY: `id` is the identifier the broker gave init; the plugin lives (boxed in `Loaded`) until
    // cleanup, which unregisters every callback before freeing it.
    let rc = unsafe { mosquitto_callback_register(l.id, event, Some(cb), ptr::null(), userdata) };
    if rc == MOSQ_ERR_SUCCESS as c_int {
        l.registered.push((event, cb));
        true
    } else {
        false
    }
}

fn unregister_all(l: &mut Loaded) {
    for (event, cb) in l.registered.drain(..) {
        // SAFETY: exactly the (event, callback) pairs registered with this identifier.
        unsafe { mosquitto_callback_unregister(l.id, event, Some(cb), ptr::null()) };
    }
}

/// The callbacks for this broker: subscriptions through SUBSCRIBE events on 2.1, ACL checks on 2.0.
fn callbacks(v21: bool) -> Vec<(c_int, Callback)> {
    let mut list: Vec<(c_int, Callback)> = vec![
        (MOSQ_EVT_MESSAGE as c_int, trampolines::message::<Plugin>),
        (MOSQ_EVT_TICK as c_int, trampolines::tick::<Plugin, false>),
    ];
    if v21 {
        list.push((MOSQ_EVT_TICK as c_int, trampolines::tick::<Plugin, true>));
    }
    list.push((MOSQ_EVT_DISCONNECT as c_int, trampolines::session::<Plugin>));
    if v21 {
        list.extend([
            (
                MOSQ_EVT_CONNECT_V21,
                trampolines::session::<Plugin> as Callback,
            ),
            (MOSQ_EVT_CLIENT_OFFLINE_V21, trampolines::session::<Plugin>),
            (MOSQ_EVT_SUBSCRIBE_V21, trampolines::subscription::<Plugin>),
            (
                MOSQ_EVT_UNSUBSCRIBE_V21,
                trampolines::subscription::<Plugin>,
            ),
        ]);
    } else {
        list.push((
            MOSQ_EVT_ACL_CHECK as c_int,
            trampolines::acl_check::<Plugin>,
        ));
    }
    list
}

pub fn plugin_init(
    id: *mut mosquitto_plugin_id_t,
    userdata: *mut *mut c_void,
    opts: *mut mosquitto_opt,
    count: c_int,
) -> c_int {
    guarded("init", MOSQ_ERR_UNKNOWN as c_int, |here| {
        // SAFETY: the broker passes `count` options valid for this call.
        let options = unsafe { read_options(opts, count) };
        let v21 = is_mosquitto_21();
        let facts = HostFacts {
            v21,
            holds_session: v21.then(|| broker_holds_session_v21(here)).flatten(),
            pinned: keep_library_loaded(),
            storage: Box::new(MappedSegments),
        };
        let plugin = match Plugin::start(&options, facts) {
            Ok((p, spool_report)) => {
                if let Some(line) = spool_report {
                    here.log(Level::Warning, &line);
                }
                p
            }
            Err(e) => return refuse(here, &e),
        };
        let mut l = Box::new(Loaded {
            id,
            registered: Vec::new(),
            plugin,
        });
        if !l.plugin.pinned {
            here.log(Level::Warning, "mqtt-twister: could not keep the library loaded: the broker's stop waits for the worker however long it takes");
        }
        let ok = callbacks(v21)
            .into_iter()
            .all(|(event, cb)| register(&mut l, event, cb));
        // Registered where 2.1 allows it; without it an expired session's interest stays (README).
        if ok && l.plugin.wants_session_deletions() {
            register(
                &mut l,
                MOSQ_EVT_PERSIST_CLIENT_DELETE_V21,
                trampolines::session_deleted::<Plugin>,
            );
        }
        if !ok {
            unregister_all(&mut l);
            l.plugin.worker.stop(STOP_WAIT);
            return refuse(here, "the broker refused to register a callback");
        }
        here.log(Level::Notice, &l.plugin.loaded_line());
        if userdata.is_null() {
            unregister_all(&mut l);
            return refuse(here, "the broker gave no place for plugin data");
        }
        // SAFETY: userdata is the broker's slot for this plugin's data; freed in plugin_cleanup.
        unsafe { *userdata = Box::into_raw(l) as *mut c_void };
        MOSQ_ERR_SUCCESS as c_int
    })
}

pub fn plugin_cleanup(userdata: *mut c_void, _opts: *mut mosquitto_opt, _count: c_int) -> c_int {
    guarded("cleanup", MOSQ_ERR_SUCCESS as c_int, |here| {
        if userdata.is_null() {
            return MOSQ_ERR_SUCCESS as c_int;
        }
        // SAFETY: the pointer plugin_init made with Box::into_raw; the broker calls cleanup once.
        let mut l = unsafe { Box::from_raw(userdata as *mut Loaded) };
        unregister_all(&mut l);
        l.plugin.stop(here);
        MOSQ_ERR_SUCCESS as c_int
    })
}
