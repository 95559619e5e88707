//! The worker's side of client sessions: taking up the last run's interest at start, messages from the
//! network held until the clients whose subscriptions they match subscribe again (`crate::held`), and
//! publishing into the broker.

use super::*;

impl Worker {
    /// Takes up the subscriptions of the sessions the previous run knew (see `Interest::restore`).
    pub(super) fn restore_interest(&mut self, restored: &RestoredSessions) {
        // From now on a save is not the one of a clean stop.
        let certain = std::mem::replace(&mut self.saved.clean_stop, false);
        let saved = std::mem::take(&mut self.saved.interest);
        if saved.is_empty() {
            return;
        }
        self.interest
            .restore(&saved, &|c| restored.holds(c), certain);
        let persistent = saved.iter().filter(|s| s.persistent).count();
        let live = saved
            .iter()
            .filter(|s| s.persistent && restored.holds(&s.client))
            .count();
        let how = if certain {
            "clean stop"
        } else {
            "no clean stop: the broker may have lost what changed since its last autosave"
        };
        self.log(
            Level::Info,
            format!(
                "interest of the last run taken up: {} sessions, {persistent} persistent, {live} restored by the broker ({how}); messages for the others are held up to {}s until they subscribe again",
                saved.len(),
                RESUBSCRIBE_GRACE.as_secs()
            ),
        );
    }

    /// The sessions (kept in the state file) changed; `filters_changed`: so did the interest.
    pub(super) fn sessions_changed(&mut self, filters_changed: bool) {
        self.state_dirty = true;
        if filters_changed {
            self.interest_changed();
        }
        let returned = self.interest.take_returned();
        if returned.is_empty() {
            return;
        }
        let back = self
            .held
            .take_wanted(|t| returned.iter().any(|f| crate::topic::matches(f, t)));
        for m in back {
            self.inject(m);
        }
        if std::mem::take(&mut self.ring_pending) {
            self.doorbell.ring();
        }
    }

    /// After the grace, what only a previous run's subscriptions wanted is given up.
    pub(super) fn end_resubscribe_grace(&mut self, now: Instant) {
        if self
            .timers
            .get(Timer::ResubscribeGrace)
            .is_none_or(|t| now < t)
        {
            return;
        }
        self.timers.clear(Timer::ResubscribeGrace);
        if self.interest.forget_returning() {
            self.interest_changed();
        }
        let dropped = self.held.clear() as u64 + self.held.overflowed;
        if dropped > 0 {
            self.log(Level::Notice, format!("{dropped} messages from the network dropped: no client subscribed again to what they match within {}s of the restart", RESUBSCRIBE_GRACE.as_secs()));
        }
    }

    pub(super) fn inject(&mut self, m: Message) {
        self.counters.injected += 1;
        self.ring_pending = true;
        if self
            .to_broker
            .send_timeout(ToBroker::Publish(m), Duration::from_secs(1))
            .is_err()
        {
            self.drop_message(
                Reason::BrokerQueueFull,
                "a message from the network: the broker's thread takes none".to_string(),
            );
        }
    }
}
