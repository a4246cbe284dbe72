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
    drain_queue(c, "q")
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

/// A store of format 3 (all its segments of layout 2) opens: its marker
/// says format 4 from then on, and its messages are delivered.
#[test]
fn a_store_of_format_3_is_marked_format_4_when_opened() {
    let d = dir("format3");
    {
        let (_t, c) = open(&d);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        ch.producer().publish("a", "q").unwrap();
    }
    std::fs::write(d.join("DASHI-LOCAL"), "dashi-local 3\n").unwrap();
    let (_t, c) = open(&d);
    assert_eq!(
        std::fs::read_to_string(d.join("DASHI-LOCAL")).unwrap(),
        "dashi-local 4\n"
    );
    assert_eq!(drain(&c), ["a"]);
    let left: Vec<_> = std::fs::read_dir(&*d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_store_of_another_format_version_is_refused_untouched() {
    let d = dir("version");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("DASHI-LOCAL"), "dashi-local 1\n").unwrap();
    let e = LocalTransport::open(&d, LocalOptions::default()).unwrap_err();
    assert!(
        matches!(&e, dashi_engine::Error::Store(f) if f.kind == dashi_engine::FailureKind::Format),
        "{e:?}"
    );
    assert!(!e.is_transient(), "another format is no retry");
    let e = e.to_string();
    assert!(
        e.contains("dashi-local 1") && e.contains("dashi-local 4"),
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
        e.contains("version 99") && e.contains("reads versions 2 and 3"),
        "{e}"
    );
}

/// Segments of layout 2 (written before records were checked by CRC-32C)
/// are still read, each record checked by the CRC-32 it was written with:
/// records whose CRC-32 is right are delivered, one still carrying a
/// CRC-32C is set aside as damaged.
#[test]
fn a_segment_of_the_earlier_layout_is_read_with_its_own_checksum() {
    use std::os::unix::fs::FileExt;
    let d = dir("seglayout2");
    let offs = {
        let (_, c) = open(&d);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        for m in ["a", "b", "c"] {
            ch.producer().publish(m, "q").unwrap();
        }
        records(&d)
    };
    assert_eq!(offs.len(), 3);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg_path(&d))
        .unwrap();
    f.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
    for &off in [offs[0], offs[2]].iter() {
        let mut head = [0u8; 32];
        f.read_exact_at(&mut head, off + 32).unwrap();
        let payload_len = u32::from_le_bytes(head[24..28].try_into().unwrap());
        let mut payload = vec![0u8; payload_len as usize];
        f.read_exact_at(&mut payload, off + 64).unwrap();
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&payload);
        f.write_all_at(&h.finalize().to_le_bytes(), off + 28)
            .unwrap();
    }
    drop(f);
    {
        let (_, c) = open(&d);
        assert_eq!(drain(&c), ["a", "c"]);
        // A publish now goes on in the same segment, checked by CRC-32 too.
        c.channel().unwrap().producer().publish("d", "q").unwrap();
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg_path(&d))
        .unwrap();
    // The last record, past the one recovery moved aside.
    let seg = Segment::open(&seg_path(&d), f.try_clone().unwrap()).unwrap();
    let (mut at, mut off) = (HEADER_LEN, 0);
    loop {
        match seg.read(at) {
            Slot::Record { len, .. } => (off, at) = (at, at + len),
            Slot::Moved { len } | Slot::Padding { len } => at += len,
            _ => break,
        }
    }
    assert!(off > offs[2]);
    let mut head = [0u8; 36];
    f.read_exact_at(&mut head, off + 28).unwrap();
    let payload_len = u32::from_le_bytes(head[28..32].try_into().unwrap());
    let mut payload = vec![0u8; payload_len as usize];
    f.read_exact_at(&mut payload, off + 64).unwrap();
    let mut h = crc32fast::Hasher::new();
    h.update(&head[4..]);
    h.update(&payload);
    assert_eq!(h.finalize().to_le_bytes(), head[..4]);
    let (_, c) = open(&d);
    assert_eq!(drain(&c), ["d"]);
}

