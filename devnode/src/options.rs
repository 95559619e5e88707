//! Command line: twisterd's own `-name=value` flags where they overlap, then the dev node's.

use std::path::PathBuf;
use std::time::Duration;

use crate::log::LogLevel;
use crate::node::Blocks;
use crate::peer::PeerOptions;

pub const USAGE: &str = "\
twister-devnode: a twisterd-compatible JSON-RPC node for one machine (development and tests).
It is a stand-in for one machine, not for the Twister network: multi-machine deployments run twisterd.

twisterd flags:
  -rpcuser=<user>          RPC user name (required)
  -rpcpassword=<pw>        RPC password (required, not empty, not equal to the user)
  -rpcport=<port>          port on 127.0.0.1 (default 28332; 0 picks a free one)
  -datadir=<dir>           keep state across restarts (default: in memory only); what a call
                           changed is on disk before it is answered
  -listen[=1|0]            accept peer dev nodes (default: no; -bind or -port imply it)
  -bind=<addr>             address peers connect to (default 127.0.0.1)
  -port=<port>             port peers connect to (default 28333; 0 picks a free one)
  -connect=<host:port>     peer with this dev node, reconnecting when the link breaks (repeatable)
  -addnode=<host:port>     the same (repeatable)
dev node flags:
  -blockinterval=<s>       seconds between blocks (default 1; 600 like the real network; 0: only on
                           setgenerate true / devnode_mine)
  -spaminterval=<s>        seconds between promoted posts put in front of getposts (default 28800; 0: never)
  -maxbody=<bytes>         largest request body (default 4194304)
  -flushms=<ms>            how often changed state is written to the data directory (default 100)
  -fault-latency-ms=<ms>   add latency to every call
  -fault-busy=<0..1>       answer this fraction of calls with error -25
  -fault-http500=<0..1>    answer this fraction of calls with HTTP 500
  -loglevel=<error|info|debug>
Flags of twisterd that mean nothing here (-daemon, -rpcallowip, ...) are accepted and ignored.
Peering dev nodes replicate the chain, registrations, posts, DMs and DHT values (see README).
Ready when it prints one line starting with 'twister-devnode ready'. SIGTERM/SIGINT save and stop.";

/// twisterd flags with no meaning for one machine: accepted so twisterd scripts run unchanged.
const IGNORED: &[&str] = &[
    "daemon",
    "server",
    "printtoconsole",
    "rpcallowip",
    "rpcbind",
    "rpcthreads",
    "dnsseed",
    "genproclimit",
    "gen",
    "testnet",
    "regtest",
    "txindex",
    "upnp",
    "dhtproxy",
    "noui",
    "htmldir",
    "conf",
    "multiconnperip",
    "debug",
    "logtimestamps",
];

