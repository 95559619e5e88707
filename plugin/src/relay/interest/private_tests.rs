//! Private forwards' decisions with a fake clock: who gets a message, the hold while nobody wants it
//! (reads of the interest, expiry), the interest becoming known, the refresh.

use super::{interested_recipients, PrivateEffect, PrivateForwards, Routed};
use crate::bus::{DhtAnswer, DhtCall, DhtJob, DhtPurpose};
use crate::config::PrivateRule;
use crate::drops::Reason;
use crate::relay::hold::private::tests::msg as out;
use crate::relay::hold::private::{GRACE, REREAD_EVERY};
use crate::route::RuleSet;
use crate::twister::DhtEntry;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const REFRESH: Duration = Duration::from_secs(30);

fn first_rule() -> RuleSet {
    let mut s = RuleSet::default();
    s.insert(0);
    s
}

fn rules() -> Vec<PrivateRule> {
    vec![PrivateRule {
        filter: "doors/#".into(),
        users: vec!["bob".into(), "carol".into()],
    }]
}

fn effects(p: &mut PrivateForwards) -> Vec<PrivateEffect> {
    std::iter::from_fn(|| p.poll_effect()).collect()
}

/// The users whose profile each effect reads, in order.
fn read_users(e: &[PrivateEffect]) -> Vec<String> {
    e.iter()
        .filter_map(|e| match e {
            PrivateEffect::ReadInterest(DhtJob {
                purpose: DhtPurpose::InterestOf(of),
                call: DhtCall::GetProfile { user },
            }) if of == user => Some(user.clone()),
            _ => None,
        })
        .collect()
}

/// How many times every recipient's interest is read.
fn reads(e: &[PrivateEffect]) -> usize {
    let users = read_users(e);
    assert!(
        users.len() % 2 == 0 && users.chunks(2).all(|c| c == ["bob", "carol"]),
        "{users:?}"
    );
    users.len() / 2
}

/// `user`'s profile read: `filters` its `mqtt_topics` (`None`: a profile without them).
fn answer(p: &mut PrivateForwards, user: &str, filters: Option<&[&str]>, now: Instant) {
    let value = match filters {
        Some(f) => json!({ "mqtt_topics": f }),
        None => json!({"fullname": user}),
    };
    p.answer(
        user.into(),
        Ok(DhtAnswer::Profile(DhtEntry {
            value,
            seq: 1,
            ..Default::default()
        })),
        now,
    );
}

/// Answers the reads going on: nothing changed.
fn answer_same(p: &mut PrivateForwards, now: Instant) {
    answer(p, "bob", Some(&["doors/+"]), now);
    answer(p, "carol", None, now);
}

/// Started at `t0`, both recipients answered: bob wants `doors/+`, carol nothing.
fn known(t0: Instant) -> PrivateForwards {
    let mut p = PrivateForwards::new(&rules(), REFRESH);
    p.start(t0);
    p.handle_timeout(t0);
    answer_same(&mut p, t0);
    effects(&mut p);
    p
}

#[test]
fn only_listed_recipients_whose_interest_matches_are_chosen() {
    let mut remote = BTreeMap::new();
    remote.insert("bob".to_string(), vec!["doors/+".to_string()]);
    remote.insert("carol".to_string(), vec!["windows/#".to_string()]);
    remote.insert("dave".to_string(), vec!["#".to_string()]);
    assert_eq!(
        interested_recipients(&rules(), &first_rule(), &remote, "doors/front"),
        vec!["bob"]
    );
    assert!(interested_recipients(&rules(), &first_rule(), &remote, "doors/a/b").is_empty());
    assert!(
        interested_recipients(&rules(), &RuleSet::default(), &remote, "lights/1").is_empty(),
        "no rule"
    );
}

#[test]
fn the_interest_is_read_at_the_start_then_every_refresh_never_in_the_past() {
    let t0 = Instant::now();
    let mut p = PrivateForwards::new(&rules(), REFRESH);
    assert_eq!(p.poll_timeout(), None, "not started");
    p.start(t0);
    assert_eq!(p.poll_timeout(), Some(t0));
    p.handle_timeout(t0);
    assert_eq!(reads(&effects(&mut p)), 1);
    assert_eq!(p.poll_timeout(), Some(t0 + REFRESH));
    answer_same(&mut p, t0);
    effects(&mut p);
    // Called late: the next read is a refresh after that, not a deadline in the past.
    let late = t0 + REFRESH * 3;
    p.handle_timeout(late);
    assert_eq!(reads(&effects(&mut p)), 1);
    assert_eq!(p.poll_timeout(), Some(late + REFRESH));
    let mut none = PrivateForwards::new(&[], REFRESH);
    none.start(t0);
    none.handle_timeout(t0);
    assert!(
        effects(&mut none).is_empty(),
        "no recipients: nothing to read"
    );
    assert_eq!(
        none.route(&out("doors/1")),
        Routed::Hold,
        "no rule of the message lists a user"
    );
}

