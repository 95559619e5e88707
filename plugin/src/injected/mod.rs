//! The injection log: which received messages the broker's thread actually published into the
//! broker, written by that thread itself in TICK right after `mosquitto_broker_publish` took each
//! one, so that it survives a kill -9 of the broker at any point.
//!
//! Why: the worker writes its state (read cursors, the dedup set of `crate::dedup`) before it hands
//! messages to the broker's thread, which injects them at its next TICK. Were the dedup set to say
//! "seen" for an id handed but never injected (a kill -9 in between), its retransmission would be
//! dropped and acknowledged: lost. So the state file keeps only ids this log confirmed (or that
//! needed no injection), the log is merged into it at start, and receipts acknowledge only them.
//!
//! The file is `<plugin_opt_state_file>.injected`: `SLOTS` fixed records of `format::RECORD` bytes,
//! mapped shared and writable like the spool's segments (`crate::spool::Storage`, the mapping made in
//! the host layer). Two halves:
//! - [`Recorder`], the broker's thread: a CRC and a `memcpy` of one record into the mapping, a store
//!   to an atomic. No syscall, no lock, no allocation. It writes record `n` into slot `n % SLOTS`,
//!   and only once record `n - SLOTS` is in the saved state (else it waits: the message stays queued).
//! - [`Reader`], the worker: reads the records written since its last look (through the file: the
//!   page cache is the mapping's), and says how far they are in the saved state (`saved_up_to`).
//!
//! Recovery (at start, `recover`): every record whose CRC holds is an id that was injected; all are
//! merged into the state's dedup set, the state saved, and the file zeroed. A record torn by a kill in
//! the middle of its `memcpy` (or a damaged one) is skipped and counted: its message (injected a
//! moment before) may come once more. Bounded: the file never grows; records are recycled once saved.

pub mod format;
#[cfg(test)]
mod tests;

use crate::spool::{Mapped, Storage};
use crate::wire::MessageId;
pub use format::Mark;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Records in the file (1 MiB). The broker's thread waits for room only when the worker has not
/// saved its state while this many messages were injected.
pub const SLOTS: usize = 16_384;

/// The log's file beside the state file.
pub fn path_beside(state_file: &Path) -> PathBuf {
    let mut p = state_file.as_os_str().to_owned();
    p.push(".injected");
    PathBuf::from(p)
}

/// Between the two halves: records written so far, and how many of them are in the saved state.
#[derive(Debug, Default)]
struct Shared {
    written: AtomicU64,
    saved: AtomicU64,
}

/// What `recover` read back.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    pub injected: Vec<(String, MessageId)>,
    /// Slots neither empty nor a whole record (torn or damaged).
    pub damaged: usize,
}

/// Reads what a previous run's log holds (nothing when there is no file).
pub fn recover(path: &Path) -> io::Result<Recovered> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(format::scan(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Recovered::default()),
        Err(e) => Err(e),
    }
}

/// Opens the log afresh (zeroed, its blocks allocated) once what `recover` read is saved elsewhere:
/// the broker thread's half and what the worker needs to read it.
pub fn open(path: &Path, storage: &dyn Storage) -> io::Result<(Recorder, Handle)> {
    open_with(path, storage, SLOTS)
}

pub(crate) fn open_with(
    path: &Path,
    storage: &dyn Storage,
    slots: usize,
) -> io::Result<(Recorder, Handle)> {
    let len = slots * format::RECORD;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    storage.allocate(&mut file, len)?;
    let mem = storage.map(&file, len)?;
    let shared = Arc::new(Shared::default());
    Ok((
        Recorder {
            mem,
            slots: slots as u64,
            next: 0,
            shared: shared.clone(),
        },
        Handle {
            file: Arc::new(file),
            slots: slots as u64,
            shared,
        },
    ))
}

/// The broker thread's half.
pub struct Recorder {
    mem: Box<dyn Mapped>,
    slots: u64,
    next: u64,
    shared: Arc<Shared>,
}

impl Recorder {
    /// Whether a record can be written now without overwriting one not yet in the saved state.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.next - self.shared.saved.load(Ordering::Acquire) < self.slots
    }

    /// Writes that the message `mark` stands for was injected. False (nothing written) without room.
    #[inline]
    pub fn record(&mut self, mark: &Mark) -> bool {
        if !self.has_room() {
            return false;
        }
        let at = (self.next % self.slots) as usize * format::RECORD;
        let slot = &mut self.mem.bytes()[at..at + format::RECORD];
        mark.write_into(slot, self.next);
        self.next += 1;
        self.shared.written.store(self.next, Ordering::Release);
        true
    }
}

/// How the worker (each one, after a restart too) finds the log.
#[derive(Debug, Clone)]
pub struct Handle {
    file: Arc<File>,
    slots: u64,
    shared: Arc<Shared>,
}

impl Handle {
    /// A reader from the records not yet in the saved state on (a restarted worker reads again what
    /// the one before it read and did not save: merging an id twice changes nothing).
    pub fn reader(&self) -> Reader {
        Reader {
            file: self.file.clone(),
            slots: self.slots,
            read: self.shared.saved.load(Ordering::Acquire),
            shared: self.shared.clone(),
        }
    }
}

/// The worker's half.
pub struct Reader {
    file: Arc<File>,
    slots: u64,
    read: u64,
    shared: Arc<Shared>,
}

impl Reader {
    /// The ids injected since the last call (sender, id, urgent), in order; damaged records (never
    /// expected while the process lives) are counted in the second value.
    #[allow(clippy::type_complexity)]
    pub fn take_new(&mut self) -> io::Result<(Vec<(String, MessageId, bool)>, usize)> {
        let written = self.shared.written.load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut damaged = 0;
        let mut buf = [0u8; format::RECORD];
        while self.read < written {
            let at = (self.read % self.slots) * format::RECORD as u64;
            self.file.read_exact_at(&mut buf, at)?;
            match format::decode(&buf) {
                Some(r) => out.push((r.sender, r.id, r.urgent)),
                None => damaged += 1,
            }
            self.read += 1;
        }
        Ok((out, damaged))
    }

    /// Records read so far: once the state holding them is written, pass this to `saved_up_to`.
    pub fn read_so_far(&self) -> u64 {
        self.read
    }

    /// Every record before `n` is in the saved state: their slots may be written again.
    pub fn saved_up_to(&self, n: u64) {
        self.shared.saved.fetch_max(n, Ordering::Release);
    }
}
