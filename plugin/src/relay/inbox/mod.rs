//! What followed users posted, in: read positions (cursors), the plan of calls that reads what is new
//! (one `getlasthave`, then per grown user its DMs through `directs::Reader` and its posts in
//! windows), decoding, skipping promoted posts, other users' pieces and duplicates, and joining
//! fragments (`crate::reassembly`). Everything read is untrusted: malformed input is counted and
//! warned about, rate-limited.
//!
//! No I/O, no clock: requests go out as `InboxEffect`s with an id, replies come back typed, time comes
//! with each event. At most one request is outstanding. A piece is marked read before it is handed on
//! (`Deliver`), so one that crashes the driver is not read again after the restart.

pub mod directs;
#[cfg(test)]
mod tests;

use super::{Level, RequestId};
use crate::dedup::{Dedup, Sight};
use crate::drops::Reason;
use crate::ratelimit::{held_back_note, LogLimiter};
use crate::reassembly::{Limits, Reassembler};
use crate::state::Cursor;
use crate::twister::{DmPage, DmWindow, Post, TwisterError};
use crate::wire::{self, Message};
use directs::Reader;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Posts asked for per `getposts` call.
pub const FETCH_WINDOW: i64 = 100;

/// What the inbox asks its driver to do, or tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum InboxEffect {
    /// `getlasthave` of every user we follow (ourselves included).
    LastHave {
        id: RequestId,
    },
    /// One `getdirectmsgs` page (`directs::PAGE` entries at most) of the conversation `window` names.
    DirectMsgs {
        id: RequestId,
        window: DmWindow,
    },
    /// `getposts` of `from` numbered in `(since, upto]`, `count` asked for.
    Posts {
        id: RequestId,
        from: String,
        since: i64,
        upto: i64,
        count: i64,
    },
    /// Our own last post number, as twisterd holds it (for the outbox).
    OwnLast(i64),
    /// A whole message from `from` (in its post or DM `k`): the driver publishes it if wanted.
    Deliver {
        from: String,
        k: i64,
        what: &'static str,
        message: Message,
        /// Its id at the sender (`None` from writers older than ids): acknowledged once handed on.
        id: Option<crate::wire::MessageId>,
    },
    Log(Level, String),
    Dropped(Reason, String),
    /// A read position moved: the state file is due for a write.
    StateChanged,
    /// A message of `from` whose id was handed on before (`crate::dedup`): dropped, acknowledged again.
    Duplicate {
        from: String,
        id: crate::wire::MessageId,
    },
}

/// A twisterd reply to one of the inbox's requests.
#[derive(Debug, Clone, PartialEq)]
pub enum InboxReply {
    LastHave(Result<BTreeMap<String, i64>, TwisterError>),
    DirectMsgs(Result<DmPage, TwisterError>),
    Posts(Result<Vec<Post>, TwisterError>),
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
pub struct Counters {
    pub malformed: u64,
    pub duplicates: u64,
    /// Messages dropped because their id was handed on before (`crate::dedup`).
    pub duplicate_ids: u64,
}

/// One followed user being read.
#[derive(Debug)]
struct Fetch {
    from: String,
    cursor: Cursor,
    last: i64,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Dms(Reader),
    Posts { since: i64 },
}

/// The next call of a user's read.
enum Next {
    Dms(DmWindow),
    Posts(i64, i64),
}

#[derive(Debug)]
enum Awaiting {
    LastHave,
    Fetch,
}

pub struct Inbox {
    user: String,
    follow: Vec<String>,
    cursors: BTreeMap<String, Cursor>,
    reassembly: Reassembler,
    /// Warnings about what followed users sent.
    input_log: LogLimiter,
    /// Users whose last number grew, with it, waiting to be read.
    plan: VecDeque<(String, i64)>,
    current: Option<Fetch>,
    awaiting: Option<(RequestId, Awaiting)>,
    last_id: RequestId,
    effects: VecDeque<InboxEffect>,
    pub counters: Counters,
    /// Message ids handed on, per sender (`crate::dedup`), kept in the state file with the cursors.
    seen: Dedup,
    /// Each followed user's last post number in the last `getlasthave` answer.
    last_listed: BTreeMap<String, i64>,
}

impl Inbox {
    pub fn new(
        user: &str,
        follow: &[String],
        cursors: BTreeMap<String, Cursor>,
        counters: Counters,
    ) -> Self {
        Inbox {
            user: user.to_string(),
            follow: follow.to_vec(),
            cursors,
            reassembly: Reassembler::new(Limits::default()),
            input_log: LogLimiter::new(20, Duration::from_secs(10)),
            plan: VecDeque::new(),
            current: None,
            awaiting: None,
            last_id: 0,
            effects: VecDeque::new(),
            counters,
            seen: Dedup::default(),
            last_listed: BTreeMap::new(),
        }
    }

