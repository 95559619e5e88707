//! Setting a worker up: from the state file at the first start, from what the worker before it held
//! after a restart (`salvage`, see `supervise`).

use super::*;

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
    /// After a restart: the messages kept for receipts and the receipts not written yet.
    pub receipts: Option<Box<receipts::ReceiptsDriver>>,
    /// The injection log's reader (`crate::injected`), with a state file.
    pub injections: Option<crate::injected::Reader>,
    /// A restart: what the worker before it had settled (`saved.seen` then is its inbox's set).
    pub settled: Option<crate::dedup::Dedup>,
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
            receipts,
            injections,
            settled,
        } = start;
        let settled =
            settled.unwrap_or_else(|| saved.as_ref().map(|s| s.seen.clone()).unwrap_or_default());
        let state_found = saved.is_some();
        let incoming = Inbox::new(
            &cfg.user,
            &cfg.follow,
            saved
                .as_ref()
                .map(|s| s.cursors.clone())
                .unwrap_or_default(),
            counters.inbox,
        )
        .with_seen(saved.as_ref().map(|s| s.seen.clone()).unwrap_or_default());
        let session = Session::new(&cfg.user, &cfg.follow, cfg.create_user);
        let outbox = Outbox::new(
            Settings {
                user: cfg.user.clone(),
                wire_format: cfg.wire_format,
                batch_delay: cfg.batch_delay,
                max_message_bytes: cfg.max_message_bytes,
                release_hold: cfg.release_hold,
                spool_records: cfg.spool.is_some(),
                reserve: cfg.budget_reserve,
                conflation: crate::relay::outbox::Conflation::from_config(&cfg),
            },
            saved.as_ref().map_or(0, |s| s.next_k),
            saved.as_ref().map_or(0, |s| s.seq),
            counters.outbox,
        )
        .with_learnt(saved.as_ref().map_or_else(Default::default, |s| Learnt {
            registered_at_least: s.registered_at_least,
            registered_at_most: s.registered_at_most,
            refused_once: s.budget_refused_once,
        }));
        let mut outbox = outbox;
        let (used_numbers, used_problem) =
            match crate::numbers::UsedNumbers::open(cfg.state_file.as_deref()) {
                Ok((numbers, used)) => {
                    // Never again a number used before, even one twisterd forgot since.
                    if let Some(k) = used {
                        outbox.k_at_least(k + 1);
                    }
                    (numbers, None)
                }
                Err(e) => (crate::numbers::UsedNumbers::none(), Some(e)),
            };
        let restarted = interest.is_some();
        let local = Subscriptions::new(
            &cfg.user,
            interest.unwrap_or_else(|| Interest::new(&cfg.subscribe)),
            cfg.profile_debounce,
            // The profile write the last worker waited for may never be answered to this one.
            restarted,
            now,
        );
        let retained = retained::Retained::new(
            &cfg,
            saved
                .as_ref()
                .map_or(&serde_json::Value::Null, |s| &s.retained),
            now,
        );
        let receipts = match receipts {
            Some(kept) => *kept,
            None => receipts::ReceiptsDriver::new(&cfg),
        };
        let mut w = Worker {
            local,
            private: PrivateForwards::new(&cfg.private, cfg.interest_refresh),
            cfg,
            rpc: Client::new(rpc),
            inbox,
            to_broker,
            dht,
            saved: saved.unwrap_or_default(),
            state_dirty: false,
            ready: false,
            session,
            timers: {
                let mut t = Timers::default();
                for timer in [Timer::Startup, Timer::Refollow, Timer::Poll] {
                    t.set(timer, now);
                }
                t
            },
            outbox,
            drops,
            trouble: None,
            said_once: Vec::new(),
            counters,
            doorbell,
            health,
            stopping: false,
            last_save: now,
            incoming,
            ring_pending: false,
            run_ids: crate::ids::RunIds::starting_now(),
            retained,
            receipts,
            used_numbers,
            settled,
            injections,
            injections_pending: false,
        };
        // What the log holds beyond the saved state (a restart after a panic): seen from now on.
        w.take_injections();
        if let Some(e) = used_problem {
            w.log(Level::Error, format!("cannot keep the highest post number used beside plugin_opt_state_file: {e}; a restart after twisterd forgot a post may use its number again"));
        }
        if w.cfg.state_file.is_some() && !state_found {
            w.log(
                Level::Info,
                "no saved state yet: reading followed users from their newest post on",
            );
        }
        w.restore_unsent();
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
        saved.seen = self.incoming.seen().clone();
        saved.unsent = self.unsent();
        saved.retained = self.retained_json();
        self.save_learnt(&mut saved);
        Start {
            saved: Some(saved),
            restored: None,
            interest: Some(self.local.take_interest()),
            counters: self.counters(),
            drops: std::mem::take(&mut self.drops),
            dht: self.dht.take(),
            doorbell: std::mem::replace(&mut self.doorbell, Doorbell::new(None, String::new())),
            health: self.health.clone(),
            receipts: Some(Box::new(self.take_receipts())),
            injections: self.injections.take(),
            settled: Some(self.settled.clone()),
        }
    }
}
