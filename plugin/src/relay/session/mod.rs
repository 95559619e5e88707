//! Start-up with twisterd, without I/O: our user in the wallet (created with
//! `plugin_opt_create_user`), following ourselves and the configured users (again every 5 s while
//! some are not registered yet), registration of a new user and the wait for its block, then our last
//! post number and the followed users' positions (`SessionEffect::Ready`). Every failure retries with
//! a backoff that doubles up to 10 s; the wait for a block retries every 250 ms. Each kind of trouble
//! is logged once.
//!
//! Requests go out as effects with an id, replies come back typed, time comes with each event; at
//! most one request is outstanding. The deadlines it asks for are the driver's to keep
//! (`StartAgainAt`, `RefollowAt`), never before the `now` they were computed from.

#[cfg(test)]
mod tests;

use super::{Level, RequestId};
use crate::twister::TwisterError;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use twister_rules::errors::Refusal;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// While waiting for our registration's block.
const REGISTRATION_POLL: Duration = Duration::from_millis(250);
const REFOLLOW_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub enum SessionEffect {
    ListWalletUsers {
        id: RequestId,
    },
    CreateWalletUser {
        id: RequestId,
    },
    /// `follow` ourselves and these users.
    Follow {
        id: RequestId,
        users: Vec<String>,
    },
    GetFollowing {
        id: RequestId,
    },
    SendNewUserTransaction {
        id: RequestId,
    },
    /// `getlasthave` of every user we follow.
    LastHave {
        id: RequestId,
    },
    Log(Level, String),
    /// The next start-up try is due then.
    StartAgainAt(Instant),
    /// Following the users not followed yet is due again then.
    RefollowAt(Instant),
    /// Started: the last post numbers twisterd holds (ours and the followed users').
    Ready(BTreeMap<String, i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SessionReply {
    Users(Result<Vec<String>, TwisterError>),
    Done(Result<(), TwisterError>),
    LastHave(Result<BTreeMap<String, i64>, TwisterError>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    ListWallet,
    Create,
    /// `follow`, for the start-up (`true`) or a later refollow.
    Follow(bool),
    /// `getfollowing` after `follow`.
    Followed(bool),
    /// The start-up's own `getfollowing`: do we follow ourselves (are we registered)?
    Registered,
    Register,
    LastHave,
}

pub struct Session {
    user: String,
    follow: Vec<String>,
    create_user: bool,
    backoff: Duration,
    /// Configured users we could not follow yet.
    unfollowed: Vec<String>,
    said_once: BTreeSet<&'static str>,
    awaiting: Option<(RequestId, Step)>,
    last_id: RequestId,
    effects: Vec<SessionEffect>,
}

impl Session {
    pub fn new(user: &str, follow: &[String], create_user: bool) -> Self {
        Session {
            user: user.to_string(),
            follow: follow.to_vec(),
            create_user,
            backoff: FIRST_BACKOFF,
            unfollowed: Vec::new(),
            said_once: BTreeSet::new(),
            awaiting: None,
            last_id: 0,
            effects: Vec::new(),
        }
    }

    /// Configured users not followed yet (not registered on the blockchain?).
    pub fn unfollowed(&self) -> &[String] {
        &self.unfollowed
    }

    pub fn poll_effect(&mut self) -> Option<SessionEffect> {
        if self.effects.is_empty() {
            None
        } else {
            Some(self.effects.remove(0))
        }
    }

    /// A start-up try is due.
    pub fn start(&mut self) {
        if self.awaiting.is_none() {
            self.request(Step::ListWallet);
        }
    }

    /// Following the users not followed yet is due again.
    pub fn refollow(&mut self, now: Instant) {
        if self.awaiting.is_none() {
            self.follow(false, now);
        }
    }

    pub fn handle_reply(&mut self, id: RequestId, reply: SessionReply, now: Instant) {
        let Some((expected, step)) = self.awaiting.take() else {
            return;
        };
        if expected != id {
            self.awaiting = Some((expected, step));
            return;
        }
        let user = self.user.clone();
        match (step, reply) {
            (Step::ListWallet, SessionReply::Users(Ok(users))) => {
                if users.contains(&user) {
                    self.follow(true, now);
                } else if !self.create_user {
                    self.log_once("not-in-wallet", Level::Error, format!("user '{user}' is not in twisterd's wallet: create it there (createwalletuser + sendnewusertransaction) or set plugin_opt_create_user true"));
                    self.retry(now);
                } else {
                    self.request(Step::Create);
                }
            }
            (Step::Create, SessionReply::Done(r)) => match r {
                Ok(()) => {
                    self.log(
                        Level::Notice,
                        format!("created user '{user}' in twisterd's wallet"),
                    );
                    self.follow(true, now);
                }
                // Already there (created meanwhile): the code twisterd uses for it, whatever its text.
                Err(e) if e.is(Refusal::AlreadyInWallet) || e.is(Refusal::NotInWallet) => {
                    self.follow(true, now)
                }
                Err(e) => {
                    self.log_once(
                        "create-failed",
                        Level::Error,
                        format!("createwalletuser {user} failed: {e}"),
                    );
                    self.retry(now);
                }
            },
            (Step::Follow(startup), SessionReply::Done(Ok(()))) => {
                self.request(Step::Followed(startup))
            }
            (Step::Followed(startup), SessionReply::Users(Ok(held))) => {
                self.followed(&held, now);
                if startup {
                    self.request(Step::Registered);
                }
            }
            (Step::Registered, SessionReply::Users(Ok(following))) => {
                if following.contains(&user) {
                    self.request(Step::LastHave);
                } else if self.create_user {
                    // Following only takes users registered in a block: ourselves not yet.
                    self.request(Step::Register);
                } else {
                    self.wait_for_registration(now);
                }
            }
            (Step::Register, SessionReply::Done(r)) => {
                match r {
                    Ok(()) => self.log(
                        Level::Notice,
                        format!("registration of '{user}' sent; waiting for a block"),
                    ),
                    Err(e) if e.is(Refusal::TxRejected) => {}
                    Err(e) => self.log_once(
                        "register-failed",
                        Level::Error,
                        format!("sendnewusertransaction {user} failed: {e}"),
                    ),
                }
                self.wait_for_registration(now);
            }
            (Step::LastHave, SessionReply::LastHave(Ok(map))) => {
                self.effects.push(SessionEffect::Ready(map))
            }
            // A refollow that failed: tried again at its next time (set when it began).
            (Step::Follow(false) | Step::Followed(false), _) => {}
            // Any other failure of the start-up: again later.
            _ => self.retry(now),
        }
    }

    // ----- decisions -----

    fn request(&mut self, step: Step) {
        self.last_id += 1;
        let id = self.last_id;
        self.awaiting = Some((id, step));
        self.effects.push(match step {
            Step::ListWallet => SessionEffect::ListWalletUsers { id },
            Step::Create => SessionEffect::CreateWalletUser { id },
            Step::Follow(_) => {
                let mut users = vec![self.user.clone()];
                users.extend(self.follow.iter().cloned());
                SessionEffect::Follow { id, users }
            }
            Step::Followed(_) | Step::Registered => SessionEffect::GetFollowing { id },
            Step::Register => SessionEffect::SendNewUserTransaction { id },
            Step::LastHave => SessionEffect::LastHave { id },
        });
    }

    fn follow(&mut self, startup: bool, now: Instant) {
        // Set first, so that no way out of here leaves a deadline in the past.
        self.effects
            .push(SessionEffect::RefollowAt(now + REFOLLOW_EVERY));
        self.request(Step::Follow(startup));
    }

    /// `held`: whom twisterd says we follow.
    fn followed(&mut self, held: &[String], now: Instant) {
        let missing: Vec<String> = self
            .follow
            .iter()
            .filter(|u| !held.contains(u))
            .cloned()
            .collect();
        if !missing.is_empty() && missing != self.unfollowed {
            self.log(
                Level::Warning,
                format!(
                    "cannot follow {missing:?} yet (not registered on the blockchain?); retrying"
                ),
            );
        } else if missing.is_empty() && !self.unfollowed.is_empty() {
            self.log(
                Level::Notice,
                format!("now following {:?}", self.unfollowed),
            );
        }
        self.unfollowed = missing;
        self.effects
            .push(SessionEffect::RefollowAt(now + REFOLLOW_EVERY));
    }

    fn wait_for_registration(&mut self, now: Instant) {
        let user = self.user.clone();
        self.log_once(
            "waiting-registration",
            Level::Notice,
            format!("waiting for '{user}' to be registered in a block"),
        );
        self.backoff = REGISTRATION_POLL;
        self.effects
            .push(SessionEffect::StartAgainAt(now + self.backoff));
    }

    fn retry(&mut self, now: Instant) {
        self.effects
            .push(SessionEffect::StartAgainAt(now + self.backoff));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn log(&mut self, level: Level, line: String) {
        self.effects.push(SessionEffect::Log(level, line));
    }

    fn log_once(&mut self, key: &'static str, level: Level, line: String) {
        if self.said_once.insert(key) {
            self.log(level, line);
        }
    }
}
