//! Reading a followed user's DMs to us in post-number order, whatever order twisterd lists them in.
//!
//! `getdirectmsgs` lists a conversation by time with one-second resolution, and within a second newest
//! first (a new DM goes before the first stored one whose time is equal or later); its ids are positions
//! in that list, so they shift when a DM is inserted before others, also between two calls. The reader
//! therefore reads the tail of the list from a little below the last position it read, and when the
//! oldest DM of that tail is as new as the newest it read before (new DMs of that second may have been
//! inserted further down), reads the tail again from further down: each tail is one consistent
//! snapshot, which replaces the one before. It hands the new DMs on sorted by `k`; duplicates are left
//! to the cursor (`(from, k)` seen once). Pages come typed from the client (`crate::twister::DmPage`).

use crate::state::REORDER_WINDOW;
use crate::twister::{DmPage, DmWindow};

/// DMs asked for per call.
pub const PAGE: i64 = 1000;
/// Positions stepped back by the first extra call; each further one steps back twice as far.
const STEP_BACK: i64 = 64;
/// Extra calls at most per read: the work per poll stays bounded.
const MAX_CALLS: usize = 8;
/// Seconds of clock difference tolerated between the DMs of a conversation.
const TIME_SLACK: i64 = 1;

/// One DM from the peer to us.
#[derive(Debug, Clone, PartialEq)]
pub struct Dm {
    pub k: i64,
    pub text: String,
}

/// Where the next `getdirectmsgs` call reads, and what the calls so far found.
#[derive(Debug)]
pub struct Reader {
    from: String,
    /// Exclusive lower bound of the window being read.
    since: i64,
    /// Inclusive upper bound; `None`: up to the newest.
    max: Option<i64>,
    /// Time of the newest DM read the last time (0: unknown).
    newest_before: i64,
    calls: usize,
    step_back: i64,
    done: bool,
    pub max_id: i64,
    pub max_time: i64,
    received: Vec<Dm>,
}

impl Reader {
    /// `last_id` and `last_time`: the highest position and the newest time read the last time.
    pub fn new(from: &str, last_id: i64, last_time: i64) -> Self {
        Reader {
            from: from.to_string(),
            since: last_id - REORDER_WINDOW,
            max: None,
            newest_before: last_time,
            calls: 0,
            step_back: STEP_BACK,
            done: false,
            max_id: last_id,
            max_time: last_time,
            received: Vec::new(),
        }
    }

    /// The window of the next call, or `None` when done.
    pub fn next_window(&self) -> Option<DmWindow> {
        if self.done {
            return None;
        }
        Some(DmWindow {
            peer: self.from.clone(),
            since: self.since,
            max: self.max,
        })
    }

    /// Takes one call's page (entries oldest first) and decides what to read next.
    pub fn take(&mut self, page: &DmPage) {
        self.calls += 1;
        let mut oldest: Option<(i64, i64)> = None;
        let mut received = Vec::new();
        for e in &page.entries {
            let (id, time) = (e.id, e.time);
            if oldest.is_none_or(|(i, _)| id < i) {
                oldest = Some((id, time));
            }
            self.max_id = self.max_id.max(id);
            self.max_time = self.max_time.max(time);
            let Some(dm) = &e.from_peer else {
                continue;
            };
            received.push(Dm {
                k: dm.k,
                text: dm.text.clone(),
            });
        }
        if self.max.is_none() {
            // A whole tail: it holds everything an earlier (shorter) tail held, positions shifted.
            self.received = received;
        } else {
            self.received.extend(received);
        }
        let full = page.listed as i64 >= PAGE;
        let next = match oldest {
            // The window held more than one page: read the rest of it below what came.
            Some((id, _)) if full => Some((self.since, Some(id - 1))),
            // Entries as new as the newest read before: DMs of that second may sit further down.
            Some((_, time))
                if self.max.is_none()
                    && self.newest_before > 0
                    && time >= self.newest_before - TIME_SLACK
                    && self.since >= 0 =>
            {
                let since = self.since - self.step_back;
                self.step_back = self.step_back.saturating_mul(2);
                Some((since, None))
            }
            _ => None,
        };
        match next {
            Some((since, max)) if self.calls <= MAX_CALLS => {
                self.since = since.max(-1);
                self.max = max;
            }
            _ => self.done = true,
        }
    }

