//! The crash-safe spool: every message the plugin accepted for forwarding is written here by the
//! MESSAGE callback, before the broker acknowledges it to its publisher, and stays until the relay
//! marks it taken (posted to twisterd). After a crash the records not taken are read back, in order.
//!
//! Two halves, one per thread:
//! - [`Appender`], the broker's thread (single producer): copies a record into a segment file that is
//!   mapped shared and writable. No syscall, no lock, no allocation: a few bounds checks, one CRC and
//!   `memcpy` into mapped memory, a store to an atomic. (The kernel may take a minor page fault on a
//!   page it wrote back meanwhile; that is not a syscall and never blocks on the disk.)
//! - [`Spool`], the worker: prepares the segments the appender will need (file created, its blocks
//!   allocated by writing them, mapped, every page written once), takes back the full ones, records
//!   how far records are taken (the mark file), recycles segments whose records are all taken,
//!   `fdatasync`s when asked.
//!
//! What survives what:
//! - **kill -9 of the broker** (or any crash of the process): everything the appender wrote. A store
//!   into a `MAP_SHARED` file mapping is a store into the kernel's page cache of that file; the
//!   process's death does not undo it, and the kernel writes it to disk later. So a record is safe
//!   from the moment `append` returns, before the publisher gets its PUBACK/PUBREC. A record torn by
//!   a kill in the middle of `append` was never acknowledged; it is found damaged and reported.
//! - **power loss or a kernel crash**: only what was written to disk: records up to the last
//!   [`Spool::sync`] (an `fdatasync` of the segments and the mark). The rest may be lost or torn; the
//!   CRC of every record tells whole records from the others.
//! - **a full disk**: space is taken when a segment is prepared, never while the broker writes, so a
//!   full disk means no spare segment: new messages are refused (QoS 1/2) or dropped (QoS 0) and
//!   counted, and what is spooled stays.
//! - **a damaged or truncated file**: each record has its length, a CRC-32 and its sequence number. A
//!   damaged record is skipped and the scan resumes at the next whole record; the records lost show as
//!   gaps in the sequence and are counted in the [`Recovery`] report.
//!
//! Records are taken in order (`mark_taken(up_to)`), so what is not taken is always the newest records:
//! once a segment's last record is taken the whole segment is free, and recycling it is all the
//! compaction the spool needs. Disk use never exceeds `slots * segment_bytes` plus the 64-byte mark.

mod format;
pub mod intake;
pub mod keeper;
#[cfg(test)]
pub(crate) mod tests;

pub use format::Record;

use crate::wire::Message;
use crossbeam_queue::ArrayQueue;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A record's place in the spool: its sequence number, one more than the record appended before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolId(pub u64);

/// Why `append` did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A QoS 0 message while less than a quarter of the spool is free: room is kept for QoS 1/2.
    Qos0Shed,
    /// No room at all (spool full, or no segment could be prepared: a full disk).
    Full,
    /// The message is larger than a segment.
    TooBig,
}

/// How far the relay has got with the spooled records, between the broker thread, the worker and the
/// keeper. Two watermarks, because the worker drains its hand-over queue apart from appends: the
/// broker stores `handed` after it queued a record for the worker; the worker reads it *before*
/// draining that queue, and once the queue was empty after the drain and nothing waits for a post,
/// everything up to what it read is posted (or deliberately dropped) and it stores `taken`.
#[derive(Debug, Default)]
pub struct Progress {
    handed: AtomicU64,
    taken: AtomicU64,
}

impl Progress {
    /// Broker thread: every record up to `id` is in the worker's hand-over queue.
    pub fn handed(&self, id: SpoolId) {
        self.handed.store(id.0, Ordering::Release);
    }

    pub fn handed_so_far(&self) -> SpoolId {
        SpoolId(self.handed.load(Ordering::Acquire))
    }

    /// Worker: every record up to `id` is taken (posted, or dropped and counted).
    pub fn taken(&self, id: SpoolId) {
        self.taken.fetch_max(id.0, Ordering::Release);
    }

