//! mqtt-twister: a Mosquitto plugin that makes independent brokers one distributed MQTT broker by
//! carrying publishes and subscription interest over the Twister peer-to-peer network.
//!
//! Layout: `broker` (all unsafe, the broker's callbacks) -> channels -> `worker`, the driver of the
//! relay core `relay` (decisions without I/O: `relay::outbox` posts, `relay::inbox` reads), which it
//! carries out through `twister` (the typed twisterd client); `dht` (profile interest). Pure logic:
//! `config`, `topic`, `wire` (v1, poc; `wire_v2` for the dense v2), `interest`, `state`, `access`, `startup`, `held`, `qos2`. The exported
//! symbols below are one-line shims into `broker`.

pub mod access;
pub mod bus;
pub mod config;
pub mod dht;
pub mod directs;
pub mod drops;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod held;
pub mod interest;
pub mod private_hold;
pub mod qos2;
pub mod ratelimit;
pub mod reassembly;
pub mod relay;
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
pub mod wire_v2;
pub mod worker;

// The broker's symbols exist only inside a running mosquitto: unit tests build without them.
#[cfg(not(test))]
mod bindings;
#[cfg(not(test))]
mod broker;

#[cfg(not(test))]
mod exports {
    use crate::bindings::{mosquitto_opt, mosquitto_plugin_id_t};
    use crate::broker;
    use std::ffi::{c_int, c_void};

    #[no_mangle]
    pub extern "C" fn mosquitto_plugin_version(count: c_int, versions: *const c_int) -> c_int {
        broker::plugin_version(count, versions)
    }

    #[no_mangle]
    pub extern "C" fn mosquitto_plugin_init(
        id: *mut mosquitto_plugin_id_t,
        userdata: *mut *mut c_void,
        opts: *mut mosquitto_opt,
        count: c_int,
    ) -> c_int {
        broker::plugin_init(id, userdata, opts, count)
    }

    #[no_mangle]
    pub extern "C" fn mosquitto_plugin_cleanup(
        userdata: *mut c_void,
        opts: *mut mosquitto_opt,
        count: c_int,
    ) -> c_int {
        broker::plugin_cleanup(userdata, opts, count)
    }
}
