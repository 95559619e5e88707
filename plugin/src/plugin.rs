//! What the plugin does with each broker event, in safe code: which local messages leave (routed
//! once, by `route::Router`) and when a publish is refused, what a subscription or a session change
//! tells the worker, what TICK injects and logs. The host layer (`crate::host`) turns the broker's
//! raw events into the views of `host::views` and calls these methods on the broker's thread; unit
//! tests call them with fake clients and a fake broker.
//!
//! MESSAGE and ACL checks are the hot path: no blocking, no I/O, no syscall; what they hand over is
//! `try_send`/pushed without waiting.

use crate::access::{self, AclAnswer};
use crate::bus::{Level, Outgoing, ToBroker, ToWorker};
use crate::config::{self, Config};
use crate::host::views::{
    AclAccess, AclCheckEvent, AclVerdict, Broker, Client, DisconnectEvent, MessageAnswer,
    MessageEvent, PublishRefused, SubscribeEvent, TickEvent,
};
use crate::interest::{RestoredSessions, SessionEvent};
use crate::qos2::{self, Qos2Dedup};
use crate::route::Route;
use crate::spool::intake::{Intake, Verdict};
use crate::spool::keeper::Keeper;
use crate::startup::{
    load_state, open_injection_log, open_spool, resolve_password, restored_sessions,
    spool_with_worker,
};
use crate::supervise::{WorkerHandle, STOP_WAIT};
use crate::twister::{HttpTwister, Twister};
use crate::wake::Doorbell;
use crate::watch::Watch;
use crate::wire::Message;
use crossbeam_channel::TrySendError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// On 2.1 the pacing TICK asks to run again this soon. 2.1 otherwise sleeps up to 5 s (10 s without
/// clients) between loop turns; 2.0 turns at least every 100 ms and ignores the request.
pub const TICK_PACE: Duration = Duration::from_millis(100);
/// Debug builds only: messages from the network on topics under this are injected one per
/// TEST_SLOW_INJECT_EVERY, so that integration tests can kill the broker while received messages
/// wait for TICK (`tests/injection.rs`; release builds have no such hook).
#[cfg(debug_assertions)]
pub const TEST_SLOW_INJECT_TOPIC: &str = "mqtt-twister/test/slow-inject/";
#[cfg(debug_assertions)]
const TEST_SLOW_INJECT_EVERY: Duration = Duration::from_millis(1000);
/// Items injected per TICK at most, so one tick never stalls the broker.
const INJECT_PER_TICK: usize = 2048;
/// How often the drop counts are said in the log at most.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);
/// The worker's health is looked at on every this many TICKs (at least every 1.6 s: both versions
/// run TICK at least every 100 ms), not on each: it needs the clock, and a worker is called silent
/// only after a minute.
const HEALTH_EVERY_TICKS: u32 = 16;

/// What the host knows about the running broker when the plugin starts.
pub struct HostFacts<F> {
    /// Mosquitto 2.1 (SUBSCRIBE and session events, QUOTA_EXCEEDED, `next_ms` in TICK).
    pub v21: bool,
    /// 2.1: whether the broker holds a session for a client id (None on 2.0).
    pub holds_session: Option<F>,
    /// This library stays loaded whatever the broker does.
    pub pinned: bool,
    /// Maps the spool's segment files (the host layer's, where unsafe code lives).
    pub storage: Box<dyn crate::spool::Storage>,
}

pub struct Plugin {
    cfg: Arc<Config>,
    pub worker: WorkerHandle,
    acl: AclAnswer,
    v21: bool,
    qos2: Qos2Dedup,
    /// Events the worker's queues had no room for.
    dropped: u64,
    /// Publishes refused with QUOTA_EXCEEDED (2.1, MQTT 5, QoS > 0) because the queue was full.
    refused: u64,
    /// The pacing TICK (2.1) has said once that it asks for the next TICK.
    pace_said: bool,
    /// TICKs so far (wrapping): the worker's health is looked at on every HEALTH_EVERY_TICKS.
    ticks: u32,
    dropped_reported: u64,
    last_drop_report: Instant,
    /// Log lines dropped (their channel full) as last said, and when.
    logs_dropped_reported: u64,
    logs_dropped_at: Option<Instant>,
    pub pinned: bool,
    watch: Watch,
    /// The broker keeps sessions on disk (`persistence true`).
    persistence: bool,
    /// The crash-safe spool (`plugin_opt_spool_dir`): written in MESSAGE, kept by its own thread.
    spool: Option<Intake>,
    /// Stopped after the worker (dropped after it), so that the worker's last progress is written.
    keeper: Option<Keeper>,
    /// Writes down each received message the broker took (`crate::injected`; with a state file).
    recorder: Option<crate::injected::Recorder>,
    /// Debug builds: no injection before this (`TEST_SLOW_INJECT_TOPIC`).
    #[cfg(debug_assertions)]
    slow_until: Option<Instant>,
}

