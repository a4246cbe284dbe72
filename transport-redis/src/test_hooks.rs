//! Entry points for the fuzz targets in `fuzz/` (feature `test-hooks`): each
//! takes arbitrary bytes and checks, with assertions, what must hold for any
//! input. Not part of the transport's API; the unit tests run them on seeds
//! so they keep working between fuzzing runs.

use bytes::BytesMut;

use crate::resp;
use crate::wire;

/// Any bytes from a server decode to whole replies or an error, never a
/// panic, and the same replies whether they arrive at once or a byte at a
/// time (the link reads whatever `recv` returns).
pub fn resp_replies(data: &[u8]) {
    let mut whole = BytesMut::from(data);
    let mut at_once = Vec::new();
    let whole_failed = loop {
        match resp::decode(&mut whole) {
            Ok(Some(f)) => at_once.push(f),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    let mut buf = BytesMut::new();
    let mut piecewise = Vec::new();
    let mut failed = false;
    'bytes: for &b in data {
        buf.extend_from_slice(&[b]);
        loop {
            match resp::decode(&mut buf) {
                Ok(Some(f)) => piecewise.push(f),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'bytes;
                }
            }
        }
    }
    if !whole_failed && !failed {
        assert_eq!(at_once, piecewise);
    } else {
        // Up to the error, the same replies.
        let n = at_once.len().min(piecewise.len());
        assert_eq!(at_once[..n], piecewise[..n]);
    }
}

/// Any bytes as a kombu envelope: decoded or refused with a reason, never a
/// panic; what decodes, re-encoded by dashi, decodes to the same message;
/// marking it restored keeps it decodable and marked; the helpers that read
/// single fields never panic.
pub fn envelope(data: &[u8]) {
    let _ = wire::tag_of(data);
    let text = String::from_utf8_lossy(data);
    let _ = wire::kombu_priority_of(&text);
    let _ = wire::split_unacked(&text);
    let _ = wire::restored(&text, "q", false, None);
    let Ok(d) = wire::decode(data) else { return };
    let again = wire::encode(&d.envelope, "tag");
    let back = wire::decode(again.as_bytes()).expect("dashi's own envelope decodes");
    assert_eq!(back.envelope.body, d.envelope.body);
    assert_eq!(back.envelope.properties(), d.envelope.properties());
    assert_eq!(back.envelope.exchange, d.envelope.exchange);
    assert_eq!(back.envelope.routing_key, d.envelope.routing_key);
    if let Some(marked) = wire::restored(&text, "q", true, Some(("1.5", 2))) {
        let m = wire::decode(marked.as_bytes()).expect("a restored envelope decodes");
        assert!(m.envelope.redelivered);
        assert_eq!(m.envelope.body, d.envelope.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold() {
        for seed in [
            &b"+OK\r\n:5\r\n$3\r\nabc\r\n*2\r\n$-1\r\n-ERR x\r\n"[..],
            b"*1\r\n*1\r\n$1\r\nx",
            b"$5\r\nab",
            b"?\r\n",
            b"*-1\r\n:notanumber\r\n",
        ] {
            resp_replies(seed);
        }
        for seed in [
            &br#"{"body": "aGk=", "headers": {"a": [1, 2.5, null]}, "properties": {"delivery_tag": "t", "body_encoding": "base64", "priority": 3, "delivery_info": {"exchange": "e", "routing_key": "k"}}}"#[..],
            br#"{"body": "x", "headers": null, "properties": {"delivery_tag": 1}}"#,
            br#"{"properties": {"delivery_tag": "t", "x-dashi-priority": 255, "priority": 0}}"#,
            br#"{"body": "\ud83d\ude00", "properties": {"delivery_tag": "t", "expiration": "12"}}"#,
            b"[1, 2, 3]",
            b"\xff\xfe",
        ] {
            envelope(seed);
        }
    }
}
