//! The worker's state file and stop: what survives a restart (post numbers, read positions, the
//! sessions, what is still unsent), written at most every STATE_SAVE_EVERY, and the last flush.

use super::*;
use crate::relay::outbox::Queued;
use crate::state::{Destination, Unsent};
use crate::wire;

impl Worker {
    /// Queues again what a previous run accepted but could not post before it stopped.
    pub(super) fn restore_unsent(&mut self) {
        let unsent = std::mem::take(&mut self.saved.unsent);
        if unsent.is_empty() {
            return;
        }
        let n = unsent.len();
        let now = Instant::now();
        for u in unsent {
            let to = match u.to {
                Destination::Public => None,
                Destination::Direct(user) => Some(user),
                Destination::Undecided => {
                    if let Some(it) = wire::item_message(&u.item) {
                        // Kept across a restart without its route: routed by the configuration now.
                        let route = self.cfg.router.route(&it.message.topic);
                        let out = Outgoing {
                            message: it.message,
                            route,
                            id: it.id,
                        };
                        self.outbox.hold_record(out.id);
                        self.private.restore(out, now);
                    }
                    continue;
                }
            };
            if let Some(item) = Queued::restored(&u.item, self.cfg.wire_format) {
                self.outbox.push(item, to, now);
            }
        }
        self.state_dirty = true;
        self.log(
            Level::Notice,
            format!("{n} messages not posted before the last stop are queued again"),
        );
    }

    /// Everything still queued, as it is kept in the state file.
    pub(super) fn unsent(&self) -> Vec<Unsent> {
        let mut out = self.outbox.unsent();
        out.extend(self.private.held_messages().map(|m| Unsent {
            to: Destination::Undecided,
            item: wire::encode_item_with_id(&m.message, m.id),
        }));
        out
    }

    /// Writes the state file when something changed, at most every STATE_SAVE_EVERY.
    pub(super) fn save_state(&mut self) {
        if self.state_dirty && self.last_save.elapsed() >= STATE_SAVE_EVERY {
            self.save_state_now();
        }
    }

    /// What the budget learnt of our registration, into the state to save.
    pub(super) fn save_learnt(&self, saved: &mut crate::state::Saved) {
        let l = self.outbox.learnt();
        saved.registered_at_least = l.registered_at_least;
        saved.registered_at_most = l.registered_at_most;
        saved.budget_refused_once = l.refused_once;
    }

    pub(super) fn save_state_now(&mut self) {
        if !self.state_dirty {
            return;
        }
        self.last_save = Instant::now();
        self.saved.interest = self.local.saved();
        self.saved.next_k = self.outbox.next_k();
        self.saved.seq = self.outbox.seq();
        self.saved.cursors = self.incoming.cursors().clone();
        self.saved.retained = self.retained_json();
        // Only what the broker took: an id handed and not injected yet is delivered if it comes again.
        self.saved.seen = self.settled.clone();
        let recorded = self.injections.as_ref().map(|r| r.read_so_far());
        let mut saved = std::mem::take(&mut self.saved);
        self.save_learnt(&mut saved);
        self.saved = saved;
        let Some(path) = self.cfg.state_file.clone() else {
            self.state_dirty = false;
            return;
        };
        match self.saved.save(&path) {
            Ok(()) => {
                self.state_dirty = false;
                if let (Some(r), Some(n)) = (self.injections.as_ref(), recorded) {
                    r.saved_up_to(n);
                }
            }
            Err(e) => self.log_once(
                "state-write",
                Level::Error,
                format!("{e}: a restart may replay or reuse post numbers"),
            ),
        }
    }

    pub(super) fn shutdown(&mut self, outbound: &Outbound) {
        self.stopping = true;
        let handed = outbound.spool_progress().handed_so_far();
        while let Some(m) = outbound.take() {
            self.outbound(m);
        }
        // Counted from the broker's request: the broker waits only so long (supervise::STOP_WAIT).
        let asked = self.health.stop_asked_at().unwrap_or_else(Instant::now);
        let until = asked + SHUTDOWN_FLUSH;
        if self.ready {
            while self.queued() > 0 && Instant::now() < until {
                let before = self.queued();
                self.outbox.flush_now(1, Instant::now());
                self.drive_outbox();
                if self.queued() == before {
                    break;
                }
            }
        }
        self.outbox.stop();
        self.drive_outbox();
        if self.queued() > 0 {
            let kept = if self.cfg.state_file.is_some() {
                "kept in the state file for the next start"
            } else {
                "lost: no plugin_opt_state_file"
            };
            self.log(
                Level::Warning,
                format!(
                    "stopping with {} messages not yet posted ({kept})",
                    self.queued()
                ),
            );
        }
        // Our newest retained values, whatever the interval: the DHT thread writes them before it stops.
        self.retained_write(true);
        self.saved.unsent = self.unsent();
        self.take_injections();
        self.saved.clean_stop = true;
        self.state_dirty = true;
        self.save_state_now();
        if self.queued() == 0 || (self.cfg.state_file.is_some() && !self.state_dirty) {
            // Posted, or kept in the state file: not replayed from the spool.
            outbound.spool_progress().taken(handed);
        }
        self.receipts_summary();
        let c = self.counters();
        let forgotten = self.incoming.seen().forgotten();
        self.log(Level::Notice, format!(
            "stopped: forwarded {} (in {} posts, {} DMs), received {}, injected {}, malformed {}, dropped {}: {}; duplicates dropped by message id {} (ids forgotten by the bounds: {} epochs, {} seqs); posts of unknown outcome {}, waits for a block {}, internal errors {}",
            c.forwarded, c.outbox.posts, c.outbox.dms, c.received, c.injected, c.inbox.malformed, self.drops.dropped(), self.drops.summary(), c.inbox.duplicate_ids, forgotten.epochs, forgotten.absorbed, c.outbox.unknown_outcomes, c.outbox.budget_waits, self.health.internal_errors()
        ));
        self.dht.stop();
    }
}
