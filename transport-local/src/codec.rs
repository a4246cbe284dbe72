//! The record payload: exchange, routing key, properties and body, in a
//! versioned binary layout (see `FORMAT.md`). The decoder is total: any byte
//! string gives either a message or a precise [`DecodeError`], never a panic,
//! and nesting and sizes are bounded so garbage cannot exhaust memory. The
//! body is returned as `Bytes` of the input's own bytes (a slice of the input
//! `Bytes`, or what the caller cuts from a mapping: `decode_in`), so a record
//! read from a memory mapping stays zero-copy.
//!
//! # Invariants
//! - Decoding never panics and never allocates more than the input's size
//!   (every count is checked against the bytes left); unknown versions and
//!   flag bits are refused.
//! - Names kept from earlier records (`Names`) are reused only for the very
//!   same bytes (each was checked as UTF-8 when first read), and the kept
//!   pair is forgotten before a record's names are read one by one, so a
//!   record failing between its two names never leaves a pair that mixes
//!   two records.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
#[cfg(any(test, feature = "test-hooks"))]
use dashi_engine::message::Message;
use dashi_engine::message::{DeliveryMode, Properties};
use dashi_engine::spi::ShortStr;
use dashi_engine::value::{Headers, Value};

/// Payload layout version written by this code.
pub(crate) const VERSION: u8 = 1;
/// Deepest nesting of header lists and tables.
pub(crate) const MAX_DEPTH: usize = 32;

const F_CONTENT_TYPE: u16 = 1 << 0;
const F_CONTENT_ENCODING: u16 = 1 << 1;
const F_HEADERS: u16 = 1 << 2;
const F_TRANSIENT: u16 = 1 << 3;
const F_PRIORITY: u16 = 1 << 4;
const F_CORRELATION_ID: u16 = 1 << 5;
const F_REPLY_TO: u16 = 1 << 6;
const F_EXPIRATION: u16 = 1 << 7;
const F_MESSAGE_ID: u16 = 1 << 8;
const F_TIMESTAMP: u16 = 1 << 9;
const F_KNOWN: u16 = (1 << 10) - 1;

/// A decoded payload, in the shape of an envelope: properties other than
/// the defaults in one shared allocation, none for the defaults (a
/// consumer builds no `Properties` for a message that has none, and moves
/// a few words rather than the whole struct).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Payload {
    /// Exchange it was published to.
    pub(crate) exchange: ShortStr,
    /// Routing key it was published with.
    pub(crate) routing_key: ShortStr,
    /// Body (a slice of the decoded buffer).
    pub(crate) body: Bytes,
    /// Properties; `None` = all defaults.
    pub(crate) properties: Option<Arc<Properties>>,
}

impl Payload {
    /// Body and properties as a [`Message`] (the body is shared).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn message(&self) -> Message {
        Message {
            body: self.body.clone(),
            properties: self.properties.as_deref().cloned().unwrap_or_default(),
        }
    }

    /// The message's own time to live.
    pub(crate) fn expiration(&self) -> Option<Duration> {
        self.properties.as_ref().and_then(|p| p.expiration)
    }
}

/// Why a payload could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum EncodeError {
    /// A string longer than its field allows.
    #[error("{field} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Headers nested deeper than [`MAX_DEPTH`].
    #[error("headers nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Why bytes are not a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DecodeError {
    /// The payload ends before a field does.
    #[error("truncated at byte {at}: {need} more bytes needed")]
    Truncated {
        /// Offset of the field.
        at: usize,
        /// Bytes missing.
        need: usize,
    },
    /// A layout version this code does not read.
    #[error("payload version {0} is not supported (this build reads version {VERSION})")]
    UnknownVersion(u8),
    /// Property flags with unknown bits.
    #[error("unknown property flags {0:#06x}")]
    UnknownFlags(u16),
    /// A header value with an unknown type tag.
    #[error("unknown value tag {tag} at byte {at}")]
    BadTag {
        /// Offset.
        at: usize,
        /// The tag.
        tag: u8,
    },
    /// Text that is not UTF-8.
    #[error("text at byte {at} is not UTF-8")]
    BadUtf8 {
        /// Offset.
        at: usize,
    },
    /// Headers nested deeper than [`MAX_DEPTH`].
    #[error("headers nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Bytes left after the body.
    #[error("{0} bytes after the end of the payload")]
    Trailing(usize),
}

