//! The highest post number ever used, written down before the post under it goes (a small file
//! beside the state file). twisterd may forget a post it stored (killed before writing it down) while
//! other nodes hold it; a restart must not take the forgotten number again from twisterd's count, or
//! its post would be silently ignored there. The state file keeps the next number too, but only once
//! a second; this file is written (one `pwrite`, no sync: a kill -9 of the broker keeps it) before
//! every post under a new number.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Width of the number as written: always the same, so one write replaces the whole text.
const WIDTH: usize = 20;

pub struct UsedNumbers {
    file: Option<File>,
    path: PathBuf,
    written: i64,
}

/// Where the highest number used is kept for `state_file`.
pub fn path_for(state_file: &Path) -> PathBuf {
    let mut p = state_file.as_os_str().to_owned();
    p.push(".used-k");
    PathBuf::from(p)
}

impl UsedNumbers {
    /// Opens (or creates) the file for `state_file`; returns it and the highest number it says was
    /// used (`None`: none yet, or unreadable). Without a state file nothing is written.
    pub fn open(state_file: Option<&Path>) -> io::Result<(UsedNumbers, Option<i64>)> {
        let Some(state_file) = state_file else {
            return Ok((UsedNumbers::none(), None));
        };
        let path = path_for(state_file);
        let used = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if used.is_none() {
            // Damaged (or empty): written afresh by the next use.
            file.set_len(0)?;
        }
        Ok((
            UsedNumbers {
                file: Some(file),
                path,
                written: used.unwrap_or(-1),
            },
            used,
        ))
    }

    /// Keeps nothing (no state file, or it cannot be written).
    pub fn none() -> UsedNumbers {
        UsedNumbers {
            file: None,
            path: PathBuf::new(),
            written: i64::MAX,
        }
    }

    /// Number `k` is about to be used: written down unless a number as high already is.
    pub fn use_number(&mut self, k: i64) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if k <= self.written {
            return Ok(());
        }
        file.write_all_at(format!("{k:>WIDTH$}\n").as_bytes(), 0)?;
        self.written = k;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_number_used_survives_a_reopen_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a.state");
        let (mut n, used) = UsedNumbers::open(Some(&state)).unwrap();
        assert_eq!(used, None);
        n.use_number(7).unwrap();
        n.use_number(12).unwrap();
        n.use_number(3).unwrap();
        drop(n);
        let (_, used) = UsedNumbers::open(Some(&state)).unwrap();
        assert_eq!(used, Some(12));
        assert!(path_for(&state).exists());
    }

    #[test]
    fn a_damaged_file_reads_as_nothing_used_and_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a.state");
        std::fs::write(
            path_for(&state),
            "garbage that is longer than twenty-one bytes",
        )
        .unwrap();
        let (mut n, used) = UsedNumbers::open(Some(&state)).unwrap();
        assert_eq!(used, None);
        n.use_number(5).unwrap();
        let (_, used) = UsedNumbers::open(Some(&state)).unwrap();
        assert_eq!(used, Some(5));
    }

    #[test]
    fn without_a_state_file_nothing_is_written() {
        let (mut n, used) = UsedNumbers::open(None).unwrap();
        assert_eq!(used, None);
        n.use_number(5).unwrap();
    }
}
