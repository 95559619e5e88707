//! Keeps the worker going. The worker thread runs the worker inside a panic guard: a panic is caught,
//! counted, logged through the broker's log, and a new worker starts from the state the old one held
//! (its post numbers, read positions, unsent messages and local subscriptions; the state file when even
//! that cannot be had). A post that crashed the worker is marked read before it is read, so it is not
//! read again. Panics in a row wait longer and longer before the next start.
//!
//! Stopping is bounded: the broker waits `STOP_WAIT` at most for the worker to flush and save, then
//! leaves it behind (the library stays loaded, see `host::entry::keep_library_loaded`).

use crate::bus::{
    self, FromWorker, Level, Outbound, Outgoing, ToBroker, ToBrokerSender, ToWorker,
    CONTROL_CAPACITY, LOG_CAPACITY, TO_BROKER_CAPACITY,
};
use crate::config::Config;
use crate::dht::DhtThread;
use crate::drops::Drops;
use crate::health::{panic_text, Health};
use crate::interest::{Interest, RestoredSessions};
use crate::state::Saved;
use crate::twister::Twister;
use crate::wake::Doorbell;
use crate::worker::{Counters, Start, Worker};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the broker waits for the worker to flush and save when it stops.
pub const STOP_WAIT: Duration = Duration::from_secs(10);
/// A panic within this long after the last one waits before the worker starts again, twice as long
/// each time, up to MAX_RESTART_DELAY.
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

type MakeRpc = Box<dyn Fn(Duration) -> Box<dyn Twister> + Send>;

/// The broker side's end: the sender the callbacks `try_send` on, the receiver TICK drains, the thread.
pub struct WorkerHandle {
    pub to_worker: Option<Sender<ToWorker>>,
    pub from_worker: FromWorker,
    outbound: Arc<Outbound>,
    health: Arc<Health>,
    thread: Option<JoinHandle<()>>,
    /// For the helpers beside the worker (the spool's keeper) to log through the broker.
    log: ToBrokerSender,
}

impl WorkerHandle {
    pub fn spawn(
        cfg: Arc<Config>,
        make_rpc: impl Fn(Duration) -> Box<dyn Twister> + Send + 'static,
        saved: Option<Saved>,
        doorbell: Doorbell,
        restored: RestoredSessions,
        injections: Option<crate::injected::Handle>,
    ) -> std::io::Result<Self> {
        let (to_worker, inbox) = bounded(CONTROL_CAPACITY);
        let (to_broker, from_worker) = bus::to_broker(TO_BROKER_CAPACITY, LOG_CAPACITY);
        let outbound = Arc::new(Outbound::new(cfg.max_queue));
        let health = Arc::new(Health::default());
        let log = to_broker.clone();
        let supervisor = Supervisor {
            cfg,
            make_rpc: Box::new(make_rpc),
            inbox,
            dht_inbox: to_worker.clone(),
            to_broker,
            outbound: outbound.clone(),
            health: health.clone(),
            injections,
        };
        let thread = std::thread::Builder::new()
            .name("mqtt-twister".into())
            .spawn(move || supervisor.run(saved, doorbell, restored))?;
        Ok(WorkerHandle {
            to_worker: Some(to_worker),
            from_worker,
            outbound,
            health,
            thread: Some(thread),
            log,
        })
    }

    /// What of the spool is with the worker and what it took.
    pub fn spool_progress(&self) -> Arc<crate::spool::Progress> {
        self.outbound.spool_progress().clone()
    }

