//! Pacing, the reserve, conflation and the budget's log lines, driven against the fake twisterd with
//! a fake clock (every deadline checked never to be in the past by `Run::deadline`).

use super::fake::*;
use super::{Conflation, Learnt, Outbox};
use crate::config::{OverBudget, WireFormat};
use crate::drops::Reason;
use crate::wire::Message;
use std::time::Duration;

const DELAY: Duration = Duration::from_millis(50);

/// A user registered at `registered`, known exactly, the chain at `height`, `reserve` posts kept.
fn known(registered: i64, height: i64, reserve: i64) -> Run {
    let mut run = Run::new(WireFormat::V2);
    run.node.registered = registered;
    run.node.height = height;
    let mut s = settings(WireFormat::V2);
    s.reserve = reserve;
    run.outbox = Outbox::new(s, 0, 0, Default::default()).with_learnt(Learnt {
        registered_at_least: Some(registered),
        registered_at_most: Some(registered),
        refused_once: true,
    });
    run
}

fn reading(i: usize) -> Message {
    Message {
        topic: format!("sensors/{}", i % 7),
        payload: format!("{{\"t\":{},\"v\":{}}}", 1000 + i, i % 50).into_bytes(),
        qos: 1,
        retain: false,
    }
}

/// A reading that compresses little (about 30 to a post).
fn noisy(rng: &mut Rng) -> Message {
    let payload: String = (0..24).map(|_| format!("{:x}", rng.below(16))).collect();
    Message {
        topic: format!("sensors/{}", rng.below(100)),
        payload: payload.into_bytes(),
        qos: 1,
        retain: false,
    }
}

/// The outbox learns the height from the first post's answer.
fn first_post(run: &mut Run) {
    run.push(reading(0), None);
    run.settle();
    assert_eq!(run.node.posts.len(), 1);
}

/// Like the worker: the height once per poll interval.
fn poll(run: &mut Run) {
    run.outbox.watch_height(run.now);
    run.drive();
}

#[test]
fn an_ample_budget_posts_after_the_batch_delay() {
    let mut run = known(0, 1000, 4);
    first_post(&mut run);
    let t = run.now;
    run.push(reading(1), None);
    assert_eq!(run.deadline(), Some(t + DELAY));
    assert!(!run.outbox.paced());
}

#[test]
fn a_scarce_budget_fills_posts_and_sends_a_full_one_at_once() {
    // Registered one block ago: 22 posts, 4 kept back.
    let mut run = known(999, 1000, 4);
    first_post(&mut run);
    assert!(run.outbox.paced());
    let t = run.now;
    run.push(reading(1), None);
    let wait = run.deadline().unwrap() - t;
    assert!(
        wait > Duration::from_secs(10),
        "a lone message waits for others: {wait:?}"
    );
    assert!(
        wait <= Duration::from_secs(300),
        "at most half a block: {wait:?}"
    );
    // Enough for more than one post: the full one goes after the batch delay only.
    let mut i = 2;
    while run.deadline().unwrap() > run.now + DELAY {
        run.push(reading(i), None);
        i += 1;
        assert!(i < 2000, "never full");
    }
    assert!(run.step());
    assert_eq!(run.node.posts.len(), 2);
    let carried = run.node.messages().len() - 1;
    assert!(carried > 50, "a full post: {carried} messages");
    assert_eq!(
        run.outbox.len(),
        i - 1 - carried,
        "the rest waits to fill the next"
    );
    assert!(run.deadline().unwrap() > run.now + Duration::from_secs(10));
}

#[test]
fn the_reserve_is_kept_and_the_next_block_allows_the_next_post() {
    let mut run = known(999, 1000, 4);
    first_post(&mut run);
    // A backlog of full posts: posts go until only the reserve is left (k <= 22, 4 kept).
    let mut rng = Rng(7);
    for _ in 1..3000 {
        run.push(noisy(&mut rng), None);
    }
    run.settle();
    assert_eq!(run.node.posts.len(), 19, "k 0..=18 used, 19..=22 kept");
    assert_eq!(run.outbox.posts_left(), Some(4));
    assert_eq!(run.node.refusals, 0);
    assert_eq!(
        run.outbox.poll_timeout(run.now),
        None,
        "no timer: a block is waited for"
    );
    run.outbox.handle_timeout(run.now);
    run.drive();
    assert!(
        run.logged("out of post budget: 4 posts left at height 1000, registered at 999 (4 kept in reserve), next post allowed at height 1001"),
        "{:?}",
        run.logs
    );
    // Polling at the same height changes nothing.
    poll(&mut run);
    run.settle();
    assert_eq!(run.node.posts.len(), 19);
    // The next block: two more posts, and both go (full posts).
    run.node.height = 1001;
    poll(&mut run);
    run.settle();
    assert_eq!(run.node.posts.len(), 21);
    assert_eq!(run.node.refusals, 0);
    // What may use the reserve goes while any post is left, behind what waited before it.
    let queued = run.outbox.len();
    let item = run.outbox.prepare(noisy(&mut rng), None);
    run.outbox.push_reserved(item, None, run.now);
    assert!(run.outbox.spend_reserve());
    run.settle();
    assert!(run.node.posts.len() > 21);
    assert!(
        run.outbox.len() < queued,
        "the posts before the reserved item went too"
    );
    assert!(run.node.posts.len() <= 25, "k <= 24 at height 1001");
    assert_eq!(run.node.refusals, 0);
}

