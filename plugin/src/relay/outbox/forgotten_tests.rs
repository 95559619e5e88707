//! Release and forgotten posts, through the outbox: a record is released only once its post is
//! confirmed and held; a post twisterd forgets is posted again under a new number.

use super::fake::*;
use super::Queued;
use crate::config::WireFormat;
use crate::wire::{Item, MessageId};

fn payloads(items: &[Item]) -> Vec<String> {
    let mut out: Vec<String> = items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.message.payload).into_owned())
        .collect();
    out.sort();
    out
}

/// Queues message `n` (payload "n") as spool record `n`, posted alone.
fn push_record(run: &mut Run, n: u64, to: Option<&str>) {
    let item: Queued = run.outbox.prepare(
        msg(&format!("t/{n}"), n.to_string().as_bytes()),
        Some(MessageId { epoch: 1, seq: n }),
    );
    run.outbox.push(item, to.map(String::from), run.now);
    run.drive();
    run.settle();
}

#[test]
fn a_record_is_taken_once_its_post_is_confirmed_and_held() {
    let mut run = Run::new(WireFormat::V1);
    for n in 1..=3 {
        push_record(&mut run, n, None);
    }
    assert_eq!(run.node.posts.len(), 3);
    assert_eq!(run.outbox.records_taken(), 0, "answered, not confirmed");
    run.outbox.own_last(run.node.last(), run.now);
    run.drive();
    run.outbox.handle_timeout(run.now + HOLD / 2);
    assert_eq!(run.outbox.records_taken(), 0, "confirmed, held");
    assert_eq!(run.outbox.held_posts(), 3);
    run.outbox.handle_timeout(run.now + HOLD);
    assert_eq!(run.outbox.records_taken(), 3);
    assert_eq!(run.outbox.held_posts(), 0);
}

#[test]
fn posts_twisterd_forgets_are_posted_again_under_new_numbers() {
    let mut run = Run::new(WireFormat::V1);
    for n in 1..=4 {
        push_record(&mut run, n, if n == 4 { Some("bob") } else { None });
    }
    run.outbox.own_last(run.node.last(), run.now);
    run.drive();
    assert_eq!(run.node.last(), 3);
    // Killed right after storing 2 and 3 (3 the DM to bob), restarted at 1; peers may hold 2 and 3.
    run.node.forget_newest(2);
    run.outbox.own_last(run.node.last(), run.now);
    run.drive();
    assert!(run.logged("posting their 2 messages again under new numbers from 4"));
    run.settle();
    let ks: Vec<i64> = run.node.posts.keys().copied().collect();
    assert_eq!(ks, [0, 1, 4, 5], "2 and 3 never used again");
    assert_eq!(
        run.node.posts[&5].0.as_deref(),
        Some("bob"),
        "the DM stays a DM"
    );
    assert_eq!(payloads(&run.node.messages()), ["1", "2", "3", "4"]);
    let mut sorted = run.used.clone();
    sorted.dedup();
    assert_eq!(
        sorted,
        [0, 1, 2, 3, 4, 5],
        "each number announced before its post"
    );
    // Records 3 and 4 wait for their new posts to be confirmed and held.
    run.outbox.handle_timeout(run.now + HOLD);
    assert_eq!(run.outbox.records_taken(), 2);
    run.outbox.own_last(run.node.last(), run.now + HOLD);
    run.outbox.handle_timeout(run.now + 2 * HOLD);
    assert_eq!(run.outbox.records_taken(), 4);
}

#[test]
fn a_forgotten_post_goes_behind_a_post_of_unknown_outcome_at_the_head_of_its_queue() {
    let mut run = Run::new(WireFormat::V1);
    push_record(&mut run, 1, None);
    run.outbox.own_last(run.node.last(), run.now);
    run.drive();
    // The next post times out without being stored: its items stay at the head, its number reserved.
    run.node.faults.push_back(Fault::Timeout);
    let item: Queued = run
        .outbox
        .prepare(msg("t/2", b"2"), Some(MessageId { epoch: 1, seq: 2 }));
    run.outbox.push(item, None, run.now);
    run.now += std::time::Duration::from_secs(1);
    run.outbox.handle_timeout(run.now);
    run.drive();
    assert!(run.outbox.has_unknown_outcome());
    assert_eq!(run.node.posts.len(), 1);
    // Meanwhile twisterd restarted without post 0.
    run.node.forget_newest(1);
    run.outbox.own_last(run.node.last(), run.now);
    run.drive();
    run.settle();
    assert_eq!(payloads(&run.node.messages()), ["1", "2"]);
    let ks: Vec<i64> = run.node.posts.keys().copied().collect();
    assert!(!ks.contains(&0), "0 is never used again: {ks:?}");
    for (k, (_, text)) in &run.node.posts {
        assert_eq!(
            crate::wire::decode_items(text).unwrap().len(),
            1,
            "post {k} carries exactly what it was built with"
        );
    }
}
