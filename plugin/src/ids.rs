//! Where a forwarded message's id (`wire::MessageId`) comes from. With the spool on, the spool gives
//! it in the MESSAGE callback (its epoch and the record's `SpoolId`, so a replay after a crash has
//! the same id); with it off, `RunIds` numbers the messages the worker takes from the callbacks within
//! an epoch of this run (its start time in milliseconds), counting from 1.

use crate::wire::MessageId;
use std::sync::atomic::{AtomicU64, Ordering};

/// The last run epoch given out in this process: a worker restarted after a panic takes a later one,
/// so ids counted again from 1 are never reused.
static LAST_RUN_EPOCH: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct RunIds {
    epoch: u64,
    last: u64,
}

impl RunIds {
    /// A new epoch: `now_ms` (the time in milliseconds), or later than any given before.
    pub fn new(now_ms: u64) -> Self {
        let mut epoch = now_ms.max(1);
        let _ = LAST_RUN_EPOCH.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            epoch = epoch.max(last + 1);
            Some(epoch)
        });
        RunIds { epoch, last: 0 }
    }

    /// A new epoch from the clock.
    pub fn starting_now() -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        RunIds::new(now_ms)
    }

    pub fn next(&mut self) -> MessageId {
        self.last += 1;
        MessageId {
            epoch: self.epoch,
            seq: self.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_from_one_and_a_later_source_never_reuses_an_epoch() {
        let mut a = RunIds::new(5_000);
        let first = a.next();
        assert_eq!(first.seq, 1);
        assert_eq!(a.next().seq, 2);
        // Same clock reading (a worker restarted at once): a later epoch all the same.
        let mut b = RunIds::new(5_000);
        assert!(b.next().epoch > first.epoch);
        let c = RunIds::starting_now();
        assert!(c.epoch > b.epoch);
    }
}
