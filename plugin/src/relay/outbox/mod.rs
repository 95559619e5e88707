//! Routed local messages in, posts and DMs out. Owns the queues (typed messages, encoded once when
//! queued, each queue with its own count), the packing of a post up to Twister's exact size limit
//! (`twister_rules`' size model with worst-case header fields), our post number `k` and envelope
//! sequence, cutting a message too large for one post into fragments, the post budget (a refusal
//! waits for the chain height that can allow it) and posts whose outcome is unknown (settled before
//! their number is used again: `budget`).
//!
//! No I/O, no clock: every event brings `now`; requests go out as `Effect`s with an id and come back
//! as `Reply`s. At most one request is outstanding at a time.

mod budget;
mod conflate;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod forgotten_tests;
mod outcome;
mod paced;
mod pacing;
#[cfg(test)]
mod pacing_tests;
mod packing;
#[cfg(test)]
mod packing_tests;
#[cfg(test)]
mod tests;

pub use budget::Learnt;
pub use conflate::Conflation;
pub use packing::{Payload, Queued};

use super::release::{Held, Ledger, RecordId};
use super::timers::{Timer, Timers};
use super::{Effect, Level, Reply, RequestId};
use crate::config::WireFormat;
use crate::drops::Reason;
use crate::state::{Destination, Unsent};
use crate::twister::{Outcome, TwisterError};
use crate::wire::{self, Message};
use budget::{verify, Budget, InFlight, Verified};
use pacing::BlockClock;
use packing::POC_BRIDGE_CHARS;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use twister_rules::errors::Refusal;

/// Posts sent in one go before the driver looks at its inbox again.
pub const POSTS_PER_FLUSH: usize = 32;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the outbox needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub user: String,
    pub wire_format: WireFormat,
    pub batch_delay: Duration,
    pub max_message_bytes: usize,
    /// How long a confirmed post's messages are kept after twisterd confirmed it, to be posted again if
    /// twisterd forgets it (`crate::relay::release`).
    pub release_hold: Duration,
    /// Message ids number spool records (the spool is on): the ledger tracks them by `seq`.
    pub spool_records: bool,
    /// Posts kept back for items that may use the reserve (`push_reserved`).
    pub reserve: i64,
    /// Per forward rule, what happens to QoS 0 values while posts are scarce.
    pub conflation: Conflation,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Queued>,
    /// Since when its head has waited (reset when a post takes items).
    since: Option<Instant>,
    /// Encoded bytes of the items.
    bytes: usize,
    /// Holds at least a full post (looked at only while posts are scarce; reset by a post).
    full: bool,
    /// `bytes` when `full` was last looked at.
    checked_bytes: usize,
    /// Its messages waited for a block: they go as soon as one allows a post, full or not.
    waited_for_block: bool,
    /// Items from the head up to the last one that may use the reserve.
    reserved_upto: usize,
}

/// Counts of what the outbox did, carried over a restart of the relay.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
pub struct Counters {
    pub posts: u64,
    pub dms: u64,
    pub fragmented: u64,
    /// Posts sent without an answer read (timeout, connection lost).
    pub unknown_outcomes: u64,
    /// Times posting waited for a block (out of post budget).
    pub budget_waits: u64,
    /// Messages carried by the posts and DMs stored.
    pub messages_posted: u64,
    /// QoS 0 values replaced by newer ones while posts were scarce.
    pub conflated: u64,
}

/// The request outstanding and what its reply decides.
#[derive(Debug)]
enum Awaiting {
    Post {
        flight: InFlight,
        resend: bool,
    },
    /// Our last post number, to settle `InFlight` (unknown outcome).
    Verify(InFlight),
    /// The height after a refusal for budget.
    RefusedAt {
        k: i64,
        refusal: Refusal,
        error: TwisterError,
    },
    /// The height while waiting for a block.
    Watch,
}

