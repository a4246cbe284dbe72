//! Segment space comes from `fallocate` on the store runtime's io_uring, and a
//! lane prepares its next segment in the background once the current one is
//! half full; without io_uring, `fsync=never` stores fall back to
//! `fallocate(2)` and `fsync` stores refuse to open; a disk that cannot hold a
//! segment is a clear error on either path.

use dashi_test_support::TestDir;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alloc::Allocator;
use crate::lane::Lane;
use crate::{Fsync, LocalOptions, LocalTransport};
use dashi_engine::{Connection, Queue};
use dashi_rt::{Runtime, RuntimeConfig};

fn dir(_tag: &str) -> TestDir {
    TestDir::new()
}

fn lane_dir(root: &Path) -> PathBuf {
    root.join("q/q/0000000000000001/lane-0")
}

fn seg(root: &Path, seq: u64) -> PathBuf {
    lane_dir(root).join(format!("{seq:016x}.seg"))
}

fn store(root: &Path, fsync: Fsync, no_ring: bool) -> Result<LocalTransport, dashi_engine::Error> {
    let mut opts = LocalOptions {
        fsync,
        segment_size: 64 << 10,
        ..LocalOptions::default()
    };
    opts.simulate_no_io_uring = no_ring;
    LocalTransport::open(root, opts)
}

fn publish_until_half_full(conn: &Connection) {
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    // 40 KiB of a 64 KiB segment: past half, not full.
    for _ in 0..40 {
        ch.producer().publish(vec![7u8; 900], "q").unwrap();
    }
}

#[test]
fn the_next_segment_is_prepared_in_the_background_through_the_ring() {
    let d = dir("background");
    let t = store(&d, Fsync::Never, false).unwrap();
    assert!(t.allocates_on_ring());
    let conn = Connection::with_transport(Arc::new(t), Default::default());
    publish_until_half_full(&conn);
    assert!(seg(&d, 0).exists());
    let until = Instant::now() + Duration::from_secs(20);
    while !seg(&d, 1).exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seg(&d, 1).exists(), "segment 1 was not prepared");
    // Allocated (not sparse) and formatted, with nothing left half-made.
    let meta = std::fs::metadata(seg(&d, 1)).unwrap();
    assert_eq!(meta.len(), 64 << 10);
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 >= 64 << 10, "not allocated");
    let head = std::fs::read(seg(&d, 1)).unwrap();
    assert_eq!(&head[..8], b"DASHISEG");
    let tmp = std::fs::read_dir(lane_dir(&d))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .count();
    assert_eq!(tmp, 0);
    // Writing on into it works and nothing was lost or reordered.
    let ch = conn.channel().unwrap();
    for i in 0..100u32 {
        ch.producer()
            .publish(i.to_le_bytes().to_vec(), "q")
            .unwrap();
    }
    let mut n = 0;
    let mut last = None;
    while let Some(m) = ch.get("q", Duration::ZERO).unwrap() {
        if m.body().len() == 4 {
            let i = u32::from_le_bytes(m.body()[..].try_into().unwrap());
            assert_eq!(i, last.map_or(0, |l| l + 1));
            last = Some(i);
        }
        m.ack().unwrap();
        n += 1;
    }
    assert_eq!(n, 140);
}

#[test]
fn without_io_uring_never_falls_back_and_fsync_refuses() {
    let d = dir("fallback");
    let t = store(&d, Fsync::Never, true).unwrap();
    assert!(!t.allocates_on_ring());
    let conn = Connection::with_transport(Arc::new(t), Default::default());
    publish_until_half_full(&conn);
    // No background preparation: the writer that needs segment 1 makes it.
    assert!(!seg(&d, 1).exists());
    let ch = conn.channel().unwrap();
    for _ in 0..40 {
        ch.producer().publish(vec![7u8; 900], "q").unwrap();
    }
    assert!(seg(&d, 1).exists());
    assert_eq!(conn.stats().queue("q").unwrap().messages, 80);
    let e = store(&dir("fallback-sync"), Fsync::Always, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("io_uring"), "{e}");
}

#[test]
fn a_segment_the_disk_cannot_hold_is_a_clear_error_through_the_ring() {
    // A lane's first segment is 1 MiB (whatever the segment size): a
    // 512 KiB filesystem cannot hold it.
    let Some(fs) = dashi_test_support::Tmpfs::make(512) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let d = fs.mount.join("lane");
    std::fs::create_dir(&d).unwrap();
    let rt = Arc::new(Runtime::start(RuntimeConfig::default().with_cores(1)).unwrap());
    let storage = crate::lane::Storage::Files {
        dir: d.clone(),
        alloc: Allocator::on_ring(rt, Arc::new(crate::cut::CutFlag::new(&d))),
    };
    let lane = Lane::open(storage, 0, 64 << 20).unwrap();
    let e = lane.append(b"x", 1, 1, 0).unwrap_err().to_string();
    assert!(e.contains("cannot allocate"), "{e}");
    assert!(e.contains("(the disk or the quota is full)"), "{e}");
    let leftovers = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".seg"))
        .count();
    assert_eq!(leftovers, 0);
}
