//! The outbox's decisions against a scripted fake twisterd and a fake clock: no node, no sleeping.
//! Every deadline the outbox returns is checked never to be in the past.

use super::outbox::{Outbox, Payload, Queued, Settings};
use super::{Effect, Level, Reply};
use crate::config::WireFormat;
use crate::drops::Reason;
use crate::reassembly::{Limits, Reassembler};
use crate::twister::TwisterError;
use crate::wire::{self, Message};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use twister_rules::errors::{too_many_posts, MSG_BAD_POST_SIZE, RPC_INVALID_PARAMS};
use twister_rules::{max_post_number, PostHeader, MAX_POST_BYTES};

const USER: &str = "alice";

/// What the fake node does with the next post instead of storing it.
#[derive(Debug, Clone)]
enum Fault {
    /// No answer read, nothing stored.
    Timeout,
    /// No answer read, but stored.
    TimeoutStored,
    /// Refused as too large.
    TooLarge,
    /// Not reachable at all.
    Down,
}

/// A twisterd as the outbox sees it: posts stored by number (a reused number is ignored, as twisterd
/// does), the post budget of a user registered at `registered`, faults scripted per post.
struct FakeNode {
    height: i64,
    registered: i64,
    posts: BTreeMap<i64, (Option<String>, String)>,
    faults: VecDeque<Fault>,
    /// Height reads fail while true.
    height_unknown: bool,
    refusals: usize,
    calls: usize,
}

impl FakeNode {
    fn new() -> Self {
        FakeNode {
            height: 1000,
            registered: 0,
            posts: BTreeMap::new(),
            faults: VecDeque::new(),
            height_unknown: false,
            refusals: 0,
            calls: 0,
        }
    }

    fn answer(&mut self, effect: &Effect) -> Option<(u64, Reply)> {
        self.calls += 1;
        match effect {
            Effect::Post { id, k, to, text } => {
                let r = match self.faults.pop_front() {
                    Some(Fault::Down) => Err(TwisterError::NotSent("Connection Failed".into())),
                    Some(Fault::Timeout) => Err(TwisterError::Transport("timed out".into())),
                    Some(Fault::TimeoutStored) => {
                        self.store(*k, to, text);
                        Err(TwisterError::Transport("timed out".into()))
                    }
                    Some(Fault::TooLarge) => {
                        Err(TwisterError::refused(RPC_INVALID_PARAMS, MSG_BAD_POST_SIZE))
                    }
                    None if *k > max_post_number(self.height, self.registered) => {
                        self.refusals += 1;
                        Err(TwisterError::refused(
                            RPC_INVALID_PARAMS,
                            too_many_posts(USER),
                        ))
                    }
                    None => {
                        self.store(*k, to, text);
                        Ok(())
                    }
                };
                Some((*id, Reply::Posted(r)))
            }
            Effect::OwnLastHave { id } => {
                let last = self.posts.keys().next_back().copied().unwrap_or(-1);
                Some((
                    *id,
                    Reply::LastHave(Ok(BTreeMap::from([(USER.into(), last)]))),
                ))
            }
            Effect::Height { id } => Some((
                *id,
                Reply::Height(if self.height_unknown {
                    Err(TwisterError::Transport("timed out".into()))
                } else {
                    Ok(Some(self.height))
                }),
            )),
            _ => {
                self.calls -= 1;
                None
            }
        }
    }

    fn store(&mut self, k: i64, to: &Option<String>, text: &str) {
        // twisterd ignores a number already used.
        self.posts
            .entry(k)
            .or_insert_with(|| (to.clone(), text.to_string()));
    }

    /// Every message stored, in post-number order.
    fn messages(&self) -> Vec<wire::Item> {
        self.posts
            .values()
            .flat_map(|(_, text)| wire::decode_items(text).unwrap())
            .collect()
    }
}

/// The fake clock and what the driver saw.
struct Run {
    now: Instant,
    outbox: Outbox,
    node: FakeNode,
    logs: Vec<(Level, String)>,
    dropped: Vec<(Reason, String)>,
    deadlines: usize,
}

fn settings(format: WireFormat) -> Settings {
    Settings {
        user: USER.into(),
        wire_format: format,
        batch_delay: Duration::from_millis(50),
        max_message_bytes: 65536,
    }
}

impl Run {
    fn new(format: WireFormat) -> Self {
        Run {
            now: Instant::now(),
            outbox: Outbox::new(settings(format), 0, 0, Default::default()),
            node: FakeNode::new(),
            logs: Vec::new(),
            dropped: Vec::new(),
            deadlines: 0,
        }
    }

