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
    assert_eq!(
        seg.read(stuck),
        Slot::Pending {
            len: record_len(40)
        }
    );
    assert!(seg.pad(stuck));
    assert!(matches!(seg.read(stuck), Slot::Padding { len } if len == record_len(40)));
    assert_eq!(scan(&seg), vec![b"before".to_vec(), b"after".to_vec()]);
    // A second pad (or a late commit) loses: the slot is settled.
    assert!(!seg.pad(stuck));
}

/// Defect 8 of the log-protocol review: commit and padding race on one word,
/// so exactly one wins, and a record is never read as padding (or the
/// reverse), however often it is tried.
#[test]
fn commit_and_padding_race_on_one_word() {
    let (_dir, seg) = fresh(4 << 20);
    let seg = Arc::new(seg);
    let (mut committed, mut padded) = (0, 0);
    for i in 0..2000u32 {
        let r = seg.reserve_and_write(&i.to_le_bytes(), 0, 1);
        let s2 = seg.clone();
        let padder = std::thread::spawn(move || s2.pad(r.0));
        let won = seg.commit_reserved(r);
        let pad_won = padder.join().unwrap();
        assert!(won ^ pad_won, "exactly one of commit and padding wins");
        match seg.read(r.0) {
            Slot::Record { .. } => {
                assert!(won);
                committed += 1;
            }
            Slot::Padding { len } => {
                assert!(pad_won && len == r.1);
                padded += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(committed + padded, 2000);
}

/// A tail word lowered (a damaged or edited file) never makes an append
/// write over committed records: the append refuses and names the segment.
#[test]
fn a_lowered_tail_never_overwrites_records() {
    let (_dir, seg) = fresh(1 << 16);
    for i in 0..10u8 {
        seg.append(&[i; 100], 0, 1, 0).unwrap();
    }
    let before = scan(&seg);
    // A record of zeros last; then the tail word edited down by hand (a
    // plain number, as a careless edit leaves it), into the middle of
    // another record's payload.
    let zeros = seg.append(&[0u8; 200], 0, 1, 0).unwrap();
    seg.set_tail_raw(zeros + 64 + 64);
    let e = seg.append(&[9u8; 100], 0, 1, 0).unwrap_err();
    assert!(matches!(e, AppendError::Damaged { .. }), "{e:?}");
    assert!(e.to_string().contains("damaged"), "{e}");
    assert_eq!(scan(&seg), before_with(&before, &[0u8; 200]));
    // A well-formed tail into another record's payload: what is there is
    // not a free word (nor a record to step over), so nothing is written.
    let second = HEADER_LEN + seg_record_len(100);
    seg.set_tail(second + 64 + 8);
    let e = seg.append(&[9u8; 100], 0, 1, 0).unwrap_err();
    assert!(matches!(e, AppendError::Damaged { .. }), "{e:?}");
    // Onto a record boundary: the writer steps past the records instead.
    seg.set_tail(HEADER_LEN);
    let off = seg.append(&[7u8; 100], 0, 1, 0).unwrap();
    assert!(off > zeros);
    let after = scan(&seg);
    assert_eq!(&after[..before.len()], &before[..]);
    assert_eq!(after.len(), before.len() + 2);
}

fn seg_record_len(payload: usize) -> u64 {
    record_len(payload)
}

fn before_with(before: &[Vec<u8>], extra: &[u8]) -> Vec<Vec<u8>> {
    let mut v = before.to_vec();
    v.push(extra.to_vec());
    v
}

#[test]
fn a_new_record_starts_with_clear_consumer_words_whatever_was_there() {
    use crate::segment::claim::{Claim, ACKED};
    let (_dir, seg) = fresh(1 << 16);
    // What a power loss can leave past the tail: the claim and lease words
    // of a record that did not survive (acked, with a lease).
    let stale = Claim {
        state: ACKED,
        redelivered: false,
        generation: 1,
        owner: 7,
    }
    .encode();
    seg.claim_word(HEADER_LEN)
        .store(stale, std::sync::atomic::Ordering::Release);
    seg.deadline_word(HEADER_LEN)
        .store(99 << 16 | 1, std::sync::atomic::Ordering::Release);
    let off = seg.append(b"new", 3, 1, 0).unwrap();
    assert_eq!(off, HEADER_LEN);
    let ready = Claim::decode(
        seg.claim_word(off)
            .load(std::sync::atomic::Ordering::Acquire),
    );
    assert_eq!(ready.map(|c| c.state), Some(crate::segment::claim::READY));
    assert_eq!(
        seg.deadline_word(off)
            .load(std::sync::atomic::Ordering::Acquire),
        0
    );
}

/// Kibibytes of this process's memory mapped at `addr` (its `Rss` line in
/// `/proc/self/smaps`).
#[cfg(not(loom))]
fn rss_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_it = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    in_it = (lo..hi).contains(&addr);
                    continue;
                }
            }
        }
        if in_it {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("no mapping at {addr:#x}");
}