    /// The message ids handed on before (from the state file).
    /// (Of the users followed now: an unfollowed sender's ids are not checked again.)
    pub fn with_seen(mut self, mut seen: Dedup) -> Self {
        seen.retain_senders(|s| self.follow.iter().any(|f| f == s));
        self.seen = seen;
        self
    }

    pub fn seen(&self) -> &Dedup {
        &self.seen
    }

    /// `from`'s last post number twisterd listed (None: not asked yet this run).
    pub fn last_listed(&self, from: &str) -> Option<i64> {
        self.last_listed.get(from).copied()
    }

    /// True when message `id` of `from` was handed on (exactly: a forgotten epoch is not "seen").
    pub fn handed_on(&self, from: &str, id: crate::wire::MessageId) -> bool {
        self.seen
            .ranges(from, id.epoch)
            .is_some_and(|r| r.contains(id.seq))
    }

    /// Message `id` of `from` reached the broker another way (a retained value from the DHT): its
    /// live copy is a duplicate.
    pub fn handed_on_elsewhere(&mut self, from: &str, id: crate::wire::MessageId) {
        if self.seen.check(from, Some(id)) == Sight::First {
            self.effects.push_back(InboxEffect::StateChanged);
        }
    }

    /// `id` of `from` was injected (the injection log says so): never handed on again.
    pub fn mark_seen(&mut self, from: &str, id: crate::wire::MessageId) {
        self.seen.check(from, Some(id));
    }

    pub fn cursors(&self) -> &BTreeMap<String, Cursor> {
        &self.cursors
    }

    /// At start-up: a followed user without a read position starts at its newest post (`last`).
    pub fn start_at(&mut self, user: &str, last: i64) {
        if !self.cursors.contains_key(user) {
            self.cursors.insert(user.to_string(), Cursor::at(last));
            self.effects.push_back(InboxEffect::StateChanged);
        }
    }

    pub fn poll_effect(&mut self) -> Option<InboxEffect> {
        self.effects.pop_front()
    }

    /// The poll interval came: ask what is new (unless a read is still going on).
    pub fn poll(&mut self) {
        if self.awaiting.is_none() && self.current.is_none() && self.plan.is_empty() {
            let id = self.request(Awaiting::LastHave);
            self.effects.push_back(InboxEffect::LastHave { id });
        }
    }

    /// A message the driver found malformed (a topic the network may not inject): counted, and
    /// warned about with the inbox's other input warnings (one rate limit for all of them).
    pub fn malformed(&mut self, warning: String, now: Instant) {
        self.counters.malformed += 1;
        self.input_warning(warning, now);
    }

    pub fn handle_reply(&mut self, id: RequestId, reply: InboxReply, now: Instant) {
        let Some((expected, awaiting)) = self.awaiting.take() else {
            return;
        };
        if expected != id {
            self.awaiting = Some((expected, awaiting));
            return;
        }
        match (awaiting, reply) {
            (Awaiting::LastHave, InboxReply::LastHave(Ok(map))) => self.lasthave(&map),
            (Awaiting::LastHave, _) => {}
            (Awaiting::Fetch, reply) => self.fetched(reply, now),
        }
        self.next_request(now);
    }

    // ----- decisions -----

