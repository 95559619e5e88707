//! Keeping access control as it is without the plugin.
//!
//! On Mosquitto 2.0 the plugin learns about subscriptions only through ACL_CHECK. Once any plugin
//! registers ACL_CHECK, a check that every callback defers is DENIED, whereas with no callback at all
//! it is allowed. So the plugin's answer must depend on what else decides access:
//! - an `acl_file` (a callback of the broker's own, called after ours): defer to it;
//! - nothing: allow, exactly what the broker does without plugins;
//! - another plugin: only the operator knows whether it decides access (`plugin_opt_access`).
//!
//! Mosquitto 2.1 has SUBSCRIBE events, so the plugin registers no ACL check there and access is left
//! alone; only the wake-up listener is read from the configuration then.
//!
//! The broker's configuration file is found on the broker's command line (`-c FILE`).

use crate::config::AccessMode;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AclAnswer {
    Defer,
    Allow,
}

#[derive(Debug, Default, PartialEq)]
pub struct BrokerConf {
    pub per_listener_settings: bool,
    pub acl_file: bool,
    /// Plugins other than ours: `plugin` / `auth_plugin` / `global_plugin` paths, `plugin_load` names.
    pub other_plugins: Vec<String>,
    /// The global `allow_anonymous` (or, with `per_listener_settings true`, none: it is per listener).
    pub allow_anonymous: Option<bool>,
    pub listeners: Vec<Listener>,
    /// `persistence true`: the broker restores its sessions from its own file at start.
    pub persistence: bool,
}

#[derive(Debug, Default, PartialEq)]
pub struct Listener {
    pub port: u16,
    pub bind: Option<String>,
    /// `protocol mqtt` (the default), not websockets or anything else.
    pub mqtt: bool,
    /// TLS or PSK (`certfile`, `psk_hint`): a plain TCP client cannot talk to it.
    pub tls: bool,
    /// 2.1's `listener_allow_anonymous`, or `allow_anonymous` under `per_listener_settings true`.
    pub allow_anonymous: Option<bool>,
}

impl BrokerConf {
    /// Whether an anonymous client may connect to `l`: the listener's own setting, else (unless
    /// settings are per listener) the global one; unset means no, once any listener is configured.
    fn anonymous_on(&self, l: &Listener) -> bool {
        match l.allow_anonymous {
            Some(allowed) => allowed,
            None => !self.per_listener_settings && self.allow_anonymous == Some(true),
        }
    }

    /// Where the plugin can reach its own broker as an anonymous MQTT client, to wake its event loop.
    pub fn wake_address(&self) -> Option<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        if self.listeners.is_empty() {
            // No listener configured: the broker listens on the loopback only, anonymous clients allowed.
            return ("127.0.0.1", 1883).to_socket_addrs().ok()?.next();
        }
        let l = self
            .listeners
            .iter()
            .find(|l| l.port != 0 && l.mqtt && !l.tls && self.anonymous_on(l))?;
        let host = match l.bind.as_deref() {
            None | Some("0.0.0.0") | Some("::") => "127.0.0.1",
            Some(h) => h,
        };
        (host, l.port).to_socket_addrs().ok()?.next()
    }
}

/// The `-c` / `--config-file` argument of the broker's command line.
pub fn config_path(args: &[String]) -> Option<PathBuf> {
    let at = args
        .iter()
        .position(|a| a == "-c" || a == "--config-file")?;
    args.get(at + 1).map(PathBuf::from)
}

fn is_ours(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.contains("mqtt_twister"))
}

