//! The worker as the driver of receipts and retransmission (`crate::relay::receipts`): what it
//! delivered goes into the ledger, acknowledged once the broker took it and written to the DHT in
//! batches (by the DHT thread); what it forwarded at QoS 1/2 goes into the tracker, whose receivers'
//! receipts the DHT thread reads while something waits; resends are queued again like any message.

use super::*;
use crate::bus::Acks;
use crate::relay::receipts::ledger::{Ledger, Written};
use crate::relay::receipts::tracker::{self, Tracker, Via};
use crate::relay::receipts::{public_receivers, MessageId};
use std::collections::{BTreeMap, BTreeSet};

/// How often the unacknowledged messages are said per receiver, while there are any.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Longest wait between two resends of one message.
const MAX_RESEND_BACKOFF: Duration = Duration::from_secs(300);

pub struct ReceiptsDriver {
    pub ledger: Ledger,
    pub tracker: Tracker,
    /// Receivers whose receipts were asked of the DHT thread and not answered yet.
    reading: BTreeSet<String>,
    next_read: Option<Instant>,
    next_report: Option<Instant>,
    /// Something was resent or reported late since everything was last acknowledged.
    late: bool,
    /// The message being delivered found the broker's channel full (`inject`): not acknowledged.
    pub refused_by_broker: bool,
    /// The published interest of `plugin_opt_receivers` (absent: not known or none).
    interest: BTreeMap<String, Vec<String>>,
    /// The next read of the receivers' interest (with `plugin_opt_interest_refresh_ms`).
    next_interest: Option<Instant>,
}

impl ReceiptsDriver {
    pub fn new(cfg: &Config) -> Self {
        ReceiptsDriver {
            ledger: Ledger::default(),
            tracker: Tracker::new(tracker::Settings {
                timeout: cfg.receipts.timeout,
                max_backoff: MAX_RESEND_BACKOFF,
                give_up: cfg.receipts.give_up,
            }),
            reading: BTreeSet::new(),
            next_read: None,
            next_report: None,
            late: false,
            refused_by_broker: false,
            interest: BTreeMap::new(),
            next_interest: (!cfg.receipts.receivers.is_empty()).then(Instant::now),
        }
    }
}

impl Worker {
    /// What a restarted worker goes on with (`salvage`): the messages kept for receipts and the
    /// receipts not written yet; reads and writes under way are asked again.
    pub(super) fn take_receipts(&mut self) -> ReceiptsDriver {
        let mut kept = std::mem::replace(&mut self.receipts, ReceiptsDriver::new(&self.cfg));
        kept.reading.clear();
        kept.next_read = None;
        kept.ledger.restarted();
        kept
    }

    /// A message of `from` with `id` was handled (see `Ledger::handed`), unless the broker's
    /// channel refused it just now.
    pub(super) fn acknowledge(&mut self, from: &str, id: MessageId, urgent: bool) {
        if !std::mem::take(&mut self.receipts.refused_by_broker) {
            self.receipts.ledger.handed(from, id, urgent);
        }
    }

    /// A QoS 1/2 message queued for the public timeline and/or as DMs to `recipients`: kept until
    /// every intended receiver acknowledged it.
    pub(super) fn track(
        &mut self,
        id: MessageId,
        message: &Message,
        public: bool,
        recipients: &[String],
    ) {
        if self.cfg.receipts.timeout.is_zero() || message.qos == 0 {
            return;
        }
        let mut receivers: BTreeSet<String> = recipients.iter().cloned().collect();
        let via = if public {
            receivers.extend(public_receivers(
                &self.cfg.receipts.receivers,
                &self.receipts.interest,
                &message.topic,
            ));
            Via::Public
        } else {
            Via::Private
        };
        let kept = self
            .receipts
            .tracker
            .track(id, message.clone(), via, receivers, Instant::now());
        if kept {
            // With the spool on, its record stays until the receipts came (`relay::release`).
            self.outbox.await_receipts(Some(id));
        }
    }

    /// `inject` put a message into the broker's channel (`sent`), or the channel refused it.
    pub(super) fn receipts_sent_to_broker(&mut self, sent: bool) {
        if sent {
            self.receipts.ledger.sent_to_broker();
        } else {
            self.receipts.refused_by_broker = true;
        }
    }

    /// A user's published interest was read: kept when it is an expected receiver.
    pub(super) fn receivers_interest(&mut self, user: &str, filters: Option<&Vec<String>>) {
        if !self.cfg.receipts.receivers.iter().any(|r| r == user) {
            return;
        }
        match filters {
            Some(f) => self.receipts.interest.insert(user.to_string(), f.clone()),
            None => self.receipts.interest.remove(user),
        };
    }

    pub(super) fn receipts_written(&mut self, sender: &str, result: Written) {
        if let Err(e) = &result {
            self.log_once(
                "receipts-write",
                Level::Warning,
                format!("writing our receipts for {sender} to the DHT failed: {e}; retrying (said once)"),
            );
        }
        self.receipts.ledger.written(sender, result);
    }

    pub(super) fn receipts_read(&mut self, receiver: &str, acks: Result<Acks, String>) {
        self.receipts.reading.remove(receiver);
        match acks {
            Ok(acks) => {
                self.receipts
                    .tracker
                    .acknowledged(receiver, &acks, Instant::now());
                if self.receipts.tracker.is_empty() && std::mem::take(&mut self.receipts.late) {
                    let c = self.receipts.tracker.counters;
                    self.log(
                        Level::Notice,
                        format!(
                            "every message acknowledged again (resent {} so far, gave up {})",
                            c.resent, c.gave_up
                        ),
                    );
                }
            }
            Err(e) => self.log_once(
                &format!("receipts-read-{receiver}"),
                Level::Warning,
                format!("reading the receipts of {receiver}: {e} (said once per receiver)"),
            ),
        }
    }

