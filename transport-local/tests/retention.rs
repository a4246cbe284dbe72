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
