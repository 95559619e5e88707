//! twisterd's JSON-RPC over HTTP: one untyped call, its answer or a `TwisterError`. Credentials go in
//! the Authorization header and never into errors or logs. No connection is kept while idle.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

use twister_rules::errors::Refusal;

/// What went wrong with one call. An answer with an error is a `Refused`, classified once by
/// `twister_rules::errors::Refusal::classify` (the codes and texts the dev node answers with).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TwisterError {
    /// No answer read: the request may or may not have been carried out (outcome unknown).
    #[error("twisterd unreachable ({0})")]
    Transport(String),
    /// No connection made: nothing was sent.
    #[error("twisterd unreachable ({0})")]
    NotSent(String),
    #[error("HTTP status {0}")]
    Http(u16),
    /// twisterd answered with an error: `refusal` says what it means.
    #[error("error {code}: {message}")]
    Refused {
        refusal: Refusal,
        code: i64,
        message: String,
    },
    #[error("unreadable reply ({0})")]
    BadReply(String),
}

impl TwisterError {
    pub fn refused(code: i64, message: impl Into<String>) -> Self {
        let message = message.into();
        TwisterError::Refused {
            refusal: Refusal::classify(code, &message),
            code,
            message,
        }
    }

    /// What twisterd's error answer means; `None` when there was no error answer.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            TwisterError::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }

    pub fn is(&self, refusal: Refusal) -> bool {
        self.refusal() == Some(refusal)
    }

    /// What stays the same while the same trouble lasts: used to log once per change of state.
    pub fn kind(&self) -> String {
        match self {
            TwisterError::Transport(_) | TwisterError::NotSent(_) => "unreachable".into(),
            TwisterError::Http(401) => "HTTP 401 (check plugin_opt_rpc_user / rpc_password)".into(),
            TwisterError::Http(s) => format!("HTTP {s}"),
            TwisterError::Refused { code, .. } => format!("error {code}"),
            TwisterError::BadReply(_) => "unreadable reply".into(),
        }
    }
}

/// One untyped call; a trait so that the typed client (`super::Client`) can run on a fake node.
pub trait Twister: Send {
    fn call(&self, method: &str, params: Value) -> Result<Value, TwisterError>;

    /// Closes the connections kept open between calls. twisterd's `stop` waits for every open RPC
    /// connection to close, so a caller about to go idle lets go of them.
    fn release_idle(&self) {}
}

pub struct HttpTwister {
    /// Replaced by a fresh agent (which drops the old one's kept-alive connections) when going idle.
    agent: std::sync::Mutex<ureq::Agent>,
    timeout: Duration,
    url: String,
    authorization: String,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout.min(Duration::from_secs(3)))
        .timeout(timeout)
        .max_idle_connections_per_host(2)
        .build()
}

impl HttpTwister {
    pub fn new(url: &str, user: &str, password: &str, timeout: Duration) -> Self {
        HttpTwister {
            agent: std::sync::Mutex::new(agent(timeout)),
            timeout,
            url: url.to_string(),
            authorization: format!("Basic {}", B64.encode(format!("{user}:{password}"))),
        }
    }

    fn agent(&self) -> ureq::Agent {
        // An agent is a cheap handle on its connection pool.
        self.agent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn parse_reply(body: &str) -> Result<Value, TwisterError> {
    let v: Value =
        serde_json::from_str(body).map_err(|_| TwisterError::BadReply("not JSON".into()))?;
    match v.get("error") {
        Some(Value::Null) | None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        Some(e) => Err(TwisterError::refused(
            e.get("code").and_then(Value::as_i64).unwrap_or(0),
            e.get("message").and_then(Value::as_str).unwrap_or(""),
        )),
    }
}

/// A request as sent. Non-ASCII characters go raw (UTF-8), never as `\uhhhh`: twisterd's JSON reader
/// keeps only the low byte of an escape, which would break the dense wire format's two-byte
/// characters. Control characters are escaped (`\u0001`), which twisterd reads back exactly.
fn request_body(method: &str, params: Value) -> String {
    json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string()
}

impl Twister for HttpTwister {
    fn call(&self, method: &str, params: Value) -> Result<Value, TwisterError> {
        let body = request_body(method, params);
        let sent = self
            .agent()
            .post(&self.url)
            .set("Authorization", &self.authorization)
            .set("Content-Type", "application/json")
            .send_string(&body);
        match sent {
            Ok(resp) => parse_reply(
                &resp
                    .into_string()
                    .map_err(|e| TwisterError::Transport(e.kind().to_string()))?,
            ),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                match parse_reply(&text) {
                    Err(e @ TwisterError::Refused { .. }) => Err(e),
                    _ => Err(TwisterError::Http(status)),
                }
            }
            Err(ureq::Error::Transport(t)) => {
                let kind = t.kind();
                let text = kind.to_string();
                Err(match kind {
                    ureq::ErrorKind::ConnectionFailed
                    | ureq::ErrorKind::Dns
                    | ureq::ErrorKind::InvalidUrl
                    | ureq::ErrorKind::UnknownScheme => TwisterError::NotSent(text),
                    _ => TwisterError::Transport(text),
                })
            }
        }
    }

    fn release_idle(&self) {
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = agent(self.timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_non_ascii_raw_as_twisterd_needs() {
        let text = "{\"v\":2}\u{1}\u{1f}\u{7f}\u{80}\u{7ff}\"\\";
        let body = request_body("newpostmsg", json!(["alice", 3, text]));
        assert!(
            body.contains("\u{80}\u{7ff}"),
            "two-byte characters raw: {body}"
        );
        assert!(
            body.contains("\\u0001\\u001f\u{7f}"),
            "control characters escaped: {body}"
        );
        assert!(
            !body.contains("\\u0080") && !body.contains("\\u07ff"),
            "{body}"
        );
        let back: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(back["params"][2], text);
    }

    #[test]
    fn replies_are_read_like_twisterd_writes_them() {
        assert_eq!(
            parse_reply(r#"{"result":5,"error":null,"id":1}"#),
            Ok(json!(5))
        );
        assert_eq!(
            parse_reply(r#"{"result":null,"error":null,"id":1}"#),
            Ok(Value::Null)
        );
        let e = parse_reply(
            r#"{"result":null,"error":{"code":-32602,"message":"bad post signature"},"id":1}"#,
        )
        .unwrap_err();
        assert!(e.is(Refusal::BadSignature), "{e:?}");
        assert_eq!(e.to_string(), "error -32602: bad post signature");
        assert!(matches!(
            parse_reply("<html>"),
            Err(TwisterError::BadReply(_))
        ));
    }

    #[test]
    fn unreachable_node_is_a_transport_error_without_credentials() {
        let t = HttpTwister::new(
            "http://127.0.0.1:1/",
            "user",
            "hunter2",
            Duration::from_millis(500),
        );
        let e = t.call("getinfo", json!([])).unwrap_err();
        assert!(matches!(e, TwisterError::NotSent(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"));
    }
}
