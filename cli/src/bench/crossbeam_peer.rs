//! The in-process limit for memory://: the same producers and consumers moving
//! the same stamped bodies through an unbounded crossbeam channel (no routing,
//! no acks: crossbeam has none).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{histogram, latency_us, stamped_body, Progress, Report, Workload};

pub(crate) fn run(w: &Workload) -> Result<Report, String> {
    let (tx, rx) = crossbeam_channel::unbounded::<bytes::Bytes>();
    let consumed = Arc::new(AtomicU64::new(0));
    let finished_ns = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("crossbeam-channel", w.messages, consumed.clone());
    let start = Instant::now();
    let producers: Vec<_> = (0..w.producers)
        .map(|i| {
            let (tx, w) = (tx.clone(), w.clone());
            std::thread::spawn(move || {
                for _ in 0..w.share(i) {
                    if tx.send(stamped_body(w.size)).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    // Phased: every message is sent before the consumers start.
    let mut producers = producers;
    let mut publish_phase = None;
    if w.phased {
        for p in producers.drain(..) {
            p.join()
                .map_err(|_| "a crossbeam producer thread panicked")?;
        }
        publish_phase = Some(start.elapsed());
    }
    let consumers: Vec<_> = (0..w.consumers)
        .map(|_| {
            let rx = rx.clone();
            let (consumed, finished_ns, total) =
                (consumed.clone(), finished_ns.clone(), w.messages);
            std::thread::spawn(move || {
                let mut h = histogram();
                while consumed.load(Ordering::Relaxed) < total {
                    if let Ok(body) = rx.recv_timeout(Duration::from_millis(100)) {
                        h.saturating_record(latency_us(&body).max(1));
                        if consumed.fetch_add(1, Ordering::Relaxed) + 1 == total {
                            finished_ns.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                    }
                }
                h
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join()
            .map_err(|_| "a crossbeam producer thread panicked")?;
    }
    let mut merged = histogram();
    for c in consumers {
        let h = c
            .join()
            .map_err(|_| "a crossbeam consumer thread panicked")?;
        let _ = merged.add(&h);
    }
    drop(progress);
    let elapsed = Duration::from_nanos(finished_ns.load(Ordering::Relaxed).max(1));
    let mut r = Report::from_histogram("crossbeam-channel", w, elapsed, &merged);
    if let Some(p) = publish_phase {
        r.publish_phase = Some(p);
        r.consume_phase = Some(elapsed.saturating_sub(p));
    }
    Ok(r)
}
