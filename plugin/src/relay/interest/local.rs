//! This broker's interest: its clients' subscriptions per session (`crate::interest::Interest`), our
//! profile's writes (`super::profile`), and after a restart the wait for the last run's subscriptions
//! (`crate::relay::hold::returning`): messages only they may want are held and injected when a client
//! subscribes again, and given up when the wait ends.

use super::profile::{ProfileWriter, Step};
use crate::bus::{DhtAnswer, DhtCall};
use crate::interest::{Interest, RestoredSessions, SavedSession, SessionEvent};
use crate::relay::hold::returning::{Returning, RESUBSCRIBE_GRACE};
use crate::relay::Level;
use crate::wire::Message;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum LocalEffect {
    /// Our profile's write of these filters begins (the interest changed, or a retry).
    ProfileWrite(Vec<String>),
    /// A DHT call of our profile's write (`super::profile`); its answer goes to `profile_answer`.
    Dht(DhtCall),
    /// Publish into the broker: a held message whose subscription came back.
    Inject(Message),
    /// The sessions changed: the state file is due for a write.
    StateChanged,
    Log(Level, String),
}

pub struct Subscriptions {
    interest: Interest,
    profile: ProfileWriter,
    returning: Returning,
    effects: VecDeque<LocalEffect>,
}

impl Subscriptions {
    /// `stale`: the profile may not hold `interest` (a restarted relay: the write the last one
    /// waited for may never be answered to this one).
    pub fn new(
        user: &str,
        interest: Interest,
        debounce: Duration,
        stale: bool,
        now: Instant,
    ) -> Self {
        let mut s = Subscriptions {
            interest,
            profile: ProfileWriter::new(user, debounce),
            returning: Returning::default(),
            effects: VecDeque::new(),
        };
        if stale {
            s.profile.changed(now);
        }
        s
    }

    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// The subscriptions, for a relay started after this one.
    pub fn take_interest(&mut self) -> Interest {
        std::mem::take(&mut self.interest)
    }

    /// The sessions as the state file keeps them.
    pub fn saved(&self) -> Vec<SavedSession> {
        self.interest.saved()
    }

    /// Takes up the sessions the previous run knew (see `Interest::restore`); `certain`: it stopped
    /// cleanly, so the broker's own persistence holds what it said.
    pub fn restore(&mut self, saved: &[SavedSession], restored: &RestoredSessions, certain: bool) {
        if saved.is_empty() {
            return;
        }
        self.interest
            .restore(saved, &|c| restored.holds(c), certain);
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
        self.effects.push_back(LocalEffect::Log(
            Level::Info,
            format!(
                "interest of the last run taken up: {} sessions, {persistent} persistent, {live} restored by the broker ({how}); messages for the others are held up to {}s until they subscribe again",
                saved.len(),
                RESUBSCRIBE_GRACE.as_secs()
            ),
        ));
    }

    /// The relay started (twisterd's numbers are known): the profile is written at once, and the
    /// wait for the last run's subscriptions begins.
    pub fn start(&mut self, now: Instant) {
        if self.interest.has_returning() {
            self.returning.start(now);
        }
        self.profile.start(now);
    }

    pub fn subscribe(&mut self, client: &str, filter: &str, now: Instant) {
        let changed = self.interest.subscribe(client, filter);
        self.sessions_changed(changed, now);
    }

    pub fn unsubscribe(&mut self, client: &str, filter: &str, now: Instant) {
        let changed = self.interest.unsubscribe(client, filter);
        self.sessions_changed(changed, now);
    }

    pub fn session(&mut self, client: &str, event: SessionEvent, now: Instant) {
        let changed = self.interest.session(client, event);
        self.sessions_changed(changed, now);
    }

    /// A message from the network: true when it is to be published into the broker (a subscription
    /// wants it, or it is retained: kept for those who subscribe later). One a returning
    /// subscription may want is held too.
    pub fn deliver(&mut self, m: &Message) -> bool {
        let wanted = m.retain || self.interest.wants(&m.topic);
        let may_come_back = self.returning.waiting() && self.interest.may_want(&m.topic);
        self.returning.delivered(m, may_come_back, wanted);
        wanted
    }

    /// The answer to a DHT call of our profile's write.
    pub fn profile_answer(&mut self, result: Result<DhtAnswer, String>, now: Instant) {
        let effect = match self.profile.answer(result, now) {
            Step::Call(call) => LocalEffect::Dht(call),
            Step::Written(filters) => {
                LocalEffect::Log(Level::Info, format!("profile interest is now {filters:?}"))
            }
            Step::Failed(line) => LocalEffect::Log(Level::Warning, line),
            Step::Ignored => return,
        };
        self.effects.push_back(effect);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.profile.handle_timeout(now) {
            let filters = self.interest.filters();
            self.effects
                .push_back(LocalEffect::ProfileWrite(filters.clone()));
            let call = self.profile.begin(filters);
            self.effects.push_back(LocalEffect::Dht(call));
        }
        if let Some(dropped) = self.returning.handle_timeout(now) {
            if self.interest.forget_returning() {
                self.profile.changed(now);
            }
            if dropped > 0 {
                self.effects.push_back(LocalEffect::Log(Level::Notice, format!("{dropped} messages from the network dropped: no client subscribed again to what they match within {}s of the restart", RESUBSCRIBE_GRACE.as_secs())));
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.profile.poll_timeout(), self.returning.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll_effect(&mut self) -> Option<LocalEffect> {
        self.effects.pop_front()
    }

    /// The sessions (kept in the state file) changed; `filters_changed`: so did the interest.
    fn sessions_changed(&mut self, filters_changed: bool, now: Instant) {
        self.effects.push_back(LocalEffect::StateChanged);
        if filters_changed {
            self.profile.changed(now);
        }
        let returned = self.interest.take_returned();
        for m in self.returning.returned(&returned) {
            self.effects.push_back(LocalEffect::Inject(m));
        }
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