/// A name's UTF-8 bytes (taken as bytes: a `ShortStr` gives them without
/// checking them again).
fn put_str8(out: &mut Vec<u8>, field: &'static str, s: &[u8]) -> Result<(), EncodeError> {
    let len = u8::try_from(s.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: s.len(),
        max: u8::MAX as usize,
    })?;
    out.put_u8(len);
    out.put_slice(s);
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: s.len(),
        max: u16::MAX as usize,
    })?;
    out.put_u16_le(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_len32(out: &mut Vec<u8>, field: &'static str, n: usize) -> Result<(), EncodeError> {
    let n = u32::try_from(n).map_err(|_| EncodeError::TooLong {
        field,
        len: n,
        max: u32::MAX as usize,
    })?;
    out.put_u32_le(n);
    Ok(())
}

fn put_value(out: &mut Vec<u8>, v: &Value, depth: usize) -> Result<(), EncodeError> {
    if depth > MAX_DEPTH {
        return Err(EncodeError::TooDeep);
    }
    match v {
        Value::Null => out.put_u8(0),
        Value::Bool(b) => {
            out.put_u8(1);
            out.put_u8(u8::from(*b));
        }
        Value::Int(i) => {
            out.put_u8(2);
            out.put_i64_le(*i);
        }
        Value::Float(f) => {
            out.put_u8(3);
            out.put_u64_le(f.to_bits());
        }
        Value::Str(s) => {
            out.put_u8(4);
            put_len32(out, "header string", s.len())?;
            out.put_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.put_u8(5);
            put_len32(out, "header bytes", b.len())?;
            out.put_slice(b);
        }
        Value::List(l) => {
            out.put_u8(6);
            put_len32(out, "header list", l.len())?;
            for x in l {
                put_value(out, x, depth + 1)?;
            }
        }
        Value::Table(t) => {
            out.put_u8(7);
            put_table(out, t, depth + 1)?;
        }
        // `Value` is non-exhaustive; every variant this build knows is above.
        #[allow(unreachable_patterns)]
        _ => out.put_u8(0),
    }
    Ok(())
}

fn put_table(out: &mut Vec<u8>, t: &Headers, depth: usize) -> Result<(), EncodeError> {
    if depth > MAX_DEPTH {
        return Err(EncodeError::TooDeep);
    }
    put_len32(out, "header table", t.len())?;
    for (k, v) in t {
        put_str16(out, "header key", k)?;
        put_value(out, v, depth)?;
    }
    Ok(())
}

/// Encodes a payload into a new buffer.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn encode(exchange: &str, routing_key: &str, m: &Message) -> Result<Bytes, EncodeError> {
    let mut out = Vec::new();
    let (exchange, routing_key) = (exchange.into(), routing_key.into());
    encode_into(&mut out, &exchange, &routing_key, &m.properties, &m.body)?;
    Ok(Bytes::from(out))
}