    pub fn taken_so_far(&self) -> SpoolId {
        SpoolId(self.taken.load(Ordering::Acquire))
    }
}

/// How a spool is cut into segment files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub segment_bytes: usize,
    pub slots: usize,
}

const PAGE: usize = 4096;
/// The largest MQTT topic (a 16-bit length) and the routing bytes a record may carry.
const MAX_TOPIC: usize = 65_535;
pub const MAX_ROUTE: usize = 1024;

impl Geometry {
    /// Segments of an eighth of `max_bytes` (at most 64 MiB), each large enough for a message of
    /// `max_message_bytes` with the longest topic. Err: why `max_bytes` is too small.
    pub fn new(max_bytes: u64, max_message_bytes: usize) -> Result<Geometry, String> {
        let needed =
            format::record_size(MAX_TOPIC, max_message_bytes, MAX_ROUTE) + format::SEGMENT_HEADER;
        let needed = needed.div_ceil(PAGE) * PAGE;
        let eighth = ((max_bytes / 8).min(64 << 20) as usize) / PAGE * PAGE;
        let segment_bytes = eighth.max(needed);
        let slots = (max_bytes / segment_bytes as u64) as usize;
        if slots < 4 {
            return Err(format!(
                "{max_bytes} bytes is too small: the spool needs at least {} bytes (4 segments for messages of plugin_opt_max_message_bytes {max_message_bytes})",
                4 * needed
            ));
        }
        Ok(Geometry {
            segment_bytes,
            slots,
        })
    }

    fn capacity(&self) -> usize {
        self.segment_bytes - format::SEGMENT_HEADER
    }
}

/// Memory of a segment file mapped shared and writable: a store into it is a store into the file.
pub trait Mapped: Send {
    fn bytes(&mut self) -> &mut [u8];
}

impl Mapped for memmap2::MmapMut {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
}

/// How segment files get their disk blocks and their mapping. The mapping is made by the host layer
/// (`crate::host`), the home of every `unsafe` block.
pub trait Storage: Send {
    /// Maps the first `len` bytes of `file`, shared and writable.
    fn map(&self, file: &File, len: usize) -> io::Result<Box<dyn Mapped>>;

    /// Gives `file` its `len` bytes on disk now by writing them (a sparse file would meet a full disk
    /// only when the broker writes into a hole, which kills it with SIGBUS).
    fn allocate(&self, file: &mut File, len: usize) -> io::Result<()> {
        allocate_by_writing(file, len)
    }
}

/// Writes `len` zeros to `file` and `fdatasync`s it: its blocks are then on disk (ENOSPC shows here).
pub fn allocate_by_writing(file: &mut File, len: usize) -> io::Result<()> {
    let zeros = vec![0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        file.write_all(&zeros[..n])?;
        left -= n;
    }
    file.sync_data()
}

struct Segment {
    slot: usize,
    mem: Box<dyn Mapped>,
}

/// What the two halves share: lock-free queues of segments, counters.
struct Shared {
    /// Prepared segments, worker to appender.
    spares: ArrayQueue<Segment>,
    /// Full segments and their last record, appender to worker (who unmaps them: a syscall).
    retired: ArrayQueue<(Segment, u64)>,
    /// Segments free or prepared, as of the worker's last look, less those the appender took since.
    free: AtomicUsize,
    /// The last id appended.
    appended: AtomicU64,
    shed: AtomicU64,
    refused: AtomicU64,
}

/// A new spool's epoch: the time in milliseconds.
fn new_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
        .max(1)
}

/// The broker thread's half: appends records.
pub struct Appender {
    /// The spool's epoch (see `Spool`).
    pub epoch: u64,
    shared: Arc<Shared>,
    current: Option<(Segment, usize, u64)>,
    next: u64,
    /// QoS 0 is shed while fewer segments than this are free.
    reserve: usize,
    geometry: Geometry,
}