    fn push(&mut self, m: Message, to: Option<&str>) {
        let item = self.outbox.prepare(m);
        self.outbox.push(item, to.map(String::from), self.now);
        self.drive();
    }

    /// Carries out the effects as the worker does, answering from the fake node.
    fn drive(&mut self) {
        while let Some(e) = self.outbox.poll_effect() {
            match &e {
                Effect::Log(level, line) => self.logs.push((*level, line.clone())),
                Effect::Dropped(reason, detail) => self.dropped.push((*reason, detail.clone())),
                Effect::StateChanged => {}
                _ => {
                    let (id, reply) = self.node.answer(&e).unwrap();
                    self.outbox.handle_reply(id, reply, self.now);
                }
            }
        }
    }

    /// The next deadline, checked never to be in the past.
    fn deadline(&mut self) -> Option<Instant> {
        let d = self.outbox.poll_timeout(self.now);
        if let Some(d) = d {
            assert!(d >= self.now, "a deadline in the past");
            self.deadlines += 1;
        }
        d
    }

    /// Jumps the clock to the next deadline and handles it; false when there is none.
    fn step(&mut self) -> bool {
        let Some(d) = self.deadline() else {
            return false;
        };
        self.now = d;
        self.outbox.handle_timeout(self.now);
        self.drive();
        true
    }

    /// Steps until nothing is due (bounded).
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the outbox never settles");
    }

    fn logged(&self, part: &str) -> bool {
        self.logs.iter().any(|(_, l)| l.contains(part))
    }
}

fn msg(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
    }
}

/// splitmix64: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn message(&mut self) -> Message {
        let topic_len = 1 + self.below(60) as usize;
        let topic: String = (0..topic_len)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect();
        // Mostly small, sometimes near or over one post.
        let len = match self.below(10) {
            0 => self.below(2500),
            _ => self.below(200),
        } as usize;
        let payload: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        Message {
            topic,
            payload,
            qos: self.below(3) as u8,
            retain: self.below(2) == 1,
        }
    }
}

/// The post's header with the widest fields a real post can have.
fn worst(k: i64) -> PostHeader<'static> {
    PostHeader {
        user: USER,
        k,
        lastk: Some(k),
        height: 99_999_999,
        time: 9_999_999_999,
        reply: None,
    }
}

#[test]
fn posts_never_exceed_the_limit_and_are_full_at_the_exact_boundary() {
    for seed in 0..40 {
        let mut rng = Rng(seed);
        let mut run = Run::new(WireFormat::V1);
        let to = (seed % 2 == 1).then_some("bob");
        let sent: Vec<Message> = (0..60).map(|_| rng.message()).collect();
        for m in &sent {
            run.push(m.clone(), to);
        }
        run.settle();
        let posts: Vec<(i64, String)> = run
            .node
            .posts
            .iter()
            .map(|(k, (_, t))| (*k, t.clone()))
            .collect();
        for (i, (k, text)) in posts.iter().enumerate() {
            let size = match to {
                None => twister_rules::post_size(&worst(*k), text),
                Some(u) => twister_rules::dm_size(&worst(*k), u, text.len()),
            };
            assert!(
                size <= MAX_POST_BYTES,
                "seed {seed}: post {k} is {size} bytes"
            );
            // Full: the next post's first item would not have fit in this one.
            let Some((_, next)) = posts.get(i + 1) else {
                continue;
            };
            let first = wire::decode_items(next).unwrap().remove(0);
            let item = match first.fragment {
                Some(_) => continue, // a fragment is cut to fit a post of its own
                None => Queued::new(first.message, WireFormat::V1).encoded,
            };
            let grown = text.len() + 1 + item.len();
            let limit = match to {
                None => twister_rules::max_post_ascii(&worst(*k)),
                Some(u) => twister_rules::max_dm_bytes(&worst(*k), u),
            };
            let is_fragment_post = wire::decode_items(text)
                .unwrap()
                .iter()
                .any(|it| it.fragment.is_some());
            if !is_fragment_post {
                assert!(
                    grown > limit,
                    "seed {seed}: post {k} had room for the next item"
                );
            }
        }
        // Everything arrived, in order, joined back from its fragments.
        let mut joiner = Reassembler::new(Limits::default());
        let mut got = Vec::new();
        for it in run.node.messages() {
            match it.fragment {
                None => got.push(it.message),
                Some(f) => {
                    if let Some(m) = joiner.add(USER, f, it.message, run.now).unwrap() {
                        got.push(m)
                    }
                }
            }
        }
        assert_eq!(got, sent, "seed {seed}");
        assert!(run.outbox.is_empty());
        assert!(run.deadlines > 0);
    }
}