/// A consumer maps the pages it is about to claim from in one call: only
/// reserved ones, a stretch at a time, without changing a byte; on a file
/// cut short under it the call is refused, and the process lives (touching
/// those pages would be a SIGBUS).
#[cfg(not(loom))]
#[test]
fn claims_map_reserved_pages_ahead_and_survive_a_file_cut_short() {
    let (dir, seg) = fresh(4 << 20);
    for i in 0..8000u32 {
        seg.append(&[i as u8; 200], 0, 1, 0).unwrap();
    }
    let end = seg.reserved_to();
    assert!(end > 2 << 20, "{end}");
    let reader = reopen(&dir.join("0.seg"));
    let at = reader.mapped_at();
    let mapped = rss_kib(at);
    // Its header, and what the kernel maps around a fault (64 KiB).
    assert!(
        mapped <= 64,
        "a fresh mapping holds its header only: {mapped}"
    );
    let first = (HEADER_LEN + 256 * 1024) & !4095;
    reader.prepare_claims(HEADER_LEN);
    assert_eq!(reader.prepared_to(), first);
    assert!(rss_kib(at) >= 256, "{}", rss_kib(at));
    // Within half a stretch of what is mapped: nothing more.
    reader.prepare_claims(100 * 1024);
    assert_eq!(reader.prepared_to(), first);
    assert!(rss_kib(at) < 300, "{}", rss_kib(at));
    // Further on: the stretch from there (not the pages passed before it).
    let had = rss_kib(at);
    reader.prepare_claims(400 * 1024);
    assert_eq!(reader.prepared_to(), 656 * 1024);
    assert!(
        (had + 256..had + 300).contains(&rss_kib(at)),
        "{had} -> {}",
        rss_kib(at)
    );
    // Never past what is reserved.
    reader.prepare_claims(end - 4096);
    assert_eq!(reader.prepared_to(), end & !4095);
    assert_eq!(scan(&reader), scan(&seg), "mapping ahead changed a byte");
    // The file cut short under a mapping made before: mapping ahead past
    // its end is refused, not a crash.
    let before_cut = reopen(&dir.join("0.seg"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("0.seg"))
        .unwrap();
    f.set_len(64 * 1024).unwrap();
    before_cut.prepare_claims(1 << 20);
    assert_eq!(before_cut.prepared_to(), (1 << 20) + 256 * 1024);
}

/// A mapped segment keeps no descriptor; the file a sync opens by path is
/// the one mapped or none: a file put in its place, or a path gone
/// (retention deleted the segment), is an error naming the segment, never
/// a sync of another file taken for this one.
#[test]
fn a_segment_is_opened_again_to_sync_only_if_its_file_is_the_one_mapped() {
    let (dir, seg) = fresh(64 * 1024);
    let path = dir.join("0.seg");
    let seg = Arc::new(seg);
    // The same file: opened once, then kept.
    let f = seg.file().unwrap().unwrap();
    assert!(Arc::ptr_eq(&f, &seg.file().unwrap().unwrap()));
    // Another file of the same name: refused.
    let mapped = reopen(&path);
    std::fs::rename(&path, dir.join("old.seg")).unwrap();
    std::fs::copy(dir.join("old.seg"), &path).unwrap();
    let e = mapped.file().unwrap_err().to_string();
    assert!(
        e.contains("0.seg") && e.contains("no longer the one mapped"),
        "{e}"
    );
    // No file at the path: refused.
    std::fs::remove_file(&path).unwrap();
    let mapped = reopen(&dir.join("old.seg"));
    std::fs::remove_file(dir.join("old.seg")).unwrap();
    let e = mapped.file().unwrap_err().to_string();
    assert!(e.contains("old.seg") && e.contains("No such file"), "{e}");
    // The mapping outlives its file (descriptors: the hardening tests).
    let off = mapped.append(b"still mapped", 12, 1, 0).unwrap();
    assert!(matches!(mapped.read(off), Slot::Record { .. }));
}
