//! Our interest in our Twister profile (`profile.mqtt_topics`, every other key kept): when it is
//! written (a burst of subscription changes makes one write, `plugin_opt_profile_debounce_ms` after
//! the first change; a failed write is tried again after a backoff that doubles from
//! `FIRST_BACKOFF` up to `MAX_BACKOFF`; nothing before the relay started, then at once) and how: read
//! the profile, put it with seq+1 unless it already holds the filters, read it back to be sure. The
//! DHT calls go out as `DhtCall`s, their answers come back; no I/O, no clock.

use crate::bus::{DhtAnswer, DhtCall};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The profile key holding a broker's interest.
pub const TOPICS_KEY: &str = "mqtt_topics";

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

/// The profile's value as an object (anything else: an empty one).
pub fn profile_value(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// What a DHT answer moved the write to.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The next call of the write.
    Call(DhtCall),
    /// The profile holds these filters now.
    Written(Vec<String>),
    /// The write failed (said in this log line); it is tried again after the backoff.
    Failed(String),
    /// An answer to no call of this writer (of a driver before a restart): ignored.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Read,
    Put,
    ReadBack,
}

#[derive(Debug)]
struct Write {
    filters: Vec<String>,
    stage: Stage,
}

#[derive(Debug)]
pub struct ProfileWriter {
    user: String,
    debounce: Duration,
    /// The next write is due then.
    due: Option<Instant>,
    backoff: Duration,
    started: bool,
    writing: Option<Write>,
}

impl ProfileWriter {
    pub fn new(user: &str, debounce: Duration) -> Self {
        ProfileWriter {
            user: user.to_string(),
            debounce,
            due: None,
            backoff: FIRST_BACKOFF,
            started: false,
            writing: None,
        }
    }

    /// The interest changed: a write is due `debounce` after the first change not written yet.
    pub fn changed(&mut self, now: Instant) {
        if self.due.is_none() {
            self.due = Some(now + self.debounce);
        }
    }

    /// The relay started: our interest is written at once.
    pub fn start(&mut self, now: Instant) {
        self.started = true;
        self.due = Some(now);
    }