    fn request(&mut self, awaiting: Awaiting) -> RequestId {
        self.last_id += 1;
        self.awaiting = Some((self.last_id, awaiting));
        self.last_id
    }

    fn lasthave(&mut self, map: &BTreeMap<String, i64>) {
        if let Some(&own) = map.get(&self.user) {
            self.effects.push_back(InboxEffect::OwnLast(own));
        }
        for (u, &last) in map {
            if !self.follow.contains(u) {
                continue;
            }
            self.last_listed.insert(u.clone(), last);
            // Users followed at start-up got a cursor at their newest post then. One seen only now
            // became followable after we started (registered later): all of its posts are new to us.
            let cursor = self
                .cursors
                .entry(u.clone())
                .or_insert_with(|| Cursor::at(-1));
            if last > cursor.k {
                self.plan.push_back((u.clone(), last));
            }
        }
    }

    /// Starts reading the next user of the plan, or asks for the next page of the current one.
    fn next_request(&mut self, now: Instant) {
        if self.awaiting.is_some() {
            return;
        }
        loop {
            if self.current.is_none() {
                let Some((from, last)) = self.plan.pop_front() else {
                    return;
                };
                let cursor = self
                    .cursors
                    .get(&from)
                    .cloned()
                    .unwrap_or_else(|| Cursor::at(-1));
                // DMs first, judged against the cursor before it moves; passed on in post-number order.
                let reader = Reader::new(&from, cursor.dm_id, cursor.dm_time);
                self.current = Some(Fetch {
                    from,
                    cursor,
                    last,
                    stage: Stage::Dms(reader),
                });
            }
            let Some(fetch) = &mut self.current else {
                return;
            };
            let next = match &fetch.stage {
                Stage::Dms(reader) => reader.next_window().map(Next::Dms),
                Stage::Posts { since } if *since < fetch.last => {
                    let upto = since.saturating_add(FETCH_WINDOW).min(fetch.last);
                    Some(Next::Posts(*since, upto))
                }
                Stage::Posts { .. } => None,
            };
            match next {
                Some(Next::Dms(window)) => {
                    let id = self.request(Awaiting::Fetch);
                    self.effects
                        .push_back(InboxEffect::DirectMsgs { id, window });
                    return;
                }
                Some(Next::Posts(since, upto)) => {
                    let from = fetch.from.clone();
                    // One slot more than the window can hold: twisterd may put its promoted post first.
                    let count = upto - since + 1;
                    let id = self.request(Awaiting::Fetch);
                    self.effects.push_back(InboxEffect::Posts {
                        id,
                        from,
                        since,
                        upto,
                        count,
                    });
                    return;
                }
                None => self.stage_done(now),
            }
        }
    }

    /// The DMs are all read (deliver them, then the posts), or the posts are.
    fn stage_done(&mut self, now: Instant) {
        let Some(mut fetch) = self.current.take() else {
            return;
        };
        match fetch.stage {
            Stage::Dms(reader) => {
                fetch.cursor.dm_id = reader.max_id;
                fetch.cursor.dm_time = reader.max_time;
                let from = fetch.from.clone();
                for dm in reader.in_post_order() {
                    if !fetch.cursor.first_sight(dm.k) {
                        self.counters.duplicates += 1;
                        continue;
                    }
                    // Marked read before it is read: a piece that crashes the worker is not read again.
                    self.keep_cursor(&from, &fetch.cursor);
                    self.received(&from, dm.k, "DM", &dm.text, now);
                }
                fetch.stage = Stage::Posts {
                    since: fetch.cursor.k,
                };
                self.current = Some(fetch);
            }
            Stage::Posts { .. } => self.keep_cursor(&fetch.from, &fetch.cursor),
        }
    }

