//! The worker's start-up with twisterd: the user in the wallet (created and registered with
//! `plugin_opt_create_user`), following ourselves and the configured users (retried until they are
//! registered), our next post number and the read positions of followed users, then ready.

use super::*;

impl Worker {
    pub(super) fn retry_startup(&mut self) {
        self.next_startup = Instant::now() + self.startup_backoff;
        self.startup_backoff = (self.startup_backoff * 2).min(Duration::from_secs(10));
    }

    pub(super) fn startup(&mut self) {
        let user = self.cfg.user.clone();
        let wallet = match self.call("listwalletusers", |c| c.list_wallet_users()) {
            Ok(v) => v,
            Err(_) => return self.retry_startup(),
        };
        let in_wallet = wallet.contains(&user);
        if !in_wallet {
            if !self.cfg.create_user {
                self.log_once("not-in-wallet", Level::Error, format!("user '{user}' is not in twisterd's wallet: create it there (createwalletuser + sendnewusertransaction) or set plugin_opt_create_user true"));
                return self.retry_startup();
            }
            match self.call("createwalletuser", |c| c.create_wallet_user(&user)) {
                Ok(_) => self.log(
                    Level::Notice,
                    format!("created user '{user}' in twisterd's wallet"),
                ),
                // Already there (created meanwhile): the code twisterd uses for it, whatever its text.
                Err(e) if e.is(Refusal::AlreadyInWallet) || e.is(Refusal::NotInWallet) => {}
                Err(e) => {
                    self.log_once(
                        "create-failed",
                        Level::Error,
                        format!("createwalletuser {user} failed: {e}"),
                    );
                    return self.retry_startup();
                }
            }
        }
        if !self.follow_all() {
            return self.retry_startup();
        }
        let following = match self.call("getfollowing", |c| c.get_following(&user)) {
            Ok(v) => v,
            Err(_) => return self.retry_startup(),
        };
        let follows_self = following.contains(&user);
        if !follows_self {
            // Following only takes users registered in a block: ourselves not yet.
            if self.cfg.create_user {
                match self.call("sendnewusertransaction", |c| {
                    c.send_new_user_transaction(&user)
                }) {
                    Ok(_) => self.log(
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
            }
            self.log_once(
                "waiting-registration",
                Level::Notice,
                format!("waiting for '{user}' to be registered in a block"),
            );
            self.startup_backoff = Duration::from_millis(250);
            self.next_startup = Instant::now() + self.startup_backoff;
            return;
        }
        let lasthave = match self.call("getlasthave", |c| c.get_last_have(&user, None)) {
            Ok(v) => v,
            Err(_) => return self.retry_startup(),
        };
        let own_last = lasthave.get(&user).copied().unwrap_or(-1);
        self.outbox.k_at_least(own_last + 1);
        for u in self.cfg.follow.clone() {
            if let Some(&last) = lasthave.get(&u) {
                self.incoming.start_at(&u, last);
            }
        }
        self.state_dirty = true;
        self.ready = true;
        if self.interest.has_returning() {
            self.resubscribe_until = Some(Instant::now() + RESUBSCRIBE_GRACE);
        }
        self.profile_due = Some(Instant::now());
        self.next_interest_refresh = Instant::now();
        if self.private_recipients().is_empty() {
            self.remote_known = true;
        }
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

    /// Follows ourselves and the configured users; remembers who is not registered yet. False when
    /// twisterd could not be asked.
    pub(super) fn follow_all(&mut self) -> bool {
        // Set first, so that no way out of here leaves a deadline in the past.
        self.next_refollow = Instant::now() + Duration::from_secs(5);
        let user = self.cfg.user.clone();
        let mut all = vec![user.clone()];
        all.extend(self.cfg.follow.iter().cloned());
        if self.call("follow", |c| c.follow(&user, &all)).is_err() {
            return false;
        }
        let Ok(held) = self.call("getfollowing", |c| c.get_following(&user)) else {
            return false;
        };
        let missing: Vec<String> = self
            .cfg
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
        self.next_refollow = Instant::now() + Duration::from_secs(5);
        true
    }
}
