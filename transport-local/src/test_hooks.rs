//! Entry points for the fuzz targets in `fuzz/` (feature `test-hooks`): each
//! takes arbitrary bytes and checks, with assertions, what must hold for any
//! input. Not part of the transport's API; the unit tests run them on seeds so
//! they keep working between fuzzing runs.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::codec::{decode, encode};
use crate::recovery::recover;
use crate::segment::{Segment, Slot, HEADER_LEN};

/// Any bytes given to the record payload decoder yield a message or an error,
/// never a panic; what decodes re-encodes to bytes that decode and encode
/// to the same bytes again (compared as bytes: a NaN header is not equal to
/// itself as a value).
pub fn payload_decode(data: &[u8]) {
    let buf = bytes::Bytes::copy_from_slice(data);
    if let Ok(p) = decode(&buf) {
        let again =
            encode(&p.exchange, &p.routing_key, &p.message()).expect("decoded payloads re-encode");
        let back = decode(&again).expect("re-encoded payloads decode");
        let twice = encode(&back.exchange, &back.routing_key, &back.message())
            .expect("and re-encode again");
        assert_eq!(twice, again);
    }
}

/// A 64 KiB segment in `dir` with four good records, whose record area is
/// then overwritten with `data`: the record reader and recovery never panic,
/// never loop forever, and leave a segment that reads to its end.
pub fn segment_recovery(dir: &Path, data: &[u8]) {
    let path = dir.join("seg");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("the segment file can be created");
    f.set_len(64 * 1024).expect("the segment file can be sized");
    let seg = Segment::format(&path, f, 0, 0).expect("a fresh segment formats");
    for i in 0..4u8 {
        seg.append(&[i; 40], 0, 1, 0)
            .expect("a fresh segment takes records");
    }
    let raw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("the segment file opens");
    let n = data.len().min(60 * 1024);
    raw.write_all_at(&data[..n], HEADER_LEN)
        .expect("the record area can be overwritten");
    let _ = recover(&seg, true, true, |_, _, _| Ok(()));
    let mut off = HEADER_LEN;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 10_000, "scan did not end");
        match seg.read(off) {
            Slot::Record { len, .. } | Slot::Padding { len } | Slot::Moved { len } => off += len,
            _ => break,
        }
    }
}

/// Any text read as `meta.json` is a topology or an error naming what is
/// wrong, never a panic; a topology that reads writes back to JSON that
/// reads to the same topology.
pub fn meta_json(data: &[u8]) {
    use crate::store::meta_json::Meta;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Meta::from_json(text) {
        let again = m.to_json().expect("a topology that was read writes");
        let back = Meta::from_json(&again).expect("what was written reads");
        assert_eq!(back.to_json().expect("and writes again"), again);
    }
}

/// The shared pages a store keeps beside its segments (each lane's `state`,
/// the queue's `state`, the store's `control`), overwritten with `data` in
/// that order, 4 KiB each, in a store holding one queue of three lanes and
/// six messages. A process that opens the store beside another user (so it
/// does not recover) gets messages or errors, never a panic or a hang; once
/// the store is opened alone again, recovery rebuilds every shared word from
/// the segments and each of the six messages is delivered.
pub fn state_pages(dir: &Path, data: &[u8]) {
    use dashi_engine::{Connection, Message, Queue};
    use std::time::Duration;
    let _ = std::fs::remove_dir_all(dir);
    // Small segments: recovery clears the rest of each lane's last segment,
    // and at the default 64 MiB that was most of an execution's time.
    let opts = crate::LocalOptions {
        segment_size: 64 << 10,
        ..crate::LocalOptions::default()
    };
    let open = || {
        let t = crate::LocalTransport::open(dir, opts.clone()).expect("the store opens");
        Connection::with_transport(std::sync::Arc::new(t), Default::default())
    };
    {
        let c = open();
        let ch = c.channel().expect("a channel opens");
        ch.queue_declare(&Queue::new("q").with_max_priority(2))
            .expect("the queue is declared");
        for i in 0..6u8 {
            ch.producer()
                .publish(Message::new(vec![i; 16]).with_priority(i % 3), "q")
                .expect("a publish is stored");
        }
    }
    let q = dir.join("q/q/0000000000000001");
    let pages = [
        q.join("lane-0/state"),
        q.join("lane-1/state"),
        q.join("lane-2/state"),
        q.join("state"),
        dir.join("control"),
    ];
    for (page, chunk) in pages.iter().zip(data.chunks(4096)) {
        if let Ok(f) = OpenOptions::new().write(true).open(page) {
            f.write_all_at(chunk, 0)
                .expect("a state page can be overwritten");
        }
    }
    {
        // Another user holds the store: this open does not recover, it
        // works with the damaged words.
        let lock = std::fs::File::open(dir.join("open.lock")).expect("the presence lock");
        let _held = crate::lock::FileLock::shared(lock).expect("a shared presence lock");
        if let Ok(t) = crate::LocalTransport::open(dir, opts.clone()) {
            let c = Connection::with_transport(std::sync::Arc::new(t), Default::default());
            if let Ok(ch) = c.channel() {
                for _ in 0..8 {
                    // Taken, not acked: they come back when this process goes.
                    if !matches!(ch.get("q", Duration::ZERO), Ok(Some(_))) {
                        break;
                    }
                }
                let _ = ch.producer().publish("extra", "q");
            }
        }
    }
    let c = open();
    let ch = c.channel().expect("a channel opens");
    let mut seen = [false; 6];
    let mut n = 0;
    while let Some(d) = ch.get("q", Duration::ZERO).expect("a get after recovery") {
        n += 1;
        assert!(n < 1000, "the queue does not end");
        if let [i] = d.body()[..1] {
            if d.body().len() == 16 && usize::from(i) < 6 {
                seen[usize::from(i)] = true;
            }
        }
        d.ack().expect("an ack after recovery");
    }
    assert_eq!(seen, [true; 6], "every message is delivered after recovery");
}

