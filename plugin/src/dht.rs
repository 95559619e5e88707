//! The DHT thread: our profile's `mqtt_topics` (read, then written with seq+1, every other profile key
//! kept) and the followed users' published interest. `dhtget` may wait for the network for seconds, so
//! it never runs on the worker's post and poll path.

use crate::bus::{Level, ToBroker, ToBrokerSender, ToWorker};
use crate::config::Config;
use crate::health::{panic_text, Health};
use crate::retained_dht::{self, RetainedJob, RetainedReply};
use crate::twister::{Client, Twister};
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::{json, Map, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

mod receipts;

pub enum DhtJob {
    WriteProfile(Vec<String>),
    ReadInterest(Vec<String>),
    /// Retained values: puts to make in order, followed users to sync (`crate::retained_dht`).
    Retained(RetainedJob),
    /// Our receipts, one write per sender (`crate::relay::receipts::ledger`).
    WriteReceipts(Vec<crate::relay::receipts::ledger::Write>),
    /// The receipts these receivers wrote about our messages.
    ReadReceipts(Vec<String>),
}

pub const PROFILE: &str = "profile";
pub const TOPICS_KEY: &str = "mqtt_topics";
/// How long a dhtget may wait for the network, in milliseconds.
const DHTGET_TIMEOUT_MS: u64 = 3000;

pub struct DhtThread {
    jobs: Option<Sender<DhtJob>>,
    thread: Option<JoinHandle<()>>,
}

/// The profile's value and sequence number as the DHT holds them (seq 0: no profile yet).
pub fn read_profile(rpc: &Client, user: &str) -> Result<(Map<String, Value>, i64), String> {
    let got = rpc
        .dht_get(user, PROFILE, DHTGET_TIMEOUT_MS)
        .map_err(|e| format!("dhtget: {e}"))?;
    let value = got.value.as_object().cloned().unwrap_or_default();
    Ok((value, got.seq))
}

/// The topic filters in a profile value; `None` when it has none.
pub fn topics_of(profile: &Map<String, Value>) -> Option<Vec<String>> {
    let list = profile.get(TOPICS_KEY)?.as_array()?;
    Some(
        list.iter()
            .filter_map(Value::as_str)
            .filter(|f| crate::topic::is_valid_filter(f))
            .map(String::from)
            .collect(),
    )
}

/// Writes `filters` into the profile, keeping every other key, then reads it back to be sure.
pub fn write_profile(rpc: &Client, user: &str, filters: &[String]) -> Result<(), String> {
    let (mut value, seq) = read_profile(rpc, user)?;
    if topics_of(&value).as_deref() == Some(filters) {
        return Ok(());
    }
    value.insert(TOPICS_KEY.into(), json!(filters));
    let value = Value::Object(value);
    let size = twister_rules::dht_value_size(&value, true);
    if size > twister_rules::MAX_DHT_SINGLE {
        return Err(format!(
            "the profile would be {size} bytes with {} filters; Twister keeps at most {}",
            filters.len(),
            twister_rules::MAX_DHT_SINGLE
        ));
    }
    rpc.dht_put(user, PROFILE, &value, seq + 1)
        .map_err(|e| format!("dhtput: {e}"))?;
    let (back, _) = read_profile(rpc, user)?;
    if topics_of(&back).as_deref() != Some(filters) {
        return Err(
            "the DHT did not keep the new profile (another writer with a higher seq?)".into(),
        );
    }
    Ok(())
}

/// Runs one job; a panic in it is caught, counted and logged through the broker, and becomes an error:
/// the thread goes on with the next job.
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
    worker: Sender<ToWorker>,
    broker: ToBrokerSender,
    health: Arc<Health>,
}

