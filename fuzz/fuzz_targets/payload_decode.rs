//! Any bytes given to the record payload decoder yield a message or an error,
//! never a panic; what decodes re-encodes to the same bytes.
#![no_main]

use dashi_transport_local::codec::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = bytes::Bytes::copy_from_slice(data);
    if let Ok(p) = decode(&buf) {
        let again = encode(&p.exchange, &p.routing_key, &p.message).expect("decoded payloads re-encode");
        let back = decode(&again).expect("re-encoded payloads decode");
        assert_eq!(back, p);
    }
});
