//! Unit tests of the reassembler, with made-up instants for time.

use super::*;

fn part(topic: &str, bytes: &[u8]) -> Message {
    Message {
        topic: topic.into(),
        payload: bytes.to_vec(),
        qos: 1,
        retain: false,
    }
}

fn frag(id: u64, index: u32, count: u32) -> Fragment {
    Fragment { id, index, count }
}

#[test]
fn fragments_join_in_any_order_once_each() {
    let now = Instant::now();
    let mut r = Reassembler::default();
    assert_eq!(
        r.add("alice", frag(7, 2, 3), part("t", b"ghi"), now),
        Ok(None)
    );
    assert_eq!(
        r.add("alice", frag(7, 0, 3), part("t", b"abc"), now),
        Ok(None)
    );
    assert_eq!(
        r.add("alice", frag(7, 0, 3), part("t", b"abc"), now),
        Ok(None),
        "a duplicate changes nothing"
    );
    assert_eq!(r.stats.duplicates, 1);
    // Same id from another sender is another message.
    assert_eq!(r.add("bob", frag(7, 0, 2), part("u", b"x"), now), Ok(None));
    r.check_accounts();
    let whole = r
        .add("alice", frag(7, 1, 3), part("t", b"def"), now)
        .unwrap()
        .unwrap();
    assert_eq!(
        (whole.topic.as_str(), whole.payload.as_slice(), whole.qos),
        ("t", &b"abcdefghi"[..], 1)
    );
    r.check_accounts();
    assert_eq!(r.unfinished(), 1, "only bob's message is still held");
    let single = r.add("carol", frag(9, 0, 1), part("s", b"one"), now);
    assert_eq!(single.unwrap().unwrap().payload, b"one");
}

#[test]
fn a_fragment_that_contradicts_the_others_is_refused() {
    let now = Instant::now();
    let mut r = Reassembler::default();
    r.add("alice", frag(1, 0, 3), part("t", b"a"), now).unwrap();
    let contradicting = [
        (frag(1, 1, 4), part("t", b"b")),
        (frag(1, 1, 3), part("other", b"b")),
        (
            frag(1, 1, 3),
            Message {
                qos: 2,
                ..part("t", b"b")
            },
        ),
        (
            frag(1, 1, 3),
            Message {
                retain: true,
                ..part("t", b"b")
            },
        ),
        (frag(1, 0, 3), part("t", b"not a")),
    ];
    for (f, p) in contradicting {
        assert!(
            matches!(
                r.add("alice", f, p.clone(), now),
                Err(Refused::Contradicts { .. })
            ),
            "{f:?} {p:?}"
        );
        r.check_accounts();
    }
    assert!(matches!(
        r.add("alice", frag(1, 3, 3), part("t", b"x"), now),
        Err(Refused::Invalid { .. })
    ));
    assert!(matches!(
        r.add("alice", frag(1, 0, 0), part("t", b"x"), now),
        Err(Refused::Invalid { .. })
    ));
    assert_eq!(r.stats.refused, 7);
    r.add("alice", frag(1, 1, 3), part("t", b"b"), now).unwrap();
    let whole = r.add("alice", frag(1, 2, 3), part("t", b"c"), now).unwrap();
    assert_eq!(
        whole.unwrap().payload,
        b"abc",
        "the first of each index kept"
    );
    assert_eq!(r.cost(), 0);
}

/// The crafted post of issue 7: three fragment items, the second repeating the first's id and
/// index with a larger payload. The old byte count ignored the repeat, then subtracted the larger
/// payload: a panic in debug builds, an endless eviction loop in release builds.
#[test]
fn a_repeated_index_with_another_payload_keeps_the_accounts_exact() {
    let now = Instant::now();
    let mut r = Reassembler::default();
    assert_eq!(
        r.add("mallory", frag(5, 0, 2), part("t", b"a"), now),
        Ok(None)
    );
    let bigger = vec![b'B'; 1300];
    assert!(r
        .add("mallory", frag(5, 0, 2), part("t", &bigger), now)
        .is_err());
    r.check_accounts();
    let whole = r
        .add("mallory", frag(5, 1, 2), part("t", b"c"), now)
        .unwrap();
    assert_eq!(whole.unwrap().payload, b"ac");
    r.check_accounts();
    assert_eq!((r.cost(), r.unfinished()), (0, 0));
}

