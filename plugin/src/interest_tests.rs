use super::*;

const PERSISTENT_20: SessionEvent = SessionEvent::Connected {
    persistent: true,
    new_connection: false,
};
const CLEAN_20: SessionEvent = SessionEvent::Connected {
    persistent: false,
    new_connection: false,
};
const PERSISTENT_21: SessionEvent = SessionEvent::Connected {
    persistent: true,
    new_connection: true,
};
const CLEAN_21: SessionEvent = SessionEvent::Connected {
    persistent: false,
    new_connection: true,
};

/// A client subscribing as Mosquitto 2.0 shows it: its session kind, then the filter.
fn sub(i: &mut Interest, client: &str, persistent: bool, filter: &str) -> bool {
    i.session(client, if persistent { PERSISTENT_20 } else { CLEAN_20 });
    i.subscribe(client, filter)
}

#[test]
fn counts_clients_per_filter() {
    let mut i = Interest::new(&[]);
    assert!(sub(&mut i, "c1", false, "a/+"));
    assert!(
        !sub(&mut i, "c2", false, "a/+"),
        "second holder changes nothing"
    );
    assert!(
        !sub(&mut i, "c1", false, "a/+"),
        "resubscribe changes nothing"
    );
    assert!(i.wants("a/b"));
    assert!(!i.unsubscribe("c1", "a/+"));
    assert!(i.unsubscribe("c2", "a/+"));
    assert!(!i.wants("a/b"));
    assert!(!i.unsubscribe("c3", "never"));
}

#[test]
fn shared_subscriptions_count_as_their_filter() {
    let mut i = Interest::new(&[]);
    assert!(sub(&mut i, "c1", false, "$share/g/jobs/#"));
    assert_eq!(i.filters(), vec!["jobs/#"]);
    assert!(i.wants("jobs/1"));
    assert!(i.unsubscribe("c1", "$share/g/jobs/#"));
    assert!(!i.subscribe("c1", "$share/broken"));
}

#[test]
fn shared_and_plain_forms_of_one_filter_are_separate_subscriptions() {
    let mut i = Interest::new(&[]);
    assert!(sub(&mut i, "c1", false, "x/#"));
    assert!(!sub(&mut i, "c1", false, "$share/g/x/#"));
    assert!(!sub(&mut i, "c1", false, "$share/h/x/#"));
    assert!(
        !i.unsubscribe("c1", "$share/g/x/#"),
        "x/# and group h remain"
    );
    assert!(i.wants("x/1"));
    assert!(!i.unsubscribe("c1", "x/#"), "group h remains");
    assert!(i.wants("x/1"));
    assert!(
        !i.unsubscribe("c1", "$share/g/x/#"),
        "already gone: no double release"
    );
    assert!(i.unsubscribe("c1", "$share/h/x/#"));
    assert!(!i.wants("x/1"));
    assert!(i.filters().is_empty());
}

#[test]
fn a_clean_session_takes_its_filters_and_static_ones_stay() {
    let mut i = Interest::new(&["cmd/#".to_string()]);
    sub(&mut i, "c1", false, "x");
    sub(&mut i, "c1", false, "cmd/#");
    assert_eq!(i.filters(), vec!["cmd/#", "x"]);
    // 2.0: the DISCONNECT of a clean client (the broker says clean: ended or taken over).
    assert!(i.session("c1", SessionEvent::TakenOver));
    assert_eq!(i.filters(), vec!["cmd/#"]);
    assert!(i.wants("cmd/a"));
    assert!(!i.session("c1", SessionEvent::Ended));
}

#[test]
fn a_persistent_session_survives_disconnect_resumption_and_takeover() {
    let mut i = Interest::new(&[]);
    sub(&mut i, "p", true, "kept/#");
    assert!(
        !i.session("p", SessionEvent::Offline),
        "disconnected, session kept"
    );
    // 2.0 marks the old context clean before disconnecting it when the client reconnects.
    assert!(!i.session("p", SessionEvent::TakenOver));
    assert!(i.wants("kept/1"), "resumed without subscribing again");
    // Reconnecting again while connected: another takeover.
    assert!(!i.session("p", SessionEvent::TakenOver));
    assert!(!i.session("p", PERSISTENT_20), "a later subscription on it");
    assert!(i.wants("kept/1"));
    // 2.1 says the same with CONNECT events.
    assert!(!i.session("p", PERSISTENT_21));
    assert!(i.wants("kept/1"));
}

#[test]
fn a_clean_start_discards_the_persistent_session_it_replaces() {
    // 2.1: the CONNECT of the new connection tells at once.
    let mut i = Interest::new(&[]);
    sub(&mut i, "p", true, "old/#");
    i.session("p", SessionEvent::TakenOver);
    assert!(i.session("p", CLEAN_21));
    assert!(!i.wants("old/1"));
    // 2.0: its first subscription does (it shows a clean connection).
    let mut i = Interest::new(&[]);
    sub(&mut i, "p", true, "old/#");
    i.session("p", SessionEvent::TakenOver);
    assert!(sub(&mut i, "p", false, "new/#"));
    assert_eq!(i.filters(), vec!["new/#"]);
    // ... and its end takes what it subscribed.
    assert!(i.session("p", SessionEvent::TakenOver));
    assert!(i.filters().is_empty());
}

