//! The worker's part of retained values in the DHT (`crate::relay::retained` decides, the DHT thread
//! reads and writes, `crate::retained_dht`): retained publishes of public forwards go to the writer,
//! its puts to the DHT thread; followed users are synced at start-up, when our interest changes and
//! every `RESYNC_EVERY`; what a sync brought is published into the broker as retained messages, through
//! the same path as every message from the network, when newer than what the broker holds.

use super::*;
use crate::relay::retained::reader::{Progress, Reader, Synced};
use crate::relay::retained::writer::{Refusal, Writer};
use crate::retained_dht::{RetainedJob, RetainedReply};
use crossbeam_channel::{unbounded, Sender};
use std::time::{SystemTime, UNIX_EPOCH};

/// Followed users' indexes are read again this often (a value their posts did not bring, say).
const RESYNC_EVERY: Duration = Duration::from_secs(600);
/// A sync that left values for later goes on this soon.
const MORE_AFTER: Duration = Duration::from_millis(200);
/// Values whose posts were not read yet are looked at again this soon (fetched again: a newer value
/// may have replaced them).
const DEFERRED_AFTER: Duration = Duration::from_secs(2);
const REFRESH_CHECK_EVERY: Duration = Duration::from_secs(60);
/// Syncs start at most this often: each may hold the DHT thread for seconds per followed user on the
/// real network (a dhtget of a missing resource waits its whole timeout), and subscriptions may change
/// often.
const MIN_SYNC_GAP: Duration = Duration::from_secs(5);
/// A write held back (for our posts to drain, or by the rate) is looked at again this often.
const WRITE_RECHECK: Duration = Duration::from_millis(50);

pub struct Retained {
    writer: Writer,
    reader: Reader,
    replies: Receiver<RetainedReply>,
    reply_to: Sender<RetainedReply>,
    /// Syncs the DHT thread has not answered yet.
    syncing: usize,
    sync_due: Option<Instant>,
    last_sync: Option<Instant>,
    /// When the writer was last asked for refreshes with nothing else pending.
    refresh_checked: Instant,
}

