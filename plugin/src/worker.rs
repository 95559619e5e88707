//! The worker: the only thread that posts to and reads from twisterd (the DHT thread aside). It receives
//! what the broker's callbacks copied, packs outgoing messages into posts and DMs within Twister's size
//! and post-number rules, polls followed users, and hands incoming messages back to the broker thread.
//!
//! `WorkerHandle` is what the broker side holds; `Worker` is the actor behind it.

mod drive;
#[cfg(test)]
mod drive_tests;
mod routing;
mod sessions;
mod start;

use crate::bus::{Level, Outbound, Outgoing, ToBroker, ToBrokerSender, ToWorker};
use crate::config::Config;
use crate::dht::{DhtJob, DhtThread};
use crate::drops::{Drops, Reason};
use crate::health::Health;
use crate::held::Held;
use crate::interest::{Interest, RestoredSessions};
use crate::private_hold::{interested_recipients, PrivateHold};
use crate::relay::inbox::Inbox;
use crate::relay::outbox::{Outbox, Queued, Settings};
use crate::relay::session::Session;
use crate::relay::timers::{Timer, Timers};
use crate::state::{Destination, Saved, Unsent};
use crate::twister::{Client, Twister, TwisterError};
use crate::wake::Doorbell;
use crate::wire::{self, Message};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often changed state (post number, read positions) is written to the state file.
const STATE_SAVE_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the worker keeps trying to send what is queued when the broker stops.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// After a restart, how long messages only a previous run's subscriptions wanted wait for their clients
/// to subscribe again.
pub const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(60);

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
    interest: Interest,
    remote: BTreeMap<String, Vec<String>>,
    remote_known: bool,
    interest_answered: std::collections::BTreeSet<String>,
    /// Private forwards waiting for a recipient's interest (`crate::hold`).
    held_private: PrivateHold,
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
    profile_backoff: Duration,
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
    /// Messages from the network waiting for a previous run's subscriptions to come back.
    held: Held,
}

/// How often a busy worker takes what the callbacks queued.
const DRAIN_EVERY: Duration = Duration::from_millis(2);

