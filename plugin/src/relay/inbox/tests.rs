//! The inbox's decisions against a scripted fake twisterd and a fake clock: cursors, fetch windows,
//! DM order, duplicates, promoted posts, malformed input, fragments, failures in the middle of a read.

use super::{Counters, Inbox, InboxEffect, InboxReply};
use crate::relay::Level;
use crate::state::Cursor;
use crate::twister::{Post, TwisterError};
use crate::wire::{self, Message};
use std::collections::BTreeMap;
use std::time::Instant;

const ME: &str = "alice";

/// A twisterd holding the torrents of the users we follow and the DMs they sent us.
#[derive(Default)]
struct FakeNode {
    /// (user, k) -> (text, promoted, is_dm)
    posts: BTreeMap<(String, i64), (String, bool, bool)>,
    /// Our conversation with each user in twisterd's list order: (time, k, text).
    dms: BTreeMap<String, Vec<(i64, i64, String)>>,
    own_last: i64,
    /// Calls that fail (by method name) the next time they come.
    fail: Vec<&'static str>,
    getposts_calls: usize,
    /// The `getposts` call (counted from 1) that fails.
    fail_getposts_call: Option<usize>,
}

impl FakeNode {
    fn post(&mut self, user: &str, k: i64, text: &str) {
        self.posts
            .insert((user.into(), k), (text.into(), false, false));
    }

    /// A DM in the list: within a second newest first, as twisterd inserts them.
    fn dm(&mut self, from: &str, time: i64, k: i64, text: &str) {
        let conv = self.dms.entry(from.into()).or_default();
        let at = conv
            .iter()
            .position(|(t, _, _)| *t >= time)
            .unwrap_or(conv.len());
        conv.insert(at, (time, k, text.into()));
        // A DM is a piece of its sender's torrent too.
        self.posts
            .insert((from.into(), k), (String::new(), false, true));
    }

    fn failing(&mut self, method: &'static str) -> bool {
        match self.fail.iter().position(|m| *m == method) {
            Some(i) => {
                self.fail.remove(i);
                true
            }
            None => false,
        }
    }

    fn answer(&mut self, effect: &InboxEffect) -> Option<(u64, InboxReply)> {
        let down = || TwisterError::Transport("timed out".into());
        match effect {
            InboxEffect::LastHave { id } => {
                let r = if self.failing("getlasthave") {
                    Err(down())
                } else {
                    let mut m: BTreeMap<String, i64> = BTreeMap::new();
                    for (u, k) in self.posts.keys() {
                        let e = m.entry(u.clone()).or_insert(-1);
                        *e = (*e).max(*k);
                    }
                    m.insert(ME.into(), self.own_last);
                    Ok(m)
                };
                Some((*id, InboxReply::LastHave(r)))
            }
            InboxEffect::DirectMsgs { id, window } => {
                if self.failing("getdirectmsgs") {
                    return Some((*id, InboxReply::DirectMsgs(Err(down()))));
                }
                let conv: Vec<(i64, i64, bool, String)> = self
                    .dms
                    .get(&window.peer)
                    .map(|c| c.as_slice())
                    .unwrap_or(&[])
                    .iter()
                    .map(|(time, k, text)| (*time, *k, false, text.clone()))
                    .collect();
                let page =
                    crate::relay::inbox::directs::tests::page_of(&conv, window.since, window.max);
                Some((*id, InboxReply::DirectMsgs(Ok(page))))
            }
            InboxEffect::Posts {
                id,
                from,
                since,
                upto,
                count,
            } => {
                self.getposts_calls += 1;
                if self.fail_getposts_call == Some(self.getposts_calls) {
                    return Some((*id, InboxReply::Posts(Err(down()))));
                }
                // Newest first, at most `count`, with twisterd's promoted post in front.
                let mut list = vec![Post {
                    author: "promoter".into(),
                    k: 0,
                    text: "buy".into(),
                    promoted: true,
                    is_dm: false,
                }];
                for ((u, k), (text, promoted, is_dm)) in self.posts.iter().rev() {
                    if u == from && *k > *since && *k <= *upto {
                        list.push(Post {
                            author: u.clone(),
                            k: *k,
                            text: text.clone(),
                            promoted: *promoted,
                            is_dm: *is_dm,
                        });
                    }
                }
                list.truncate(*count as usize);
                Some((*id, InboxReply::Posts(Ok(list))))
            }
            _ => None,
        }
    }
}

