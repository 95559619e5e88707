//! Mosquitto loading the built plugin: configuration, start, log, stop; killed on drop.

use crate::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
