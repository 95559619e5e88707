//! Packing: posts at the exact size limit, fragments, the poc format, queues across a restart.

use super::fake::*;
use super::{Payload, Queued};
use crate::config::WireFormat;
use crate::drops::Reason;
use crate::reassembly::{Limits, Reassembler};
use crate::wire::{self, Message};
use std::time::Duration;
use twister_rules::MAX_POST_BYTES;

#[test]
fn posts_never_exceed_the_limit_and_are_full_at_the_exact_boundary() {
    for seed in 0..40 {
        let mut rng = Rng(seed);
        let mut run = Run::new(WireFormat::V1);
        let to = (seed % 2 == 1).then_some("bob");
        let sent: Vec<Message> = (0..60).map(|_| random_message(&mut rng)).collect();
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
                None => Queued::new(first.message, WireFormat::V1, None).encoded,
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
fn v2_posts_never_exceed_the_limit_and_every_message_arrives_in_order() {
    for seed in 100..130 {
        let mut rng = Rng(seed);
        let mut run = Run::new(WireFormat::V2);
        let to = (seed % 2 == 1).then_some("bob");
        let sent: Vec<Message> = (0..60).map(|_| random_message(&mut rng)).collect();
        for m in &sent {
            run.push(m.clone(), to);
        }
        run.settle();
        for (k, (_, text)) in &run.node.posts {
            let size = match to {
                None => twister_rules::post_size(&worst(*k), text),
                Some(u) => twister_rules::dm_size(&worst(*k), u, text.len()),
            };
            assert!(
                size <= MAX_POST_BYTES,
                "seed {seed}: post {k} is {size} bytes"
            );
        }
        let mut joiner = Reassembler::new(Limits::default());
        let mut got = Vec::new();
        for it in run.node.messages() {
            match it.fragment {
                None => got.push(it.message),
                Some(f) => got.extend(joiner.add(USER, f, it.message, run.now).unwrap()),
            }
        }
        assert_eq!(got, sent, "seed {seed}");
    }
}