/// Issue 11 item 6: a segment file that cannot be read at all (truncated
/// mid-record by a bad copy, or its magic flipped) no longer makes the whole
/// store unopenable: the first opener moves it to its lane's `damaged/`
/// directory and counts it, every other queue opens intact, and the damaged
/// queue keeps working. So is a directory or a FIFO put where the segment
/// was (stop 35: every open failed with "Is a directory", naming the lane).
#[test]
fn a_segment_that_cannot_be_read_is_set_aside_and_the_rest_opens() {
    for damage in ["truncated", "bad magic", "directory", "fifo"] {
        let d = dir("damaged");
        {
            let (_, c) = open(&d);
            let ch = c.channel().unwrap();
            ch.queue_declare(&Queue::new("q")).unwrap();
            ch.queue_declare(&Queue::new("other")).unwrap();
            for i in 0..10 {
                ch.producer().publish(format!("q{i}"), "q").unwrap();
                ch.producer().publish(format!("o{i}"), "other").unwrap();
            }
        }
        match damage {
            "truncated" => {
                let f = OpenOptions::new().write(true).open(seg_path(&d)).unwrap();
                f.set_len(38_756).unwrap();
            }
            "bad magic" => flip(&d, 0),
            other => {
                std::fs::remove_file(seg_path(&d)).unwrap();
                if other == "directory" {
                    std::fs::create_dir(seg_path(&d)).unwrap();
                } else {
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        seg_path(&d).as_path(),
                        rustix::fs::FileType::Fifo,
                        rustix::fs::Mode::from_raw_mode(0o600),
                        0,
                    )
                    .unwrap();
                }
            }
        }
        let (t, c) = open(&d);
        assert_eq!(t.recovered().segments_set_aside, 1, "{damage}");
        assert!(d
            .join("q/q/0000000000000001/lane-0/damaged/0000000000000000.seg")
            .exists());
        let ch = c.channel().unwrap();
        let mut other = Vec::new();
        while let Some(m) = ch.get("other", Duration::from_millis(200)).unwrap() {
            other.push(String::from_utf8_lossy(m.body()).into_owned());
            m.ack().unwrap();
        }
        assert_eq!(other, (0..10).map(|i| format!("o{i}")).collect::<Vec<_>>());
        assert_eq!(c.stats().queue("q").unwrap().messages, 0, "{damage}");
        ch.producer().publish("new", "q").unwrap();
        let m = ch.get("q", Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(&m.body()[..], b"new");
    }
}

/// Issue 11 item 7: a segment file deleted by hand (the first or one in the
/// middle) is a gap: the next opener skips it with a report, the records of
/// the other segments are delivered, and new publishes are too.
#[test]
fn a_segment_deleted_by_hand_is_skipped_and_nothing_else_is_lost() {
    for gone in [0u64, 1] {
        let d = dir("gap");
        let opts = LocalOptions {
            segment_size: 64 << 10,
            ..LocalOptions::default()
        };
        let open_small = || {
            let t = LocalTransport::open(&d, opts.clone()).unwrap();
            Connection::with_transport(std::sync::Arc::new(t), Default::default())
        };
        let lane = d.join("q/q/0000000000000001/lane-0");
        let mut in_seg: Vec<Vec<String>> = Vec::new();
        {
            let c = open_small();
            let ch = c.channel().unwrap();
            ch.queue_declare(&Queue::new("q")).unwrap();
            let mut i = 0;
            while in_seg.len() < 4 {
                let body = format!("m{i}");
                ch.producer()
                    .publish(vec![b'x'; 2000], "q")
                    .and_then(|_| ch.producer().publish(body.clone(), "q"))
                    .unwrap();
                let segs = std::fs::read_dir(&lane)
                    .unwrap()
                    .filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .path()
                            .extension()
                            .is_some_and(|x| x == "seg")
                    })
                    .count();
                in_seg.resize(segs, Vec::new());
                in_seg[segs - 1].push(body);
                i += 1;
            }
        }
        std::fs::remove_file(lane.join(format!("{gone:016x}.seg"))).unwrap();
        let c = open_small();
        let ch = c.channel().unwrap();
        ch.producer().publish("after", "q").unwrap();
        let mut got = Vec::new();
        while let Some(m) = ch.get("q", Duration::from_millis(300)).unwrap() {
            if m.body().len() < 100 {
                got.push(String::from_utf8_lossy(m.body()).into_owned());
            }
            m.ack().unwrap();
        }
        // The next segment file is made ahead (when a writer passes the
        // middle of the current one), so a body counted under segment k may
        // sit in k-1: only bodies counted under segments that cannot be the
        // deleted one must all come back.
        assert_eq!(got.last().map(String::as_str), Some("after"), "gap {gone}");
        let lost: Vec<&String> = in_seg
            .iter()
            .enumerate()
            .filter(|(s, _)| *s as u64 != gone && *s as u64 != gone + 1)
            .flat_map(|(_, v)| v)
            .filter(|b| !got.contains(b))
            .collect();
        assert!(lost.is_empty(), "gap {gone}: lost {lost:?}");
    }
}

