//! `plugin_opt_*` lines parsed by a pure function into a typed configuration. Every error names the
//! `plugin_opt_` key; unknown keys are refused; list keys may be repeated.

use crate::route::Router;
use crate::topic;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod budget;

pub use budget::OverBudget;

pub const PREFIX: &str = "plugin_opt_";

/// A secret that never shows in logs or Debug output.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PasswordSource {
    Inline(Secret),
    /// Read at start-up; the file's first line is the password.
    File(PathBuf),
}

/// How the plugin answers the broker's ACL checks, which it registers for only to see subscriptions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AccessMode {
    /// Decide from the broker's configuration file: `defer` with an `acl_file`, `allow` with nothing else
    /// deciding access, refuse to start when another plugin might decide it.
    Auto,
    /// Leave every decision to the `acl_file` or another plugin.
    Defer,
    /// Allow, as the broker does when nothing else checks access.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WireFormat {
    /// The dense envelope: batches compressed and written in the densest text a post carries.
    V2,
    /// The project's JSON envelope: batches, sequence numbers, retain flags.
    V1,
    /// One message per post, as the 2014 proof-of-concept wrote it.
    Poc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrivateRule {
    pub filter: String,
    pub users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub rpc_url: String,
    pub rpc_user: String,
    pub rpc_password: PasswordSource,
    pub user: String,
    pub follow: Vec<String>,
    pub publish: Vec<String>,
    pub private: Vec<PrivateRule>,
    pub subscribe: Vec<String>,
    pub poll_interval: Duration,
    pub batch_delay: Duration,
    /// How long a post's messages are kept after twisterd confirmed it (posted again if it forgets
    /// it); with the spool, they stay in the spool as long.
    pub release_hold: Duration,
    pub interest_refresh: Duration,
    pub profile_debounce: Duration,
    pub rpc_timeout: Duration,
    pub max_queue: usize,
    /// Largest message forwarded; one larger than a post is cut into fragments.
    pub max_message_bytes: usize,
    pub state_file: Option<PathBuf>,
    pub create_user: bool,
    pub access: AccessMode,
    pub wire_format: WireFormat,
    /// Wake the broker's loop through its own listener when messages arrive (see `wake`).
    pub wakeup: bool,
    /// Every `publish` and `private` filter, compiled for the MESSAGE callback.
    pub router: Router,
    /// The crash-safe spool of accepted messages (`None`: messages wait in memory only).
    pub spool: Option<SpoolConfig>,
    /// Keep retained values of public forwards in our DHT resources and fetch followed users' ones.
    pub retained_dht: bool,
    /// Each retained DHT resource is written at most this often (bursts coalesce to the newest).
    pub retained_interval: Duration,
    /// Receipts and retransmission of QoS 1/2 messages (`crate::relay::receipts`).
    pub receipts: ReceiptsConfig,
    /// Posts kept back for what must not wait (retained values, receipts).
    pub budget_reserve: i64,
    /// Forward rules (by filter) and what they do while posts are scarce; unlisted rules queue.
    pub over_budget: Vec<(String, OverBudget)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptsConfig {
    /// Users expected to acknowledge our public QoS 1/2 posts (those whose interest matches).
    pub receivers: Vec<String>,
    /// A message not acknowledged this long is sent again (doubling); zero: nothing is kept.
    pub timeout: Duration,
    /// Unacknowledged messages are released after this long, counted and logged per receiver.
    pub give_up: Duration,
    /// Our receipts are written at most this often per sender; receivers' are read this often.
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub geometry: crate::spool::Geometry,
}

pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{PREFIX}{0} is required")]
    Missing(&'static str),
    #[error("{PREFIX}{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("unknown option {PREFIX}{0} (known: {known})", known = known_keys().join(", "))]
    Unknown(String),
    #[error("{PREFIX}{0} is given more than once")]
    Repeated(String),
    #[error("give either {PREFIX}rpc_password or {PREFIX}rpc_password_file, not both")]
    TwoPasswords,
}

const LISTS: &[&str] = &[
    "follow",
    "publish",
    "private",
    "subscribe",
    "receivers",
    "over_budget",
];
const SCALARS: &[&str] = &[
    "rpc_url",
    "rpc_user",
    "rpc_password",
    "rpc_password_file",
    "user",
    "poll_interval_ms",
    "batch_delay_ms",
    "release_hold_ms",
    "interest_refresh_ms",
    "profile_debounce_ms",
    "rpc_timeout_ms",
    "max_queue",
    "state_file",
    "create_user",
    "access",
    "wire_format",
    "wakeup",
    "max_message_bytes",
    "spool_dir",
    "spool_max_bytes",
    "retained_dht",
    "retained_interval_ms",
    "receipt_timeout_ms",
    "receipt_give_up_ms",
    "receipt_interval_ms",
    "budget_reserve",
];

fn known_keys() -> Vec<&'static str> {
    SCALARS.iter().chain(LISTS).copied().collect()
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

fn millis(key: &str, v: &str, min: u64, max: u64) -> Result<Duration, ConfigError> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| invalid(key, format!("'{v}' is not a whole number of milliseconds")))?;
    if !(min..=max).contains(&n) {
        return Err(invalid(key, format!("{n} is outside {min}..={max}")));
    }
    Ok(Duration::from_millis(n))
}

