//! A scripted fake twisterd and a fake clock for the outbox's unit tests: no node, no sleeping. Every
//! deadline the outbox returns is checked never to be in the past.

use super::{Learnt, Outbox, Settings};
use crate::config::WireFormat;
use crate::drops::Reason;
use crate::relay::{Effect, Level, Reply};
use crate::twister::TwisterError;
use crate::wire::{self, Message};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use twister_rules::errors::{too_many_posts, MSG_BAD_POST_SIZE, RPC_INVALID_PARAMS};
use twister_rules::{max_post_number, PostHeader};

pub(super) use mqtt_twister_wire::Rng;

pub(super) const USER: &str = "alice";
/// How long confirmed posts are held for reposting.
pub(super) const HOLD: Duration = Duration::from_secs(60);

/// What the fake node does with the next post instead of storing it.
#[derive(Debug, Clone)]
pub(super) enum Fault {
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
pub(super) struct FakeNode {
    pub(super) height: i64,
    pub(super) registered: i64,
    pub(super) posts: BTreeMap<i64, (Option<String>, String)>,
    pub(super) faults: VecDeque<Fault>,
    /// Height reads fail while true.
    pub(super) height_unknown: bool,
    pub(super) refusals: usize,
    pub(super) calls: usize,
}

impl FakeNode {
    pub(super) fn new() -> Self {
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

    pub(super) fn answer(&mut self, effect: &Effect) -> Option<(u64, Reply)> {
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
                        // twisterd answers with the post, signed at the height below the chain's.
                        Ok(Some(self.height - 1))
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

    pub(super) fn store(&mut self, k: i64, to: &Option<String>, text: &str) {
        // twisterd ignores a number already used.
        self.posts
            .entry(k)
            .or_insert_with(|| (to.clone(), text.to_string()));
    }

    /// Forgets the newest `n` posts, as a twisterd killed right after storing them.
    pub(super) fn forget_newest(&mut self, n: usize) {
        for _ in 0..n {
            self.posts.pop_last();
        }
    }

    /// Our last post number as `getlasthave` tells it.
    pub(super) fn last(&self) -> i64 {
        self.posts.keys().next_back().copied().unwrap_or(-1)
    }

    /// Every message stored, in post-number order.
    pub(super) fn messages(&self) -> Vec<wire::Item> {
        self.posts
            .values()
            .flat_map(|(_, text)| wire::decode_items(text).unwrap())
            .collect()
    }
}

/// The fake clock and what the driver saw.
pub(super) struct Run {
    pub(super) now: Instant,
    pub(super) outbox: Outbox,
    pub(super) node: FakeNode,
    pub(super) logs: Vec<(Level, String)>,
    pub(super) dropped: Vec<(Reason, String)>,
    pub(super) deadlines: usize,
    /// Every number the outbox said it was about to use (`Effect::UseNumber`), in order.
    pub(super) used: Vec<i64>,
}

pub(super) fn settings(format: WireFormat) -> Settings {
    Settings {
        user: USER.into(),
        wire_format: format,
        batch_delay: Duration::from_millis(50),
        max_message_bytes: 65536,
        release_hold: HOLD,
        spool_records: true,
        reserve: 0,
        conflation: Default::default(),
    }
}

impl Run {
    /// A user registered long ago whose registration height the outbox knows: an ample budget.
    pub(super) fn new(format: WireFormat) -> Self {
        let known = Learnt {
            registered_at_least: Some(0),
            registered_at_most: Some(0),
            refused_once: true,
        };
        Run {
            now: Instant::now(),
            outbox: Outbox::new(settings(format), 0, 0, Default::default()).with_learnt(known),
            node: FakeNode::new(),
            logs: Vec::new(),
            dropped: Vec::new(),
            deadlines: 0,
            used: Vec::new(),
        }
    }

    /// The outbox knows nothing of our registration (a first start without a state file).
    pub(super) fn unknown_registration(&mut self) {
        let o = std::mem::replace(
            &mut self.outbox,
            Outbox::new(settings(WireFormat::V1), 0, 0, Default::default()),
        );
        self.outbox = o.with_learnt(Learnt::default());
    }

    pub(super) fn push(&mut self, m: Message, to: Option<&str>) {
        let item = self.outbox.prepare(m, None);
        self.outbox.push(item, to.map(String::from), self.now);
        self.drive();
    }

    /// Carries out the effects as the worker does, answering from the fake node.
    pub(super) fn drive(&mut self) {
        while let Some(e) = self.outbox.poll_effect() {
            match &e {
                Effect::Log(level, line) => self.logs.push((*level, line.clone())),
                Effect::Dropped(reason, detail) => self.dropped.push((*reason, detail.clone())),
                Effect::StateChanged => {}
                Effect::UseNumber(k) => self.used.push(*k),
                _ => {
                    let (id, reply) = self.node.answer(&e).unwrap();
                    self.outbox.handle_reply(id, reply, self.now);
                }
            }
        }
    }

    /// The next deadline, checked never to be in the past.
    pub(super) fn deadline(&mut self) -> Option<Instant> {
        let d = self.outbox.poll_timeout(self.now);
        if let Some(d) = d {
            assert!(d >= self.now, "a deadline in the past");
            self.deadlines += 1;
        }
        d
    }

    /// Jumps the clock to the next deadline and handles it; false when there is none.
    pub(super) fn step(&mut self) -> bool {
        let Some(d) = self.deadline() else {
            return false;
        };
        self.now = d;
        self.outbox.handle_timeout(self.now);
        self.drive();
        true
    }

    /// Handles every deadline up to `at` (bounded), then moves the clock to `at`.
    pub(super) fn advance_to(&mut self, at: Instant) {
        for _ in 0..10_000 {
            match self.deadline() {
                Some(d) if d <= at => {
                    self.now = d;
                    self.outbox.handle_timeout(self.now);
                    self.drive();
                }
                _ => {
                    self.now = self.now.max(at);
                    return;
                }
            }
        }
        panic!("the outbox keeps a deadline at {:?}", self.now);
    }

    /// Steps until nothing is due (bounded).
    pub(super) fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the outbox never settles");
    }

    pub(super) fn logged(&self, part: &str) -> bool {
        self.logs.iter().any(|(_, l)| l.contains(part))
    }
}

pub(super) fn msg(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
    }
}

/// A message of random topic, size (mostly small, sometimes near or over one post) and flags.
pub(super) fn random_message(rng: &mut Rng) -> Message {
    let topic_len = 1 + rng.below(60) as usize;
    let topic: String = (0..topic_len)
        .map(|_| char::from(b'a' + rng.below(26) as u8))
        .collect();
    let len = match rng.below(10) {
        0 => rng.below(2500),
        _ => rng.below(200),
    } as usize;
    let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    Message {
        topic,
        payload,
        qos: rng.below(3) as u8,
        retain: rng.below(2) == 1,
    }
}

/// The post's header with the widest fields a real post can have.
pub(super) fn worst(k: i64) -> PostHeader<'static> {
    PostHeader {
        user: USER,
        k,
        lastk: Some(k),
        height: 99_999_999,
        time: 9_999_999_999,
        reply: None,
    }
}