#[cfg(test)]
mod tests {
    /// The fuzz targets' checks on a few fixed inputs, so they keep compiling
    /// and holding between fuzzing runs.
    #[test]
    fn the_fuzz_entry_points_hold_on_seeds() {
        let good = crate::codec::encode("ex", "rk", &dashi_engine::Message::new("body")).unwrap();
        // Found by the fuzzer: a header holding a NaN (equal to nothing,
        // itself included; the first version compared values).
        let nan: &[u8] = &[
            0x01, 0x00, 0x01, 0x40, 0xfc, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x06,
            0x06, 0x02, 0x00, 0x00, 0x00, 0x00, 0x06, 0x02, 0x00, 0x00, 0x00, 0x06, 0x06, 0x00,
            0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x62, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00,
            0x00, 0x00, 0x06, 0x06, 0x00, 0x00, 0x00, 0x00, 0x02, 0x06, 0x2a, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x07, 0x00, 0x00,
            0x00, 0x00, 0x02, 0x06, 0x01, 0x00, 0x00, 0x07, 0x01, 0x00, 0x00, 0x07, 0x09, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ][..];
        for seed in [
            nan,
            &good[..],
            b"",
            b"\x01",
            &[0xff; 64],
            &good[..good.len() / 2],
        ] {
            super::payload_decode(seed);
        }
        let dir = dashi_test_support::TestDir::new();
        let mut noise = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        for seed in [&[][..], &[0u8; 512], &noise[..], &[0xffu8; 100]] {
            super::segment_recovery(&dir, seed);
        }
        let mut m = crate::store::meta_json::Meta::default();
        let mut q = dashi_engine::Queue::new("q").with_max_priority(3);
        q.dead_letter_exchange = Some("dlx".into());
        q.message_ttl = Some(std::time::Duration::from_millis(1500));
        m.add_queue(q, Some(2));
        m.exchanges.push(dashi_engine::Exchange::new(
            "t",
            dashi_engine::ExchangeKind::Topic,
        ));
        let good = m.to_json().unwrap();
        assert_eq!(crate::store::meta_json::Meta::from_json(&good).unwrap(), m);
        let store = dir.join("store");
        let mut pages = vec![0xffu8; 5 * 4096];
        pages[4096..8192].copy_from_slice(&noise);
        // Found by the fuzzer: a publish that looped for good (the lane's
        // positions past every segment it wrote).
        let mut looped = vec![0x0a, 0x0a, 0x5a];
        looped.extend_from_slice(&[0; 17]);
        looped.extend_from_slice(&[0x8c; 88]);
        looped.extend_from_slice(&[0; 3]);
        // Found by a longer run: retention stepping one segment number at a
        // time across a damaged gap of billions.
        let retire_hang = include_bytes!("tests/seeds/state_pages_retire_hang.bin");
        // And a publish looping on a write segment below the low segment.
        let append_hang = include_bytes!("tests/seeds/state_pages_append_hang.bin");
        for (k, seed) in [
            &retire_hang[..],
            &append_hang[..],
            &looped[..],
            &[][..],
            &[0u8; 5 * 4096],
            &noise[..],
            &pages[..],
            &[0x01; 100],
        ]
        .into_iter()
        .enumerate()
        {
            eprintln!("state_pages seed {k}");
            super::state_pages(&store, seed);
        }
        for seed in [
            good.as_bytes(),
            &good.as_bytes()[..good.len() / 2],
            good.replace("\"version\":1", "\"version\":9").as_bytes(),
            good.replace("\"id\":1", "\"id\":0").as_bytes(),
            b"{}",
            b"null",
            &noise[..],
        ] {
            super::meta_json(seed);
        }
    }
}