impl Plugin {
    /// Reads the configuration (`plugin_opt_*`), the password and state files and the broker's own
    /// configuration, and starts the worker (and the spool's thread). Ok: the plugin and what the
    /// spool's recovery has to say; Err: what to say before refusing to load.
    pub fn start<F: Fn(&str) -> bool>(
        options: &[(String, String)],
        host: HostFacts<F>,
    ) -> Result<(Plugin, Option<String>), String> {
        let cfg = Arc::new(config::parse(options).map_err(|e| e.to_string())?);
        let password = resolve_password(&cfg)?;
        let v21 = host.v21;
        let broker_conf = access::read_running_broker();
        if !v21
            && broker_conf
                .as_ref()
                .is_some_and(|c| c.per_listener_settings)
        {
            return Err("per_listener_settings true is not supported on Mosquitto 2.0: the broker never calls the plugin's TICK there, so nothing would ever arrive from the network. Set per_listener_settings false.".into());
        }
        // 2.1 tells subscriptions through events: no ACL check is registered, access stays as it is.
        let acl = if v21 {
            AclAnswer::Defer
        } else {
            access::decide(cfg.access, broker_conf.as_ref())?
        };
        let mut saved = load_state(&cfg)?;
        let (recorder, injections, damage) =
            match open_injection_log(&cfg, host.storage.as_ref(), &mut saved)? {
                Some((recorder, handle, damage)) => (Some(recorder), Some(handle), damage),
                None => (None, None, None),
            };
        let spool = open_spool(&cfg, host.storage, &mut saved)?;
        let (url, user) = (cfg.rpc_url.clone(), cfg.rpc_user.clone());
        let make_rpc = move |timeout| {
            Box::new(HttpTwister::new(&url, &user, &password, timeout)) as Box<dyn Twister>
        };
        let wake = broker_conf
            .as_ref()
            .and_then(|c| c.wake_address())
            .filter(|_| cfg.wakeup);
        let doorbell = Doorbell::new(wake, format!("mqtt-twister-wake-{}", cfg.user));
        let persistence = broker_conf.as_ref().is_some_and(|c| c.persistence);
        let restored = match (persistence, host.holds_session) {
            (false, _) => RestoredSessions::None,
            (true, Some(holds)) => restored_sessions(saved.as_ref(), holds),
            // 2.0 cannot ask which it restored.
            (true, None) => RestoredSessions::All,
        };
        let worker =
            WorkerHandle::spawn(cfg.clone(), make_rpc, saved, doorbell, restored, injections)
                .map_err(|e| format!("cannot start the worker thread: {e}"))?;
        let (spool, keeper, report) = match spool {
            None => (None, None, None),
            Some((spool, appender, report)) => {
                let (intake, keeper) = spool_with_worker(spool, appender, &worker)
                    .map_err(|e| format!("cannot start the spool's thread: {e}"))?;
                (Some(intake), Some(keeper), report)
            }
        };
        let mut plugin = Plugin::new(cfg, worker, acl, v21, host.pinned);
        plugin.persistence = persistence;
        plugin.spool = spool;
        plugin.keeper = keeper;
        plugin.recorder = recorder;
        let report = match (report, damage) {
            (Some(a), Some(b)) => Some(format!("{a}\n{b}")),
            (a, b) => a.or(b),
        };
        Ok((plugin, report))
    }

    pub fn new(
        cfg: Arc<Config>,
        worker: WorkerHandle,
        acl: AclAnswer,
        v21: bool,
        pinned: bool,
    ) -> Self {
        Plugin {
            watch: Watch::new(cfg.rpc_timeout),
            cfg,
            worker,
            acl,
            v21,
            qos2: Qos2Dedup::default(),
            dropped: 0,
            refused: 0,
            pace_said: false,
            ticks: 0,
            dropped_reported: 0,
            last_drop_report: Instant::now(),
            logs_dropped_reported: 0,
            logs_dropped_at: None,
            pinned,
            persistence: false,
            spool: None,
            keeper: None,
            recorder: None,
            #[cfg(debug_assertions)]
            slow_until: None,
        }
    }

    /// 2.1 refuses persistence events to plugins under `persistence true` (and logs an error): there
    /// the expiry of an offline session stays unseen.
    pub fn wants_session_deletions(&self) -> bool {
        self.v21 && !self.persistence
    }