impl Retained {
    pub fn new(cfg: &Config, saved: &serde_json::Value, now: Instant) -> Option<Retained> {
        if !cfg.retained_dht {
            return None;
        }
        let interval = u64::try_from(cfg.retained_interval.as_millis()).unwrap_or(u64::MAX);
        let (reply_to, replies) = unbounded();
        Some(Retained {
            writer: Writer::from_json(&saved["writer"], interval),
            reader: Reader::from_json(&saved["reader"], &cfg.follow),
            replies,
            reply_to,
            syncing: 0,
            sync_due: Some(now),
            last_sync: None,
            refresh_checked: now,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"writer": self.writer.to_json(), "reader": self.reader.to_json()})
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Worker {
    /// What the state file keeps of it (Null when off: a later run with it on starts afresh).
    pub(super) fn retained_json(&self) -> serde_json::Value {
        self.retained
            .as_ref()
            .map_or(serde_json::Value::Null, Retained::to_json)
    }

    /// A local retained message going out on the public timeline: kept as our value in the DHT too.
    pub(super) fn retained_publish(&mut self, m: &Message, id: Option<crate::wire::MessageId>) {
        let Some(r) = self.retained.as_mut() else {
            return;
        };
        match r
            .writer
            .publish_message(&m.topic, &m.payload, m.qos, id, unix_ms())
        {
            Ok(()) => {}
            Err(Refusal::TopicTooLong) => self.log_once(
                "retained-topic-long",
                Level::Warning,
                format!(
                    "retained values on topics longer than {} bytes are forwarded but not kept in the DHT",
                    crate::relay::retained::MAX_TOPIC_BYTES
                ),
            ),
            Err(Refusal::IndexFull) => self.log_once(
                "retained-index-full",
                Level::Warning,
                format!(
                    "the DHT index of retained values is full ({} shards): retained values on new topics are forwarded but not kept in the DHT",
                    crate::relay::retained::MAX_SHARDS
                ),
            ),
        }
    }

    /// A retained message from the network: false when it is older than a value fetched from the DHT
    /// before (then it must not replace the broker's retained value).
    pub(super) fn retained_live(&mut self, from: &str, k: i64, what: &str, m: &Message) -> bool {
        // DMs are private: their values never go to the DHT, so nothing orders them against it.
        let (Some(r), true) = (self.retained.as_mut(), what == "post") else {
            return true;
        };
        self.state_dirty = true;
        r.reader.live(from, k, &m.topic, &m.payload)
    }

    /// Our interest changed: followed users' values for it are read soon.
    pub(super) fn retained_interest_changed(&mut self) {
        if let Some(r) = self.retained.as_mut() {
            let now = Instant::now();
            let earliest = r.last_sync.map_or(now, |t| now.max(t + MIN_SYNC_GAP));
            r.sync_due = Some(r.sync_due.map_or(earliest, |d| d.min(earliest)));
        }
    }

    pub(super) fn retained_deadline(&self) -> Option<Instant> {
        let r = self.retained.as_ref()?;
        let write = r.writer.next_due().map(|due_ms| {
            Instant::now()
                + Duration::from_millis(due_ms.saturating_sub(unix_ms())).max(WRITE_RECHECK)
        });
        let sync = r.sync_due.filter(|_| r.syncing == 0);
        match (write, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Answers from the DHT thread, puts that are due, and a sync when due.
    pub(super) fn retained_step(&mut self, now: Instant) {
        let Some(r) = self.retained.as_mut() else {
            return;
        };
        let replies: Vec<RetainedReply> = r.replies.try_iter().collect();
        for reply in replies {
            self.retained_reply(reply, now);
        }
        self.retained_write(false);
        let Some(r) = self.retained.as_mut() else {
            return;
        };
        if r.syncing > 0 || r.sync_due.is_none_or(|t| now < t) {
            return;
        }
        let filters = self.local.interest().filters();
        let syncs: Vec<_> = self
            .cfg
            .follow
            .iter()
            .map(|u| r.reader.plan(u, &filters))
            .collect();
        r.sync_due = None;
        r.last_sync = Some(now);
        r.syncing = syncs.len();
        if syncs.is_empty() {
            return;
        }
        let reply = r.reply_to.clone();
        self.dht.send_retained(RetainedJob {
            puts: Vec::new(),
            syncs,
            reply,
        });
    }

    /// Hands the writer's due puts to the DHT thread (`force`: at the stop, everything now).
    pub(super) fn retained_write(&mut self, force: bool) {
        // Our posts drained: every message taken so far is in a post below our next number.
        let watermark = (self.queued() == 0 && !self.outbox.has_unknown_outcome())
            .then(|| self.outbox.next_k());
        let Some(r) = self.retained.as_mut() else {
            return;
        };
        // Refreshes of old resources are due weekly: looked for once a minute when nothing is pending.
        if !r.writer.has_pending() && !force {
            if r.refresh_checked.elapsed() < REFRESH_CHECK_EVERY {
                return;
            }
            r.refresh_checked = Instant::now();
        }
        let oversize = r.writer.counters.oversize;
        let puts = r.writer.take_puts(unix_ms(), watermark, force);
        let newly_oversize = r.writer.counters.oversize - oversize;
        if puts.is_empty() {
            return;
        }
        let reply = r.reply_to.clone();
        self.state_dirty = true;
        self.dht.send_retained(RetainedJob {
            puts,
            syncs: Vec::new(),
            reply,
        });
        if newly_oversize > 0 {
            self.log(Level::Warning, format!(
                "{newly_oversize} retained values too large for one DHT item (8 KB with the topic; binary payloads go as base64): forwarded, and marked in the DHT as not kept"
            ));
        }
    }

    fn retained_reply(&mut self, reply: RetainedReply, now: Instant) {
        let Some(r) = self.retained.as_mut() else {
            return;
        };
        match reply {
            RetainedReply::Failed(puts, why) => {
                r.writer.failed(puts, unix_ms());
                self.log_once(
                    "retained-put-failed",
                    Level::Warning,
                    format!(
                        "writing retained values to the DHT failed: {why}; retrying (said once)"
                    ),
                );
            }
            RetainedReply::Synced(synced) => self.retained_synced(synced, now),
        }
    }

    fn retained_synced(&mut self, synced: Synced, now: Instant) {
        let Some(r) = self.retained.as_mut() else {
            return;
        };
        let user = synced.user.clone();
        let more = synced.more;
        let problems = synced.problems.clone();
        let before = r.reader.counters;
        let incoming = &self.incoming;
        let progress = Progress {
            read_below: incoming.cursors().get(&user).map(|c| c.k + 1),
            last_listed: incoming.last_listed(&user),
            handed_on: &|id| incoming.handed_on(&user, id),
        };
        let applied = r.reader.apply(synced, &progress, unix_ms());
        let after = r.reader.counters;
        r.syncing = r.syncing.saturating_sub(1);
        let next = if more {
            MORE_AFTER
        } else if applied.deferred > 0 {
            DEFERRED_AFTER
        } else {
            RESYNC_EVERY
        };
        r.sync_due = Some(r.sync_due.map_or(now + next, |d| d.min(now + next)));
        self.state_dirty = true;
        if let Some(first) = problems.first() {
            // Failed calls are not malformed input (`retained_dht` names them by their call).
            let malformed = problems
                .iter()
                .filter(|p| !p.starts_with("dhtget "))
                .count();
            self.counters.inbox.malformed += malformed as u64;
            self.log(
                Level::Warning,
                format!(
                    "retained values of {user} in the DHT: {} problems, skipped (first: {first})",
                    problems.len()
                ),
            );
        }
        if applied.deferred > 0 {
            self.log_once(
                &format!("retained-waits-{user}"),
                Level::Info,
                format!(
                    "retained values of {user} from the DHT wait for {user}'s posts before them (said once)"
                ),
            );
        }
        let (set, cleared) = (
            after.injected - before.injected,
            after.cleared - before.cleared,
        );
        if set + cleared > 0 {
            self.log(
                Level::Info,
                format!(
                    "retained values of {user} from the DHT: {set} set, {cleared} cleared, {} skipped as not newer",
                    after.skipped - before.skipped
                ),
            );
        }
        // Recorded before the state is saved: the live copy is dropped as a duplicate, even after a
        // restart.
        // (Settled at once, without the injection log: a retained value is fetched again anyway.)
        for id in &applied.ids {
            self.incoming.handed_on_elsewhere(&user, *id);
            self.settled.check(&user, Some(*id));
        }
        if !applied.ids.is_empty() {
            self.save_state_now();
        }
        for m in applied.messages {
            self.inject(m);
        }
        if std::mem::take(&mut self.ring_pending) {
            self.doorbell.ring();
        }
    }
}