/// Issue 10's typed errors: a `meta.json` that cannot be read is corrupt
/// metadata, not a transient failure to retry, and the store is left as it
/// was.
#[test]
fn corrupt_metadata_is_a_typed_error_that_no_retry_fixes() {
    let d = dir("badmeta");
    drop(open(&d));
    std::fs::write(d.join("meta.json"), "{ not json").unwrap();
    let e = LocalTransport::open(&d, LocalOptions::default()).unwrap_err();
    assert!(
        matches!(&e, dashi_engine::Error::Store(f) if f.kind == dashi_engine::FailureKind::CorruptMetadata),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert_eq!(
        std::fs::read_to_string(d.join("meta.json")).unwrap(),
        "{ not json"
    );
}

/// On this disk's filesystem (`FALLOC_FL_ZERO_RANGE` clears the rest), and
/// on a tmpfs, which has no such call (zeros are written instead).
#[test]
fn bytes_a_power_loss_left_past_the_tail_neither_hide_nor_block_new_records() {
    stale_tail_in(&dir("stale-tail"));
    match dashi_test_support::Tmpfs::make(256 * 1024) {
        Some(fs) => stale_tail_in(&fs.mount.join("s")),
        None => eprintln!("tmpfs case skipped: cannot mount one here (needs root)"),
    }
}

fn stale_tail_in(d: &Path) {
    use std::os::unix::fs::FileExt;
    let d = d.to_path_buf();
    let (offs, len) = {
        let (_, c) = open(&d);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        for m in ["m0", "m1", "m2"] {
            ch.producer().publish(m, "q").unwrap();
        }
        // Delivered and acked: m2's claim word says acked.
        assert_eq!(drain(&c), vec!["m0", "m1", "m2"]);
        let offs = records(&d);
        (offs.clone(), offs[1] - offs[0])
    };
    // The disk kept some pages written after the last sync and lost others:
    // m2's state word is gone (its claim word, acked, is still there, where
    // the next record's goes), and two records' room further on, past the
    // tail, lies a word that is no record.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg_path(&d))
        .unwrap();
    f.write_all_at(&[0u8; 8], offs[2]).unwrap();
    f.write_all_at(&u64::MAX.to_le_bytes(), offs[2] + 2 * len)
        .unwrap();
    drop(f);
    // The first opener recovers: the tail is cut back to m2 (torn) and
    // everything after it cleared, so new records are delivered, each once.
    let (t, c) = open(&d);
    assert_eq!(t.recovered().segments, 1);
    let ch = c.channel().unwrap();
    for m in ["a", "b", "c", "d"] {
        ch.producer().publish(m, "q").unwrap();
    }
    assert_eq!(records(&d)[2], offs[2], "appends went on where m2 was");
    assert_eq!(drain(&c), vec!["a", "b", "c", "d"]);
    drop((t, c));
}

/// A record is written without its publish time (0) when no TTL applied to
/// it; should one land in a queue with a TTL after all (a queue deleted and
/// declared again with a TTL under a racing publish), its TTL counts from
/// its delivery: it is neither swept as expired nor delivered already dead.
#[test]
fn a_record_without_its_publish_time_is_not_taken_for_expired() {
    let d = dir("no-publish-time");
    let (_t, c) = open(d.path());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("q").with_message_ttl(Duration::from_millis(100)))
        .unwrap();
    ch.producer()
        .publish(dashi_engine::Message::new("timed"), "q")
        .unwrap();
    let path = seg_path(d.path());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let payload = crate::codec::encode("", "q", &dashi_engine::Message::new("untimed")).unwrap();
    Segment::open(&path, f)
        .unwrap()
        .append(&payload, 7, 1, 0)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        drain(&c),
        ["untimed"],
        "the timed one expired, the other not"
    );
}

