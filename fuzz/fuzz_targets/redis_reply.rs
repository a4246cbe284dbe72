//! Any bytes from a Redis server decode to whole replies or an error, never
//! a panic, and to the same replies whether they arrive at once or a byte
//! at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dashi_transport_redis::test_hooks::resp_replies(data);
});
