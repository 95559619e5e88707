//! Which topics this broker wants from the network: the subscriptions of its clients' sessions (learned
//! from the broker's events) plus the configured static filters. Published in our Twister profile so
//! senders of private forwards know whom to send to, and used to keep only wanted messages on the way in.
//!
//! The plugin's view must equal the broker's, so subscriptions are kept per client session with its
//! kind: a clean session ends with its connection, a persistent one survives disconnects and is resumed
//! (or discarded) by the next connection with the same client id. Each subscription is kept in the form
//! the client used: `x/#`, `$share/g/x/#` and `$share/h/x/#` are three subscriptions of one filter, and
//! the filter stays wanted until the last of them goes.

use crate::topic;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the broker told about a client's connection or session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// A connection of this client is active. `new_connection`: seen as it connected (2.1's CONNECT
    /// event); otherwise seen later on a live connection (2.0's SUBSCRIBE ACL check).
    Connected {
        persistent: bool,
        new_connection: bool,
    },
    /// The connection ended and the broker keeps the session.
    Offline,
    /// The session ended for good.
    Ended,
    /// A new connection with this client id took the session over: it resumes a persistent session or
    /// discards it, which its own `Connected` (or, on 2.0, its first subscription) tells.
    TakenOver,
}

/// Mosquitto 2.1's DISCONNECT reason when a new connection takes the session over.
pub const SESSION_TAKEN_OVER_V21: i32 = 142;

/// A session event as the broker delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerSessionEvent {
    /// 2.1 only.
    Connect,
    /// 2.1 only: a persistent session's connection ended.
    ClientOffline,
    /// 2.0: every connection end (reason -1). 2.1: a session ended, or was taken over.
    Disconnect { reason: i32 },
}

impl SessionEvent {
    /// What a broker event means; `clean`: the client's clean flag as the event shows it.
    pub fn from_broker(seen: BrokerSessionEvent, v21: bool, clean: bool) -> SessionEvent {
        match seen {
            BrokerSessionEvent::Connect => SessionEvent::Connected {
                persistent: !clean,
                new_connection: true,
            },
            BrokerSessionEvent::ClientOffline => SessionEvent::Offline,
            BrokerSessionEvent::Disconnect { reason } if v21 => {
                if reason == SESSION_TAKEN_OVER_V21 {
                    SessionEvent::TakenOver
                } else {
                    SessionEvent::Ended
                }
            }
            // 2.0 marks a connection clean before disconnecting it for a new one with its id: "clean"
            // is the end of a clean session or a takeover (`session` tells them apart by the kind
            // it saw the session subscribe with).
            BrokerSessionEvent::Disconnect { .. } if clean => SessionEvent::TakenOver,
            BrokerSessionEvent::Disconnect { .. } => SessionEvent::Offline,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Session {
    persistent: bool,
    /// Subscriptions as the client made them (shared or not, with their group).
    subs: BTreeSet<String>,
}

/// Which of the last run's persistent sessions the broker restored from its own persistence file.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoredSessions {
    /// None: no `persistence true`.
    None,
    /// All of them (2.0 cannot ask which).
    All,
    /// These client ids (2.1's `mosquitto_client` tells).
    Only(std::collections::HashSet<String>),
}

impl RestoredSessions {
    pub fn holds(&self, client: &str) -> bool {
        match self {
            RestoredSessions::None => false,
            RestoredSessions::All => true,
            RestoredSessions::Only(ids) => ids.contains(client),
        }
    }
}

/// One client's session as kept in the state file.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSession {
    pub client: String,
    pub persistent: bool,
    pub subs: Vec<String>,
}

#[derive(Default)]
pub struct Interest {
    sessions: HashMap<String, Session>,
    /// Filter -> number of subscriptions holding it (static filters are not counted here).
    counts: BTreeMap<String, usize>,
    fixed: Vec<String>,
    /// After a restart: filters of the previous run's sessions the broker does not hold now, which
    /// come back if their clients subscribe again. Wanted "maybe" until `forget_returning`.
    returning: BTreeSet<String>,
    /// Filters of `returning` a subscription brought back since `take_returned`.
    returned: Vec<String>,
}

impl Interest {
    pub fn new(fixed: &[String]) -> Self {
        Interest {
            fixed: fixed.to_vec(),
            ..Default::default()
        }
    }

    /// Starts from the sessions a previous run saved. `kept(client)`: the broker restored that client's
    /// session from its own persistence file, so its subscriptions are live now (neither 2.0 nor 2.1
    /// tells a plugin about them). `certain`: the broker restored them as they were at our last save (a
    /// clean stop); after a crash it may have lost what changed since its last autosave, so they are
    /// also waited for as for everything else of the last run: see `returning`.
    pub fn restore(&mut self, saved: &[SavedSession], kept: &dyn Fn(&str) -> bool, certain: bool) {
        let mut maybe_back = BTreeSet::new();
        for s in saved {
            let live = s.persistent && kept(&s.client);
            for raw in s.subs.iter() {
                let Some(f) = valid_subscription(raw) else {
                    continue;
                };
                if live {
                    self.add(&s.client, raw, true);
                }
                if !live || !certain {
                    maybe_back.insert(f.to_string());
                }
            }
        }
        if certain {
            maybe_back.retain(|f| !self.counts.contains_key(f));
        }
        self.returning = maybe_back;
        self.returned.clear();
    }