fn publish(c: &Connection, queue: &str, bodies: &[&str]) {
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new(queue)).unwrap();
    for b in bodies {
        ch.producer()
            .publish(dashi_engine::Message::new(b.to_string()), queue)
            .unwrap();
    }
}

fn drain_queue(c: &Connection, queue: &str) -> Vec<String> {
    let ch = c.channel().unwrap();
    let mut out = Vec::new();
    while let Some(d) = ch.get(queue, Duration::ZERO).unwrap() {
        out.push(String::from_utf8(d.body().to_vec()).unwrap());
        d.ack().unwrap();
    }
    out
}

/// A lone open of a store whose `meta.json` is gone, while `q/` holds its
/// queues' files, is refused with a line that says so and changes nothing
/// (taken as an empty topology, the sweep of unnamed queues deleted every
/// queue and its messages, and `dashi stat` said "(no queues)"); with the
/// file put back everything is there.
#[test]
fn a_store_that_lost_meta_json_is_refused_and_nothing_is_deleted() {
    let d = dir("lost-meta");
    {
        let (_t, c) = open(d.path());
        publish(&c, "q", &["a", "b"]);
        publish(&c, "other", &["c"]);
    }
    let meta = std::fs::read(d.join("meta.json")).unwrap();
    std::fs::remove_file(d.join("meta.json")).unwrap();
    let e = LocalTransport::open(&d, LocalOptions::default()).unwrap_err();
    assert!(
        matches!(&e, dashi_engine::Error::Store(f) if f.kind == dashi_engine::FailureKind::CorruptMetadata),
        "{e:?}"
    );
    assert!(e.to_string().contains("meta.json is missing"), "{e}");
    assert!(!d.join("meta.json").exists(), "nothing written");
    std::fs::write(d.join("meta.json"), meta).unwrap();
    let (_t, c) = open(d.path());
    assert_eq!(drain_queue(&c, "q"), ["a", "b"]);
    assert_eq!(drain_queue(&c, "other"), ["c"]);
}

