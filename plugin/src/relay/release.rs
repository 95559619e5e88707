//! Release: when a spooled record may be marked taken, and which posts twisterd forgot.
//!
//! A record (a message in the spool, by its `SpoolId`) may become several queued copies: one for the
//! public timeline, one DM per recipient, fragments of a large message. Each copy is counted until it
//! is let go: dropped (counted elsewhere), or carried by a post that twisterd confirmed stored
//! (`getlasthave` of our own user reached its number) and that was then held a while longer
//! (`hold`), so that a post twisterd forgets meanwhile (a twisterd killed right after storing it) can
//! be posted again from the copy kept here. A record is released when no copy is left; the spool is
//! marked taken up to the longest prefix of released records (`taken`).
//!
//! Forgotten posts: every post here was answered as stored before the `getlasthave` that is read
//! (the driver makes one call at a time), so a post above twisterd's last number of ours is not in
//! twisterd: forgotten, or ignored (its number was used already). Its copies go back to the caller to
//! be posted again under new numbers; the forgotten number is never used again (others may hold it).
//!
//! Hook for receipts (QoS 1/2 acknowledged by every receiver): `await_receipts(id)` keeps a record
//! open after its copies are gone until `receipts_done(id)`.
//!
//! No I/O, no clock: every event brings `now`. Generic over the copy `T` kept for reposting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A record's sequence number in the spool (`SpoolId.0`).
pub type RecordId = u64;

/// Posts held at most: beyond, the oldest are let go early (counted), which bounds the memory the
/// copies take.
pub const MAX_HELD_POSTS: usize = 4096;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counters {
    /// Posts found forgotten by twisterd (or ignored by it), and the copies they carried.
    pub forgotten_posts: u64,
    pub forgotten_copies: u64,
    /// Posts let go before their hold ended, for want of room (MAX_HELD_POSTS).
    pub released_early: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Open {
    copies: u32,
    receipts_pending: bool,
}

/// A post answered as stored, with the copies it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Held<T> {
    pub k: i64,
    /// `None`: the public timeline; `Some(user)`: a DM.
    pub to: Option<String>,
    pub copies: Vec<(Option<RecordId>, T)>,
    confirmed_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Ledger<T> {
    hold: Duration,
    /// Records seen and not released, with what keeps them.
    open: BTreeMap<RecordId, Open>,
    /// Every record up to here is released (at start: the spool's taken mark).
    floor: RecordId,
    /// The newest record seen.
    seen: RecordId,
    posts: BTreeMap<i64, Held<T>>,
    pub counters: Counters,
}

impl<T> Ledger<T> {
    /// `floor`: every record up to it is released already.
    pub fn new(hold: Duration, floor: RecordId) -> Self {
        Ledger {
            hold,
            open: BTreeMap::new(),
            floor,
            seen: floor,
            posts: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    /// One more copy of record `id`: the first opens it (the driver's, while it routes the record:
    /// `let_go` when done), the others are queued for a destination or are fragments. Records arrive
    /// in order; one at or below the floor is done already.
    pub fn copy(&mut self, id: RecordId) {
        if id <= self.floor {
            return;
        }
        self.seen = self.seen.max(id);
        self.open.entry(id).or_default().copies += 1;
    }

    /// One copy of `id` is done with (dropped, or its post held long enough).
    pub fn let_go(&mut self, id: RecordId) {
        if let Some(o) = self.open.get_mut(&id) {
            o.copies = o.copies.saturating_sub(1);
            if o.copies == 0 && !o.receipts_pending {
                self.open.remove(&id);
            }
        }
    }

    /// Receipts hook: `id` stays open after its copies are let go, until `receipts_done(id)`.
    pub fn await_receipts(&mut self, id: RecordId) {
        if let Some(o) = self.open.get_mut(&id) {
            o.receipts_pending = true;
        }
    }

    /// Receipts hook: every receiver acknowledged `id` (or gave up on): released with its last copy.
    pub fn receipts_done(&mut self, id: RecordId) {
        if let Some(o) = self.open.get_mut(&id) {
            o.receipts_pending = false;
            if o.copies == 0 {
                self.open.remove(&id);
            }
        }
    }

    /// Post `k` was answered as stored; it carries `copies` (their records keep one copy each until
    /// the post is confirmed and held).
    pub fn stored(&mut self, k: i64, to: Option<String>, copies: Vec<(Option<RecordId>, T)>) {
        let held = Held {
            k,
            to,
            copies,
            confirmed_at: None,
        };
        if let Some(old) = self.posts.insert(k, held) {
            self.let_go_all(old); // cannot happen: a number is used once
        }
        while self.posts.len() > MAX_HELD_POSTS {
            if let Some((_, oldest)) = self.posts.pop_first() {
                self.counters.released_early += 1;
                self.let_go_all(oldest);
            }
        }
    }

    /// twisterd's last post number of ours, read after every post held here was answered: posts up to
    /// it are confirmed (their hold starts), those above it are not in twisterd. Returns these, lowest
    /// number first, to be posted again under new numbers (their copies still counted).
    pub fn own_last(&mut self, own: i64, now: Instant) -> Vec<Held<T>> {
        for held in self.posts.values_mut() {
            if held.k > own {
                break;
            }
            held.confirmed_at.get_or_insert(now);
        }
        let lost: Vec<Held<T>> = self.posts.split_off(&(own + 1)).into_values().collect();
        self.counters.forgotten_posts += lost.len() as u64;
        self.counters.forgotten_copies += lost.iter().map(|h| h.copies.len() as u64).sum::<u64>();
        lost
    }

    /// Lets go of the posts confirmed at least `hold` ago.
    pub fn release_due(&mut self, now: Instant) {
        let due: Vec<i64> = self
            .posts
            .values()
            .filter(|h| h.confirmed_at.is_some_and(|t| now >= t + self.hold))
            .map(|h| h.k)
            .collect();
        for k in due {
            if let Some(held) = self.posts.remove(&k) {
                self.let_go_all(held);
            }
        }
    }

    /// When `release_due` has something to do next.
    pub fn next_due(&self) -> Option<Instant> {
        self.posts
            .values()
            .filter_map(|h| h.confirmed_at)
            .min()
            .map(|t| t + self.hold)
    }

    fn let_go_all(&mut self, held: Held<T>) {
        for (id, _) in held.copies {
            if let Some(id) = id {
                self.let_go(id);
            }
        }
    }

    /// Every record up to this one is released: the spool may mark it taken.
    pub fn taken(&self) -> RecordId {
        match self.open.keys().next() {
            Some(first) => (first - 1).max(self.floor),
            None => self.seen,
        }
    }

    /// Posts answered and not yet let go.
    pub fn held_posts(&self) -> usize {
        self.posts.len()
    }

    /// Records not released.
    pub fn open_records(&self) -> usize {
        self.open.len()
    }

    /// The copies of every post held, lowest number first (the broker stops: what a restart replays).
    pub fn held(&self) -> impl Iterator<Item = &Held<T>> {
        self.posts.values()
    }
}

#[cfg(test)]
#[path = "release_tests.rs"]
mod tests;