#[test]
fn post_numbers_continue_across_restarts_and_past_another_writer() {
    let mut run = Run::new(WireFormat::V1);
    for i in 0..3 {
        run.push(msg("t", format!("{i}").as_bytes()), None);
        run.settle();
    }
    assert_eq!(
        run.node.posts.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // A new outbox from the saved numbers goes on where the last one stopped.
    let (k, seq) = (run.outbox.next_k(), run.outbox.seq());
    assert_eq!((k, seq), (3, 3));
    run.outbox = Outbox::new(settings(WireFormat::V1), k, seq, run.outbox.counters);
    // twisterd's own last number is behind: it does not move us back.
    run.outbox.k_at_least(2);
    run.push(msg("t", b"3"), None);
    run.settle();
    assert!(run.node.posts.contains_key(&3));
    // Another writer used 7: we move past it, and say so.
    run.outbox.own_last(7, run.now);
    run.drive();
    assert!(run.logged("another writer"));
    run.push(msg("t", b"8"), None);
    run.settle();
    assert_eq!(run.node.posts.keys().next_back(), Some(&8));
    assert_eq!(run.outbox.counters.posts, 5);
}

#[test]
fn a_budget_refusal_waits_for_the_block_that_allows_the_post() {
    let mut run = Run::new(WireFormat::V1);
    run.node.height = 100;
    run.node.registered = 100; // budget: k <= 20
    for i in 0..25 {
        run.push(msg("t", format!("{i}").as_bytes()), None);
        run.settle();
    }
    assert_eq!(run.node.posts.len(), 21);
    assert_eq!(run.node.refusals, 1, "refused once, then waits");
    assert!(run.outbox.waiting_for_a_block());
    assert_eq!(
        run.outbox.poll_timeout(run.now),
        None,
        "no timer while waiting"
    );
    // Polls at the same height: no post tried.
    run.outbox.watch_height();
    run.drive();
    run.settle();
    assert_eq!((run.node.posts.len(), run.node.refusals), (21, 1));
    // The next block allows two more posts: what waited goes in the first.
    run.node.height = 101;
    run.outbox.watch_height();
    run.drive();
    assert!(run.logged("chain at height 101: posting again"));
    run.settle();
    assert_eq!(run.node.posts.len(), 22);
    assert!(run.outbox.is_empty());
    run.push(msg("t", b"25"), None);
    run.settle();
    assert_eq!(run.node.posts.len(), 23, "k 22 allowed at 101");
    run.push(msg("t", b"26"), None);
    run.settle();
    assert_eq!(run.node.refusals, 2);
    // Refused at 101, k 23 tells the registration exactly: 2 * (h - 100) + 20 >= 23 first at 102.
    assert!(run.logged("posting at height 102"));
    run.node.height = 102;
    run.outbox.watch_height();
    run.drive();
    run.settle();
    assert_eq!(run.node.posts.len(), 24);
    assert!(run.outbox.is_empty());
    assert_eq!(run.outbox.counters.budget_waits, 2);
    assert_eq!(run.node.messages().len(), 27, "every message once");
    // No number used twice for different text.
    assert_eq!(
        run.node.posts.keys().copied().collect::<Vec<_>>(),
        (0..24).collect::<Vec<_>>()
    );
}

#[test]
fn a_budget_refusal_with_the_height_unknown_backs_off() {
    let mut run = Run::new(WireFormat::V1);
    run.node.height = 100;
    run.node.registered = 100;
    run.outbox.k_at_least(21);
    run.node.height_unknown = true;
    run.push(msg("t", b"x"), None);
    let before = run.now;
    assert!(run.step());
    assert!(!run.outbox.waiting_for_a_block());
    let retry = run.deadline().unwrap();
    assert!(retry > before + Duration::from_millis(50), "backed off");
}

#[test]
fn a_post_of_unknown_outcome_is_settled_before_its_number_is_reused() {
    // Stored after all: found by the next flush's getlasthave, never sent again.
    let mut run = Run::new(WireFormat::V1);
    run.node.faults.push_back(Fault::TimeoutStored);
    run.push(msg("t", b"a"), None);
    assert!(run.step());
    assert!(run.logged("no answer to post 0"));
    assert_eq!(run.outbox.len(), 1, "kept until settled");
    run.push(msg("t", b"b"), None);
    run.settle();
    assert!(run.logged("post 0 (outcome unknown) was stored by twisterd"));
    let texts: Vec<&String> = run.node.posts.values().map(|(_, t)| t).collect();
    assert_eq!(texts.len(), 2);
    assert_eq!(run.node.messages().len(), 2, "a once, b once");
    assert_eq!(run.outbox.counters.unknown_outcomes, 1);

    // Not stored: the same text goes again under the same number, before anything else.
    let mut run = Run::new(WireFormat::V1);
    run.node.faults.push_back(Fault::Timeout);
    run.push(msg("t", b"a"), None);
    assert!(run.step());
    let first_text = {
        let mut probe = Run::new(WireFormat::V1);
        probe.push(msg("t", b"a"), None);
        probe.settle();
        probe.node.posts[&0].1.clone()
    };
    run.push(msg("t", b"b"), None);
    run.settle();
    assert!(run.logged("sending it again, the same text under the same number"));
    assert_eq!(
        run.node.posts[&0].1, first_text,
        "k 0 carries exactly the first text"
    );
    assert_eq!(run.node.messages().len(), 2);

    // Settled by the poll's getlasthave too.
    let mut run = Run::new(WireFormat::V1);
    run.node.faults.push_back(Fault::TimeoutStored);
    run.push(msg("t", b"a"), None);
    assert!(run.step());
    run.outbox.own_last(0, run.now);
    run.drive();
    assert!(run.outbox.is_empty());
    assert_eq!(run.outbox.next_k(), 1);
}

#[test]
fn stopping_with_a_post_of_unknown_outcome_never_reuses_its_number() {
    let mut run = Run::new(WireFormat::V1);
    run.node.faults.push_back(Fault::Timeout);
    run.push(msg("t", b"a"), None);
    assert!(run.step());
    run.outbox.stop();
    run.drive();
    assert!(run.logged("stopping before knowing whether twisterd stored post 0"));
    assert_eq!(run.outbox.next_k(), 1);
    assert_eq!(run.outbox.unsent().len(), 1, "its message stays queued");
}

#[test]
fn outages_back_off_doubling_up_to_a_cap_and_no_deadline_is_in_the_past() {
    let mut run = Run::new(WireFormat::V1);
    run.node.faults.extend(std::iter::repeat_n(Fault::Down, 12));
    run.push(msg("t", b"a"), None);
    let mut waits = Vec::new();
    let mut last = run.now;
    while !run.node.faults.is_empty() {
        assert!(run.step());
        let next = run.deadline().unwrap();
        waits.push(next - run.now);
        last = last.max(next);
    }
    assert_eq!(waits[0], Duration::from_millis(250));
    assert_eq!(waits[1], Duration::from_millis(500));
    assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*waits.last().unwrap(), Duration::from_secs(30));
    // Up again: posted, and the backoff starts over.
    run.settle();
    assert_eq!(run.node.posts.len(), 1);
    run.push(msg("t", b"b"), None);
    let d = run.deadline().unwrap();
    assert_eq!(
        d - run.now,
        Duration::from_millis(50),
        "just the batch delay"
    );
    // A deadline already passed comes back as now, never before.
    let late = d + Duration::from_secs(5);
    assert_eq!(run.outbox.poll_timeout(late), Some(late));
}