    /// The filters that may still come back after a restart are no longer waited for. True when the
    /// set of filters changed.
    pub fn forget_returning(&mut self) -> bool {
        let before = self.filters();
        self.returning.clear();
        self.returned.clear();
        before != self.filters()
    }

    pub fn has_returning(&self) -> bool {
        !self.returning.is_empty()
    }

    /// The filters of the last run that clients subscribed to again since the last call.
    pub fn take_returned(&mut self) -> Vec<String> {
        std::mem::take(&mut self.returned)
    }

    /// Returns true when the set of filters changed.
    pub fn subscribe(&mut self, client: &str, raw_filter: &str) -> bool {
        if valid_subscription(raw_filter).is_none() {
            return false;
        }
        let before = self.filters();
        // A subscription on a connection we never saw connect: assume it persists, so that its interest
        // is not dropped early (a clean one's end is still seen: `Ended`).
        self.add(client, raw_filter, true);
        before != self.filters()
    }

    fn add(&mut self, client: &str, raw: &str, persistent_if_new: bool) {
        let Some(filter) = valid_subscription(raw) else {
            return;
        };
        let session = self
            .sessions
            .entry(client.to_string())
            .or_insert_with(|| Session {
                persistent: persistent_if_new,
                subs: BTreeSet::new(),
            });
        if session.subs.insert(raw.to_string()) {
            *self.counts.entry(filter.to_string()).or_insert(0) += 1;
        }
        // Subscribing again to what a restored session had: its session may have been lost.
        if self.returning.remove(filter) {
            self.returned.push(filter.to_string());
        }
    }

    pub fn unsubscribe(&mut self, client: &str, raw_filter: &str) -> bool {
        let removed = self
            .sessions
            .get_mut(client)
            .is_some_and(|s| s.subs.remove(raw_filter));
        let Some(filter) = topic::strip_shared(raw_filter) else {
            return false;
        };
        removed && self.release(filter)
    }

    /// Applies what the broker told about a client's session. True when the set of filters changed.
    pub fn session(&mut self, client: &str, event: SessionEvent) -> bool {
        let Some(known) = self.sessions.get_mut(client) else {
            if let SessionEvent::Connected { persistent, .. } = event {
                self.sessions.insert(
                    client.to_string(),
                    Session {
                        persistent,
                        subs: BTreeSet::new(),
                    },
                );
            }
            return false;
        };
        let ends = match event {
            SessionEvent::Connected {
                persistent,
                new_connection,
            } => {
                // A clean start always discards the old session; a persistent connection resumes only a
                // persistent session. Seen on a live connection (2.0), a change of kind means a new
                // connection replaced the session we knew.
                let discarded = if new_connection {
                    !persistent || !known.persistent
                } else {
                    persistent != known.persistent
                };
                known.persistent = persistent;
                discarded
            }
            SessionEvent::Offline => {
                known.persistent = true;
                false
            }
            SessionEvent::Ended => true,
            // Only a persistent session can be resumed by the connection that took it over.
            SessionEvent::TakenOver => !known.persistent,
        };
        if !ends {
            return false;
        }
        let subs = std::mem::take(&mut known.subs);
        if matches!(event, SessionEvent::Ended | SessionEvent::TakenOver) {
            self.sessions.remove(client);
        }
        let mut changed = false;
        for raw in subs {
            if let Some(f) = topic::strip_shared(&raw) {
                changed |= self.release(f);
            }
        }
        changed
    }

    fn release(&mut self, filter: &str) -> bool {
        match self.counts.get_mut(filter) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(filter);
                !self.fixed.iter().any(|f| f == filter) && !self.returning.contains(filter)
            }
            None => false,
        }
    }

    /// Sorted, without duplicates: what goes into the profile's `mqtt_topics` (what may come back
    /// after a restart included, so senders keep sending while clients reconnect).
    pub fn filters(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .counts
            .keys()
            .chain(self.fixed.iter())
            .chain(self.returning.iter())
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// A subscription the broker holds (or a static filter) matches.
    pub fn wants(&self, topic_name: &str) -> bool {
        self.fixed
            .iter()
            .chain(self.counts.keys())
            .any(|f| topic::matches(f, topic_name))
    }

    /// One of the previous run's subscriptions that may come back matches (wanted now or not).
    pub fn may_want(&self, topic_name: &str) -> bool {
        self.returning.iter().any(|f| topic::matches(f, topic_name))
    }

    /// The sessions with subscriptions, for the state file.
    pub fn saved(&self) -> Vec<SavedSession> {
        let mut out: Vec<SavedSession> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.subs.is_empty())
            .map(|(c, s)| SavedSession {
                client: c.clone(),
                persistent: s.persistent,
                subs: s.subs.iter().cloned().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.client.cmp(&b.client));
        out
    }
}

/// The filter a subscription matches, when the subscription is well formed.
fn valid_subscription(raw: &str) -> Option<&str> {
    topic::strip_shared(raw).filter(|f| topic::is_valid_filter(f))
}

/// Whether anything in `filters` (someone else's published interest) matches `topic_name`.
pub fn any_matches(filters: &[String], topic_name: &str) -> bool {
    filters.iter().any(|f| topic::matches(f, topic_name))
}

#[cfg(test)]
#[path = "interest_tests.rs"]
mod tests;
