//! `dashi_queue_stats` through the exported symbols C calls: on redis://,
//! envelopes set aside as undeliverable are counted in `garbage`.

use std::ffi::CString;
use std::ptr::null_mut;

use dashi_ffi::dashi_result::*;
use dashi_ffi::*;

#[test]
fn garbage_set_aside_on_redis_is_counted_in_the_figures() {
    let r = dashi_test_support::RedisServer::start();
    let url = CString::new(r.url()).unwrap();
    let q = CString::new("g").unwrap();
    // SAFETY: every pointer passed is live, NUL-terminated or writable, and
    // every handle is freed once, after its last use.
    unsafe {
        let mut c = null_mut();
        assert_eq!(dashi_connection_open(url.as_ptr(), &mut c), DASHI_OK);
        let mut ch = null_mut();
        assert_eq!(dashi_channel_open(c, &mut ch), DASHI_OK);
        assert_eq!(dashi_queue_declare(ch, q.as_ptr(), 0), DASHI_OK);
        r.command(&["LPUSH", "g", "not json"]).unwrap();
        r.command(&["LPUSH", "g", r#"{"body": "x"}"#]).unwrap();
        // Only garbage: the get sets both aside and finds nothing.
        let mut m = null_mut();
        assert_eq!(dashi_get(ch, q.as_ptr(), 300, &mut m), DASHI_TIMEOUT);
        let mut st = dashi_queue_figures {
            messages: 9,
            bytes: 9,
            unacked: 9,
            consumers: 9,
            garbage: 0,
        };
        assert_eq!(dashi_queue_stats(c, q.as_ptr(), &mut st), DASHI_OK);
        assert_eq!(
            (st.messages, st.unacked, st.consumers, st.garbage),
            (0, 0, 0, 2)
        );
        dashi_channel_free(ch);
        dashi_connection_free(c);
    }
}
