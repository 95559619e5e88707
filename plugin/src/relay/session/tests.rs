//! Start-up decisions against a scripted fake twisterd and a fake clock.

use super::{Session, SessionEffect, SessionReply};
use crate::relay::Level;
use crate::twister::TwisterError;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use twister_rules::errors::{
    MSG_TX_REJECTED, MSG_USER_EXISTS_IN_WALLET, RPC_VERIFY_REJECTED,
    RPC_WALLET_INVALID_ACCOUNT_NAME,
};

/// A twisterd's wallet and follows as the start-up sees them.
#[derive(Default)]
struct FakeNode {
    wallet: Vec<String>,
    /// Users registered in a block (only those can be followed).
    registered: Vec<String>,
    following: Vec<String>,
    /// Calls answered as unreachable, by method.
    down: Vec<&'static str>,
    calls: Vec<&'static str>,
    /// A registration sent (it takes a block to count).
    sent_registration: bool,
}

impl FakeNode {
    fn answer(&mut self, e: &SessionEffect) -> Option<(u64, SessionReply)> {
        let method = match e {
            SessionEffect::ListWalletUsers { .. } => "listwalletusers",
            SessionEffect::CreateWalletUser { .. } => "createwalletuser",
            SessionEffect::Follow { .. } => "follow",
            SessionEffect::GetFollowing { .. } => "getfollowing",
            SessionEffect::SendNewUserTransaction { .. } => "sendnewusertransaction",
            SessionEffect::LastHave { .. } => "getlasthave",
            _ => return None,
        };
        self.calls.push(method);
        let down = self.down.contains(&method);
        let err = || TwisterError::NotSent("Connection Failed".into());
        Some(match e {
            SessionEffect::ListWalletUsers { id } => (
                *id,
                SessionReply::Users(if down {
                    Err(err())
                } else {
                    Ok(self.wallet.clone())
                }),
            ),
            SessionEffect::CreateWalletUser { id } => {
                let r = if self.wallet.contains(&"alice".to_string()) {
                    Err(TwisterError::refused(
                        RPC_WALLET_INVALID_ACCOUNT_NAME,
                        MSG_USER_EXISTS_IN_WALLET,
                    ))
                } else {
                    self.wallet.push("alice".into());
                    Ok(())
                };
                (*id, SessionReply::Done(r))
            }
            SessionEffect::Follow { id, users } => {
                if !down {
                    for u in users {
                        if self.registered.contains(u) && !self.following.contains(u) {
                            self.following.push(u.clone());
                        }
                    }
                }
                (
                    *id,
                    SessionReply::Done(if down { Err(err()) } else { Ok(()) }),
                )
            }
            SessionEffect::GetFollowing { id } => (
                *id,
                SessionReply::Users(if down {
                    Err(err())
                } else {
                    Ok(self.following.clone())
                }),
            ),
            SessionEffect::SendNewUserTransaction { id } => {
                let r = if self.sent_registration {
                    Err(TwisterError::refused(RPC_VERIFY_REJECTED, MSG_TX_REJECTED))
                } else {
                    self.sent_registration = true;
                    Ok(())
                };
                (*id, SessionReply::Done(r))
            }
            SessionEffect::LastHave { id } => (
                *id,
                SessionReply::LastHave(if down {
                    Err(err())
                } else {
                    Ok(BTreeMap::from([
                        ("alice".to_string(), 4),
                        ("bob".to_string(), 9),
                    ]))
                }),
            ),
            _ => unreachable!(),
        })
    }
}

struct Run {
    now: Instant,
    session: Session,
    node: FakeNode,
    logs: Vec<(Level, String)>,
    start_again: Option<Instant>,
    refollow: Option<Instant>,
    ready: Option<BTreeMap<String, i64>>,
}

impl Run {
    fn new(create_user: bool) -> Self {
        Run {
            now: Instant::now(),
            session: Session::new("alice", &["bob".to_string()], create_user),
            node: FakeNode::default(),
            logs: Vec::new(),
            start_again: None,
            refollow: None,
            ready: None,
        }
    }

    fn drive(&mut self) {
        while let Some(e) = self.session.poll_effect() {
            match e {
                SessionEffect::Log(l, s) => self.logs.push((l, s)),
                SessionEffect::StartAgainAt(t) => {
                    assert!(t >= self.now, "a deadline in the past");
                    self.start_again = Some(t)
                }
                SessionEffect::RefollowAt(t) => {
                    assert!(t >= self.now, "a deadline in the past");
                    self.refollow = Some(t)
                }
                SessionEffect::Ready(m) => self.ready = Some(m),
                request => {
                    let (id, reply) = self.node.answer(&request).unwrap();
                    self.session.handle_reply(id, reply, self.now);
                }
            }
        }
    }

