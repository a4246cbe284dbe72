//! The runtime the design card named, measured beside dashi's core and a plain
//! thread in the same run: a no-op and a 4 KiB write, each a round trip from a
//! user thread. tokio-uring runs on its own thread, fed by a tokio mpsc.
//! Built only with the `tokio-uring-peer` feature, so a plain `cargo test`
//! does not build tokio-uring.
//!
//! Run: `cargo bench -p dashi-rt --features tokio-uring-peer --bench vs_tokio_uring`

mod common;

use std::time::Duration;

use common::{percentiles, temp_file, Dashi, Plain, Req};
use criterion::{criterion_group, Criterion};

/// tokio-uring on its own thread, fed by a tokio mpsc channel.
struct TokioUring {
    tx: tokio::sync::mpsc::UnboundedSender<Req>,
}

impl TokioUring {
    fn start(path: std::path::PathBuf) -> TokioUring {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Req>();
        std::thread::spawn(move || {
            tokio_uring::start(async move {
                let file = std::rc::Rc::new(tokio_uring::fs::File::create(&path).await.unwrap());
                while let Some(r) = rx.recv().await {
                    match r {
                        Req::Nop(done) => {
                            let _ = done.send(());
                        }
                        Req::Write(done) => {
                            let f = file.clone();
                            tokio_uring::spawn(async move {
                                let (res, _) = f.write_at(vec![1u8; 4096], 0).submit().await;
                                res.unwrap();
                                {
                                    let _ = done.send(());
                                };
                            });
                        }
                    }
                }
            })
        });
        TokioUring { tx }
    }
    fn nop(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Req::Nop(tx))
            .unwrap_or_else(|_| panic!("tokio-uring thread gone"));
        rx.recv().unwrap();
    }
    fn write(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Req::Write(tx))
            .unwrap_or_else(|_| panic!("tokio-uring thread gone"));
        rx.recv().unwrap();
    }
}

fn setups(dir: &std::path::Path) -> (Dashi, Plain, TokioUring) {
    let (_, f1) = temp_file();
    let (_, f2) = temp_file();
    (
        Dashi::start(f1),
        Plain::start(f2),
        TokioUring::start(dir.join("tokio-uring")),
    )
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (dashi, plain, tu) = setups(dir.path());
    let mut g = c.benchmark_group("rt_round_trip");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("dashi-core/nop", |b| b.iter(|| dashi.nop()));
    g.bench_function("thread+crossbeam/nop", |b| b.iter(|| plain.nop()));
    g.bench_function("tokio-uring/nop", |b| b.iter(|| tu.nop()));
    g.bench_function("dashi-core/write-4k", |b| b.iter(|| dashi.write()));
    g.bench_function("thread+crossbeam/write-4k", |b| b.iter(|| plain.write()));
    g.bench_function("tokio-uring/write-4k", |b| b.iter(|| tu.write()));
    g.finish();
}

fn latency() {
    let dir = tempfile::tempdir().unwrap();
    let (dashi, plain, tu) = setups(dir.path());
    println!("\nround-trip latency, 100000 samples each (hdrhistogram):");
    percentiles("dashi-core/nop", 100_000, || dashi.nop());
    percentiles("thread+crossbeam/nop", 100_000, || plain.nop());
    percentiles("tokio-uring/nop", 100_000, || tu.nop());
    percentiles("dashi-core/write-4k", 100_000, || dashi.write());
    percentiles("thread+crossbeam/write-4k", 100_000, || plain.write());
    percentiles("tokio-uring/write-4k", 100_000, || tu.write());
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