fn serve(c: Context, jobs: Receiver<DhtJob>) {
    loop {
        // Idle until the next job: no connection left open to twisterd meanwhile.
        c.rpc.release_idle();
        let Ok(first) = jobs.recv() else { return };
        // Coalesce: only the newest profile matters, and one read of every user asked about.
        let mut write: Option<Vec<String>> = None;
        let mut read: Vec<String> = Vec::new();
        let mut retained: Vec<RetainedJob> = Vec::new();
        let mut receipt_writes = Vec::new();
        let mut receipt_reads: Vec<String> = Vec::new();
        for job in std::iter::once(first).chain(jobs.try_iter()) {
            match job {
                DhtJob::WriteProfile(f) => write = Some(f),
                DhtJob::ReadInterest(users) => read.extend(users),
                DhtJob::Retained(job) => retained.push(job),
                DhtJob::WriteReceipts(w) => receipt_writes.extend(w),
                DhtJob::ReadReceipts(users) => receipt_reads.extend(users),
            }
        }
        read.sort();
        read.dedup();
        receipt_reads.sort();
        receipt_reads.dedup();
        if !serve_receipts(&c, receipt_writes, receipt_reads) {
            return;
        }
        if let Some(filters) = write {
            let r = contained(&c.broker, &c.health, "writing our profile", || {
                write_profile(&c.rpc, &c.cfg.user, &filters)
            });
            if r.is_ok() {
                let _ = c.broker.try_send(ToBroker::Log(
                    Level::Info,
                    format!("mqtt-twister: profile interest is now {filters:?}"),
                ));
            }
            if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                c.worker.try_send(ToWorker::ProfileWritten(r))
            {
                return;
            }
        }
        for job in retained {
            if !serve_retained(&c, job) {
                return;
            }
        }
        for user in read {
            let what = format!("reading the interest of {user}");
            match contained(&c.broker, &c.health, &what, || read_profile(&c.rpc, &user)) {
                Ok((profile, _)) => {
                    if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                        c.worker.try_send(ToWorker::RemoteInterest {
                            user,
                            filters: topics_of(&profile),
                        })
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = c.broker.try_send(ToBroker::Log(
                        Level::Warning,
                        format!("mqtt-twister: reading the interest of {user}: {e}"),
                    ));
                }
            }
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
        let context = Context {
            cfg,
            rpc: Client::new(rpc),
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
                thread: Some(t),
            },
            Err(_) => DhtThread {
                jobs: None,
                thread: None,
            },
        }
    }

    pub fn send(&self, job: DhtJob) {
        if let Some(j) = &self.jobs {
            let _ = j.send(job);
        }
    }

    /// Moves the thread out (to a restarted worker), leaving nothing behind.
    pub fn take(&mut self) -> DhtThread {
        DhtThread {
            jobs: self.jobs.take(),
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
    use std::time::Duration;

    /// A twisterd whose every dhtget panics inside the plugin's code.
    struct Panicking;

    impl Twister for Panicking {
        fn call(&self, method: &str, _params: Value) -> Result<Value, TwisterError> {
            panic!("test: {method} panics");
        }
    }

    #[test]
    fn a_panicking_job_is_logged_counted_and_the_thread_goes_on() {
        let opts: Vec<(String, String)> =
            [("rpc_user", "u"), ("rpc_password", "p"), ("user", "me")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let cfg = Arc::new(crate::config::parse(&opts).unwrap());
        let (to_worker, from_dht) = crossbeam_channel::unbounded();
        let (to_broker, logs) = crate::bus::to_broker(16, 16);
        let health = Arc::new(Health::default());
        let mut dht = DhtThread::spawn(
            cfg,
            Box::new(Panicking),
            to_worker,
            to_broker,
            health.clone(),
        );
        let wait = Duration::from_secs(10);
        dht.send(DhtJob::WriteProfile(vec!["a/#".into()]));
        match from_dht.recv_timeout(wait) {
            Ok(ToWorker::ProfileWritten(Err(e))) => assert!(e.contains("internal error"), "{e}"),
            other => panic!("{other:?}"),
        }
        dht.send(DhtJob::ReadInterest(vec!["bob".into()]));
        let lines: Vec<String> = (0..3)
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
        assert!(
            lines[2].contains("reading the interest of bob: internal error"),
            "{lines:?}"
        );
        assert_eq!(health.internal_errors(), 2);
        dht.stop();
    }
}
