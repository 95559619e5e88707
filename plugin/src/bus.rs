//! What crosses between threads: the broker thread's callbacks, the worker and the DHT thread. Only
//! message types and queues live here, so every side imports this module and none imports another
//! side (no cycle).

use crate::interest::SessionEvent;
use crate::route::Route;
use crate::twister::DhtEntry;
use crate::wire::Message;
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::Value;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Acknowledged sequence numbers per epoch of one sender (`crate::relay::receipts`).
pub type Acks = std::collections::BTreeMap<u64, crate::ranges::RangeSet>;

/// What the broker thread sends to the worker.
#[derive(Debug)]
pub enum ToWorker {
    Subscribe {
        client: String,
        filter: String,
    },
    Unsubscribe {
        client: String,
        filter: String,
    },
    /// What the broker told about a client's connection or session.
    Session {
        client: String,
        event: SessionEvent,
    },
    /// From the DHT thread: our receipts for `sender` were written (the seq used and what the resource
    /// held before), or not.
    ReceiptsWritten {
        sender: String,
        result: Result<(i64, Acks), String>,
    },
    /// From the DHT thread: what `receiver` acknowledged of our messages (`crate::relay::receipts`).
    Receipts {
        receiver: String,
        acks: Result<Acks, String>,
    },
    /// The broker is unloading the plugin: flush, save, stop.
    Shutdown,
    /// Local messages were queued while the worker slept.
    Wake,
}

/// What a DHT call is for: the driver hands its answer to the part of the relay that asked.
#[derive(Debug, Clone, PartialEq)]
pub enum DhtPurpose {
    /// Writing our interest into our profile (read, put, read back).
    OurProfile,
    /// Reading a private recipient's interest.
    InterestOf(String),
}

