//! Power cuts at the lane level, seeded: what a disk holds after one is, for
//! every 512-byte sector of every file, either what the last sync left or
//! anything written since (a disk writes its cache back in any order, and
//! the state page is never synced). Recovery must keep every record that was
//! synced, and every record it counts ready must reach a consumer: the
//! seeded power-cut runs of `dashi torture` found a cut after which recovery
//! counted records that consumers could not reach until the next lone open.
//! Writers die between a reservation and its commit too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dashi_test_support::TestDir;

use std::sync::atomic::Ordering::Acquire;

use crate::lane::{at, Lane};
use crate::segment::claim::ACKED;

const SEG: u64 = 8192;
const SECTOR: usize = 512;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A payload naming record `i`, 8 to 400 bytes long.
fn payload(i: u32, rng: &mut Rng) -> Vec<u8> {
    i.to_le_bytes().repeat(2 + rng.below(99) as usize)
}

/// Every file of the lane directory and its bytes.
fn files(d: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Appends `n` records numbered from `from`, each of a random size.
fn append(lane: &Lane, from: u32, n: u32, rng: &mut Rng) {
    for i in from..from + n {
        lane.append(&payload(i, rng), 4, 1, 0).unwrap();
    }
}

/// The cut: every sector written since `synced` holds what the sync left
/// or, at random, what was written later: at the moment of `between` (an
/// earlier write-back of the page) or the last write. A file made since
/// the sync keeps its size, its lost sectors read as zeros (a journal that
/// commits metadata eagerly).
fn cut(
    d: &Path,
    synced: &BTreeMap<String, Vec<u8>>,
    between: &BTreeMap<String, Vec<u8>>,
    rng: &mut Rng,
    keep_per_mille: u64,
) {
    let empty = Vec::new();
    for (name, now) in files(d) {
        let before = synced.get(&name).unwrap_or(&empty);
        let middle = between.get(&name).unwrap_or(&empty);
        let mut disk = now.clone();
        for (s, sector) in disk.chunks_mut(SECTOR).enumerate() {
            let from = if rng.below(1000) >= keep_per_mille {
                before
            } else if rng.below(2) == 0 {
                middle
            } else {
                continue;
            };
            let old = from.get(s * SECTOR..).unwrap_or(&[]);
            for (k, b) in sector.iter_mut().enumerate() {
                *b = old.get(k).copied().unwrap_or(0);
            }
        }
        if disk != now {
            std::fs::write(d.join(&name), disk).unwrap();
        }
    }
}

/// Takes the next `n` records for owner 1 and acks them; retention may
/// then delete the segments they empty.
fn ack(lane: &Lane, n: u64, rng: &mut Rng) -> Vec<u32> {
    let mut acked = Vec::new();
    for _ in 0..n {
        let Some(c) = lane.claim(1).unwrap() else {
            break;
        };
        assert!(lane.settle(&c, 1, ACKED));
        acked.push(claimed_id(&c));
    }
    if rng.below(2) == 0 {
        lane.retire().unwrap();
    }
    acked
}

fn claimed_id(c: &crate::lane::Claimed) -> u32 {
    let p = c.segment.payload(c.pos.off, &c.meta);
    u32::from_le_bytes(p[..4].try_into().unwrap())
}

#[test]
fn after_any_power_cut_synced_records_stay_and_every_counted_one_is_reachable() {
    for seed in 1..=500u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let d = TestDir::new();
        let lane = Lane::open_dir(&d, 0, SEG).unwrap();
        // Records before the sync (confirmed), some of them acked, then
        // more, across several segments, that the cut may take, and more
        // acks, which it may take too (consumer state is not synced), and
        // claims still held.
        let synced_n = 1 + rng.below(120) as u32;
        append(&lane, 0, synced_n, &mut rng);
        let acked_before = ack(&lane, rng.below(u64::from(synced_n) + 1), &mut rng);
        let synced = files(&d);
        let more = rng.below(160) as u32;
        let first_half = more / 2;
        append(&lane, synced_n, first_half, &mut rng);
        // A writer that dies between its reservation and its commit, with
        // or without its record written, before the records after it.
        if rng.below(3) == 0 {
            let write = lane.shared_word(at::WRITE_SEG).load(Acquire);
            let seg = lane.segment(write).unwrap().unwrap();
            if seg.reserved_to() + 1024 < seg.header().capacity {
                if rng.below(2) == 0 {
                    seg.reserve_only(200);
                } else {
                    seg.reserve_and_write(&200_000u32.to_le_bytes().repeat(9), 4, 3);
                }
            }
        }
        let between = files(&d);
        append(&lane, synced_n + first_half, more - first_half, &mut rng);
        let acked_after = ack(&lane, rng.below(u64::from(synced_n + more) + 1), &mut rng);
        // Some taken and not settled when the power goes: they come back.
        let held: Vec<_> = (0..rng.below(20))
            .map_while(|_| lane.claim(2).unwrap())
            .collect();
        drop(held);
        drop(lane);
        let keep = [0, 500, 900][rng.below(3) as usize];
        cut(&d, &synced, &between, &mut rng, keep);

        let lane = Lane::open_dir(&d, 0, SEG).unwrap();
        lane.recover().unwrap();
        let (ready, _, unacked) = lane.counts();
        let got: Vec<u32> = std::iter::from_fn(|| lane.claim(1).unwrap())
            .map(|c| claimed_id(&c))
            .collect();
        let what = format!(
            "seed {seed}: {synced_n} synced ({} acked), {more} after, keep {keep}/1000",
            acked_before.len()
        );
        assert_eq!(unacked, 0, "{what}");
        assert_eq!(
            ready,
            got.len() as u64,
            "{what}: the counts say {ready} ready, consumers reached {}",
            got.len()
        );
        let unique: BTreeSet<u32> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "{what}: a record came twice");
        // Records acked after the sync may be gone or back: either is fine.
        for i in acked_before.len() as u32..synced_n {
            if acked_after.contains(&i) {
                continue;
            }
            assert!(unique.contains(&i), "{what}: synced record {i} lost");
        }
        for i in &acked_before {
            assert!(
                !unique.contains(i),
                "{what}: record {i}, acked and synced, came back"
            );
        }
        assert!(
            got.iter().all(|&i| i < synced_n + more),
            "{what}: a record nobody wrote"
        );
        // In log order, so in publish order (one writer).
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{what}: out of order");
        // Publishing goes on, and what is published is delivered.
        lane.append(&100_000u32.to_le_bytes().repeat(4), 4, 1, 0)
            .unwrap();
        let c = lane.claim(1).unwrap();
        assert_eq!(c.map(|c| claimed_id(&c)), Some(100_000), "{what}");
    }
}