/// A store that lost its format marker is refused, by an open that may
/// create a store too (it wrote a new marker over whatever format the
/// files were in), and nothing is changed; with the marker put back
/// everything is there.
#[test]
fn a_store_that_lost_its_format_marker_is_refused_and_nothing_is_changed() {
    let d = dir("lost-marker");
    {
        let (_t, c) = open(d.path());
        publish(&c, "q", &["a", "b"]);
    }
    let marker = std::fs::read(d.join("DASHI-LOCAL")).unwrap();
    std::fs::remove_file(d.join("DASHI-LOCAL")).unwrap();
    for create in [true, false] {
        let opts = LocalOptions {
            create,
            ..LocalOptions::default()
        };
        let e = LocalTransport::open(&d, opts).unwrap_err();
        assert!(
            matches!(&e, dashi_engine::Error::Store(f) if f.kind == dashi_engine::FailureKind::Format),
            "{e:?}"
        );
        let line = e.to_string();
        assert!(line.contains("DASHI-LOCAL is missing"), "{line}");
        assert!(line.contains("\"dashi-local 4\""), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert!(!d.join("DASHI-LOCAL").exists(), "nothing written");
    }
    std::fs::write(d.join("DASHI-LOCAL"), marker).unwrap();
    let (_t, c) = open(d.path());
    assert_eq!(drain_queue(&c, "q"), ["a", "b"]);
}

/// A directory with no format marker that holds anything a store does not
/// is refused before anything is written to it (`local:///` made a store
/// in `/`, stop 35); an empty directory, one holding only `lost+found` (a
/// filesystem made for the store) and a store with a file added later all
/// open.
#[test]
fn a_directory_that_is_not_a_store_and_not_empty_is_refused_untouched() {
    let d = dir("foreign");
    for (i, extra) in [vec!["notes.txt"], vec!["a", "b", "c", "d", "e"]]
        .into_iter()
        .enumerate()
    {
        let root = d.join(format!("home-{i}"));
        std::fs::create_dir(&root).unwrap();
        for f in &extra {
            std::fs::write(root.join(f), b"mine").unwrap();
        }
        let before = dashi_test_support::files_under(&root, |_| true);
        // Opens that may make a store and opens that may not say the same.
        for create in [true, false] {
            let opts = LocalOptions {
                create,
                ..LocalOptions::default()
            };
            let e = LocalTransport::open(&root, opts).unwrap_err();
            assert!(
                matches!(&e, dashi_engine::Error::Store(f) if f.kind == dashi_engine::FailureKind::Invalid),
                "{e:?}"
            );
            let line = e.to_string();
            assert!(
                line.contains("is not a dashi store and is not empty"),
                "{line}"
            );
            assert!(line.contains(&format!("{:?}", extra[0])), "{line}");
            assert_eq!(line.contains(", ..."), extra.len() > 3, "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        let after = dashi_test_support::files_under(&root, |_| true);
        assert_eq!(before, after, "nothing written");
        assert!(!root.join("q").exists() && !root.join("open.lock").exists());
    }
    let fresh = d.join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).unwrap();
    {
        let (_t, c) = open(&fresh);
        publish(&c, "q", &["a"]);
    }
    std::fs::write(fresh.join("README"), b"the queue store").unwrap();
    let (_t, c) = open(&fresh);
    assert_eq!(drain_queue(&c, "q"), ["a"]);
}

/// Fills a store with queue "q" (message "a") and then queue "later"
/// (message "kept"); the `meta.json` from before "later" was declared.
fn meta_json_before_a_later_queue(d: &TestDir) -> Vec<u8> {
    let (_t, c) = open(d.path());
    publish(&c, "q", &["a"]);
    let old = std::fs::read(d.join("meta.json")).unwrap();
    publish(&c, "later", &["kept"]);
    old
}

/// A `meta.json` older than a queue (a copy put back) does not name it:
/// its files are not taken for a delete's leftovers, they are moved to
/// `orphaned/` with their messages, and a queue declared later under the
/// same name gets a number of its own.
#[test]
fn queues_an_older_meta_json_does_not_name_are_kept_aside() {
    let d = dir("old-meta");
    let old = meta_json_before_a_later_queue(&d);
    std::fs::write(d.join("meta.json"), old).unwrap();
    let (_t, c) = open(d.path());
    assert_eq!(drain_queue(&c, "q"), ["a"]);
    let aside = dashi_test_support::files_under(&d.join("orphaned"), |p| {
        p.extension().is_some_and(|e| e == "seg")
    });
    assert_eq!(aside.len(), 1, "the later queue's segment is kept aside");
    publish(&c, "later", &["new"]);
    assert_eq!(drain_queue(&c, "later"), ["new"]);
    assert!(aside[0].exists(), "and left alone");
}

/// A declare killed after it made a queue's files and before `meta.json`
/// named the queue leaves an incarnation with a number never given out
/// and no message: a lone open removes it rather than setting it aside.
#[test]
fn an_empty_incarnation_meta_json_never_named_is_removed_not_set_aside() {
    let d = dir("declare-killed");
    {
        let (_t, c) = open(d.path());
        publish(&c, "q", &["a"]);
    }
    // What the declare had made: directory, name file, state page.
    let inc = d.join("q/half/00000000000000ff");
    std::fs::create_dir_all(&inc).unwrap();
    std::fs::write(d.join("q/half/name"), b"half").unwrap();
    std::fs::write(inc.join("state"), [0u8; 4096]).unwrap();
    let (_t, c) = open(d.path());
    assert!(
        !d.join("q/half").exists(),
        "removed with its name directory"
    );
    assert!(!d.join("orphaned").exists(), "nothing set aside");
    assert_eq!(drain_queue(&c, "q"), ["a"]);
}

/// An incarnation set aside where one of the same name and number already
/// is (an older `meta.json` put back twice) goes beside it: a rename onto
/// it failed, and the store would not open again.
#[test]
fn setting_aside_the_same_incarnation_twice_keeps_both() {
    let d = dir("old-meta-twice");
    let old = meta_json_before_a_later_queue(&d);
    let taken = d.join("orphaned/later-0000000000000002/lane-0");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("0000000000000000.seg"), b"earlier").unwrap();
    std::fs::write(d.join("meta.json"), old).unwrap();
    let (_t, c) = open(d.path());
    assert_eq!(drain_queue(&c, "q"), ["a"]);
    assert_eq!(
        std::fs::read(taken.join("0000000000000000.seg")).unwrap(),
        b"earlier"
    );
    assert!(d
        .join("orphaned/later-0000000000000002.2/lane-0/0000000000000000.seg")
        .exists());
}

/// A lone open goes on writing in the segment it was writing in, also when
/// the next one was already made ahead of need (at half of the current
/// one): that empty file used to be taken for the last segment, and the
/// real one was padded to its end: half a segment lost at every lone open.
#[test]
fn a_lone_open_keeps_writing_where_the_log_ended_not_in_a_segment_made_ahead() {
    let d = dir("made-ahead");
    let opts = || LocalOptions {
        segment_size: 64 << 10,
        ..LocalOptions::default()
    };
    let body = "p".repeat(900);
    let lane = d.join("q/q/0000000000000001/lane-0");
    let segs = || {
        let mut v: Vec<String> = std::fs::read_dir(&lane)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        v.sort();
        v
    };
    let publish_n = |n: usize| {
        let t = LocalTransport::open(&d, opts()).unwrap();
        let c = Connection::with_transport(std::sync::Arc::new(t), Default::default());
        publish(&c, "q", &vec![body.as_str(); n]);
    };
    publish_n(36);
    assert_eq!(segs().len(), 2, "the next segment is made ahead of need");
    let first = d.join(lane.join(&segs()[0]));
    let count = |p: &Path| {
        let seg = Segment::open(
            p,
            OpenOptions::new().read(true).write(true).open(p).unwrap(),
        )
        .unwrap();
        let mut n = 0;
        let mut off = HEADER_LEN;
        while let Slot::Record { len, .. } = seg.read(off) {
            n += 1;
            off += len;
        }
        n
    };
    assert_eq!(count(&first), 36);
    publish_n(1);
    assert_eq!(
        count(&first),
        37,
        "the lone open went on in the same segment"
    );
    let (_t, c) = open(&d);
    assert_eq!(drain_queue(&c, "q").len(), 37);
}

/// Half-written copies of `meta.json` and of the marker that a process
/// killed before its rename left behind go at the next lone open.
#[test]
fn half_written_copies_left_by_a_killed_process_go_at_a_lone_open() {
    let d = dir("tmp-left");
    {
        let (_t, c) = open(d.path());
        publish(&c, "q", &["a"]);
    }
    for n in ["meta.json.tmp-4242", "DASHI-LOCAL.tmp-4243"] {
        std::fs::write(d.join(n), "half").unwrap();
    }
    let (_t, c) = open(d.path());
    assert!(!d.join("meta.json.tmp-4242").exists());
    assert!(!d.join("DASHI-LOCAL.tmp-4243").exists());
    assert_eq!(drain_queue(&c, "q"), ["a"]);
}

/// With `fsync=interval`, a synchronous publish is confirmed before the
/// timer syncs it: once the runtime core the timer runs on has died, no
/// sync will come, and publishes fail (the record may or may not be stored)
/// instead of being confirmed for good (found by review: they returned Ok).
#[test]
fn interval_publishes_fail_once_the_timer_s_runtime_died() {
    let d = dir("interval-dead");
    let options = LocalOptions {
        fsync: crate::Fsync::Interval(Duration::from_millis(20)),
        ..LocalOptions::default()
    };
    let t = LocalTransport::open(&d, options).unwrap();
    let c = Connection::with_transport(std::sync::Arc::new(t.clone()), Default::default());
    publish(&c, "q", &["before"]);
    t.inject_core_panic(0);
    let ch = c.channel().unwrap();
    let started = std::time::Instant::now();
    let e = loop {
        match ch
            .producer()
            .publish(dashi_engine::Message::new("during"), "q")
        {
            Ok(()) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "publishes confirmed with the runtime dead"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => break e,
        }
    };
    assert!(e.to_string().contains("panicked"), "{e}");
}
