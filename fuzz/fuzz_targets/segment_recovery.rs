//! A segment whose record area is overwritten with arbitrary bytes: the record
//! reader and recovery never panic, never loop forever, and leave a segment
//! that reads to its end.
#![no_main]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use dashi_transport_local::recovery::recover;
use dashi_transport_local::segment::{Segment, Slot, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("dashi-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("seg");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.set_len(64 * 1024).unwrap();
    let seg = Segment::format(&path, f, 0, 0).unwrap();
    // A few good records, then the fuzzer's bytes over the record area.
    for i in 0..4u8 {
        seg.append(&[i; 40], 0, 1, 0).unwrap();
    }
    let raw = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let n = data.len().min(60 * 1024);
    raw.write_all_at(&data[..n], HEADER_LEN).unwrap();
    let _ = recover(&seg, true, |_, _, _| Ok(()));
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
});
