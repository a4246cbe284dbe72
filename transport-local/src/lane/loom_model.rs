//! Model checks of the lane protocol with loom: the real `Lane` and
//! `Segment` code, over modelled shared memory (`mem.rs` under `--cfg
//! loom`), several `Lane` values standing for several processes sharing one
//! lane. Every interleaving (up to `LOOM_MAX_PREEMPTIONS`) of appends,
//! rollovers, claims, restores, reclaims and padding is explored, and each
//! model checks the at-least-once and no-unmarked-duplicate rules at the end.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p
//! dashi-transport-local --lib --release --target-dir target/loom loom`

use super::{Claimed, Lane, ModelDisk, Storage};
use crate::segment::claim::{ACKED, DEAD};
use crate::segment::{record_len, HEADER_LEN};

/// Three 8-byte records per segment: a rollover after the third.
const SEGMENT: u64 = HEADER_LEN + 3 * 72;

fn process(disk: &std::sync::Arc<ModelDisk>) -> Lane {
    Lane::open(Storage::Model(disk.clone()), 0, disk.segment_size).unwrap()
}

fn id(c: &Claimed) -> u64 {
    let p = c.segment.payload(c.pos.off, &c.meta);
    u64::from_le_bytes(p[..8].try_into().unwrap())
}

/// Claims until nothing is ready; (id, redelivered) in order.
fn drain(lane: &Lane, owner: u32) -> Vec<(u64, bool)> {
    let mut out = Vec::new();
    while let Some(c) = lane.claim(owner).unwrap() {
        out.push((id(&c), c.redelivered));
        assert!(lane.settle(&c, owner, ACKED));
    }
    out
}

/// Two producer processes append two records each (a rollover on the way)
/// while a consumer process claims: every record is claimed exactly once,
/// each producer's in its order.
#[test]
fn appends_across_a_rollover_are_each_claimed_once() {
    assert_eq!(record_len(8), 72);
    loom::model(|| {
        let disk = ModelDisk::new(SEGMENT);
        let producers: Vec<_> = (0..2u64)
            .map(|w| {
                let disk = disk.clone();
                loom::thread::spawn(move || {
                    let lane = process(&disk);
                    for i in 0..2u64 {
                        lane.append(&(w * 10 + i).to_le_bytes(), 8, w + 1, 0)
                            .unwrap();
                    }
                })
            })
            .collect();
        let consumer = process(&disk);
        let mut got = Vec::new();
        if let Some(c) = consumer.claim(9).unwrap() {
            got.push((id(&c), c.redelivered));
            assert!(consumer.settle(&c, 9, ACKED));
        }
        for p in producers {
            p.join().unwrap();
        }
        got.extend(drain(&consumer, 9));
        let mut ids: Vec<u64> = got.iter().map(|g| g.0).collect();
        for w in 0..2 {
            let mine: Vec<u64> = ids.iter().copied().filter(|i| i / 10 == w).collect();
            assert_eq!(mine, [w * 10, w * 10 + 1], "{got:?}");
        }
        ids.sort_unstable();
        assert_eq!(ids, [0, 1, 10, 11]);
        assert!(got.iter().all(|g| !g.1));
    });
}

/// Two consumer processes claiming runs while a producer appends across a
/// rollover: a run moves `next` once for its stretch, so the other
/// process's run may start behind records already claimed; it passes them.
/// Every record is claimed exactly once, each run's in log order.
#[test]
fn runs_racing_appends_and_each_other_claim_each_record_once() {
    loom::model(|| {
        let disk = ModelDisk::new(SEGMENT);
        let setup = process(&disk);
        for i in 0..2u64 {
            setup.append(&i.to_le_bytes(), 8, 1, 0).unwrap();
        }
        let d2 = disk.clone();
        let producer = loom::thread::spawn(move || {
            let lane = process(&d2);
            for i in 2..4u64 {
                lane.append(&i.to_le_bytes(), 8, 1, 0).unwrap();
            }
        });
        let d3 = disk.clone();
        let other = loom::thread::spawn(move || {
            let lane = process(&d3);
            let mut run = Vec::new();
            lane.claim_run(2, 3, &mut run).unwrap();
            for c in &run {
                assert!(lane.settle(c, 2, ACKED));
            }
            run.iter().map(id).collect::<Vec<u64>>()
        });
        let me = process(&disk);
        let mut run = Vec::new();
        me.claim_run(1, 3, &mut run).unwrap();
        for c in &run {
            assert!(me.settle(c, 1, ACKED));
        }
        let mut all: Vec<u64> = run.iter().map(id).collect();
        producer.join().unwrap();
        let theirs = other.join().unwrap();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert!(theirs.windows(2).all(|w| w[0] < w[1]), "{theirs:?}");
        all.extend(theirs);
        all.extend(drain(&me, 1).into_iter().map(|(i, redelivered)| {
            assert!(!redelivered);
            i
        }));
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3], "a record lost or claimed twice");
    });
}

