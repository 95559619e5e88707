//! The outbox's side of pacing (`pacing`), conflation (`conflate`) and the budget's visibility: when
//! each queue is due, which queue posts next, whether a queue holds a full post, and the log lines
//! that tell the budget left, the queue and the time to drain it (rate-limited).

use super::budget::{Allowance, Budget, Learnt};
use super::conflate::superseded;
use super::pacing::{fill_delay, mode, pace, Mode, Pace, PaceInput};
use super::{Awaiting, Outbox, Queue, Queued};
use crate::drops::Reason;
use crate::relay::{Effect, Level};
use std::time::{Duration, Instant};

/// The chain height is read at most this often while posts are scarce but not out.
pub const HEIGHT_READ_EVERY: Duration = Duration::from_secs(1);
/// A status line at most this often while messages are queued.
pub const STATUS_EVERY: Duration = Duration::from_secs(60);
/// A line about a change of the budget's state at most this often.
const CHANGE_EVERY: Duration = Duration::from_secs(10);
/// Queued bytes (as items, before compression) per byte of a post's room beyond which a queue is
/// checked for holding a full post; compression rarely packs more than this.
const FULL_CHECK_RATIO: usize = 12;

/// What the logs were last told.
#[derive(Debug, Default)]
pub(super) struct Status {
    mode: Option<Mode>,
    next_change_line: Option<Instant>,
    next_status_line: Option<Instant>,
}

impl Outbox {
    /// Starts from the registration bounds an earlier run learnt (the state file).
    pub fn with_learnt(mut self, learnt: Learnt) -> Self {
        self.budget = Budget::from_learnt(learnt);
        self
    }

    /// What is known of our registration height, for the state file.
    pub fn learnt(&self) -> Learnt {
        self.budget.learnt()
    }

    /// May a post that uses the reserve of posts (retained values, receipts of issue 11) go now?
    /// True while a post is proven left (or, before the learning refusal, not proven refused).
    /// Such items are queued with `push_reserved`.
    pub fn spend_reserve(&self) -> bool {
        self.budget.spend_reserve(self.next_k)
    }

    /// Posts proven allowed now (`None`: not known yet).
    pub fn posts_left(&self) -> Option<i64> {
        self.budget.posts_left(self.next_k)
    }

    /// Queues `item` like `push`, allowed to use the reserve of posts (retained values, receipts):
    /// its post (and the posts before it in its queue) go while any post is left.
    pub fn push_reserved(&mut self, item: Queued, to: Option<String>, now: Instant) {
        self.push(item, to.clone(), now);
        let q = self.queue(&to);
        q.reserved_upto = q.items.len();
    }

    /// While out of budget: ask for the chain height (the driver calls this once per poll
    /// interval); while messages wait and posts are only scarce, at most every HEIGHT_READ_EVERY.
    pub fn watch_height(&mut self, now: Instant) {
        if self.awaiting.is_none() && self.height_wanted(now) {
            self.last_height_read = Some(now);
            let id = self.request(Awaiting::Watch);
            self.effects.push_back(Effect::Height { id });
        }
    }

    fn reserve_for(&self, q: &Queue) -> i64 {
        if q.reserved_upto > 0 {
            0
        } else {
            self.settings.reserve
        }
    }

    /// What the budget allows now, keeping the configured reserve.
    pub(super) fn allowance(&self) -> Allowance {
        self.budget.allowance(self.next_k, self.settings.reserve)
    }

    /// Out of budget (or waiting for a block after a refusal) the height is read at every poll, so the
    /// first post a block allows goes at once; while posts are only scarce, at most every
    /// HEIGHT_READ_EVERY (the fill delay follows the measured block interval).
    pub(super) fn height_wanted(&self, now: Instant) -> bool {
        if self.budget.waiting() {
            return true;
        }
        if self.is_empty() {
            return false;
        }
        match mode(self.allowance(), self.settings.reserve) {
            Mode::Ample => false,
            Mode::OutOfBudget => true,
            Mode::Filling => self
                .last_height_read
                .is_none_or(|t| now >= t + HEIGHT_READ_EVERY),
        }
    }

    /// Posts are scarce (or out): posting is paced, and conflation applies.
    pub fn paced(&self) -> bool {
        mode(self.allowance(), self.settings.reserve) != Mode::Ample
    }

