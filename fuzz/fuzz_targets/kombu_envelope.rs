//! Any bytes as a kombu envelope on Redis: decoded or refused with a reason,
//! never a panic; what decodes survives dashi's re-encoding and restore
//! marks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dashi_transport_redis::test_hooks::envelope(data);
});
