//! The worker's routing of local messages: to the public queue, to the private recipients whose
//! interest matches (or held a while for it: `crate::relay::interest::private` decides), and the
//! counting of what is not forwarded (`crate::drops`).

use super::*;
use crate::relay::interest::private::Routed;

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
    /// configuration again here. Its spool record is held open while it is routed, then by the copies
    /// queued or held (`crate::relay::release`).
    pub(super) fn outbound(&mut self, mut out: Outgoing) {
        // Its id from here on (`crate::ids`): the spool's, or the next of this run.
        out.id = out.id.or_else(|| Some(self.run_ids.next()));
        let id = out.id;
        self.outbox.hold_record(id);
        self.route_outgoing(out);
        self.outbox.let_go_record(id);
    }

    fn route_outgoing(&mut self, out: Outgoing) {
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
            let item = self.outbox.prepare(msg.clone(), out.id);
            self.outbox.push(item, None, Instant::now());
            self.counters.forwarded += 1;
            if out.message.retain {
                self.retained_publish(&out.message, out.id);
            }
            if let Some(id) = out.id {
                self.track(id, &out.message, true, &[]);
            }
            self.drive_outbox();
        }
        if !out.route.private_rules.is_empty() {
            match self.private.route(&out) {
                Routed::Send(to) => self.enqueue_to(&out.message, out.id, to),
                Routed::Hold => {
                    // Room is made for it: it counts as queued while held.
                    if self.make_room(&out.message.topic) {
                        // Its spool record stays open while it is held.
                        self.outbox.hold_record(out.id);
                        self.private.hold(out, Instant::now());
                        self.drive_private();
                    }
                }
            }
        }
    }

    pub(super) fn enqueue_to(
        &mut self,
        msg: &Message,
        id: Option<crate::wire::MessageId>,
        recipients: Vec<String>,
    ) {
        let item = self.outbox.prepare(msg.clone(), id);
        self.drive_outbox();
        let mut queued = Vec::new();
        for u in recipients {
            if !self.make_room(&msg.topic) {
                break;
            }
            self.outbox
                .push(item.clone(), Some(u.clone()), Instant::now());
            self.counters.forwarded += 1;
            queued.push(u);
        }
        if let Some(id) = id {
            self.track(id, msg, false, &queued);
        }
    }
}