/// One call the DHT thread makes for the driver: `dhtget` may wait for the network for seconds, so
/// it never runs on the driver's post and poll path.
#[derive(Debug, Clone, PartialEq)]
pub enum DhtCall {
    /// `dhtget` of `user`'s profile.
    GetProfile { user: String },
    /// `dhtput` of `user`'s profile: `value` under sequence number `seq`.
    PutProfile {
        user: String,
        value: Value,
        seq: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DhtJob {
    pub purpose: DhtPurpose,
    pub call: DhtCall,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DhtAnswer {
    /// The profile as the DHT holds it (seq 0: none yet).
    Profile(DhtEntry),
    /// The put was accepted.
    Stored,
}

/// A DHT call's answer; the error says which call failed (`dhtget: ...`, `dhtput: ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct DhtDone {
    pub purpose: DhtPurpose,
    pub result: Result<DhtAnswer, String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

/// What the worker asks the broker thread to do (in the TICK callback).
#[derive(Debug)]
pub enum ToBroker {
    Publish(Message),
    /// A message whose injection the broker's thread writes down in the injection log
    /// (`crate::injected`) right after the broker took it.
    PublishRecorded(Message, crate::injected::Mark),
    Log(Level, String),
}

/// Subscription events and DHT answers.
pub const CONTROL_CAPACITY: usize = 4096;
/// Messages from the network waiting for the broker's TICK.
pub const TO_BROKER_CAPACITY: usize = 8192;
/// Log lines waiting for the broker's TICK, on their own channel: a flood of lines never takes the
/// room of messages, nor messages that of lines.
pub const LOG_CAPACITY: usize = 1024;
/// Room for local messages between two drains of the worker (every 2 ms while busy). Every slot is
/// allocated up front, so this is also memory the plugin holds from the start (about 1 MiB).
pub const OUTBOUND_CAPACITY: usize = 16_384;

/// The worker side's way to the broker thread (the worker, the DHT thread, the supervisor): messages
/// to publish and log lines, on two bounded channels.
#[derive(Clone)]
pub struct ToBrokerSender {
    publish: Sender<(Message, Option<crate::injected::Mark>)>,
    logs: Sender<(Level, String)>,
    logs_dropped: Arc<AtomicU64>,
    /// Set after each message or line sent (and each line dropped): the broker thread, which looks on
    /// every TICK, reads this one flag instead of the two channels.
    pending: Arc<AtomicBool>,
}

impl ToBrokerSender {
    /// Never blocks. A log line the channel has no room for is counted; the broker thread says how
    /// many were dropped.
    pub fn try_send(&self, m: ToBroker) -> Result<(), ToBroker> {
        let sent = match m {
            ToBroker::Publish(msg) => self
                .publish
                .try_send((msg, None))
                .map_err(|e| published(e.into_inner())),
            ToBroker::PublishRecorded(msg, mark) => self
                .publish
                .try_send((msg, Some(mark)))
                .map_err(|e| published(e.into_inner())),
            ToBroker::Log(level, line) => self.logs.try_send((level, line)).map_err(|e| {
                if e.is_full() {
                    self.logs_dropped.fetch_add(1, Ordering::Relaxed);
                }
                let (level, line) = e.into_inner();
                ToBroker::Log(level, line)
            }),
        };
        self.flag_pending();
        sent
    }

    /// After the item is in its channel (or a drop counted), so that the broker thread, once it sees
    /// the flag, also sees the item.
    fn flag_pending(&self) {
        self.pending.store(true, Ordering::Release);
    }

    /// Messages handed to the broker thread and not taken by it yet.
    pub fn publish_backlog(&self) -> usize {
        self.publish.len()
    }

    /// A message waits up to `timeout` for room; a log line never waits (as `try_send`).
    pub fn send_timeout(&self, m: ToBroker, timeout: Duration) -> Result<(), ToBroker> {
        let item = match m {
            ToBroker::Publish(msg) => (msg, None),
            ToBroker::PublishRecorded(msg, mark) => (msg, Some(mark)),
            log => return self.try_send(log),
        };
        let sent = self.publish.send_timeout(item, timeout);
        self.flag_pending();
        sent.map_err(|e| published(e.into_inner()))
    }
}

/// The broker thread's end of `ToBrokerSender`.
pub struct FromWorker {
    publish: Receiver<(Message, Option<crate::injected::Mark>)>,
    logs: Receiver<(Level, String)>,
    logs_dropped: Arc<AtomicU64>,
    pending: Arc<AtomicBool>,
}

impl FromWorker {
    /// Whether anything was sent (or a line dropped) since the last call, which clears the flag: one
    /// load when nothing was. Call `try_recv` until None afterwards, or `look_again`.
    #[inline(always)]
    pub fn take_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) && self.pending.swap(false, Ordering::Acquire)
    }

    /// Not everything was taken: the next `take_pending` says true.
    pub fn look_again(&self) {
        self.pending.store(true, Ordering::Relaxed);
    }

    /// The next log line, else the next message to publish; never blocks.
    pub fn try_recv(&self) -> Option<ToBroker> {
        if let Ok((level, line)) = self.logs.try_recv() {
            return Some(ToBroker::Log(level, line));
        }
        self.publish.try_recv().ok().map(published)
    }

    /// Log lines dropped so far because their channel was full.
    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for the next log line or message (tests).
    #[cfg(test)]
    pub fn recv_timeout(&self, timeout: Duration) -> Option<ToBroker> {
        crossbeam_channel::select! {
            recv(self.logs) -> l => l.ok().map(|(level, line)| ToBroker::Log(level, line)),
            recv(self.publish) -> m => m.ok().map(published),
            default(timeout) => None,
        }
    }
}

/// A message of the publish channel as the `ToBroker` it was sent as.
fn published((m, mark): (Message, Option<crate::injected::Mark>)) -> ToBroker {
    match mark {
        Some(mark) => ToBroker::PublishRecorded(m, mark),
        None => ToBroker::Publish(m),
    }
}

/// The two channels from the worker side to the broker thread.
pub fn to_broker(publish_capacity: usize, log_capacity: usize) -> (ToBrokerSender, FromWorker) {
    let (publish, publish_rx) = bounded(publish_capacity);
    let (logs, logs_rx) = bounded(log_capacity);
    let logs_dropped = Arc::new(AtomicU64::new(0));
    let pending = Arc::new(AtomicBool::new(false));
    (
        ToBrokerSender {
            publish,
            logs,
            logs_dropped: logs_dropped.clone(),
            pending: pending.clone(),
        },
        FromWorker {
            publish: publish_rx,
            logs: logs_rx,
            logs_dropped,
            pending,
        },
    )
}

/// A local message leaving this broker, with where it goes (decided once, in the MESSAGE callback).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub message: Message,
    pub route: Route,
    /// Its id when the spool gave it one; otherwise the worker gives it when it takes the message.
    pub id: Option<crate::wire::MessageId>,
}

/// Messages from the MESSAGE callback to the worker. A lock-free queue, not the channel: while messages
/// flow the worker drains it every few milliseconds on its own, so the broker's thread pays neither a
/// lock nor a wake-up (a syscall) per message; it signals only a worker that went to sleep.
pub struct Outbound {
    queue: crossbeam_queue::ArrayQueue<Outgoing>,
    sleeping: AtomicBool,
    /// The worker's count of messages waiting for a post, as of its last loop turn, and its bound
    /// (`plugin_opt_max_queue`): lets the MESSAGE callback refuse a publish the worker would drop.
    backlog: AtomicUsize,
    max_backlog: usize,
    /// What of the spool is with the worker and what it took (see `spool::Progress`).
    spool_progress: Arc<crate::spool::Progress>,
}

