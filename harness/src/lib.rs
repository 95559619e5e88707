//! Real parts for integration tests and benchmarks: the dev node over HTTP, Mosquitto loading the built
//! plugin, MQTT clients. Every process is killed when its guard drops; readiness is polled, never slept
//! for.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod broker;
mod devnode;
pub mod hosts;
mod mqtt;
mod posts;
mod raw_mqtt;
pub use broker::*;
pub use devnode::*;
pub use mqtt::*;
pub use posts::readable_posts;
pub use raw_mqtt::{publish_qos2_retransmitted_with_dup, RawMqtt};

pub const RPC_USER: &str = "test";
pub const RPC_PASSWORD: &str = "test-secret";

/// target/debug or target/release, found from the running binary's path (target/<profile>/deps/<test>
/// for a test, target/<profile>/<bin> for the benchmark).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("binary path");
    let dir = exe.parent().expect("binary directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn plugin_path() -> PathBuf {
    let p = target_dir().join("libmqtt_twister.so");
    assert!(
        p.exists(),
        "{} missing: run `cargo build` (make test does) before the tests",
        p.display()
    );
    p
}

/// The Mosquitto a test runs against. Every integration test runs on both (`on_both_brokers!`);
/// the version is per test thread, so `Broker::start` needs no extra argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerVersion {
    /// Debian bookworm's 2.0.11, the system's `mosquitto`.
    V2_0,
    /// 2.1.2, built from Debian's source package by `scripts/mosquitto-2.1.sh` under the target dir.
    V2_1,
}

thread_local! {
    static BROKER_VERSION: std::cell::Cell<Option<BrokerVersion>> = const { std::cell::Cell::new(None) };
}

/// The broker version of the test running on this thread. None is set on a thread outside
/// `on_both_brokers!` / `with_broker_version` (a thread a test spawned does not inherit it): starting
/// a broker there fails rather than run silently on 2.0 in a 2.1 test.
pub fn broker_version() -> BrokerVersion {
    BROKER_VERSION.with(|v| v.get()).unwrap_or_else(|| {
        panic!("no broker version on this thread: declare the test in on_both_brokers! (or run the code in with_broker_version); threads a test spawns do not inherit it")
    })
}

/// Runs `f` with every broker it starts being `version`; the version before is back afterwards, so
/// one test can start brokers of both versions (`with_broker_version(v.other(), || Broker::start(..))`).
pub fn with_broker_version<T>(version: BrokerVersion, f: impl FnOnce() -> T) -> T {
    let before = BROKER_VERSION.with(|v| v.replace(Some(version)));
    let result = f();
    BROKER_VERSION.with(|v| v.set(before));
    result
}

impl BrokerVersion {
    /// The version that is not this one.
    pub fn other(self) -> BrokerVersion {
        match self {
            BrokerVersion::V2_0 => BrokerVersion::V2_1,
            BrokerVersion::V2_1 => BrokerVersion::V2_0,
        }
    }

    /// How the broker names itself in its log ("mosquitto version 2.0.11 running").
    pub fn log_banner(self) -> &'static str {
        match self {
            BrokerVersion::V2_0 => "mosquitto version 2.0.",
            BrokerVersion::V2_1 => "mosquitto version 2.1.",
        }
    }
}

/// The `mosquitto` binary of `version`. 2.1 comes from `MQTT_TWISTER_MOSQUITTO_2_1` or from
/// `<workspace target>/mosquitto-2.1.2/sbin/mosquitto`; missing, the test fails saying how to build it.
pub fn mosquitto_binary(version: BrokerVersion) -> PathBuf {
    match version {
        BrokerVersion::V2_0 => PathBuf::from("mosquitto"),
        BrokerVersion::V2_1 => {
            let p = std::env::var_os("MQTT_TWISTER_MOSQUITTO_2_1")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    target_dir()
                        .parent()
                        .expect("workspace target dir")
                        .join("mosquitto-2.1.2/sbin/mosquitto")
                });
            assert!(
                p.exists(),
                "Mosquitto 2.1.2 not found at {}: build it with `make mosquitto-2.1` (make test does)",
                p.display()
            );
            p
        }
    }
}

