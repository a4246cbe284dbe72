//! `fsync=always` confirms each publish after an fdatasync issued on a
//! runtime core, shared by concurrent publishers (group commit);
//! `fsync=interval:<ms>` syncs on a timer; bad values are clear errors.

use dashi_test_support::TestDir;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashi_engine::spi::ConnectUrl;
use dashi_engine::spi::Transport;
use dashi_engine::{Connection, Queue};
use dashi_transport_local::{open, Fsync, LocalOptions, LocalTransport};

fn dir(_tag: &str) -> TestDir {
    TestDir::new()
}

fn connect(url: &str) -> Connection {
    open(ConnectUrl::parse(url).unwrap()).unwrap()
}

#[test]
fn always_confirms_after_fdatasync_and_groups_concurrent_publishers() {
    let d = dir("always");
    let url = format!("local://{}?fsync=always&segment_size=1M", d.display());
    let conn = connect(&url);
    // The same store, opened with the same options: this process shares one
    // instance, so its sync count is the connection's.
    let store = LocalTransport::open(
        &d,
        LocalOptions {
            fsync: Fsync::Always,
            segment_size: 1 << 20,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    let p = ch.producer();
    let before = store.syncs();
    for i in 0..50 {
        p.publish(format!("m{i}"), "q").unwrap();
    }
    // One at a time: every publish waited for a sync of its own.
    assert_eq!(store.syncs() - before, 50);
    // Eight publishers at once share syncs.
    let before = store.syncs();
    let conn = Arc::new(conn);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let conn = conn.clone();
            std::thread::spawn(move || {
                let ch = conn.channel().unwrap();
                let p = ch.producer();
                for i in 0..50 {
                    p.publish(format!("t{t}-{i}"), "q").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let used = store.syncs() - before;
    assert!(used > 0 && used <= 400, "{used} syncs for 400 publishes");
    eprintln!("group commit: {used} fdatasync calls for 400 concurrent publishes");
    assert_eq!(conn.stats().queue("q").unwrap().messages, 450);
    conn.health().unwrap();
    assert!(store.implements().durable);
}

#[test]
fn interval_syncs_on_a_timer_without_holding_publishes() {
    let d = dir("interval");
    let url = format!("local://{}?fsync=interval:20&segment_size=1M", d.display());
    let conn = connect(&url);
    let store = LocalTransport::open(
        &d,
        LocalOptions {
            fsync: Fsync::Interval(Duration::from_millis(20)),
            segment_size: 1 << 20,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    for i in 0..10 {
        ch.producer().publish(format!("m{i}"), "q").unwrap();
    }
    let t0 = Instant::now();
    while store.syncs() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no sync within 5 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Segment files anywhere under `dir`.
fn segment_files_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => segment_files_under(&e.path()),
            false => u64::from(e.file_name().to_string_lossy().ends_with(".seg")),
        })
        .sum()
}

/// With `fsync=interval`, the timer syncs every segment written since its
/// last tick, including ones the writer filled and left within the
/// interval: a sync state was let go of as soon as no mapping of its
/// segment held it, and a writer that lets go of the segments behind the
/// one it writes left them unsynced (2 syncs for 40 segments), publishes
/// confirmed more than an interval before a power cut lost with them.
#[test]
fn interval_syncs_every_segment_written_even_ones_left_behind() {
    let d = dir("interval-left");
    let url = format!(
        "local://{}?fsync=interval:400&segment_size=64K",
        d.display()
    );
    let conn = connect(&url);
    let store = LocalTransport::open(
        &d,
        LocalOptions {
            fsync: Fsync::Interval(Duration::from_millis(400)),
            segment_size: 64 << 10,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    let p = ch.producer();
    let pad = "x".repeat(2000);
    let before = store.syncs();
    // About 30 of these fill a 64 KiB segment: 40 segments.
    for i in 0..1200 {
        p.publish(format!("{i:05}{pad}"), "q").unwrap();
    }
    let segments = segment_files_under(&d);
    assert!(segments >= 30, "{segments}");
    let t0 = Instant::now();
    while store.syncs() - before < segments {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} syncs for {segments} segments written",
            store.syncs() - before
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_fsync_values_are_clear_errors() {
    for bad in [
        "sometimes",
        "interval:",
        "interval:0",
        "interval:abc",
        "interval:99999999",
    ] {
        let e =
            open(ConnectUrl::parse(&format!("local:///tmp/x?fsync={bad}")).unwrap()).unwrap_err();
        assert!(e.to_string().contains("fsync"), "{bad}: {e}");
    }
}

/// Descriptors of this process open on files that were deleted.
fn deleted_files_held() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().ends_with(" (deleted)"))
        })
        .count()
}

/// With `fsync=always`, the sync state of a segment goes when the segment
/// does: segments that retention deletes and queues that are deleted do
/// not keep their files open (and their disk space taken) for the life of
/// the process. They did: `dashi torture --churn` saw a worker hold 500+
/// descriptors of deleted files after 20 s.
#[test]
fn always_lets_go_of_the_files_of_deleted_segments_and_queues() {
    let d = dir("always-fds");
    let url = format!("local://{}?fsync=always&segment_size=64K", d.display());
    let conn = connect(&url);
    let ch = conn.channel().unwrap();
    let p = ch.producer();
    let body = vec![b'x'; 2000];
    // Queues deleted: each wrote a segment of its own (three lanes).
    for round in 0..40 {
        let name = format!("churn-{round}");
        ch.queue_declare(&Queue::new(name.as_str()).with_max_priority(2))
            .unwrap();
        for prio in 0..3u8 {
            p.publish(
                dashi_engine::Message::new(body.clone()).with_priority(prio),
                &name,
            )
            .unwrap();
        }
        ch.queue_delete(&name, false, false).unwrap();
    }
    // Segments retention deletes: 64 KiB takes about 30 of these records.
    ch.queue_declare(&Queue::new("long")).unwrap();
    for _ in 0..1200 {
        p.publish(body.clone(), "long").unwrap();
        let m = ch.get("long", Duration::from_secs(5)).unwrap().unwrap();
        m.ack().unwrap();
    }
    // One more segment written lets go of every state nothing holds.
    ch.queue_declare(&Queue::new("last")).unwrap();
    p.publish("x", "last").unwrap();
    let held = deleted_files_held();
    assert!(
        held <= 4,
        "{held} descriptors of deleted files still open (160 segments written and deleted)"
    );
}

/// Descriptors of this process open on files under `dir`.
fn files_held_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
        .count()
}

/// A producer far ahead of its consumers, with `fsync=always`, holds a
/// few descriptors and mappings of its segments, not one of each for
/// every segment of the backlog: it kept them all until retention deleted
/// them (5,000 descriptors after 5 s of `dashi publish` into 64 KiB
/// segments), enough to run a process out of descriptors or mappings.
/// Every message of the backlog is then delivered, in order.
#[test]
fn always_holds_few_files_however_long_the_backlog() {
    // A queue with a TTL too: every process sweeps its heads, producers
    // included, and a sweep is no reader (it counted as one: 44 held).
    for (tag, queue) in [
        ("plain", Queue::new("q")),
        (
            "ttl",
            Queue::new("q").with_message_ttl(Duration::from_secs(3600)),
        ),
    ] {
        let d = dir("backlog-fds");
        let url = format!("local://{}?fsync=always&segment_size=64K", d.display());
        let conn = connect(&url);
        let ch = conn.channel().unwrap();
        ch.queue_declare(&queue).unwrap();
        let p = ch.producer();
        let pad = "x".repeat(2000);
        // About 30 of these records fill a 64 KiB segment: 40 segments.
        for i in 0..1200 {
            p.publish(format!("{i:05}{pad}"), "q").unwrap();
        }
        let held = files_held_under(&d);
        assert!(
            held <= 12,
            "{tag}: {held} descriptors open in the store for a backlog of 40 segments"
        );
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapped = maps
            .lines()
            .filter(|l| l.contains(&*d.to_string_lossy()) && l.contains(".seg"))
            .count();
        assert!(
            mapped <= 4,
            "{tag}: {mapped} segments of a backlog of 40 mapped"
        );
        for i in 0..1200 {
            let m = ch.get("q", Duration::from_secs(5)).unwrap().unwrap();
            assert_eq!(&m.body()[..5], format!("{i:05}").as_bytes());
            m.ack().unwrap();
        }
        assert!(ch.get("q", Duration::ZERO).unwrap().is_none());
    }
}

/// Closing a store with a long `fsync=interval` does not wait out the
/// interval (it waited for the store runtime's 500 ms shutdown limit, the
/// timer task holding the shutdown up).
#[test]
fn a_store_closes_without_waiting_out_its_timers() {
    for fsync in ["interval:60000", "interval:3600000"] {
        let d = dir("close");
        let url = format!("local://{}?fsync={fsync}&segment_size=64K", d.display());
        let conn = connect(&url);
        let ch = conn.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        ch.producer().publish("m", "q").unwrap();
        drop(ch);
        let t0 = Instant::now();
        drop(conn);
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(250),
            "fsync={fsync}: closing took {took:?}"
        );
    }
}