struct Run {
    now: Instant,
    inbox: Inbox,
    node: FakeNode,
    got: Vec<(String, i64, &'static str, Message)>,
    logs: Vec<(Level, String)>,
    own: Vec<i64>,
    /// The cursor of the piece's sender as it was when each piece was handed on.
    cursor_at_delivery: Vec<Option<Cursor>>,
}

impl Run {
    fn new(follow: &[&str], cursors: BTreeMap<String, Cursor>) -> Self {
        let follow: Vec<String> = follow.iter().map(|s| s.to_string()).collect();
        Run {
            now: Instant::now(),
            inbox: Inbox::new(ME, &follow, cursors, Counters::default()),
            node: FakeNode::default(),
            got: Vec::new(),
            logs: Vec::new(),
            own: Vec::new(),
            cursor_at_delivery: Vec::new(),
        }
    }

    /// One poll, driven to the end as the worker does.
    fn poll(&mut self) {
        self.inbox.poll();
        while let Some(e) = self.inbox.poll_effect() {
            match e {
                InboxEffect::Deliver {
                    from,
                    k,
                    what,
                    message,
                    ..
                } => {
                    self.cursor_at_delivery
                        .push(self.inbox.cursors().get(&from).cloned());
                    self.got.push((from, k, what, message));
                }
                InboxEffect::Log(level, line) => self.logs.push((level, line)),
                InboxEffect::OwnLast(own) => self.own.push(own),
                InboxEffect::Dropped(..)
                | InboxEffect::StateChanged
                | InboxEffect::Duplicate { .. } => {}
                request => {
                    let (id, reply) = self.node.answer(&request).unwrap();
                    self.inbox.handle_reply(id, reply, self.now);
                }
            }
        }
    }

    fn payloads(&self) -> Vec<String> {
        self.got
            .iter()
            .map(|(_, _, _, m)| String::from_utf8(m.payload.clone()).unwrap())
            .collect()
    }
}

fn text(payloads: &[&str]) -> String {
    let items: Vec<String> = payloads
        .iter()
        .map(|p| {
            wire::encode_item(&Message {
                topic: "t".into(),
                payload: p.as_bytes().to_vec(),
                qos: 0,
                retain: false,
            })
        })
        .collect();
    wire::envelope(0, items.iter().map(String::as_str))
}

#[test]
fn a_user_followed_at_start_is_read_from_its_newest_post_on() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    run.node.post("bob", 0, &text(&["old"]));
    run.inbox.start_at("bob", 0);
    run.node.post("bob", 1, &text(&["new"]));
    run.poll();
    assert_eq!(run.payloads(), ["new"]);
    assert_eq!(run.inbox.cursors()["bob"].k, 1);
    // Nothing new: no getposts.
    let calls = run.node.getposts_calls;
    run.poll();
    assert_eq!(run.node.getposts_calls, calls);
    assert_eq!(run.payloads(), ["new"]);
}

#[test]
fn a_user_seen_only_later_is_read_from_its_first_post_in_windows() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    for k in 0..250 {
        run.node.post("bob", k, &text(&[&format!("{k}")]));
    }
    run.poll();
    let want: Vec<String> = (0..250).map(|k| k.to_string()).collect();
    assert_eq!(run.payloads(), want);
    assert_eq!(run.node.getposts_calls, 3, "windows of 100");
    assert_eq!(run.inbox.cursors()["bob"].k, 249);
}

