//! The spool against real files. Mapped memory is modelled by `Heap`: a buffer read from the file when
//! mapped and written back when unmapped or when its owner dies, which is what the page cache does for
//! a `MAP_SHARED` mapping when the process is killed. A crash is dropping both halves with no further
//! call: nothing else reaches the files.

use super::*;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;

const G: Geometry = Geometry {
    segment_bytes: 4096,
    slots: 4,
};

/// Also the injection log's model of mapped memory (`crate::injected`).
#[derive(Default, Clone)]
pub(crate) struct Heap {
    disk_full: Arc<AtomicBool>,
}

struct HeapMapped {
    file: File,
    buf: Vec<u8>,
}

impl Mapped for HeapMapped {
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for HeapMapped {
    fn drop(&mut self) {
        self.file.write_all_at(&self.buf, 0).unwrap();
    }
}

impl Storage for Heap {
    fn map(&self, file: &File, len: usize) -> io::Result<Box<dyn Mapped>> {
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, 0)?;
        assert_eq!(n, len, "mapped beyond the file's end");
        Ok(Box::new(HeapMapped {
            file: file.try_clone()?,
            buf,
        }))
    }

    fn allocate(&self, file: &mut File, len: usize) -> io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            file.write_all(&[0; 100])?; // a partial file, as a real full disk leaves
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        allocate_by_writing(file, len)
    }
}

fn open_with(dir: &Path, heap: &Heap) -> (Spool, Appender, Recovery) {
    Spool::open(dir, G, Box::new(heap.clone())).unwrap()
}

fn open(dir: &Path) -> (Spool, Appender, Recovery) {
    open_with(dir, &Heap::default())
}

fn crash(spool: Spool, appender: Appender) {
    drop(appender);
    drop(spool);
}

fn msg(i: u64, qos: u8) -> Message {
    Message {
        topic: format!("sensors/{i}"),
        payload: format!("{{\"reading\":{}}}", i * 7)
            .repeat(1 + (i % 3) as usize)
            .into_bytes(),
        qos,
        retain: i.is_multiple_of(4),
    }
}

fn route(i: u64) -> Vec<u8> {
    if i.is_multiple_of(2) {
        Vec::new()
    } else {
        format!("dm:user{i}").into_bytes()
    }
}

/// Appends messages 1..=n, the worker's housekeeping after each; returns their ids.
fn fill(s: &mut Spool, a: &mut Appender, from: u64, n: u64, qos: u8) -> Vec<SpoolId> {
    (from..from + n)
        .map(|i| {
            let id = a.append(&msg(i, qos), &route(i)).unwrap();
            s.maintain().unwrap();
            id
        })
        .collect()
}

fn seqs(r: &Recovery) -> Vec<u64> {
    r.records.iter().map(|r| r.seq).collect()
}

#[test]
fn restart_replays_exactly_the_untaken_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut a, r) = open(dir.path());
    assert_eq!(r, Recovery::default(), "a new spool holds nothing");
    let ids = fill(&mut s, &mut a, 1, 10, 1);
    assert_eq!(ids, (1..=10).map(SpoolId).collect::<Vec<_>>());
    s.mark_taken(SpoolId(4));
    s.maintain().unwrap();
    crash(s, a);

    let (mut s, mut a, r) = open(dir.path());
    assert_eq!(seqs(&r), (5..=10).collect::<Vec<_>>());
    for rec in &r.records {
        assert_eq!(rec.message, msg(rec.seq, 1), "record {}", rec.seq);
        assert_eq!(rec.route, route(rec.seq));
    }
    assert_eq!((r.lost, r.unreadable_bytes, r.bad_headers), (0, 0, 0));
    assert!(!r.mark_missing);
    // New records follow the old ones; taking both kinds leaves nothing to replay.
    assert_eq!(a.append(&msg(11, 2), &[]), Ok(SpoolId(11)));
    s.mark_taken(SpoolId(8));
    s.maintain().unwrap();
    crash(s, a);
    let (mut s, a, r) = open(dir.path());
    assert_eq!(seqs(&r), vec![9, 10, 11]);
    s.mark_taken(SpoolId(11));
    s.maintain().unwrap();
    crash(s, a);
    let (_, _, r) = open(dir.path());
    assert!(r.records.is_empty());
}