    /// The DMs found, once each, in post-number order.
    pub fn in_post_order(mut self) -> Vec<Dm> {
        self.received.sort_by_key(|d| d.k);
        self.received.dedup_by_key(|d| d.k);
        self.received
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::twister::{DirectMsg, PeerDm};

    /// A page as the client reads it from twisterd's list: entries `(time, k, from_me)`, each at
    /// its position, those in `(since, max]`.
    pub(crate) fn page_of(
        entries: &[(i64, i64, bool, String)],
        since: i64,
        max: Option<i64>,
    ) -> DmPage {
        let entries: Vec<DirectMsg> = entries
            .iter()
            .enumerate()
            .filter(|(id, _)| (*id as i64) > since && max.is_none_or(|m| (*id as i64) <= m))
            .map(|(id, (time, k, me, text))| DirectMsg {
                id: id as i64,
                time: *time,
                from_peer: (!me).then(|| PeerDm {
                    k: *k,
                    text: text.clone(),
                }),
            })
            .collect();
        DmPage {
            listed: entries.len(),
            entries,
        }
    }

    /// A conversation as twisterd lists it: (time, k, from_me).
    fn listing(conv: &[(i64, i64, bool)], since: i64, max: Option<i64>) -> DmPage {
        let texts: Vec<(i64, i64, bool, String)> = conv
            .iter()
            .map(|(t, k, me)| (*t, *k, *me, format!("m{k}")))
            .collect();
        page_of(&texts, since, max)
    }

    fn read(conv: &[(i64, i64, bool)], last_id: i64, last_time: i64) -> (Vec<i64>, Reader) {
        let mut r = Reader::new("alice", last_id, last_time);
        while let Some(w) = r.next_window() {
            r.take(&listing(conv, w.since, w.max));
        }
        let (max_id, max_time) = (r.max_id, r.max_time);
        let ks = r.in_post_order().iter().map(|d| d.k).collect();
        (ks, Reader::new("alice", max_id, max_time))
    }

    #[test]
    fn dms_listed_newest_first_within_a_second_come_out_by_k() {
        // As twisterd lists them: time order, newest first within a second, our own DM among them.
        let conv = [
            (100, 1, false),
            (100, 0, false),
            (101, 3, false),
            (101, 7, true),
            (101, 2, false),
        ];
        let (ks, next) = read(&conv, -1, 0);
        assert_eq!(ks, vec![0, 1, 2, 3]);
        assert_eq!((next.max_id, next.max_time), (4, 101));
    }

    #[test]
    fn dms_inserted_far_below_the_last_position_read_are_found() {
        // 40 DMs in second 100, read; then 30 more in the same second, each inserted before the
        // first of that second: they take positions 0..29 and push the read ones up.
        let first: Vec<(i64, i64, bool)> = (0..40).rev().map(|k| (100, k, false)).collect();
        let (ks, next) = read(&first, -1, 0);
        assert_eq!(ks, (0..40).collect::<Vec<_>>());
        let mut later: Vec<(i64, i64, bool)> = (40..70).rev().map(|k| (100, k, false)).collect();
        later.extend(first);
        let (ks, _) = read(&later, next.max_id, next.max_time);
        let new: Vec<i64> = ks.into_iter().filter(|k| *k >= 40).collect();
        assert_eq!(new, (40..70).collect::<Vec<_>>(), "every new DM, in order");
    }

    #[test]
    fn paging_back_stops_at_older_seconds_and_is_bounded() {
        let conv: Vec<(i64, i64, bool)> = (0..500).map(|k| (k, k, false)).collect();
        let mut r = Reader::new("alice", 499, 499);
        let mut calls = 0;
        while let Some(w) = r.next_window() {
            calls += 1;
            r.take(&listing(&conv, w.since, w.max));
        }
        assert_eq!(calls, 1, "the window reached older seconds: no paging");
        // Every DM in one second: paging back is bounded.
        let same: Vec<(i64, i64, bool)> = (0..5000).map(|k| (7, 5000 - k, false)).collect();
        let mut r = Reader::new("alice", 4999, 7);
        let mut calls = 0;
        while let Some(w) = r.next_window() {
            calls += 1;
            r.take(&listing(&same, w.since, w.max));
        }
        assert!(calls <= MAX_CALLS + 1, "{calls}");
    }

    #[test]
    fn a_full_page_is_followed_by_the_rest_of_the_window() {
        let conv: Vec<(i64, i64, bool)> = (0..2500).map(|k| (k, k, false)).collect();
        let mut r = Reader::new("alice", -1, 0);
        while let Some(w) = r.next_window() {
            // Like twisterd: the newest PAGE of the window.
            let mut l = listing(&conv, w.since, w.max);
            let excess = l.entries.len().saturating_sub(PAGE as usize);
            l.entries.drain(..excess);
            l.listed = l.entries.len();
            r.take(&l);
        }
        assert_eq!(r.in_post_order().len(), 2500);
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;
    use crate::state::Cursor;

    /// twisterd's storeNewDM: before the first stored DM whose time is equal or later.
    fn insert(conv: &mut Vec<(i64, i64, bool)>, time: i64, k: i64) {
        let at = conv.iter().position(|e| e.0 >= time).unwrap_or(conv.len());
        conv.insert(at, (time, k, false));
    }

    #[test]
    fn polled_at_any_moment_dms_come_out_in_post_order_once() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut conv: Vec<(i64, i64, bool)> = Vec::new();
            let mut cursor = Cursor::at(-1);
            let mut delivered: Vec<i64> = Vec::new();
            let mut time = 1000;
            let total = 60;
            let mut next_k = 0;
            let mut polls_left = 10_000;
            while next_k < total || delivered.len() < total as usize {
                polls_left -= 1;
                assert!(polls_left > 0, "never delivered: {delivered:?}");
                if next_k < total {
                    if rand() % 4 == 0 {
                        time += 1;
                    }
                    insert(&mut conv, time, next_k);
                    next_k += 1;
                }
                if rand() % 3 == 0 || next_k == total {
                    let mut r = Reader::new("alice", cursor.dm_id, cursor.dm_time);
                    while let Some(w) = r.next_window() {
                        // Between two calls of one read, more DMs may arrive (ids shift).
                        if next_k < total && rand() % 2 == 0 {
                            insert(&mut conv, time, next_k);
                            next_k += 1;
                        }
                        let entries: Vec<(i64, i64, bool, String)> = conv
                            .iter()
                            .map(|(t, k, _)| (*t, *k, false, String::new()))
                            .collect();
                        r.take(&super::tests::page_of(&entries, w.since, w.max));
                    }
                    cursor.dm_id = r.max_id;
                    cursor.dm_time = r.max_time;
                    for dm in r.in_post_order() {
                        if cursor.first_sight(dm.k) {
                            delivered.push(dm.k);
                        }
                    }
                    cursor.advance(next_k - 1);
                }
            }
            assert_eq!(delivered, (0..total).collect::<Vec<_>>(), "{conv:?}");
        }
    }
}
