//! Real parts for integration tests and benchmarks: the dev node over HTTP, Mosquitto loading the built
//! plugin, MQTT clients. Every process is killed when its guard drops; readiness is polled, never slept
//! for.

use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub mod hosts;
mod posts;
pub use posts::readable_posts;

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

pub struct DevNode {
    child: Child,
    pub port: u16,
    pub url: String,
    args: Vec<String>,
}

impl DevNode {
    /// A fresh in-memory node, a block every 200 ms.
    pub fn start() -> DevNode {
        Self::start_with(&["-blockinterval=0.2"], 0)
    }

    pub fn start_with(extra: &[&str], port: u16) -> DevNode {
        let mut args = vec![
            format!("-rpcuser={RPC_USER}"),
            format!("-rpcpassword={RPC_PASSWORD}"),
            format!("-rpcport={port}"),
            "-spaminterval=0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(target_dir().join("twister-devnode"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start twister-devnode (built by cargo build)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("dev node said: {line}"))
            .to_string();
        let port = url
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        DevNode {
            child,
            port,
            url,
            args,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: the node saves its state and exits.
    pub fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Starts again on the same port with the same flags.
    pub fn restart(&mut self) {
        let args: Vec<&str> = self
            .args
            .iter()
            .filter(|a| !a.starts_with("-rpc"))
            .map(String::as_str)
            .collect();
        let args: Vec<&str> = args
            .into_iter()
            .filter(|a| *a != "-spaminterval=0")
            .collect();
        // The old process has exited (stop); dropping its guard is harmless.
        *self = DevNode::start_with(&args, self.port);
    }

    pub fn call(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        rpc(&self.url, method, params)
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e:?}"))
    }

    /// A registered user able to post, created directly (not by a plugin).
    pub fn user(&self, name: &str) {
        self.ok("createwalletuser", json!([name]));
        self.ok("sendnewusertransaction", json!([name]));
        let h = self.ok("getblockcount", json!([])).as_i64().unwrap();
        wait_for(Duration::from_secs(10), "two blocks", || {
            (self.ok("getblockcount", json!([])).as_i64().unwrap() >= h + 2).then_some(())
        });
        self.ok("follow", json!([name, [name]]));
    }

    pub fn profile_topics(&self, user: &str) -> Option<Vec<String>> {
        let got = self.ok("dhtget", json!([user, "profile", "s"]));
        let list = got.get(0)?["p"]["v"]
            .get("mqtt_topics")?
            .as_array()?
            .clone();
        Some(
            list.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        )
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rpc(url: &str, method: &str, params: Value) -> Result<Value, (i64, String)> {
    use base64::Engine;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{RPC_USER}:{RPC_PASSWORD}"));
    let body = json!({"id": 1, "method": method, "params": params});
    let resp = match ureq::post(url)
        .set("Authorization", &format!("Basic {auth}"))
        .send_string(&body.to_string())
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err((0, e.to_string())),
    };
    let text = resp.into_string().map_err(|e| (0, e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| (0, e.to_string()))?;
    match &v["error"] {
        Value::Null => Ok(v["result"].clone()),
        e => Err((
            e["code"].as_i64().unwrap_or(0),
            e["message"].as_str().unwrap_or("").to_string(),
        )),
    }
}

/// The broker's log lines every test broker writes (to stderr, which the harness keeps in a file).
pub const LOG_LINES: &str =
    "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n";

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub conf: PathBuf,
    pub log: PathBuf,
}

/// `plugin_opt_*` lines for a broker whose Twister user is `user`, talking to `node`.
pub fn plugin_conf(node: &DevNode, dir: &Path, user: &str, extra: &[&str]) -> String {
    plugin_conf_url(&node.url, dir, user, extra)
}

/// The same for a node at `rpc_url` (a node in another network namespace, say).
pub fn plugin_conf_url(rpc_url: &str, dir: &Path, user: &str, extra: &[&str]) -> String {
    let state = dir.join(format!("{user}.state"));
    let defaults = [
        format!("plugin {}", plugin_path().display()),
        format!("plugin_opt_rpc_url {rpc_url}"),
        format!("plugin_opt_rpc_user {RPC_USER}"),
        format!("plugin_opt_rpc_password {RPC_PASSWORD}"),
        format!("plugin_opt_user {user}"),
        "plugin_opt_create_user true".into(),
        "plugin_opt_poll_interval_ms 50".into(),
        "plugin_opt_batch_delay_ms 20".into(),
        "plugin_opt_profile_debounce_ms 100".into(),
        "plugin_opt_interest_refresh_ms 300".into(),
        format!("plugin_opt_state_file {}", state.display()),
    ];
    // An extra line replaces the default with the same key; list keys simply add up.
    let key = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    let mut lines: Vec<String> = defaults
        .into_iter()
        .filter(|d| !extra.iter().any(|e| key(e) == key(d)))
        .collect();
    lines.extend(extra.iter().map(|e| e.to_string()));
    lines.join("\n") + "\n"
}

impl Broker {
    /// Starts mosquitto with a listener on a free port plus `body`, and waits until it accepts
    /// connections (or has exited, which `running()` then tells).
    pub fn start(dir: &Path, name: &str, body: &str) -> Broker {
        Self::start_on(dir, name, body, free_port())
    }

    pub fn start_on(dir: &Path, name: &str, body: &str, port: u16) -> Broker {
        Self::start_conf(
            dir,
            name,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n{LOG_LINES}{body}"),
            port,
        )
    }

    /// Starts mosquitto with exactly `text` as its configuration, which has a listener on `port`.
    pub fn start_conf(dir: &Path, name: &str, text: &str, port: u16) -> Broker {
        let conf = dir.join(format!("{name}.conf"));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(&conf, text).unwrap();
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(mosquitto_binary(broker_version()))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        let mut b = Broker {
            child: Some(child),
            port,
            conf,
            log,
        };
        wait_for(
            Duration::from_secs(10),
            "mosquitto to listen or exit",
            || {
                (std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() || !b.running())
                    .then_some(())
            },
        );
        b
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for the broker to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        wait_for(timeout, "mosquitto to exit", || {
            child.try_wait().ok().flatten()
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_for(
            timeout,
            &format!("'{needle}' in {}:\n{}", self.log.display(), self.log_text()),
            || self.log_text().contains(needle).then_some(()),
        );
    }

    /// The plugin has reached twisterd and is following its users.
    pub fn wait_ready(&self) {
        self.wait_log("mqtt-twister: ready", Duration::from_secs(30));
    }

    /// SIGTERM, then wait: the plugin's cleanup runs.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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