/// The bytes of a segment holding messages 1..=n, and where each record starts and ends (unpadded).
fn one_segment(n: u64) -> (Vec<u8>, Vec<(usize, usize)>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut a, _) = open(dir.path());
    fill(&mut s, &mut a, 1, n, 1);
    crash(s, a);
    let bytes = fs::read(segment_path(dir.path(), 0)).unwrap();
    let mut at = format::SEGMENT_HEADER;
    let bounds = (1..=n)
        .map(|i| {
            let m = msg(i, 1);
            let len = format::RECORD_HEADER + route(i).len() + m.topic.len() + m.payload.len();
            let b = (at, at + len);
            at += format::align8(len);
            b
        })
        .collect();
    (bytes, bounds)
}

fn open_bytes(segment: &[u8]) -> Recovery {
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment_path(dir.path(), 0), segment).unwrap();
    open(dir.path()).2
}

#[test]
fn recovery_from_every_truncation_point_keeps_every_whole_record() {
    let (bytes, bounds) = one_segment(6);
    let data_end = bounds.last().unwrap().1;
    for cut in (0..=data_end + 8).chain([bytes.len()]) {
        let r = open_bytes(&bytes[..cut]);
        let whole: Vec<u64> = (1..=6)
            .filter(|&i| bounds[i as usize - 1].1 <= cut)
            .collect();
        assert_eq!(seqs(&r), whole, "cut at {cut}");
        for rec in &r.records {
            assert_eq!(rec.message, msg(rec.seq, 1), "cut at {cut}");
        }
        assert_eq!(r.lost, 0, "a torn tail is not a gap (cut at {cut})");
        let torn_from = whole.last().map_or(format::SEGMENT_HEADER, |&i| {
            format::align8(bounds[i as usize - 1].1)
        });
        let torn = &bytes[torn_from.min(cut)..cut];
        assert_eq!(
            r.unreadable_bytes > 0,
            torn.iter().any(|&b| b != 0),
            "cut at {cut}: the torn record is reported"
        );
        assert!(r.unreadable_bytes as usize <= torn.len());
        assert_eq!(
            r.bad_headers,
            usize::from(cut > 0 && cut < format::SEGMENT_HEADER)
        );
    }
}

#[test]
fn a_flipped_bit_costs_the_one_record_it_hits() {
    let (bytes, bounds) = one_segment(6);
    let data_end = bounds.last().unwrap().1;
    for at in 0..data_end {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << (at % 8);
        let r = open_bytes(&damaged);
        let hit = bounds.iter().position(|&(s, e)| (s..e).contains(&at));
        let expected: Vec<u64> = (1..=6).filter(|&i| Some(i as usize - 1) != hit).collect();
        assert_eq!(seqs(&r), expected, "bit flipped at {at}");
        match hit {
            Some(5) => assert_eq!((r.lost, r.unreadable_bytes > 0), (0, true), "at {at}"),
            Some(_) => assert_eq!((r.lost, r.unreadable_bytes > 0), (1, true), "at {at}"),
            None => assert_eq!((r.lost, r.unreadable_bytes), (0, 0), "at {at}"),
        }
        assert_eq!(r.bad_headers, usize::from(at < format::SEGMENT_HEADER));
    }
}

