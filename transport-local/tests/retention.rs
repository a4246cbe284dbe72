//! Through the transport: once every message of a queue is acked, an idle
//! consumer's periodic check deletes the settled segments.

use std::time::{Duration, Instant};

use dashi_engine::spi::ConnectUrl;
use dashi_engine::Queue;

fn segment_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn acked_segments_are_deleted_by_idle_consumers() {
    let dir = dashi_test_support::TestDir::new();
    let url = format!("local://{}?segment_size=64K", dir.display());
    let conn = dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    for i in 0..2000 {
        ch.producer().publish(vec![i as u8; 200], "q").unwrap();
    }
    let before = segment_files(&dir);
    assert!(before > 5, "{before}");
    while let Some(d) = ch.get("q", Duration::ZERO).unwrap() {
        d.ack().unwrap();
    }
    // Idle gets run the (rate-limited) retention check.
    let t0 = Instant::now();
    while segment_files(&dir) > 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "segments were not retired"
        );
        assert!(ch.get("q", Duration::from_millis(20)).unwrap().is_none());
    }
    // The queue still works.
    ch.producer().publish("after", "q").unwrap();
    assert_eq!(
        &ch.get("q", Duration::ZERO).unwrap().unwrap().body()[..],
        b"after"
    );
}

/// The segment files of `lane` of queue `q` (declared once, so incarnation
/// 1), by number, with their sizes.
fn lane_segments(dir: &std::path::Path, lane: u8) -> Vec<(u64, u64)> {
    let d = dir.join(format!("q/q/0000000000000001/lane-{lane}"));
    let mut v: Vec<(u64, u64)> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let seq = u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()?;
            Some((seq, e.metadata().ok()?.len()))
        })
        .collect();
    v.sort();
    v
}

/// A lane's first segment is 1 MiB, not a whole `segment_size`, and each
/// next one doubles up to it: a queue with 11 priorities in use took
/// 11 x 64 MiB of disk for 11 messages (stop 35). A record larger than the
/// segment being written moves on to one made large enough.
#[test]
fn a_lane_starts_small_and_grows_to_the_segment_size() {
    let dir = dashi_test_support::TestDir::new();
    let url = format!("local://{}?segment_size=4M", dir.display());
    let conn = dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q").with_max_priority(10))
        .unwrap();
    for p in 0..=10u8 {
        ch.producer()
            .publish(dashi_engine::Message::new(vec![p]).with_priority(p), "q")
            .unwrap();
    }
    for p in 0..=10u8 {
        assert_eq!(lane_segments(&dir, p), [(0, 1 << 20)], "lane {p}");
    }
    // 3 MiB into lane 5, whose 1 MiB segment holds one message.
    ch.producer()
        .publish(
            dashi_engine::Message::new(vec![5u8; 3 << 20]).with_priority(5),
            "q",
        )
        .unwrap();
    // Lane 0 through several segments: 1, 2, 4, 4 MiB...
    for _ in 0..160 {
        ch.producer()
            .publish(dashi_engine::Message::new(vec![0u8; 64 << 10]), "q")
            .unwrap();
    }
    let lane0 = lane_segments(&dir, 0);
    assert!(lane0.len() >= 4, "{lane0:?}");
    for (seq, len) in &lane0 {
        assert_eq!(*len, (1u64 << 20 << seq).min(4 << 20), "{lane0:?}");
    }
    let lane5 = lane_segments(&dir, 5);
    // (A third may be there already: the next one is made ahead of need.)
    assert!(
        lane5.len() >= 2 && lane5[0] == (0, 1 << 20) && lane5[1].1 >= 3 << 20,
        "the large record moved on to a segment that holds it: {lane5:?}"
    );
    // Everything is delivered, most urgent first.
    let mut got = Vec::new();
    while let Some(d) = ch.get("q", Duration::from_millis(200)).unwrap() {
        got.push((d.properties().priority.unwrap_or(0), d.body().len()));
        d.ack().unwrap();
    }
    let mut want: Vec<(u8, usize)> = (1..=10u8).rev().map(|p| (p, 1)).collect();
    want.insert(6, (5, 3 << 20));
    want.push((0, 1));
    want.extend(std::iter::repeat_n((0, 64 << 10), 160));
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

/// A process whose segments are larger than those of the process that
/// made the lane's write segment publishes a record that fits its own
/// segments and not that one: it moves on to a new segment (it was refused
/// with "does not fit in a segment" until the lane rotated, stop 35).
#[test]
fn a_record_too_large_for_another_process_s_segment_moves_on() {
    let dir = dashi_test_support::TestDir::new();
    let small = format!("local://{}?segment_size=64K", dir.display());
    let large = format!("local://{}?segment_size=1M", dir.display());
    let a = dashi_transport_local::open(ConnectUrl::parse(&small).unwrap()).unwrap();
    let cha = a.channel().unwrap();
    cha.queue_declare(&Queue::new("q")).unwrap();
    cha.producer().publish(b"first".to_vec(), "q").unwrap();
    assert_eq!(lane_segments(&dir, 0), [(0, 64 << 10)]);
    let b = dashi_transport_local::open(ConnectUrl::parse(&large).unwrap()).unwrap();
    let chb = b.channel().unwrap();
    chb.producer().publish(vec![7u8; 100_000], "q").unwrap();
    chb.producer().publish(b"last".to_vec(), "q").unwrap();
    // Larger than the largest segment either makes: refused, handed back.
    let e = chb.producer().publish(vec![8u8; 2 << 20], "q").unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    let mut got = Vec::new();
    while let Some(d) = cha.get("q", Duration::from_millis(200)).unwrap() {
        got.push(d.body().len());
        d.ack().unwrap();
    }
    assert_eq!(got, [5, 100_000, 4]);
}

/// How many of `path`'s pages are in the page cache, and how many it has.
fn resident_pages(path: &std::path::Path) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let page = 4096;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: a read-only shared mapping of `len` bytes of an open file,
    // looked at by `mincore` only (never read), then unmapped.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED);
        assert_eq!(libc::mincore(at, len, vec.as_mut_ptr()), 0);
        libc::munmap(at, len);
    }
    (vec.iter().filter(|&&b| b & 1 == 1).count(), vec.len())
}

/// The next segment of a lane, made ahead of need in the background, is in
/// the page cache whole before the publisher reaches it: its pages were
/// made and zeroed there, not by the publisher's first write to each (a
/// quarter of a lone publisher's time, BENCHMARKS.md). (A 32 MiB one: the
/// first write to a file, which formatting the segment is, brings some of
/// it in with it; 8 MiB on the kernel this was written on.)
#[test]
fn the_next_segment_is_made_ready_in_the_page_cache_ahead_of_the_publisher() {
    let dir = dashi_test_support::TestDir::new();
    let url = format!("local://{}?segment_size=32M", dir.display());
    let conn = dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    // Segments of 1, 2, 4, 8 and 16 MiB, past half of the fifth: the sixth
    // (32 MiB) is made.
    for _ in 0..((1 + 2 + 4 + 8 + 11) << 4) {
        ch.producer()
            .publish(dashi_engine::Message::new(vec![1u8; 60 << 10]), "q")
            .unwrap();
    }
    let t0 = Instant::now();
    while lane_segments(&dir, 0).len() < 6 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no next segment");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(lane_segments(&dir, 0)[5], (5, 32 << 20));
    let next = dir.join("q/q/0000000000000001/lane-0/0000000000000005.seg");
    // (Brought in on a thread of its own, which may still be at it.)
    loop {
        let (resident, pages) = resident_pages(&next);
        if resident == pages {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{resident} of the next segment's {pages} pages in the page cache"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
