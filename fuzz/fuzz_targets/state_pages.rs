//! The store's shared state pages overwritten with arbitrary bytes: see
//! `dashi_transport_local::test_hooks::state_pages`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("dashi-fuzz-state-{}", std::process::id()));
    dashi_transport_local::test_hooks::state_pages(&dir, data);
});
