//! Durable state in the data directory: the torrents' pieces in an append-only log (one JSON line per
//! piece, `[user, k, piece]`, fsynced; pieces never change once stored), everything else in one JSON
//! snapshot replaced atomically (write a temporary file, fsync it, rename it over the old one, fsync
//! the directory). A crash leaves the old or the new snapshot, never a torn one; a torn last line of
//! the log is cut off at the next start. A post costs one appended line, not a rewrite of everything.

use crate::node::{Piece, State, Torrent};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SNAPSHOT: &str = "devnode-state.json";
const PIECES: &str = "devnode-pieces.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is not a dev node snapshot: {1}")]
    Corrupt(PathBuf, serde_json::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

pub struct Store {
    dir: PathBuf,
    /// The pieces log, opened for appending at the first write.
    log: Mutex<Option<File>>,
}

/// The snapshot: the state without the pieces (the log holds them).
#[derive(Serialize)]
struct SnapshotView<'a> {
    height: i64,
    registered: &'a BTreeMap<String, i64>,
    mempool: &'a Vec<String>,
    wallet: &'a Vec<crate::node::WalletUser>,
    torrents: BTreeMap<&'a str, TorrentHead>,
    dht: &'a BTreeMap<String, Vec<crate::node::DhtItem>>,
    spam_shown_at: i64,
    arrivals: u64,
}

#[derive(Serialize)]
struct TorrentHead {
    lastk: Option<i64>,
}

/// The snapshot of `state` (under the node's lock; written later by `save_bytes`).
pub fn snapshot_bytes(state: &State) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&SnapshotView {
        height: state.height,
        registered: &state.registered,
        mempool: &state.mempool,
        wallet: &state.wallet,
        torrents: state
            .torrents
            .iter()
            .map(|(u, t)| (u.as_str(), TorrentHead { lastk: t.lastk }))
            .collect(),
        dht: &state.dht,
        spam_shown_at: state.spam_shown_at,
        arrivals: state.arrivals,
    })
}

/// One line of the pieces log.
pub fn piece_line(user: &str, k: i64, piece: &Piece) -> serde_json::Result<String> {
    serde_json::to_string(&(user, k, piece))
}