/// A writer's reservation padded over by another process (taken for dead)
/// while the writer commits: exactly one wins; a writer that loses appends
/// again, so the record is delivered exactly once either way.
#[test]
fn padding_racing_a_commit_loses_nothing_and_duplicates_nothing() {
    loom::model(|| {
        let disk = ModelDisk::new(SEGMENT);
        let d2 = disk.clone();
        let writer = loom::thread::spawn(move || {
            process(&d2).append(&7u64.to_le_bytes(), 8, 1, 0).unwrap();
        });
        let other = process(&disk);
        // Whatever is pending at `next` is taken for a dead writer's.
        let _ = other
            .unblock(
                |_| false,
                std::time::Duration::ZERO,
                std::time::Duration::ZERO,
            )
            .unwrap();
        writer.join().unwrap();
        assert_eq!(drain(&other, 9), [(7, false)]);
    });
}

/// A restore racing a consumer's walk from the restore mark: the walk
/// passes a record still claimed, the record is restored right after, and
/// the walk (finding nothing) clears the mark. The restore is never
/// stranded: it either lowers the mark after the clear, or the consumer sees
/// `restored` move and puts the mark back.
#[test]
fn a_restore_racing_a_claim_walk_is_never_stranded() {
    loom::model(|| {
        let disk = ModelDisk::new(SEGMENT);
        let holder = process(&disk);
        for i in 0..3u64 {
            holder.append(&i.to_le_bytes(), 8, 1, 0).unwrap();
        }
        let a = holder.claim(1).unwrap().unwrap();
        let b = holder.claim(1).unwrap().unwrap();
        // Record 0 comes back and is taken again: the mark stays at it.
        assert!(holder.restore(&a, 1, true));
        let first = process(&disk);
        let again = first.claim(2).unwrap().unwrap();
        assert_eq!((id(&again), again.redelivered), (0, true));
        let restorer = loom::thread::spawn(move || assert!(holder.restore(&b, 1, true)));
        // This consumer's walk from the mark passes record 1, maybe before
        // its restore, and finds nothing restored there.
        let second = process(&disk);
        let mut got = Vec::new();
        if let Some(c) = second.claim(3).unwrap() {
            got.push((id(&c), c.redelivered));
            assert!(second.settle(&c, 3, ACKED));
        }
        restorer.join().unwrap();
        got.extend(drain(&second, 3));
        got.sort_unstable();
        assert_eq!(got, [(1, true), (2, false)], "record 1 stranded or doubled");
        assert!(first.settle(&again, 2, ACKED));
    });
}

/// The owner settling a claim while another process reclaims it (the owner
/// looked dead): exactly one of them wins, and a reclaimed record is
/// delivered again, flagged; an acked one never is.
#[test]
fn a_settle_racing_a_reclaim_is_one_or_the_other() {
    loom::model(|| {
        let disk = ModelDisk::new(SEGMENT);
        let owner = process(&disk);
        owner.append(&5u64.to_le_bytes(), 8, 1, 0).unwrap();
        let held = owner.claim(1).unwrap().unwrap();
        let settler = loom::thread::spawn(move || owner.settle(&held, 1, DEAD));
        let other = process(&disk);
        let reclaimed = other.reclaim(|_| false, 2, 0, 0).unwrap();
        let settled = settler.join().unwrap();
        assert!(settled ^ (reclaimed == 1), "exactly one wins");
        let again = drain(&other, 2);
        if settled {
            assert!(again.is_empty(), "{again:?}");
        } else {
            assert_eq!(again, [(5, true)]);
        }
    });
}
