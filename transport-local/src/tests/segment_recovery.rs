//! Recovery on open: torn tails are cut, corrupt records in the middle are
//! copied aside and skipped, and every other record stays readable. Seeded
//! random damage never makes recovery panic or lose an undamaged record.

use std::collections::BTreeSet;
use std::fs::OpenOptions;

use dashi_test_support::TestDir;

use crate::recovery::recover;
use crate::segment::{Segment, Slot, HEADER_LEN};

fn fresh() -> (TestDir, Segment) {
    super::common::fresh_segment(1 << 20)
}

fn fill(seg: &Segment, n: u32) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let mut p = i.to_le_bytes().to_vec();
            p.resize(16 + (i as usize * 7) % 200, i as u8);
            seg.append(&p, 0, 1, 0).unwrap()
        })
        .collect()
}

fn ids(seg: &Segment) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let mut off = HEADER_LEN;
    loop {
        match seg.read(off) {
            Slot::Record { meta, len } => {
                let p = seg.payload(off, &meta);
                out.insert(u32::from_le_bytes(p[..4].try_into().unwrap()));
                off += len;
            }
            Slot::Padding { len } | Slot::Moved { len } => off += len,
            _ => return out,
        }
    }
}

/// Flips one byte of the mapped file through a second mapping-free handle.
fn flip(dir: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("0.seg"))
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn a_torn_tail_is_cut() {
    let (_dir, seg) = fresh();
    fill(&seg, 10);
    let torn = seg.reserve_only(50);
    let report = recover(&seg, true, true, |_, _, _| Ok(())).unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.cut_at, Some(torn));
    assert_eq!(seg.reserved_to(), torn);
    assert_eq!(ids(&seg).len(), 10);
    // The segment takes appends again where the torn record was.
    assert_eq!(seg.append(b"next", 0, 1, 0).unwrap(), torn);
}

#[test]
fn a_corrupt_record_in_the_middle_is_moved_aside() {
    let (dir, seg) = fresh();
    let offs = fill(&seg, 20);
    flip(&dir, offs[7] + 64 + 3); // payload byte of record 7
    let mut saved = Vec::new();
    let report = recover(&seg, true, true, |off, bytes, reason| {
        saved.push((off, bytes.len(), reason));
        Ok(())
    })
    .unwrap();
    assert_eq!(report.records, 19);
    assert_eq!(report.moved, vec![(offs[7], "checksum mismatch")]);
    assert_eq!(
        saved,
        vec![(offs[7], (offs[8] - offs[7]) as usize, "checksum mismatch")]
    );
    let left = ids(&seg);
    assert_eq!(left.len(), 19);
    assert!(!left.contains(&7));
    // A second recovery sees it as moved and changes nothing.
    let again = recover(&seg, true, true, |_, _, _| panic!("already saved")).unwrap();
    assert_eq!(again.records, 19);
}

#[test]
fn a_corrupt_length_is_bridged_to_the_next_record() {
    let (dir, seg) = fresh();
    let offs = fill(&seg, 6);
    flip(&dir, offs[2] + 1); // second byte of record 2's committed length
    let report = recover(&seg, true, true, |_, _, _| Ok(())).unwrap();
    assert_eq!(report.moved.len(), 1);
    assert_eq!(report.records, 5);
    assert_eq!(ids(&seg), [0, 1, 3, 4, 5].into_iter().collect());
}

#[test]
fn a_length_that_cannot_be_a_record_length_is_bridged() {
    // Found by the segment_recovery fuzz target: a first record whose length
    // byte became 0x0a (10: below a header, not a multiple of 8).
    use std::os::unix::fs::FileExt;
    let (dir, seg) = fresh();
    let offs = fill(&seg, 4);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("0.seg"))
        .unwrap();
    f.write_all_at(b"\n", HEADER_LEN).unwrap();
    let report = recover(&seg, true, true, |_, _, _| Ok(())).unwrap();
    assert_eq!(
        report.moved,
        vec![(offs[0], "state word is not well formed")]
    );
    assert_eq!(ids(&seg), [1, 2, 3].into_iter().collect());
    assert_eq!(
        seg.read(offs[0] + 10),
        Slot::Corrupt {
            len: 0,
            reason: "not a record boundary"
        }
    );
}

#[test]
fn seeded_random_damage_never_panics_or_loses_untouched_records() {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..40 {
        let (dir, seg) = fresh();
        let offs = fill(&seg, 30);
        let end = seg.reserved_to();
        let mut damaged = BTreeSet::new();
        for _ in 0..(1 + next() % 4) {
            let at = HEADER_LEN + next() % (end - HEADER_LEN);
            flip(&dir, at);
            let rec = offs.iter().rposition(|o| *o <= at).unwrap_or(0) as u32;
            damaged.insert(rec);
        }
        let report = recover(&seg, true, true, |_, _, _| Ok(())).unwrap();
        let left = ids(&seg);
        // Damage to the last record is a torn tail (cut); elsewhere it is moved
        // aside. Either way every undamaged record before the first damage
        // after which recovery cut is still there.
        let cut_from = report
            .cut_at
            .map(|c| offs.iter().position(|o| *o >= c).unwrap_or(30) as u32)
            .unwrap_or(30);
        for i in 0..cut_from {
            if !damaged.contains(&i) {
                assert!(
                    left.contains(&i),
                    "round {round}: record {i} lost; damaged {damaged:?}, {report:?}"
                );
            }
        }
    }
}
