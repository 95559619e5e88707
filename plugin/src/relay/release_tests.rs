use super::*;

const HOLD: Duration = Duration::from_secs(300);

fn ledger(floor: RecordId) -> Ledger<&'static str> {
    Ledger::new(HOLD, floor)
}

/// Records `ids` arrive and are each queued once (the routing copy let go).
fn queue(l: &mut Ledger<&'static str>, ids: &[RecordId]) {
    for &id in ids {
        l.copy(id);
    }
}

#[test]
fn nothing_is_taken_until_its_post_is_confirmed_and_held() {
    let t0 = Instant::now();
    let mut l = ledger(10);
    assert_eq!(l.taken(), 10, "the floor: taken before this run");
    queue(&mut l, &[11, 12]);
    assert_eq!(l.taken(), 10, "queued, not posted");
    l.stored(5, None, vec![(Some(11), "a"), (Some(12), "b")]);
    assert_eq!(l.taken(), 10, "answered, not confirmed");
    assert!(l.own_last(5, t0).is_empty());
    l.release_due(t0 + HOLD - Duration::from_millis(1));
    assert_eq!(l.taken(), 10, "confirmed, still held");
    assert_eq!(l.next_due(), Some(t0 + HOLD));
    l.release_due(t0 + HOLD);
    assert_eq!(l.taken(), 12);
    assert_eq!(l.held_posts(), 0);
    assert_eq!(l.next_due(), None);
}

#[test]
fn only_the_contiguous_released_prefix_is_taken() {
    let t0 = Instant::now();
    let mut l = ledger(0);
    queue(&mut l, &[1, 2, 3]);
    // 2 and 3 go in post 7, 1 waits (a DM whose recipient is not known yet, say).
    l.stored(7, None, vec![(Some(2), "b"), (Some(3), "c")]);
    l.own_last(7, t0);
    l.release_due(t0 + HOLD);
    assert_eq!(l.taken(), 0, "record 1 holds the prefix back");
    l.stored(8, Some("bob".into()), vec![(Some(1), "a")]);
    l.own_last(8, t0 + HOLD);
    l.release_due(t0 + 2 * HOLD);
    assert_eq!(l.taken(), 3);
}

#[test]
fn a_record_with_several_copies_waits_for_all_of_them() {
    let t0 = Instant::now();
    let mut l = ledger(0);
    l.copy(1); // routing
    l.copy(1); // public
    l.copy(1); // DM to bob
    l.let_go(1); // routing done
    l.stored(1, None, vec![(Some(1), "pub")]);
    l.own_last(1, t0);
    l.release_due(t0 + HOLD);
    assert_eq!(l.taken(), 0, "the DM copy is still queued");
    l.let_go(1); // the DM copy was dropped (counted by the caller)
    assert_eq!(l.taken(), 1);
}

#[test]
fn a_dropped_record_is_released_at_once() {
    let mut l = ledger(0);
    l.copy(1);
    l.let_go(1);
    assert_eq!(l.taken(), 1);
    assert_eq!(l.open_records(), 0);
}

#[test]
fn posts_above_twisterds_last_number_are_forgotten_and_come_back_in_order() {
    let t0 = Instant::now();
    let mut l = ledger(0);
    queue(&mut l, &[1, 2, 3, 4]);
    l.stored(10, None, vec![(Some(1), "a")]);
    l.stored(11, None, vec![(Some(2), "b"), (Some(3), "c")]);
    l.stored(12, Some("bob".into()), vec![(Some(4), "d")]);
    assert!(l.own_last(12, t0).is_empty());
    // twisterd restarted at 10: 11 and 12 are gone.
    let lost = l.own_last(10, t0 + Duration::from_secs(1));
    let ks: Vec<i64> = lost.iter().map(|h| h.k).collect();
    assert_eq!(ks, [11, 12]);
    assert_eq!(lost[1].to.as_deref(), Some("bob"));
    assert_eq!(lost[0].copies, [(Some(2), "b"), (Some(3), "c")]);
    assert_eq!(l.counters.forgotten_posts, 2);
    assert_eq!(l.counters.forgotten_copies, 3);
    // Their records stay open while their copies are posted again.
    l.release_due(t0 + HOLD);
    assert_eq!(l.taken(), 1);
    l.stored(13, None, vec![(Some(2), "b"), (Some(3), "c")]);
    l.stored(14, Some("bob".into()), vec![(Some(4), "d")]);
    l.own_last(14, t0 + HOLD);
    l.release_due(t0 + 2 * HOLD);
    assert_eq!(l.taken(), 4);
}

#[test]
fn a_post_answered_but_never_in_twisterd_is_posted_again() {
    // twisterd answered success but ignored it (its number was taken), or forgot it before any poll.
    let t0 = Instant::now();
    let mut l = ledger(0);
    queue(&mut l, &[1]);
    l.stored(3, None, vec![(Some(1), "a")]);
    let lost = l.own_last(2, t0);
    assert_eq!(lost.len(), 1);
    assert_eq!(l.taken(), 0);
}

#[test]
fn a_forgotten_post_after_its_hold_is_past_help() {
    let t0 = Instant::now();
    let mut l = ledger(0);
    queue(&mut l, &[1]);
    l.stored(3, None, vec![(Some(1), "a")]);
    l.own_last(3, t0);
    l.release_due(t0 + HOLD);
    assert_eq!(l.taken(), 1);
    assert!(l.own_last(2, t0 + HOLD).is_empty(), "let go already");
}

#[test]
fn messages_without_a_record_are_held_for_reposting_too() {
    // The spool off: the in-memory copy is all there is.
    let t0 = Instant::now();
    let mut l = ledger(0);
    l.stored(1, None, vec![(None, "a")]);
    l.own_last(1, t0);
    let lost = l.own_last(0, t0);
    assert_eq!(lost[0].copies, [(None, "a")]);
    assert_eq!(l.taken(), 0);
}

#[test]
fn receipts_keep_a_record_open_after_its_copies() {
    let t0 = Instant::now();
    let mut l = ledger(0);
    queue(&mut l, &[1, 2]);
    l.await_receipts(1);
    l.stored(1, None, vec![(Some(1), "a"), (Some(2), "b")]);
    l.own_last(1, t0);
    l.release_due(t0 + HOLD);
    assert_eq!(l.taken(), 0, "1 waits for its receipts");
    l.receipts_done(1);
    assert_eq!(l.taken(), 2);
}

#[test]
fn records_at_or_below_the_floor_are_done_already() {
    let mut l = ledger(5);
    l.copy(5);
    l.copy(5);
    assert_eq!(l.open_records(), 0);
    assert_eq!(l.taken(), 5);
}

#[test]
fn held_posts_are_bounded_and_the_oldest_let_go_early() {
    let mut l = ledger(0);
    for k in 0..(MAX_HELD_POSTS as i64 + 2) {
        let id = k as RecordId + 1;
        l.copy(id);
        l.copy(id); // queued
        l.stored(k, None, vec![(Some(id), "x")]);
        l.let_go(id); // the routing copy; the post's copy remains
    }
    assert_eq!(l.held_posts(), MAX_HELD_POSTS);
    assert_eq!(l.counters.released_early, 2);
    assert_eq!(l.taken(), 2);
}