#[test]
fn a_full_spool_sheds_qos_0_first_then_refuses_qos_1_and_2_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut a, _) = open(dir.path());
    let mut accepted = Vec::new();
    let mut i = 0;
    let shed_at = loop {
        i += 1;
        match a.append(&msg(i, 0), &[]) {
            Ok(id) => accepted.push(id),
            Err(Refused::Qos0Shed) => break i,
            Err(other) => panic!("QoS 0 message {i}: {other:?} before being shed"),
        }
        s.maintain().unwrap();
    };
    // Room is left for QoS 1 and 2, and QoS 0 stays shed meanwhile.
    let mut kept_for_qos12 = 0;
    loop {
        i += 1;
        match a.append(&msg(i, 1 + (i % 2) as u8), &[]) {
            Ok(id) => {
                accepted.push(id);
                kept_for_qos12 += 1;
            }
            Err(Refused::Full) => break,
            Err(other) => panic!("QoS 1/2 message {i}: {other:?}"),
        }
        assert_eq!(a.append(&msg(0, 0), &[]), Err(Refused::Qos0Shed));
        s.maintain().unwrap();
    }
    assert!(kept_for_qos12 > 10, "{kept_for_qos12}");
    let stats = s.stats();
    assert_eq!(stats.refused, 1);
    assert_eq!(stats.shed_qos0, 1 + kept_for_qos12);
    assert!(stats.bytes_on_disk <= (G.slots * G.segment_bytes) as u64);
    assert_eq!(stats.oldest, Some(SpoolId(1)));
    crash(s, a);

    let (mut s, mut a, r) = open(dir.path());
    assert_eq!(
        seqs(&r),
        accepted.iter().map(|id| id.0).collect::<Vec<_>>(),
        "every accepted message is there after a crash (QoS 0 shed from {shed_at})"
    );
    // Still full until records are taken; then there is room again, for QoS 0 too.
    assert_eq!(a.append(&msg(1, 1), &[]), Err(Refused::Full));
    s.mark_taken(*accepted.last().unwrap());
    s.maintain().unwrap();
    assert!(a.append(&msg(1, 0), &[]).is_ok());
}

#[test]
fn a_full_disk_refuses_new_messages_and_keeps_what_is_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::default();
    heap.disk_full.store(true, Ordering::SeqCst);
    let (mut s, mut a, _) = open_with(dir.path(), &heap);
    assert_eq!(a.append(&msg(1, 1), &[]), Err(Refused::Full));
    let e = s.maintain().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(
        s.stats().bytes_on_disk,
        0,
        "the partial segment file is removed"
    );

    heap.disk_full.store(false, Ordering::SeqCst);
    s.maintain().unwrap();
    let mut accepted = fill(&mut s, &mut a, 1, 5, 1);
    heap.disk_full.store(true, Ordering::SeqCst);
    let mut i = 5;
    loop {
        i += 1;
        match a.append(&msg(i, 1), &[]) {
            Ok(id) => accepted.push(id),
            Err(Refused::Full) => break,
            Err(other) => panic!("{other:?}"),
        }
        let _ = s.maintain();
    }
    assert!(accepted.len() > 40, "the prepared segments were used");
    crash(s, a);
    // Restarted on the full disk: everything accepted is replayed.
    let (_, mut a, r) = open_with(dir.path(), &heap);
    assert_eq!(seqs(&r), accepted.iter().map(|id| id.0).collect::<Vec<_>>());
    assert_eq!(a.append(&msg(1, 1), &[]), Err(Refused::Full));
}

#[test]
fn taken_segments_are_recycled_so_the_spool_never_grows_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut a, _) = open(dir.path());
    let mut next = 1;
    // Twenty times what the spool holds goes through it.
    for _ in 0..20 * G.slots * 50 / 30 {
        let ids = fill(&mut s, &mut a, next, 30, 1);
        next += 30;
        s.mark_taken(*ids.last().unwrap());
        s.maintain().unwrap();
        let stats = s.stats();
        assert!(stats.bytes_on_disk <= (G.slots * G.segment_bytes) as u64);
        assert_eq!(stats.oldest, None);
    }
    assert_eq!(s.stats().refused, 0);
    let files = fs::read_dir(dir.path()).unwrap().count();
    assert!(
        files <= G.slots + 1,
        "at most the segment files and the mark: {files}"
    );
    crash(s, a);
    let (_, _, r) = open(dir.path());
    assert_eq!(
        r,
        Recovery::default(),
        "nothing to replay, nothing reported"
    );
}

