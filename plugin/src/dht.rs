//! The DHT thread: carries out the driver's DHT calls (`bus::DhtJob`: get or put a profile) one at a
//! time and sends each answer back (`bus::DhtDone`) on a channel of its own, which the driver waits
//! on with its events. `dhtget` may wait for the network for seconds, so these calls never run on the
//! driver's post and poll path. It decides nothing: what to read or write, and what an answer means,
//! is the relay's (`crate::relay::interest`). Retained values (`crate::retained_dht`) are the other
//! work it carries out, answered on each job's own channel.

use crate::bus::{
    DhtAnswer, DhtCall, DhtDone, DhtJob, DhtPurpose, Level, ToBroker, ToBrokerSender, ToWorker,
};
use crate::config::Config;
use crate::health::{panic_text, Health};
use crate::retained_dht::{self, RetainedJob, RetainedReply};
use crate::twister::{Client, Twister};
use crossbeam_channel::{never, unbounded, Receiver, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

mod receipts;

/// The DHT resource of a user's profile.
pub const PROFILE: &str = "profile";
/// How long a dhtget may wait for the network, in milliseconds.
const DHTGET_TIMEOUT_MS: u64 = 3000;

/// What the DHT thread is given to do.
enum Work {
    Call(DhtJob),
    Retained(RetainedJob),
    /// Our receipts, one write per sender (`crate::relay::receipts::ledger`).
    WriteReceipts(Vec<crate::relay::receipts::ledger::Write>),
    /// The receipts these receivers wrote about our messages.
    ReadReceipts(Vec<String>),
}

pub struct DhtThread {
    jobs: Option<Sender<Work>>,
    /// Answers: at most one per job asked for, so bounded by what the relay has in flight.
    done: Receiver<DhtDone>,
    thread: Option<JoinHandle<()>>,
}

/// What a call is about, for the log.
fn what(purpose: &DhtPurpose) -> String {
    match purpose {
        DhtPurpose::OurProfile => "writing our profile".into(),
        DhtPurpose::InterestOf(user) => format!("reading the interest of {user}"),
    }
}

fn call(rpc: &Client, call: &DhtCall) -> Result<DhtAnswer, String> {
    match call {
        DhtCall::GetProfile { user } => rpc
            .dht_get(user, PROFILE, DHTGET_TIMEOUT_MS)
            .map(DhtAnswer::Profile)
            .map_err(|e| format!("dhtget: {e}")),
        DhtCall::PutProfile { user, value, seq } => rpc
            .dht_put(user, PROFILE, value, *seq)
            .map(|()| DhtAnswer::Stored)
            .map_err(|e| format!("dhtput: {e}")),
    }
}

/// Runs one call; a panic in it is caught, counted and logged through the broker, and becomes an
/// error: the thread goes on with the next job.
fn contained<T>(
    broker: &ToBrokerSender,
    health: &Health,
    what: &str,
    job: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(job)) {
        Ok(r) => r,
        Err(panic) => {
            let n = health.internal_error();
            let _ = broker.try_send(ToBroker::Log(
                Level::Error,
                format!(
                    "mqtt-twister: internal error in the DHT thread while {what}: {} (internal errors so far: {n}); it goes on",
                    panic_text(panic.as_ref())
                ),
            ));
            Err("internal error (logged)".into())
        }
    }
}

struct Context {
    cfg: Arc<Config>,
    rpc: Client,
    done: Sender<DhtDone>,
    /// For the wake-up after a retained job's answer.
    worker: Sender<ToWorker>,
    broker: ToBrokerSender,
    health: Arc<Health>,
}

