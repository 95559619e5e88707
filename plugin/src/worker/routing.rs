//! The worker's routing of local messages: to the public queue, to the private recipients whose
//! interest matches (or held a while for it, `crate::private_hold`), and the counting of what is not
//! forwarded (`crate::drops`).

use super::*;

impl Worker {
    pub(super) fn make_room(&mut self, topic: &str) -> bool {
        if self.queued() < self.cfg.max_queue {
            return true;
        }
        self.drop_message(
            Reason::QueueFull,
            format!(
                "a message on {topic}: {} messages already wait for a post (plugin_opt_max_queue)",
                self.cfg.max_queue
            ),
        );
        false
    }

    /// Counts a message not forwarded, and says so in the log (rate-limited per reason).
    pub(super) fn drop_message(&mut self, reason: Reason, detail: String) {
        if let Some(line) = self.drops.count(reason, &detail, Instant::now()) {
            let level = match reason {
                Reason::TooBig => Level::Error,
                _ => Level::Warning,
            };
            self.log(level, line);
        }
    }

    /// A local message, routed by the MESSAGE callback (`route`): never matched against the
    /// configuration again here.
    pub(super) fn outbound(&mut self, out: Outgoing) {
        let msg = &out.message;
        // Checked here, not only when a message must be cut: v2 may fit a large one in one post.
        if msg.payload.len() > self.cfg.max_message_bytes {
            let (size, max) = (msg.payload.len(), self.cfg.max_message_bytes);
            return self.drop_message(
                Reason::TooBig,
                format!(
                    "a message of {size} bytes: more than plugin_opt_max_message_bytes ({max})"
                ),
            );
        }
        if out.route.public && self.make_room(&msg.topic) {
            let item = self.outbox.prepare(msg.clone());
            self.outbox.push(item, None, Instant::now());
            self.counters.forwarded += 1;
            self.drive_outbox();
        }
        if !out.route.private_rules.is_empty() {
            if self.remote_known {
                self.enqueue_private(out);
            } else if self.make_room(&out.message.topic) {
                self.hold_private(out);
            }
        }
    }

    /// Queues a private forward for each listed recipient whose interest matches; with none, holds it
    /// for a while and reads the recipients' interest again at once.
    pub(super) fn enqueue_private(&mut self, out: Outgoing) {
        let recipients = self.recipients(&out);
        if recipients.is_empty() {
            if self.make_room(&out.message.topic) {
                self.hold_private(out);
            }
            return;
        }
        self.enqueue_to(&out.message, recipients);
    }

    /// The recipients of the private rules the message matched whose interest matches it.
    fn recipients(&self, out: &Outgoing) -> Vec<String> {
        interested_recipients(
            &self.cfg.private,
            &out.route.private_rules,
            &self.remote,
            &out.message.topic,
        )
    }

    pub(super) fn enqueue_to(&mut self, msg: &Message, recipients: Vec<String>) {
        let item = self.outbox.prepare(msg.clone());
        self.drive_outbox();
        for u in recipients {
            if !self.make_room(&msg.topic) {
                return;
            }
            self.outbox.push(item.clone(), Some(u), Instant::now());
            self.counters.forwarded += 1;
        }
    }

    /// Room was made for it: it counts as queued while held.
    pub(super) fn hold_private(&mut self, msg: Outgoing) {
        if self.held_private.push(Instant::now(), msg) {
            self.reread_interest();
        }
    }

    pub(super) fn reread_interest(&mut self) {
        let recipients = self.private_recipients();
        if !recipients.is_empty() {
            self.dht.send(DhtJob::ReadInterest(recipients));
        }
    }

    /// Routes the held messages some recipient now wants; the others wait on (`restart`: their grace
    /// period starts now, the interest having just become known).
    pub(super) fn route_held(&mut self, restart: bool) {
        let now = Instant::now();
        for (since, msg) in self.held_private.take_all() {
            let recipients = self.recipients(&msg);
            if recipients.is_empty() {
                self.held_private
                    .keep(if restart { now } else { since }, msg);
                continue;
            }
            self.enqueue_to(&msg.message, recipients);
        }
    }

    /// Drops the held messages whose grace period ended; reads the interest again when due.
    pub(super) fn expire_held(&mut self, now: Instant) {
        if !self.remote_known {
            return;
        }
        for msg in self.held_private.expired(now) {
            let detail = format!(
                "a private message on {}: no listed recipient's published interest matched it within {:?}",
                msg.message.topic,
                crate::private_hold::GRACE
            );
            self.drop_message(Reason::NoRecipientInterested, detail);
        }
        if self.held_private.reread_due(now) {
            self.reread_interest();
        }
    }
}