    fn queues(&self) -> impl Iterator<Item = (Option<String>, &Queue)> {
        std::iter::once((None, &self.public))
            .chain(self.private.iter().map(|(u, q)| (Some(u.clone()), q)))
    }

    /// When `q` may post, or `None` (empty, or waiting for a block).
    fn queue_due(&self, q: &Queue, now: Instant) -> Option<Instant> {
        let reserve = self.reserve_for(q);
        let input = PaceInput {
            now,
            since: q.since?,
            full: q.full || q.waited_for_block,
            allowance: self.budget.allowance(self.next_k, reserve),
            reserve,
            batch_delay: self.settings.batch_delay,
            block_interval: self.clock.interval(),
        };
        match pace(&input) {
            Pace::At(t) => Some(t),
            Pace::Block { .. } => None,
        }
    }

    pub(super) fn flush_due_at(&self, now: Instant) -> Option<Instant> {
        if self.budget.waiting() {
            // Woken by the chain height (`watch_height`), not by a timer.
            return None;
        }
        let due = self
            .queues()
            .filter_map(|(_, q)| self.queue_due(q, now))
            .min()?;
        Some(
            match self.timers.get(crate::relay::timers::Timer::PostRetry) {
                Some(retry) => due.max(retry),
                None => due,
            },
        )
    }

    /// The queue the next post is made from: the first that is due (any that holds messages when
    /// the broker stops); `None`: none, or the budget proves the next post would be refused.
    pub(super) fn next_target(&self, now: Instant) -> Option<Option<String>> {
        if !self.budget.may_post(self.next_k) {
            return None;
        }
        self.queues()
            .find(|(_, q)| {
                !q.items.is_empty()
                    && (self.forced || self.queue_due(q, now).is_some_and(|t| now >= t))
            })
            .map(|(to, _)| to)
    }

    /// Queues `item` for `to`; while posts are scarce, a QoS 0 value of a conflating rule replaces
    /// the queued value of its topic.
    pub(super) fn conflate(&mut self, item: &super::Queued, to: &Option<String>) {
        if self.settings.conflation.is_off()
            || !self.paced()
            || !self.settings.conflation.applies(item, to)
        {
            return;
        }
        let in_flight = self.in_flight_at_head(to);
        let q = self.queue(to);
        if let Some(i) = superseded(&q.items, in_flight, item) {
            if let Some(old) = q.items.remove(i) {
                q.bytes = q.bytes.saturating_sub(old.encoded.len());
                q.reserved_upto = q
                    .reserved_upto
                    .saturating_sub(usize::from(i < q.reserved_upto));
                self.len = self.len.saturating_sub(1);
                self.counters.conflated += 1;
                // Its spool record is done with: never posted, never to be.
                self.let_go_record(old.id);
                if let super::Payload::Whole(m) = &old.payload {
                    let detail = format!("a QoS 0 value on {} replaced by a newer one while posts are scarce (plugin_opt_over_budget conflate)", m.topic);
                    self.effects
                        .push_back(Effect::Dropped(Reason::Conflated, detail));
                }
            }
        }
    }

    /// Before a new height is applied: the queues that wait for a block now go as soon as one allows
    /// a post (they waited for the next post already).
    pub(super) fn mark_waiting_for_a_block(&mut self, now: Instant) {
        let blocked: Vec<Option<String>> = self
            .queues()
            .filter(|(_, q)| {
                !q.items.is_empty() && (self.budget.waiting() || self.queue_due(q, now).is_none())
            })
            .map(|(to, _)| to)
            .collect();
        for to in blocked {
            self.queue(&to).waited_for_block = true;
        }
    }

    /// Learns whether the queue to `to` holds at least a full post (only looked at while posts are
    /// scarce: then a full post goes at once and a partial one waits).
    pub(super) fn check_full(&mut self, to: &Option<String>) {
        let room = self.room(to);
        let q = self.queue(to);
        // Packing compresses: looked at again only once the queue grew by a tenth.
        if q.full
            || q.bytes.saturating_mul(FULL_CHECK_RATIO) < room
            || q.bytes.saturating_mul(10) < q.checked_bytes.saturating_mul(11)
            || !self.paced()
        {
            return;
        }
        let full = self
            .pack(to)
            .is_some_and(|(n, _)| n < self.queue(to).items.len());
        let q = self.queue(to);
        q.full = full;
        q.checked_bytes = q.bytes;
    }

