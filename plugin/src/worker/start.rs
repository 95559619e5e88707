//! The worker as the driver of the start-up (`crate::relay::session`): carries out its calls, keeps
//! its deadlines, and once started takes twisterd's numbers (our next post number, the followed
//! users' read positions) and turns the rest of the worker on.

use super::*;
use crate::relay::session::{SessionEffect, SessionReply};

impl Worker {
    /// A start-up try is due (`crate::relay::session` decides, this carries it out).
    pub(super) fn startup(&mut self) {
        self.session.start();
        self.drive_session();
    }

    /// Following the users not followed yet is due again.
    pub(super) fn refollow(&mut self) {
        self.session.refollow(Instant::now());
        self.drive_session();
    }

    fn drive_session(&mut self) {
        let user = self.cfg.user.clone();
        while let Some(effect) = self.session.poll_effect() {
            let (id, reply) = match effect {
                SessionEffect::ListWalletUsers { id } => (
                    id,
                    SessionReply::Users(self.call("listwalletusers", |c| c.list_wallet_users())),
                ),
                SessionEffect::CreateWalletUser { id } => (
                    id,
                    SessionReply::Done(
                        self.call("createwalletuser", |c| c.create_wallet_user(&user)),
                    ),
                ),
                SessionEffect::Follow { id, users } => (
                    id,
                    SessionReply::Done(self.call("follow", |c| c.follow(&user, &users))),
                ),
                SessionEffect::GetFollowing { id } => (
                    id,
                    SessionReply::Users(self.call("getfollowing", |c| c.get_following(&user))),
                ),
                SessionEffect::SendNewUserTransaction { id } => (
                    id,
                    SessionReply::Done(self.call("sendnewusertransaction", |c| {
                        c.send_new_user_transaction(&user)
                    })),
                ),
                SessionEffect::LastHave { id } => (
                    id,
                    SessionReply::LastHave(
                        self.call("getlasthave", |c| c.get_last_have(&user, None)),
                    ),
                ),
                SessionEffect::Log(level, line) => {
                    self.log(level, line);
                    continue;
                }
                SessionEffect::StartAgainAt(at) => {
                    self.timers.set(Timer::Startup, at);
                    continue;
                }
                SessionEffect::RefollowAt(at) => {
                    self.timers.set(Timer::Refollow, at);
                    continue;
                }
                SessionEffect::Ready(lasthave) => {
                    self.ready_with(&lasthave);
                    continue;
                }
            };
            self.session.handle_reply(id, reply, Instant::now());
        }
    }

    /// Started: our next post number and the followed users' positions from twisterd's numbers.
    fn ready_with(&mut self, lasthave: &BTreeMap<String, i64>) {
        let user = self.cfg.user.clone();
        let own_last = lasthave.get(&user).copied().unwrap_or(-1);
        self.outbox.k_at_least(own_last + 1);
        for u in self.cfg.follow.clone() {
            if let Some(&last) = lasthave.get(&u) {
                self.incoming.start_at(&u, last);
            }
        }
        self.state_dirty = true;
        self.ready = true;
        let now = Instant::now();
        self.local.start(now);
        self.private.start(now);
        self.log(
            Level::Notice,
            format!(
                "ready: Twister user '{user}', next post number {}, following {:?}",
                self.outbox.next_k(),
                self.cfg.follow
            ),
        );
        let wake = match self.doorbell.enabled() {
            Some(addr) => format!("messages from the network wake the broker through its listener {addr}"),
            None if !self.cfg.wakeup => "plugin_opt_wakeup false: messages from the network wait for the broker's next TICK (within about 100 ms)".into(),
            None => "no anonymous TCP listener to wake the broker through: messages from the network wait for its next TICK (within about 100 ms)".into(),
        };
        self.log(Level::Info, wake);
    }
}
