//! What survives a broker restart: our next post number `k`, our post sequence, and for every followed
//! user how far we have read, so a restart neither replays old messages nor skips new ones. Written
//! atomically (temporary file, fsync, rename).

use crate::interest::SavedSession;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Pieces re-read behind the cursor, for pieces that arrive out of order on a real network.
pub const REORDER_WINDOW: i64 = 16;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cursor {
    /// Highest `k` of this user's torrent we have read up to.
    pub k: i64,
    /// Highest position in our DM conversation with this user that we have read.
    pub dm_id: i64,
    /// Time of the newest DM of that conversation we have read (0: not known).
    pub dm_time: i64,
    /// `k`s already delivered inside the re-read window (posts and DMs share `k`).
    pub seen: BTreeSet<i64>,
}

impl Cursor {
    pub fn at(k: i64) -> Self {
        Cursor {
            k,
            dm_id: -1,
            dm_time: 0,
            seen: BTreeSet::new(),
        }
    }

    /// True the first time a piece is seen; false for a duplicate or a piece older than the window.
    pub fn first_sight(&mut self, k: i64) -> bool {
        if k <= self.k - REORDER_WINDOW {
            return false;
        }
        self.seen.insert(k)
    }

    pub fn advance(&mut self, k: i64) {
        self.k = self.k.max(k);
        let floor = self.k - REORDER_WINDOW;
        self.seen.retain(|s| *s > floor);
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saved {
    pub next_k: i64,
    pub seq: u64,
    pub cursors: BTreeMap<String, Cursor>,
    /// Messages accepted from local clients but not posted when the broker stopped.
    pub unsent: Vec<Unsent>,
    /// The broker's client sessions with their subscriptions (2.0 and 2.1 tell nothing about the
    /// sessions the broker restores from its own persistence file).
    pub interest: Vec<SavedSession>,
    /// Written by the plugin's cleanup: the broker stopped cleanly (it saved its own persistence file
    /// just before), not crashed.
    pub clean_stop: bool,
    /// Retained values in the DHT: what we wrote and what we read (`relay::retained`, its own JSON).
    pub retained: Value,
    /// Message ids handed to the broker, per sender (`crate::dedup`).
    pub seen: crate::dedup::Dedup,
    /// What the post budget learnt of our registration height (`relay::outbox::Learnt`).
    pub registered_at_least: Option<i64>,
    pub registered_at_most: Option<i64>,
    pub budget_refused_once: bool,
}

/// Where an unsent message was going.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Public,
    Direct(String),
    /// A private forward whose recipients were not decided yet.
    Undecided,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unsent {
    pub to: Destination,
    /// The message as a wire item (`wire::encode_item`).
    pub item: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is not a state file of this plugin")]
    Corrupt(PathBuf),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

impl Saved {
    pub fn to_json(&self) -> Value {
        let cursors: Map<String, Value> = self
            .cursors
            .iter()
            .map(|(u, c)| {
                (
                    u.clone(),
                    json!({"k": c.k, "dm_id": c.dm_id, "dm_time": c.dm_time, "seen": c.seen}),
                )
            })
            .collect();
        let unsent: Vec<Value> = self
            .unsent
            .iter()
            .map(|u| {
                let to = match &u.to {
                    Destination::Public => json!({"public": true}),
                    Destination::Direct(user) => json!({"dm": user}),
                    Destination::Undecided => json!({"undecided": true}),
                };
                json!({"to": to, "item": u.item})
            })
            .collect();
        let interest: Vec<Value> = self
            .interest
            .iter()
            .map(|s| json!({"client": s.client, "persistent": s.persistent, "subs": s.subs}))
            .collect();
        json!({"version": 1, "next_k": self.next_k, "seq": self.seq, "cursors": cursors, "unsent": unsent, "interest": interest, "clean_stop": self.clean_stop, "retained": self.retained, "seen": self.seen.to_json(),
            "budget": {"registered_at_least": self.registered_at_least, "registered_at_most": self.registered_at_most, "refused_once": self.budget_refused_once}})
    }

    pub fn from_json(v: &Value) -> Option<Saved> {
        let mut s = Saved {
            next_k: v.get("next_k")?.as_i64()?,
            seq: v.get("seq")?.as_u64()?,
            cursors: BTreeMap::new(),
            unsent: Vec::new(),
            interest: Vec::new(),
            clean_stop: v
                .get("clean_stop")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            retained: v.get("retained").cloned().unwrap_or(Value::Null),
            // Absent in files of earlier versions: nothing seen.
            seen: v
                .get("seen")
                .map(|s| crate::dedup::Dedup::from_json(s, crate::dedup::Limits::default()))
                .unwrap_or_default(),
            // Absent in files of earlier versions: nothing learnt.
            registered_at_least: v["budget"]["registered_at_least"].as_i64(),
            registered_at_most: v["budget"]["registered_at_most"].as_i64(),
            budget_refused_once: v["budget"]["refused_once"].as_bool().unwrap_or(false),
        };
        // Absent in files of earlier versions.
        for i in v
            .get("interest")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            s.interest.push(SavedSession {
                client: i.get("client")?.as_str()?.to_string(),
                persistent: i.get("persistent")?.as_bool()?,
                subs: i
                    .get("subs")?
                    .as_array()?
                    .iter()
                    .map(|f| f.as_str().map(String::from))
                    .collect::<Option<_>>()?,
            });
        }
        for u in v
            .get("unsent")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let to = &u["to"];
            let to = if let Some(user) = to.get("dm").and_then(Value::as_str) {
                Destination::Direct(user.to_string())
            } else if to.get("undecided").is_some() {
                Destination::Undecided
            } else {
                Destination::Public
            };
            s.unsent.push(Unsent {
                to,
                item: u.get("item")?.as_str()?.to_string(),
            });
        }
        for (u, c) in v.get("cursors")?.as_object()? {
            let seen = c
                .get("seen")?
                .as_array()?
                .iter()
                .map(Value::as_i64)
                .collect::<Option<_>>()?;
            s.cursors.insert(
                u.clone(),
                Cursor {
                    k: c.get("k")?.as_i64()?,
                    dm_id: c.get("dm_id")?.as_i64()?,
                    // Absent from state files written before it existed.
                    dm_time: c.get("dm_time").and_then(Value::as_i64).unwrap_or(0),
                    seen,
                },
            );
        }
        Some(s)
    }

    /// `Ok(None)` when there is no file yet (first start).
    pub fn load(path: &Path) -> Result<Option<Saved>, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let v: Value =
                    serde_json::from_slice(&bytes).map_err(|_| StateError::Corrupt(path.into()))?;
                Saved::from_json(&v)
                    .map(Some)
                    .ok_or_else(|| StateError::Corrupt(path.into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Read(path.into(), e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        use std::io::Write;
        let werr = |e| StateError::Write(path.into(), e);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(werr)?;
        f.write_all(self.to_json().to_string().as_bytes())
            .map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(werr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_dedups_inside_the_window_and_forgets_below_it() {
        let mut c = Cursor::at(10);
        assert!(c.first_sight(11));
        assert!(!c.first_sight(11));
        assert!(
            c.first_sight(5),
            "late piece inside the window is delivered once"
        );
        assert!(!c.first_sight(5));
        c.advance(40);
        assert!(!c.first_sight(20), "too old");
        assert!(c.seen.iter().all(|k| *k > 40 - REORDER_WINDOW));
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(Saved::load(&path).unwrap(), None);
        let mut s = Saved {
            next_k: 12,
            seq: 99,
            registered_at_least: Some(40),
            registered_at_most: Some(41),
            budget_refused_once: true,
            ..Default::default()
        };
        let mut c = Cursor::at(7);
        c.first_sight(8);
        c.dm_id = 3;
        c.dm_time = 1_700_000_000;
        s.cursors.insert("bob".into(), c);
        s.unsent = vec![
            Unsent {
                to: Destination::Public,
                item: "{\"t\":\"a\",\"x\":\"1\",\"q\":1}".into(),
            },
            Unsent {
                to: Destination::Direct("carol".into()),
                item: "{}".into(),
            },
            Unsent {
                to: Destination::Undecided,
                item: "{}".into(),
            },
        ];
        s.interest = vec![SavedSession {
            client: "durable".into(),
            persistent: true,
            subs: vec!["a/#".into(), "$share/g/a/#".into()],
        }];
        s.clean_stop = true;
        s.seen.check(
            "bob",
            Some(crate::wire::MessageId {
                epoch: 1_790_000_000_000,
                seq: 41,
            }),
        );
        s.save(&path).unwrap();
        assert_eq!(Saved::load(&path).unwrap(), Some(s));
        std::fs::write(&path, b"{\"next_k\":1,\"seq\":2,\"cursors\":{}}").unwrap();
        assert_eq!(
            Saved::load(&path).unwrap().map(|s| s.interest.len()),
            Some(0),
            "a file of an earlier version loads"
        );
        std::fs::write(&path, b"{\"next_k\":\"x\"}").unwrap();
        assert!(matches!(Saved::load(&path), Err(StateError::Corrupt(_))));
    }
}
