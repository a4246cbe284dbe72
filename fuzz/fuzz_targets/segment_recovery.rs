//! A segment whose record area is overwritten with arbitrary bytes: the record
//! reader and recovery never panic, never loop forever, and leave a segment
//! that reads to its end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    dashi_transport_local::test_hooks::segment_recovery(dir.path(), data);
});
