//! The worker's calls to twisterd and its log: one typed call at a time with the heartbeat, and the
//! log of trouble once per change of state.

use super::*;

impl Worker {
    pub(super) fn log(&self, level: Level, msg: impl Into<String>) {
        let _ = self.to_broker.try_send(ToBroker::Log(
            level,
            format!("mqtt-twister: {}", msg.into()),
        ));
    }

    /// Logs `msg` only the first time `key` is seen.
    pub(super) fn log_once(&mut self, key: &str, level: Level, msg: impl Into<String>) {
        if !self.said_once.iter().any(|k| k == key) {
            self.said_once.push(key.to_string());
            self.log(level, msg);
        }
    }

    /// Logs an RPC failure once per change of state (the error's kind), naming the method that met it.
    pub(super) fn rpc_failed(&mut self, method: &str, e: &TwisterError) {
        let kind = e.kind();
        if self.trouble.as_deref() != Some(kind.as_str()) {
            self.log(
                Level::Error,
                format!("twisterd call {method} failed: {e}; retrying with backoff"),
            );
            self.trouble = Some(kind);
        }
    }

    pub(super) fn rpc_ok(&mut self) {
        if self.trouble.take().is_some() {
            self.log(Level::Notice, "twisterd answers again");
        }
    }

    /// One typed call (`method` names it in the log), with the heartbeat and the log of trouble.
    pub(super) fn call<T>(
        &mut self,
        method: &str,
        call: impl FnOnce(&Client) -> Result<T, TwisterError>,
    ) -> Result<T, TwisterError> {
        // Once the broker stops, nothing but the shutdown's last posts waits on twisterd.
        if self.health.stopping() && !self.stopping {
            return Err(TwisterError::Transport("the broker is stopping".into()));
        }
        self.health.beat(Instant::now());
        let r = call(&self.rpc);
        self.health.beat(Instant::now());
        match &r {
            Ok(_) => self.rpc_ok(),
            // An RPC error is an answer: twisterd is up.
            Err(TwisterError::Refused { .. }) => self.rpc_ok(),
            Err(e) => self.rpc_failed(method, e),
        }
        r
    }
}
