//! The receiving side: which messages of each sender were handed to our broker, and when the
//! receipts resource of a sender is due for a write.
//!
//! A message is acknowledged only once the broker took it: `handed` puts it aside with the number of
//! messages sent to the broker's thread by then, and `broker_backlog` (how many still wait in that
//! channel, which keeps order) makes it acknowledged once the broker took that many. A message the
//! channel refused is never handed, so its sender sends it again. Writes are batched: at most one per sender per interval, only when something
//! changed, never two at once. The first write of a run reads the resource back and merges what it
//! holds (so acknowledgements survive a restart, and the write's `seq` is above the stored one);
//! later writes use the next `seq`.

use super::codec::{self, Acks};
use super::MessageId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct FromSender {
    acks: Acks,
    /// Handled, with the count of messages sent to the broker by then and whether it makes a write
    /// due (QoS 1/2); not yet seen taken.
    handed: Vec<(u64, MessageId, bool)>,
    /// Acknowledgements not written yet.
    changed: bool,
    /// A write is due: `changed` includes a QoS 1/2 message (or a write failed).
    dirty: bool,
    /// The `seq` of our last write; `None`: read the resource first.
    seq: Option<i64>,
    writing: bool,
    last_write: Option<Instant>,
}

impl FromSender {
    /// Acknowledges `id`; the count of epochs forgotten to stay bounded.
    fn ack(&mut self, id: MessageId, urgent: bool) -> u64 {
        let set = self.acks.entry(id.epoch).or_insert_with(codec::empty);
        if set.insert(id.seq) {
            self.changed = true;
            self.dirty |= urgent;
        } else {
            // Acknowledged already: a copy, whose sender may not have read it yet.
            self.dirty |= urgent && self.changed;
        }
        let mut forgotten = 0;
        while self.acks.len() > codec::MAX_EPOCHS {
            self.acks.pop_first();
            forgotten += 1;
        }
        forgotten
    }
}

/// A write the driver carries out (`crate::dht`): with `seq: None`, it reads the resource first,
/// merges what is there, and writes with the stored `seq` + 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub sender: String,
    pub resource: String,
    pub acks: Acks,
    pub seq: Option<i64>,
}

/// What a write did: the `seq` it used and what the resource held before (a first write only).
pub type Written = Result<(i64, Acks), String>;

#[derive(Debug, Default)]
pub struct Ledger {
    senders: BTreeMap<String, FromSender>,
    /// Epochs forgotten to stay bounded (`codec::MAX_EPOCHS` per sender).
    pub forgotten: u64,
    /// Messages sent into the channel to the broker's thread so far.
    sent: u64,
}

impl Ledger {
    /// One message went into the channel to the broker's thread.
    pub fn sent_to_broker(&mut self) {
        self.sent += 1;
    }

    /// A message of `sender` was handled: handed to the broker (`sent_to_broker` just before), or
    /// not wanted here, or a copy of one handled before. Acknowledged once the broker took everything
    /// sent to it until now. `urgent` (a QoS 1/2 message, whose sender waits for the receipt) makes
    /// a write due; others (QoS 0) are acknowledged with the next write, keeping the ranges whole.
    pub fn handed(&mut self, sender: &str, id: MessageId, urgent: bool) {
        let mark = self.sent;
        self.senders
            .entry(sender.to_string())
            .or_default()
            .handed
            .push((mark, id, urgent));
    }

    /// `waiting` messages are still in the channel to the broker's thread: it took every one sent
    /// before them (the channel keeps order), so what was handled by then is acknowledged.
    pub fn broker_backlog(&mut self, waiting: usize) {
        let taken = self.sent.saturating_sub(waiting as u64);
        for from in self.senders.values_mut() {
            let done = from.handed.partition_point(|(mark, _, _)| *mark <= taken);
            if done == 0 {
                continue;
            }
            let taken: Vec<(u64, MessageId, bool)> = from.handed.drain(..done).collect();
            for (_, id, urgent) in taken {
                self.forgotten += from.ack(id, urgent);
            }
        }
    }

    /// A message of `sender` the injection log says the broker took (`crate::injected`):
    /// acknowledged now (`urgent` as for `handed`).
    pub fn taken(&mut self, sender: &str, id: MessageId, urgent: bool) {
        let from = self.senders.entry(sender.to_string()).or_default();
        self.forgotten += from.ack(id, urgent);
    }

    /// The broker took everything sent to it.
    pub fn broker_caught_up(&mut self) {
        self.broker_backlog(0);
    }

    /// The writes due at `now` (one per changed sender, at most every `interval`).
    pub fn writes_due(&mut self, now: Instant, interval: Duration) -> Vec<Write> {
        let mut out = Vec::new();
        for (sender, from) in &mut self.senders {
            let rested = from.last_write.is_none_or(|t| now >= t + interval);
            if from.dirty && !from.writing && rested {
                from.dirty = false;
                from.changed = false;
                from.writing = true;
                from.last_write = Some(now);
                out.push(Write {
                    sender: sender.clone(),
                    resource: codec::resource(sender),
                    acks: from.acks.clone(),
                    seq: from.seq.map(|s| s + 1),
                });
            }
        }
        out
    }

    /// When the next write is due, never before `now` (`None`: nothing to write).
    pub fn next_write(&self, now: Instant, interval: Duration) -> Option<Instant> {
        self.senders
            .values()
            .filter(|f| f.dirty && !f.writing)
            .map(|f| f.last_write.map_or(now, |t| (t + interval).max(now)))
            .min()
    }

    /// The outcome of a write of `sender`'s receipts.
    pub fn written(&mut self, sender: &str, result: Written) {
        let Some(from) = self.senders.get_mut(sender) else {
            return;
        };
        from.writing = false;
        match result {
            Ok((seq, before)) => {
                from.seq = Some(seq);
                codec::merge(&mut from.acks, &before);
            }
            Err(_) => {
                // Read again before the next write: the stored seq is unknown now.
                from.seq = None;
                from.dirty = true;
                from.changed = true;
            }
        }
    }

    /// A new driver goes on with this ledger: writes under way may never be answered to it, so each
    /// sender's next write reads the resource first, and what they carried is written again.
    pub fn restarted(&mut self) {
        for from in self.senders.values_mut() {
            if from.writing {
                from.writing = false;
                from.dirty = true;
                from.changed = true;
            }
            from.seq = None;
        }
    }

    /// Nothing was ever handed to it.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// What is acknowledged of `sender` (tests, logs).
    pub fn acks(&self, sender: &str) -> Option<&Acks> {
        self.senders.get(sender).map(|f| &f.acks)
    }
}

/// How the driver carries out `write` given what the resource holds now (`stored`: its value and
/// `seq`, read only when `write.seq` is `None`): the value to put, its `seq`, and what the resource
/// held that is worth keeping (a receiver's own earlier acknowledgements; junk there is ignored).
pub fn resolve(
    write: &Write,
    stored: Option<(&serde_json::Value, i64)>,
) -> (serde_json::Value, i64, Acks) {
    let (before, seq) = match (write.seq, stored) {
        (Some(seq), _) => (Acks::new(), seq),
        (None, Some((value, seq))) => (codec::decode(value).unwrap_or_default(), seq + 1),
        (None, None) => (Acks::new(), 1),
    };
    let mut all = write.acks.clone();
    codec::merge(&mut all, &before);
    (codec::encode(&all), seq, before)
}
