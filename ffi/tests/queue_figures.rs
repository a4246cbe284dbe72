//! `dashi_queue_stats` through the exported symbols C calls: on redis://,
//! envelopes set aside as undeliverable are counted in `garbage`, and
//! figures the server refuses are a store error, not an unknown queue.

use std::ffi::CString;
use std::ptr::null_mut;

use dashi_ffi::dashi_result::*;
use dashi_ffi::*;

/// A connection to `url` and a channel on it, with queue `q` declared.
///
/// # Safety
/// As the exported functions it calls; the caller frees both handles.
unsafe fn open_with_queue(
    url: &CString,
    q: &CString,
) -> (*mut dashi_connection, *mut dashi_channel) {
    // SAFETY: both strings are live and NUL-terminated; the out-parameters
    // are writable locals.
    unsafe {
        let mut c = null_mut();
        assert_eq!(dashi_connection_open(url.as_ptr(), &mut c), DASHI_OK);
        let mut ch = null_mut();
        assert_eq!(dashi_channel_open(c, &mut ch), DASHI_OK);
        assert_eq!(dashi_queue_declare(ch, q.as_ptr(), 0), DASHI_OK);
        (c, ch)
    }
}

#[test]
fn garbage_set_aside_on_redis_is_counted_in_the_figures() {
    let r = dashi_test_support::RedisServer::start();
    let url = CString::new(r.url()).unwrap();
    let q = CString::new("g").unwrap();
    // SAFETY: every pointer passed is live, NUL-terminated or writable, and
    // every handle is freed once, after its last use.
    unsafe {
        let (c, ch) = open_with_queue(&url, &q);
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

#[test]
fn figures_the_server_refuses_are_a_store_error_not_an_unknown_queue() {
    let r = dashi_test_support::RedisServer::start();
    r.command(&[
        "ACL", "SETUSER", "nokeys", "on", ">pw", "~other*", "&*", "+@all",
    ])
    .unwrap();
    let url = CString::new(r.url()).unwrap();
    let limited = CString::new(format!("redis://nokeys:pw@127.0.0.1:{}", r.port())).unwrap();
    let q = CString::new("fig").unwrap();
    // SAFETY: as above.
    unsafe {
        let (c, ch) = open_with_queue(&url, &q);
        let mut l = null_mut();
        assert_eq!(dashi_connection_open(limited.as_ptr(), &mut l), DASHI_OK);
        let mut st = dashi_queue_figures {
            messages: 9,
            bytes: 9,
            unacked: 9,
            consumers: 9,
            garbage: 9,
        };
        assert_eq!(
            dashi_queue_stats(l, q.as_ptr(), &mut st),
            DASHI_STORE_FAILED
        );
        assert_eq!(st.messages, 9, "nothing is written on failure");
        assert_eq!(dashi_queue_stats(c, q.as_ptr(), &mut st), DASHI_OK);
        assert_eq!(st.messages, 0);
        dashi_connection_free(l);
        dashi_channel_free(ch);
        dashi_connection_free(c);
    }
}
