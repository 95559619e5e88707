//! Private forwards: a message matching `plugin_opt_private` rules goes, as a DM, to each listed
//! recipient whose published interest (its profile's `mqtt_topics`) matches it. The recipients'
//! interest is read at the start and every `plugin_opt_interest_refresh_ms`; until every recipient
//! answered once, and while no recipient wants a message, it is held (`crate::relay::hold::private`)
//! and the interest read again at once, then every second, until one does or the hold ends.
//! No I/O, no clock: reads go out as effects (one `dhtget` per recipient, never two at once for one:
//! a read asked for meanwhile follows the one going on), answers and "now" come in.

use super::profile::{profile_value, topics_of};
use crate::bus::{DhtAnswer, DhtCall, DhtJob, DhtPurpose, Outgoing};
use crate::config::PrivateRule;
use crate::drops::Reason;
use crate::interest::any_matches;
use crate::relay::hold::private::{PrivateHold, GRACE};
use crate::relay::Level;
use crate::route::RuleSet;
use crate::wire::Message;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum PrivateEffect {
    /// Read a recipient's profile (the answer goes to `answer`).
    ReadInterest(DhtJob),
    /// Queue `message` as a DM to each of `to`.
    Send {
        message: Message,
        id: Option<crate::wire::MessageId>,
        to: Vec<String>,
    },
    Dropped(Reason, String),
    /// A held message's wait ended (dropped above): its spool record is done with
    /// (`crate::relay::release`).
    Expired(Option<crate::wire::MessageId>),
    Log(Level, String),
}

/// Where a private forward goes now.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// To these recipients.
    Send(Vec<String>),
    /// To nobody yet: hold it (`PrivateForwards::hold`) if the queue has room.
    Hold,
}

/// The recipients of `topic` listed by the rules it matched (`matched`, decided by the router) whose
/// published interest matches it.
pub fn interested_recipients(
    rules: &[PrivateRule],
    matched: &RuleSet,
    remote: &BTreeMap<String, Vec<String>>,
    topic_name: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for rule in matched.iter().filter_map(|i| rules.get(i)) {
        for u in &rule.users {
            let interested = remote.get(u).is_some_and(|f| any_matches(f, topic_name));
            if interested && !out.contains(u) {
                out.push(u.clone());
            }
        }
    }
    out
}

pub struct PrivateForwards {
    rules: Vec<PrivateRule>,
    /// Every listed recipient, sorted, once.
    users: Vec<String>,
    /// Each recipient's published interest (absent: none published).
    remote: BTreeMap<String, Vec<String>>,
    answered: BTreeSet<String>,
    /// Every recipient answered once: routing decides on what they want.
    known: bool,
    refresh_every: Duration,
    /// The next read of every recipient's interest (from the start on).
    next_refresh: Option<Instant>,
    held: PrivateHold,
    /// Recipients whose profile is being read, and those to read again after that.
    reading: BTreeSet<String>,
    read_again: BTreeSet<String>,
    effects: VecDeque<PrivateEffect>,
}

impl PrivateForwards {
    pub fn new(rules: &[PrivateRule], refresh_every: Duration) -> Self {
        let mut users: Vec<String> = rules.iter().flat_map(|r| r.users.iter().cloned()).collect();
        users.sort();
        users.dedup();
        PrivateForwards {
            rules: rules.to_vec(),
            users,
            remote: BTreeMap::new(),
            answered: BTreeSet::new(),
            known: false,
            refresh_every,
            next_refresh: None,
            held: PrivateHold::default(),
            reading: BTreeSet::new(),
            read_again: BTreeSet::new(),
            effects: VecDeque::new(),
        }
    }

    /// The relay started: the recipients' interest is read at once.
    pub fn start(&mut self, now: Instant) {
        self.next_refresh = Some(now);
        if self.users.is_empty() {
            self.known = true;
        }
    }

    /// Where a local message that matched private rules goes now.
    pub fn route(&self, out: &Outgoing) -> Routed {
        if !self.known {
            return Routed::Hold;
        }
        let to = self.recipients(out);
        if to.is_empty() {
            Routed::Hold
        } else {
            Routed::Send(to)
        }
    }

    /// Holds a message `route` could not send (room was made for it: it counts as queued); the
    /// recipients' interest is read again at once (at most every second).
    pub fn hold(&mut self, out: Outgoing, now: Instant) {
        if self.held.push(now, out) {
            self.read_all();
        }
    }