pub struct Outbox {
    settings: Settings,
    public: Queue,
    private: BTreeMap<String, Queue>,
    len: usize,
    next_k: i64,
    seq: u64,
    fragment_ids: u64,
    /// A post sent whose outcome is unknown: settled before its number is used again.
    pending: Option<InFlight>,
    budget: Budget,
    timers: Timers,
    backoff: Duration,
    /// Posts left in the current flush.
    burst: usize,
    awaiting: Option<(RequestId, Awaiting)>,
    last_id: RequestId,
    effects: VecDeque<Effect>,
    /// Posts answered as stored, held until released; which spool records are done
    /// (`crate::relay::release`).
    ledger: Ledger<Queued>,
    /// Ids of the messages in posts answered as stored, until the driver takes them (receipts).
    posted_ids: Vec<wire::MessageId>,
    pub counters: Counters,
    /// The measured block interval (pacing).
    clock: BlockClock,
    status: paced::Status,
    /// The current flush posts whatever is queued (the broker stops).
    forced: bool,
    /// When the chain height was last asked for while pacing.
    last_height_read: Option<Instant>,
}

impl Outbox {
    pub fn new(settings: Settings, next_k: i64, seq: u64, counters: Counters) -> Self {
        Outbox {
            public: Queue::default(),
            private: BTreeMap::new(),
            len: 0,
            next_k,
            seq,
            fragment_ids: 0,
            pending: None,
            budget: Budget::default(),
            timers: Timers::default(),
            backoff: FIRST_BACKOFF,
            burst: 0,
            awaiting: None,
            last_id: 0,
            effects: VecDeque::new(),
            ledger: Ledger::new(settings.release_hold, 0),
            settings,
            posted_ids: Vec::new(),
            counters,
            clock: BlockClock::default(),
            status: paced::Status::default(),
            forced: false,
            last_height_read: None,
        }
    }

    /// The spool record a message with id `id` copies (`None` without the spool).
    fn record(&self, id: Option<wire::MessageId>) -> Option<RecordId> {
        id.filter(|_| self.settings.spool_records).map(|i| i.seq)
    }

    /// The driver holds the spool record of message `id` open (while it routes it, or while the
    /// message waits for a private recipient): released only after a matching `let_go_record`.
    pub fn hold_record(&mut self, id: Option<wire::MessageId>) {
        if let Some(r) = self.record(id) {
            self.ledger.copy(r);
        }
    }

    /// The driver is done with the spool record of message `id` (see `hold_record`).
    pub fn let_go_record(&mut self, id: Option<wire::MessageId>) {
        if let Some(r) = self.record(id) {
            self.ledger.let_go(r);
        }
    }

    /// Receipts hook (`crate::relay::release`): the spool record of message `id` stays after its posts
    /// are released, until `receipts_done`.
    pub fn await_receipts(&mut self, id: Option<wire::MessageId>) {
        if let Some(r) = self.record(id) {
            self.ledger.await_receipts(r);
        }
    }

    /// Receipts hook: every receiver acknowledged message `id` (or was given up on).
    pub fn receipts_done(&mut self, id: Option<wire::MessageId>) {
        if let Some(r) = self.record(id) {
            self.ledger.receipts_done(r);
        }
    }

    /// The ids of the messages posts carried since the last call (answered as stored).
    pub fn take_posted(&mut self) -> Vec<wire::MessageId> {
        std::mem::take(&mut self.posted_ids)
    }

    /// Every spool record up to this one is released: the spool may mark it taken.
    pub fn records_taken(&self) -> RecordId {
        self.ledger.taken()
    }

    /// Posts answered and still held for reposting.
    pub fn held_posts(&self) -> usize {
        self.ledger.held_posts()
    }