fn serve(c: Context, jobs: Receiver<Work>) {
    loop {
        // Idle until the next job: no connection left open to twisterd meanwhile.
        c.rpc.release_idle();
        let job = match jobs.recv() {
            Ok(Work::Call(job)) => job,
            Ok(Work::Retained(job)) => {
                if !serve_retained(&c, job) {
                    return;
                }
                continue;
            }
            Ok(Work::WriteReceipts(writes)) => {
                if !serve_receipts(&c, writes, Vec::new()) {
                    return;
                }
                continue;
            }
            Ok(Work::ReadReceipts(reads)) => {
                if !serve_receipts(&c, Vec::new(), reads) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        let result = contained(&c.broker, &c.health, &what(&job.purpose), || {
            call(&c.rpc, &job.call)
        });
        let done = DhtDone {
            purpose: job.purpose,
            result,
        };
        if c.done.send(done).is_err() {
            return;
        }
    }
}

/// Carries out one retained job, each answer followed by a wake-up of the worker; false when the
/// worker is gone.
fn serve_retained(c: &Context, job: RetainedJob) -> bool {
    let reply = |r: RetainedReply| {
        let _ = job.reply.send(r);
        !matches!(
            c.worker.try_send(ToWorker::Wake),
            Err(crossbeam_channel::TrySendError::Disconnected(_))
        )
    };
    if !job.puts.is_empty() {
        let failed = contained(&c.broker, &c.health, "writing retained values", || {
            Ok(retained_dht::put_all(&c.rpc, &c.cfg.user, job.puts))
        });
        let answer = match failed {
            Ok(None) => None,
            Ok(Some((puts, why))) => Some(RetainedReply::Failed(puts, why)),
            Err(e) => Some(RetainedReply::Failed(Vec::new(), e)),
        };
        if let Some(answer) = answer {
            if !reply(answer) {
                return false;
            }
        }
    }
    for plan in job.syncs {
        let what = format!("reading the retained values of {}", plan.user);
        let synced = contained(&c.broker, &c.health, &what, || {
            Ok(retained_dht::sync(&c.rpc, &plan))
        })
        .unwrap_or_else(|e| crate::relay::retained::reader::Synced {
            user: plan.user.clone(),
            problems: vec![e],
            ..Default::default()
        });
        if !reply(RetainedReply::Synced(synced)) {
            return false;
        }
    }
    true
}

/// Our receipts written, receivers' receipts read; `false` when the worker is gone.
fn serve_receipts(
    c: &Context,
    writes: Vec<crate::relay::receipts::ledger::Write>,
    reads: Vec<String>,
) -> bool {
    for w in writes {
        let what = format!("writing our receipts for {}", w.sender);
        let result = contained(&c.broker, &c.health, &what, || {
            receipts::write(&c.rpc, &c.cfg.user, &w)
        });
        let sent = c.worker.try_send(ToWorker::ReceiptsWritten {
            sender: w.sender,
            result,
        });
        if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = sent {
            return false;
        }
    }
    for receiver in reads {
        let what = format!("reading the receipts of {receiver}");
        let acks = contained(&c.broker, &c.health, &what, || {
            receipts::read(&c.rpc, &c.cfg.user, &receiver)
        });
        if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
            c.worker.try_send(ToWorker::Receipts { receiver, acks })
        {
            return false;
        }
    }
    true
}

impl DhtThread {
    pub fn spawn(
        cfg: Arc<Config>,
        rpc: Box<dyn Twister>,
        worker: Sender<ToWorker>,
        broker: ToBrokerSender,
        health: Arc<Health>,
    ) -> Self {
        let (tx, rx) = unbounded();
        let (done_tx, done_rx) = unbounded();
        let context = Context {
            cfg,
            rpc: Client::new(rpc),
            done: done_tx,
            worker,
            broker,
            health,
        };
        let thread = std::thread::Builder::new()
            .name("mqtt-twister-dht".into())
            .spawn(move || serve(context, rx));
        match thread {
            Ok(t) => DhtThread {
                jobs: Some(tx),
                done: done_rx,
                thread: Some(t),
            },
            Err(_) => DhtThread {
                jobs: None,
                done: never(),
                thread: None,
            },
        }
    }

    pub fn send(&self, job: DhtJob) {
        self.give(Work::Call(job));
    }

    pub fn send_retained(&self, job: RetainedJob) {
        self.give(Work::Retained(job));
    }

    pub fn write_receipts(&self, writes: Vec<crate::relay::receipts::ledger::Write>) {
        self.give(Work::WriteReceipts(writes));
    }

    pub fn read_receipts(&self, receivers: Vec<String>) {
        self.give(Work::ReadReceipts(receivers));
    }

    fn give(&self, work: Work) {
        if let Some(j) = &self.jobs {
            let _ = j.send(work);
        }
    }

    /// The answers, to wait on with the driver's other events.
    pub fn answers(&self) -> &Receiver<DhtDone> {
        &self.done
    }

    /// The answers' channel closed (the thread ended): wait on it no more.
    pub fn lost(&mut self) {
        self.done = never();
    }

    /// Moves the thread out (to a restarted driver), leaving nothing behind.
    pub fn take(&mut self) -> DhtThread {
        DhtThread {
            jobs: self.jobs.take(),
            done: std::mem::replace(&mut self.done, never()),
            thread: self.thread.take(),
        }
    }

    pub fn stop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DhtThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twister::TwisterError;
    use serde_json::{json, Value};
    use std::time::Duration;

    /// A twisterd whose every call panics inside the plugin's code.
    struct Panicking;

    impl Twister for Panicking {
        fn call(&self, method: &str, _params: Value) -> Result<Value, TwisterError> {
            panic!("test: {method} panics");
        }
    }

    /// A twisterd that holds one profile and refuses puts.
    struct OneProfile;

    impl Twister for OneProfile {
        fn call(&self, method: &str, params: Value) -> Result<Value, TwisterError> {
            match method {
                "dhtget" => Ok(json!([{"p": {"seq": 3, "v": {"mqtt_topics": ["a/#"]}}}])),
                _ => Err(TwisterError::refused(-1, format!("no {}", params[1]))),
            }
        }
    }

    fn spawn(rpc: Box<dyn Twister>, broker: ToBrokerSender, health: Arc<Health>) -> DhtThread {
        let opts: Vec<(String, String)> =
            [("rpc_user", "u"), ("rpc_password", "p"), ("user", "me")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let cfg = Arc::new(crate::config::parse(&opts).unwrap());
        let (to_worker, _) = crossbeam_channel::unbounded();
        DhtThread::spawn(cfg, rpc, to_worker, broker, health)
    }

    fn get(purpose: DhtPurpose) -> DhtJob {
        DhtJob {
            purpose,
            call: DhtCall::GetProfile { user: "me".into() },
        }
    }

    #[test]
    fn a_panicking_job_is_logged_counted_and_the_thread_goes_on() {
        let (to_broker, logs) = crate::bus::to_broker(16, 16);
        let health = Arc::new(Health::default());
        let mut dht = spawn(Box::new(Panicking), to_broker, health.clone());
        let wait = Duration::from_secs(10);
        dht.send(get(DhtPurpose::OurProfile));
        match dht.answers().recv_timeout(wait) {
            Ok(DhtDone {
                purpose: DhtPurpose::OurProfile,
                result: Err(e),
            }) => assert!(e.contains("internal error"), "{e}"),
            other => panic!("{other:?}"),
        }
        dht.send(get(DhtPurpose::InterestOf("bob".into())));
        match dht.answers().recv_timeout(wait) {
            Ok(DhtDone {
                purpose: DhtPurpose::InterestOf(u),
                result: Err(e),
            }) => assert_eq!((u.as_str(), e.as_str()), ("bob", "internal error (logged)")),
            other => panic!("{other:?}"),
        }
        let lines: Vec<String> = (0..2)
            .map(|_| match logs.recv_timeout(wait) {
                Some(ToBroker::Log(_, line)) => line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(lines[0].contains("internal error in the DHT thread while writing our profile: test: dhtget panics (internal errors so far: 1)"), "{lines:?}");
        assert!(
            lines[1].contains("while reading the interest of bob"),
            "{lines:?}"
        );
        assert_eq!(health.internal_errors(), 2);
        dht.stop();
    }

    #[test]
    fn answers_are_typed_and_say_which_call_failed() {
        let (to_broker, _logs) = crate::bus::to_broker(16, 16);
        let mut dht = spawn(Box::new(OneProfile), to_broker, Arc::default());
        let wait = Duration::from_secs(10);
        dht.send(get(DhtPurpose::OurProfile));
        let got = dht.answers().recv_timeout(wait).unwrap();
        match got.result {
            Ok(DhtAnswer::Profile(e)) => {
                assert_eq!((e.seq, e.value), (3, json!({"mqtt_topics": ["a/#"]})))
            }
            other => panic!("{other:?}"),
        }
        dht.send(DhtJob {
            purpose: DhtPurpose::OurProfile,
            call: DhtCall::PutProfile {
                user: "me".into(),
                value: json!({}),
                seq: 4,
            },
        });
        let put = dht.answers().recv_timeout(wait).unwrap();
        assert!(
            matches!(&put.result, Err(e) if e.starts_with("dhtput: ") && e.contains("no \"profile\"")),
            "{put:?}"
        );
        dht.stop();
    }
}