fn boolean(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        other => Err(invalid(key, format!("'{other}' is not true or false"))),
    }
}

fn username(key: &str, v: &str) -> Result<String, ConfigError> {
    if twister_rules::is_valid_username(v) {
        Ok(v.to_string())
    } else {
        Err(invalid(
            key,
            format!("'{v}' is not a Twister user name (1-16 of a-z, 0-9, _)"),
        ))
    }
}

/// Users separated by commas and/or spaces.
fn user_list(key: &str, v: &str) -> Result<Vec<String>, ConfigError> {
    let users: Vec<String> = v
        .split([',', ' ', '\t'])
        .filter(|s| !s.is_empty())
        .map(|u| username(key, u))
        .collect::<Result<_, _>>()?;
    if users.is_empty() {
        return Err(invalid(key, "needs at least one user"));
    }
    Ok(users)
}

fn filter(key: &str, v: &str) -> Result<String, ConfigError> {
    let f = v.trim();
    if !topic::is_valid_filter(f) || f.starts_with("$share/") {
        return Err(invalid(
            key,
            format!("'{f}' is not a valid MQTT topic filter"),
        ));
    }
    Ok(f.to_string())
}

fn spool(
    dir: Option<&str>,
    max_bytes: Option<&str>,
    max_message_bytes: usize,
) -> Result<Option<SpoolConfig>, ConfigError> {
    let dir = match (dir, max_bytes) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(invalid(
                "spool_max_bytes",
                "needs plugin_opt_spool_dir (where the spool is kept)",
            ))
        }
        (Some(""), _) => return Err(invalid("spool_dir", "needs a directory name")),
        (Some(d), _) => PathBuf::from(d),
    };
    let max_bytes = match max_bytes {
        None => DEFAULT_SPOOL_MAX_BYTES,
        Some(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            invalid(
                "spool_max_bytes",
                format!("'{v}' is not a whole number of bytes"),
            )
        })?,
    };
    let geometry = crate::spool::Geometry::new(max_bytes, max_message_bytes)
        .map_err(|e| invalid("spool_max_bytes", e))?;
    Ok(Some(SpoolConfig {
        dir,
        max_bytes,
        geometry,
    }))
}

