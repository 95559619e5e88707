//! Pacing: when the next post goes, chosen from the post budget left and the traffic. While the
//! budget is ample a post goes after the configured batch delay (low latency). When posts are scarce,
//! a post goes as soon as a full post is queued, or when its oldest message has waited a delay that
//! grows as the budget shrinks, up to half a block interval (twisterd allows two posts per block):
//! so a fresh user's 20 posts are spread over minutes, not spent in seconds. A reserve of posts is
//! kept for what must not wait (retained values, receipts); with none left beyond it, posting waits
//! for the block that allows the next post. No clock: every decision takes `now`.

use super::budget::Allowance;
use std::time::{Duration, Instant};

/// Posts beyond the reserve at or above which posting is at low latency (about two hours of blocks).
pub const AMPLE_POSTS: i64 = 24;
/// The real network's block interval, assumed until blocks have been seen coming.
pub const DEFAULT_BLOCK_INTERVAL: Duration = Duration::from_secs(600);
/// Bounds of the measured block interval.
const MIN_BLOCK_INTERVAL: Duration = Duration::from_millis(100);
const MAX_BLOCK_INTERVAL: Duration = Duration::from_secs(3600);
/// Block arrivals remembered to measure the interval.
const ARRIVALS: usize = 8;

/// What pacing decides for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Post at this instant (never before `now`).
    At(Instant),
    /// No post before the budget holds `posts` more posts (a block): woken by the chain height.
    Block { posts: i64 },
}

/// The budget's state as the logs tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ample,
    /// Posts are scarce: filling posts.
    Filling,
    /// Nothing left beyond the reserve: waiting for a block.
    OutOfBudget,
}

/// What one decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct PaceInput {
    pub now: Instant,
    /// Since when the queue's head has waited.
    pub since: Instant,
    /// At least one full post is queued.
    pub full: bool,
    pub allowance: Allowance,
    /// Posts kept back (none for items allowed to use the reserve).
    pub reserve: i64,
    pub batch_delay: Duration,
    pub block_interval: Duration,
}

pub fn mode(allowance: Allowance, reserve: i64) -> Mode {
    match allowance {
        Allowance::Unknown => Mode::Ample,
        Allowance::Left(left) if left - reserve <= 0 => Mode::OutOfBudget,
        Allowance::Left(left) if left - reserve >= AMPLE_POSTS => Mode::Ample,
        Allowance::Left(_) => Mode::Filling,
    }
}

/// The longest a message waits for others to fill its post, with `spendable` posts beyond the
/// reserve (1 ..= AMPLE_POSTS - 1): from about nothing up to half a block interval.
pub fn fill_delay(spendable: i64, batch_delay: Duration, block_interval: Duration) -> Duration {
    let short = (AMPLE_POSTS - spendable.clamp(0, AMPLE_POSTS)) as u32;
    (block_interval / 2 * short / AMPLE_POSTS as u32).max(batch_delay)
}

pub fn pace(i: &PaceInput) -> Pace {
    let after = |d: Duration| Pace::At((i.since + d).max(i.now));
    match (mode(i.allowance, i.reserve), i.allowance) {
        (Mode::OutOfBudget, _) => Pace::Block {
            posts: i.reserve + 1,
        },
        (Mode::Ample, _) => after(i.batch_delay),
        (Mode::Filling, _) if i.full => after(i.batch_delay),
        (Mode::Filling, Allowance::Left(left)) => after(fill_delay(
            left - i.reserve,
            i.batch_delay,
            i.block_interval,
        )),
        (Mode::Filling, Allowance::Unknown) => after(i.batch_delay),
    }
}

/// The block interval as observed: the mean over the last blocks seen arriving (the default until
/// two have), so pacing follows a chain whose blocks come faster or slower than every 10 minutes.
#[derive(Debug, Clone, Default)]
pub struct BlockClock {
    /// (height, when it was first seen), oldest first; the first entry is where watching began.
    arrivals: Vec<(i64, Instant)>,
}

impl BlockClock {
    pub fn seen(&mut self, height: i64, now: Instant) {
        if self.arrivals.last().is_some_and(|(h, _)| height <= *h) {
            return;
        }
        if self.arrivals.len() == ARRIVALS {
            self.arrivals.remove(0);
        }
        self.arrivals.push((height, now));
    }

