//! `meta.json` read, written and read again: see
//! `dashi_transport_local::test_hooks::meta_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dashi_transport_local::test_hooks::meta_json(data);
});