    /// When a write is due; none while one is going on (the next waits for it).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.filter(|_| self.started && self.writing.is_none())
    }

    /// True when a write is due now (once per deadline): `begin` it.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.poll_timeout().is_none_or(|t| now < t) {
            return false;
        }
        self.due = None;
        true
    }

    /// Starts writing `filters`: the first call.
    pub fn begin(&mut self, filters: Vec<String>) -> DhtCall {
        self.writing = Some(Write {
            filters,
            stage: Stage::Read,
        });
        self.get()
    }

    /// The answer to the write's last call.
    pub fn answer(&mut self, result: Result<DhtAnswer, String>, now: Instant) -> Step {
        let Some(write) = self.writing.take() else {
            return Step::Ignored;
        };
        let step = match (write.stage, result) {
            (Stage::Read, Ok(DhtAnswer::Profile(entry))) => {
                let mut value = profile_value(&entry.value);
                if topics_of(&value).as_deref() == Some(&write.filters[..]) {
                    return self.written(write.filters);
                }
                value.insert(TOPICS_KEY.into(), json!(write.filters));
                let value = Value::Object(value);
                let size = twister_rules::dht_value_size(&value, true);
                if size > twister_rules::MAX_DHT_SINGLE {
                    Err(format!(
                        "the profile would be {size} bytes with {} filters; Twister keeps at most {}",
                        write.filters.len(),
                        twister_rules::MAX_DHT_SINGLE
                    ))
                } else {
                    Ok((
                        Stage::Put,
                        DhtCall::PutProfile {
                            user: self.user.clone(),
                            value,
                            seq: entry.seq + 1,
                        },
                    ))
                }
            }
            (Stage::Put, Ok(DhtAnswer::Stored)) => Ok((Stage::ReadBack, self.get())),
            (Stage::ReadBack, Ok(DhtAnswer::Profile(entry))) => {
                if topics_of(&profile_value(&entry.value)).as_deref() == Some(&write.filters[..]) {
                    return self.written(write.filters);
                }
                Err(
                    "the DHT did not keep the new profile (another writer with a higher seq?)"
                        .into(),
                )
            }
            (_, Err(e)) => Err(e),
            (stage, Ok(_)) => {
                // Not the answer this stage waits for: not ours.
                self.writing = Some(Write { stage, ..write });
                return Step::Ignored;
            }
        };
        match step {
            Ok((stage, call)) => {
                self.writing = Some(Write {
                    filters: write.filters,
                    stage,
                });
                Step::Call(call)
            }
            Err(e) => {
                self.due = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Step::Failed(format!(
                    "writing our interest to the Twister profile failed: {e}; retrying"
                ))
            }
        }
    }

    fn get(&self) -> DhtCall {
        DhtCall::GetProfile {
            user: self.user.clone(),
        }
    }

    fn written(&mut self, filters: Vec<String>) -> Step {
        self.backoff = FIRST_BACKOFF;
        Step::Written(filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twister::DhtEntry;

    const DEBOUNCE: Duration = Duration::from_millis(1000);

    fn writer() -> ProfileWriter {
        ProfileWriter::new("me", DEBOUNCE)
    }

    fn profile(value: Value, seq: i64) -> Result<DhtAnswer, String> {
        Ok(DhtAnswer::Profile(DhtEntry {
            value,
            seq,
            ..Default::default()
        }))
    }

    fn get() -> Step {
        Step::Call(DhtCall::GetProfile { user: "me".into() })
    }

    fn filters() -> Vec<String> {
        vec!["a/#".into(), "b/+".into()]
    }

    /// Runs a whole successful write of `filters` at `now` (the profile already holds them).
    fn write_through(p: &mut ProfileWriter, now: Instant) {
        let f = filters();
        p.begin(f.clone());
        let step = p.answer(profile(json!({ "mqtt_topics": f }), 1), now);
        assert_eq!(step, Step::Written(filters()));
    }

    #[test]
    fn nothing_is_written_before_the_start_then_at_once() {
        let t0 = Instant::now();
        let mut p = writer();
        p.changed(t0);
        assert_eq!(p.poll_timeout(), None);
        assert!(!p.handle_timeout(t0 + DEBOUNCE * 5));
        p.start(t0 + DEBOUNCE * 5);
        assert_eq!(p.poll_timeout(), Some(t0 + DEBOUNCE * 5));
        assert!(p.handle_timeout(t0 + DEBOUNCE * 5));
        assert_eq!(p.poll_timeout(), None, "written: no deadline left");
    }

    #[test]
    fn a_burst_of_changes_makes_one_write_a_debounce_after_the_first() {
        let t0 = Instant::now();
        let mut p = writer();
        p.start(t0);
        assert!(p.handle_timeout(t0));
        write_through(&mut p, t0);
        let t1 = t0 + Duration::from_secs(10);
        for i in 0..100 {
            p.changed(t1 + Duration::from_millis(i));
        }
        assert_eq!(p.poll_timeout(), Some(t1 + DEBOUNCE));
        assert!(!p.handle_timeout(t1 + DEBOUNCE - Duration::from_millis(1)));
        assert!(p.handle_timeout(t1 + DEBOUNCE));
        assert!(!p.handle_timeout(t1 + DEBOUNCE * 2), "one write");
    }

    #[test]
    fn a_change_during_a_write_waits_for_it_and_no_deadline_is_in_the_past_meanwhile() {
        let t0 = Instant::now();
        let mut p = writer();
        p.start(t0);
        assert!(p.handle_timeout(t0));
        assert_eq!(
            p.begin(filters()),
            DhtCall::GetProfile { user: "me".into() }
        );
        p.changed(t0);
        assert_eq!(p.poll_timeout(), None, "writing: the next write waits");
        assert!(!p.handle_timeout(t0 + DEBOUNCE * 3));
        let late = t0 + DEBOUNCE * 3;
        assert_eq!(
            p.answer(profile(json!({ "mqtt_topics": filters() }), 2), late),
            Step::Written(filters())
        );
        assert_eq!(p.poll_timeout(), Some(t0 + DEBOUNCE), "due since, at once");
        assert!(p.handle_timeout(late));
    }

    #[test]
    fn a_write_reads_puts_with_the_next_seq_keeping_other_keys_and_reads_back() {
        let t0 = Instant::now();
        let mut p = writer();
        assert_eq!(
            p.begin(filters()),
            DhtCall::GetProfile { user: "me".into() }
        );
        let step = p.answer(
            profile(json!({"fullname": "Kitchen", "mqtt_topics": ["old"]}), 7),
            t0,
        );
        assert_eq!(
            step,
            Step::Call(DhtCall::PutProfile {
                user: "me".into(),
                value: json!({"fullname": "Kitchen", "mqtt_topics": ["a/#", "b/+"]}),
                seq: 8
            })
        );
        assert_eq!(p.answer(Ok(DhtAnswer::Stored), t0), get());
        assert_eq!(
            p.answer(
                profile(
                    json!({"fullname": "Kitchen", "mqtt_topics": ["a/#", "b/+"]}),
                    8
                ),
                t0
            ),
            Step::Written(filters())
        );
        // No profile yet (seq 0, no value): the first put is seq 1.
        p.begin(filters());
        assert!(matches!(
            p.answer(profile(Value::Null, 0), t0),
            Step::Call(DhtCall::PutProfile { seq: 1, .. })
        ));
    }

    #[test]
    fn a_profile_the_dht_did_not_keep_or_too_large_for_it_fails() {
        let t0 = Instant::now();
        let mut p = writer();
        p.begin(filters());
        p.answer(profile(json!({}), 1), t0);
        p.answer(Ok(DhtAnswer::Stored), t0);
        assert_eq!(
            p.answer(profile(json!({"mqtt_topics": ["x"]}), 9), t0),
            Step::Failed("writing our interest to the Twister profile failed: the DHT did not keep the new profile (another writer with a higher seq?); retrying".into())
        );
        let many: Vec<String> = (0..2000).map(|i| format!("some/long/filter/{i}")).collect();
        p.begin(many);
        match p.answer(profile(json!({}), 1), t0) {
            Step::Failed(line) => assert!(
                line.contains("filters; Twister keeps at most 8192"),
                "{line}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_to_no_call_of_this_writer_are_ignored() {
        let t0 = Instant::now();
        let mut p = writer();
        assert_eq!(p.answer(Ok(DhtAnswer::Stored), t0), Step::Ignored);
        p.begin(filters());
        assert_eq!(p.answer(Ok(DhtAnswer::Stored), t0), Step::Ignored);
        assert_eq!(
            p.answer(profile(json!({ "mqtt_topics": filters() }), 1), t0),
            Step::Written(filters()),
            "the write goes on"
        );
    }

    #[test]
    fn a_failed_write_is_retried_with_a_doubling_capped_backoff_reset_by_success() {
        let t0 = Instant::now();
        let mut p = writer();
        p.start(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            assert!(p.handle_timeout(now));
            p.begin(filters());
            let Step::Failed(line) = p.answer(Err("dhtput: down".into()), now) else {
                panic!("not failed");
            };
            assert!(line.contains("dhtput: down; retrying"), "{line}");
            let next = p.poll_timeout().unwrap();
            waits.push(next - now);
            now = next;
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert!(p.handle_timeout(now));
        write_through(&mut p, now);
        assert_eq!(p.poll_timeout(), None);
        p.changed(now);
        assert!(p.handle_timeout(now + DEBOUNCE));
        p.begin(filters());
        p.answer(Err("x".into()), now + DEBOUNCE);
        assert_eq!(p.poll_timeout(), Some(now + DEBOUNCE + FIRST_BACKOFF));
    }

    #[test]
    fn only_valid_filters_are_read_from_a_profile() {
        let p = profile_value(&json!({"mqtt_topics": ["a/#", 3, "bad/#/x", ""], "x": 1}));
        assert_eq!(topics_of(&p), Some(vec!["a/#".to_string()]));
        assert_eq!(topics_of(&profile_value(&json!({"x": 1}))), None);
        assert_eq!(topics_of(&profile_value(&json!("odd"))), None);
    }
}