    pub fn next_k(&self) -> i64 {
        self.next_k
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Messages queued (fragments count one each).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A post was sent whose outcome is not known yet.
    pub fn has_unknown_outcome(&self) -> bool {
        self.pending.is_some()
    }

    pub fn waiting_for_a_block(&self) -> bool {
        self.budget.waiting()
    }

    /// twisterd (or the state file) says our numbers are used up to `k - 1`.
    pub fn k_at_least(&mut self, k: i64) {
        self.next_k = self.next_k.max(k);
    }

    /// Encodes a message about to be queued; in the poc format, says when the 2014 bridge will lose it.
    pub fn prepare(&mut self, message: Message, id: Option<crate::wire::MessageId>) -> Queued {
        let out = Queued::new(message, self.settings.wire_format, id);
        let chars = out.encoded.chars().count();
        if self.settings.wire_format == WireFormat::Poc && chars > POC_BRIDGE_CHARS {
            if let Payload::Whole(m) = &out.payload {
                let detail = format!("a message on {} as a post of {chars} characters: twisterd splits it into msg + msg2 and the 2014 bridge reads only msg, so it is lost there (plugin_opt_wire_format poc)", m.topic);
                self.effects
                    .push_back(Effect::Dropped(Reason::SplitForThe2014Bridge, detail));
            }
        }
        out
    }

    /// Queues `item` for the public timeline (`to: None`) or a DM to `to`.
    pub fn push(&mut self, item: Queued, to: Option<String>, now: Instant) {
        self.hold_record(item.id);
        self.conflate(&item, &to);
        let q = self.queue(&to);
        q.bytes += item.encoded.len();
        q.items.push_back(item);
        q.since.get_or_insert(now);
        self.len += 1;
        self.check_full(&to);
    }

    fn queue(&mut self, to: &Option<String>) -> &mut Queue {
        match to {
            None => &mut self.public,
            Some(u) => self.private.entry(u.clone()).or_default(),
        }
    }

    /// Everything queued, as the state file keeps it.
    pub fn unsent(&self) -> Vec<Unsent> {
        let mut out: Vec<Unsent> = self
            .public
            .items
            .iter()
            .map(|o| Unsent {
                to: Destination::Public,
                item: o.saved(),
            })
            .collect();
        for (user, q) in &self.private {
            out.extend(q.items.iter().map(|o| Unsent {
                to: Destination::Direct(user.clone()),
                item: o.saved(),
            }));
        }
        out
    }

    // ----- the driver's calls -----

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When the outbox next needs `handle_timeout`; never before `now`.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.awaiting.is_some() {
            return None;
        }
        self.flush_due_at(now).map(|t| t.max(now))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.ledger.release_due(now);
        if self.awaiting.is_none()
            && self.burst == 0
            && self.flush_due_at(now).is_some_and(|t| now >= t)
        {
            self.burst = POSTS_PER_FLUSH;
            self.forced = false;
            self.next_request(now);
        }
        self.say_status(now);
    }

    /// Sends up to `posts` posts now, whatever the batch delay and backoff say (the broker stops).
    pub fn flush_now(&mut self, posts: usize, now: Instant) {
        if self.awaiting.is_some() {
            return;
        }
        self.timers.set(Timer::PostRetry, now);
        self.burst = posts;
        self.forced = true;
        self.next_request(now);
    }

    /// twisterd's last post number of ours, read while polling: settles a post of unknown outcome,
    /// and moves past numbers another writer used.
    pub fn own_last(&mut self, own: i64, now: Instant) {
        if self.awaiting.is_none() {
            if let Some(p) = self.pending.take_if(|p| own >= p.k) {
                self.stored_after_all(&p, now);
            }
        }
        if own >= self.next_k {
            self.log(Level::Warning, format!("twisterd holds our post {own} above our next number {}: another writer uses '{}'? moving on", self.next_k, self.settings.user));
            self.next_k = own + 1;
            self.effects.push_back(Effect::StateChanged);
        }
        let lost = self.ledger.own_last(own, now);
        if !lost.is_empty() {
            self.post_again(own, lost, now);
        }
    }

    /// Posts twisterd does not hold (it forgot them, or ignored them) go back to the head of their
    /// queues, after what is in flight there, to be posted under new numbers: a forgotten number is
    /// never used again (other nodes may hold the first post under it).
    fn post_again(&mut self, own: i64, lost: Vec<Held<Queued>>, now: Instant) {
        let ks: Vec<i64> = lost.iter().map(|h| h.k).collect();
        let copies: usize = lost.iter().map(|h| h.copies.len()).sum();
        self.log(Level::Warning, format!("twisterd's last post of ours is {own}, below posts {ks:?} it had stored: posting their {copies} messages again under new numbers from {} (forgotten posts so far: {})", self.next_k, self.ledger.counters.forgotten_posts));
        for held in lost.into_iter().rev() {
            let at = self.in_flight_at_head(&held.to);
            self.len += held.copies.len();
            let q = self.queue(&held.to);
            if q.reserved_upto > at {
                q.reserved_upto += held.copies.len();
            }
            for (i, (_, item)) in held.copies.into_iter().enumerate() {
                q.bytes += item.encoded.len();
                q.items.insert(at + i, item);
            }
            q.since.get_or_insert(now);
        }
        self.effects.push_back(Effect::StateChanged);
    }