#[test]
fn a_persistent_connection_does_not_resume_a_clean_session() {
    let mut i = Interest::new(&[]);
    sub(&mut i, "c", false, "a");
    assert!(i.session("c", PERSISTENT_21));
    assert!(!i.wants("a"));
    let mut i = Interest::new(&[]);
    sub(&mut i, "c", false, "a");
    assert!(sub(&mut i, "c", true, "b"), "2.0: a change of kind");
    assert_eq!(i.filters(), vec!["b"]);
}

#[test]
fn a_session_ended_by_the_broker_goes_whatever_its_kind() {
    // 2.1: DISCONNECT other than a takeover means the session ended (expiry 0, clean end).
    let mut i = Interest::new(&[]);
    sub(&mut i, "p", true, "a");
    assert!(i.session("p", SessionEvent::Ended));
    assert!(i.filters().is_empty());
    assert!(i.saved().is_empty());
}

#[test]
fn sessions_round_trip_through_the_state_file_form() {
    let mut i = Interest::new(&[]);
    sub(&mut i, "p1", true, "a/#");
    sub(&mut i, "p1", true, "$share/g/a/#");
    sub(&mut i, "c1", false, "b");
    sub(&mut i, "c2", false, "a/#");
    let saved = i.saved();
    assert_eq!(
        saved,
        vec![
            SavedSession {
                client: "c1".into(),
                persistent: false,
                subs: vec!["b".into()]
            },
            SavedSession {
                client: "c2".into(),
                persistent: false,
                subs: vec!["a/#".into()]
            },
            SavedSession {
                client: "p1".into(),
                persistent: true,
                subs: vec!["$share/g/a/#".into(), "a/#".into()]
            },
        ]
    );

    // The broker restored its persistent sessions: p1's subscriptions are live, both forms.
    let mut r = Interest::new(&[]);
    r.restore(&saved, &|_| true, true);
    assert!(r.wants("a/1"));
    assert!(!r.wants("b"), "clean sessions do not survive a restart");
    assert!(r.may_want("b"), "but their clients may subscribe again");
    assert_eq!(r.filters(), vec!["a/#", "b"], "advertised at once");
    assert!(!r.unsubscribe("p1", "$share/g/a/#"));
    assert!(r.wants("a/1"));
    assert_eq!(r.saved()[0].subs, vec!["a/#"]);
    // b comes back when a client subscribes again, and stays.
    assert!(!sub(&mut r, "c1", false, "b"));
    assert!(r.wants("b"));
    assert!(!r.forget_returning());
    assert_eq!(r.filters(), vec!["a/#", "b"]);

    // Without broker persistence every session is gone: all of it is only "may come back".
    let mut n = Interest::new(&[]);
    n.restore(&saved, &|_| false, true);
    assert!(!n.wants("a/1") && n.may_want("a/1"));
    assert!(n.has_returning());
    assert!(n.forget_returning());
    assert!(n.filters().is_empty() && !n.may_want("a/1"));
}

#[test]
fn invalid_saved_subscriptions_are_ignored() {
    let mut r = Interest::new(&[]);
    r.restore(
        &[SavedSession {
            client: "p".into(),
            persistent: true,
            subs: vec!["a/#/b".into(), "$share/x".into(), "ok".into()],
        }],
        &|_| true,
        true,
    );
    assert_eq!(r.filters(), vec!["ok"]);
}

#[test]
fn after_a_crash_restored_sessions_are_live_and_also_waited_for() {
    let saved = vec![
        SavedSession {
            client: "kept".into(),
            persistent: true,
            subs: vec!["a/#".into()],
        },
        SavedSession {
            client: "lost".into(),
            persistent: true,
            subs: vec!["b/#".into()],
        },
    ];
    // 2.1 asks the broker which sessions it holds; a crash leaves even those uncertain.
    let mut r = Interest::new(&[]);
    r.restore(&saved, &|c| c == "kept", false);
    assert!(
        r.wants("a/1") && r.may_want("a/1"),
        "injected, and a copy waits"
    );
    assert!(!r.wants("b/1") && r.may_want("b/1"));
    assert!(r.take_returned().is_empty());
    // The client subscribes again (its session was lost after all): a/# is simply live.
    sub(&mut r, "kept", true, "a/#");
    assert!(r.wants("a/1") && !r.may_want("a/1"));
    assert_eq!(
        r.take_returned(),
        vec!["a/#"],
        "what was held for it can go now"
    );
    assert!(r.take_returned().is_empty());
    // A clean stop: exact.
    let mut r = Interest::new(&[]);
    r.restore(&saved, &|c| c == "kept", true);
    assert!(r.wants("a/1") && !r.may_want("a/1"));
    assert!(r.may_want("b/1"));
}

#[test]
fn broker_events_mean_what_each_version_says() {
    use BrokerSessionEvent::*;
    let v20 = |seen, clean| SessionEvent::from_broker(seen, false, clean);
    let v21 = |seen, clean| SessionEvent::from_broker(seen, true, clean);
    assert_eq!(v20(Disconnect { reason: -1 }, false), SessionEvent::Offline);
    assert_eq!(
        v20(Disconnect { reason: -1 }, true),
        SessionEvent::TakenOver
    );
    assert_eq!(
        v21(Disconnect { reason: -1 }, false),
        SessionEvent::Ended,
        "expiry 0"
    );
    assert_eq!(
        v21(
            Disconnect {
                reason: SESSION_TAKEN_OVER_V21
            },
            true
        ),
        SessionEvent::TakenOver
    );
    assert_eq!(v21(ClientOffline, false), SessionEvent::Offline);
    assert_eq!(v21(Connect, true), CLEAN_21);
    assert_eq!(v21(Connect, false), PERSISTENT_21);
}
