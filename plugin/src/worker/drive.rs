//! The worker as the driver of the relay core (`crate::relay`): it carries out each effect of the
//! outbox, the inbox and the interest with the typed twisterd client (or the DHT thread) and feeds the
//! reply back, until none has anything left to ask. Calls are made one at a time, so at most one
//! request is outstanding.

use super::injections::Handled;
use super::*;
use crate::bus::{DhtAnswer, DhtDone, DhtJob, DhtPurpose};
use crate::relay::inbox::{InboxEffect, InboxReply};
use crate::relay::interest::local::LocalEffect;
use crate::relay::interest::private::PrivateEffect;
use crate::relay::interest::profile::{profile_value, topics_of};
use crate::relay::{Effect, Reply};

impl Worker {
    /// Carries out what the outbox asks for, feeding each answer back.
    pub(super) fn drive_outbox(&mut self) {
        while let Some(effect) = self.outbox.poll_effect() {
            match effect {
                Effect::Post { id, k, to, text } => {
                    let user = self.cfg.user.clone();
                    let result = match &to {
                        None => self.call("newpostmsg", |c| c.new_post(&user, k, &text)),
                        Some(u) => self.call("newdirectmsg", |c| c.new_dm(&user, k, u, &text)),
                    };
                    self.outbox
                        .handle_reply(id, Reply::Posted(result), Instant::now());
                }
                Effect::OwnLastHave { id } => {
                    let user = self.cfg.user.clone();
                    let result = self.call("getlasthave", |c| {
                        c.get_last_have(&user, Some(std::slice::from_ref(&user)))
                    });
                    self.outbox
                        .handle_reply(id, Reply::LastHave(result), Instant::now());
                }
                Effect::Height { id } => {
                    let result = self.call("getinfo", |c| c.get_height());
                    self.outbox
                        .handle_reply(id, Reply::Height(result), Instant::now());
                }
                Effect::Log(level, line) => self.log(level, line),
                Effect::Dropped(reason, detail) => self.drop_message(reason, detail),
                Effect::StateChanged => self.state_dirty = true,
                Effect::UseNumber(k) => {
                    if let Err(e) = self.used_numbers.use_number(k) {
                        let path = self.used_numbers.path().display().to_string();
                        self.log_once("used-k", Level::Error, format!("cannot write {path}: {e}; a restart after twisterd forgot a post may use its number again"));
                    }
                }
            }
        }
    }

    /// Carries out what the inbox asks for, feeding each answer back, and hands on what it read.
    pub(super) fn drive_inbox(&mut self) {
        let user = self.cfg.user.clone();
        let mut read = Vec::new();
        while let Some(effect) = self.incoming.poll_effect() {
            let (id, reply) = match effect {
                InboxEffect::LastHave { id } => (
                    id,
                    InboxReply::LastHave(
                        self.call("getlasthave", |c| c.get_last_have(&user, None)),
                    ),
                ),
                InboxEffect::DirectMsgs { id, window } => (
                    id,
                    InboxReply::DirectMsgs(self.call("getdirectmsgs", |c| {
                        c.get_direct_msgs(&user, crate::relay::inbox::directs::PAGE, &window)
                    })),
                ),
                InboxEffect::Posts {
                    id,
                    from,
                    since,
                    upto,
                    count,
                } => (
                    id,
                    InboxReply::Posts(
                        self.call("getposts", |c| c.get_posts(&from, since, upto, count)),
                    ),
                ),
                InboxEffect::OwnLast(own) => {
                    self.outbox.own_last(own, Instant::now());
                    self.drive_outbox();
                    continue;
                }
                InboxEffect::Deliver {
                    from,
                    k,
                    what,
                    message,
                    id,
                } => {
                    // Only QoS 1/2 messages make a receipt due (QoS 0 ones join the next).
                    let urgent = message.qos > 0;
                    let wanted = self.deliver(&from, k, what, message);
                    read.push(Handled::Read {
                        from,
                        id,
                        wanted,
                        urgent,
                    });
                    continue;
                }
                InboxEffect::Log(level, line) => {
                    self.log(level, line);
                    continue;
                }
                InboxEffect::Dropped(reason, detail) => {
                    self.drop_message(reason, detail);
                    continue;
                }
                InboxEffect::Duplicate { from, id } => {
                    // Its first copy was handed on before: acknowledged again once settled.
                    read.push(Handled::Again { from, id });
                    continue;
                }
                InboxEffect::StateChanged => {
                    self.state_dirty = true;
                    continue;
                }
            };
            self.incoming.handle_reply(id, reply, Instant::now());
        }
        self.hand_to_broker(read);
    }

