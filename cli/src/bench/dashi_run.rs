//! The dashi side of the bench: every producer and consumer thread opens its
//! own connection to the URL, as separate services would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashi::{ConsumerOptions, Error, Message, Queue};

use super::{histogram, latency_us, stamped_body, Progress, Report, Workload};
use crate::body::connect;

pub(crate) fn run(w: &Workload) -> Result<Report, String> {
    let admin = connect(&w.url)?;
    let ch = admin.channel().map_err(|e| e.to_string())?;
    let queue = format!("dashi-bench-{}-{}", std::process::id(), super::now_ns());
    ch.queue_declare(
        &Queue::new(queue.clone()).with_max_priority((w.priorities - 1).min(255) as u8),
    )
    .map_err(|e| format!("declaring the bench queue: {e}"))?;

    let consumed = Arc::new(AtomicU64::new(0));
    let finished_ns = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(&admin_label(w), w.messages, consumed.clone());
    let start = Instant::now();

    let consumers: Vec<_> = (0..w.consumers)
        .map(|_| {
            let (w, queue) = (w.clone(), queue.clone());
            let (consumed, finished_ns) = (consumed.clone(), finished_ns.clone());
            std::thread::spawn(move || -> Result<hdrhistogram::Histogram<u64>, String> {
                let conn = connect(&w.url)?;
                let ch = conn.channel().map_err(|e| e.to_string())?;
                let hist = Arc::new(Mutex::new(histogram()));
                let (h, c, f, total) = (
                    hist.clone(),
                    consumed.clone(),
                    finished_ns.clone(),
                    w.messages,
                );
                let _consumer = ch
                    .consume(ConsumerOptions::new(queue), move |d| {
                        let lat = latency_us(d.body());
                        if let Ok(mut h) = h.lock() {
                            h.saturating_record(lat.max(1));
                        }
                        let _ = d.ack();
                        if c.fetch_add(1, Ordering::Relaxed) + 1 == total {
                            f.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                    })
                    .map_err(|e| e.to_string())?;
                while consumed.load(Ordering::Relaxed) < total {
                    match conn.drain_events(Some(Duration::from_millis(100))) {
                        Ok(_) | Err(Error::Timeout) => {}
                        Err(e) => return Err(format!("consumer: {e}")),
                    }
                }
                drop(_consumer);
                let h = hist.lock().map_err(|_| "histogram lock poisoned")?.clone();
                Ok(h)
            })
        })
        .collect();

    let producers: Vec<_> = (0..w.producers)
        .map(|i| {
            let w = w.clone();
            let queue = queue.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let conn = connect(&w.url)?;
                let ch = conn.channel().map_err(|e| e.to_string())?;
                let p = ch.producer();
                for k in 0..w.share(i) {
                    let mut m = Message::new(stamped_body(w.size));
                    m.properties.priority = w.priority(k);
                    // Back-pressure: a full queue hands the message back.
                    while let Err(e) = p.publish(m, &queue) {
                        if !e.is_transient() {
                            return Err(format!("producer: {e}"));
                        }
                        m = e.into_message();
                        std::thread::yield_now();
                    }
                }
                Ok(())
            })
        })
        .collect();

    let mut failure = None;
    for p in producers {
        match p.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a producer thread panicked".into()),
        }
        if failure.is_some() {
            // Let the consumers finish on what was sent.
            consumed.fetch_add(w.messages, Ordering::Relaxed);
        }
    }
    let mut merged = histogram();
    for c in consumers {
        match c.join() {
            Ok(Ok(h)) => {
                let _ = merged.add(&h);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a consumer thread panicked".into())),
        }
    }
    drop(progress);
    let _ = ch.queue_delete(&queue, false, false);
    if let Some(e) = failure {
        return Err(e);
    }
    let elapsed = Duration::from_nanos(finished_ns.load(Ordering::Relaxed).max(1));
    let transport = dashi::ConnectUrl::parse(&w.url)
        .map(|u| format!("dashi {}://", u.scheme))
        .unwrap_or_else(|_| "dashi".into());
    Ok(Report::from_histogram(transport, w, elapsed, &merged))
}

fn admin_label(w: &Workload) -> String {
    dashi::ConnectUrl::parse(&w.url)
        .map(|u| format!("dashi {}://", u.scheme))
        .unwrap_or_else(|_| "dashi".into())
}
