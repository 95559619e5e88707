//! This broker's interest decisions with a fake clock: the profile's debounce and first write, the
//! wait for the last run's subscriptions (held, given back, given up), what is injected.

use super::{LocalEffect, Subscriptions};
use crate::bus::{DhtAnswer, DhtCall};
use crate::interest::{Interest, RestoredSessions, SavedSession, SessionEvent};
use crate::relay::hold::returning::RESUBSCRIBE_GRACE;
use crate::relay::Level;
use crate::twister::DhtEntry;
use crate::wire::Message;
use serde_json::json;
use std::time::{Duration, Instant};

const DEBOUNCE: Duration = Duration::from_millis(1000);

fn msg(topic: &str, retain: bool) -> Message {
    Message {
        topic: topic.into(),
        payload: b"x".to_vec(),
        qos: 1,
        retain,
    }
}

fn effects(s: &mut Subscriptions) -> Vec<LocalEffect> {
    effects_of(s)
}

/// The filters of each profile write begun (answered at once: the profile held other filters, the
/// put is accepted and read back), so that the next write can begin.
fn writes(s: &mut Subscriptions, effects: &[LocalEffect], now: Instant) -> Vec<Vec<String>> {
    let begun = effects
        .iter()
        .filter(|e| matches!(e, LocalEffect::Dht(DhtCall::GetProfile { .. })))
        .count();
    let mut written = Vec::new();
    for _ in 0..begun {
        let profile = |v| {
            Ok(DhtAnswer::Profile(DhtEntry {
                value: v,
                seq: 1,
                ..Default::default()
            }))
        };
        s.profile_answer(profile(json!({"mqtt_topics": ["other"]})), now);
        let put = effects_of(s);
        let Some(LocalEffect::Dht(DhtCall::PutProfile { value, .. })) = put.first() else {
            panic!("{put:?}");
        };
        let value = value.clone();
        s.profile_answer(Ok(DhtAnswer::Stored), now);
        effects_of(s);
        s.profile_answer(profile(value.clone()), now);
        let done = effects_of(s);
        assert!(
            matches!(&done[..], [LocalEffect::Log(Level::Info, l)] if l.starts_with("profile interest is now")),
            "{done:?}"
        );
        let filters = value["mqtt_topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        written.push(filters);
    }
    written
}

fn written(s: &mut Subscriptions) -> Vec<Vec<String>> {
    let e = effects_of(s);
    writes(s, &e, Instant::now())
}

fn effects_of(s: &mut Subscriptions) -> Vec<LocalEffect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

fn fresh(now: Instant) -> Subscriptions {
    Subscriptions::new(
        "me",
        Interest::new(&["fixed/#".into()]),
        DEBOUNCE,
        false,
        now,
    )
}

/// A relay after a crash whose last run had `client` subscribed to `filter` (clean session).
fn after_restart(now: Instant) -> Subscriptions {
    let mut s = fresh(now);
    let saved = [SavedSession {
        client: "c1".into(),
        persistent: false,
        subs: vec!["back/#".into()],
    }];
    s.restore(&saved, &RestoredSessions::None, false);
    s
}

#[test]
fn the_profile_is_written_at_the_start_then_once_per_burst_of_changes() {
    let t0 = Instant::now();
    let mut s = fresh(t0);
    s.subscribe("c1", "a/#", t0);
    s.handle_timeout(t0 + DEBOUNCE * 3);
    assert!(written(&mut s).is_empty(), "not started: no write");
    assert_eq!(s.poll_timeout(), None);
    s.start(t0 + DEBOUNCE * 3);
    s.handle_timeout(t0 + DEBOUNCE * 3);
    assert_eq!(
        written(&mut s),
        vec![vec!["a/#".to_string(), "fixed/#".to_string()]]
    );
    let t1 = t0 + DEBOUNCE * 10;
    s.subscribe("c1", "b/1", t1);
    s.subscribe("c2", "$share/g/b/2", t1 + Duration::from_millis(10));
    s.unsubscribe("c1", "a/#", t1 + Duration::from_millis(20));
    let e = effects(&mut s);
    assert_eq!(
        e.iter()
            .filter(|e| **e == LocalEffect::StateChanged)
            .count(),
        3,
        "every session change is saved"
    );
    assert_eq!(s.poll_timeout(), Some(t1 + DEBOUNCE));
    s.handle_timeout(t1 + DEBOUNCE - Duration::from_millis(1));
    assert!(written(&mut s).is_empty());
    s.handle_timeout(t1 + DEBOUNCE);
    assert_eq!(
        written(&mut s),
        vec![vec![
            "b/1".to_string(),
            "b/2".to_string(),
            "fixed/#".to_string()
        ]]
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_restarted_relay_writes_its_profile_again_and_retries_a_failed_write() {
    let t0 = Instant::now();
    let mut s = Subscriptions::new("me", Interest::new(&[]), DEBOUNCE, true, t0);
    s.start(t0 + DEBOUNCE * 2);
    s.handle_timeout(t0 + DEBOUNCE * 2);
    assert_eq!(
        effects(&mut s),
        vec![
            LocalEffect::ProfileWrite(Vec::new()),
            LocalEffect::Dht(DhtCall::GetProfile { user: "me".into() })
        ]
    );
    let t1 = t0 + DEBOUNCE * 2;
    s.profile_answer(Err("dhtput: refused".into()), t1);
    assert_eq!(
        effects(&mut s),
        vec![LocalEffect::Log(
            Level::Warning,
            "writing our interest to the Twister profile failed: dhtput: refused; retrying".into()
        )]
    );
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_millis(500)));
}

#[test]
fn retained_or_subscribed_messages_are_injected_others_not() {
    let t0 = Instant::now();
    let mut s = fresh(t0);
    s.start(t0);
    s.subscribe("c1", "a/+", t0);
    assert!(s.deliver(&msg("a/1", false)));
    assert!(s.deliver(&msg("fixed/x/y", false)));
    assert!(!s.deliver(&msg("b/1", false)));
    assert!(
        s.deliver(&msg("b/1", true)),
        "retained: kept for later subscribers"
    );
}

#[test]
fn messages_for_the_last_runs_subscriptions_wait_and_come_back_with_them() {
    let t0 = Instant::now();
    let mut s = after_restart(t0);
    let e = effects(&mut s);
    assert!(
        matches!(&e[..], [LocalEffect::Log(Level::Info, l)] if l.contains("1 sessions, 0 persistent, 0 restored by the broker (no clean stop")),
        "{e:?}"
    );
    s.start(t0);
    s.handle_timeout(t0);
    assert_eq!(
        written(&mut s),
        vec![vec!["back/#".to_string(), "fixed/#".to_string()]],
        "what may come back is still advertised"
    );
    assert!(!s.deliver(&msg("back/1", false)), "nobody subscribed yet");
    assert!(!s.deliver(&msg("other/1", false)));
    s.subscribe("c1", "back/#", t0 + Duration::from_secs(5));
    let injected: Vec<LocalEffect> = effects(&mut s)
        .into_iter()
        .filter(|e| matches!(e, LocalEffect::Inject(_)))
        .collect();
    assert_eq!(injected, vec![LocalEffect::Inject(msg("back/1", false))]);
    assert!(s.deliver(&msg("back/2", false)));
}

#[test]
fn at_the_end_of_the_wait_held_messages_are_given_up_and_the_profile_shrinks() {
    let t0 = Instant::now();
    let mut s = after_restart(t0);
    s.start(t0);
    s.handle_timeout(t0);
    written(&mut s);
    s.deliver(&msg("back/1", false));
    s.deliver(&msg("back/2", false));
    assert_eq!(s.poll_timeout(), Some(t0 + RESUBSCRIBE_GRACE));
    let end = t0 + RESUBSCRIBE_GRACE;
    s.handle_timeout(end);
    let e = effects(&mut s);
    assert!(
        matches!(&e[..], [LocalEffect::Log(Level::Notice, l)] if l.starts_with("2 messages from the network dropped")),
        "{e:?}"
    );
    assert_eq!(s.poll_timeout(), Some(end + DEBOUNCE), "profile due again");
    s.handle_timeout(end + DEBOUNCE);
    assert_eq!(written(&mut s), vec![vec!["fixed/#".to_string()]]);
    s.subscribe("c1", "back/#", end + DEBOUNCE);
    assert!(
        !effects(&mut s)
            .iter()
            .any(|e| matches!(e, LocalEffect::Inject(_))),
        "nothing held any more"
    );
    s.session("c1", SessionEvent::Ended, end + DEBOUNCE);
}