#[test]
fn a_message_too_large_for_a_post_is_cut_and_joined_or_dropped_beyond_the_limit() {
    let mut run = Run::new(WireFormat::V1);
    let big: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
    run.push(msg("big", &big), Some("bob"));
    run.settle();
    assert_eq!(run.outbox.counters.fragmented, 1);
    assert!(run.node.posts.len() >= 5, "{} posts", run.node.posts.len());
    let mut joiner = Reassembler::new(Limits::default());
    let mut whole = None;
    // Any order joins back.
    for it in run.node.messages().into_iter().rev() {
        let f = it.fragment.unwrap();
        if let Some(m) = joiner.add(USER, f, it.message, run.now).unwrap() {
            whole = Some(m);
        }
    }
    assert_eq!(whole, Some(msg("big", &big)));

    let mut run = Run::new(WireFormat::V1);
    run.push(msg("huge", &vec![1u8; 70_000]), None);
    run.settle();
    assert!(run.node.posts.is_empty());
    assert_eq!(run.dropped.len(), 1);
    assert_eq!(run.dropped[0].0, Reason::TooBig);
    assert!(run.outbox.is_empty());
}

#[test]
fn the_poc_format_posts_one_message_each_and_warns_what_the_2014_bridge_loses() {
    let mut run = Run::new(WireFormat::Poc);
    run.push(msg("a", b"1"), None);
    run.push(msg("b", b"2"), None);
    run.push(msg("long", &[b'x'; 200]), None);
    run.settle();
    assert_eq!(run.node.posts.len(), 3);
    assert_eq!(run.dropped.len(), 1);
    assert_eq!(run.dropped[0].0, Reason::SplitForThe2014Bridge);
    // Too big for a post: the poc format cannot cut it.
    run.push(msg("big", &[b'x'; 3000]), None);
    run.settle();
    assert_eq!(run.dropped.last().unwrap().0, Reason::TooBig);
}