/// Reads mosquitto.conf text; `include` returns the texts of the files of an `include_dir`.
pub fn parse(text: &str, include: &dyn Fn(&str) -> Vec<String>, conf: &mut BrokerConf) {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((line, ""));
        let on = value == "true";
        match key {
            "per_listener_settings" => conf.per_listener_settings = on,
            "acl_file" => conf.acl_file = true,
            "allow_anonymous" if conf.per_listener_settings => {
                if let Some(l) = conf.listeners.last_mut() {
                    l.allow_anonymous = Some(on);
                }
            }
            "allow_anonymous" => conf.allow_anonymous = Some(on),
            "listener_allow_anonymous" => {
                if let Some(l) = conf.listeners.last_mut() {
                    l.allow_anonymous = Some(on);
                }
            }
            "persistence" => conf.persistence = on,
            "listener" | "port" => {
                let mut words = value.split_whitespace();
                if let Some(port) = words.next().and_then(|p| p.parse().ok()) {
                    conf.listeners.push(Listener {
                        port,
                        bind: words.next().map(String::from),
                        mqtt: true,
                        ..Listener::default()
                    });
                }
            }
            "protocol" => {
                if let Some(l) = conf.listeners.last_mut() {
                    l.mqtt = value == "mqtt";
                }
            }
            "certfile" | "psk_hint" => {
                if let Some(l) = conf.listeners.last_mut() {
                    l.tls = true;
                }
            }
            "plugin" | "auth_plugin" | "global_plugin" if !is_ours(value) => {
                conf.other_plugins.push(value.to_string())
            }
            // 2.1: `plugin_load <name> <path>` loads; `plugin_use <name>` only attaches it to a listener.
            "plugin_load" => {
                let path = value.split_whitespace().nth(1).unwrap_or(value);
                if !is_ours(path) {
                    conf.other_plugins.push(path.to_string());
                }
            }
            "include_dir" => {
                for t in include(value) {
                    parse(&t, include, conf);
                }
            }
            _ => {}
        }
    }
}