#[test]
fn promoted_posts_other_users_and_duplicates_are_skipped() {
    // Read up to 3 before, and 4 too (it came early, inside the re-read window).
    let mut c = Cursor::at(3);
    c.seen.insert(4);
    let mut run = Run::new(&["bob"], BTreeMap::from([("bob".to_string(), c)]));
    run.node.post("bob", 4, &text(&["again"]));
    run.node.post("bob", 6, &text(&["six"]));
    run.node.post("carol", 7, &text(&["not followed"]));
    run.poll();
    assert_eq!(
        run.payloads(),
        ["six"],
        "promoted post, duplicate and carol's skipped"
    );
    assert_eq!(run.inbox.counters.duplicates, 1);
}

#[test]
fn dms_are_handed_on_in_post_number_order_before_the_posts() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    run.inbox.start_at("bob", -1);
    // Three DMs in one second: twisterd lists them newest first.
    run.node.dm("bob", 100, 0, &text(&["dm0"]));
    run.node.dm("bob", 100, 1, &text(&["dm1"]));
    run.node.dm("bob", 100, 2, &text(&["dm2"]));
    run.node.post("bob", 3, &text(&["post3"]));
    run.poll();
    assert_eq!(run.payloads(), ["dm0", "dm1", "dm2", "post3"]);
    assert_eq!(run.got[0].2, "DM");
    assert_eq!(run.got[3].2, "post");
    // A DM arriving later in the same second is found, once; the others are not read twice.
    run.node.dm("bob", 100, 4, &text(&["dm4"]));
    run.poll();
    assert_eq!(run.payloads(), ["dm0", "dm1", "dm2", "post3", "dm4"]);
}

#[test]
fn malformed_input_is_counted_and_its_warnings_rate_limited() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    for k in 0..30 {
        run.node.post("bob", k, "not an envelope {");
    }
    run.node.post("bob", 30, &text(&["fine"]));
    run.poll();
    assert_eq!(run.payloads(), ["fine"], "the good post after the junk");
    assert_eq!(run.inbox.counters.malformed, 30);
    let warnings = run
        .logs
        .iter()
        .filter(|(l, m)| *l == Level::Warning && m.contains("skipped post"))
        .count();
    assert_eq!(warnings, 20, "at most 20 lines per 10 s");
    // The driver's own finding shares the limit.
    run.inbox.malformed("bad topic".into(), run.now);
    assert_eq!(run.inbox.counters.malformed, 31);
    assert!(run.inbox.poll_effect().is_none(), "held back");
}

#[test]
fn fragments_in_separate_posts_are_joined_into_one_message() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    let big = Message {
        topic: "big".into(),
        payload: (0..4000u32).map(|i| i as u8).collect(),
        qos: 1,
        retain: true,
    };
    let parts = wire::encode_fragments(&big, 77, 1500, None).unwrap();
    assert!(parts.len() >= 3);
    for (k, part) in parts.iter().enumerate() {
        run.node
            .post("bob", k as i64, &wire::envelope(0, [part.as_str()]));
    }
    run.poll();
    assert_eq!(run.got.len(), 1);
    assert_eq!(run.got[0].3, big);
}

#[test]
fn a_failed_read_keeps_what_was_read_and_the_next_poll_goes_on() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    for k in 0..150 {
        run.node.post("bob", k, &text(&[&format!("{k}")]));
    }
    // The second window fails.
    run.node.fail_getposts_call = Some(2);
    run.poll();
    assert_eq!(run.got.len(), 100);
    assert_eq!(
        run.inbox.cursors()["bob"].k,
        99,
        "kept where the failure left it"
    );
    run.poll();
    let want: Vec<String> = (0..150).map(|k| k.to_string()).collect();
    assert_eq!(run.payloads(), want, "nothing lost, nothing twice");
}

#[test]
fn a_piece_is_marked_read_before_it_is_handed_on() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    run.node.post("bob", 0, &text(&["a"]));
    run.node.post("bob", 1, &text(&["b"]));
    run.poll();
    for (i, at) in run.cursor_at_delivery.iter().enumerate() {
        let at = at.as_ref().unwrap();
        assert!(
            at.seen.contains(&(i as i64)),
            "piece {i} marked read first: {at:?}"
        );
    }
}

