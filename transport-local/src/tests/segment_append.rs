//! Appending to a segment: records round-trip, threads never overlap, a full
//! segment seals with padding, and a dead writer's reservation is padded over
//! (exactly one of commit and pad wins).

use std::sync::Arc;

use super::common::{fresh_segment as fresh, reopen};

use crate::segment::{record_len, AppendError, Segment, Slot, HEADER_LEN};

fn scan(seg: &Segment) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = HEADER_LEN;
    loop {
        match seg.read(off) {
            Slot::Record { meta, len } => {
                out.push(seg.payload(off, &meta));
                off += len;
            }
            Slot::Padding { len } | Slot::Moved { len } => off += len,
            Slot::End => return out,
            other => panic!("unexpected {other:?} at {off}"),
        }
    }
}

#[test]
fn records_round_trip_and_reopen() {
    let (dir, seg) = fresh(1 << 16);
    let a = seg.append(b"hello", 3, 42 << 32, 1_000).unwrap();
    let b = seg.append(&[9u8; 100], 0, 42 << 32, 2_000).unwrap();
    assert_eq!(a, HEADER_LEN);
    assert_eq!(b, HEADER_LEN + record_len(5));
    match seg.read(a) {
        Slot::Record { meta, len } => {
            assert_eq!(
                (meta.body_len, meta.timestamp_ns, meta.writer, meta.offset),
                (3, 1_000, 42 << 32, a)
            );
            assert_eq!(len, 72);
            assert_eq!(seg.payload(a, &meta), b"hello");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seg.read(seg.reserved_to()), Slot::End);
    assert_eq!(seg.header().lane, 0);
    drop(seg);
    let again = reopen(&dir.join("0.seg"));
    assert_eq!(scan(&again), vec![b"hello".to_vec(), vec![9u8; 100]]);
}

#[test]
fn a_full_segment_seals_with_padding() {
    let (_dir, seg) = fresh(8192);
    let mut n = 0;
    let err = loop {
        match seg.append(&[1u8; 200], 0, 1, 0) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, AppendError::Full);
    assert!(seg.is_sealed());
    assert_eq!(n, (8192 - HEADER_LEN) / record_len(200));
    assert_eq!(scan(&seg).len() as u64, n);
    assert_eq!(seg.append(&[0u8; 10], 0, 1, 0), Err(AppendError::Full));
    assert_eq!(
        seg.append(&[0u8; 8192], 0, 1, 0),
        Err(AppendError::TooLarge(8256))
    );
}

#[test]
fn threads_append_without_overlap_in_order_per_thread() {
    let (_dir, seg) = fresh(4 << 20);
    let seg = Arc::new(seg);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let seg = seg.clone();
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    let mut p = t.to_le_bytes().to_vec();
                    p.extend_from_slice(&i.to_le_bytes());
                    p.resize(8 + (i % 50) as usize, 0xEE);
                    seg.append(&p, 0, u64::from(t), 0).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = scan(&seg);
    assert_eq!(all.len(), 8000);
    for t in 0..4u32 {
        let seqs: Vec<u32> = all
            .iter()
            .filter(|p| p[..4] == t.to_le_bytes())
            .map(|p| u32::from_le_bytes(p[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, (0..2000).collect::<Vec<_>>());
    }
}

#[test]
fn a_dead_writers_reservation_is_padded_and_readers_move_on() {
    let (_dir, seg) = fresh(1 << 16);
    seg.append(b"before", 0, 1, 0).unwrap();
    let stuck = seg.reserve_only(40);
    seg.append(b"after", 0, 2, 0).unwrap();
    assert_eq!(seg.read(stuck), Slot::Pending);
    assert!(seg.pad_over(stuck));
    assert!(matches!(seg.read(stuck), Slot::Padding { len } if len == record_len(40)));
    assert_eq!(scan(&seg), vec![b"before".to_vec(), b"after".to_vec()]);
    // A second pad (or a late commit) loses: the slot is settled.
    assert!(!seg.pad_over(stuck));
}