    pub fn interval(&self) -> Duration {
        // The first height seen came at an unknown time: measure from the first arrival after it.
        let measured = self.arrivals.get(1..).unwrap_or(&[]);
        match (measured.first(), measured.last()) {
            (Some((h0, t0)), Some((h1, t1))) if h1 > h0 => {
                let blocks = u32::try_from(h1 - h0).unwrap_or(u32::MAX);
                (t1.saturating_duration_since(*t0) / blocks)
                    .clamp(MIN_BLOCK_INTERVAL, MAX_BLOCK_INTERVAL)
            }
            _ => DEFAULT_BLOCK_INTERVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(50);

    fn input(now: Instant, allowance: Allowance, full: bool) -> PaceInput {
        PaceInput {
            now,
            since: now,
            full,
            allowance,
            reserve: 4,
            batch_delay: DELAY,
            block_interval: DEFAULT_BLOCK_INTERVAL,
        }
    }

    #[test]
    fn an_ample_budget_posts_after_the_batch_delay() {
        let now = Instant::now();
        for a in [
            Allowance::Unknown,
            Allowance::Left(4 + AMPLE_POSTS),
            Allowance::Left(500),
        ] {
            assert_eq!(pace(&input(now, a, false)), Pace::At(now + DELAY), "{a:?}");
        }
    }

    #[test]
    fn a_scarce_budget_waits_to_fill_posts_longer_as_it_shrinks() {
        let now = Instant::now();
        let mut last = Duration::ZERO;
        for left in (5..4 + AMPLE_POSTS).rev() {
            let Pace::At(t) = pace(&input(now, Allowance::Left(left), false)) else {
                panic!("posts left: {left}");
            };
            let wait = t - now;
            assert!(
                wait > DELAY && wait >= last,
                "{left}: {wait:?} after {last:?}"
            );
            assert!(wait <= DEFAULT_BLOCK_INTERVAL / 2, "{wait:?}");
            last = wait;
        }
        // One post beyond the reserve: nearly half a block (the next post is a block away).
        assert!(last >= DEFAULT_BLOCK_INTERVAL / 2 * 22 / 24, "{last:?}");
        // A full post goes at once, whatever the budget left beyond the reserve.
        for left in 5..4 + AMPLE_POSTS {
            assert_eq!(
                pace(&input(now, Allowance::Left(left), true)),
                Pace::At(now + DELAY)
            );
        }
    }

    #[test]
    fn the_reserve_is_kept_and_then_the_next_block_is_waited_for() {
        let now = Instant::now();
        for left in [-3, 0, 1, 4] {
            assert_eq!(
                pace(&input(now, Allowance::Left(left), true)),
                Pace::Block { posts: 5 },
                "{left} left, 4 kept back"
            );
        }
        // Items allowed to use the reserve go while any post is left.
        let mut i = input(now, Allowance::Left(1), false);
        i.reserve = 0;
        assert!(matches!(pace(&i), Pace::At(_)));
        i.allowance = Allowance::Left(0);
        assert_eq!(pace(&i), Pace::Block { posts: 1 });
    }

    #[test]
    fn no_deadline_is_ever_in_the_past() {
        let start = Instant::now();
        let now = start + Duration::from_secs(3600);
        for left in -2..40 {
            for full in [false, true] {
                let mut i = input(now, Allowance::Left(left), full);
                i.since = start;
                if let Pace::At(t) = pace(&i) {
                    assert_eq!(t, now, "long overdue: now, not before ({left}, {full})");
                }
            }
        }
    }

    #[test]
    fn the_block_interval_is_measured_from_blocks_seen_arriving() {
        let t = Instant::now();
        let mut c = BlockClock::default();
        assert_eq!(c.interval(), DEFAULT_BLOCK_INTERVAL);
        c.seen(100, t);
        c.seen(101, t + Duration::from_secs(3));
        assert_eq!(c.interval(), DEFAULT_BLOCK_INTERVAL, "one arrival: unknown");
        c.seen(101, t + Duration::from_secs(5));
        c.seen(103, t + Duration::from_secs(23));
        assert_eq!(c.interval(), Duration::from_secs(10));
        for i in 0..20 {
            c.seen(104 + i, t + Duration::from_secs(30 + 2 * i as u64));
        }
        assert_eq!(
            c.interval(),
            Duration::from_secs(2),
            "the last blocks count"
        );
        // Filling scales with it: at most half a (measured) block.
        assert!(fill_delay(1, DELAY, c.interval()) <= Duration::from_secs(1));
    }
}
