//! The injection log against real files, mapped memory modelled by the spool's `Heap` (written back
//! to the file when its owner dies, as the page cache does when the process is killed).

use super::*;
use crate::spool::tests::Heap;

fn id(seq: u64) -> MessageId {
    MessageId {
        epoch: 1_790_000_000_000,
        seq,
    }
}

fn sender(i: u64) -> &'static str {
    ["alice", "bob", "a_very_long_name_of_thirty_ch_"][(i % 3) as usize]
}

#[test]
fn a_mark_reads_back_as_written_and_names_that_do_not_fit_get_none() {
    let mark = Mark::new("alice", id(7), true).unwrap();
    let mut slot = [0u8; format::RECORD];
    mark.write_into(&mut slot, 42);
    let back = format::decode(&slot).unwrap();
    assert_eq!(
        (back.n, back.sender.as_str(), back.id, back.urgent),
        (42, "alice", id(7), true)
    );
    Mark::new("alice", id(7), false)
        .unwrap()
        .write_into(&mut slot, 43);
    assert!(!format::decode(&slot).unwrap().urgent);
    assert!(Mark::new("", id(1), true).is_none());
    assert!(Mark::new(&"x".repeat(format::MAX_SENDER + 1), id(1), true).is_none());
    assert!(Mark::new(&"x".repeat(format::MAX_SENDER), id(1), true).is_some());
}

/// A crash (the halves dropped) keeps every record written; the file cut at any byte keeps every
/// whole record before the cut and reads nothing wrong.
#[test]
fn recovery_after_a_crash_and_after_truncation_at_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json.injected");
    let (mut recorder, _handle) = open_with(&path, &Heap::default(), 8).unwrap();
    for i in 0..6 {
        assert!(recorder.record(&Mark::new(sender(i), id(i), i % 2 == 0).unwrap()));
    }
    drop(recorder); // kill -9: what was stored into the mapping is in the file
    let expected: Vec<(String, MessageId)> =
        (0..6).map(|i| (sender(i).to_string(), id(i))).collect();
    let back = recover(&path).unwrap();
    assert_eq!(back.injected, expected);
    assert_eq!(back.damaged, 0);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 8 * format::RECORD);
    for cut in 0..=bytes.len() {
        let got = format::scan(&bytes[..cut]);
        let whole = (cut / format::RECORD).min(6);
        assert_eq!(got.injected, expected[..whole], "cut at {cut}");
        let partial = cut % format::RECORD != 0 && cut / format::RECORD < 6;
        assert_eq!(got.damaged, usize::from(partial), "cut at {cut}");
    }
    // No file (first start): nothing, no error.
    assert_eq!(
        recover(&dir.path().join("none")).unwrap(),
        Recovered::default()
    );
}

/// A record torn at any byte (the kill came in the middle of its copy), over an empty slot or over
/// the slot's older record, is never read as a wrong id: only as the whole old record, or damaged.
#[test]
fn a_record_torn_at_any_byte_is_never_misread() {
    let old = {
        let mut b = [0u8; format::RECORD];
        Mark::new("bob", id(3), true).unwrap().write_into(&mut b, 3);
        b
    };
    let mut new = [0u8; format::RECORD];
    Mark::new("alice", id(11), true)
        .unwrap()
        .write_into(&mut new, 11);
    for under in [[0u8; format::RECORD], old] {
        for torn in 0..format::RECORD {
            let mut slot = under;
            slot[..torn].copy_from_slice(&new[..torn]);
            let got = format::scan(&slot);
            let whole_old = torn == 0 && under == old;
            if slot == new {
                // The rest of the new record was the same bytes: whole after all.
                assert_eq!(got.injected, vec![("alice".to_string(), id(11))]);
            } else if whole_old {
                assert_eq!(got.injected, vec![("bob".to_string(), id(3))]);
            } else if slot.iter().all(|b| *b == 0) {
                assert_eq!(got, Recovered::default());
            } else {
                assert!(got.injected.is_empty(), "torn at {torn}: {got:?}");
                assert_eq!(got.damaged, 1);
            }
        }
    }
}

/// Bounded: the broker's thread never overwrites a record the saved state does not hold yet; once the
/// worker saved them, their slots are used again, and recovery reads the newest of each slot.
#[test]
fn records_are_recycled_only_once_saved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json.injected");
    let (mut recorder, handle) = open_with(&path, &Heap::default(), 4).unwrap();
    for i in 0..4 {
        assert!(recorder.record(&Mark::new("alice", id(i), true).unwrap()));
    }
    assert!(!recorder.has_room());
    assert!(!recorder.record(&Mark::new("alice", id(4), true).unwrap()));
    let reader = handle.reader();
    reader.saved_up_to(2);
    assert!(recorder.record(&Mark::new("alice", id(4), true).unwrap()));
    assert!(recorder.record(&Mark::new("alice", id(5), true).unwrap()));
    assert!(!recorder.has_room());
    drop(recorder);
    let back = recover(&path).unwrap();
    let seqs: Vec<u64> = back.injected.iter().map(|(_, id)| id.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    // Opened again: zeroed, every slot free.
    let (recorder, _) = open_with(&path, &Heap::default(), 4).unwrap();
    assert!(recorder.has_room());
    drop(recorder);
    assert_eq!(recover(&path).unwrap(), Recovered::default());
}
