//! The worker: the only thread that posts to and reads from twisterd (the DHT thread aside). It receives
//! what the broker's callbacks copied, packs outgoing messages into posts and DMs within Twister's size
//! and post-number rules, polls followed users, and hands incoming messages back to the broker thread.
//!
//! `WorkerHandle` is what the broker side holds; `Worker` is the actor behind it.

mod calls;
#[cfg(test)]
mod dht_tests;
mod drive;
#[cfg(test)]
mod drive_tests;
mod injections;
#[cfg(test)]
mod injections_tests;
mod persist;
pub mod receipts;
mod retained;
mod routing;
mod sessions;
mod setup;
mod start;

pub use setup::Start;

use crate::bus::{Level, Outbound, Outgoing, ToBroker, ToBrokerSender, ToWorker};
use crate::config::Config;
use crate::dht::DhtThread;
use crate::drops::{Drops, Reason};
use crate::health::Health;
use crate::interest::{Interest, RestoredSessions};
use crate::relay::inbox::Inbox;
use crate::relay::interest::local::Subscriptions;
use crate::relay::interest::private::PrivateForwards;
use crate::relay::outbox::{Learnt, Outbox, Settings};
use crate::relay::session::Session;
use crate::relay::timers::{Timer, Timers};
use crate::state::Saved;
use crate::twister::{Client, Twister, TwisterError};
use crate::wake::Doorbell;
use crate::wire::Message;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often changed state (post number, read positions) is written to the state file.
const STATE_SAVE_EVERY: Duration = Duration::from_secs(1);
/// How long the worker keeps trying to send what is queued when the broker stops.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

#[derive(Default, Debug, Clone, Copy)]
pub struct Counters {
    pub forwarded: u64,
    pub received: u64,
    pub injected: u64,
    /// Malformed input, duplicates.
    pub inbox: crate::relay::inbox::Counters,
    /// Posts, DMs, fragments, unknown outcomes, waits for a block.
    pub outbox: crate::relay::outbox::Counters,
}

pub struct Worker {
    cfg: Arc<Config>,
    rpc: Client,
    inbox: Receiver<ToWorker>,
    to_broker: ToBrokerSender,
    dht: DhtThread,
    /// Our subscriptions, profile writes, the wait for the last run's (`crate::relay::interest`).
    local: Subscriptions,
    /// The private recipients' interest and the private forwards held for it.
    private: PrivateForwards,
    saved: Saved,
    state_dirty: bool,
    ready: bool,
    /// Start-up and follows (`crate::relay::session`), driven by `worker/start.rs`.
    session: Session,
    /// Every deadline of the worker (`crate::relay::timers`).
    timers: Timers,
    /// Posting: queues, numbers, budget, fragments (`crate::relay::outbox`), driven by `drive_outbox`.
    outbox: Outbox,
    drops: Drops,
    trouble: Option<String>,
    said_once: Vec<String>,
    pub counters: Counters,
    doorbell: Doorbell,
    health: Arc<Health>,
    /// In `shutdown`: only its own calls still go to twisterd.
    stopping: bool,
    last_save: Instant,
    /// Reading followed users (`crate::relay::inbox`), driven by `drive_inbox`.
    incoming: Inbox,
    /// Messages were handed to the broker since the doorbell last rang.
    ring_pending: bool,
    /// Ids of messages the spool did not number (`crate::ids`).
    run_ids: crate::ids::RunIds,
    /// Retained values in the DHT (`worker/retained.rs`); None with `plugin_opt_retained_dht false`.
    retained: Option<retained::Retained>,
    /// Receipts written and read, QoS 1/2 messages kept for them (`worker/receipts.rs`).
    receipts: receipts::ReceiptsDriver,
    /// The highest post number used, written before each post (`crate::numbers`).
    used_numbers: crate::numbers::UsedNumbers,
    /// Ids the broker took (the injection log says so) or that needed no injection: what the state
    /// file keeps as seen and receipts acknowledge (`worker/injections.rs`). The inbox's own set
    /// also holds what is handed and not yet injected.
    settled: crate::dedup::Dedup,
    /// The injection log (`crate::injected`), with a state file.
    injections: Option<crate::injected::Reader>,
    /// Messages with a mark were handed since the log was last seen to hold everything.
    injections_pending: bool,
}

/// What the driver woke up for.
enum Event {
    /// From the broker side (or the wait ended).
    Control(Result<ToWorker, RecvTimeoutError>),
    /// A DHT call's answer.
    Dht(crate::bus::DhtDone),
}

/// How often a busy worker takes what the callbacks queued.
const DRAIN_EVERY: Duration = Duration::from_millis(2);

/// Debug builds only: a message on this topic makes the worker panic, so that integration tests can
/// see it caught, logged and the worker restarted (release builds have no such hook).
#[cfg(debug_assertions)]
pub const TEST_PANIC_TOPIC: &str = "mqtt-twister/test/panic";

#[cfg(debug_assertions)]
fn test_hook(m: &Message) {
    if m.topic == TEST_PANIC_TOPIC && m.payload == b"worker" {
        panic!("test hook: {TEST_PANIC_TOPIC}");
    }
}