impl Outbound {
    /// For a worker that holds at most `max_backlog` messages waiting for a post.
    pub fn new(max_backlog: usize) -> Self {
        Outbound {
            queue: crossbeam_queue::ArrayQueue::new(OUTBOUND_CAPACITY),
            backlog: AtomicUsize::new(0),
            max_backlog,
            sleeping: AtomicBool::new(false),
            spool_progress: Arc::default(),
        }
    }

    pub fn spool_progress(&self) -> &Arc<crate::spool::Progress> {
        &self.spool_progress
    }

    /// Worker side: nothing is queued (everything offered before was taken).
    pub fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }

    /// The worker would drop a new message for want of room (`plugin_opt_max_queue`), as far as its
    /// last loop turn tells, or the hand-over queue itself is full. Two atomic loads.
    pub fn backlog_full(&self) -> bool {
        self.queue.is_full()
            || self.backlog.load(Ordering::Relaxed) + self.queue.len() >= self.max_backlog
    }

    /// Queues a local message; Err(message) when the queue is full, Ok(true) when the worker sleeps
    /// and must be woken. Never blocks.
    pub fn offer(&self, m: Outgoing) -> Result<bool, Outgoing> {
        self.queue.push(m)?;
        // Pairs with the worker's store of `sleeping` before its last look at the queue.
        fence(Ordering::SeqCst);
        Ok(self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst))
    }

    /// Worker side: the next queued message.
    pub fn take(&self) -> Option<Outgoing> {
        self.queue.pop()
    }

    /// Worker side, before it waits: marks it asleep, so that `offer` wakes it. False (and still
    /// awake) when a message arrived meanwhile.
    pub fn going_to_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.queue.is_empty() {
            return true;
        }
        self.sleeping.store(false, Ordering::SeqCst);
        false
    }

    /// Worker side: awake again.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Worker side: how many messages it holds waiting for a post.
    pub fn set_backlog(&self, queued: usize) {
        self.backlog.store(queued, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: b"x".to_vec(),
            qos: 0,
            retain: false,
        }
    }

    #[test]
    fn a_full_log_channel_counts_what_it_drops_and_messages_still_pass() {
        let (tx, rx) = to_broker(4, 2);
        for i in 0..5 {
            let _ = tx.try_send(ToBroker::Log(Level::Info, format!("line {i}")));
        }
        assert_eq!(rx.logs_dropped(), 3);
        assert!(tx.try_send(ToBroker::Publish(msg("a"))).is_ok());
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv())
            .map(|m| match m {
                ToBroker::Log(_, line) => line,
                ToBroker::Publish(m) | ToBroker::PublishRecorded(m, _) => m.topic,
            })
            .collect();
        assert_eq!(got, ["line 0", "line 1", "a"]);
    }

    #[test]
    fn the_pending_flag_is_set_by_every_send_and_drop_and_cleared_by_taking_it() {
        let (tx, rx) = to_broker(1, 1);
        assert!(!rx.take_pending(), "nothing sent yet");
        tx.try_send(ToBroker::Log(Level::Info, "a".into())).unwrap();
        assert!(rx.take_pending());
        assert!(!rx.take_pending(), "taken once");
        // A dropped line (the channel holds one) must be reported: it flags too.
        assert!(tx.try_send(ToBroker::Log(Level::Info, "b".into())).is_err());
        assert!(rx.take_pending());
        tx.send_timeout(ToBroker::Publish(msg("m")), Duration::ZERO)
            .unwrap();
        assert!(rx.take_pending());
        rx.look_again();
        assert!(rx.take_pending() && !rx.take_pending());
        // A clone (the DHT thread's) flags the same receiver.
        tx.clone()
            .try_send(ToBroker::Log(Level::Info, "c".into()))
            .unwrap_err();
        assert!(rx.take_pending());
    }

    #[test]
    fn a_full_message_channel_refuses_without_counting_log_drops() {
        let (tx, rx) = to_broker(1, 4);
        assert!(tx.try_send(ToBroker::Publish(msg("a"))).is_ok());
        assert!(tx
            .send_timeout(ToBroker::Publish(msg("b")), Duration::ZERO)
            .is_err());
        assert!(tx
            .try_send(ToBroker::Log(Level::Info, "still".into()))
            .is_ok());
        assert_eq!(rx.logs_dropped(), 0);
    }
}
