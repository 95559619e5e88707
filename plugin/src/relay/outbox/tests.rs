//! Posting decisions: numbers, budget, unknown outcomes, backoff, replies.

use super::fake::*;
use super::Outbox;
use crate::config::WireFormat;
use crate::relay::{Effect, Reply};
use std::time::Duration;

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
    run.unknown_registration();
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
    run.outbox.watch_height(run.now);
    run.drive();
    run.settle();
    assert_eq!((run.node.posts.len(), run.node.refusals), (21, 1));
    // The next block allows two more posts: what waited goes in the first.
    run.node.height = 101;
    run.outbox.watch_height(run.now);
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
    // The refusal told the registration: k 23 is not tried at 101 (2 * (h - 100) + 20 >= 23 first
    // at 102), and no timer runs while waiting for the block.
    assert_eq!(run.node.refusals, 1);
    assert_eq!(run.outbox.len(), 1);
    assert_eq!(run.outbox.poll_timeout(run.now), None);
    run.node.height = 102;
    run.outbox.watch_height(run.now);
    run.drive();
    run.settle();
    assert_eq!(run.node.posts.len(), 24);
    assert!(run.outbox.is_empty());
    assert_eq!(run.outbox.counters.budget_waits, 1);
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
    run.unknown_registration();
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
fn flush_now_ignores_the_batch_delay_for_a_stopping_broker() {
    let mut run = Run::new(WireFormat::V1);
    run.push(msg("t", b"1"), None);
    run.outbox.flush_now(1, run.now);
    run.drive();
    assert_eq!(run.node.posts.len(), 1);
}

#[test]
fn a_reply_to_another_request_is_ignored() {
    let mut run = Run::new(WireFormat::V1);
    run.push(msg("t", b"1"), None);
    run.now += Duration::from_millis(50);
    run.outbox.handle_timeout(run.now);
    assert_eq!(run.outbox.poll_effect(), Some(Effect::UseNumber(0)));
    let Some(Effect::Post { id, .. }) = run.outbox.poll_effect() else {
        panic!("a post");
    };
    run.outbox
        .handle_reply(id + 1, Reply::Posted(Ok(None)), run.now);
    assert_eq!(run.outbox.len(), 1, "not taken as stored");
    assert_eq!(
        run.outbox.poll_timeout(run.now),
        None,
        "still waiting for its answer"
    );
    run.outbox
        .handle_reply(id, Reply::Posted(Ok(None)), run.now);
    assert!(run.outbox.is_empty());
}

#[test]
fn message_ids_reach_the_posts_of_v1_and_v2_fragments_included_and_poc_carries_none() {
    use crate::wire::MessageId;
    for format in [WireFormat::V1, WireFormat::V2, WireFormat::Poc] {
        let mut run = Run::new(format);
        for seq in 1..=30u64 {
            let mut m = msg("sensors/a", format!("{seq}").as_bytes());
            if seq == 7 && format != WireFormat::Poc {
                // Cut into fragments: each carries the whole message's id.
                let mut x = 0x2545_f491_u64;
                m.payload = (0..6000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
            }
            let item = run.outbox.prepare(m, Some(MessageId { epoch: 9, seq }));
            run.outbox.push(item, None, run.now);
            run.drive();
        }
        run.settle();
        let ids: Vec<Option<u64>> = run
            .node
            .messages()
            .iter()
            .map(|it| it.id.map(|id| id.seq))
            .collect();
        if format == WireFormat::Poc {
            assert!(ids.iter().all(Option::is_none), "poc format unchanged");
            continue;
        }
        let mut expected: Vec<Option<u64>> = Vec::new();
        let fragments = ids.iter().filter(|i| **i == Some(7)).count();
        assert!(fragments > 1, "{format:?}: message 7 was cut");
        for seq in 1..=30u64 {
            let n = if seq == 7 { fragments } else { 1 };
            expected.extend(std::iter::repeat(Some(seq)).take(n));
        }
        assert_eq!(ids, expected, "{format:?}");
    }
}

#[test]
fn the_ids_of_posted_messages_are_told_once_their_post_is_stored() {
    use crate::wire::MessageId;
    let mut run = Run::new(WireFormat::V2);
    for seq in 1..=3u64 {
        let item = run
            .outbox
            .prepare(msg("t", b"x"), Some(MessageId { epoch: 4, seq }));
        run.outbox.push(item, None, run.now);
    }
    // Queued, not posted: nothing to tell (receipts wait for the post).
    assert!(run.outbox.take_posted().is_empty());
    run.settle();
    let told: Vec<u64> = run.outbox.take_posted().iter().map(|i| i.seq).collect();
    assert_eq!(told, [1, 2, 3]);
    assert!(run.outbox.take_posted().is_empty(), "told once");
}