#[test]
fn a_partial_post_that_waited_for_a_block_goes_when_the_block_comes() {
    let mut run = known(999, 1000, 0);
    first_post(&mut run);
    // Use the budget up with full posts.
    let mut rng = Rng(3);
    while run.outbox.posts_left() != Some(0) {
        run.push(noisy(&mut rng), None);
        run.settle();
    }
    for _ in 0..3 {
        run.push(noisy(&mut rng), None);
    }
    run.settle();
    assert_eq!(run.outbox.len(), 3, "a partial post waits");
    assert_eq!(run.outbox.poll_timeout(run.now), None);
    poll(&mut run);
    // The block comes a minute later.
    run.now += Duration::from_secs(60);
    run.node.height = 1001;
    poll(&mut run);
    let posts = run.node.posts.len();
    assert_eq!(
        run.deadline(),
        Some(run.now),
        "due at once, not after a fill delay"
    );
    assert!(run.step());
    assert_eq!(run.node.posts.len(), posts + 1);
    assert!(run.outbox.is_empty());
}

#[test]
fn at_2_msg_per_s_a_fresh_users_posts_last_and_the_budget_is_never_exceeded() {
    // Registered one block before the first start: nothing known, 22 posts.
    let mut run = Run::new(WireFormat::V2);
    run.unknown_registration();
    let mut s = settings(WireFormat::V2);
    s.reserve = 4;
    run.outbox = Outbox::new(s, 0, 0, Default::default());
    run.node.registered = 999;
    run.node.height = 1000;
    let start = run.now;
    let mut sent = 0;
    let mut posts_after_a_minute = None;
    // An hour at 2 msg/s, a block every 10 minutes, the poll every second.
    for second in 0..3600u64 {
        for half in 0..2 {
            let at = start + Duration::from_millis(second * 1000 + half * 500);
            run.advance_to(at);
            run.push(reading(sent), None);
            sent += 1;
        }
        if second % 600 == 599 {
            run.node.height += 1;
        }
        poll(&mut run);
        run.outbox.handle_timeout(run.now);
        run.drive();
        if second == 60 {
            posts_after_a_minute = Some(run.node.posts.len());
        }
    }
    let first_minute = posts_after_a_minute.unwrap();
    assert!(
        first_minute <= 8,
        "{first_minute} posts in the first minute"
    );
    // The hour's budget: 22 + 2 per block.
    assert!(run.node.posts.len() <= 22 + 12, "{}", run.node.posts.len());
    assert!(
        run.node.refusals <= 1,
        "at most the learning refusal: {}",
        run.node.refusals
    );
    // Then blocks until everything is posted: every message once, in order.
    for _ in 0..200 {
        if run.outbox.is_empty() {
            break;
        }
        run.node.height += 1;
        let at = run.now + Duration::from_secs(600);
        run.advance_to(at);
        poll(&mut run);
        run.settle();
    }
    let got: Vec<Vec<u8>> = run
        .node
        .messages()
        .into_iter()
        .map(|i| i.message.payload)
        .collect();
    let want: Vec<Vec<u8>> = (0..sent).map(|i| reading(i).payload).collect();
    assert_eq!(got, want);
    assert!(run.node.refusals <= 1);
    assert!(
        run.logged("post budget short"),
        "{:?}",
        &run.logs[..5.min(run.logs.len())]
    );
    assert!(run.logged("outbox: "), "a status line");
    assert!(run.logged("time to drain"));
}