fn read_include_dir(dir: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// The running broker's configuration, when it can be read.
pub fn read_running_broker() -> Option<BrokerConf> {
    let raw = std::fs::read("/proc/self/cmdline").ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let text = std::fs::read_to_string(config_path(&args)?).ok()?;
    let mut conf = BrokerConf::default();
    parse(&text, &read_include_dir, &mut conf);
    Some(conf)
}

pub fn decide(mode: AccessMode, conf: Option<&BrokerConf>) -> Result<AclAnswer, String> {
    const HINT: &str = "set plugin_opt_access to defer (an acl_file or another plugin decides access) or allow (nothing else does)";
    match mode {
        AccessMode::Allow => Ok(AclAnswer::Allow),
        AccessMode::Defer => Ok(AclAnswer::Defer),
        AccessMode::Auto => match conf {
            None => Err(format!(
                "plugin_opt_access auto: cannot read the broker's configuration file; {HINT}"
            )),
            Some(c) if !c.other_plugins.is_empty() => Err(format!(
                "plugin_opt_access auto: another plugin is loaded ({}); {HINT}",
                c.other_plugins.join(", ")
            )),
            Some(c) if c.acl_file => Ok(AclAnswer::Defer),
            Some(_) => Ok(AclAnswer::Allow),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> BrokerConf {
        let mut c = BrokerConf::default();
        parse(
            text,
            &|_| vec!["acl_file /etc/mosquitto/acl\n".to_string()],
            &mut c,
        );
        c
    }

    #[test]
    fn reads_what_decides_access() {
        let c = conf("# comment\nlistener 1883\nplugin /usr/lib/x86_64-linux-gnu/libmqtt_twister.so\nplugin_opt_user a\n");
        assert!(!c.per_listener_settings && !c.acl_file && c.other_plugins.is_empty());
        assert_eq!(decide(AccessMode::Auto, Some(&c)), Ok(AclAnswer::Allow));
        let c = conf("acl_file /etc/acl\nplugin /x/libmqtt_twister.so\n");
        assert_eq!(decide(AccessMode::Auto, Some(&c)), Ok(AclAnswer::Defer));
        let c = conf("include_dir /etc/mosquitto/conf.d\n");
        assert!(c.acl_file);
        let c =
            conf("plugin /usr/lib/mosquitto_dynamic_security.so\nplugin /x/libmqtt_twister.so\n");
        let e = decide(AccessMode::Auto, Some(&c)).unwrap_err();
        assert!(
            e.contains("plugin_opt_access") && e.contains("dynamic_security"),
            "{e}"
        );
        assert_eq!(decide(AccessMode::Defer, Some(&c)), Ok(AclAnswer::Defer));
        assert!(conf("per_listener_settings true\n").per_listener_settings);
        assert!(decide(AccessMode::Auto, None)
            .unwrap_err()
            .contains("plugin_opt_access"));
    }

    #[test]
    fn finds_an_anonymous_tcp_listener_to_wake_the_broker() {
        let c = conf("listener 1883 127.0.0.1\nallow_anonymous true\n");
        assert_eq!(c.wake_address(), Some("127.0.0.1:1883".parse().unwrap()));
        let c = conf("listener 9001\nprotocol websockets\nlistener 1884\nallow_anonymous true\n");
        assert_eq!(c.wake_address(), Some("127.0.0.1:1884".parse().unwrap()));
        assert_eq!(
            conf("listener 1883\n").wake_address(),
            None,
            "anonymous clients are refused by default"
        );
        assert_eq!(
            conf("listener 0 /run/m.sock\nallow_anonymous true\n").wake_address(),
            None
        );
    }

    #[test]
    fn reads_the_keys_of_mosquitto_2_1() {
        let addr = |s: &str| Some(s.parse().unwrap());
        // listener_allow_anonymous alone opens that listener (the global default stays closed).
        let c = conf("listener 1883 127.0.0.1\nlistener_allow_anonymous true\n");
        assert_eq!(c.wake_address(), addr("127.0.0.1:1883"));
        // It also closes one the global setting would open.
        let c = conf(
            "allow_anonymous true\nlistener 1883\nlistener_allow_anonymous false\nlistener 1884\n",
        );
        assert_eq!(c.wake_address(), addr("127.0.0.1:1884"));
        // With per_listener_settings, allow_anonymous belongs to the listener above it.
        let c = conf(
            "per_listener_settings true\nlistener 1883\nlistener 1884\nallow_anonymous true\n",
        );
        assert_eq!(c.wake_address(), addr("127.0.0.1:1884"));
        let c = conf("per_listener_settings true\nallow_anonymous true\nlistener 1883\n");
        assert_eq!(
            c.wake_address(),
            None,
            "no listener of its own says anonymous"
        );
        // TLS listeners cannot take the plain doorbell connection.
        let c = conf("allow_anonymous true\nlistener 8883\ncertfile /c.pem\nlistener 1883\n");
        assert_eq!(c.wake_address(), addr("127.0.0.1:1883"));
        // Plugins loaded the 2.1 ways are other plugins, unless they are ours.
        let c = conf("plugin_load dynsec /usr/lib/mosquitto_dynamic_security.so\nplugin_use dynsec\nglobal_plugin /x/acl.so\nplugin_load me /x/libmqtt_twister.so\n");
        assert_eq!(
            c.other_plugins,
            vec!["/usr/lib/mosquitto_dynamic_security.so", "/x/acl.so"]
        );
    }

    #[test]
    fn without_a_listener_the_broker_is_local_and_anonymous() {
        assert_eq!(
            conf("plugin /x/libmqtt_twister.so\n").wake_address(),
            Some("127.0.0.1:1883".parse().unwrap())
        );
    }

    #[test]
    fn finds_the_config_file_on_the_command_line() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["mosquitto", "-c", "/etc/m.conf", "-v"])),
            Some("/etc/m.conf".into())
        );
        assert_eq!(
            config_path(&args(&["mosquitto", "--config-file", "x.conf"])),
            Some("x.conf".into())
        );
        assert_eq!(config_path(&args(&["mosquitto", "-v"])), None);
    }
}