#[test]
fn a_lost_segment_file_is_counted_and_the_others_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut a, _) = open(dir.path());
    let ids = fill(&mut s, &mut a, 1, 130, 1);
    crash(s, a);
    let second = fs::read(segment_path(dir.path(), 1)).unwrap();
    let in_second = format::scan(&second).records.len() as u64;
    assert!(in_second > 0);
    fs::remove_file(segment_path(dir.path(), 1)).unwrap();
    let (_, _, r) = open(dir.path());
    assert_eq!(r.lost, in_second);
    assert_eq!(r.records.len() as u64 + in_second, ids.len() as u64);
    assert!(r.records.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn a_torn_mark_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut a, _) = open(dir.path());
    fill(&mut s, &mut a, 1, 10, 1);
    s.mark_taken(SpoolId(3));
    s.maintain().unwrap();
    s.mark_taken(SpoolId(7));
    s.maintain().unwrap();
    crash(s, a);
    let (_, _, r) = open(dir.path());
    assert_eq!(seqs(&r), vec![8, 9, 10]);

    // Tear the newest of the two slots: the older mark holds, so more is replayed, never less.
    let path = dir.path().join(MARK_FILE);
    let mut mark = fs::read(&path).unwrap();
    // Mark 1 (the epoch, at creation) went to slot 1, mark 2 to slot 0, mark 3 (7) to slot 1.
    let newest = format::MARK_SLOT;
    mark[newest + 17] ^= 0x40;
    fs::write(&path, &mark).unwrap();
    let (_, _, r) = open(dir.path());
    assert_eq!(seqs(&r), (4..=10).collect::<Vec<_>>());
    assert!(!r.mark_missing);

    fs::write(&path, b"garbage").unwrap();
    let (_, _, r) = open(dir.path());
    assert_eq!(seqs(&r), (1..=10).collect::<Vec<_>>());
    assert!(r.mark_missing, "reported: everything found is replayed");
}

#[test]
fn a_file_that_is_not_a_segment_is_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment_path(dir.path(), 2), vec![0xA5u8; 3000]).unwrap();
    let (_, mut a, r) = open(dir.path());
    assert!(r.records.is_empty());
    assert_eq!(r.bad_headers, 1);
    assert!(r.unreadable_bytes > 2000);
    assert_eq!(a.append(&msg(1, 1), &[]), Ok(SpoolId(1)));
}

#[test]
fn a_message_larger_than_a_segment_is_refused_as_too_big() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut a, _) = open(dir.path());
    let mut m = msg(1, 1);
    m.payload = vec![7; G.segment_bytes];
    assert_eq!(a.append(&m, &[]), Err(Refused::TooBig));
    assert_eq!(
        a.append(&msg(1, 1), &[0; MAX_ROUTE + 1]),
        Err(Refused::TooBig)
    );
    m.payload = vec![7; G.capacity() - format::RECORD_HEADER - m.topic.len()];
    assert_eq!(a.append(&m, &[]), Ok(SpoolId(1)), "the largest that fits");
    assert_eq!(s.stats().refused, 2);
}

#[test]
fn geometry_follows_the_configured_bound() {
    let g = Geometry::new(64 << 20, 65_536).unwrap();
    assert_eq!((g.segment_bytes, g.slots), (8 << 20, 8));
    let g = Geometry::new(8 << 30, 65_536).unwrap();
    assert_eq!((g.segment_bytes, g.slots), (64 << 20, 128));
    // Every segment holds the largest message with the longest topic.
    let g = Geometry::new(100 << 20, 10 << 20).unwrap();
    assert!(g.capacity() >= format::record_size(MAX_TOPIC, 10 << 20, MAX_ROUTE));
    assert!(g.slots >= 4);
    let e = Geometry::new(1 << 20, 10 << 20).unwrap_err();
    assert!(e.contains("too small"), "{e}");
}

