//! RESP2 on the wire: commands are encoded here (an array of bulk strings is
//! all a client sends, and writing it straight into the link's output buffer
//! costs no intermediate frame); replies are decoded by the `redis-protocol`
//! crate, which slices the read buffer without copying.
//!
//! # Invariants
//! - A command is encoded whole or not at all: the output buffer never holds
//!   half a command, so replies stay matched FIFO.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
pub(crate) use redis_protocol::resp2::types::BytesFrame as Frame;

/// One command: its arguments, the first being the command name.
#[derive(Clone, Default)]
pub(crate) struct Cmd {
    args: Vec<Bytes>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the command name: arguments may hold message bodies or a
        // password (AUTH).
        let name = self.args.first().map(|a| String::from_utf8_lossy(a));
        write!(
            f,
            "Cmd({:?}, {} args)",
            name.unwrap_or_default(),
            self.args.len()
        )
    }
}

impl Cmd {
    /// A command called `name`.
    pub(crate) fn new(name: &'static str) -> Cmd {
        Cmd {
            args: vec![Bytes::from_static(name.as_bytes())],
        }
    }

    /// Appends an argument (shared, not copied, when it is a `Bytes`).
    pub(crate) fn arg(mut self, a: impl Into<Bytes>) -> Cmd {
        self.args.push(a.into());
        self
    }

    /// Appends an argument in place.
    pub(crate) fn push(&mut self, a: impl Into<Bytes>) {
        self.args.push(a.into());
    }

    /// Appends a number as its decimal text.
    pub(crate) fn int(self, n: i64) -> Cmd {
        self.arg(n.to_string())
    }

    /// True when `other` is the same variadic command on the same key
    /// (`HDEL`, `ZREM`, `ZADD`), so both can be sent as one.
    pub(crate) fn merges_with(&self, other: &Cmd) -> bool {
        let variadic = matches!(self.args.first().map(|a| &a[..]), Some(b"HDEL" | b"ZREM"));
        variadic
            && self.args.len() >= 2
            && other.args.len() >= 2
            && self.args[..2] == other.args[..2]
    }

    /// Takes `other`'s members (see [`Cmd::merges_with`]).
    pub(crate) fn absorb(&mut self, other: Cmd) {
        self.args.extend(other.args.into_iter().skip(2));
    }

    /// Appends the RESP encoding to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let total: usize = self.args.iter().map(|a| a.len() + 16).sum();
        out.reserve(total + 16);
        header(out, b'*', self.args.len());
        for a in &self.args {
            header(out, b'$', a.len());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Takes the next whole reply off the front of `buf`; `Ok(None)` when it
/// holds only part of one. `Err` = the server sent something that is not
/// RESP2 (the link is then unusable).
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    match decode_bytes_mut(buf) {
        Ok(Some((frame, _, _))) => Ok(Some(frame)),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("malformed reply from the server: {e}")),
    }
}

/// An integer reply.
pub(crate) fn int(frame: &Frame) -> Option<i64> {
    match frame {
        Frame::Integer(i) => Some(*i),
        Frame::BulkString(b) | Frame::SimpleString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A bulk or simple string reply.
pub(crate) fn bytes(frame: &Frame) -> Option<&Bytes> {
    match frame {
        Frame::BulkString(b) | Frame::SimpleString(b) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        Cmd::new("LPUSH")
            .arg("q")
            .arg(&b"a\r\nb"[..])
            .int(-12)
            .encode(&mut out);
        assert_eq!(
            out,
            b"*4\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$4\r\na\r\nb\r\n$3\r\n-12\r\n"
        );
        let mut empty = Vec::new();
        Cmd::new("PING").arg("").encode(&mut empty);
        assert_eq!(empty, b"*2\r\n$4\r\nPING\r\n$0\r\n\r\n");
    }

    #[test]
    fn decodes_whole_replies_only() {
        let mut buf = BytesMut::from(&b"+OK\r\n:5\r\n$3\r\nab"[..]);
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(Frame::SimpleString("OK".into()))
        );
        assert_eq!(int(&decode(&mut buf).unwrap().unwrap()), Some(5));
        assert_eq!(decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"c\r\n*2\r\n$-1\r\n-ERR x\r\n");
        assert_eq!(bytes(&decode(&mut buf).unwrap().unwrap()).unwrap(), "abc");
        let arr = decode(&mut buf).unwrap().unwrap();
        let Frame::Array(items) = arr else { panic!() };
        assert_eq!(items[0], Frame::Null);
        assert!(matches!(&items[1], Frame::Error(e) if &**e == "ERR x"));
        let mut bad = BytesMut::from(&b"?what\r\n"[..]);
        assert!(decode(&mut bad).is_err());
    }

    #[test]
    fn one_way_commands_merge_by_name_and_key() {
        let mut a = Cmd::new("HDEL").arg("unacked").arg("f1");
        let b = Cmd::new("HDEL").arg("unacked").arg("f2").arg("f3");
        assert!(a.merges_with(&b));
        a.absorb(b);
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(
            out,
            b"*5\r\n$4\r\nHDEL\r\n$7\r\nunacked\r\n$2\r\nf1\r\n$2\r\nf2\r\n$2\r\nf3\r\n"
        );
        assert!(!a.merges_with(&Cmd::new("HDEL").arg("other").arg("f")));
        assert!(!a.merges_with(&Cmd::new("ZREM").arg("unacked").arg("f")));
        assert!(!Cmd::new("LPUSH")
            .arg("q")
            .arg("x")
            .merges_with(&Cmd::new("LPUSH").arg("q").arg("y")));
    }

    #[test]
    fn debug_never_shows_arguments() {
        let c = Cmd::new("AUTH").arg("user").arg("s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