impl Appender {
    /// Writes `m` and its opaque `route` (the relay's routing bytes, at most MAX_ROUTE) into the
    /// spool. Broker thread only: no syscall, no lock, no allocation.
    pub fn append(&mut self, m: &Message, route: &[u8]) -> Result<SpoolId, Refused> {
        let size = format::record_size(m.topic.len(), m.payload.len(), route.len());
        if m.topic.len() > MAX_TOPIC || route.len() > MAX_ROUTE || size > self.geometry.capacity() {
            return self.refuse(Refused::TooBig);
        }
        if m.qos == 0 && self.shared.free.load(Ordering::Relaxed) < self.reserve {
            return self.refuse(Refused::Qos0Shed);
        }
        let fits = |c: &Option<(Segment, usize, u64)>| {
            c.as_ref()
                .is_some_and(|(_, at, _)| at + size <= self.geometry.segment_bytes)
        };
        if !fits(&self.current) {
            let Some(fresh) = self.shared.spares.pop() else {
                return self.refuse(Refused::Full);
            };
            let _ = self
                .shared
                .free
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                    Some(f.saturating_sub(1))
                });
            if let Some((full, _, last)) = self.current.replace((fresh, format::SEGMENT_HEADER, 0))
            {
                // Never full: it has a place for every segment file.
                let _ = self.shared.retired.push((full, last));
            }
        }
        let seq = self.next;
        let Some((seg, at, last)) = self.current.as_mut() else {
            return self.refuse(Refused::Full);
        };
        *at += format::write_record(&mut seg.mem.bytes()[*at..], seq, m, route);
        *last = seq;
        self.next += 1;
        self.shared.appended.store(seq, Ordering::Release);
        Ok(SpoolId(seq))
    }

    /// Counts a message not spooled.
    pub fn refuse(&self, why: Refused) -> Result<SpoolId, Refused> {
        let counter = match why {
            Refused::Qos0Shed => &self.shared.shed,
            Refused::Full | Refused::TooBig => &self.shared.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Err(why)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// No file, or a file whose records are all taken.
    Free,
    /// Prepared and handed to the appender (a spare or its current segment).
    Given,
    /// Full (or left by a previous run) with records up to `last`.
    Holding { last: u64 },
}

/// What was read back at start.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    /// The records not taken, in order: replay them.
    pub records: Vec<Record>,
    /// Records missing between the taken mark and the newest record read (damaged or lost files).
    pub lost: u64,
    /// Bytes that held neither a whole record nor zeros (a torn last record, damage).
    pub unreadable_bytes: u64,
    /// Segment files whose header was damaged or of another format (their records were read anyway).
    pub bad_headers: usize,
    /// The taken mark could not be read (every record found is replayed).
    pub mark_missing: bool,
}

/// Counts for the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpoolStats {
    pub bytes_on_disk: u64,
    /// The last id appended and the last taken: the records in between wait.
    pub appended: u64,
    pub taken: u64,
    /// The oldest record not taken.
    pub oldest: Option<SpoolId>,
    pub shed_qos0: u64,
    pub refused: u64,
}

/// The worker's half.
pub struct Spool {
    dir: PathBuf,
    geometry: Geometry,
    storage: Box<dyn Storage>,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    /// Open segment files (for fdatasync), by slot.
    files: Vec<Option<File>>,
    mark: File,
    mark_count: u64,
    /// Identifies this spool's lifetime: with a record's `SpoolId` it makes the message's id
    /// (`wire::MessageId`), the same when the record is replayed after a crash. Kept in the mark; a
    /// spool whose mark is gone gets a new one, so its ids, counting again, are never reused.
    epoch: u64,
    taken: u64,
    mark_written: u64,
    spares: usize,
}

const MARK_FILE: &str = "taken.mark";
/// Segments kept prepared ahead of the appender (at least two, at most all): a burst of this much
/// never waits for a segment to be allocated. They are mapped and resident (page cache) meanwhile.
const SPARE_BYTES: usize = 256 << 20;

fn segment_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("segment-{slot:04}.spool"))
}