    /// The line that says the plugin is loaded.
    pub fn loaded_line(&self) -> String {
        let (via, access) = if self.v21 {
            ("SUBSCRIBE events", "unchanged, no ACL check".to_string())
        } else {
            ("ACL checks", format!("{:?}", self.acl))
        };
        format!(
            "mqtt-twister: loaded for Twister user '{}' at {} (subscriptions seen through {via}; access: {access})",
            self.cfg.user, self.cfg.rpc_url
        )
    }

    pub fn v21(&self) -> bool {
        self.v21
    }

    fn send(&mut self, m: ToWorker) {
        let Some(tx) = &self.worker.to_worker else {
            return;
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(m) {
            self.dropped += 1;
        }
    }

    /// MESSAGE. Most topics stay local: they cost the routing and nothing else. What leaves is
    /// handled by `forward`.
    #[inline(always)]
    pub fn message(&mut self, ev: &MessageEvent<impl Client>) -> MessageAnswer {
        // Tested first on its own, so that turning a topic away builds no route.
        if !self.cfg.router.may_route(ev.topic) {
            return MessageAnswer::Accept;
        }
        let route = self.cfg.router.route(ev.topic);
        if route.is_empty() {
            return MessageAnswer::Accept;
        }
        self.forward(ev, route)
    }

    /// A local message that leaves. 2.0 disconnects the publisher on any answer but Accept. On 2.1,
    /// QUOTA_EXCEEDED refuses this one publish: used when the queue is full and the publisher learns
    /// it (MQTT 5, QoS 1 or 2) and can retry; the refused message reaches no local subscriber either,
    /// so everyone else's messages still pass. With the spool, a QoS 1/2 publish the spool cannot take
    /// is refused unacknowledged: "quota exceeded" where the client understands it, else its
    /// connection closed (it resends after reconnecting). Not inlined, so that the common path above
    /// stays small.
    #[inline(never)]
    fn forward(&mut self, ev: &MessageEvent<impl Client>, route: Route) -> MessageAnswer {
        // The broker accepts only UTF-8 topics from clients; anything else is not ours to forward.
        let Ok(topic) = std::str::from_utf8(ev.topic) else {
            return MessageAnswer::Accept;
        };
        let may_refuse = self.v21 && ev.qos > 0;
        if may_refuse && self.worker.backlog_full() && ev.client.protocol_version() == 5 {
            self.refused += 1;
            return MessageAnswer::RefuseQuotaExceeded;
        }
        let mut qos2_seen = None;
        if ev.qos == 2 {
            if let Some(id) = ev.client.id() {
                let fp = qos2::fingerprint(topic, ev.payload, ev.retain);
                if !self.qos2.first_time(id, ev.client.clean_session(), fp) {
                    return MessageAnswer::Accept; // a retransmission: forwarded already
                }
                qos2_seen = Some((id, fp));
            }
        }
        let message = Message {
            topic: topic.to_owned(),
            payload: ev.payload.to_vec(),
            qos: ev.qos,
            retain: ev.retain,
        };
        if let Some(spool) = self.spool.as_mut() {
            let worker = &self.worker;
            let hand = |message, id| {
                worker.publish(Outgoing {
                    message,
                    route,
                    id: Some(id),
                })
            };
            return match spool.take(message, !worker.backlog_full(), hand) {
                Verdict::Accepted(_) | Verdict::Dropped => MessageAnswer::Accept,
                Verdict::Refused => {
                    if let Some((id, fp)) = qos2_seen {
                        self.qos2.refused(id, fp);
                    }
                    if self.v21 && ev.client.protocol_version() == 5 {
                        MessageAnswer::RefuseQuotaExceeded
                    } else {
                        MessageAnswer::RefuseClosingConnection
                    }
                }
            };
        }
        let queued = self.worker.publish(Outgoing {
            message,
            route,
            id: None,
        });
        if !queued {
            if may_refuse && ev.client.protocol_version() == 5 {
                self.refused += 1;
                return MessageAnswer::RefuseQuotaExceeded;
            }
            self.dropped += 1;
        }
        MessageAnswer::Accept
    }

    /// ACL_CHECK (2.0): answers every check as configured, and tells the worker about subscriptions.
    #[inline(always)]
    pub fn acl_check(&mut self, ev: &AclCheckEvent<impl Client>) -> AclVerdict {
        let verdict = match self.acl {
            AclAnswer::Defer => AclVerdict::Defer,
            AclAnswer::Allow => AclVerdict::Allow,
        };
        match ev.access {
            // Reads and writes: the hot path, nothing to do.
            AclAccess::Read | AclAccess::Write => {}
            AclAccess::Subscribe => self.subscription_checked(ev, true),
            AclAccess::Unsubscribe => self.subscription_checked(ev, false),
        }
        verdict
    }

    /// A subscribe or unsubscribe check (2.0): the session and the subscription, to the worker.
    #[inline(never)]
    fn subscription_checked(&mut self, ev: &AclCheckEvent<impl Client>, subscribe: bool) {
        let (Some(client), Some(filter)) = (ev.client.id(), ev.topic) else {
            return;
        };
        let (client, filter) = (client.to_owned(), filter.to_owned());
        // 2.0 has no CONNECT event: the session kind is read on the live connection.
        let persistent = !ev.client.clean_session();
        self.send(ToWorker::Session {
            client: client.clone(),
            event: SessionEvent::Connected {
                persistent,
                new_connection: false,
            },
        });
        self.send(if subscribe {
            ToWorker::Subscribe { client, filter }
        } else {
            ToWorker::Unsubscribe { client, filter }
        });
    }

    /// SUBSCRIBE and UNSUBSCRIBE (2.1).
    pub fn subscription(&mut self, ev: &SubscribeEvent) {
        let (client, filter) = (ev.client.to_owned(), ev.filter.to_owned());
        self.send(if ev.subscribe {
            ToWorker::Subscribe { client, filter }
        } else {
            ToWorker::Unsubscribe { client, filter }
        });
    }

    /// DISCONNECT (2.0 and 2.1), CONNECT and CLIENT_OFFLINE (2.1).
    pub fn session(&mut self, ev: &DisconnectEvent) {
        let event = SessionEvent::from_broker(ev.seen, self.v21, ev.clean_session);
        match event {
            SessionEvent::Ended => self.qos2.session_ended(ev.client),
            SessionEvent::Connected { .. } => {}
            _ => self.qos2.connection_ended(ev.client),
        }
        self.send(ToWorker::Session {
            client: ev.client.to_owned(),
            event,
        });
    }

    /// PERSIST_CLIENT_DELETE (2.1): a persistent session was deleted (expired, or discarded by a
    /// clean start).
    pub fn session_deleted(&mut self, client: &str) {
        self.qos2.session_ended(client);
        self.send(ToWorker::Session {
            client: client.to_owned(),
            event: SessionEvent::Ended,
        });
    }

    /// TICK: publishes and logs what the worker sent, and reports drops now and then. `pace` (2.1
    /// only): the second TICK callback, which asks to run again within TICK_PACE and so bounds how
    /// long the broker's loop sleeps.
    pub fn tick(&mut self, broker: &impl Broker, ev: &mut TickEvent, pace: bool) {
        if pace {
            ev.request_next_within(TICK_PACE);
            if !self.pace_said {
                self.pace_said = true;
                broker.log(
                    Level::Info,
                    &format!(
                        "mqtt-twister: Mosquitto 2.1: asking the broker for the next TICK within {} ms",
                        TICK_PACE.as_millis()
                    ),
                );
            }
        }
        if self.worker.from_worker.take_pending() {
            self.drain(broker);
        }
        if self.dropped + self.refused > self.dropped_reported {
            self.report_drops(broker);
        }
        // The worker's health needs the clock; it is looked at every HEALTH_EVERY_TICKS TICKs.
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % HEALTH_EVERY_TICKS == 0 {
            self.look_at_health(broker);
        }
    }

    /// Publishes and logs what the worker sent (at most INJECT_PER_TICK items per TICK).
    #[inline(never)]
    fn drain(&mut self, broker: &impl Broker) {
        let mut emptied = false;
        for _ in 0..INJECT_PER_TICK {
            // No room in the injection log until the worker saved its state: the rest waits.
            if self.recorder.as_ref().is_some_and(|r| !r.has_room()) || self.slowed_down() {
                break;
            }
            let (m, mark) = match self.worker.from_worker.try_recv() {
                Some(ToBroker::Publish(m)) => (m, None),
                Some(ToBroker::PublishRecorded(m, mark)) => (m, Some(mark)),
                Some(ToBroker::Log(level, text)) => {
                    broker.log(level, &text);
                    continue;
                }
                None => {
                    emptied = true;
                    break;
                }
            };
            #[cfg(debug_assertions)]
            if m.topic.starts_with(TEST_SLOW_INJECT_TOPIC) {
                self.slow_until = Some(Instant::now() + TEST_SLOW_INJECT_EVERY);
            }
            // Right after the broker took it (or refused it for good): a kill -9 from now on finds it
            // in the log, so it is neither injected again nor lost.
            if self.inject(broker, m) {
                if let (Some(r), Some(mark)) = (self.recorder.as_mut(), mark) {
                    r.record(&mark);
                }
            }
        }
        if !emptied {
            self.worker.from_worker.look_again();
        }
        self.report_lost_log_lines(broker);
    }

    /// Debug builds: a message on `TEST_SLOW_INJECT_TOPIC` was injected less than
    /// TEST_SLOW_INJECT_EVERY ago. Release builds: never.
    #[inline(always)]
    fn slowed_down(&mut self) -> bool {
        #[cfg(debug_assertions)]
        if let Some(t) = self.slow_until {
            if Instant::now() < t {
                return true;
            }
            self.slow_until = None;
        }
        false
    }

    /// Says how many events were dropped and publishes refused (at most every DROP_REPORT_EVERY).
    #[inline(never)]
    fn report_drops(&mut self, broker: &impl Broker) {
        if self.last_drop_report.elapsed() < DROP_REPORT_EVERY {
            return;
        }
        broker.log(
            Level::Warning,
            &format!(
                "mqtt-twister: {}, {} events dropped and {} publishes refused (quota exceeded) so far",
                Watch::why_dropped(self.worker.thread_ended(), self.worker.health()),
                self.dropped,
                self.refused
            ),
        );
        self.dropped_reported = self.dropped + self.refused;
        self.last_drop_report = Instant::now();
    }

    /// Says when the worker thread is gone or shows no sign of life, and the log lines dropped that
    /// an earlier report held back.
    #[inline(never)]
    fn look_at_health(&mut self, broker: &impl Broker) {
        let ended = self.worker.thread_ended();
        for (level, line) in self
            .watch
            .health_lines(ended, self.worker.health(), Instant::now())
        {
            broker.log(level, &line);
        }
        self.report_lost_log_lines(broker);
    }

    /// Says how many log lines were dropped for want of room in their channel (at most every
    /// DROP_REPORT_EVERY; one atomic load otherwise).
    fn report_lost_log_lines(&mut self, broker: &impl Broker) {
        let lost = self.worker.from_worker.logs_dropped();
        if lost == self.logs_dropped_reported
            || self
                .logs_dropped_at
                .is_some_and(|t| t.elapsed() < DROP_REPORT_EVERY)
        {
            return;
        }
        broker.log(
            Level::Warning,
            &format!(
                "mqtt-twister: {} log lines dropped (their queue to the broker was full; {lost} so far)",
                lost - self.logs_dropped_reported
            ),
        );
        self.logs_dropped_reported = lost;
        self.logs_dropped_at = Some(Instant::now());
    }

    /// Publishes a message from the network into the broker; counts and logs (rate-limited) a topic
    /// the broker would not take from a client. True: settled (taken, or a topic it never takes).
    fn inject(&mut self, broker: &impl Broker, m: Message) -> bool {
        let topic = m.topic.clone();
        match broker.publish(m) {
            Ok(()) => true,
            Err(PublishRefused::Topic(why)) => {
                if let Some(line) = self.watch.refused(&topic, why, Instant::now()) {
                    broker.log(Level::Warning, &line);
                }
                true
            }
            Err(PublishRefused::OutOfMemory) => {
                broker.log(
                    Level::Error,
                    "mqtt-twister: out of memory injecting a message",
                );
                false
            }
            Err(PublishRefused::Broker(rc)) => {
                broker.log(
                    Level::Warning,
                    &format!(
                        "mqtt-twister: broker refused a message from the network (error {rc})"
                    ),
                );
                false
            }
        }
    }

    /// The broker unloads the plugin: the worker flushes and saves. A worker that does not stop in
    /// time (stuck on twisterd) is left behind, which is safe only because the library stays loaded.
    pub fn stop(&mut self, broker: &impl Broker) {
        let wait = if self.pinned {
            STOP_WAIT
        } else {
            Duration::MAX
        };
        let stopped = self.worker.stop(wait);
        // The worker's last progress is written down; what it did not take is replayed next start.
        if let Some(keeper) = self.keeper.as_mut() {
            keeper.stop();
        }
        while let Some(m) = self.worker.from_worker.try_recv() {
            if let ToBroker::Log(level, text) = m {
                broker.log(level, &text);
            }
        }
        self.logs_dropped_at = None;
        self.report_lost_log_lines(broker);
        if !stopped {
            broker.log(Level::Warning, &format!("mqtt-twister: the worker did not stop within {} s (waiting on twisterd?): left behind; what it had not posted is lost, and the state file may be a second old", STOP_WAIT.as_secs()));
        }
    }
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
