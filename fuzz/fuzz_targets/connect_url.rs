//! URLs, their options, and passwords never shown: see
//! `dashi_engine::test_hooks::connect_url`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dashi_engine::test_hooks::connect_url(data);
});