/// Parses the plugin's options (keys without the `plugin_opt_` prefix, in the order given).
pub fn parse(opts: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in opts {
        if !LISTS.contains(&k.as_str()) && !SCALARS.contains(&k.as_str()) {
            return Err(ConfigError::Unknown(k.clone()));
        }
        if SCALARS.contains(&k.as_str()) {
            if seen.contains(&k.as_str()) {
                return Err(ConfigError::Repeated(k.clone()));
            }
            seen.push(k);
        }
    }
    let get = |key: &str| opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim());
    let all = |key: &'static str| {
        opts.iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.trim())
    };

    let rpc_url = get("rpc_url")
        .unwrap_or("http://127.0.0.1:28332/")
        .to_string();
    if !(rpc_url.starts_with("http://") || rpc_url.starts_with("https://")) || rpc_url.len() < 10 {
        return Err(invalid(
            "rpc_url",
            format!("'{rpc_url}' is not an http:// URL"),
        ));
    }
    let rpc_user = get("rpc_user")
        .filter(|s| !s.is_empty())
        .ok_or(ConfigError::Missing("rpc_user"))?
        .to_string();
    let rpc_password = match (get("rpc_password"), get("rpc_password_file")) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoPasswords),
        (Some(""), None) => return Err(invalid("rpc_password", "must not be empty")),
        (Some(p), None) => PasswordSource::Inline(Secret(p.to_string())),
        (None, Some("")) => return Err(invalid("rpc_password_file", "needs a file name")),
        (None, Some(f)) => PasswordSource::File(PathBuf::from(f)),
        (None, None) => return Err(ConfigError::Missing("rpc_password")),
    };
    let user = username("user", get("user").ok_or(ConfigError::Missing("user"))?)?;

    let mut follow = Vec::new();
    for v in all("follow") {
        for u in user_list("follow", v)? {
            if u != user && !follow.contains(&u) {
                follow.push(u);
            }
        }
    }
    let publish = all("publish")
        .map(|v| filter("publish", v))
        .collect::<Result<Vec<_>, _>>()?;
    let subscribe = all("subscribe")
        .map(|v| filter("subscribe", v))
        .collect::<Result<Vec<_>, _>>()?;
    let mut private = Vec::new();
    for v in all("private") {
        let Some((f, users)) = v.split_once([' ', '\t']) else {
            return Err(invalid(
                "private",
                format!("'{v}' must be '<topic filter> <user>[,<user>...]'"),
            ));
        };
        let users = user_list("private", users)?;
        if users.contains(&user) {
            return Err(invalid(
                "private",
                format!("cannot send direct messages to ourselves ({user})"),
            ));
        }
        private.push(PrivateRule {
            filter: filter("private", f)?,
            users,
        });
    }

    let access = match get("access").unwrap_or("auto") {
        "auto" => AccessMode::Auto,
        "defer" => AccessMode::Defer,
        "allow" => AccessMode::Allow,
        other => {
            return Err(invalid(
                "access",
                format!("'{other}' is not auto, defer or allow"),
            ))
        }
    };
    let wire_format = match get("wire_format").unwrap_or("v2") {
        "v2" => WireFormat::V2,
        "v1" => WireFormat::V1,
        "poc" => WireFormat::Poc,
        other => {
            return Err(invalid(
                "wire_format",
                format!("'{other}' is not v2, v1 or poc"),
            ))
        }
    };
    let max_queue = match get("max_queue") {
        None => 10_000,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=10_000_000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "max_queue",
                    format!("'{v}' is not a number from 1 to 10000000"),
                )
            })?,
    };
    let max_message_bytes = match get("max_message_bytes") {
        None => 65_536,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=10 << 20).contains(n))
            .ok_or_else(|| {
                invalid(
                    "max_message_bytes",
                    format!("'{v}' is not a number of bytes from 1 to 10485760"),
                )
            })?,
    };
    let spool = spool(get("spool_dir"), get("spool_max_bytes"), max_message_bytes)?;
    let state_file = match get("state_file") {
        None => None,
        Some("") => return Err(invalid("state_file", "needs a file name")),
        Some(f) => Some(PathBuf::from(f)),
    };
    let ms = |key: &str, default: u64, min: u64, max: u64| match get(key) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => millis(key, v, min, max),
    };
    let mut receivers = Vec::new();
    for v in all("receivers") {
        for u in user_list("receivers", v)? {
            if u != user && !receivers.contains(&u) {
                receivers.push(u);
            }
        }
    }
    let receipts = ReceiptsConfig {
        receivers,
        timeout: ms("receipt_timeout_ms", 10_000, 0, 86_400_000)?,
        give_up: ms("receipt_give_up_ms", 3_600_000, 1000, 30 * 86_400_000)?,
        interval: ms("receipt_interval_ms", 1000, 50, 600_000)?,
    };
    let over_budget = budget::over_budget(all("over_budget"), &publish, &private)?;
    Ok(Config {
        receipts,
        budget_reserve: budget::reserve(get("budget_reserve"))?,
        over_budget,
        router: Router::new(&publish, private.iter().map(|r| &r.filter)),
        rpc_url,
        rpc_user,
        rpc_password,
        user,
        follow,
        publish,
        private,
        subscribe,
        poll_interval: ms("poll_interval_ms", 1000, 10, 600_000)?,
        batch_delay: ms("batch_delay_ms", 50, 0, 600_000)?,
        release_hold: ms("release_hold_ms", 300_000, 0, 86_400_000)?,
        interest_refresh: ms("interest_refresh_ms", 30_000, 100, 86_400_000)?,
        profile_debounce: ms("profile_debounce_ms", 1000, 0, 600_000)?,
        rpc_timeout: ms("rpc_timeout_ms", 5000, 100, 600_000)?,
        max_queue,
        max_message_bytes,
        spool,
        state_file,
        create_user: get("create_user")
            .map(|v| boolean("create_user", v))
            .transpose()?
            .unwrap_or(false),
        access,
        wire_format,
        wakeup: get("wakeup")
            .map(|v| boolean("wakeup", v))
            .transpose()?
            .unwrap_or(true),
        retained_dht: get("retained_dht")
            .map(|v| boolean("retained_dht", v))
            .transpose()?
            .unwrap_or(true),
        // At least a second: sequence numbers follow the clock in seconds (`relay::retained`).
        retained_interval: ms("retained_interval_ms", 1000, 1000, 3_600_000)?,
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
