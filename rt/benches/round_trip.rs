//! Submit → complete round trip through a runtime core, from a user thread:
//! a no-op and a 4 KiB file write. Baseline in the same run: a plain worker
//! thread fed by crossbeam-channel (doing nothing / `pwrite(2)`). After
//! criterion, a pass per variant records every round trip in an hdrhistogram
//! and prints latency percentiles. (`vs_tokio_uring.rs` adds tokio-uring.)
//!
//! Run: `cargo bench -p dashi-rt --bench round_trip`

mod common;

use std::time::Duration;

use common::{percentiles, temp_file, Dashi, Plain};
use criterion::{criterion_group, Criterion};

fn bench(c: &mut Criterion) {
    let (_d1, f1) = temp_file();
    let (_d2, f2) = temp_file();
    let (dashi, plain) = (Dashi::start(f1), Plain::start(f2));
    let mut g = c.benchmark_group("rt_round_trip");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("dashi-core/nop", |b| b.iter(|| dashi.nop()));
    g.bench_function("thread+crossbeam/nop", |b| b.iter(|| plain.nop()));
    g.bench_function("dashi-core/write-4k", |b| b.iter(|| dashi.write()));
    g.bench_function("thread+crossbeam/write-4k", |b| b.iter(|| plain.write()));
    g.finish();
}

fn latency() {
    let (_d1, f1) = temp_file();
    let (_d2, f2) = temp_file();
    let (dashi, plain) = (Dashi::start(f1), Plain::start(f2));
    println!("\nround-trip latency, 100000 samples each (hdrhistogram):");
    percentiles("dashi-core/nop", 100_000, || dashi.nop());
    percentiles("thread+crossbeam/nop", 100_000, || plain.nop());
    percentiles("dashi-core/write-4k", 100_000, || dashi.write());
    percentiles("thread+crossbeam/write-4k", 100_000, || plain.write());
    dashi.print_stats();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !std::env::args().any(|a| a == "--list") {
        latency();
    }
}