    /// A line for the broker's log, from a thread beside the worker; dropped when the channel is full.
    pub fn log_sender(&self) -> impl Fn(Level, String) + Send + 'static {
        let tx = self.log.clone();
        move |level, line| {
            let _ = tx.try_send(ToBroker::Log(level, format!("mqtt-twister: {line}")));
        }
    }

    /// A handle with no worker thread behind it, for the broker side's unit tests: the other ends of
    /// its channels and queue.
    #[cfg(test)]
    pub fn detached(max_queue: usize) -> (Self, Receiver<ToWorker>, ToBrokerSender, Arc<Outbound>) {
        let (to_worker, inbox) = bounded(CONTROL_CAPACITY);
        let (to_broker, from_worker) = bus::to_broker(TO_BROKER_CAPACITY, LOG_CAPACITY);
        let outbound = Arc::new(Outbound::new(max_queue));
        let handle = WorkerHandle {
            to_worker: Some(to_worker),
            from_worker,
            outbound: outbound.clone(),
            health: Arc::new(Health::default()),
            thread: None,
            log: to_broker.clone(),
        };
        (handle, inbox, to_broker, outbound)
    }

    /// Queues a local message for the worker; false when the queue is full. Never blocks.
    pub fn publish(&self, m: Outgoing) -> bool {
        match self.outbound.offer(m) {
            Err(_) => false,
            Ok(wake) => {
                if wake {
                    if let Some(tx) = &self.to_worker {
                        let _ = tx.try_send(ToWorker::Wake);
                    }
                }
                true
            }
        }
    }

    /// See `Outbound::backlog_full`.
    pub fn backlog_full(&self) -> bool {
        self.outbound.backlog_full()
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The worker thread is gone (it only ends when stopped, or if its guard itself failed).
    pub fn thread_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks the worker to flush, save and stop, and waits up to `wait` for it. False when it did not
    /// stop in time: it is left behind, running, and ends with the process.
    pub fn stop(&mut self, wait: Duration) -> bool {
        let asked = Instant::now();
        self.health.ask_to_stop(asked);
        // The DHT thread holds a sender too, so closing ours is not enough: say it (never blocking:
        // a worker that does not read its inbox sees the request in `health`).
        if let Some(tx) = self.to_worker.take() {
            let _ = tx.try_send(ToWorker::Shutdown);
        }
        let Some(thread) = self.thread.take() else {
            return true;
        };
        while !thread.is_finished() {
            if asked.elapsed() >= wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
        true
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop(STOP_WAIT);
    }
}

struct Supervisor {
    cfg: Arc<Config>,
    make_rpc: MakeRpc,
    inbox: Receiver<ToWorker>,
    dht_inbox: Sender<ToWorker>,
    to_broker: ToBrokerSender,
    outbound: Arc<Outbound>,
    health: Arc<Health>,
    /// The injection log (`crate::injected`), with a state file.
    injections: Option<crate::injected::Handle>,
}

impl Supervisor {
    fn log(&self, level: Level, text: String) {
        let _ = self.to_broker.try_send(ToBroker::Log(level, text));
    }

    fn dht(&self) -> DhtThread {
        // dhtget waits up to its timeout for the network: the DHT thread gets a longer HTTP timeout.
        let rpc = (self.make_rpc)(self.cfg.rpc_timeout + Duration::from_secs(4));
        DhtThread::spawn(
            self.cfg.clone(),
            rpc,
            self.dht_inbox.clone(),
            self.to_broker.clone(),
            self.health.clone(),
        )
    }

    fn run(self, saved: Option<Saved>, doorbell: Doorbell, restored: RestoredSessions) {
        let spare_doorbell = doorbell.same_again();
        let mut start = Start {
            saved,
            restored: Some(restored),
            interest: None,
            counters: Counters::default(),
            drops: Drops::default(),
            dht: self.dht(),
            doorbell,
            health: self.health.clone(),
            receipts: None,
            injections: self.injections(),
            settled: None,
        };
        let mut last_panic: Option<Instant> = None;
        let mut delay = Duration::ZERO;
        loop {
            let mut worker: Option<Worker> = None;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let rpc = (self.make_rpc)(self.cfg.rpc_timeout);
                let inbox = self.inbox.clone();
                let w = Worker::new(self.cfg.clone(), rpc, inbox, self.to_broker.clone(), start);
                worker.insert(w).run(&self.outbound);
            }));
            let Err(panic) = outcome else {
                return;
            };
            let count = self.health.internal_error();
            self.health.set_restarting(true);
            let now = Instant::now();
            delay = if last_panic.is_some_and(|t| now.duration_since(t) < CRASH_LOOP_WINDOW) {
                (delay * 2).clamp(Duration::from_secs(1), MAX_RESTART_DELAY)
            } else {
                Duration::ZERO
            };
            last_panic = Some(now);
            let wait = if delay.is_zero() {
                String::new()
            } else {
                format!(" in {} s", delay.as_secs())
            };
            self.log(
                Level::Error,
                format!(
                    "mqtt-twister: internal error in the worker: {} (internal errors so far: {count}); restarting it from its saved state{wait} (please report)",
                    panic_text(panic.as_ref())
                ),
            );
            let salvaged = worker
                .take()
                .and_then(|mut w| catch_unwind(AssertUnwindSafe(move || w.salvage())).ok());
            start = match salvaged {
                Some(s) => s,
                None => self.from_state_file(spare_doorbell.same_again()),
            };
            let until = Instant::now() + delay;
            while Instant::now() < until && !self.health.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.health.set_restarting(false);
        }
    }

    /// A start for when the dead worker's memory could not be read: the state file, if any.
    fn from_state_file(&self, doorbell: Doorbell) -> Start {
        let saved = self
            .cfg
            .state_file
            .as_deref()
            .and_then(|path| catch_unwind(|| Saved::load(path)).ok())
            .and_then(Result::ok)
            .flatten();
        self.log(
            Level::Warning,
            format!(
                "mqtt-twister: the worker's state could not be taken over; {}",
                if saved.is_some() {
                    "starting from the state file"
                } else {
                    "starting afresh"
                }
            ),
        );
        Start {
            saved,
            restored: None,
            interest: Some(Interest::new(&self.cfg.subscribe)),
            counters: Counters::default(),
            drops: Drops::default(),
            dht: self.dht(),
            doorbell,
            health: self.health.clone(),
            receipts: None,
            injections: self.injections(),
            settled: None,
        }
    }

    /// A reader of the injection log for a new worker (from what the saved state lacks on).
    fn injections(&self) -> Option<crate::injected::Reader> {
        self.injections
            .as_ref()
            .map(crate::injected::Handle::reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interest::RestoredSessions;
    use crate::twister::TwisterError;
    use serde_json::Value;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn config() -> Arc<Config> {
        let opts: Vec<(String, String)> =
            [("rpc_user", "u"), ("rpc_password", "p"), ("user", "me")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        Arc::new(crate::config::parse(&opts).unwrap())
    }

    /// A twisterd that is never reachable, whose first `listwalletusers` panics inside the plugin and
    /// whose calls block while `blocked` is set.
    struct Fake {
        panics: Arc<AtomicUsize>,
        blocked: Arc<AtomicBool>,
        waiting: Arc<AtomicUsize>,
    }

    impl Twister for Fake {
        fn call(&self, method: &str, _params: Value) -> Result<Value, TwisterError> {
            if self.blocked.load(Ordering::SeqCst) {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                while self.blocked.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if method == "listwalletusers" && self.panics.fetch_sub(1, Ordering::SeqCst) > 0 {
                panic!("test: {method} panics");
            }
            Err(TwisterError::Transport("test: unreachable".into()))
        }
    }

    fn spawn(panics: usize, blocked: bool) -> (WorkerHandle, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let panics = Arc::new(AtomicUsize::new(panics));
        let blocked = Arc::new(AtomicBool::new(blocked));
        let waiting = Arc::new(AtomicUsize::new(0));
        let (p, b, w) = (panics.clone(), blocked.clone(), waiting.clone());
        let make_rpc = move |_| {
            Box::new(Fake {
                panics: p.clone(),
                blocked: b.clone(),
                waiting: w.clone(),
            }) as Box<dyn Twister>
        };
        let doorbell = Doorbell::new(None, "test".into());
        let handle = WorkerHandle::spawn(
            config(),
            make_rpc,
            None,
            doorbell,
            RestoredSessions::None,
            None,
        )
        .unwrap();
        (handle, blocked, waiting)
    }

    fn next_log(h: &WorkerHandle, containing: &str) -> String {
        loop {
            match h.from_worker.recv_timeout(Duration::from_secs(20)) {
                Some(ToBroker::Log(_, line)) if line.contains(containing) => return line,
                Some(_) => {}
                None => panic!("no log line with {containing:?}"),
            }
        }
    }

    #[test]
    fn a_panic_in_the_worker_is_logged_counted_and_the_worker_starts_again() {
        let (mut h, _, _) = spawn(1, false);
        let line = next_log(&h, "internal error in the worker");
        assert!(
            line.contains("test: listwalletusers panics (internal errors so far: 1); restarting it from its saved state"),
            "{line}"
        );
        // The new worker goes on with its start-up: it meets the unreachable twisterd.
        next_log(&h, "twisterd call listwalletusers failed");
        assert_eq!(h.health().internal_errors(), 1);
        assert!(!h.thread_ended());
        assert!(h.stop(STOP_WAIT), "a running worker stops when asked");
        assert!(h.thread_ended());
    }

    #[test]
    fn the_stop_is_bounded_whatever_the_worker_waits_on() {
        let (mut h, blocked, waiting) = spawn(0, true);
        // The worker's first call (its start-up) waits on twisterd.
        let deadline = Instant::now() + Duration::from_secs(20);
        while waiting.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the worker never called twisterd"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !h.stop(Duration::from_millis(300)),
            "a worker blocked in a call is left behind"
        );
        // Let it go: it sees the stop and ends by itself.
        blocked.store(false, Ordering::SeqCst);
    }
}
