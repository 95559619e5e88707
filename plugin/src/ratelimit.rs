//! Log lines about what others send us, rate-limited: a hostile peer must not be able to flood the
//! broker's log (nor the channel log lines share with messages for the broker). Time comes in as `now`.

use std::time::{Duration, Instant};

pub struct LogLimiter {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    in_window: u32,
    held_back: u64,
}

impl LogLimiter {
    /// At most `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        LogLimiter {
            burst,
            window,
            window_start: None,
            in_window: 0,
            held_back: 0,
        }
    }

    /// Whether a line may be written now: Some(lines held back since the last one written), which the
    /// caller says with it; None when this one is held back (and counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let new_window = match self.window_start {
            None => true,
            Some(start) => now.checked_duration_since(start).unwrap_or_default() >= self.window,
        };
        if new_window {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.burst {
            self.held_back = self.held_back.saturating_add(1);
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// " (N similar lines not shown)" when lines were held back, else nothing.
pub fn held_back_note(held_back: u64) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(" ({held_back} similar lines not shown)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_held_back() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, Duration::from_secs(10));
        let got: Vec<Option<u64>> = (0..5).map(|_| l.allow(t0)).collect();
        assert_eq!(got, vec![Some(0), Some(0), Some(0), None, None]);
        assert_eq!(l.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), Some(0));
        // A clock going backwards neither panics nor opens the gate.
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), None);
        assert_eq!(held_back_note(0), "");
        assert_eq!(held_back_note(2), " (2 similar lines not shown)");
    }
}