    /// A message kept across a restart without its route: held again, as from `now` (the start-up
    /// reads the interest anyway: no read of its own).
    pub fn restore(&mut self, out: Outgoing, now: Instant) {
        let _read_due = self.held.push(now, out);
    }

    /// The answer to the read of `user`'s profile.
    pub fn answer(&mut self, user: String, result: Result<DhtAnswer, String>, now: Instant) {
        self.reading.remove(&user);
        if self.read_again.remove(&user) {
            self.read(&user);
        }
        match result {
            Ok(DhtAnswer::Profile(entry)) => {
                let filters = topics_of(&profile_value(&entry.value));
                self.interest_read(user, filters, now);
            }
            Ok(DhtAnswer::Stored) => {}
            Err(e) => self.effects.push_back(PrivateEffect::Log(
                Level::Warning,
                format!("reading the interest of {user}: {e}"),
            )),
        }
    }

    /// A recipient's interest was read (`None`: it publishes none).
    fn interest_read(&mut self, user: String, filters: Option<Vec<String>>, now: Instant) {
        let first = self.answered.insert(user.clone());
        if first || self.remote.get(&user) != filters.as_ref() {
            let what = match &filters {
                Some(f) => format!("{f:?}"),
                None => "none published".into(),
            };
            self.effects.push_back(PrivateEffect::Log(
                Level::Info,
                format!("interest of recipient {user}: {what}"),
            ));
        }
        match filters {
            Some(f) => self.remote.insert(user, f),
            None => self.remote.remove(&user),
        };
        let now_known = !self.known && self.users.iter().all(|u| self.answered.contains(u));
        if now_known {
            self.known = true;
        }
        if self.known {
            self.route_held(now_known, now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_refresh.is_some_and(|t| now >= t) {
            // Always moved on: a deadline left in the past would make the driver spin.
            self.next_refresh = Some(now + self.refresh_every);
            self.read_all();
        }
        if !self.known {
            return;
        }
        for msg in self.held.expired(now) {
            let detail = format!(
                "a private message on {}: no listed recipient's published interest matched it within {:?}",
                msg.message.topic, GRACE
            );
            self.effects.push_back(PrivateEffect::Dropped(
                Reason::NoRecipientInterested,
                detail,
            ));
            self.effects.push_back(PrivateEffect::Expired(msg.id));
        }
        if self.held.reread_due(now) {
            self.read_all();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.next_deadline().filter(|_| self.known);
        [self.next_refresh, held].into_iter().flatten().min()
    }

    pub fn poll_effect(&mut self) -> Option<PrivateEffect> {
        self.effects.pop_front()
    }

    /// Messages held (they count in `plugin_opt_max_queue`).
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn held_messages(&self) -> impl Iterator<Item = &Outgoing> {
        self.held.messages()
    }

    /// The recipients of the private rules the message matched whose interest matches it.
    fn recipients(&self, out: &Outgoing) -> Vec<String> {
        interested_recipients(
            &self.rules,
            &out.route.private_rules,
            &self.remote,
            &out.message.topic,
        )
    }

    fn read_all(&mut self) {
        for user in self.users.clone() {
            self.read(&user);
        }
    }

    fn read(&mut self, user: &str) {
        if self.reading.contains(user) {
            self.read_again.insert(user.to_string());
            return;
        }
        self.reading.insert(user.to_string());
        self.effects.push_back(PrivateEffect::ReadInterest(DhtJob {
            purpose: DhtPurpose::InterestOf(user.to_string()),
            call: DhtCall::GetProfile {
                user: user.to_string(),
            },
        }));
    }

    /// Sends the held messages some recipient now wants; the others wait on (`restart`: their wait
    /// starts now, the interest having just become known).
    fn route_held(&mut self, restart: bool, now: Instant) {
        for (since, msg) in self.held.take_all() {
            let to = self.recipients(&msg);
            if to.is_empty() {
                self.held.keep(if restart { now } else { since }, msg);
                continue;
            }
            self.effects.push_back(PrivateEffect::Send {
                message: msg.message,
                id: msg.id,
                to,
            });
        }
    }
}

#[cfg(test)]
#[path = "private_tests.rs"]
mod tests;