fn add_piece(state: &mut State, user: String, k: i64, piece: Piece) {
    state.arrivals = state.arrivals.max(piece.arrival);
    let t: &mut Torrent = state.torrents.entry(user).or_default();
    if piece.dm.is_none() {
        t.lastk = Some(t.lastk.map_or(k, |l| l.max(k)));
    }
    t.pieces.entry(k).or_insert(piece);
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.to_path_buf(), e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            log: Mutex::new(None),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT)
    }

    /// The saved state, or a fresh one when the directory holds none: the snapshot, then every
    /// piece of the log. A torn last line (a crash while appending) is cut off; other unreadable
    /// lines are skipped and counted in the returned number.
    pub fn load(&self) -> Result<(State, usize), StoreError> {
        let path = self.path();
        let mut state: State = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(path, e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(StoreError::Read(path, e)),
        };
        // A snapshot of before the log held its pieces itself: they move to the log.
        let inline: Vec<String> = state
            .torrents
            .iter()
            .flat_map(|(u, t)| t.pieces.iter().map(move |(k, p)| (u, k, p)))
            .filter_map(|(u, k, p)| piece_line(u, *k, p).ok())
            .collect();
        if !inline.is_empty() {
            self.append(&inline)?;
        }
        let log = self.dir.join(PIECES);
        let bytes = match fs::read(&log) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((state, 0)),
            Err(e) => return Err(StoreError::Read(log, e)),
        };
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            let f = File::options()
                .write(true)
                .open(&log)
                .map_err(|e| StoreError::Write(log.clone(), e))?;
            f.set_len(whole as u64)
                .and_then(|_| f.sync_all())
                .map_err(|e| StoreError::Write(log.clone(), e))?;
        }
        let mut unreadable = 0;
        for line in bytes[..whole]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            match serde_json::from_slice::<(String, i64, Piece)>(line) {
                Ok((user, k, piece)) => add_piece(&mut state, user, k, piece),
                Err(_) => unreadable += 1,
            }
        }
        Ok((state, unreadable))
    }

    /// Appends pieces' lines to the log and returns once they are on disk.
    pub fn append(&self, lines: &[String]) -> Result<(), StoreError> {
        let path = self.dir.join(PIECES);
        let werr = |e| StoreError::Write(path.clone(), e);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.is_none() {
            let f = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(werr)?;
            *log = Some(f);
        }
        let Some(f) = log.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        f.write_all(&buf).and_then(|_| f.sync_data()).map_err(werr)
    }

    /// Rewrites the pieces log without the pieces `gone` (user, k), atomically (a crash leaves the old
    /// or the new log). For the `forget_newest` fault.
    pub fn forget(&self, gone: &[(String, i64)]) -> Result<(), StoreError> {
        let path = self.dir.join(PIECES);
        let werr = |e| StoreError::Write(path.clone(), e);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::Read(path, e)),
        };
        let mut kept = Vec::with_capacity(bytes.len());
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let piece =
                serde_json::from_slice::<(String, i64, serde_json::Value)>(line.trim_ascii_end());
            if piece.is_ok_and(|(u, k, _)| gone.iter().any(|(gu, gk)| *gu == u && *gk == k)) {
                continue;
            }
            kept.extend_from_slice(line);
        }
        let tmp = self.dir.join(format!("{PIECES}.tmp"));
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&kept)
            .and_then(|_| f.sync_all())
            .map_err(werr)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(werr)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        // The open handle appends to the old file: the next append opens the new one.
        *log = None;
        Ok(())
    }

    #[cfg(test)]
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| StoreError::Write(self.path(), std::io::Error::other(e)))?;
        self.save_bytes(&bytes)
    }

    /// Writes a snapshot already serialized (under the node's lock) without holding that lock.
    pub fn save_bytes(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let werr = |e| StoreError::Write(path.clone(), e);
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(werr)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().0.height, 0);
        let mut s = State::default();
        s.height = 42;
        s.registered.insert("alice".into(), 3);
        store.save(&s).unwrap();
        let back = store.load().unwrap().0;
        assert_eq!(back.height, 42);
        assert_eq!(back.registered["alice"], 3);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SNAPSHOT)]);
    }

    #[test]
    fn a_corrupt_snapshot_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SNAPSHOT), b"{not json").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt(..))));
        assert_eq!(fs::read(dir.path().join(SNAPSHOT)).unwrap(), b"{not json");
    }

    fn piece(arrival: u64, dm: bool) -> Piece {
        Piece {
            post: serde_json::json!({"userpost": {"k": arrival}}),
            flags: if dm { 2 } else { 0 },
            time: 1,
            arrival,
            dm: dm.then(|| crate::node::DmSecret {
                to: "bob".into(),
                text: "hi".into(),
            }),
        }
    }

    #[test]
    fn snapshot_plus_log_is_the_whole_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut s = State::default();
        s.height = 9;
        s.registered.insert("alice".into(), 2);
        s.mempool.push("bob".into());
        s.spam_shown_at = 5;
        let mut lines = Vec::new();
        for (k, dm) in [(0, false), (1, true), (2, false)] {
            let p = piece(k as u64 + 1, dm);
            lines.push(piece_line("alice", k, &p).unwrap());
            add_piece(&mut s, "alice".into(), k, p);
        }
        store.save_bytes(&snapshot_bytes(&s).unwrap()).unwrap();
        store.append(&lines[..2]).unwrap();
        store.append(&lines[2..]).unwrap();
        let (back, unreadable) = store.load().unwrap();
        assert_eq!(unreadable, 0);
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
        assert_eq!(back.torrents["alice"].lastk, Some(2));
        assert_eq!(back.arrivals, 3);
    }

    #[test]
    fn pieces_of_an_older_snapshot_move_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut s = State::default();
        add_piece(&mut s, "alice".into(), 0, piece(1, false));
        store.save(&s).unwrap();
        let (back, _) = store.load().unwrap();
        assert_eq!(back.torrents["alice"].pieces.len(), 1);
        // The next snapshot has no pieces; the log still has them.
        store.save_bytes(&snapshot_bytes(&back).unwrap()).unwrap();
        let (again, _) = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(again.torrents["alice"].pieces.len(), 1);
    }

    #[test]
    fn forgotten_pieces_leave_the_log_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lines: Vec<String> = (0..4)
            .map(|k| piece_line("alice", k, &piece(k as u64 + 1, false)).unwrap())
            .chain([piece_line("bob", 3, &piece(9, false)).unwrap()])
            .collect();
        store.append(&lines).unwrap();
        store
            .forget(&[("alice".into(), 3), ("alice".into(), 2)])
            .unwrap();
        store
            .append(&[piece_line("alice", 2, &piece(10, false)).unwrap()])
            .unwrap();
        let (back, unreadable) = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(unreadable, 0);
        let keys = |u: &str| back.torrents[u].pieces.keys().copied().collect::<Vec<_>>();
        assert_eq!(keys("alice"), vec![0, 1, 2]);
        assert_eq!(
            back.torrents["alice"].pieces[&2].arrival, 10,
            "the new piece 2"
        );
        assert_eq!(keys("bob"), vec![3], "other users keep theirs");
        assert!(!dir.path().join(format!("{PIECES}.tmp")).exists());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = piece(1, false);
        store
            .append(&[piece_line("alice", 0, &p).unwrap()])
            .unwrap();
        let mut f = File::options()
            .append(true)
            .open(dir.path().join(PIECES))
            .unwrap();
        f.write_all(b"[\"alice\",1,{\"post\":").unwrap();
        drop(f);
        let store = Store::open(dir.path()).unwrap();
        let (back, unreadable) = store.load().unwrap();
        assert_eq!(unreadable, 0);
        assert_eq!(back.torrents["alice"].pieces.len(), 1);
        store
            .append(&[piece_line("alice", 1, &p).unwrap()])
            .unwrap();
        let (back, _) = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(
            back.torrents["alice"]
                .pieces
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
    }
}