/// Encodes a payload at the end of `out` (a buffer the publisher reuses, so
/// a publish allocates nothing here; the transport then copies it into its
/// log). On error `out` holds a partial payload: clear it before reuse.
pub(crate) fn encode_into(
    out: &mut Vec<u8>,
    exchange: &ShortStr,
    routing_key: &ShortStr,
    p: &Properties,
    body: &[u8],
) -> Result<(), EncodeError> {
    out.reserve(64 + body.len());
    out.put_u8(VERSION);
    put_str8(out, "exchange", exchange.as_bytes())?;
    put_str8(out, "routing key", routing_key.as_bytes())?;
    let mut flags = 0u16;
    let set = |cond: bool, bit: u16, flags: &mut u16| {
        if cond {
            *flags |= bit
        }
    };
    set(p.content_type.is_some(), F_CONTENT_TYPE, &mut flags);
    set(p.content_encoding.is_some(), F_CONTENT_ENCODING, &mut flags);
    set(!p.headers.is_empty(), F_HEADERS, &mut flags);
    set(
        p.delivery_mode == DeliveryMode::Transient,
        F_TRANSIENT,
        &mut flags,
    );
    set(p.priority.is_some(), F_PRIORITY, &mut flags);
    set(p.correlation_id.is_some(), F_CORRELATION_ID, &mut flags);
    set(p.reply_to.is_some(), F_REPLY_TO, &mut flags);
    set(p.expiration.is_some(), F_EXPIRATION, &mut flags);
    set(p.message_id.is_some(), F_MESSAGE_ID, &mut flags);
    set(p.timestamp.is_some(), F_TIMESTAMP, &mut flags);
    out.put_u16_le(flags);
    if let Some(s) = &p.content_type {
        put_str16(out, "content_type", s)?;
    }
    if let Some(s) = &p.content_encoding {
        put_str16(out, "content_encoding", s)?;
    }
    if !p.headers.is_empty() {
        put_table(out, &p.headers, 0)?;
    }
    if let Some(x) = p.priority {
        out.put_u8(x);
    }
    if let Some(s) = &p.correlation_id {
        put_str16(out, "correlation_id", s)?;
    }
    if let Some(s) = &p.reply_to {
        put_str16(out, "reply_to", s)?;
    }
    if let Some(d) = p.expiration {
        out.put_u64_le(d.as_millis().min(u64::MAX as u128) as u64);
    }
    if let Some(s) = &p.message_id {
        put_str16(out, "message_id", s)?;
    }
    if let Some(t) = p.timestamp {
        out.put_u64_le(t);
    }
    put_len32(out, "body", body.len())?;
    out.put_slice(body);
    Ok(())
}

/// Reads a payload from `buf` (a record's bytes, read in place); what it
/// hands out as `Bytes` (the body, byte values) `cut` makes of the same
/// bytes, from the payload's offset and length.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    cut: &'a mut dyn FnMut(usize, usize) -> Bytes,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                at: self.at,
                need: n - (self.buf.len() - self.at).min(n),
            }),
        }
    }
    /// `n` bytes of the payload from `start`, as `Bytes` of their own.
    fn slice(&mut self, start: usize, n: usize) -> Bytes {
        (self.cut)(start, n)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn text(&mut self, n: usize) -> Result<String, DecodeError> {
        let at = self.at;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8 { at })
    }
    /// A name (exchange, routing key): at most 255 bytes, read straight
    /// into a `ShortStr` (inline up to 30 bytes, no allocation), or the
    /// one `last` holds when the bytes are its own (checked as UTF-8 when
    /// it was read).
    fn name8(&mut self, last: &mut Option<ShortStr>) -> Result<ShortStr, DecodeError> {
        let n = self.u8()? as usize;
        let at = self.at;
        let b = self.take(n)?;
        if let Some(s) = last {
            // Bytes against bytes: `as_str` would check the UTF-8 again.
            if s.as_bytes() == b {
                return Ok(s.clone());
            }
        }
        let s = std::str::from_utf8(b)
            .map(ShortStr::from)
            .map_err(|_| DecodeError::BadUtf8 { at })?;
        *last = Some(s.clone());
        Ok(s)
    }
    /// The exchange and routing key: both of `last` when the record holds
    /// the same bytes (one comparison), else read one by one.
    fn names(&mut self, last: &mut Names) -> Result<(ShortStr, ShortStr), DecodeError> {
        let start = self.at;
        let len = |at: usize| self.buf.get(at).map(|&n| usize::from(n));
        let end = len(start)
            .and_then(|ex| len(start + 1 + ex).map(|rk| start + 2 + ex + rk))
            .filter(|&end| end <= self.buf.len());
        if let (Some(end), Some(ex), Some(rk)) = (end, &last.exchange, &last.routing_key) {
            if last.raw == self.buf[start..end] {
                self.at = end;
                return Ok((ex.clone(), rk.clone()));
            }
        }
        // Cleared first: a record failing between its two names has
        // replaced one of them.
        last.raw.clear();
        let exchange = self.name8(&mut last.exchange)?;
        let routing_key = self.name8(&mut last.routing_key)?;
        last.raw.extend_from_slice(&self.buf[start..self.at]);
        Ok((exchange, routing_key))
    }
    fn str16(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        self.text(n)
    }
    /// A count of items that each take at least one byte: bounded by what is
    /// left, so garbage cannot make us allocate much.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.at;
        if n > left {
            return Err(DecodeError::Truncated {
                at: self.at,
                need: n - left,
            });
        }
        Ok(n)
    }
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let at = self.at;
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(self.u8()? != 0),
            2 => Value::Int(self.u64()? as i64),
            3 => Value::Float(f64::from_bits(self.u64()?)),
            4 => {
                let n = self.u32()? as usize;
                Value::Str(self.text(n)?)
            }
            5 => {
                let n = self.u32()? as usize;
                let start = self.at;
                self.take(n)?;
                Value::Bytes(self.slice(start, n))
            }
            6 => {
                let n = self.count()?;
                let mut l = Vec::with_capacity(n);
                for _ in 0..n {
                    l.push(self.value(depth + 1)?);
                }
                Value::List(l)
            }
            7 => Value::Table(self.table(depth + 1)?),
            tag => return Err(DecodeError::BadTag { at, tag }),
        })
    }
    fn table(&mut self, depth: usize) -> Result<Headers, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let n = self.count()?;
        let mut t = Headers::new();
        for _ in 0..n {
            let k = self.str16()?;
            let v = self.value(depth)?;
            t.insert(k, v);
        }
        Ok(t)
    }
}

