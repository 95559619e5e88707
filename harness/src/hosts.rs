//! Hosts of their own: each host is a Linux network namespace made by the test (its own loopback and
//! a veth link to a bridge, the bridge in a namespace of its own), running its own peering dev node and
//! its own Mosquitto with the plugin. Links can be cut and restored; packets entering a host can be
//! dropped at random (iptables `statistic`) and delayed (an NFQUEUE the harness holds them in: this
//! kernel has no netem; see `delay`).
//!
//! Addresses come from 198.18.0.0/15 and exist only inside the namespaces the test made; the root
//! namespace gets none: the test reaches a host by entering its namespace on a thread (`in_netns`,
//! `Mqtt::connect_in`). Every namespace and process is removed when `Hosts` drops (also on a panic);
//! leftovers of test processes that died are removed when the next `Hosts` starts. Names carry the
//! test process's id and a counter, so tests run in parallel. Root is required: without it the test
//! fails saying so.

mod delay;

use crate::{broker_version, mosquitto_binary, plugin_conf_url, wait_for, workdir, LOG_LINES};
use crate::{RPC_PASSWORD, RPC_USER};
use delay::Delayer;
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Every namespace this harness makes starts with this, then the test process's id.
pub const PREFIX: &str = "mqtwh-";
pub const RPC_PORT: u16 = 28332;
pub const PEER_PORT: u16 = 28333;
pub const MQTT_PORT: u16 = 1883;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Moves the calling thread into network namespace `ns` (made by `ip netns add`); sockets it opens
/// afterwards live there.
pub fn enter_netns(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `ns` and returns its result (a panic in `f` goes on).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns).unwrap_or_else(|e| panic!("cannot enter network namespace {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the hosts tests need root (they make network namespaces, veth links and a bridge): \
         run them as root (CI does), e.g. `sudo -E cargo test --test hosts`"
    );
}

/// The process runs (a zombie, killed but not yet reaped, does not).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
    pid > 0 && state.is_some_and(|s| s != 'Z' && s != 'X')
}

/// Removes namespaces (and the processes in them) left by test processes that no longer run.
pub fn clean_leftovers() {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner: i32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if alive(owner) {
            continue;
        }
        kill_all_in(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: plain kill of a process found in a namespace this harness made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn spawn_in(
    ns: &str,
    program: &std::path::Path,
    args: &[String],
    log: &PathBuf,
    stdout: Stdio,
) -> Child {
    let err = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(err);
    // SAFETY: prctl is async-signal-safe; the child dies with the test thread that started it, so a
    // test killed outright leaves no process behind (its namespaces are removed by the next run).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("start {} in {ns}: {e}", program.display()))
}

fn stop_child(c: &mut Option<Child>, signal: i32) {
    if let Some(mut child) = c.take() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let _ = child.wait();
    }
}

/// Network conditions between hosts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Network {
    /// Delay of every packet entering a host from the bridge (an NFQUEUE the harness holds them in,
    /// see `delay`): a round trip between hosts takes twice this.
    pub delay: Option<Duration>,
    /// Percentage of packets dropped as they enter a host from the bridge (iptables `statistic`).
    pub loss_percent: u32,
}

pub struct Host {
    pub name: String,
    /// The host's network namespace.
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The Twister user of this host's broker.
    pub user: String,
    node: Option<Child>,
    node_args: Vec<String>,
    broker: Option<Child>,
    broker_conf: PathBuf,
    pub node_log: PathBuf,
    pub broker_log: PathBuf,
}