    /// When receipts next need the worker, never before `now`.
    pub(super) fn receipts_deadline(&self, now: Instant) -> Option<Instant> {
        let r = &self.receipts;
        let interval = self.cfg.receipts.interval;
        let mut at = [
            r.ledger.next_write(now, interval),
            r.tracker.poll_timeout(now),
            r.next_read.filter(|_| !r.tracker.is_empty()),
            r.next_report.filter(|_| !r.tracker.is_empty()),
            r.next_interest,
        ]
        .into_iter()
        .flatten()
        .min()?;
        at = at.max(now);
        Some(at)
    }

    pub(super) fn step_receipts(&mut self, now: Instant) {
        let interval = self.cfg.receipts.interval;
        // Receiving: what the broker took is acknowledged, and written in batches.
        self.receipts
            .ledger
            .broker_backlog(self.to_broker.publish_backlog());
        let writes = self.receipts.ledger.writes_due(now, interval);
        if !writes.is_empty() {
            self.dht.write_receipts(writes);
        }
        if self.receipts.next_interest.is_some_and(|t| now >= t) {
            self.receipts.next_interest = Some(now + self.cfg.interest_refresh);
            for user in self.cfg.receipts.receivers.clone() {
                self.dht.send(crate::bus::DhtJob {
                    purpose: crate::bus::DhtPurpose::InterestOf(user.clone()),
                    call: crate::bus::DhtCall::GetProfile { user },
                });
            }
        }
        // Sending: receivers' receipts read while something waits, resends, give-ups.
        if self.receipts.tracker.is_empty() {
            self.receipts.next_read = None;
            self.receipts.next_report = None;
        } else {
            if self.receipts.next_read.is_none_or(|t| now >= t) {
                self.receipts.next_read = Some(now + interval);
                let ask: Vec<String> = self
                    .receipts
                    .tracker
                    .awaited()
                    .into_iter()
                    .filter(|r| !self.receipts.reading.contains(r))
                    .collect();
                if !ask.is_empty() {
                    self.receipts.reading.extend(ask.iter().cloned());
                    self.dht.read_receipts(ask);
                }
            }
            if self.receipts.next_report.is_some_and(|t| now >= t) {
                self.receipts.next_report = Some(now + REPORT_EVERY);
                self.report_unacknowledged(now);
            }
        }
        for id in self.outbox.take_posted() {
            self.receipts.tracker.posted(id, now);
        }
        let due = self.receipts.tracker.handle_timeout(now);
        // Said when resends begin, then every REPORT_EVERY while messages wait.
        if !due.resends.is_empty() && self.receipts.next_report.is_none() {
            self.receipts.next_report = Some(now + REPORT_EVERY);
            self.report_unacknowledged(now);
        }
        for (receiver, n) in &due.gave_up {
            self.log(
                Level::Warning,
                format!(
                    "gave up waiting for {receiver} to acknowledge {n} messages (plugin_opt_receipt_give_up_ms {} ms): released unacknowledged",
                    self.cfg.receipts.give_up.as_millis()
                ),
            );
        }
        self.receipts.late |= !due.resends.is_empty();
        for resend in due.resends {
            let item = self.outbox.prepare(resend.message, Some(resend.id));
            // A DM to a receiver that missed a message may use the budget's reserve; a public post
            // again waits for ordinary posts like the first one did.
            match resend.to {
                Some(to) => self.outbox.push_reserved(item, Some(to), now),
                None => self.outbox.push(item, None, now),
            }
        }
        let released = self.receipts.tracker.take_released();
        self.release(&released);
        self.drive_outbox();
    }

    /// What receipts did this run, said at stop: messages kept, acknowledged, resent, given up, and
    /// the time from queueing to a receiver's receipt.
    pub(super) fn receipts_summary(&self) {
        let t = &self.receipts.tracker;
        let c = t.counters;
        if c.tracked == 0 && self.receipts.ledger.is_empty() {
            return;
        }
        let ms = |q| {
            t.latency_quantile(q)
                .map_or("-".to_string(), |d| d.as_millis().to_string())
        };
        self.log(
            Level::Notice,
            format!(
                "receipts: kept {} messages for receipts, acknowledged {}, resent {}, gave up {}, still unacknowledged {}; time to a receipt p50 {} ms, p99 {} ms",
                c.tracked, c.acknowledged, c.resent, c.gave_up, t.len(), ms(0.5), ms(0.99)
            ),
        );
    }

    /// One line per receiver with messages unacknowledged for longer than the receipt timeout.
    fn report_unacknowledged(&mut self, now: Instant) {
        let late = self.cfg.receipts.timeout;
        let lines: Vec<String> = self
            .receipts
            .tracker
            .unacknowledged()
            .into_iter()
            .filter(|u| now.saturating_duration_since(u.oldest) >= late)
            .map(|u| {
                format!(
                    "unacknowledged by {}: {} messages, the oldest sent {} s ago",
                    u.receiver,
                    u.messages,
                    now.saturating_duration_since(u.oldest).as_secs()
                )
            })
            .collect();
        self.receipts.late |= !lines.is_empty();
        for line in lines {
            self.log(Level::Notice, line);
        }
    }

    /// Messages no longer kept for receipts: the spool may let their records go.
    fn release(&mut self, released: &[MessageId]) {
        for id in released {
            self.outbox.receipts_done(Some(*id));
        }
    }
}