fn slot_of(name: &str) -> Option<usize> {
    name.strip_prefix("segment-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: reads back what a previous run left, and prepares the
    /// first segments. Err: the directory or the mark file cannot be used.
    pub fn open(
        dir: &Path,
        geometry: Geometry,
        storage: Box<dyn Storage>,
    ) -> io::Result<(Spool, Appender, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut recovery = Recovery::default();
        let mark_path = dir.join(MARK_FILE);
        let mark_bytes = match fs::read(&mark_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (mark_count, taken, epoch) =
            format::read_mark_and_epoch(&mark_bytes).unwrap_or((0, 0, 0));
        let mark = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&mark_path)?;
        // Two processes appending to the same segments would corrupt each other (and truncate files
        // the other has mapped): one spool directory per broker.
        mark.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                "another process uses this spool directory",
            )
        })?;
        let mut slots = vec![Slot::Free; geometry.slots];
        let mut newest = taken;
        let mut found_any = false;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Some(slot) = entry.file_name().to_str().and_then(slot_of) else {
                continue;
            };
            let bytes = fs::read(entry.path())?;
            let scan = format::scan(&bytes);
            recovery.bad_headers += usize::from(scan.bad_header && !bytes.is_empty());
            recovery.unreadable_bytes += scan.unreadable_bytes as u64;
            if slot >= slots.len() {
                slots.resize(slot + 1, Slot::Free);
            }
            let last = scan.records.iter().map(|r| r.seq).max().unwrap_or(0);
            newest = newest.max(last);
            found_any |= !scan.records.is_empty();
            if last > taken {
                slots[slot] = Slot::Holding { last };
            }
            recovery
                .records
                .extend(scan.records.into_iter().filter(|r| r.seq > taken));
        }
        recovery.mark_missing = found_any && format::read_mark(&mark_bytes).is_none();
        recovery.records.sort_by_key(|r| r.seq);
        recovery.records.dedup_by_key(|r| r.seq);
        recovery.lost = (newest - taken).saturating_sub(recovery.records.len() as u64);
        let shared = Arc::new(Shared {
            spares: ArrayQueue::new(slots.len()),
            retired: ArrayQueue::new(slots.len()),
            free: AtomicUsize::new(0),
            appended: AtomicU64::new(newest),
            shed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let files = (0..slots.len()).map(|_| None).collect();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            geometry,
            storage,
            shared: shared.clone(),
            slots,
            files,
            mark,
            mark_count,
            epoch: if epoch == 0 { new_epoch() } else { epoch },
            taken,
            mark_written: taken,
            spares: (SPARE_BYTES / geometry.segment_bytes).clamp(2, geometry.slots),
        };
        if spool.epoch != epoch {
            // Before any record is appended: an id is never used under an epoch a crash could lose.
            spool.write_mark()?;
            spool.mark.sync_data()?;
        }
        let appender = Appender {
            epoch: spool.epoch,
            shared,
            current: None,
            next: newest + 1,
            reserve: (geometry.slots / 4).max(1),
            geometry,
        };
        // A full disk now is not fatal: the appender refuses until a segment can be prepared.
        let _ = spool.maintain();
        Ok((spool, appender, recovery))
    }

    /// Every record up to `up_to` is taken (posted): it is not replayed after a restart, and its
    /// segment is recycled once all of its records are. Written down at the next `maintain`.
    pub fn mark_taken(&mut self, up_to: SpoolId) {
        let appended = self.shared.appended.load(Ordering::Acquire);
        self.taken = self.taken.max(up_to.0.min(appended));
    }

    /// The worker's housekeeping, cheap when nothing changed: writes the taken mark, takes back full
    /// segments, recycles those wholly taken, and prepares spare segments. Err: a spare could not be
    /// prepared (a full disk): the appender refuses messages until a later call succeeds.
    pub fn maintain(&mut self) -> io::Result<()> {
        while let Some((seg, last)) = self.shared.retired.pop() {
            self.slots[seg.slot] = Slot::Holding { last };
            drop(seg); // unmapped here, on the worker
        }
        let recyclable = self
            .slots
            .iter()
            .any(|s| matches!(s, Slot::Holding { last } if *last <= self.taken));
        if self.taken > self.mark_written {
            self.write_mark()?;
            if recyclable {
                // Written to disk before a segment's records are overwritten: a power loss must not
                // bring back an older mark with their records gone.
                self.mark.sync_data()?;
            }
        }
        for slot in &mut self.slots {
            if matches!(slot, Slot::Holding { last } if *last <= self.taken) {
                *slot = Slot::Free;
            }
        }
        let result = self.prepare_spares();
        self.publish_free();
        result
    }

    fn write_mark(&mut self) -> io::Result<()> {
        self.mark_count += 1;
        let slot = format::mark_slot(self.mark_count, self.taken, self.epoch);
        let at = (self.mark_count % 2) * format::MARK_SLOT as u64;
        self.mark.write_all_at(&slot, at)?;
        self.mark_written = self.taken;
        Ok(())
    }

    fn prepare_spares(&mut self) -> io::Result<()> {
        while self.shared.spares.len() < self.spares {
            let Some(slot) = (0..self.geometry.slots).find(|&i| self.slots[i] == Slot::Free) else {
                return Ok(()); // the spool is full: the appender refuses until records are taken
            };
            let segment = self.prepare(slot)?;
            self.slots[slot] = Slot::Given;
            if let Err(seg) = self.shared.spares.push(segment) {
                self.slots[seg.slot] = Slot::Free;
                return Ok(());
            }
        }
        Ok(())
    }

    /// A segment ready for the appender: its blocks on disk, mapped, every page written once (zeros,
    /// which also wipe a recycled file's old records), the header last.
    fn prepare(&mut self, slot: usize) -> io::Result<Segment> {
        let path = segment_path(&self.dir, slot);
        let len = self.geometry.segment_bytes;
        let reusable =
            self.files[slot].is_some() || fs::metadata(&path).is_ok_and(|m| m.len() == len as u64);
        if !reusable {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            if let Err(e) = self.storage.allocate(&mut file, len) {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            self.files[slot] = Some(file);
        }
        if self.files[slot].is_none() {
            self.files[slot] = Some(OpenOptions::new().read(true).write(true).open(&path)?);
        }
        let Some(file) = &self.files[slot] else {
            return Err(io::Error::other("segment file not open"));
        };
        let mut mem = self.storage.map(file, len)?;
        let bytes = mem.bytes();
        bytes.fill(0);
        bytes[..format::SEGMENT_HEADER].copy_from_slice(&format::segment_header());
        Ok(Segment { slot, mem })
    }

    fn publish_free(&self) {
        let free = self.slots[..self.geometry.slots]
            .iter()
            .filter(|s| **s == Slot::Free)
            .count()
            + self.shared.spares.len();
        self.shared.free.store(free, Ordering::Relaxed);
    }

    /// Writes every record appended so far, and the taken mark, to disk (`fdatasync`): they then
    /// survive a power loss too. Returns the last id so made durable.
    pub fn sync(&mut self) -> io::Result<SpoolId> {
        let appended = self.shared.appended.load(Ordering::Acquire);
        for (slot, file) in self.files.iter().enumerate() {
            if let (Some(f), Slot::Given | Slot::Holding { .. }) = (file, self.slots[slot]) {
                f.sync_data()?;
            }
        }
        if self.taken > self.mark_written {
            self.write_mark()?;
        }
        self.mark.sync_data()?;
        Ok(SpoolId(appended))
    }

    /// This spool's epoch (see the field).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last id marked taken.
    pub fn taken(&self) -> SpoolId {
        SpoolId(self.taken)
    }

    /// The last id appended.
    pub fn appended(&self) -> SpoolId {
        SpoolId(self.shared.appended.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> SpoolStats {
        let appended = self.shared.appended.load(Ordering::Acquire);
        let bytes_on_disk = (0..self.slots.len())
            .filter_map(|i| fs::metadata(segment_path(&self.dir, i)).ok())
            .map(|m| m.len())
            .sum();
        SpoolStats {
            bytes_on_disk,
            appended,
            taken: self.taken,
            oldest: (appended > self.taken).then_some(SpoolId(self.taken + 1)),
            shed_qos0: self.shared.shed.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }
}