#[test]
fn our_own_last_number_goes_to_the_outbox_and_a_failed_poll_changes_nothing() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    run.node.own_last = 7;
    run.poll();
    assert_eq!(run.own, [7]);
    run.node.fail = vec!["getlasthave"];
    run.node.post("bob", 0, &text(&["x"]));
    run.poll();
    assert!(run.got.is_empty());
    run.poll();
    assert_eq!(run.payloads(), ["x"]);
}

#[test]
fn a_reply_to_another_request_is_ignored() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    run.inbox.poll();
    let Some(InboxEffect::LastHave { id }) = run.inbox.poll_effect() else {
        panic!("getlasthave first");
    };
    run.inbox
        .handle_reply(id + 1, InboxReply::LastHave(Ok(BTreeMap::new())), run.now);
    // Still waiting: a new poll asks nothing more.
    run.inbox.poll();
    assert!(run.inbox.poll_effect().is_none());
}

/// A post of messages with ids `seqs` of epoch 7.
fn text_with_ids(seqs: &[u64]) -> String {
    let items: Vec<String> = seqs
        .iter()
        .map(|seq| {
            let m = Message {
                topic: "t".into(),
                payload: seq.to_string().into_bytes(),
                qos: 1,
                retain: false,
            };
            wire::encode_item_with_id(
                &m,
                Some(wire::MessageId {
                    epoch: 7,
                    seq: *seq,
                }),
            )
        })
        .collect();
    wire::envelope(0, items.iter().map(String::as_str))
}

#[test]
fn a_message_id_is_handed_on_once_across_posts_and_restarts_and_posts_without_ids_always() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    run.inbox.start_at("bob", -1);
    run.node.post("bob", 0, &text_with_ids(&[1, 2, 3]));
    // The sender crashed and replayed 2 and 3 from its spool under a new post number, then 4.
    run.node.post("bob", 1, &text_with_ids(&[2, 3, 4]));
    run.node
        .post("bob", 2, &text(&["old writer", "old writer"]));
    run.poll();
    assert_eq!(
        run.payloads(),
        ["1", "2", "3", "4", "old writer", "old writer"]
    );
    assert_eq!(run.inbox.counters.duplicate_ids, 2);
    // A restart from a state file written before the cursor's last move: the posts are read again,
    // the ids are not handed on again.
    let saved = run.inbox.seen().clone();
    let mut again = Run::new(&["bob"], BTreeMap::new());
    again.inbox = Inbox::new(
        ME,
        &["bob".to_string()],
        BTreeMap::new(),
        Counters::default(),
    )
    .with_seen(saved);
    again.inbox.start_at("bob", -1);
    again.node = run.node;
    again.node.post("bob", 3, &text_with_ids(&[4, 5]));
    again.poll();
    assert_eq!(again.payloads(), ["old writer", "old writer", "5"]);
    assert_eq!(
        again.inbox.counters.duplicate_ids, 7,
        "1-3, 2-4 and 4 again"
    );
}

#[test]
fn a_message_handed_on_from_the_dht_first_is_dropped_when_its_live_copy_comes() {
    let mut run = Run::new(&["bob"], BTreeMap::new());
    run.inbox.start_at("bob", -1);
    let id = |seq| wire::MessageId { epoch: 7, seq };
    assert!(!run.inbox.handed_on("bob", id(2)));
    assert_eq!(run.inbox.last_listed("bob"), None);
    // Bob's retained message 2 came from the DHT (its post was slow to reach this node).
    run.inbox.handed_on_elsewhere("bob", id(2));
    assert!(run.inbox.handed_on("bob", id(2)));
    assert!(!run.inbox.handed_on("alice", id(2)));
    run.node.post("bob", 0, &text_with_ids(&[1, 2, 3]));
    run.poll();
    assert_eq!(run.payloads(), ["1", "3"]);
    assert_eq!(run.inbox.counters.duplicate_ids, 1);
    assert_eq!(run.inbox.last_listed("bob"), Some(0));
    assert!(run.inbox.handed_on("bob", id(3)));
}