    /// The budget's state and the queue in the log: a line when the state changes, and a status
    /// line every STATUS_EVERY while messages are queued (both rate-limited).
    pub(super) fn say_status(&mut self, now: Instant) {
        let reserve = self.settings.reserve;
        let allowance = self.allowance();
        let m = mode(allowance, reserve);
        let changed = self.status.mode != Some(m);
        // Running out is said at once; other changes at most every CHANGE_EVERY.
        let may_say =
            m == Mode::OutOfBudget || self.status.next_change_line.is_none_or(|t| now >= t);
        if changed && may_say && (self.status.mode.is_some() || m != Mode::Ample) {
            let line = self.state_line(m, allowance);
            self.log(Level::Info, line);
            self.status.next_change_line = Some(now + CHANGE_EVERY);
        }
        if changed && may_say {
            self.status.mode = Some(m);
        }
        if self.is_empty() {
            self.status.next_status_line = None;
            return;
        }
        match self.status.next_status_line {
            None => self.status.next_status_line = Some(now + STATUS_EVERY),
            Some(t) if now >= t => {
                let line = self.status_line(now, allowance);
                self.log(Level::Info, line);
                self.status.next_status_line = Some(now + STATUS_EVERY);
            }
            Some(_) => {}
        }
    }

    fn left_text(&self, allowance: Allowance) -> String {
        let at = self
            .budget
            .height()
            .map_or(String::new(), |h| format!(" at height {h}"));
        let reg = self
            .budget
            .registration()
            .map_or(String::new(), |r| format!(", registered at {r}"));
        match allowance {
            Allowance::Left(left) => format!("{} posts left{at}{reg}", left.max(0)),
            Allowance::Unknown => {
                format!("posts left unknown{at} (registration height not known yet)")
            }
        }
    }

    /// The height allowing the next post beyond the reserve, and the minutes until then.
    fn next_allowed(&self) -> Option<(i64, u64)> {
        let h = self
            .budget
            .height_allowing(self.next_k, self.settings.reserve + 1)?;
        let blocks = (h - self.budget.height()?).max(0) as u32;
        Some((h, (self.clock.interval() * blocks).as_secs().div_ceil(60)))
    }

    fn state_line(&self, m: Mode, allowance: Allowance) -> String {
        let reserve = self.settings.reserve;
        let left = self.left_text(allowance);
        match (m, allowance) {
            (Mode::Ample, _) => format!("post budget ample: {left}: posting at low latency"),
            (Mode::Filling, Allowance::Left(l)) => {
                let wait = fill_delay(l - reserve, self.settings.batch_delay, self.clock.interval());
                format!("post budget short: {left} ({reserve} kept in reserve): filling posts, a message waits up to {} s for a full post", wait.as_secs())
            }
            (Mode::Filling, Allowance::Unknown) => format!("post budget short: {left}"),
            (Mode::OutOfBudget, _) => match self.next_allowed() {
                Some((h, min)) => format!("out of post budget: {left} ({reserve} kept in reserve), next post allowed at height {h} (~{min} min); {} messages queued", self.len),
                None => format!("out of post budget: {left}; {} messages queued", self.len),
            },
        }
    }

    fn status_line(&self, now: Instant, allowance: Allowance) -> String {
        let oldest = self
            .queues()
            .filter_map(|(_, q)| q.since)
            .min()
            .map_or(0, |t| now.saturating_duration_since(t).as_secs());
        let c = &self.counters;
        // Messages per post so far (a full post of small messages carries dozens).
        let per_post = match c.posts + c.dms {
            0 => 1,
            posts => (c.messages_posted / posts).max(1),
        };
        let posts_needed = (self.len as u64).div_ceil(per_post) as i64;
        let drain = match allowance {
            Allowance::Left(left) if posts_needed > left - self.settings.reserve => {
                let blocks = (posts_needed - (left - self.settings.reserve).max(0) + 1) / 2;
                let secs = (self.clock.interval() * blocks as u32).as_secs();
                format!("~{} min ({blocks} blocks)", secs.div_ceil(60))
            }
            _ => "under a minute".to_string(),
        };
        format!(
            "outbox: {} messages queued (oldest waiting {oldest} s), {} (reserve {}), about {per_post} messages per post, time to drain {drain}",
            self.len,
            self.left_text(allowance),
            self.settings.reserve
        )
    }
}