#[test]
fn until_every_recipient_answered_messages_are_held_then_sent_to_who_wants_them() {
    let t0 = Instant::now();
    let mut p = PrivateForwards::new(&rules(), REFRESH);
    p.start(t0);
    p.handle_timeout(t0);
    effects(&mut p);
    answer(&mut p, "bob", Some(&["doors/+"]), t0);
    assert_eq!(
        p.route(&out("doors/1")),
        Routed::Hold,
        "carol not heard yet"
    );
    p.hold(out("doors/1"), t0);
    p.hold(out("doors/a/b"), t0);
    let e = effects(&mut p);
    assert_eq!(
        read_users(&e),
        vec!["bob"],
        "read again at once, once (carol's read goes on): {e:?}"
    );
    assert_eq!(p.held_len(), 2);
    let t1 = t0 + Duration::from_secs(2);
    answer(&mut p, "carol", None, t1);
    let e = effects(&mut p);
    assert!(e.contains(&PrivateEffect::Log(
        crate::relay::Level::Info,
        "interest of recipient carol: none published".into()
    )));
    assert!(e.contains(&PrivateEffect::Send {
        message: out("doors/1").message,
        id: None,
        to: vec!["bob".into()]
    }));
    assert_eq!(p.held_len(), 1, "nobody wants doors/a/b");
    // Its wait starts when the interest became known, not when it was held.
    p.handle_timeout(t0 + GRACE);
    assert!(!effects(&mut p)
        .iter()
        .any(|e| matches!(e, PrivateEffect::Dropped(..))));
    p.handle_timeout(t1 + GRACE);
    let e = effects(&mut p);
    assert!(
        matches!(&e[..], [PrivateEffect::Dropped(Reason::NoRecipientInterested, d), PrivateEffect::Expired(None)] if d.starts_with("a private message on doors/a/b")),
        "{e:?}"
    );
    assert_eq!(p.held_len(), 0);
}

#[test]
fn a_held_message_goes_as_soon_as_a_recipient_subscribes_and_rereads_are_bounded() {
    let t0 = Instant::now();
    let mut p = known(t0);
    assert_eq!(p.route(&out("doors/1")), Routed::Send(vec!["bob".into()]));
    assert_eq!(p.route(&out("doors/a/b")), Routed::Hold);
    p.hold(out("doors/a/b"), t0);
    assert_eq!(reads(&effects(&mut p)), 1);
    p.hold(out("doors/x/y"), t0 + REREAD_EVERY / 2);
    assert_eq!(reads(&effects(&mut p)), 0, "at most one read per second");
    assert_eq!(p.poll_timeout(), Some(t0 + REREAD_EVERY));
    answer_same(&mut p, t0);
    effects(&mut p);
    p.handle_timeout(t0 + REREAD_EVERY);
    assert_eq!(reads(&effects(&mut p)), 1);
    // An answer that does not change the interest is not logged again.
    answer(&mut p, "bob", Some(&["doors/+"]), t0 + REREAD_EVERY);
    assert!(effects(&mut p).is_empty());
    answer(&mut p, "carol", Some(&["doors/#"]), t0 + REREAD_EVERY);
    let e = effects(&mut p);
    let sent: Vec<&PrivateEffect> = e
        .iter()
        .filter(|e| matches!(e, PrivateEffect::Send { .. }))
        .collect();
    assert_eq!(sent.len(), 2, "{e:?}");
    assert_eq!(
        sent[0],
        &PrivateEffect::Send {
            message: out("doors/a/b").message,
            id: None,
            to: vec!["carol".into()]
        }
    );
    assert_eq!(p.held_len(), 0);
    assert_eq!(
        p.poll_timeout(),
        Some(t0 + REFRESH),
        "only the refresh is left"
    );
}

#[test]
fn a_read_asked_for_while_one_goes_on_follows_it_and_failures_are_said() {
    let t0 = Instant::now();
    let mut p = known(t0);
    p.hold(out("doors/a/b"), t0);
    assert_eq!(reads(&effects(&mut p)), 1);
    p.handle_timeout(t0 + REREAD_EVERY);
    assert!(
        read_users(&effects(&mut p)).is_empty(),
        "both reads still go on: no second call at once"
    );
    p.answer("bob".into(), Err("internal error (logged)".into()), t0);
    let e = effects(&mut p);
    assert_eq!(read_users(&e), vec!["bob"], "the read asked for meanwhile");
    assert!(
        e.contains(&PrivateEffect::Log(
            crate::relay::Level::Warning,
            "reading the interest of bob: internal error (logged)".into()
        )),
        "{e:?}"
    );
    answer(&mut p, "bob", Some(&["doors/+"]), t0);
    assert!(read_users(&effects(&mut p)).is_empty(), "once");
    assert_eq!(p.held_len(), 1, "a failed read changes no interest");
}
