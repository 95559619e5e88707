//! The dev node as a child process: started on a free port, called over real HTTP, killed on drop.

use crate::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
        Self::spawn(Self::arguments(extra, port)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn arguments(extra: &[&str], port: u16) -> Vec<String> {
        let mut args = vec![
            format!("-rpcuser={RPC_USER}"),
            format!("-rpcpassword={RPC_PASSWORD}"),
            format!("-rpcport={port}"),
            "-spaminterval=0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts the node; `Err` with what it said when it did not come up.
    fn spawn(args: Vec<String>) -> Result<DevNode, String> {
        let mut child = Command::new(target_dir().join("twister-devnode"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start twister-devnode (built by cargo build)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            let _ = child.wait();
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said);
            return Err(format!("dev node did not start: {line}{said}"));
        };
        // Its log lines are not needed, but a pipe nobody reads would stall the node once full.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let url = url.to_string();
        let port = url
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        Ok(DevNode {
            child,
            port,
            url,
            args,
        })
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
        // The old process has exited (stop); dropping its guard is harmless. Its port may be taken for
        // a moment by another connection's ephemeral source port (or a client's connect to the closed
        // port that connected to itself): try again until it is free.
        let port = self.port;
        *self = wait_for(
            Duration::from_secs(30),
            "the dev node's port to be free",
            || match Self::spawn(Self::arguments(&args, port)) {
                Ok(node) => Some(node),
                Err(e) if e.contains("cannot listen") => None,
                Err(e) => panic!("{e}"),
            },
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart whose port is taken for a moment (by another connection's ephemeral source port, as
    /// happened under a loaded CI run) waits for it instead of failing.
    #[test]
    fn a_restart_waits_for_its_port_to_be_free_again() {
        let mut node = DevNode::start();
        node.stop();
        let squatter = std::net::TcpListener::bind(("127.0.0.1", node.port)).unwrap();
        let (freed, was_freed) = std::sync::mpsc::channel();
        let release = std::thread::spawn(move || {
            // Held until the restart has tried at least once and found the port taken.
            std::thread::sleep(Duration::from_millis(500));
            drop(squatter);
            freed.send(()).unwrap();
        });
        node.restart();
        was_freed
            .try_recv()
            .expect("the restart came up only after the port was freed");
        node.ok("getblockcount", json!([]));
        release.join().unwrap();
    }
}
