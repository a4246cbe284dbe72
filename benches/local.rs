//! local:// throughput in one process, 1 producer thread / 1 consumer thread,
//! publish → consume (push consumer) → ack, fsync=never, next to
//! crossbeam-channel moving the same payloads in the same run.
//!
//! Run: `cargo bench --bench local`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
mod common;

use common::crossbeam_round_trip;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashi::{ConsumerOptions, Queue};

fn local_round_trip(payload: &Bytes, n: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let url = format!("local://{}", dir.display());
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
        let (payload, url) = (payload.clone(), url.clone());
        std::thread::spawn(move || {
            let conn = dashi::connect(&url).unwrap();
            let ch = conn.channel().unwrap();
            let p = ch.producer();
            for _ in 0..n {
                p.publish(payload.clone(), "bench").unwrap();
            }
        })
    };
    while got.load(Ordering::Relaxed) < n {
        let _ = conn.drain_events(Some(Duration::from_millis(100)));
    }
    let elapsed = start.elapsed();
    producer.join().unwrap();
    drop(_consumer);
    drop(ch);
    drop(conn);
    elapsed
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("local_1p1c");
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(20);
    for size in [64usize, 4096] {
        let payload = Bytes::from(vec![0xA5u8; size]);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("dashi-local", size), &payload, |b, p| {
            b.iter_custom(|iters| local_round_trip(p, iters))
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
