//! The worker's side of the injection log (`crate::injected`): a received message with an id is
//! settled (kept as seen in the state file, acknowledged to its sender) only once the broker's thread
//! wrote down that the broker took it, so a kill -9 between the state save and the injection neither
//! loses it (its retransmission is delivered) nor duplicates it (the log is merged at start).

use super::*;
use crate::injected::Mark;
use crate::wire::MessageId;

/// What the inbox's read gave, for `hand_to_broker`.
pub(super) enum Handled {
    /// A new message (or one without id): `wanted` when a subscriber here wants it.
    Read {
        from: String,
        id: Option<MessageId>,
        wanted: Option<Message>,
        /// QoS 1/2: its sender waits for the receipt (`Ledger::handed`).
        urgent: bool,
    },
    /// A copy of an id handed on before.
    Again { from: String, id: MessageId },
}

/// How often the log is looked at while marked messages wait for their injection.
pub(super) const LOOK_AGAIN: Duration = Duration::from_millis(50);

impl Worker {
    /// Hands one read message on: injected (with its mark when the log is on: settled once the log
    /// has it), or settled now when nothing is injected.
    pub(super) fn hand_one(&mut self, handled: Handled) {
        self.receipts.refused_by_broker = false;
        match handled {
            Handled::Read {
                from,
                id,
                wanted: Some(m),
                urgent,
            } => {
                let mark = id
                    .filter(|_| self.injections.is_some())
                    .and_then(|id| Mark::new(&from, id, urgent));
                match (mark, id) {
                    (Some(mark), _) => {
                        self.injections_pending = true;
                        self.inject_item(ToBroker::PublishRecorded(m, mark));
                    }
                    (None, id) => {
                        self.inject(m);
                        if let Some(id) = id {
                            self.settle(&from, id, urgent);
                        }
                    }
                }
            }
            Handled::Read {
                from,
                id: Some(id),
                wanted: None,
                urgent,
            } => self.settle(&from, id, urgent),
            Handled::Read { .. } => {}
            Handled::Again { from, id } => {
                // Acknowledged again only once settled: one handed and not injected yet is
                // acknowledged when the log has it.
                // A copy means the sender waits for a receipt of it.
                if self.settled.seen(&from, id) {
                    self.acknowledge(&from, id, true);
                }
            }
        }
    }

    /// Settled without the log (nothing to inject, or no log): seen and acknowledged now (unless the
    /// broker's channel just refused it).
    fn settle(&mut self, from: &str, id: MessageId, urgent: bool) {
        if !self.receipts.refused_by_broker {
            self.settled.check(from, Some(id));
            self.state_dirty = true;
        }
        self.acknowledge(from, id, urgent);
    }

    /// Reads what the broker's thread injected since the last look: settled, acknowledged, and saved
    /// with the next state save (after which its slots in the log are free again).
    pub(super) fn take_injections(&mut self) {
        let Some(reader) = self.injections.as_mut() else {
            return;
        };
        let backlog = self.to_broker.publish_backlog();
        let (ids, damaged) = match reader.take_new() {
            Ok(read) => read,
            Err(e) => {
                return self.log_once(
                    "injections-read",
                    Level::Error,
                    format!("cannot read the injection log: {e}; messages received are not acknowledged until it reads (said once)"),
                );
            }
        };
        if backlog == 0 {
            self.injections_pending = false;
        }
        if damaged > 0 {
            self.log_once(
                "injections-damaged",
                Level::Error,
                format!("{damaged} damaged records in the injection log (said once)"),
            );
        }
        if ids.is_empty() {
            return;
        }
        for (from, id, urgent) in ids {
            self.settled.check(&from, Some(id));
            self.incoming.mark_seen(&from, id);
            self.receipts.ledger.taken(&from, id, urgent);
        }
        self.state_dirty = true;
    }

    /// While marked messages wait for the broker: when to look at the log again.
    pub(super) fn injections_deadline(&self, now: Instant) -> Option<Instant> {
        self.injections_pending.then_some(now + LOOK_AGAIN)
    }
}
