//! Power cuts at the lane level, seeded: what a disk holds after one is, for
//! every 512-byte sector of every file, either what the last sync left or
//! anything written since (a disk writes its cache back in any order, and
//! the state page is never synced). Recovery must keep every record that was
//! synced, and every record it counts ready must reach a consumer: the
//! seeded power-cut runs of `dashi torture` found a cut after which recovery
//! counted records that consumers could not reach until the next lone open.
//! Writers die between a reservation and its commit too. The same at the
//! level of a store (queues, priority lanes, and the pages it never syncs).

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

/// Every file under `root` (relative path) and its bytes.
fn tree(root: &Path) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                // (A file a background thread of the store removed
                // meanwhile, a half-made segment, is not there to keep.)
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                if let Ok(bytes) = std::fs::read(e.path()) {
                    out.insert(rel, bytes);
                }
            }
        }
    }
    out
}

/// Files the store syncs (segments, and files written whole, synced and
/// renamed into place); the rest (state, control and figures pages) never
/// are, so what reaches the disk of them is whatever the OS wrote back.
fn synced_kind(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name.ends_with(".seg") || ["meta.json", "DASHI-LOCAL", "name"].contains(&&*name)
}

/// [`cut`] over a whole store; pages the store never syncs read back as
/// zeros (never written back) when `unsynced_lost`.
fn cut_store(
    root: &Path,
    synced: &BTreeMap<std::path::PathBuf, Vec<u8>>,
    rng: &mut Rng,
    keep_per_mille: u64,
    unsynced_lost: bool,
) {
    let empty = Vec::new();
    for (rel, now) in tree(root) {
        let lost = unsynced_lost && !synced_kind(&rel);
        let before = if lost {
            &empty
        } else {
            synced.get(&rel).unwrap_or(&empty)
        };
        let mut disk = now.clone();
        for (s, sector) in disk.chunks_mut(SECTOR).enumerate() {
            if !lost && rng.below(1000) < keep_per_mille {
                continue;
            }
            let old = before.get(s * SECTOR..).unwrap_or(&[]);
            for (k, b) in sector.iter_mut().enumerate() {
                *b = old.get(k).copied().unwrap_or(0);
            }
        }
        if disk != now {
            std::fs::write(root.join(&rel), disk).unwrap();
        }
    }
}

/// The same at the level of a store: a queue with priority lanes, 64 KiB
/// segments, acks before and after the sync, the pages the store never
/// syncs kept, torn or lost. After the cut the first open recovers; every
/// message published before the sync and not acked then is delivered, none
/// acked before it comes back, and the depth the queue reports is what a
/// consumer gets.
#[test]
fn after_any_power_cut_a_store_delivers_what_was_synced_and_what_it_counts() {
    use dashi_engine::{Connection, Message, Queue};

    use crate::{LocalOptions, LocalTransport};

    let queue = || Queue::new("q").with_max_priority(3);
    let open = |root: &Path| {
        let options = LocalOptions {
            segment_size: 64 << 10,
            ..LocalOptions::default()
        };
        let t = LocalTransport::open(root, options).unwrap();
        let c = Connection::with_transport(std::sync::Arc::new(t.clone()), Default::default());
        (t, c)
    };
    let take = |c: &Connection, n: u64| -> Vec<u32> {
        let ch = c.channel().unwrap();
        let mut out = Vec::new();
        while (out.len() as u64) < n {
            let Some(d) = ch.get("q", std::time::Duration::ZERO).unwrap() else {
                break;
            };
            out.push(u32::from_le_bytes(d.body()[..4].try_into().unwrap()));
            d.ack().unwrap();
        }
        out
    };
    let mut most_segments = 0;
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        let d = TestDir::new();
        let (t, c) = open(&d);
        let ch = c.channel().unwrap();
        ch.queue_declare(&queue()).unwrap();
        let publish = |from: u32, n: u32, rng: &mut Rng| {
            for i in from..from + n {
                let m = Message::new(payload(i, rng)).with_priority(rng.below(4) as u8);
                ch.producer().publish(m, "q").unwrap();
            }
        };
        let synced_n = 1 + rng.below(1500) as u32;
        publish(0, synced_n, &mut rng);
        let acked_before = take(&c, rng.below(u64::from(synced_n) + 1));
        let synced = tree(&d);
        let more = rng.below(1500) as u32;
        publish(synced_n, more, &mut rng);
        let acked_after = take(&c, rng.below(u64::from(synced_n + more) + 1));
        let lanes = tree(&d)
            .into_keys()
            .filter(|p| p.ends_with("state"))
            .count();
        let segments = tree(&d)
            .into_keys()
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .count();
        most_segments = most_segments.max(segments.saturating_sub(lanes));
        drop(ch);
        drop(c);
        drop(t);
        let keep = [0, 500, 900][rng.below(3) as usize];
        let unsynced_lost = rng.below(3) == 0;
        cut_store(&d, &synced, &mut rng, keep, unsynced_lost);

        let (t, c) = open(&d);
        let what = format!(
            "seed {seed}: {synced_n} synced ({} acked), {more} after ({} acked), \
             keep {keep}/1000, unsynced pages lost: {unsynced_lost}",
            acked_before.len(),
            acked_after.len()
        );
        let depth = c
            .channel()
            .unwrap()
            .queue_declare(&queue())
            .unwrap()
            .message_count;
        let got = take(&c, u64::MAX);
        assert_eq!(depth, got.len() as u64, "{what}: depth against delivered");
        let unique: BTreeSet<u32> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "{what}: a message came twice");
        let acked_before: BTreeSet<u32> = acked_before.into_iter().collect();
        let acked_after: BTreeSet<u32> = acked_after.into_iter().collect();
        for i in 0..synced_n {
            if acked_before.contains(&i) {
                assert!(
                    !unique.contains(&i),
                    "{what}: {i}, acked and synced, came back"
                );
            } else if !acked_after.contains(&i) {
                assert!(unique.contains(&i), "{what}: synced message {i} lost");
            }
        }
        assert!(
            got.iter().all(|&i| i < synced_n + more),
            "{what}: a message nobody published"
        );
        drop(c);
        drop(t);
    }
    // The runs cross segments (more segments than lanes).
    assert!(most_segments >= 4, "{most_segments}");
}
