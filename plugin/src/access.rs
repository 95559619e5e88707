//! Keeping access control as it is without the plugin.
//!
//! On Mosquitto 2.0 the plugin learns about subscriptions only through ACL_CHECK. Once any plugin
//! registers ACL_CHECK, a check that every callback defers is DENIED, whereas with no callback at all
//! it is allowed. So the plugin's answer must depend on what else decides access:
//! - an `acl_file` (a callback of the broker's own, called after ours): defer to it;
//! - nothing: allow, exactly what the broker does without plugins;
//! - another plugin: only the operator knows whether it decides access (`plugin_opt_access`).
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
    /// `plugin` / `auth_plugin` lines other than ours.
    pub other_plugins: Vec<String>,
    pub allow_anonymous: bool,
    /// TCP MQTT listeners: (port, bind address).
    pub listeners: Vec<(u16, Option<String>)>,
}

impl BrokerConf {
    /// Where the plugin can reach its own broker as an anonymous MQTT client, to wake its event loop.
    pub fn wake_address(&self) -> Option<std::net::SocketAddr> {
        if !self.allow_anonymous {
            return None;
        }
        let (port, bind) = self.listeners.iter().find(|(port, _)| *port != 0)?;
        let host = match bind.as_deref() {
            None | Some("0.0.0.0") | Some("::") => "127.0.0.1",
            Some(h) => h,
        };
        use std::net::ToSocketAddrs;
        (host, *port).to_socket_addrs().ok()?.next()
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
        match key {
            "per_listener_settings" => conf.per_listener_settings = value == "true",
            "acl_file" => conf.acl_file = true,
            "allow_anonymous" => conf.allow_anonymous = value == "true",
            "listener" | "port" => {
                let mut words = value.split_whitespace();
                if let Some(port) = words.next().and_then(|p| p.parse().ok()) {
                    conf.listeners.push((port, words.next().map(String::from)));
                }
            }
            // A websockets listener cannot take a raw MQTT connection.
            "protocol" if value != "mqtt" => {
                conf.listeners.pop();
            }
            "plugin" | "auth_plugin" if !is_ours(value) => {
                conf.other_plugins.push(value.to_string())
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