#[test]
fn over_budget_a_conflating_rule_keeps_the_newest_qos_0_value_per_topic() {
    let mut run = known(999, 1000, 20);
    let mut cfg = crate::config::parse(
        &[
            ("rpc_user", "u"),
            ("rpc_password", "p"),
            ("user", USER),
            ("publish", "sensors/#"),
            ("publish", "alarms/#"),
            ("over_budget", "sensors/# conflate"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>(),
    )
    .unwrap();
    cfg.over_budget.push(("alarms/#".into(), OverBudget::Queue));
    let mut s = settings(WireFormat::V2);
    s.reserve = 20;
    s.conflation = Conflation::from_config(&cfg);
    let learnt = run.outbox.learnt();
    run.outbox = Outbox::new(s, 0, 0, Default::default()).with_learnt(learnt);
    first_post(&mut run);
    // 22 left at 1000, 20 kept: 1 spendable, so paced.
    assert!(run.outbox.paced());
    let m = |topic: &str, v: usize, qos: u8| Message {
        topic: topic.into(),
        payload: v.to_string().into_bytes(),
        qos,
        retain: false,
    };
    for v in 0..100 {
        run.push(m(&format!("sensors/{}", v % 5), v, 0), None);
        run.push(m("sensors/q1", v, 1), None);
        run.push(m("alarms/a", v, 0), None);
    }
    assert_eq!(
        run.outbox.len(),
        5 + 100 + 100,
        "newest of 5 topics, every QoS 1, every alarm"
    );
    assert_eq!(run.outbox.counters.conflated, 95);
    assert!(run.dropped.iter().all(|(r, _)| *r == Reason::Conflated));
    // Delivered: the newest value of each conflated topic, in the order they were last written.
    for _ in 0..20 {
        run.node.height += 1;
        poll(&mut run);
        run.settle();
    }
    assert!(run.outbox.is_empty());
    let got: Vec<(String, String)> = run
        .node
        .messages()
        .into_iter()
        .skip(1)
        .map(|i| {
            (
                i.message.topic,
                String::from_utf8(i.message.payload).unwrap(),
            )
        })
        .filter(|(t, _)| t.starts_with("sensors/") && t != "sensors/q1")
        .collect();
    let newest: Vec<(String, String)> = (95..100)
        .map(|v| (format!("sensors/{}", v % 5), v.to_string()))
        .collect();
    assert_eq!(got, newest);
    assert_eq!(run.node.refusals, 0);
}

#[test]
fn with_an_ample_budget_nothing_is_conflated() {
    let mut run = known(0, 1000, 4);
    let mut s = settings(WireFormat::V2);
    s.conflation = Conflation::from_config(
        &crate::config::parse(
            &[
                ("rpc_user", "u"),
                ("rpc_password", "p"),
                ("user", USER),
                ("publish", "sensors/#"),
                ("over_budget", "sensors/# conflate"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
        )
        .unwrap(),
    );
    let learnt = run.outbox.learnt();
    run.outbox = Outbox::new(s, 0, 0, Default::default()).with_learnt(learnt);
    first_post(&mut run);
    for v in 0..10u8 {
        run.push(
            Message {
                topic: "sensors/a".into(),
                payload: vec![v],
                qos: 0,
                retain: false,
            },
            None,
        );
    }
    assert_eq!(run.outbox.len(), 10);
    assert_eq!(run.outbox.counters.conflated, 0);
}

#[test]
fn the_status_line_is_rate_limited() {
    // 2 posts beyond the reserve: a lone message waits minutes for others.
    let mut run = known(999, 1000, 20);
    first_post(&mut run);
    run.push(reading(1), None);
    let start = run.now;
    for s in 0..=180u64 {
        run.outbox.handle_timeout(start + Duration::from_secs(s));
        run.drive();
    }
    let lines = run
        .logs
        .iter()
        .filter(|(_, l)| l.starts_with("outbox: "))
        .count();
    assert_eq!(lines, 3, "one a minute while queued: {:?}", run.logs);
    assert!(run.logged("outbox: 1 messages queued"));
}

#[test]
fn a_conflated_value_releases_its_spool_record() {
    let mut run = known(999, 1000, 20);
    let mut s = settings(WireFormat::V2);
    s.reserve = 20;
    s.conflation = Conflation::from_config(
        &crate::config::parse(
            &[
                ("rpc_user", "u"),
                ("rpc_password", "p"),
                ("user", USER),
                ("publish", "sensors/#"),
                ("over_budget", "sensors/# conflate"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
        )
        .unwrap(),
    );
    let learnt = run.outbox.learnt();
    run.outbox = Outbox::new(s, 0, 0, Default::default()).with_learnt(learnt);
    first_post(&mut run);
    assert!(run.outbox.paced());
    for n in 1..=4u64 {
        let m = Message {
            topic: "sensors/a".into(),
            payload: n.to_string().into_bytes(),
            qos: 0,
            retain: false,
        };
        let item = run
            .outbox
            .prepare(m, Some(crate::wire::MessageId { epoch: 1, seq: n }));
        run.outbox.push(item, None, run.now);
        run.drive();
    }
    assert_eq!((run.outbox.len(), run.outbox.counters.conflated), (1, 3));
    run.settle();
    assert!(run.outbox.is_empty());
    run.outbox.own_last(run.node.last(), run.now);
    run.drive();
    run.outbox.handle_timeout(run.now + HOLD);
    assert_eq!(
        run.outbox.records_taken(),
        4,
        "the replaced values do not hold the spool"
    );
}