    /// Items at the head of `to`'s queue that a post in flight (or of unknown outcome) carries.
    pub(super) fn in_flight_at_head(&self, to: &Option<String>) -> usize {
        let flight = match &self.awaiting {
            Some((_, Awaiting::Post { flight, .. } | Awaiting::Verify(flight))) => Some(flight),
            _ => self.pending.as_ref(),
        };
        flight.filter(|f| &f.to == to).map_or(0, |f| f.items)
    }

    /// The broker stops: a post of unknown outcome keeps its number out of use.
    pub fn stop(&mut self) {
        if let Some(p) = self.pending.take() {
            // Its first copy may still land: the number is never used for other text.
            self.next_k = self.next_k.max(p.k + 1);
            self.log(Level::Warning, format!("stopping before knowing whether twisterd stored post {}: its {} messages stay queued and go again under a new number (they may arrive twice)", p.k, p.items));
        }
    }

    pub fn handle_reply(&mut self, id: RequestId, reply: Reply, now: Instant) {
        let Some((expected, awaiting)) = self.awaiting.take() else {
            return;
        };
        if expected != id {
            // Not the answer to what is outstanding: ignored, the request still waits for it.
            self.awaiting = Some((expected, awaiting));
            return;
        }
        match (awaiting, reply) {
            (Awaiting::Post { flight, resend }, Reply::Posted(result)) => {
                if let Ok(Some(signed)) = result {
                    self.budget.stored(flight.k, signed);
                    self.clock.seen(signed + 1, now);
                }
                self.sent(flight, resend, Outcome::of(result.map(drop)), now)
            }
            (Awaiting::Verify(p), Reply::LastHave(result)) => {
                let verified = match result {
                    Ok(map) => verify(&map, &self.settings.user, p.k),
                    Err(_) => Verified::Unknown,
                };
                self.verified(p, verified, now)
            }
            (Awaiting::RefusedAt { k, refusal, error }, Reply::Height(h)) => {
                match h.ok().flatten() {
                    Some(height) => self.out_of_budget(k, refusal, &error, height),
                    // The height cannot be read now: retry with backoff as for any failure.
                    None => self.back_off(now),
                }
            }
            (Awaiting::Watch, Reply::Height(h)) => {
                if let Some(height) = h.ok().flatten() {
                    self.mark_waiting_for_a_block(now);
                    self.clock.seen(height, now);
                    let was_waiting = self.budget.waiting();
                    if self.budget.height_reached(height) && was_waiting {
                        self.log(
                            Level::Info,
                            format!("chain at height {height}: posting again"),
                        );
                        self.timers.set(Timer::PostRetry, now);
                    }
                }
            }
            // A reply of the wrong kind: a driver bug; what was asked is given up as a failure.
            (Awaiting::Post { flight, resend }, _) => {
                if resend {
                    self.pending = Some(flight);
                }
                self.back_off(now)
            }
            (Awaiting::Verify(p), _) => {
                self.pending = Some(p);
                self.back_off(now)
            }
            (Awaiting::RefusedAt { .. }, _) => self.back_off(now),
            (Awaiting::Watch, _) => {}
        }
    }

    // ----- decisions -----

    fn request(&mut self, awaiting: Awaiting) -> RequestId {
        self.last_id += 1;
        self.awaiting = Some((self.last_id, awaiting));
        self.last_id
    }

    fn log(&mut self, level: Level, line: String) {
        self.effects.push_back(Effect::Log(level, line));
    }

