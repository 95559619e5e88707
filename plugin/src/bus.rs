//! What crosses between threads: the broker thread's callbacks, the worker and the DHT thread. Only
//! message types and queues live here, so every side imports this module and none imports another
//! side (no cycle).

use crate::interest::SessionEvent;
use crate::route::Route;
use crate::wire::Message;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

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
    /// From the DHT thread: a followed user's published interest (`None`: no profile or no topics).
    RemoteInterest {
        user: String,
        filters: Option<Vec<String>>,
    },
    /// From the DHT thread: our profile write finished.
    ProfileWritten(Result<(), String>),
    /// The broker is unloading the plugin: flush, save, stop.
    Shutdown,
    /// Local messages were queued while the worker slept.
    Wake,
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
    Log(Level, String),
}

/// Subscription events and DHT answers.
pub const CONTROL_CAPACITY: usize = 4096;
/// Messages from the network and log lines waiting for the broker's TICK.
pub const TO_BROKER_CAPACITY: usize = 8192;
/// Room for local messages between two drains of the worker (every 2 ms while busy). Every slot is
/// allocated up front, so this is also memory the plugin holds from the start (about 1 MiB).
pub const OUTBOUND_CAPACITY: usize = 16_384;

/// A local message leaving this broker, with where it goes (decided once, in the MESSAGE callback).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub message: Message,
    pub route: Route,
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
