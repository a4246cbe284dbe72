//! Name rules shared by every transport: AMQP short strings, 1..=255 bytes.
//!
//! # Invariants
//! - Every name that enters a transport was checked here first (1..=255 bytes;
//!   routing keys 0..=255).
//! - A [`ShortStr`] of at most 30 bytes is stored inline (no allocation), so
//!   envelopes with short exchange names and routing keys cost no allocation.

use crate::error::{Error, NameError};

/// Longest exchange, queue, routing key or consumer tag, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Checks the 255-byte limit.
pub fn check_len(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        Err(NameError::TooLong { len: name.len() })
    } else {
        Ok(())
    }
}

/// A name that must be non-empty and at most 255 bytes; `kind` names it in
/// the error ("queue", "exchange").
pub fn check_name(kind: &'static str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::name(kind, name, NameError::Empty));
    }
    check_len(name).map_err(|reason| Error::name(kind, name, reason))
}

/// An exchange name where "" means the default exchange.
pub fn check_exchange_ref(name: &str) -> Result<(), Error> {
    check_len(name).map_err(|reason| Error::name("exchange", name, reason))
}

/// Bytes a [`ShortStr`] holds without allocating.
const INLINE: usize = 30;

/// An immutable string that stores up to 30 bytes inline (exchange names and
/// routing keys usually fit), so carrying one with a message costs no
/// allocation.
#[derive(Clone)]
pub struct ShortStr(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl ShortStr {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // The bytes were copied from a `&str` whole, so they are UTF-8; the
            // checked conversion cannot fail and costs a few ns on ≤30 bytes.
            // The empty name (the default exchange) needs no check at all.
            Repr::Inline { len: 0, .. } => "",
            Repr::Inline { len, buf } => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            Repr::Heap(s) => s,
        }
    }
}

impl ShortStr {
    /// The text's bytes, read without re-checking them (for lookups keyed
    /// by bytes, such as routing).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Heap(s) => s.as_bytes(),
        }
    }
}

impl From<&str> for ShortStr {
    #[inline]
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            ShortStr(Repr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            ShortStr(Repr::Heap(s.into()))
        }
    }
}

impl std::ops::Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ShortStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for ShortStr {
    /// Equal bytes are equal text (both are UTF-8), so no check is needed.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortStr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_str_inline_and_heap() {
        for s in [
            "",
            "celery",
            &"x".repeat(30),
            &"y".repeat(31),
            &"é".repeat(40),
        ] {
            let v = ShortStr::from(s);
            assert_eq!(v.as_str(), s);
            assert_eq!(v.as_bytes(), s.as_bytes());
            assert_eq!(&*v, s);
            assert_eq!(v.to_string(), s);
            assert_eq!(format!("{v:?}"), format!("{s:?}"));
            assert_eq!(v.clone(), v);
        }
        assert!(matches!(ShortStr::from("abc").0, Repr::Inline { .. }));
        assert!(matches!(ShortStr::from(&*"z".repeat(31)).0, Repr::Heap(_)));
    }
}
