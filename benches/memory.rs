//! memory:// throughput, 1 producer thread / 1 consumer thread, publish →
//! consume (push consumer, `drain_events`) → ack, next to crossbeam-channel
//! send/recv of the same payloads in the same run (the in-process limit).
//!
//! Run: `cargo bench --bench memory`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
mod common;

use common::crossbeam_round_trip;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashi::{ConsumerOptions, Queue};

static RUN: AtomicU64 = AtomicU64::new(0);

/// Publishes `n` messages from a second thread and consumes + acks them here.
fn dashi_round_trip(payload: &Bytes, n: u64) -> Duration {
    let url = format!("memory://bench-{}", RUN.fetch_add(1, Ordering::Relaxed));
    let conn = dashi::connect(&url).unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("bench")).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let _consumer = ch
        .consume(ConsumerOptions::new("bench"), move |d| {
            d.ack().unwrap();
            g.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    let start = Instant::now();
    let producer = {
        let payload = payload.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            let conn = dashi::connect(&url).unwrap();
            let ch = conn.channel().unwrap();
            let p = ch.producer();
            for _ in 0..n {
                let mut msg = dashi::Message::new(payload.clone());
                // Back-pressure: a full queue hands the message back; retry.
                while let Err(e) = p.publish(msg, "bench") {
                    assert!(e.is_transient(), "{e}");
                    msg = e.into_message();
                    std::thread::yield_now();
                }
            }
        })
    };
    while got.load(Ordering::Relaxed) < n {
        conn.drain_events(Some(Duration::from_secs(10))).unwrap();
    }
    let elapsed = start.elapsed();
    producer.join().unwrap();
    elapsed
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_1p1c");
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    for size in [64usize, 4096] {
        let payload = Bytes::from(vec![0xA5u8; size]);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("dashi", size), &payload, |b, p| {
            b.iter_custom(|iters| dashi_round_trip(p, iters))
        });
        g.bench_with_input(
            BenchmarkId::new("crossbeam-channel", size),
            &payload,
            |b, p| b.iter_custom(|iters| crossbeam_round_trip(p, iters)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
