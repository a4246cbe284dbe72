//! The in-process limit both transport benches compare with: one producer
//! thread sending the same `Bytes` payloads to one consumer through an
//! unbounded crossbeam channel.

use std::time::{Duration, Instant};

use bytes::Bytes;

pub(crate) fn crossbeam_round_trip(payload: &Bytes, n: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<Bytes>();
    let start = Instant::now();
    let producer = {
        let payload = payload.clone();
        std::thread::spawn(move || {
            for _ in 0..n {
                tx.send(payload.clone()).unwrap();
            }
        })
    };
    for _ in 0..n {
        std::hint::black_box(rx.recv().unwrap());
    }
    let elapsed = start.elapsed();
    producer.join().unwrap();
    elapsed
}