    /// Publishes what was read into the broker (the messages wanted here), after writing down how
    /// far each sender was read. The state file keeps as seen only the ids settled: the broker took
    /// them (the injection log says so, `worker/injections.rs`) or they needed no injection. So a
    /// crash before the broker took a message loses nothing: its post is not read again, but it is
    /// not acknowledged and not seen, so its retransmission is delivered; once taken, the log keeps
    /// it from being injected twice.
    fn hand_to_broker(&mut self, read: Vec<Handled>) {
        if read.is_empty() {
            return;
        }
        if self.state_dirty {
            self.save_state_now();
        }
        for handled in read {
            self.hand_one(handled);
        }
    }

    /// Hands a DHT answer to the part of the relay that asked for it.
    pub(super) fn dht_answer(&mut self, done: DhtDone) {
        let now = Instant::now();
        match done.purpose {
            DhtPurpose::OurProfile => {
                self.local.profile_answer(done.result, now);
                self.drive_local();
            }
            DhtPurpose::InterestOf(user) => {
                if let Ok(DhtAnswer::Profile(entry)) = &done.result {
                    let filters = topics_of(&profile_value(&entry.value));
                    self.receivers_interest(&user, filters.as_ref());
                }
                self.private.answer(user, done.result, now);
                self.drive_private();
            }
        }
    }

    /// Carries out what our interest asks for: profile writes, held messages to publish.
    pub(super) fn drive_local(&mut self) {
        while let Some(effect) = self.local.poll_effect() {
            match effect {
                LocalEffect::ProfileWrite(_) => self.retained_interest_changed(),
                LocalEffect::Dht(call) => self.dht.send(DhtJob {
                    purpose: DhtPurpose::OurProfile,
                    call,
                }),
                LocalEffect::Inject(m) => self.inject(m),
                LocalEffect::StateChanged => self.state_dirty = true,
                LocalEffect::Log(level, line) => self.log(level, line),
            }
        }
        if std::mem::take(&mut self.ring_pending) {
            self.doorbell.ring();
        }
    }

    /// Carries out what the private forwards ask for: reads of the recipients' interest, DMs.
    pub(super) fn drive_private(&mut self) {
        while let Some(effect) = self.private.poll_effect() {
            match effect {
                PrivateEffect::ReadInterest(job) => self.dht.send(job),
                PrivateEffect::Send { message, id, to } => {
                    self.enqueue_to(&message, id, to);
                    // No longer held: its queued copies hold its spool record now.
                    self.outbox.let_go_record(id);
                }
                PrivateEffect::Expired(id) => self.outbox.let_go_record(id),
                PrivateEffect::Dropped(reason, detail) => self.drop_message(reason, detail),
                PrivateEffect::Log(level, line) => self.log(level, line),
            }
        }
    }

    /// The worker's counters with the outbox's and the inbox's.
    pub(super) fn counters(&self) -> Counters {
        Counters {
            outbox: self.outbox.counters,
            inbox: self.incoming.counters,
            ..self.counters
        }
    }

    /// Messages waiting for a post, held private forwards included (`plugin_opt_max_queue`).
    pub(super) fn queued(&self) -> usize {
        self.outbox.len() + self.private.held_len()
    }

    /// While out of budget, or while posts are scarce and messages wait: one `getinfo` per poll
    /// interval; posts as soon as a block allows.
    pub(super) fn watch_height(&mut self) {
        self.outbox.watch_height(Instant::now());
        self.drive_outbox();
    }
}