#[test]
fn a_flood_of_empty_fragments_is_bounded_per_sender_and_in_total() {
    let now = Instant::now();
    let mut r = Reassembler::default();
    let limits = r.limits();
    r.add("alice", frag(1, 0, 2), part("t", b"first half"), now)
        .unwrap();
    // The case of issue 7: 178,000 zero-length fragments, each opening a message.
    for id in 0..178_000u64 {
        assert_eq!(
            r.add("mallory", frag(id, 0, 2), part("z", b""), now),
            Ok(None)
        );
    }
    r.check_accounts();
    assert_eq!(r.unfinished(), 1 + limits.sender_messages);
    assert!(r.cost() < 1 + limits.sender_messages * 1024, "{}", r.cost());
    assert_eq!(r.stats.evicted, 178_000 - limits.sender_messages as u64);
    // Fragments of one message: each empty one costs its bookkeeping, up to the sender's limit.
    for index in 0..100_000u32 {
        let _ = r.add(
            "mallory",
            frag(u64::MAX, index, 100_000),
            part("z", b""),
            now,
        );
        if index % 10_000 == 0 {
            r.check_accounts();
        }
    }
    r.check_accounts();
    assert!(r.cost() <= limits.total_bytes);
    // Many senders at once meet the total limits.
    for n in 0..5_000u64 {
        let _ = r.add(&format!("sybil{n}"), frag(n, 0, 2), part("z", b""), now);
    }
    r.check_accounts();
    assert_eq!(r.unfinished(), limits.total_messages);
    // Alice's message was the one idle longest: it went first.
    assert_eq!(
        r.add("alice", frag(1, 1, 2), part("t", b"second"), now),
        Ok(None)
    );
}

#[test]
fn one_flooding_sender_does_not_push_out_another_senders_message() {
    let now = Instant::now();
    let mut r = Reassembler::default();
    r.add("alice", frag(1, 0, 2), part("t", b"ab"), now)
        .unwrap();
    for id in 0..10_000u64 {
        let _ = r.add("mallory", frag(id, 0, 3), part("z", &[0u8; 100]), now);
    }
    let whole = r
        .add("alice", frag(1, 1, 2), part("t", b"cd"), now)
        .unwrap();
    assert_eq!(whole.unwrap().payload, b"abcd");
}

#[test]
fn unfinished_messages_are_bounded_in_bytes() {
    let now = Instant::now();
    let mut r = Reassembler::default();
    let big = vec![0u8; 4 << 20];
    for (n, id) in (0..20).enumerate() {
        let sender = format!("s{}", n % 5);
        r.add(&sender, frag(id, 0, 2), part("t", &big), now)
            .unwrap();
        r.check_accounts();
    }
    assert!(r.unfinished() < 20, "the idle longest were dropped");
    assert!(
        matches!(r.add("s0", frag(0, 1, 2), part("t", b"x"), now), Ok(None)),
        "message 0 went first: this fragment starts it again"
    );
    let limit = r.limits().sender_bytes;
    let mut small = Reassembler::new(Limits {
        sender_bytes: 1 << 20,
        ..Limits::default()
    });
    assert!(limit > 1 << 20);
    small
        .add("s", frag(1, 0, 3), part("t", &vec![1; 600 << 10]), now)
        .unwrap();
    assert!(matches!(
        small.add("s", frag(1, 1, 3), part("t", &vec![2; 600 << 10]), now),
        Err(Refused::TooLarge { .. })
    ));
    small.check_accounts();
    assert_eq!(
        small.unfinished(),
        0,
        "a message beyond the limit is dropped at once"
    );
}

#[test]
fn idle_messages_expire_in_order_of_last_progress() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut r = Reassembler::default();
    let timeout = r.limits().idle_timeout.as_secs();
    for id in 0..5u64 {
        r.add("alice", frag(id, 0, 3), part("t", b"a"), at(id * 10))
            .unwrap();
    }
    // Message 1 progresses later: now it is the one idle shortest.
    r.add("alice", frag(1, 1, 3), part("t", b"b"), at(100))
        .unwrap();
    r.expire(at(timeout + 25));
    assert_eq!(
        r.held("alice"),
        vec![1, 3, 4],
        "0 and 2 idle since 0 and 20 s"
    );
    r.expire(at(timeout + 45));
    assert_eq!(r.held("alice"), vec![1]);
    assert_eq!(r.stats.expired, 4);
    r.check_accounts();
    // Exactly the timeout idle is not yet too long.
    let done = r.add("alice", frag(1, 2, 3), part("t", b"c"), at(timeout + 100));
    assert_eq!(done.unwrap().unwrap().payload, b"abc");
    // A clock that goes backwards breaks nothing.
    r.add("bob", frag(1, 0, 2), part("t", b"a"), at(timeout + 200))
        .unwrap();
    r.add("bob", frag(2, 0, 2), part("t", b"a"), t0).unwrap();
    r.expire(t0);
    assert_eq!(r.held("bob"), vec![1, 2]);
    r.expire(at(timeout + 199));
    assert_eq!(r.held("bob"), vec![1], "ordered by time, not by arrival");
    r.check_accounts();
}
