//! Starts the dev node binary and talks to it over real HTTP.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const USER: &str = "rpc";
pub const PASSWORD: &str = "rpc-secret";

pub struct Node {
    pub child: Child,
    pub port: u16,
    /// The line the node printed when ready.
    pub ready: String,
}

impl Node {
    pub fn start(extra: &[&str]) -> Node {
        Self::try_start(extra).unwrap_or_else(|e| panic!("dev node did not start: {e}"))
    }

    pub fn try_start(extra: &[&str]) -> Result<Node, String> {
        let mut args = vec![
            format!("-rpcuser={USER}"),
            format!("-rpcpassword={PASSWORD}"),
        ];
        if !extra.iter().any(|a| a.starts_with("-rpcport=")) {
            args.push("-rpcport=0".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_twister-devnode"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let _ = child.wait();
            return Err(err);
        }
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .ok_or(line.clone())?;
        Ok(Node {
            child,
            port,
            ready: line,
        })
    }

    /// Where peers reach this node (it was started with -listen, -bind or -port).
    pub fn peer_addr(&self) -> String {
        self.ready
            .split("peers on ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("no peer address in {}", self.ready))
            .to_string()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Sends a raw body with credentials; (HTTP status, parsed or raw body).
    pub fn post(&self, body: &str) -> (u16, Value) {
        self.post_as(body, Some((USER, PASSWORD)))
    }

    pub fn post_as(&self, body: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
        let mut req = ureq::post(&self.url());
        if let Some((u, p)) = auth {
            use base64::Engine;
            req = req.set(
                "Authorization",
                &format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ),
            );
        }
        let resp = match req.send_string(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn call(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let (_, v) = self.post(&json!({"id": 1, "method": method, "params": params}).to_string());
        match &v["error"] {
            Value::Null => Ok(v["result"].clone()),
            e => Err((
                e["code"].as_i64().unwrap(),
                e["message"].as_str().unwrap().to_string(),
            )),
        }
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e:?}"))
    }

    pub fn signal(&mut self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 exchange on `stream`; returns the head and body.
pub fn raw_exchange(stream: &mut TcpStream, request: &str) -> (String, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut len = 0;
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        head.push_str(&l);
        if l == "\r\n" || l.is_empty() {
            break;
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

pub fn basic() -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

pub fn rpc_request(body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n{body}",
        basic(),
        body.len()
    )
}
