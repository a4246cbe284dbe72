//! Topic patterns and routing keys against a reference matcher: see
//! `dashi_engine::test_hooks::topic_routing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dashi_engine::test_hooks::topic_routing(data);
});
