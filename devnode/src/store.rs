//! Durable state: one JSON snapshot in the data directory, replaced atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the directory), so a crash or kill leaves either the old
//! or the new snapshot, never a torn one.

use crate::node::State;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const SNAPSHOT: &str = "devnode-state.json";

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
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.to_path_buf(), e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT)
    }

    /// The saved state, or a fresh one when the directory holds none.
    pub fn load(&self) -> Result<State, StoreError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StoreError::Read(path, e)),
        }
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
        assert_eq!(store.load().unwrap().height, 0);
        let mut s = State::default();
        s.height = 42;
        s.registered.insert("alice".into(), 3);
        store.save(&s).unwrap();
        let back = store.load().unwrap();
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
}