    /// One start-up try at the time the last one asked for.
    fn try_start(&mut self) {
        if let Some(t) = self.start_again.take() {
            self.now = t;
        }
        self.session.start();
        self.drive();
    }

    fn said(&self, part: &str) -> usize {
        self.logs.iter().filter(|(_, l)| l.contains(part)).count()
    }
}

#[test]
fn a_registered_user_in_the_wallet_starts_with_twisterds_numbers() {
    let mut run = Run::new(false);
    run.node.wallet = vec!["alice".into()];
    run.node.registered = vec!["alice".into(), "bob".into()];
    run.try_start();
    assert_eq!(
        run.node.calls,
        [
            "listwalletusers",
            "follow",
            "getfollowing",
            "getfollowing",
            "getlasthave"
        ]
    );
    let ready = run.ready.unwrap();
    assert_eq!((ready["alice"], ready["bob"]), (4, 9));
    assert!(run.session.unfollowed().is_empty());
}

#[test]
fn a_user_missing_from_the_wallet_is_said_once_and_retried_with_a_doubling_backoff() {
    let mut run = Run::new(false);
    let mut waits = Vec::new();
    for _ in 0..8 {
        let before = run.start_again.unwrap_or(run.now);
        run.try_start();
        waits.push(run.start_again.unwrap() - before);
    }
    assert_eq!(run.said("is not in twisterd's wallet"), 1);
    assert_eq!(waits[0], Duration::from_millis(200));
    assert_eq!(waits[1], Duration::from_millis(400));
    assert_eq!(*waits.last().unwrap(), Duration::from_secs(10), "{waits:?}");
    assert!(run.ready.is_none());
}

#[test]
fn create_user_creates_registers_and_waits_for_the_block() {
    let mut run = Run::new(true);
    run.node.registered = vec!["bob".into()];
    run.try_start();
    assert!(run.node.wallet.contains(&"alice".to_string()));
    assert_eq!(run.said("created user 'alice'"), 1);
    assert_eq!(run.said("registration of 'alice' sent"), 1);
    let first = run.start_again.unwrap();
    assert_eq!(first - run.now, Duration::from_millis(250));
    // Not in a block yet: tried every 250 ms, the transaction refused as pending, said once.
    run.try_start();
    assert_eq!(
        run.start_again.unwrap() - run.now,
        Duration::from_millis(250)
    );
    assert_eq!(run.said("waiting for 'alice' to be registered"), 1);
    assert!(run.ready.is_none());
    // The block comes.
    run.node.registered.push("alice".into());
    run.try_start();
    assert!(run.ready.is_some());
}

#[test]
fn users_not_registered_yet_are_followed_again_until_they_are() {
    let mut run = Run::new(false);
    run.node.wallet = vec!["alice".into()];
    run.node.registered = vec!["alice".into()];
    run.try_start();
    assert!(run.ready.is_some(), "ready without bob");
    assert_eq!(run.session.unfollowed(), ["bob".to_string()]);
    assert_eq!(run.said("cannot follow [\"bob\"] yet"), 1);
    let due = run.refollow.unwrap();
    assert_eq!(due - run.now, Duration::from_secs(5));
    run.now = due;
    run.session.refollow(run.now);
    run.drive();
    assert_eq!(run.said("cannot follow"), 1, "said once while it lasts");
    run.node.registered.push("bob".into());
    run.now = run.refollow.unwrap();
    run.session.refollow(run.now);
    run.drive();
    assert!(run.session.unfollowed().is_empty());
    assert_eq!(run.said("now following [\"bob\"]"), 1);
}

#[test]
fn twisterd_down_at_any_step_retries_the_start_up() {
    for method in ["listwalletusers", "follow", "getfollowing", "getlasthave"] {
        let mut run = Run::new(false);
        run.node.wallet = vec!["alice".into()];
        run.node.registered = vec!["alice".into(), "bob".into()];
        run.node.down = vec![method];
        run.try_start();
        assert!(run.ready.is_none(), "{method}");
        assert!(run.start_again.is_some(), "{method}: tried again later");
        run.node.down.clear();
        run.try_start();
        assert!(run.ready.is_some(), "{method}");
    }
}

#[test]
fn a_failed_refollow_waits_for_its_next_time() {
    let mut run = Run::new(false);
    run.node.wallet = vec!["alice".into()];
    run.node.registered = vec!["alice".into()];
    run.try_start();
    run.node.down = vec!["follow"];
    run.now += Duration::from_secs(5);
    run.start_again = None;
    run.session.refollow(run.now);
    run.drive();
    assert_eq!(run.refollow.unwrap() - run.now, Duration::from_secs(5));
    assert!(run.start_again.is_none(), "not a start-up failure");
}