    /// The next request of the current flush, if any: settling a post of unknown outcome first.
    fn next_request(&mut self, now: Instant) {
        while self.burst > 0 && self.awaiting.is_none() {
            if self.budget.waiting() {
                self.burst = 0;
                return;
            }
            let target = if let Some(p) = &self.pending {
                p.to.clone()
            } else if let Some(to) = self.next_target(now) {
                to
            } else {
                self.burst = 0;
                return;
            };
            self.burst -= 1;
            if let Some(p) = self.pending.take() {
                let id = self.request(Awaiting::Verify(p));
                self.effects.push_back(Effect::OwnLastHave { id });
                return;
            }
            if let Some((k, text, items)) = self.next_post(&target, now) {
                let flight = InFlight {
                    k,
                    to: target,
                    text,
                    items,
                };
                self.send(flight, false);
            }
        }
    }

    fn send(&mut self, flight: InFlight, resend: bool) {
        let (k, to, text) = (flight.k, flight.to.clone(), flight.text.clone());
        self.effects.push_back(Effect::UseNumber(k));
        let id = self.request(Awaiting::Post { flight, resend });
        self.effects.push_back(Effect::Post { id, k, to, text });
    }

    /// The largest text a post (or a DM to `to`) can carry.
    pub fn room(&self, to: &Option<String>) -> usize {
        packing::room(&self.settings.user, self.next_k, to)
    }

    /// The next post to `to`: its number, text and item count; `None` when the queue's head was
    /// handled otherwise (cut into fragments or dropped).
    fn next_post(&mut self, to: &Option<String>, now: Instant) -> Option<(i64, String, usize)> {
        if let Some((n, text)) = self.pack(to) {
            return Some((self.next_k, text, n));
        }
        let budget = self.room(to);
        let head = match to {
            None => self.public.items.front(),
            Some(u) => self.private.get(u).and_then(|q| q.items.front()),
        }?
        .clone();
        // Too big for one post: cut it into fragments that fit (or drop it, beyond the limit).
        let room = budget.saturating_sub(wire::envelope_size(self.seq, 1, 0));
        self.fragment_ids += 1;
        let id = (self.seq << 20) | (self.fragment_ids & 0xF_FFFF);
        let fragments = match &head.payload {
            Payload::Whole(m)
                if self.settings.wire_format != WireFormat::Poc
                    && m.payload.len() <= self.settings.max_message_bytes =>
            {
                wire::encode_fragments(m, id, room, head.id)
            }
            _ => None,
        };
        self.pop(to, 1, now);
        match fragments {
            Some(parts) => {
                self.counters.fragmented += 1;
                self.len += parts.len();
                for _ in 0..parts.len() {
                    self.hold_record(head.id);
                }
                self.let_go_record(head.id);
                let q = self.queue(to);
                q.bytes += parts.iter().map(String::len).sum::<usize>();
                q.reserved_upto += usize::from(q.reserved_upto > 0) * parts.len();
                for part in parts.into_iter().rev() {
                    q.items.push_front(Queued {
                        payload: Payload::Fragment,
                        encoded: part,
                        id: head.id,
                    });
                }
                q.since.get_or_insert(now);
            }
            None => {
                let size = match &head.payload {
                    Payload::Whole(m) => m.payload.len(),
                    Payload::Fragment => head.encoded.len(),
                };
                let detail = format!("a message of {size} bytes: more than plugin_opt_max_message_bytes ({}), or the poc wire format, which cannot cut it into posts (one post carries at most {budget})", self.settings.max_message_bytes);
                self.effects
                    .push_back(Effect::Dropped(Reason::TooBig, detail));
                self.let_go_record(head.id);
            }
        }
        None
    }

    /// Takes the first `n` items of `to`'s queue out.
    fn pop(&mut self, to: &Option<String>, n: usize, now: Instant) -> Vec<Queued> {
        let q = self.queue(to);
        let n = n.min(q.items.len());
        let out: Vec<Queued> = q.items.drain(..n).collect();
        let taken: usize = out.iter().map(|i| i.encoded.len()).sum();
        q.bytes = q.bytes.saturating_sub(taken);
        q.reserved_upto = q.reserved_upto.saturating_sub(n);
        q.full = false;
        q.checked_bytes = 0;
        q.waited_for_block = false;
        q.since = if q.items.is_empty() { None } else { Some(now) };
        self.len = self.len.saturating_sub(n);
        self.check_full(to);
        out
    }
}