impl Host {
    /// A JSON-RPC call to this host's dev node, from inside its namespace.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let url = format!("http://127.0.0.1:{RPC_PORT}/");
        in_netns(&self.ns, || crate::rpc(&url, method, params))
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params.clone())
            .unwrap_or_else(|e| panic!("{} {method} {params}: {e:?}", self.name))
    }

    /// A client of this host's broker.
    pub fn mqtt(&self, id: &str) -> crate::Mqtt {
        crate::Mqtt::connect_in(&self.ns, MQTT_PORT, id, true)
    }

    pub fn node_pid(&self) -> u32 {
        self.node.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Starts (or restarts, from its data directory) this host's dev node; waits until it serves.
    pub fn start_node(&mut self) {
        let mut child = spawn_in(
            &self.ns,
            &crate::target_dir().join("twister-devnode"),
            &self.node_args,
            &self.node_log,
            Stdio::piped(),
        );
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert!(
            line.starts_with("twister-devnode ready"),
            "{}'s dev node did not start: {line}\n{}",
            self.name,
            std::fs::read_to_string(&self.node_log).unwrap_or_default()
        );
        self.node = Some(child);
    }

    /// kill -9 of the dev node: what it had not written is gone.
    pub fn kill_node(&mut self) {
        stop_child(&mut self.node, libc::SIGKILL);
    }

    pub fn start_broker(&mut self) {
        let child = spawn_in(
            &self.ns,
            &mosquitto_binary(broker_version()),
            &["-c".into(), self.broker_conf.display().to_string()],
            &self.broker_log,
            Stdio::null(),
        );
        self.broker = Some(child);
        let ns = self.ns.clone();
        wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            in_netns(&ns, || {
                std::net::TcpStream::connect(("127.0.0.1", MQTT_PORT)).ok()
            })
            .map(|_| ())
        });
    }

    pub fn broker_log_text(&self) -> String {
        std::fs::read_to_string(&self.broker_log).unwrap_or_default()
    }

    /// The plugin reached its node and follows its users.
    pub fn wait_ready(&self) {
        wait_for(
            Duration::from_secs(60),
            &format!("{}'s broker ready", self.name),
            || {
                self.broker_log_text()
                    .contains("mqtt-twister: ready")
                    .then_some(())
            },
        );
    }

    /// Waits until this host's node sees `user`'s profile listing `filter`.
    pub fn wait_interest(&self, user: &str, filter: &str) {
        wait_for(
            Duration::from_secs(30),
            &format!("{user}'s interest in {filter} on {}", self.name),
            || {
                let got = self.ok("dhtget", serde_json::json!([user, "profile", "s"]));
                let topics = got.get(0)?["p"]["v"]
                    .get("mqtt_topics")?
                    .as_array()?
                    .clone();
                topics.iter().any(|t| t == filter).then_some(())
            },
        );
    }
}

/// One host as the test wants it.
pub struct HostSpec<'a> {
    pub name: &'a str,
    pub user: &'a str,
    /// Extra `plugin_opt_*` lines (follow, publish, ...).
    pub plugin: Vec<String>,
}

pub struct Hosts {
    prefix: String,
    switch: String,
    pub hosts: Vec<Host>,
    delayers: Vec<Delayer>,
    pub dir: tempfile::TempDir,
}

impl Hosts {
    /// Makes the namespaces and links, then starts every host's dev node (the first one mines, a
    /// block every 200 ms; each connects to the ones before it) and broker, and waits until all
    /// brokers are ready.
    pub fn start(specs: &[HostSpec], net: Network) -> Hosts {
        require_root();
        clean_leftovers();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{PREFIX}{}-{n}", std::process::id());
        let switch = format!("{prefix}-sw");
        let dir = workdir();
        let mut hosts = Hosts {
            prefix: prefix.clone(),
            switch: switch.clone(),
            hosts: Vec::new(),
            delayers: Vec::new(),
            dir,
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, spec) in specs.iter().enumerate() {
            let host = hosts.make_host(i, spec, net);
            hosts.hosts.push(host);
        }
        for h in &mut hosts.hosts {
            h.start_node();
        }
        for h in &mut hosts.hosts {
            h.start_broker();
        }
        for h in &hosts.hosts {
            h.wait_ready();
        }
        hosts
    }

