//! Recovery when a store is opened by its first user: a corrupt record in the
//! middle is moved aside (its bytes saved in the lane's `quarantine` file) and
//! counted, a torn tail is cut, everything intact stays readable, and records
//! appended after a cut tail are delivered even if consumers had skipped past
//! it. A process that opens a store others are using does not recover it.

use dashi_test_support::TestDir;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::segment::{Segment, Slot, HEADER_LEN};
use crate::{LocalOptions, LocalTransport};
use dashi_engine::{Connection, Queue};

fn dir(_tag: &str) -> TestDir {
    TestDir::new()
}

fn open(root: &Path) -> (LocalTransport, Connection) {
    let t = LocalTransport::open(root, LocalOptions::default()).unwrap();
    let c = Connection::with_transport(std::sync::Arc::new(t.clone()), Default::default());
    (t, c)
}

fn seg_path(root: &Path) -> PathBuf {
    root.join("q/q/0000000000000001/lane-0/0000000000000000.seg")
}

/// Offsets of the records in segment 0, in order.
fn records(root: &Path) -> Vec<u64> {
    let path = seg_path(root);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let seg = Segment::open(&path, f).unwrap();
    let mut out = Vec::new();
    let mut off = HEADER_LEN;
    while let Slot::Record { len, .. } = seg.read(off) {
        out.push(off);
        off += len;
    }
    out
}

fn flip(root: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg_path(root))
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
}

fn drain(c: &Connection) -> Vec<String> {
    let ch = c.channel().unwrap();
    let mut out = Vec::new();
    while let Some(d) = ch.get("q", Duration::ZERO).unwrap() {
        out.push(String::from_utf8(d.body().to_vec()).unwrap());
        d.ack().unwrap();
    }
    out
}

#[test]
fn the_first_opener_moves_corrupt_records_aside_and_cuts_torn_tails() {
    let d = dir("middle");
    let offs = {
        let (_, c) = open(&d);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        for i in 0..10 {
            ch.producer().publish(format!("m{i}"), "q").unwrap();
        }
        records(&d)
    };
    assert_eq!(offs.len(), 10);
    // Damage the payload of record 4, and leave a torn reservation at the
    // tail (as a writer that died mid-append before a power loss would).
    flip(&d, offs[4] + 70);
    {
        let path = seg_path(&d);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Segment::open(&path, f).unwrap().reserve_only(100);
    }
    let (t, c) = open(&d);
    let r = t.recovered();
    assert_eq!((r.moved, r.tails_cut, r.records), (1, 1, 9), "{r:?}");
    let q = std::fs::read(d.join("q/q/0000000000000001/lane-0/quarantine")).unwrap();
    assert!(
        String::from_utf8_lossy(&q).contains("checksum"),
        "quarantine file"
    );
    let got = drain(&c);
    let want: Vec<String> = (0..10)
        .filter(|i| *i != 4)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(got, want);
    // The store goes on: new records after the cut tail are delivered.
    c.channel()
        .unwrap()
        .producer()
        .publish("after", "q")
        .unwrap();
    assert_eq!(drain(&c), vec!["after"]);
    drop((t, c));
}

#[test]
fn records_appended_after_a_cut_tail_that_consumers_skipped_are_delivered() {
    let d = dir("skipped");
    let last = {
        let (_, c) = open(&d);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        for i in 0..3 {
            ch.producer().publish(format!("m{i}"), "q").unwrap();
        }
        *records(&d).last().unwrap()
    };
    // The last record goes bad; a consumer skips past it.
    flip(&d, last + 70);
    {
        // Another user holds the store, so this open does not recover.
        let lock = OpenOptions::new()
            .read(true)
            .open(d.join("open.lock"))
            .unwrap();
        let _held = crate::lock::FileLock::shared(lock).unwrap();
        let (t, c) = open(&d);
        assert_eq!(t.recovered().segments, 0, "not the only user: no recovery");
        assert_eq!(drain(&c), vec!["m0", "m1"]);
    }
    // Alone again: recovery cuts the bad tail; the consumer position moves
    // back with it, so the next record is not skipped.
    let (t, c) = open(&d);
    assert_eq!(t.recovered().tails_cut, 1);
    c.channel()
        .unwrap()
        .producer()
        .publish("next", "q")
        .unwrap();
    assert_eq!(drain(&c), vec!["next"]);
    drop((t, c));
}

#[test]
fn a_store_of_another_format_version_is_refused_untouched() {
    let d = dir("version");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("DASHI-LOCAL"), "dashi-local 1\n").unwrap();
    let e = LocalTransport::open(&d, LocalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dashi-local 1") && e.contains("dashi-local 3"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("DASHI-LOCAL")).unwrap(),
        "dashi-local 1\n"
    );
    assert!(!d.join("meta.json").exists());
}

#[test]
fn a_segment_of_another_layout_version_is_refused() {
    let d = dir("segversion");
    {
        let (_, c) = open(&d);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        ch.producer().publish("x", "q").unwrap();
    }
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg_path(&d))
        .unwrap();
    f.write_all_at(&99u32.to_le_bytes(), 8).unwrap();
    let e = Segment::open(&seg_path(&d), f).unwrap_err().to_string();
    assert!(
        e.contains("version 99") && e.contains("reads version 2"),
        "{e}"
    );
}