#[test]
fn one_process_at_a_time_uses_a_spool_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let e = Spool::open(dir.path(), G, Box::new(Heap::default()))
        .err()
        .unwrap();
    assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
    drop(first);
    assert!(Spool::open(dir.path(), G, Box::new(Heap::default())).is_ok());
}

#[test]
fn the_intake_spools_before_handing_over_and_refuses_what_the_worker_has_no_room_for() {
    use intake::{Intake, Verdict};
    let dir = tempfile::tempdir().unwrap();
    let (mut s, a, _) = open(dir.path());
    let progress = Arc::new(Progress::default());
    let mut intake = Intake::new(a, progress.clone());
    let mut handed = Vec::new();
    let epoch = s.epoch();
    assert_eq!(
        intake.take(msg(1, 1), true, |m, id| {
            assert_eq!(
                (id.epoch, id.seq),
                (epoch, 1),
                "the spool's epoch and the record's id"
            );
            handed.push(m);
            true
        }),
        Verdict::Accepted(SpoolId(1))
    );
    assert_eq!(progress.handed_so_far(), SpoolId(1));
    // The worker's queue is full: QoS 0 dropped, QoS 1/2 refused, nothing spooled or handed.
    assert_eq!(intake.take(msg(2, 0), false, |_, _| true), Verdict::Dropped);
    assert_eq!(intake.take(msg(3, 2), false, |_, _| true), Verdict::Refused);
    assert_eq!(progress.handed_so_far(), SpoolId(1));
    assert_eq!(handed, vec![msg(1, 1)]);
    let stats = s.stats();
    assert_eq!((stats.appended, stats.shed_qos0, stats.refused), (1, 1, 1));
    // The worker took record 1: nothing to replay.
    progress.taken(SpoolId(1));
    s.mark_taken(progress.taken_so_far());
    s.maintain().unwrap();
    drop(intake);
    drop(s);
    assert!(open(dir.path()).2.records.is_empty());
}

#[test]
fn a_burst_uses_the_whole_spool_without_waiting_for_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut a, _) = open(dir.path());
    // No `maintain` during the burst: every segment was prepared at open.
    let mut i = 0;
    while a.append(&msg(i, 1), &[]).is_ok() {
        i += 1;
    }
    let per_segment = G.capacity() / format::record_size(11, 16, 0);
    assert!(
        i as usize >= G.slots * per_segment / 2,
        "{i} records in {} segments",
        G.slots
    );
    assert_eq!(s.stats().bytes_on_disk, (G.slots * G.segment_bytes) as u64);
}

#[test]
fn the_epoch_survives_restarts_and_a_spool_without_its_mark_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut a, _) = open(dir.path());
    let epoch = s.epoch();
    assert!(epoch > 0);
    assert_eq!(a.epoch, epoch);
    a.append(&msg(1, 1), &[]).unwrap();
    // A crash before anything was taken: the epoch was written at creation, not at the first mark.
    drop(a);
    drop(s);
    let (s, a, rec) = open(dir.path());
    assert_eq!((s.epoch(), a.epoch), (epoch, epoch), "same ids on replay");
    assert_eq!(rec.records.len(), 1);
    drop(a);
    drop(s);
    std::fs::remove_file(dir.path().join("taken.mark")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let (s, _a, _) = open(dir.path());
    assert_ne!(s.epoch(), epoch, "ids counted again under a new epoch");
    // A mark of the version before epochs (bytes 24..32 zero) gets an epoch, kept from then on.
    let dir = tempfile::tempdir().unwrap();
    let mut old = format::mark_slot(1, 0, 0).to_vec();
    old.extend_from_slice(&[0u8; format::MARK_SLOT]);
    std::fs::write(dir.path().join("taken.mark"), old).unwrap();
    let (s, _a, _) = open(dir.path());
    let given = s.epoch();
    assert!(given > 0);
    drop(_a);
    drop(s);
    assert_eq!(open(dir.path()).0.epoch(), given);
}