/// Declares each test once per broker version: `fn name() { body }` becomes the tests
/// `name::mosquitto_2_0` and `name::mosquitto_2_1`. The body reads `broker_version()` where
/// behaviour differs by version.
#[macro_export]
macro_rules! on_both_brokers {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body() $body
            $(#[$meta])*
            #[test]
            fn mosquitto_2_0() {
                $crate::with_broker_version($crate::BrokerVersion::V2_0, body)
            }
            $(#[$meta])*
            #[test]
            fn mosquitto_2_1() {
                $crate::with_broker_version($crate::BrokerVersion::V2_1, body)
            }
        }
    )*};
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory mosquitto can write after dropping root privileges.
pub fn workdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("mqtt-twister-test")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Two brokers, A (user alice) and B (user bob), following each other, both ready.
pub struct Pair {
    pub node: DevNode,
    pub dir: tempfile::TempDir,
    pub a: Broker,
    pub b: Broker,
}

impl Pair {
    pub fn start(a_extra: &[&str], b_extra: &[&str]) -> Pair {
        Self::start_with(DevNode::start(), a_extra, b_extra)
    }

    /// The same pair on a dev node started by the caller (with a data directory, say).
    pub fn start_with(node: DevNode, a_extra: &[&str], b_extra: &[&str]) -> Pair {
        let dir = workdir();
        let mut a_lines = vec!["plugin_opt_follow bob"];
        a_lines.extend_from_slice(a_extra);
        let mut b_lines = vec!["plugin_opt_follow alice"];
        b_lines.extend_from_slice(b_extra);
        let a = Broker::start(
            dir.path(),
            "a",
            &plugin_conf(&node, dir.path(), "alice", &a_lines),
        );
        let b = Broker::start(
            dir.path(),
            "b",
            &plugin_conf(&node, dir.path(), "bob", &b_lines),
        );
        a.wait_ready();
        b.wait_ready();
        Pair { node, dir, a, b }
    }

    /// A subscriber ("far") to `filter` on B, ready once bob's profile lists it, and one ("local")
    /// on A.
    pub fn far_and_local(&self, filter: &str, qos: rumqttc::QoS) -> (Mqtt, Mqtt) {
        let far = Mqtt::connect(self.b.port, "far", true);
        assert!(far.subscribe(filter, qos));
        wait_interest(&self.node, "bob", filter);
        let local = Mqtt::connect(self.a.port, "local", true);
        assert!(local.subscribe(filter, qos));
        (far, local)
    }
}

/// Mosquitto's own persistence, saved in `dir` every second.
pub fn mosquitto_persistence(dir: &std::path::Path) -> String {
    format!(
        "persistence true\npersistence_location {}/\nautosave_interval 1",
        dir.display()
    )
}

/// For a receiving broker killed and restarted: A (alice, following bob, forwarding `forward`) and
/// B (bob, following alice, with Mosquitto's persistence in `d` when `persistence`), both ready, and
/// B's configuration to start it again with.
pub fn sender_and_receiver(
    node: &DevNode,
    d: &std::path::Path,
    forward: &str,
    persistence: bool,
) -> (Broker, Broker, String) {
    let publish = format!("plugin_opt_publish {forward}");
    let a = Broker::start(
        d,
        "a",
        &plugin_conf(node, d, "alice", &["plugin_opt_follow bob", &publish]),
    );
    let persistence_lines = mosquitto_persistence(d);
    let mut b_lines = vec!["plugin_opt_follow alice"];
    if persistence {
        b_lines.push(&persistence_lines);
    }
    let b_conf = plugin_conf(node, d, "bob", &b_lines);
    let b = Broker::start(d, "b", &b_conf);
    a.wait_ready();
    b.wait_ready();
    (a, b, b_conf)
}

/// Waits until `user`'s profile lists `filter` (the broker has published its interest).
pub fn wait_interest(node: &DevNode, user: &str, filter: &str) {
    wait_for(
        Duration::from_secs(10),
        &format!("{user}'s profile to list {filter}"),
        || {
            node.profile_topics(user)
                .filter(|t| t.iter().any(|f| f == filter))
                .map(|_| ())
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_version_is_per_thread_and_restored() {
        with_broker_version(BrokerVersion::V2_1, || {
            assert_eq!(broker_version(), BrokerVersion::V2_1);
            let other = with_broker_version(broker_version().other(), broker_version);
            assert_eq!(other, BrokerVersion::V2_0);
            assert_eq!(broker_version(), BrokerVersion::V2_1, "restored");
            let spawned = std::thread::spawn(broker_version).join();
            assert!(spawned.is_err(), "a spawned thread has no version");
        });
        assert!(std::panic::catch_unwind(broker_version).is_err());
    }
}
