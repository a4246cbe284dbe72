//! What both runtime benches share: the request a user thread sends, the plain
//! thread peer, the dashi core, and the percentile pass.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use dashi_rt::{io, Runtime, RuntimeConfig};

/// A temporary file for the write round trips (removed when the bench ends).
pub(crate) fn temp_file() -> (tempfile::TempDir, Arc<File>) {
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("data"))
        .unwrap();
    (dir, Arc::new(f))
}

#[allow(dead_code)] // Each bench binary uses its own subset.
pub(crate) enum Req {
    Nop(crossbeam_channel::Sender<()>),
    Write(crossbeam_channel::Sender<()>),
}

/// A plain thread serving requests from a crossbeam channel.
pub(crate) struct Plain {
    tx: crossbeam_channel::Sender<Req>,
}

impl Plain {
    pub(crate) fn start(file: Arc<File>) -> Plain {
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
    pub(crate) fn nop(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Req::Nop(tx)).unwrap();
        rx.recv().unwrap();
    }
    pub(crate) fn write(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Req::Write(tx)).unwrap();
        rx.recv().unwrap();
    }
}

pub(crate) struct Dashi {
    pub(crate) rt: Runtime,
    pub(crate) file: Arc<File>,
}

impl Dashi {
    pub(crate) fn nop(&self) {
        self.rt
            .spawn(0, || async { io::nop().await })
            .wait()
            .unwrap()
            .unwrap();
    }
    pub(crate) fn write(&self) {
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

impl Dashi {
    /// One core, writing to `file`.
    pub(crate) fn start(file: Arc<File>) -> Dashi {
        let rt = Runtime::start(RuntimeConfig::default().with_cores(1)).unwrap();
        Dashi { rt, file }
    }

    /// Prints what core 0 did.
    pub(crate) fn print_stats(&self) {
        let s = &self.rt.stats()[0];
        println!(
            "dashi core 0: {} ops submitted, {} io_uring_enter calls, busy {:.0} %",
            s.submitted,
            s.enters,
            s.busy_ratio * 100.0
        );
    }
}

pub(crate) fn percentiles(name: &str, n: usize, mut f: impl FnMut()) {
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
