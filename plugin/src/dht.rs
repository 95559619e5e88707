//! The DHT thread: our profile's `mqtt_topics` (read, then written with seq+1, every other profile key
//! kept) and the followed users' published interest. `dhtget` may wait for the network for seconds, so
//! it never runs on the worker's post and poll path.

use crate::config::Config;
use crate::rpc::Twister;
use crate::worker::{Level, ToBroker, ToWorker};
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::thread::JoinHandle;

pub enum DhtJob {
    WriteProfile(Vec<String>),
    ReadInterest(Vec<String>),
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
pub fn read_profile(rpc: &dyn Twister, user: &str) -> Result<(Map<String, Value>, i64), String> {
    let got = rpc
        .call("dhtget", json!([user, PROFILE, "s", DHTGET_TIMEOUT_MS]))
        .map_err(|e| format!("dhtget: {e}"))?;
    let Some(item) = got.as_array().and_then(|a| a.first()) else {
        return Ok((Map::new(), 0));
    };
    let seq = item["p"]["seq"].as_i64().unwrap_or(0);
    let value = item["p"]["v"].as_object().cloned().unwrap_or_default();
    Ok((value, seq))
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
pub fn write_profile(rpc: &dyn Twister, user: &str, filters: &[String]) -> Result<(), String> {
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
    rpc.call("dhtput", json!([user, PROFILE, "s", value, user, seq + 1]))
        .map_err(|e| format!("dhtput: {e}"))?;
    let (back, _) = read_profile(rpc, user)?;
    if topics_of(&back).as_deref() != Some(filters) {
        return Err(
            "the DHT did not keep the new profile (another writer with a higher seq?)".into(),
        );
    }
    Ok(())
}

fn serve(
    cfg: Arc<Config>,
    rpc: Box<dyn Twister>,
    jobs: Receiver<DhtJob>,
    worker: Sender<ToWorker>,
    broker: Sender<ToBroker>,
) {
    loop {
        // Idle until the next job: no connection left open to twisterd meanwhile.
        rpc.release_idle();
        let Ok(first) = jobs.recv() else { return };
        // Coalesce: only the newest profile matters, and one read of every user asked about.
        let mut write: Option<Vec<String>> = None;
        let mut read: Vec<String> = Vec::new();
        for job in std::iter::once(first).chain(jobs.try_iter()) {
            match job {
                DhtJob::WriteProfile(f) => write = Some(f),
                DhtJob::ReadInterest(users) => read.extend(users),
            }
        }
        read.sort();
        read.dedup();
        if let Some(filters) = write {
            let r = write_profile(rpc.as_ref(), &cfg.user, &filters);
            if r.is_ok() {
                let _ = broker.try_send(ToBroker::Log(
                    Level::Info,
                    format!("mqtt-twister: profile interest is now {filters:?}"),
                ));
            }
            if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                worker.try_send(ToWorker::ProfileWritten(r))
            {
                return;
            }
        }
        for user in read {
            match read_profile(rpc.as_ref(), &user) {
                Ok((profile, _)) => {
                    if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                        worker.try_send(ToWorker::RemoteInterest {
                            user,
                            filters: topics_of(&profile),
                        })
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = broker.try_send(ToBroker::Log(
                        Level::Warning,
                        format!("mqtt-twister: reading the interest of {user}: {e}"),
                    ));
                }
            }
        }
    }
}

impl DhtThread {
    pub fn spawn(
        cfg: Arc<Config>,
        rpc: Box<dyn Twister>,
        worker: Sender<ToWorker>,
        broker: Sender<ToBroker>,
    ) -> Self {
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("mqtt-twister-dht".into())
            .spawn(move || serve(cfg, rpc, rx, worker, broker));
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
