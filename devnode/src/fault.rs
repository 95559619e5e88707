//! Fault injection for the plugin's reliability tests: latency, a fraction of calls answered busy (-25)
//! or with HTTP 500, a stall (nothing answered for a while), answers held back after the call was
//! carried out (a post stored but answered late, as a slow twisterd does), and refused connections.

use crate::error::RpcError;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const USAGE: &str = "devnode_fault {\"latency_ms\":n,\"busy\":0..1,\"http500\":0..1,\"stall_ms\":n,\"late_ms\":n,\"refuse_ms\":n,\"forget_newest\":{\"user\":n}}\nset fault injection (dev node only); {} clears it\nstall_ms: calls wait, then are carried out; late_ms: calls are carried out at once, answered when it ends\nforget_newest: at once, the newest n pieces of each user are forgotten (memory and disk), as by a twisterd killed right after storing them; peers keep theirs";

#[derive(Default, Clone, Debug)]
pub struct Faults {
    pub latency: Duration,
    /// Fraction of calls answered with error -25.
    pub busy: f64,
    /// Fraction of calls answered with HTTP 500 and no JSON body.
    pub http500: f64,
    pub stall_until: Option<Instant>,
    /// Until then every call is carried out at once but answered only then.
    pub late_until: Option<Instant>,
    pub refuse_until: Option<Instant>,
    rng: u64,
}

/// What to do with one request before it reaches the node.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Serve,
    Busy,
    Http500,
}

fn ratio(v: &Value, key: &str) -> Result<f64, RpcError> {
    match v.get(key) {
        None => Ok(0.0),
        Some(x) => x
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| RpcError::invalid_params(format!("{key} must be a number from 0 to 1"))),
    }
}

fn millis(v: &Value, key: &str) -> Result<u64, RpcError> {
    match v.get(key) {
        None => Ok(0),
        Some(x) => x.as_u64().ok_or_else(|| {
            RpcError::invalid_params(format!("{key} must be a whole number of milliseconds"))
        }),
    }
}

/// The pieces `forget_newest` asks to forget: (user, how many newest), or an error naming the key.
pub fn forget_request(v: &Value) -> Result<Vec<(String, usize)>, RpcError> {
    let Some(f) = v.get("forget_newest") else {
        return Ok(Vec::new());
    };
    let bad =
        || RpcError::invalid_params("forget_newest must be {\"user\": number of pieces, ...}");
    f.as_object()
        .ok_or_else(bad)?
        .iter()
        .map(|(u, n)| Ok((u.clone(), n.as_u64().ok_or_else(bad)? as usize)))
        .collect()
}

impl Faults {
    /// Replaces the whole fault set (keys left out are cleared). Unknown keys are refused.
    pub fn configure(&mut self, v: &Value) -> Result<(), RpcError> {
        let Some(obj) = v.as_object() else {
            return Err(RpcError::invalid_params(USAGE));
        };
        for key in obj.keys() {
            if ![
                "latency_ms",
                "busy",
                "http500",
                "stall_ms",
                "late_ms",
                "refuse_ms",
                "forget_newest",
            ]
            .contains(&key.as_str())
            {
                return Err(RpcError::invalid_params(format!("unknown fault '{key}'")));
            }
        }
        let now = Instant::now();
        let stall = millis(v, "stall_ms")?;
        let refuse = millis(v, "refuse_ms")?;
        let late = millis(v, "late_ms")?;
        *self = Faults {
            latency: Duration::from_millis(millis(v, "latency_ms")?),
            busy: ratio(v, "busy")?,
            http500: ratio(v, "http500")?,
            stall_until: (stall > 0).then(|| now + Duration::from_millis(stall)),
            late_until: (late > 0).then(|| now + Duration::from_millis(late)),
            refuse_until: (refuse > 0).then(|| now + Duration::from_millis(refuse)),
            rng: self.rng.max(0x2545_f491) ^ now.elapsed().as_nanos() as u64,
        };
        Ok(())
    }

    pub fn describe(&self) -> Value {
        let left = |t: Option<Instant>| {
            t.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64)
                .unwrap_or(0)
        };
        json!({
            "latency_ms": self.latency.as_millis() as u64,
            "busy": self.busy,
            "http500": self.http500,
            "stall_ms": left(self.stall_until),
            "late_ms": left(self.late_until),
            "refuse_ms": left(self.refuse_until),
        })
    }

    pub fn active(&self) -> bool {
        !self.latency.is_zero()
            || self.busy > 0.0
            || self.http500 > 0.0
            || self.stall_until.is_some()
            || self.late_until.is_some()
    }

    /// How long to hold the answer of a call carried out now.
    pub fn answer_late_by(&self, now: Instant) -> Duration {
        self.late_until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }

    pub fn refusing(&self, now: Instant) -> bool {
        self.refuse_until.is_some_and(|t| now < t)
    }

    /// How long to hold this request before answering (stall, then latency).
    pub fn delay(&self, now: Instant) -> Duration {
        let stall = self
            .stall_until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default();
        stall + self.latency
    }

    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn verdict(&mut self) -> Verdict {
        if self.busy == 0.0 && self.http500 == 0.0 {
            return Verdict::Serve;
        }
        if self.rng == 0 {
            self.rng = 0x9e37_79b9_7f4a_7c15;
        }
        let x = self.unit();
        if x < self.busy {
            Verdict::Busy
        } else if x < self.busy + self.http500 {
            Verdict::Http500
        } else {
            Verdict::Serve
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_honoured_roughly_and_cleared_by_empty_object() {
        let mut f = Faults::default();
        f.configure(&json!({"busy": 0.5})).unwrap();
        let busy = (0..10_000).filter(|_| f.verdict() == Verdict::Busy).count();
        assert!((4000..6000).contains(&busy), "{busy}");
        f.configure(&json!({})).unwrap();
        assert!((0..1000).all(|_| f.verdict() == Verdict::Serve));
    }

    #[test]
    fn bad_fault_settings_are_refused() {
        let mut f = Faults::default();
        assert!(f.configure(&json!({"busy": 2})).is_err());
        assert!(f.configure(&json!({"latency_ms": -1})).is_err());
        assert!(f.configure(&json!({"nope": 1})).is_err());
        assert!(f.configure(&json!([1])).is_err());
    }

    #[test]
    fn late_answers_end_with_their_window() {
        let mut f = Faults::default();
        f.configure(&json!({"late_ms": 50})).unwrap();
        let now = Instant::now();
        assert!(f.active());
        assert!(f.answer_late_by(now) > Duration::from_millis(10));
        assert_eq!(f.delay(now), Duration::ZERO, "carried out at once");
        assert_eq!(
            f.answer_late_by(now + Duration::from_millis(60)),
            Duration::ZERO
        );
    }

    #[test]
    fn refuse_and_stall_windows_end() {
        let mut f = Faults::default();
        f.configure(&json!({"refuse_ms": 50, "stall_ms": 30}))
            .unwrap();
        let now = Instant::now();
        assert!(f.refusing(now));
        assert!(f.delay(now) > Duration::from_millis(10));
        let later = now + Duration::from_millis(100);
        assert!(!f.refusing(later));
        assert_eq!(f.delay(later), Duration::ZERO);
    }
}