impl Worker {
    /// Serves until the broker stops it (after a shutdown: flushed and saved).
    pub fn run(&mut self, outbound: &Outbound) {
        loop {
            self.health.beat(Instant::now());
            if self.health.stopping() {
                return self.shutdown(outbound);
            }
            let mut drained = 0;
            while let Some(m) = outbound.take() {
                self.outbound(m);
                drained += 1;
                if drained == 8192 {
                    break;
                }
            }
            let deadline = self.next_deadline();
            let mut wait = deadline.saturating_duration_since(Instant::now());
            if drained > 0 {
                // Busy: come back soon for more rather than be woken per message.
                wait = wait.min(DRAIN_EVERY);
            } else {
                // Going idle: let go of kept-alive connections, which would hold twisterd's `stop`.
                self.rpc.release_idle();
                if !outbound.going_to_sleep() {
                    continue;
                }
            }
            let received = self.wait_event(wait);
            outbound.awake();
            match received {
                Event::Dht(done) => self.dht_answer(done),
                Event::Control(Ok(ToWorker::Shutdown)) => return self.shutdown(outbound),
                Event::Control(Ok(m)) => {
                    self.handle(m);
                    // Take what else is waiting before doing I/O, so batches fill up.
                    for _ in 0..4096 {
                        match self.inbox.try_recv() {
                            Ok(ToWorker::Shutdown) => return self.shutdown(outbound),
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
                Event::Control(Err(RecvTimeoutError::Timeout)) => {}
                Event::Control(Err(RecvTimeoutError::Disconnected)) => {
                    return self.shutdown(outbound)
                }
            }
            self.step(Instant::now());
            outbound.set_backlog(self.queued());
            // Released records only: posted, confirmed by twisterd, and held (`crate::relay::release`).
            outbound
                .spool_progress()
                .taken(crate::spool::SpoolId(self.outbox.records_taken()));
        }
    }

    /// The next event from the broker side or the DHT thread, or a timeout after `wait`.
    fn wait_event(&mut self, wait: Duration) -> Event {
        let answer = crossbeam_channel::select! {
            recv(self.inbox) -> m => return Event::Control(m.map_err(|_| RecvTimeoutError::Disconnected)),
            recv(self.dht.answers()) -> done => done,
            default(wait) => return Event::Control(Err(RecvTimeoutError::Timeout)),
        };
        match answer {
            Ok(done) => Event::Dht(done),
            Err(_) => {
                // The DHT thread is gone: no answer will come, and waiting on it must not spin.
                self.dht.lost();
                Event::Control(Err(RecvTimeoutError::Timeout))
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut d = now + Duration::from_secs(1);
        let mut at = |timer| {
            if let Some(t) = self.timers.get(timer) {
                d = d.min(t);
            }
        };
        if !self.ready {
            at(Timer::Startup);
            return d.max(now);
        }
        at(Timer::Poll);
        if !self.session.unfollowed().is_empty() {
            at(Timer::Refollow);
        }
        for relay in [
            self.outbox.poll_timeout(now),
            self.local.poll_timeout(),
            self.private.poll_timeout(),
        ] {
            if let Some(t) = relay {
                d = d.min(t);
            }
        }
        if let Some(r) = self.retained_deadline() {
            d = d.min(r);
        }
        if let Some(r) = self.receipts_deadline(now) {
            d = d.min(r);
        }
        if let Some(i) = self.injections_deadline(now) {
            d = d.min(i);
        }
        d.max(now)
    }

    fn step(&mut self, now: Instant) {
        self.take_injections();
        if !self.ready {
            if self.timers.due(Timer::Startup, now) {
                self.startup();
            }
            return;
        }
        if self.timers.due(Timer::Poll, now) {
            self.poll();
            self.timers
                .set(Timer::Poll, Instant::now() + self.cfg.poll_interval);
        }
        self.outbox.handle_timeout(Instant::now());
        self.drive_outbox();
        self.local.handle_timeout(now);
        self.drive_local();
        self.private.handle_timeout(now);
        self.drive_private();
        self.retained_step(now);
        if !self.session.unfollowed().is_empty() && self.timers.due(Timer::Refollow, now) {
            self.refollow();
        }
        self.step_receipts(now);
        self.save_state();
    }

    // ----- events from the broker and the DHT thread -----

    fn handle(&mut self, m: ToWorker) {
        let now = Instant::now();
        match m {
            ToWorker::Subscribe { client, filter } => self.local.subscribe(&client, &filter, now),
            ToWorker::Unsubscribe { client, filter } => {
                self.local.unsubscribe(&client, &filter, now)
            }
            ToWorker::Session { client, event } => self.local.session(&client, event, now),
            ToWorker::Shutdown | ToWorker::Wake => return,
            ToWorker::ReceiptsWritten { sender, result } => {
                return self.receipts_written(&sender, result)
            }
            ToWorker::Receipts { receiver, acks } => return self.receipts_read(&receiver, acks),
        }
        self.drive_local();
    }

    // ----- inbound -----

    fn poll(&mut self) {
        self.watch_height();
        self.read_followed();
        if std::mem::take(&mut self.ring_pending) {
            self.doorbell.ring();
        }
    }

    /// One `getlasthave`, then what is new of each followed user (`crate::relay::inbox`).
    fn read_followed(&mut self) {
        self.incoming.poll();
        self.drive_inbox();
    }

    /// A whole message from the network: published into the broker when wanted here.
    /// The message when it is to be published into the broker (`hand_to_broker`).
    fn deliver(&mut self, from: &str, k: i64, what: &str, mut m: Message) -> Option<Message> {
        #[cfg(debug_assertions)]
        test_hook(&m);
        // Older than a value fetched from the DHT: delivered, but the retained value stays.
        if m.retain && !self.retained_live(from, k, what, &m) {
            m.retain = false;
        }
        self.counters.received += 1;
        if !crate::topic::is_injectable(&m.topic) {
            self.incoming.malformed(
                format!(
                    "skipped a message from {from} ({what} {k}): topic not allowed from the network"
                ),
                Instant::now(),
            );
            return None;
        }
        self.local.deliver(&m).then_some(m)
    }
}