/// Decodes a payload; the body is a slice of `buf` (no copy).
pub(crate) fn decode(buf: &Bytes) -> Result<Payload, DecodeError> {
    decode_with(buf, &mut Names::default())
}

/// The names of the records decoded last, kept across a run of records (a
/// queue's messages mostly carry the same two): a name whose bytes are the
/// same is cloned, not checked for UTF-8 and built again.
#[derive(Debug, Default)]
pub(crate) struct Names {
    exchange: Option<ShortStr>,
    routing_key: Option<ShortStr>,
    /// Both names as the last record held them (each with its length
    /// byte): a record holding the same bytes reuses both at once.
    raw: Vec<u8>,
}

/// [`decode`], reusing the names of the records `names` saw before.
pub(crate) fn decode_with(buf: &Bytes, names: &mut Names) -> Result<Payload, DecodeError> {
    decode_in(buf, &mut |start, n| buf.slice(start..start + n), names)
}

/// [`decode`] of a payload read in place (`buf`), whose body and byte
/// values `cut` makes into `Bytes` (from their offset in the payload and
/// their length), reusing the names of the records `names` saw before.
pub(crate) fn decode_in(
    buf: &[u8],
    cut: &mut dyn FnMut(usize, usize) -> Bytes,
    names: &mut Names,
) -> Result<Payload, DecodeError> {
    let mut r = Reader { buf, at: 0, cut };
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (exchange, routing_key) = r.names(names)?;
    let flags = r.u16()?;
    if flags & !F_KNOWN != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let has = |bit| flags & bit != 0;
    let properties = if flags == 0 {
        None
    } else {
        Some(r.properties(has)?)
            .filter(|p| !p.is_default())
            .map(Arc::new)
    };
    let n = r.u32()? as usize;
    let start = r.at;
    r.take(n)?;
    let body = r.slice(start, n);
    if r.at != buf.len() {
        return Err(DecodeError::Trailing(buf.len() - r.at));
    }
    Ok(Payload {
        exchange,
        routing_key,
        body,
        properties,
    })
}