#[derive(Debug, Clone)]
pub struct Options {
    pub rpc_user: String,
    pub rpc_password: String,
    pub rpc_port: u16,
    pub datadir: Option<PathBuf>,
    pub blocks: Blocks,
    pub spam_interval_s: i64,
    pub max_body: usize,
    pub flush: Duration,
    pub fault_latency_ms: u64,
    pub fault_busy: f64,
    pub fault_http500: f64,
    pub log_level: LogLevel,
    pub ignored: Vec<String>,
    pub peers: PeerOptions,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum OptionsError {
    #[error("{0}")]
    Help(&'static str),
    #[error("unknown option -{0} (see -help)")]
    Unknown(String),
    #[error("-{0}: {1}")]
    Invalid(String, String),
    #[error("-rpcuser and -rpcpassword are required; the password must not be empty or equal to the user name")]
    Credentials,
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, OptionsError> {
    v.parse()
        .map_err(|_| OptionsError::Invalid(key.into(), format!("'{v}' is not a valid number")))
}

fn ratio(key: &str, v: &str) -> Result<f64, OptionsError> {
    let r: f64 = parse_num(key, v)?;
    if !(0.0..=1.0).contains(&r) {
        return Err(OptionsError::Invalid(
            key.into(),
            "must be from 0 to 1".into(),
        ));
    }
    Ok(r)
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, OptionsError> {
    let mut o = Options {
        rpc_user: String::new(),
        rpc_password: String::new(),
        rpc_port: 28332,
        datadir: None,
        blocks: Blocks::Every(Duration::from_secs(1)),
        spam_interval_s: 8 * 3600,
        max_body: 4 << 20,
        flush: Duration::from_millis(100),
        fault_latency_ms: 0,
        fault_busy: 0.0,
        fault_http500: 0.0,
        log_level: LogLevel::Info,
        ignored: Vec::new(),
        peers: PeerOptions::default(),
    };
    let (mut listen, mut bind, mut port): (Option<bool>, Option<std::net::IpAddr>, Option<u16>) =
        (None, None, None);
    for arg in args {
        let flag = arg.trim_start_matches('-');
        if flag.len() == arg.len() {
            return Err(OptionsError::Unknown(arg));
        }
        let (key, value) = flag.split_once('=').unwrap_or((flag, ""));
        match key {
            "help" | "h" | "?" => return Err(OptionsError::Help(USAGE)),
            "rpcuser" => o.rpc_user = value.into(),
            "rpcpassword" => o.rpc_password = value.into(),
            "rpcport" => o.rpc_port = parse_num(key, value)?,
            "datadir" if value.is_empty() => {
                return Err(OptionsError::Invalid(
                    key.into(),
                    "needs a directory".into(),
                ))
            }
            "datadir" => o.datadir = Some(PathBuf::from(value)),
            "blockinterval" => {
                let s: f64 = parse_num(key, value)?;
                o.blocks = if s == 0.0 {
                    Blocks::Manual
                } else if s > 0.0 && s.is_finite() {
                    Blocks::Every(Duration::from_secs_f64(s))
                } else {
                    return Err(OptionsError::Invalid(
                        key.into(),
                        "must be 0 or a positive number of seconds".into(),
                    ));
                }
            }
            "spaminterval" => o.spam_interval_s = parse_num(key, value)?,
            "maxbody" => o.max_body = parse_num(key, value)?,
            "flushms" => o.flush = Duration::from_millis(parse_num(key, value)?),
            "fault-latency-ms" => o.fault_latency_ms = parse_num(key, value)?,
            "fault-busy" => o.fault_busy = ratio(key, value)?,
            "fault-http500" => o.fault_http500 = ratio(key, value)?,
            "loglevel" => {
                o.log_level = match value {
                    "error" => LogLevel::Error,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    _ => {
                        return Err(OptionsError::Invalid(
                            key.into(),
                            "must be error, info or debug".into(),
                        ))
                    }
                }
            }
            "listen" => listen = Some(value.is_empty() || value == "1"),
            "bind" => {
                bind = Some(value.parse().map_err(|_| {
                    OptionsError::Invalid(key.into(), format!("'{value}' is not an IP address"))
                })?)
            }
            "port" => port = Some(parse_num(key, value)?),
            "connect" | "addnode" => {
                let ok = value
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(OptionsError::Invalid(
                        key.into(),
                        format!("'{value}' is not HOST:PORT"),
                    ));
                }
                o.peers.connect.push(value.to_string());
            }
            k if IGNORED.contains(&k) => o.ignored.push(arg.clone()),
            _ => return Err(OptionsError::Unknown(key.into())),
        }
    }
    if listen.unwrap_or(bind.is_some() || port.is_some()) {
        let ip = bind.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        o.peers.listen = Some(std::net::SocketAddr::new(ip, port.unwrap_or(28333)));
    }
    // twisterd refuses to serve RPC without a real password.
    if o.rpc_user.is_empty() || o.rpc_password.is_empty() || o.rpc_password == o.rpc_user {
        return Err(OptionsError::Credentials);
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn twisterd_flags_and_defaults() {
        let o = parse(args(&[
            "-rpcuser=u",
            "-rpcpassword=p",
            "-daemon",
            "-rpcallowip=127.0.0.1",
        ]))
        .unwrap();
        assert_eq!(o.rpc_port, 28332);
        assert_eq!(o.blocks, Blocks::Every(Duration::from_secs(1)));
        assert_eq!(o.ignored.len(), 2);
        let o = parse(args(&[
            "-rpcuser=u",
            "-rpcpassword=p",
            "-rpcport=0",
            "-blockinterval=600",
            "-datadir=/tmp/x",
        ]))
        .unwrap();
        assert_eq!(o.rpc_port, 0);
        assert_eq!(o.blocks, Blocks::Every(Duration::from_secs(600)));
        assert_eq!(o.datadir.unwrap(), PathBuf::from("/tmp/x"));
        let o = parse(args(&["-rpcuser=u", "-rpcpassword=p", "-blockinterval=0"])).unwrap();
        assert_eq!(o.blocks, Blocks::Manual);
    }

    #[test]
    fn peer_flags() {
        let o = parse(args(&["-rpcuser=u", "-rpcpassword=p"])).unwrap();
        assert!(!o.peers.enabled());
        let o = parse(args(&[
            "-rpcuser=u",
            "-rpcpassword=p",
            "-bind=198.18.0.1",
            "-port=0",
            "-connect=198.18.0.2:28333",
            "-addnode=localhost:1",
        ]))
        .unwrap();
        assert_eq!(o.peers.listen, Some("198.18.0.1:0".parse().unwrap()));
        assert_eq!(o.peers.connect, vec!["198.18.0.2:28333", "localhost:1"]);
        let o = parse(args(&["-rpcuser=u", "-rpcpassword=p", "-listen"])).unwrap();
        assert_eq!(o.peers.listen, Some("127.0.0.1:28333".parse().unwrap()));
        let o = parse(args(&[
            "-rpcuser=u",
            "-rpcpassword=p",
            "-listen=0",
            "-port=5",
        ]))
        .unwrap();
        assert_eq!(o.peers.listen, None);
        for bad in ["-connect=nohost", "-addnode=:1", "-bind=x", "-port=70000"] {
            assert!(
                parse(args(&["-rpcuser=u", "-rpcpassword=p", bad])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_are_refused_like_twisterd() {
        for bad in [
            &["-rpcuser=u"][..],
            &["-rpcuser=u", "-rpcpassword="],
            &["-rpcuser=same", "-rpcpassword=same"],
            &[],
        ] {
            assert_eq!(
                parse(args(bad)).unwrap_err(),
                OptionsError::Credentials,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(args(&["-rpcuser=u", "-rpcpassword=p", "-rpcport=99999"])).unwrap_err();
        assert!(e.to_string().starts_with("-rpcport:"), "{e}");
        let e = parse(args(&["-rpcuser=u", "-rpcpassword=p", "-fault-busy=2"])).unwrap_err();
        assert!(e.to_string().starts_with("-fault-busy:"), "{e}");
        assert_eq!(
            parse(args(&["-nosuch=1"])).unwrap_err(),
            OptionsError::Unknown("nosuch".into())
        );
        assert_eq!(
            parse(args(&["plain"])).unwrap_err(),
            OptionsError::Unknown("plain".into())
        );
    }
}
