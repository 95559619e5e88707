//! What the broker thread says about the plugin's health, decided here and written to the broker's
//! log by `plugin` (through the host layer): messages from the network refused for their topic (counted, rate-limited), a worker
//! thread that has ended, a worker that shows no sign of life. Time comes in as `now`.

use crate::bus::Level;
use crate::health::Health;
use crate::ratelimit::{held_back_note, LogLimiter};
use std::time::{Duration, Instant};

pub struct Watch {
    /// Messages from the network whose topic the broker would refuse from a client.
    pub refused_topics: u64,
    refusal_log: LogLimiter,
    worker_gone_reported: bool,
    silence_reported: bool,
    /// No sign of life for this long means stuck (an RPC lasts one timeout at most).
    silence_limit: Duration,
}

impl Watch {
    pub fn new(rpc_timeout: Duration) -> Self {
        Watch {
            refused_topics: 0,
            refusal_log: LogLimiter::new(10, Duration::from_secs(10)),
            worker_gone_reported: false,
            silence_reported: false,
            silence_limit: (rpc_timeout.saturating_mul(3)).max(Duration::from_secs(60)),
        }
    }

    /// Counts a refused topic; the log line, unless held back.
    pub fn refused(&mut self, topic: &str, why: &str, now: Instant) -> Option<String> {
        self.refused_topics += 1;
        let held_back = self.refusal_log.allow(now)?;
        let shown: String = topic.chars().take(60).collect();
        Some(format!(
            "mqtt-twister: refused a message from the network: topic {shown:?} is not one the broker takes from a client ({why}; refused so far: {}){}",
            self.refused_topics,
            held_back_note(held_back)
        ))
    }

    /// Why local messages could not be handed to the worker.
    pub fn why_dropped(thread_ended: bool, health: &Health) -> &'static str {
        if thread_ended {
            "the worker has ended"
        } else if health.restarting() {
            "the worker is restarting after an internal error"
        } else {
            "worker queue full"
        }
    }

    /// What to say about the worker now: its thread ended, it went silent, it came back.
    pub fn health_lines(
        &mut self,
        thread_ended: bool,
        health: &Health,
        now: Instant,
    ) -> Vec<(Level, String)> {
        let mut lines = Vec::new();
        if health.stopping() {
            return lines;
        }
        if thread_ended && !self.worker_gone_reported {
            self.worker_gone_reported = true;
            lines.push((Level::Error, "mqtt-twister: the worker thread has ended: nothing is relayed any more until the broker restarts (please report)".to_string()));
        }
        let silent = health.silent_for(now);
        let quiet = !thread_ended && silent >= self.silence_limit && !health.restarting();
        if quiet && !self.silence_reported {
            lines.push((
                Level::Warning,
                format!(
                    "mqtt-twister: the worker has shown no sign of life for {} s: stuck?",
                    silent.as_secs()
                ),
            ));
        } else if !quiet && self.silence_reported {
            lines.push((
                Level::Notice,
                "mqtt-twister: the worker is running again".to_string(),
            ));
        }
        self.silence_reported = quiet;
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_and_their_lines_rate_limited() {
        let t0 = Instant::now();
        let mut w = Watch::new(Duration::from_secs(5));
        let lines: Vec<Option<String>> = (0..12).map(|_| w.refused("a/\u{1}", "why", t0)).collect();
        assert_eq!(w.refused_topics, 12);
        assert_eq!(lines.iter().flatten().count(), 10);
        let first = lines[0].as_deref().unwrap();
        assert!(
            first.contains(r#"topic "a/\u{1}" is not one the broker takes"#),
            "{first}"
        );
        let later = w.refused("x", "why", t0 + Duration::from_secs(10)).unwrap();
        assert!(later.ends_with("(2 similar lines not shown)"), "{later}");
    }

    #[test]
    fn a_dead_or_silent_worker_is_said_once_per_change() {
        let t0 = Instant::now();
        let health = Health::default();
        health.beat(t0);
        let mut w = Watch::new(Duration::from_secs(5));
        assert!(w.health_lines(false, &health, t0).is_empty());
        assert_eq!(Watch::why_dropped(false, &health), "worker queue full");
        let later = t0 + Duration::from_secs(61);
        let said = w.health_lines(false, &health, later);
        assert_eq!(said.len(), 1);
        assert!(said[0].1.contains("no sign of life for 6"), "{said:?}");
        assert!(
            w.health_lines(false, &health, later).is_empty(),
            "said once"
        );
        health.beat(later);
        let said = w.health_lines(false, &health, later);
        assert!(said[0].1.contains("running again"), "{said:?}");
        health.set_restarting(true);
        assert!(Watch::why_dropped(false, &health).contains("restarting"));
        let said = w.health_lines(true, &health, later + Duration::from_secs(100));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].1.contains("worker thread has ended"));
        assert!(w.health_lines(true, &health, later).is_empty());
        assert_eq!(Watch::why_dropped(true, &health), "the worker has ended");
        health.ask_to_stop(later);
        let mut fresh = Watch::new(Duration::from_secs(5));
        assert!(
            fresh.health_lines(true, &health, later).is_empty(),
            "a stop is not a death"
        );
    }
}