    fn make_host(&mut self, i: usize, spec: &HostSpec, net: Network) -> Host {
        let ns = format!("{}-{}", self.prefix, spec.name);
        let addr = Ipv4Addr::new(198, 18, 0, i as u8 + 1);
        let port_name = format!("v-{}", spec.name);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port_name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port_name,
            "master",
            "br0",
            "up",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        if net.loss_percent > 0 {
            let p = format!("{:.4}", f64::from(net.loss_percent) / 100.0);
            let status = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "iptables",
                    "-A",
                    "INPUT",
                    "-i",
                    "eth0",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ])
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "iptables with the statistic match is needed for packet loss (apt-get install iptables)"
            );
        }
        if let Some(d) = net.delay {
            // After the loss rule: a dropped packet is not held first.
            let status = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "iptables",
                    "-A",
                    "INPUT",
                    "-i",
                    "eth0",
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "0",
                ])
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "iptables' NFQUEUE target is needed for delay (apt-get install iptables)"
            );
            self.delayers.push(Delayer::start(&ns, 0, d));
        }
        let dir = self.dir.path();
        let datadir = dir.join(format!("node-{}", spec.name));
        let mut node_args = vec![
            format!("-rpcuser={RPC_USER}"),
            format!("-rpcpassword={RPC_PASSWORD}"),
            format!("-rpcport={RPC_PORT}"),
            "-spaminterval=0".into(),
            format!("-datadir={}", datadir.display()),
            format!("-bind={addr}"),
            format!("-port={PEER_PORT}"),
            if i == 0 {
                "-blockinterval=0.2"
            } else {
                "-blockinterval=0"
            }
            .into(),
        ];
        for earlier in &self.hosts {
            node_args.push(format!("-connect={}:{PEER_PORT}", earlier.addr));
        }
        let broker_conf = dir.join(format!("broker-{}.conf", spec.name));
        let plugin_lines: Vec<&str> = spec.plugin.iter().map(String::as_str).collect();
        let conf = format!(
            "listener {MQTT_PORT} 127.0.0.1\nallow_anonymous true\n{LOG_LINES}{}",
            plugin_conf_url(
                &format!("http://127.0.0.1:{RPC_PORT}/"),
                dir,
                spec.user,
                &plugin_lines
            )
        );
        std::fs::write(&broker_conf, conf).expect("write broker config");
        Host {
            name: spec.name.to_string(),
            ns,
            addr,
            user: spec.user.to_string(),
            node: None,
            node_args,
            broker: None,
            broker_conf,
            node_log: dir.join(format!("node-{}.log", spec.name)),
            broker_log: dir.join(format!("broker-{}.log", spec.name)),
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("no such host")
    }

    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .expect("no such host")
    }

    /// Cuts host `name` off the bridge: nothing crosses until `heal`.
    pub fn cut(&self, name: &str) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("v-{name}"),
            "down",
        ]);
    }

    pub fn heal(&self, name: &str) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("v-{name}"),
            "up",
        ]);
    }

    /// How long a TCP handshake from host `from` to host `to`'s dev node takes (one round trip).
    pub fn round_trip(&self, from: &str, to: &str) -> Duration {
        let target = std::net::SocketAddr::from((self.host(to).addr, PEER_PORT));
        in_netns(&self.host(from).ns, || {
            // A lost SYN is retried by the kernel after a second: take the quickest of a few.
            (0..5)
                .filter_map(|_| {
                    let began = std::time::Instant::now();
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                        .ok()
                        .map(|_| began.elapsed())
                })
                .min()
                .expect("no connection between hosts")
        })
    }

    /// Packets the loss rule dropped so far on their way into host `name`.
    pub fn dropped_packets(&self, name: &str) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host(name).ns,
                "iptables",
                "-L",
                "INPUT",
                "-v",
                "-x",
                "-n",
            ])
            .output()
            .expect("iptables");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("DROP") && l.contains("statistic"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Names of every namespace of this test (for checks that they are gone).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.switch.clone()];
        v.extend(self.hosts.iter().map(|h| h.ns.clone()));
        v
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for h in &self.hosts {
                for log in [&h.node_log, &h.broker_log] {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("--- {} (last lines)", log.display());
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        for h in &mut self.hosts {
            stop_child(&mut h.broker, libc::SIGKILL);
            stop_child(&mut h.node, libc::SIGKILL);
        }
        self.delayers.clear();
        for ns in self.namespaces() {
            kill_all_in(&ns);
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
