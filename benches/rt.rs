//! Submit → complete round trip through a runtime core, from a user thread:
//! a no-op and a 4 KiB file write. Baselines in the same run: a plain worker
//! thread fed by crossbeam-channel (doing nothing / `pwrite(2)`), and
//! tokio-uring (the runtime the design card named, fed by a tokio mpsc).
//! After criterion, a pass per variant records every round trip in an
//! hdrhistogram and prints latency percentiles.
//!
//! Run: `cargo bench --bench rt`

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use dashi::rt::{io, Runtime, RuntimeConfig};

enum Req {
    Nop(crossbeam_channel::Sender<()>),
    Write(crossbeam_channel::Sender<()>),
}

fn temp_file(tag: &str) -> Arc<File> {
    let path = std::env::temp_dir().join(format!("dashi-rt-bench-{}-{tag}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    Arc::new(f)
}

/// A plain thread serving requests from a crossbeam channel.
struct Plain {
    tx: crossbeam_channel::Sender<Req>,
}

impl Plain {
    fn start(file: Arc<File>) -> Plain {
        let (tx, rx) = crossbeam_channel::unbounded::<Req>();
        std::thread::spawn(move || {
            let buf = vec![1u8; 4096];
            for r in rx {
                match r {
                    Req::Nop(done) => {
                        let _ = done.send(());
                    }
                    Req::Write(done) => {
                        file.write_at(&buf, 0).unwrap();
                        {
                            let _ = done.send(());
                        };
                    }
                }
            }
        });
        Plain { tx }
    }
    fn nop(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Req::Nop(tx)).unwrap();
        rx.recv().unwrap();
    }
    fn write(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Req::Write(tx)).unwrap();
        rx.recv().unwrap();
    }
}

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

struct Dashi {
    rt: Runtime,
    file: Arc<File>,
}

impl Dashi {
    fn nop(&self) {
        self.rt
            .spawn(0, || async { io::nop().await })
            .wait()
            .unwrap()
            .unwrap();
    }
    fn write(&self) {
        let f = self.file.clone();
        let (n, _) = self
            .rt
            .spawn(0, move || async move {
                io::write_at(&f, vec![1u8; 4096], 0).await
            })
            .wait()
            .unwrap();
        n.unwrap();
    }
}

fn setups() -> (Dashi, Plain, TokioUring) {
    let rt = Runtime::start(RuntimeConfig::default().with_cores(1)).unwrap();
    let dashi = Dashi {
        rt,
        file: temp_file("dashi"),
    };
    let plain = Plain::start(temp_file("plain"));
    let tu = TokioUring::start(
        std::env::temp_dir().join(format!("dashi-rt-bench-{}-tokio-uring", std::process::id())),
    );
    (dashi, plain, tu)
}

fn bench(c: &mut Criterion) {
    let (dashi, plain, tu) = setups();
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

fn percentiles(name: &str, n: usize, mut f: impl FnMut()) {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for _ in 0..1000 {
        f();
    }
    for _ in 0..n {
        let t = Instant::now();
        f();
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "{name:<28} p50 {:>7.1} µs  p90 {:>7.1}  p99 {:>7.1}  p99.9 {:>7.1}  max {:>8.1}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    );
}

fn latency() {
    let (dashi, plain, tu) = setups();
    println!("\nround-trip latency, 100000 samples each (hdrhistogram):");
    percentiles("dashi-core/nop", 100_000, || dashi.nop());
    percentiles("thread+crossbeam/nop", 100_000, || plain.nop());
    percentiles("tokio-uring/nop", 100_000, || tu.nop());
    percentiles("dashi-core/write-4k", 100_000, || dashi.write());
    percentiles("thread+crossbeam/write-4k", 100_000, || plain.write());
    percentiles("tokio-uring/write-4k", 100_000, || tu.write());
    let s = &dashi.rt.stats()[0];
    println!(
        "dashi core 0: {} ops submitted, {} io_uring_enter calls, busy {:.0} %",
        s.submitted,
        s.enters,
        s.busy_ratio * 100.0
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !std::env::args().any(|a| a == "--list") {
        latency();
    }
}