impl Reader<'_> {
    /// The properties `has` says the payload carries, in their order.
    fn properties(&mut self, has: impl Fn(u16) -> bool) -> Result<Properties, DecodeError> {
        let r = self;
        let mut p = Properties::default();
        if has(F_CONTENT_TYPE) {
            p.content_type = Some(r.str16()?);
        }
        if has(F_CONTENT_ENCODING) {
            p.content_encoding = Some(r.str16()?);
        }
        if has(F_HEADERS) {
            p.headers = r.table(0)?;
        }
        if has(F_TRANSIENT) {
            p.delivery_mode = DeliveryMode::Transient;
        }
        if has(F_PRIORITY) {
            p.priority = Some(r.u8()?);
        }
        if has(F_CORRELATION_ID) {
            p.correlation_id = Some(r.str16()?);
        }
        if has(F_REPLY_TO) {
            p.reply_to = Some(r.str16()?);
        }
        if has(F_EXPIRATION) {
            p.expiration = Some(Duration::from_millis(r.u64()?));
        }
        if has(F_MESSAGE_ID) {
            p.message_id = Some(r.str16()?);
        }
        if has(F_TIMESTAMP) {
            p.timestamp = Some(r.u64()?);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full() -> Message {
        let mut m = Message::new("the body")
            .with_priority(7)
            .with_content_type("application/json")
            .with_header("s", "v")
            .with_header("i", -5i64)
            .with_header("f", 1.25)
            .with_header("b", true)
            .with_header("raw", Bytes::from_static(&[0, 255]))
            .with_header(
                "nested",
                Value::List(vec![
                    Value::Null,
                    Value::Table(Headers::from([("k".into(), Value::from(1))])),
                ]),
            );
        let p = &mut m.properties;
        p.content_encoding = Some("utf-8".into());
        p.delivery_mode = DeliveryMode::Transient;
        p.correlation_id = Some("c".into());
        p.reply_to = Some("r".into());
        p.expiration = Some(Duration::from_millis(1500));
        p.message_id = Some("m".into());
        p.timestamp = Some(1_700_000_000);
        m
    }

    #[test]
    fn round_trip_every_property_and_share_the_body() {
        let m = full();
        let buf = encode("ex", "a.b", &m).unwrap();
        let p = decode(&buf).unwrap();
        assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("ex", "a.b"));
        assert_eq!(p.message(), m);
        // Zero-copy: the body points into the encoded buffer.
        let off = p.body.as_ptr() as usize - buf.as_ptr() as usize;
        assert_eq!(&buf[off..off + 8], b"the body");
        let plain = encode("", "q", &Message::new("x")).unwrap();
        assert_eq!(plain.len(), 1 + 1 + 2 + 2 + 4 + 1);
        let d = decode(&plain).unwrap();
        assert_eq!(d.message(), Message::new("x"));
        // Default properties are no allocation.
        assert!(d.properties.is_none());
    }

    /// A run decoding with the names of the records before it gets each
    /// record's own names, and a name that is not UTF-8 is refused even
    /// right after a good one of the same length.
    #[test]
    fn names_kept_across_a_run_are_each_record_s_own() {
        let mut names = Names::default();
        let m = Message::new("x");
        for (ex, rk) in [
            ("ex", "a.b"),
            ("ex", "a.b"),
            ("ex", "a.c"),
            ("", "a.c"),
            ("", ""),
        ] {
            let p = decode_with(&encode(ex, rk, &m).unwrap(), &mut names).unwrap();
            assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), (ex, rk));
        }
        let mut names = Names::default();
        let good = encode("", "\u{e9}", &m).unwrap();
        assert_eq!(
            decode_with(&good, &mut names).unwrap().routing_key.as_str(),
            "\u{e9}"
        );
        let mut bad = good.to_vec();
        assert_eq!(&bad[2..5], &[2, 0xc3, 0xa9]);
        bad[4] = 0x28;
        assert_eq!(
            decode_with(&Bytes::from(bad), &mut names),
            Err(DecodeError::BadUtf8 { at: 3 })
        );
        assert_eq!(
            decode_with(&good, &mut names).unwrap().routing_key.as_str(),
            "\u{e9}"
        );
        // A record that fails after its exchange: the next record holding
        // the earlier pair's bytes gets that pair.
        let mut names = Names::default();
        let ak = encode("a", "k", &m).unwrap();
        decode_with(&ak, &mut names).unwrap();
        let mut bad = encode("b", "k", &m).unwrap().to_vec();
        bad[4] = 0xff;
        assert!(decode_with(&Bytes::from(bad), &mut names).is_err());
        let p = decode_with(&ak, &mut names).unwrap();
        assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("a", "k"));
    }

    #[test]
    fn precise_errors_on_bad_input() {
        let good = encode("ex", "rk", &full()).unwrap();
        for cut in 0..good.len() {
            let e = decode(&good.slice(..cut)).unwrap_err();
            assert!(matches!(e, DecodeError::Truncated { .. }), "cut {cut}: {e}");
        }
        let mut v = good.to_vec();
        v[0] = 9;
        assert_eq!(decode(&Bytes::from(v)), Err(DecodeError::UnknownVersion(9)));
        let mut v = good.to_vec();
        v.push(0);
        assert_eq!(decode(&Bytes::from(v)), Err(DecodeError::Trailing(1)));
        let bad_flags = Bytes::from_static(&[1, 0, 0, 0x00, 0x80]);
        assert_eq!(decode(&bad_flags), Err(DecodeError::UnknownFlags(0x8000)));
        let bad_utf8 = Bytes::from_static(&[1, 1, 0xff, 0]);
        assert_eq!(decode(&bad_utf8), Err(DecodeError::BadUtf8 { at: 2 }));
        // A header value with tag 99.
        let bad_tag = Bytes::from_static(&[1, 0, 0, 4, 0, 1, 0, 0, 0, 1, 0, b'k', 99]);
        assert_eq!(
            decode(&bad_tag),
            Err(DecodeError::BadTag { at: 12, tag: 99 })
        );
        // A list claiming 4 billion items in a short buffer does not allocate.
        let huge = Bytes::from_static(&[
            1, 0, 0, 4, 0, 1, 0, 0, 0, 1, 0, b'k', 6, 0xff, 0xff, 0xff, 0xff,
        ]);
        assert!(matches!(decode(&huge), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn nesting_and_lengths_are_bounded() {
        let mut v = Value::Null;
        for _ in 0..(MAX_DEPTH + 2) {
            v = Value::List(vec![v]);
        }
        let m = Message::new("").with_header("deep", v);
        assert_eq!(encode("", "", &m), Err(EncodeError::TooDeep));
        let long = "x".repeat(256);
        assert!(matches!(
            encode(&long, "", &Message::new("")),
            Err(EncodeError::TooLong {
                field: "exchange",
                len: 256,
                max: 255
            })
        ));
        // Deep nesting in garbage is refused, not followed.
        let mut g = vec![1u8, 0, 0, 4, 0, 1, 0, 0, 0, 1, 0, b'k'];
        for _ in 0..100 {
            g.extend_from_slice(&[6, 1, 0, 0, 0]);
        }
        g.push(0);
        assert_eq!(decode(&Bytes::from(g)), Err(DecodeError::TooDeep));
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(|b| Value::Float(f64::from_bits(b & !(0x7ff << 52)))),
            ".{0,8}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| Value::Bytes(v.into())),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                proptest::collection::btree_map(".{0,4}", inner, 0..4).prop_map(Value::Table),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_message_round_trips(
            ex in ".{0,20}", rk in ".{0,20}", body in proptest::collection::vec(any::<u8>(), 0..64),
            headers in proptest::collection::btree_map(".{0,6}", value(), 0..4),
            prio in proptest::option::of(any::<u8>()), ts in proptest::option::of(any::<u64>()),
        ) {
            prop_assume!(ex.len() <= 255 && rk.len() <= 255);
            let mut m = Message::new(body);
            m.properties.headers = headers;
            m.properties.priority = prio;
            m.properties.timestamp = ts;
            let buf = encode(&ex, &rk, &m).unwrap();
            let p = decode(&buf).unwrap();
            prop_assert_eq!(p.exchange.as_str(), ex.as_str());
            prop_assert_eq!(p.routing_key.as_str(), rk.as_str());
            prop_assert_eq!(p.properties.is_none(), m.properties.is_default());
            prop_assert_eq!(p.message(), m);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