#[test]
fn a_single_message_twisterd_finds_too_large_is_dropped_and_the_rest_goes_on() {
    let mut run = Run::new(WireFormat::V1);
    run.node.faults.push_back(Fault::TooLarge);
    run.push(msg("a", b"1"), None);
    assert!(run.step());
    assert_eq!(run.dropped.len(), 1);
    assert!(run.logged("too large"));
    run.push(msg("b", b"2"), None);
    run.settle();
    assert_eq!(run.node.posts.len(), 1);
    assert!(run.node.posts[&0].1.contains("\"b\""));
}

#[test]
fn batching_waits_the_batch_delay_and_a_busy_flush_sends_at_most_32_posts() {
    let mut run = Run::new(WireFormat::V1);
    let start = run.now;
    run.push(msg("t", b"1"), None);
    assert_eq!(run.deadline(), Some(start + Duration::from_millis(50)));
    run.outbox.handle_timeout(start + Duration::from_millis(49));
    run.drive();
    assert!(run.node.posts.is_empty(), "not before the batch delay");
    // 40 DMs to 40 users: one post each, 32 in the first flush.
    for u in 0..40 {
        run.push(msg("t", b"x"), Some(&format!("user{u}")));
    }
    assert!(run.step());
    assert_eq!(run.node.posts.len(), 32);
    run.settle();
    assert_eq!(run.node.posts.len(), 41);
}

#[test]
fn flush_now_ignores_the_batch_delay_for_a_stopping_broker() {
    let mut run = Run::new(WireFormat::V1);
    run.push(msg("t", b"1"), None);
    run.outbox.flush_now(1, run.now);
    run.drive();
    assert_eq!(run.node.posts.len(), 1);
}

#[test]
fn queued_messages_and_fragments_survive_a_restart_through_the_state_file() {
    let mut run = Run::new(WireFormat::V1);
    run.node.faults.push_back(Fault::Down);
    run.push(msg("big", &vec![7u8; 4000]), Some("bob"));
    assert!(run.step()); // the DM's message is cut, its first fragment fails
    assert_eq!(run.outbox.counters.fragmented, 1);
    run.push(msg("a", b"1"), None);
    let unsent = run.outbox.unsent();
    assert!(unsent.len() >= 4, "{unsent:?}");
    let mut next = Run::new(WireFormat::V1);
    for u in &unsent {
        let to = match &u.to {
            crate::state::Destination::Direct(user) => Some(user.clone()),
            _ => None,
        };
        let item = Queued::restored(&u.item, WireFormat::V1).unwrap();
        if to.is_some() {
            assert_eq!(item.payload, Payload::Fragment);
        }
        next.outbox.push(item, to, next.now);
    }
    next.settle();
    let mut joiner = Reassembler::new(Limits::default());
    let mut got = Vec::new();
    for it in next.node.messages() {
        match it.fragment {
            None => got.push(it.message),
            Some(f) => got.extend(joiner.add(USER, f, it.message, next.now).unwrap()),
        }
    }
    assert_eq!(got, vec![msg("a", b"1"), msg("big", &vec![7u8; 4000])]);
    assert_eq!(next.outbox.counters.fragmented, 0, "not cut again");
}

#[test]
fn a_reply_to_another_request_is_ignored() {
    let mut run = Run::new(WireFormat::V1);
    run.push(msg("t", b"1"), None);
    run.now += Duration::from_millis(50);
    run.outbox.handle_timeout(run.now);
    let Some(Effect::Post { id, .. }) = run.outbox.poll_effect() else {
        panic!("a post");
    };
    run.outbox
        .handle_reply(id + 1, Reply::Posted(Ok(())), run.now);
    assert_eq!(run.outbox.len(), 1, "not taken as stored");
    assert_eq!(
        run.outbox.poll_timeout(run.now),
        None,
        "still waiting for its answer"
    );
    run.outbox.handle_reply(id, Reply::Posted(Ok(())), run.now);
    assert!(run.outbox.is_empty());
}
