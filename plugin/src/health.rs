//! What the broker thread can see of the plugin's own threads without waiting on them: internal errors
//! caught, the last sign of life of the worker, and whether the broker asked it to stop. Atomics only,
//! so the broker's TICK reads it without a lock or a syscall.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Health {
    epoch: Instant,
    internal_errors: AtomicU64,
    /// Milliseconds since `epoch` of the worker's last turn of its loop or RPC.
    last_beat_ms: AtomicU64,
    /// Milliseconds since `epoch` (plus one; 0 for "not asked") when the broker asked the worker to stop.
    stop_asked_ms: AtomicU64,
    restarting: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            internal_errors: AtomicU64::new(0),
            last_beat_ms: AtomicU64::new(0),
            stop_asked_ms: AtomicU64::new(0),
            restarting: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts one caught panic; the count so far.
    pub fn internal_error(&self) -> u64 {
        self.internal_errors.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn internal_errors(&self) -> u64 {
        self.internal_errors.load(Ordering::Relaxed)
    }

    pub fn beat(&self, now: Instant) {
        self.last_beat_ms.store(self.millis(now), Ordering::Relaxed);
    }

    /// How long since the worker's last sign of life.
    pub fn silent_for(&self, now: Instant) -> Duration {
        let last = self.last_beat_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.millis(now).saturating_sub(last))
    }

    pub fn ask_to_stop(&self, now: Instant) {
        let at = self.millis(now).saturating_add(1);
        let _ = self
            .stop_asked_ms
            .compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// When the broker asked the worker to stop, if it did.
    pub fn stop_asked_at(&self) -> Option<Instant> {
        match self.stop_asked_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => self
                .epoch
                .checked_add(Duration::from_millis(ms.saturating_sub(1))),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop_asked_ms.load(Ordering::Relaxed) != 0
    }

    pub fn set_restarting(&self, restarting: bool) {
        self.restarting.store(restarting, Ordering::Relaxed);
    }

    pub fn restarting(&self) -> bool {
        self.restarting.load(Ordering::Relaxed)
    }
}

/// What a caught panic said.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_beats_and_stop_requests() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!((h.internal_error(), h.internal_error()), (1, 2));
        h.beat(t0 + Duration::from_secs(5));
        assert_eq!(h.silent_for(t0 + Duration::from_secs(8)).as_secs(), 3);
        assert_eq!(h.silent_for(t0).as_secs(), 0, "a clock behind the beat");
        assert!(!h.stopping() && h.stop_asked_at().is_none());
        h.ask_to_stop(t0 + Duration::from_secs(9));
        h.ask_to_stop(t0 + Duration::from_secs(20));
        assert!(h.stopping());
        let at = h.stop_asked_at().unwrap() + Duration::from_millis(1);
        assert_eq!(
            at.saturating_duration_since(t0).as_secs(),
            9,
            "the first request counts"
        );
    }
}
