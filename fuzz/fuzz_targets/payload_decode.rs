//! Any bytes given to the record payload decoder yield a message or an error,
//! never a panic; what decodes re-encodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dashi_transport_local::test_hooks::payload_decode(data);
});
