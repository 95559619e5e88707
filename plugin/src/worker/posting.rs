//! The worker's posting: packing queued items into posts and DMs, numbering them, and what to do when
//! twisterd refuses, does not answer in time, or is out of post budget (decisions in `crate::outbox`).

use super::*;
use crate::outbox::{InFlight, Verified};
use crate::twister::Outcome;

impl Worker {
    pub(super) fn flush_due_at(&self) -> Option<Instant> {
        if self.budget.waiting() {
            // Woken by the chain height (`watch_height`), not by a timer.
            return None;
        }
        let oldest = std::iter::once(&self.public)
            .chain(self.private.values())
            .filter_map(|q| q.since)
            .min()?;
        Some((oldest + self.cfg.batch_delay).max(self.post_retry_at))
    }

    fn header(&self) -> PostHeader<'_> {
        PostHeader {
            user: &self.cfg.user,
            k: self.saved.next_k,
            lastk: Some(self.saved.next_k),
            height: WORST_HEIGHT,
            time: WORST_TIME,
            reply: None,
        }
    }

    /// How many queued items fit in one post of `budget` bytes (0: the first alone is too big).
    fn fit(&self, items: &VecDeque<String>, budget: usize) -> usize {
        if self.cfg.wire_format == WireFormat::Poc {
            return usize::from(items.front().is_some_and(|i| i.len() <= budget));
        }
        let mut total = 0;
        let mut n = 0;
        for item in items {
            if wire::envelope_size(self.saved.seq, n + 1, total + item.len()) > budget {
                break;
            }
            total += item.len();
            n += 1;
        }
        n
    }

    fn text(&self, items: &VecDeque<String>, n: usize) -> String {
        match self.cfg.wire_format {
            WireFormat::Poc => items[0].clone(),
            // v2 is packed by `wire_v2::pack`, which makes and measures its text itself.
            WireFormat::V1 | WireFormat::V2 => {
                wire::envelope(self.saved.seq, items.iter().take(n).map(String::as_str))
            }
        }
    }

    /// Sends up to `max_posts` posts/DMs. Stops at the first failure and schedules a retry. A post
    /// whose outcome is unknown is settled before anything else is sent.
    pub(super) fn flush(&mut self, max_posts: usize) {
        for _ in 0..max_posts {
            if self.budget.waiting() {
                return;
            }
            let target: Option<String> = if let Some(p) = &self.pending {
                p.to.clone()
            } else if !self.public.items.is_empty() {
                None
            } else if let Some((u, _)) = self.private.iter().find(|(_, q)| !q.items.is_empty()) {
                Some(u.clone())
            } else {
                return;
            };
            if !self.send_one(target) {
                return;
            }
        }
    }

    /// The next post to `to`: its number, text and item count; `None` when the queue's head was
    /// handled otherwise (cut into fragments or dropped).
    fn next_post(&mut self, to: &Option<String>) -> Option<(i64, String, usize)> {
        let budget = match to {
            None => twister_rules::max_post_ascii(&self.header()),
            Some(u) => twister_rules::max_dm_bytes(&self.header(), u),
        };
        let empty = VecDeque::new();
        let items = match to {
            None => &self.public.items,
            Some(u) => self.private.get(u).map(|q| &q.items).unwrap_or(&empty),
        };
        let packed = match self.cfg.wire_format {
            WireFormat::V2 => crate::wire_v2::pack(items, self.saved.seq, budget),
            _ => Some(self.fit(items, budget))
                .filter(|n| *n > 0)
                .map(|n| (n, self.text(items, n))),
        };
        if let Some((n, text)) = packed {
            return Some((self.saved.next_k, text, n));
        }
        if items.is_empty() {
            return None;
        }
        // Too big for one post: cut it into fragments that fit (or drop it, beyond the limit).
        let item = items.front().cloned().unwrap_or_default();
        let room = budget.saturating_sub(wire::envelope_size(self.saved.seq, 1, 0));
        self.fragment_ids += 1;
        let id = (self.saved.seq << 20) | (self.fragment_ids & 0xF_FFFF);
        let whole = wire::item_message(&item)
            .filter(|it| it.fragment.is_none())
            .map(|it| it.message);
        let fragments = match &whole {
            Some(m)
                if self.cfg.wire_format != WireFormat::Poc
                    && m.payload.len() <= self.cfg.max_message_bytes =>
            {
                wire::encode_fragments(m, id, room)
            }
            _ => None,
        };
        self.pop(to, 1);
        match fragments {
            Some(parts) => {
                self.counters.fragmented += 1;
                let q = match to {
                    None => &mut self.public,
                    Some(u) => self.private.entry(u.clone()).or_default(),
                };
                for part in parts.into_iter().rev() {
                    q.items.push_front(part);
                    self.queued += 1;
                }
                q.since.get_or_insert_with(Instant::now);
            }
            None => {
                let size = whole.map(|m| m.payload.len()).unwrap_or(item.len());
                self.drop_message(Reason::TooBig, format!("a message of {size} bytes: more than plugin_opt_max_message_bytes ({}), or the poc wire format, which cannot cut it into posts (one post carries at most {budget})", self.cfg.max_message_bytes));
            }
        }
        None
    }

    /// Sends one post or DM to `to`; false when posting must wait.
    fn send_one(&mut self, to: Option<String>) -> bool {
        let resend = self.pending.take();
        let (k, text, n) = match &resend {
            Some(p) => match self.verify_pending(p) {
                Verified::Stored => {
                    self.log(
                        Level::Info,
                        format!(
                            "post {} (outcome unknown) was stored by twisterd: its {} messages are done",
                            p.k, p.items
                        ),
                    );
                    self.posted(p);
                    return true;
                }
                Verified::Unknown => {
                    self.pending = resend;
                    self.backoff_posts();
                    return false;
                }
                // Only the same text may go under its number: a late first copy then changes nothing.
                Verified::NotYet => {
                    self.log(
                        Level::Info,
                        format!(
                            "post {} (outcome unknown) is not stored yet: sending it again, the same text under the same number",
                            p.k
                        ),
                    );
                    (p.k, p.text.clone(), p.items)
                }
            },
            None => match self.next_post(&to) {
                Some(next) => next,
                None => return true,
            },
        };
        let user = self.cfg.user.clone();
        let result = match &to {
            None => self.call("newpostmsg", |c| c.new_post(&user, k, &text)),
            Some(u) => self.call("newdirectmsg", |c| c.new_dm(&user, k, u, &text)),
        };
        let flight = InFlight {
            k,
            to,
            text,
            items: n,
        };
        match Outcome::of(result) {
            Outcome::Stored => {
                self.posted(&flight);
                true
            }
            Outcome::Unknown(e) => {
                self.counters.unknown_outcomes += 1;
                if resend.is_none() {
                    self.log(Level::Warning, format!("no answer to post {k} ({}): it may have been stored; finding out before number {k} is used again (unknown outcomes so far: {})", e.kind(), self.counters.unknown_outcomes));
                }
                self.pending = Some(flight);
                self.backoff_posts();
                false
            }
            Outcome::Refused(e) => {
                let refusal = e.refusal().unwrap_or(Refusal::Other);
                if refusal == Refusal::TooLarge && resend.is_none() {
                    self.log(Level::Error, format!("twisterd found a post of {} bytes too large: sending one message per post", flight.text.len()));
                    if n == 1 {
                        self.pop(&flight.to, 1);
                        self.drop_message(
                            Reason::TooBig,
                            "twisterd refused a post of one message as too large".to_string(),
                        );
                        return true;
                    }
                    self.backoff_posts();
                    return false;
                }
                // A post of unknown outcome stays as it is: its first copy may still land.
                if resend.is_some() {
                    self.pending = Some(flight);
                }
                if refusal.waits_for_a_block() {
                    self.out_of_budget(k, refusal, &e);
                } else {
                    if let TwisterError::Refused { .. } = e {
                        self.log(Level::Error, format!("posting failed: {e}"));
                    }
                    self.backoff_posts();
                }
                false
            }
        }
    }

    /// Our own last post number, from twisterd: settles a post of unknown outcome.
    fn verify_pending(&mut self, p: &InFlight) -> Verified {
        let user = self.cfg.user.clone();
        match self.call("getlasthave", |c| {
            c.get_last_have(&user, Some(std::slice::from_ref(&user)))
        }) {
            Ok(v) => crate::outbox::verify(&v, &user, p.k),
            Err(_) => Verified::Unknown,
        }
    }

    /// `p` is stored: its items leave the queue and its number is used.
    pub(super) fn posted(&mut self, p: &InFlight) {
        self.saved.next_k = self.saved.next_k.max(p.k + 1);
        self.saved.seq += 1;
        // Saved within STATE_SAVE_EVERY; a crash in between is covered at start-up, where the
        // next k is also taken from twisterd's own last piece (getlasthave).
        self.state_dirty = true;
        match p.to {
            None => self.counters.posts += 1,
            Some(_) => self.counters.dms += 1,
        }
        self.pop(&p.to, p.items);
        self.post_backoff = Duration::from_millis(250);
    }

    /// twisterd refused post `k` until a later block: wait for the chain to reach the height that can
    /// allow it, watching the height every poll interval.
    fn out_of_budget(&mut self, k: i64, refusal: Refusal, e: &TwisterError) {
        let height = self.chain_height();
        let Some(height) = height else {
            // The height cannot be read now: retry with backoff as for any failure.
            return self.backoff_posts();
        };
        let wait = match refusal {
            Refusal::BadSignature => self.budget.too_recent(height),
            _ => self.budget.refused(k, height),
        };
        self.counters.budget_waits += 1;
        let level = if self.counters.budget_waits == 1 {
            Level::Notice
        } else {
            Level::Info
        };
        self.log(level, format!("out of post budget: twisterd refused post {k} at height {height} ({e}); queueing and watching the chain height, posting at height {wait}"));
    }

    fn chain_height(&mut self) -> Option<i64> {
        self.call("getinfo", |c| c.get_height()).ok().flatten()
    }

    /// While out of budget: one `getinfo` per poll interval; posts as soon as a block allows.
    pub(super) fn watch_height(&mut self) {
        if !self.budget.waiting() {
            return;
        }
        let Some(height) = self.chain_height() else {
            return;
        };
        if self.budget.height_reached(height) {
            self.log(
                Level::Info,
                format!("chain at height {height}: posting again"),
            );
            self.post_retry_at = Instant::now();
        }
    }

    pub(super) fn backoff_posts(&mut self) {
        self.post_retry_at = Instant::now() + self.post_backoff;
        self.post_backoff = (self.post_backoff * 2).min(MAX_BACKOFF);
    }

    pub(super) fn pop(&mut self, to: &Option<String>, n: usize) {
        let q = match to {
            None => &mut self.public,
            Some(u) => self.private.entry(u.clone()).or_default(),
        };
        for _ in 0..n {
            q.items.pop_front();
        }
        q.since = if q.items.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        self.queued = self.queued.saturating_sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A twisterd whose answers the test scripts: every call is recorded; a post is stored unless
    /// told otherwise, and its answer may be lost (as when it comes after the RPC timeout).
    #[derive(Default)]
    struct Script {
        calls: Vec<(String, Value)>,
        stored: BTreeMap<i64, String>,
        lose_answers: usize,
        height: i64,
        budget: i64,
    }

    struct Fake(Arc<Mutex<Script>>);

    impl Twister for Fake {
        fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push((method.to_string(), params.clone()));
            match method {
                "newpostmsg" => {
                    let k = params[1].as_i64().unwrap();
                    if k > s.budget {
                        return Err(RpcError::Rpc {
                            code: -32602,
                            message: "too much posts from user 'alice' rejecting post".into(),
                        });
                    }
                    // A used k keeps its first text, as twisterd does.
                    let text = params[2].as_str().unwrap().to_string();
                    s.stored.entry(k).or_insert(text);
                    if s.lose_answers > 0 {
                        s.lose_answers -= 1;
                        return Err(RpcError::Transport("timed out reading response".into()));
                    }
                    Ok(json!({"userpost": {"k": k}}))
                }
                "getlasthave" => {
                    Ok(json!({"alice": s.stored.keys().next_back().copied().unwrap_or(-1)}))
                }
                "getinfo" => Ok(json!({"blocks": s.height})),
                _ => Ok(Value::Null),
            }
        }
    }

    fn worker(script: &Arc<Mutex<Script>>) -> (Worker, Receiver<ToBroker>) {
        let opts: Vec<(String, String)> = [
            ("rpc_user", "u"),
            ("rpc_password", "p"),
            ("user", "alice"),
            ("publish", "t/#"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg = Arc::new(crate::config::parse(&opts).unwrap());
        let (_to_worker, inbox) = crossbeam_channel::bounded(16);
        let (to_broker, from_worker) = crossbeam_channel::bounded(1024);
        let (dht_tx, _) = crossbeam_channel::bounded(16);
        let health = Arc::new(Health::default());
        let dht = DhtThread::spawn(
            cfg.clone(),
            Box::new(Fake(Arc::default())),
            dht_tx,
            to_broker.clone(),
            health.clone(),
        );
        let start = Start {
            saved: None,
            restored: None,
            interest: None,
            counters: Counters::default(),
            drops: Drops::default(),
            dht,
            doorbell: Doorbell::new(None, String::new()),
            health,
        };
        let mut w = Worker::new(cfg, Box::new(Fake(script.clone())), inbox, to_broker, start);
        w.ready = true;
        (w, from_worker)
    }

    fn publish(w: &mut Worker, from: usize, n: usize) {
        for i in from..from + n {
            let topic = format!("t/{i}");
            let route = w.cfg.router.route(&topic);
            w.outbound(Outgoing {
                message: Message {
                    topic,
                    payload: b"x".to_vec(),
                    qos: 1,
                    retain: false,
                },
                route,
            });
        }
    }

    fn posts_sent(script: &Arc<Mutex<Script>>) -> Vec<(i64, String)> {
        let s = script.lock().unwrap();
        s.calls
            .iter()
            .filter(|(m, _)| m == "newpostmsg")
            .map(|(_, p)| (p[1].as_i64().unwrap(), p[2].as_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn a_post_of_unknown_outcome_is_verified_and_its_number_never_gets_other_text() {
        let script = Arc::new(Mutex::new(Script {
            lose_answers: 1,
            budget: 100,
            ..Default::default()
        }));
        let (mut w, _logs) = worker(&script);
        publish(&mut w, 0, 3);
        w.flush(POSTS_PER_FLUSH);
        assert_eq!(posts_sent(&script).len(), 1, "stops at the unknown outcome");
        assert!(w.pending.is_some());
        // More messages arrive; the next flush first asks twisterd, finds post 0 stored, and
        // carries on with post 1 for the new ones only.
        publish(&mut w, 3, 2);
        w.flush(POSTS_PER_FLUSH);
        let sent = posts_sent(&script);
        let methods: Vec<String> = script
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(m, _)| m.clone())
            .collect();
        assert_eq!(methods, ["newpostmsg", "getlasthave", "newpostmsg"]);
        assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            (w.queued, w.saved.next_k, w.pending.is_none()),
            (0, 2, true)
        );
        let s = script.lock().unwrap();
        assert_eq!(s.stored.len(), 2, "every message stored, under two numbers");
        let topics = |k: i64| -> Vec<String> {
            crate::wire::decode(&s.stored[&k])
                .unwrap()
                .into_iter()
                .map(|m| m.topic)
                .collect()
        };
        assert!(
            topics(0).contains(&"t/2".to_string())
                && !topics(0).contains(&"t/3".to_string())
                && topics(1).contains(&"t/4".to_string()),
            "{:?}",
            s.stored
        );
    }

    #[test]
    fn a_post_not_stored_yet_goes_again_with_the_same_text_and_number() {
        let script = Arc::new(Mutex::new(Script {
            budget: 100,
            ..Default::default()
        }));
        let (mut w, _logs) = worker(&script);
        publish(&mut w, 0, 2);
        w.pending = w.next_post(&None).map(|(k, text, items)| InFlight {
            k,
            to: None,
            text,
            items,
        });
        let first = w.pending.clone().unwrap();
        // twisterd never got it (getlasthave says -1): the same text goes under the same number,
        // although more messages wait now.
        publish(&mut w, 2, 5);
        w.flush(1);
        assert_eq!(posts_sent(&script), vec![(first.k, first.text.clone())]);
        assert_eq!((w.queued, w.saved.next_k), (5, first.k + 1));
    }

    #[test]
    fn out_of_budget_nothing_is_tried_until_the_height_allows_it() {
        let script = Arc::new(Mutex::new(Script {
            budget: 0,
            height: 100,
            ..Default::default()
        }));
        let (mut w, _logs) = worker(&script);
        w.saved.next_k = 21;
        publish(&mut w, 0, 1);
        w.flush(POSTS_PER_FLUSH);
        assert_eq!(w.budget.wait_for_height, Some(101));
        assert_eq!(w.flush_due_at(), None, "no timer: the height wakes it");
        for _ in 0..3 {
            w.watch_height();
            w.flush(POSTS_PER_FLUSH);
        }
        assert_eq!(posts_sent(&script).len(), 1, "no refused post repeated");
        {
            let mut s = script.lock().unwrap();
            s.height = 101;
            s.budget = 22;
        }
        w.watch_height();
        assert!(w.flush_due_at().is_some());
        w.flush(POSTS_PER_FLUSH);
        assert_eq!(posts_sent(&script).len(), 2);
        assert_eq!(w.queued, 0);
    }
}
