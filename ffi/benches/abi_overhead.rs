//! What the C ABI costs: publish → get → ack → free of a 64-byte message on
//! memory://, once through the Rust API and once through the exported C
//! functions (called from Rust through this crate: the same machine code a
//! C program calls, without a C compiler in the loop), in the same run.
//!
//! Run: `cargo bench -p dashi-ffi --bench abi_overhead`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dashi::{Message, Queue};
use dashi_ffi::*;

const BODY: &[u8] = &[7u8; 64];

fn rust(c: &mut Criterion, group: &str) {
    let conn = dashi::connect("memory://abi-bench-rust").unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function("rust", |b| {
        b.iter(|| {
            ch.basic_publish(Message::new(BODY.to_vec()), "", "q", false)
                .unwrap();
            let d = ch.get("q", Duration::ZERO).unwrap().unwrap();
            d.ack().unwrap();
        })
    });
    g.finish();
}

fn c_abi(c: &mut Criterion, group: &str) {
    let url = c"memory://abi-bench-c";
    let q = c"q";
    let empty = c"";
    let mut conn = std::ptr::null_mut();
    let mut ch = std::ptr::null_mut();
    // SAFETY: valid strings and out-parameters, handles used as the header
    // says and freed once at the end.
    unsafe {
        assert_eq!(
            dashi_connection_open(url.as_ptr(), &mut conn),
            dashi_result::DASHI_OK
        );
        assert_eq!(dashi_channel_open(conn, &mut ch), dashi_result::DASHI_OK);
        assert_eq!(
            dashi_queue_declare(ch, q.as_ptr(), 0),
            dashi_result::DASHI_OK
        );
    }
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function("c_abi", |b| {
        b.iter(|| {
            let mut m = std::ptr::null_mut();
            // SAFETY: as above; `m` is freed once.
            unsafe {
                let r = dashi_publish(ch, empty.as_ptr(), q.as_ptr(), BODY.as_ptr(), BODY.len(), 0);
                assert_eq!(r, dashi_result::DASHI_OK);
                assert_eq!(dashi_get(ch, q.as_ptr(), 0, &mut m), dashi_result::DASHI_OK);
                assert_eq!(dashi_ack(m), dashi_result::DASHI_OK);
                dashi_message_free(m);
            }
        })
    });
    g.finish();
    // SAFETY: freed once, nothing uses them afterwards.
    unsafe {
        dashi_channel_free(ch);
        dashi_connection_free(conn);
    }
}

fn bench(c: &mut Criterion) {
    rust(c, "publish_get_ack_64B");
    c_abi(c, "publish_get_ack_64B");
}

criterion_group!(benches, bench);
criterion_main!(benches);