    fn fetched(&mut self, reply: InboxReply, now: Instant) {
        let Some(mut fetch) = self.current.take() else {
            return;
        };
        match (&mut fetch.stage, reply) {
            (Stage::Dms(reader), InboxReply::DirectMsgs(Ok(answer))) => {
                reader.take(&answer);
                self.current = Some(fetch);
            }
            // This user's DMs cannot be read now: nothing of it moves, the next poll tries again.
            (Stage::Dms(_), _) => {}
            (Stage::Posts { since }, InboxReply::Posts(Ok(mut posts))) => {
                let upto = since.saturating_add(FETCH_WINDOW).min(fetch.last);
                posts.sort_by_key(|p| p.k);
                let from = fetch.from.clone();
                for p in posts {
                    // twisterd's promoted post, another user's, or a DM (read above).
                    if p.promoted || p.author != from || p.is_dm {
                        continue;
                    }
                    if !fetch.cursor.first_sight(p.k) {
                        self.counters.duplicates += 1;
                        continue;
                    }
                    self.keep_cursor(&from, &fetch.cursor);
                    self.received(&from, p.k, "post", &p.text, now);
                }
                *since = upto;
                fetch.cursor.advance(upto);
                self.current = Some(fetch);
            }
            // Keeps what was read of this user; the next poll goes on from there.
            (Stage::Posts { .. }, _) => self.keep_cursor(&fetch.from, &fetch.cursor),
        }
    }

    fn keep_cursor(&mut self, from: &str, cursor: &Cursor) {
        if self.cursors.get(from) != Some(cursor) {
            self.cursors.insert(from.to_string(), cursor.clone());
            self.effects.push_back(InboxEffect::StateChanged);
        }
    }

    /// Decodes one post or DM and hands on its whole messages.
    fn received(&mut self, from: &str, k: i64, what: &'static str, text: &str, now: Instant) {
        let items = match wire::decode_items(text) {
            Ok(items) => items,
            Err(e) => {
                self.counters.malformed += 1;
                let malformed = self.counters.malformed;
                return self.input_warning(
                    format!("skipped {what} {k} of {from}: {e} (malformed so far: {malformed})"),
                    now,
                );
            }
        };
        for it in items {
            // A fragment carries its whole message's id.
            let id = it.id;
            let Some(message) = self.join(from, k, what, it, now) else {
                continue;
            };
            match self.seen.check(from, id) {
                Sight::First => self.effects.push_back(InboxEffect::StateChanged),
                Sight::Unknown => {}
                Sight::Again | Sight::Forgotten => {
                    // A replay of the sender's spool, a retransmission, or a post read again.
                    self.counters.duplicate_ids += 1;
                    if let Some(id) = id {
                        self.effects.push_back(InboxEffect::Duplicate {
                            from: from.to_string(),
                            id,
                        });
                    }
                    continue;
                }
            }
            self.effects.push_back(InboxEffect::Deliver {
                from: from.to_string(),
                k,
                what,
                message,
                id,
            });
        }
    }

    /// A whole message as it came, or the message a fragment completes.
    fn join(
        &mut self,
        from: &str,
        k: i64,
        what: &str,
        it: wire::Item,
        now: Instant,
    ) -> Option<Message> {
        let Some(f) = it.fragment else {
            return Some(it.message);
        };
        let before = self.reassembly.stats;
        let joined = self.reassembly.add(from, f, it.message, now);
        let after = self.reassembly.stats;
        let dropped = (after.evicted.wrapping_sub(before.evicted))
            .wrapping_add(after.expired.wrapping_sub(before.expired));
        for _ in 0..dropped {
            self.effects.push_back(InboxEffect::Dropped(
                Reason::Unfinished,
                "an unfinished message from the network: no new fragment for 10 minutes, or more unfinished than one sender or all together may leave".into(),
            ));
        }
        match joined {
            Ok(whole) => whole,
            Err(e) => {
                self.counters.malformed += 1;
                self.input_warning(
                    format!("skipped a fragment in {what} {k} of {from}: {e}"),
                    now,
                );
                None
            }
        }
    }

    /// A warning about what a followed user sent: rate-limited, so that no peer can flood the log.
    fn input_warning(&mut self, msg: String, now: Instant) {
        if let Some(held_back) = self.input_log.allow(now) {
            self.effects.push_back(InboxEffect::Log(
                Level::Warning,
                format!("{msg}{}", held_back_note(held_back)),
            ));
        }
    }
}
