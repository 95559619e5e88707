//! mqtt-twister: a Mosquitto plugin that makes independent brokers one distributed MQTT broker by
//! carrying publishes and subscription interest over the Twister peer-to-peer network.
//!
//! Layout: `host` (all unsafe: bindings, trampolines, typed views of event data) calls `plugin` (what
//! each broker event means, safe), which hands over through `bus` (the cross-thread types) to
//! `worker`, the driver of the relay core `relay` (decisions without I/O: `relay::outbox` posts,
//! `relay::inbox` reads), which it carries out through `twister` (the typed twisterd client); `dht`
//! (profile interest). `route` decides where a local message goes. Pure logic: `config`, `topic`,
//! `wire` (v1, poc, and `wire::dense` for v2), `interest`, `state`, `access`, `startup`, `qos2`.
//! The exported symbols below are one-line shims into `host::entry`.

pub mod access;
pub mod bus;
pub mod config;
pub mod dedup;
pub mod dht;
pub mod drops;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod ids;
pub mod injected;
pub mod interest;
pub mod numbers;
pub mod plugin;
pub mod qos2;
pub mod ranges;
pub mod ratelimit;
pub mod reassembly;
pub mod relay;
pub mod retained_dht;
pub mod route;
pub mod spool;
pub mod startup;
pub mod state;
pub mod supervise;
pub mod topic;
pub mod twister;
pub mod wake;
pub mod watch;
pub mod wire;
pub mod worker;

pub mod host;

#[cfg(not(test))]
mod exports {
    use crate::host::entry;
    use std::ffi::{c_int, c_void};

    type PluginId = crate::host::entry::PluginId;
    type Opt = crate::host::entry::Opt;

    #[no_mangle]
    pub extern "C" fn mosquitto_plugin_version(count: c_int, versions: *const c_int) -> c_int {
        entry::plugin_version(count, versions)
    }

    #[no_mangle]
    pub extern "C" fn mosquitto_plugin_init(
        id: *mut PluginId,
        userdata: *mut *mut c_void,
        opts: *mut Opt,
        count: c_int,
    ) -> c_int {
        entry::plugin_init(id, userdata, opts, count)
    }

    #[no_mangle]
    pub extern "C" fn mosquitto_plugin_cleanup(
        userdata: *mut c_void,
        opts: *mut Opt,
        count: c_int,
    ) -> c_int {
        entry::plugin_cleanup(userdata, opts, count)
    }
}