/// What a worker starts from: a first start has the state file's contents, a restart what the
/// worker before it held (see `supervise`).
pub struct Start {
    pub saved: Option<Saved>,
    /// First start: the sessions the broker restored, which the saved interest is checked against.
    pub restored: Option<RestoredSessions>,
    pub interest: Option<Interest>,
    pub counters: Counters,
    pub drops: Drops,
    pub dht: DhtThread,
    pub doorbell: Doorbell,
    pub health: Arc<Health>,
}

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
    pub fn new(
        cfg: Arc<Config>,
        rpc: Box<dyn Twister>,
        inbox: Receiver<ToWorker>,
        to_broker: ToBrokerSender,
        start: Start,
    ) -> Self {
        let now = Instant::now();
        let Start {
            saved,
            restored,
            interest,
            counters,
            drops,
            dht,
            doorbell,
            health,
        } = start;
        let state_found = saved.is_some();
        let incoming = Inbox::new(
            &cfg.user,
            &cfg.follow,
            saved
                .as_ref()
                .map(|s| s.cursors.clone())
                .unwrap_or_default(),
            counters.inbox,
        );
        let session = Session::new(&cfg.user, &cfg.follow, cfg.create_user);
        let outbox = Outbox::new(
            Settings {
                user: cfg.user.clone(),
                wire_format: cfg.wire_format,
                batch_delay: cfg.batch_delay,
                max_message_bytes: cfg.max_message_bytes,
            },
            saved.as_ref().map_or(0, |s| s.next_k),
            saved.as_ref().map_or(0, |s| s.seq),
            counters.outbox,
        );
        let restarted = interest.is_some();
        let mut w = Worker {
            interest: interest.unwrap_or_else(|| Interest::new(&cfg.subscribe)),
            cfg,
            rpc: Client::new(rpc),
            inbox,
            to_broker,
            dht,
            remote: BTreeMap::new(),
            remote_known: false,
            interest_answered: Default::default(),
            held_private: PrivateHold::default(),
            saved: saved.unwrap_or_default(),
            state_dirty: false,
            ready: false,
            session,
            timers: {
                let mut t = Timers::default();
                for timer in [
                    Timer::Startup,
                    Timer::Refollow,
                    Timer::Poll,
                    Timer::InterestRefresh,
                ] {
                    t.set(timer, now);
                }
                t
            },
            outbox,
            drops,
            profile_backoff: Duration::from_millis(500),
            trouble: None,
            said_once: Vec::new(),
            counters,
            doorbell,
            health,
            stopping: false,
            last_save: now,
            incoming,
            ring_pending: false,
            held: Held::default(),
        };
        if w.cfg.state_file.is_some() && !state_found {
            w.log(
                Level::Info,
                "no saved state yet: reading followed users from their newest post on",
            );
        }
        w.restore_unsent();
        if restarted {
            // The profile write the last worker waited for may never be answered to this one.
            w.interest_changed();
        }
        if let Some(restored) = restored {
            w.restore_interest(&restored);
        }
        w
    }

    /// What a new worker needs to go on where this one stopped: post numbers and read positions, what
    /// is still unsent, the local subscriptions, the counters and the helper threads.
    pub fn salvage(&mut self) -> Start {
        let mut saved = self.saved.clone();
        saved.next_k = self.outbox.next_k();
        saved.seq = self.outbox.seq();
        saved.cursors = self.incoming.cursors().clone();
        saved.unsent = self.unsent();
        Start {
            saved: Some(saved),
            restored: None,
            interest: Some(std::mem::take(&mut self.interest)),
            counters: self.counters(),
            drops: std::mem::take(&mut self.drops),
            dht: self.dht.take(),
            doorbell: std::mem::replace(&mut self.doorbell, Doorbell::new(None, String::new())),
            health: self.health.clone(),
        }
    }

    /// Queues again what a previous run accepted but could not post before it stopped.
    fn restore_unsent(&mut self) {
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
                        };
                        self.held_private.push(now, out);
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
    fn unsent(&self) -> Vec<Unsent> {
        let mut out = self.outbox.unsent();
        out.extend(self.held_private.messages().map(|m| Unsent {
            to: Destination::Undecided,
            item: wire::encode_item(m),
        }));
        out
    }

    fn log(&self, level: Level, msg: impl Into<String>) {
        let _ = self.to_broker.try_send(ToBroker::Log(
            level,
            format!("mqtt-twister: {}", msg.into()),
        ));
    }

    /// Logs `msg` only the first time `key` is seen.
    fn log_once(&mut self, key: &str, level: Level, msg: impl Into<String>) {
        if !self.said_once.iter().any(|k| k == key) {
            self.said_once.push(key.to_string());
            self.log(level, msg);
        }
    }

    /// Logs an RPC failure once per change of state (the error's kind), naming the method that met it.
    fn rpc_failed(&mut self, method: &str, e: &TwisterError) {
        let kind = e.kind();
        if self.trouble.as_deref() != Some(kind.as_str()) {
            self.log(
                Level::Error,
                format!("twisterd call {method} failed: {e}; retrying with backoff"),
            );
            self.trouble = Some(kind);
        }
    }

    fn rpc_ok(&mut self) {
        if self.trouble.take().is_some() {
            self.log(Level::Notice, "twisterd answers again");
        }
    }

    /// One typed call (`method` names it in the log), with the heartbeat and the log of trouble.
    fn call<T>(
        &mut self,
        method: &str,
        call: impl FnOnce(&Client) -> Result<T, TwisterError>,
    ) -> Result<T, TwisterError> {
        // Once the broker stops, nothing but the shutdown's last posts waits on twisterd.
        if self.health.stopping() && !self.stopping {
            return Err(TwisterError::Transport("the broker is stopping".into()));
        }
        self.health.beat(Instant::now());
        let r = call(&self.rpc);
        self.health.beat(Instant::now());
        match &r {
            Ok(_) => self.rpc_ok(),
            // An RPC error is an answer: twisterd is up.
            Err(TwisterError::Refused { .. }) => self.rpc_ok(),
            Err(e) => self.rpc_failed(method, e),
        }
        r
    }

    /// Serves until the broker stops it (after a shutdown: flushed and saved).
    pub fn run(&mut self, outbound: &Outbound) {
        loop {
            self.health.beat(Instant::now());
            if self.health.stopping() {
                return self.shutdown(outbound);
            }
            let handed = outbound.spool_progress().handed_so_far();
            let mut drained = 0;
            while let Some(m) = outbound.take() {
                self.outbound(m);
                drained += 1;
                if drained == 8192 {
                    break;
                }
            }
            let drained_all = outbound.is_drained();
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
            let received = self.inbox.recv_timeout(wait);
            outbound.awake();
            match received {
                Ok(ToWorker::Shutdown) => return self.shutdown(outbound),
                Ok(m) => {
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
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.shutdown(outbound),
            }
            self.step(Instant::now());
            outbound.set_backlog(self.queued());
            if drained_all && self.queued() == 0 && !self.outbox.has_unknown_outcome() {
                outbound.spool_progress().taken(handed);
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
        for timer in [
            Timer::Poll,
            Timer::InterestRefresh,
            Timer::ResubscribeGrace,
            Timer::Profile,
        ] {
            at(timer);
        }
        if !self.session.unfollowed().is_empty() {
            at(Timer::Refollow);
        }
        if let Some(f) = self.outbox.poll_timeout(now) {
            d = d.min(f);
        }
        if self.remote_known {
            if let Some(h) = self.held_private.next_deadline() {
                d = d.min(h);
            }
        }
        d.max(now)
    }

    fn step(&mut self, now: Instant) {
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
        if self.timers.due(Timer::Profile, now) {
            self.timers.clear(Timer::Profile);
            self.dht.send(DhtJob::WriteProfile(self.interest.filters()));
        }
        if self.timers.due(Timer::InterestRefresh, now) {
            // Always moved on: a deadline left in the past would make the worker spin.
            self.timers
                .set(Timer::InterestRefresh, now + self.cfg.interest_refresh);
            let recipients = self.private_recipients();
            if !recipients.is_empty() {
                self.dht.send(DhtJob::ReadInterest(recipients));
            }
        }
        if !self.session.unfollowed().is_empty() && self.timers.due(Timer::Refollow, now) {
            self.refollow();
        }
        self.end_resubscribe_grace(now);
        self.expire_held(now);
        self.save_state();
    }

    fn private_recipients(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .cfg
            .private
            .iter()
            .flat_map(|r| r.users.iter().cloned())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    // ----- events from the broker -----

    fn handle(&mut self, m: ToWorker) {
        match m {
            ToWorker::Subscribe { client, filter } => {
                let changed = self.interest.subscribe(&client, &filter);
                self.sessions_changed(changed);
            }
            ToWorker::Unsubscribe { client, filter } => {
                let changed = self.interest.unsubscribe(&client, &filter);
                self.sessions_changed(changed);
            }
            ToWorker::Session { client, event } => {
                let changed = self.interest.session(&client, event);
                self.sessions_changed(changed);
            }
            ToWorker::RemoteInterest { user, filters } => {
                let first = self.interest_answered.insert(user.clone());
                if first || self.remote.get(&user) != filters.as_ref() {
                    let what = match &filters {
                        Some(f) => format!("{f:?}"),
                        None => "none published".into(),
                    };
                    self.log(Level::Info, format!("interest of recipient {user}: {what}"));
                }
                match filters {
                    Some(f) => self.remote.insert(user, f),
                    None => self.remote.remove(&user),
                };
                let now_known = !self.remote_known
                    && self
                        .private_recipients()
                        .iter()
                        .all(|u| self.interest_answered.contains(u));
                if now_known {
                    self.remote_known = true;
                }
                if self.remote_known {
                    self.route_held(now_known);
                }
            }
            ToWorker::Shutdown | ToWorker::Wake => {}
            ToWorker::ProfileWritten(Ok(())) => self.profile_backoff = Duration::from_millis(500),
            ToWorker::ProfileWritten(Err(e)) => {
                self.log(
                    Level::Warning,
                    format!("writing our interest to the Twister profile failed: {e}; retrying"),
                );
                self.timers
                    .set(Timer::Profile, Instant::now() + self.profile_backoff);
                self.profile_backoff = (self.profile_backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn interest_changed(&mut self) {
        // Debounced: a burst of SUBSCRIBEs makes one profile write.
        let due = Instant::now() + self.cfg.profile_debounce;
        if self.timers.get(Timer::Profile).is_none() {
            self.timers.set(Timer::Profile, due);
        }
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
    fn deliver(&mut self, from: &str, k: i64, what: &str, m: Message) {
        #[cfg(debug_assertions)]
        test_hook(&m);
        self.counters.received += 1;
        if !crate::topic::is_injectable(&m.topic) {
            self.incoming.malformed(
                format!(
                    "skipped a message from {from} ({what} {k}): topic not allowed from the network"
                ),
                Instant::now(),
            );
            return;
        }
        // Retained messages are kept even with no subscriber now, for those who come later.
        let wanted = m.retain || self.interest.wants(&m.topic);
        let may_come_back =
            self.timers.get(Timer::ResubscribeGrace).is_some() && self.interest.may_want(&m.topic);
        if may_come_back {
            // Injected too when wanted: a copy for a session the broker may have lost.
            self.held.hold(m.clone(), wanted);
        }
        if wanted {
            self.inject(m);
        }
    }

    /// Writes the state file when something changed, at most every STATE_SAVE_EVERY.
    fn save_state(&mut self) {
        if self.state_dirty && self.last_save.elapsed() >= STATE_SAVE_EVERY {
            self.save_state_now();
        }
    }

    fn save_state_now(&mut self) {
        if !self.state_dirty {
            return;
        }
        self.last_save = Instant::now();
        self.saved.interest = self.interest.saved();
        self.saved.next_k = self.outbox.next_k();
        self.saved.seq = self.outbox.seq();
        self.saved.cursors = self.incoming.cursors().clone();
        let Some(path) = self.cfg.state_file.clone() else {
            self.state_dirty = false;
            return;
        };
        match self.saved.save(&path) {
            Ok(()) => self.state_dirty = false,
            Err(e) => self.log_once(
                "state-write",
                Level::Error,
                format!("{e}: a restart may replay or reuse post numbers"),
            ),
        }
    }

    fn shutdown(&mut self, outbound: &Outbound) {
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
        self.saved.unsent = self.unsent();
        self.saved.clean_stop = true;
        self.state_dirty = true;
        self.save_state_now();
        if self.queued() == 0 || (self.cfg.state_file.is_some() && !self.state_dirty) {
            // Posted, or kept in the state file: not replayed from the spool.
            outbound.spool_progress().taken(handed);
        }
        let c = self.counters();
        self.log(Level::Notice, format!(
            "stopped: forwarded {} (in {} posts, {} DMs), received {}, injected {}, malformed {}, dropped {}: {}; posts of unknown outcome {}, waits for a block {}, internal errors {}",
            c.forwarded, c.outbox.posts, c.outbox.dms, c.received, c.injected, c.inbox.malformed, self.drops.dropped(), self.drops.summary(), c.outbox.unknown_outcomes, c.outbox.budget_waits, self.health.internal_errors()
        ));
        self.dht.stop();
    }
}
