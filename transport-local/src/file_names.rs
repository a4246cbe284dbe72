//! Names are not paths: queue and exchange names reach the file system only
//! through this encoding, which is safe (the result is one path component of
//! `[A-Za-z0-9._-]`, never `.` or `..`, at most 255 bytes) and reversible
//! ([`decode`] gives the name back exactly).
//!
//! Bytes in `[A-Za-z0-9_-]` stand for themselves; every other byte, `.` and
//! `%`-like escapes included, becomes `.XX` (two lower-case hex digits). The
//! result never contains `/` or NUL and never starts with `.` unless the name
//! does (then it is an escape, so it is never `.` or `..`). A 255-byte name of
//! multi-byte UTF-8 encodes to at most 765 bytes, too long for one path
//! component: names whose encoding exceeds [`MAX_COMPONENT`] are stored as
//! `~` + a 64-bit FNV-1a hash + `.` + the first 150 encoded bytes, and the
//! full name is kept in a `name` file inside the directory (the caller's job),
//! so the mapping stays reversible.
//!
//! # Invariants
//! - An encoded name is exactly one path component, never `.` or `..`, never
//!   containing `/` or NUL, at most [`MAX_COMPONENT`] bytes; distinct names give
//!   distinct components.

/// Longest file name the encoding produces (Linux `NAME_MAX` is 255).
pub(crate) const MAX_COMPONENT: usize = 240;

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The full escape form of `name` (may exceed [`MAX_COMPONENT`]).
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push('.');
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The file-name component for `name`. `None` for the empty name (not a
/// valid queue or exchange name).
pub(crate) fn encode(name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let full = escape(name);
    if full.len() <= MAX_COMPONENT {
        return Some(full);
    }
    let mut cut = 150;
    // Do not split an escape.
    while full.as_bytes()[..cut]
        .iter()
        .rev()
        .take(2)
        .any(|b| *b == b'.')
    {
        cut -= 1;
    }
    Some(format!("~{:016x}.{}", fnv1a(name.as_bytes()), &full[..cut]))
}

#[cfg(test)]
/// True when `component` is a hashed (long-name) encoding, whose name must be
/// read from the directory's `name` file.
pub(crate) fn is_hashed(component: &str) -> bool {
    component.starts_with('~')
}

#[cfg(test)]
/// Why a component is not an encoding this module produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum NameDecodeError {
    /// A byte outside the encoding's alphabet.
    #[error("byte {byte:#04x} at {at} is not part of an encoded name")]
    BadByte {
        /// Offset in the component.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// `.` not followed by two lower-case hex digits.
    #[error("bad escape at {at}")]
    BadEscape {
        /// Offset in the component.
        at: usize,
    },
    /// The decoded bytes are not UTF-8.
    #[error("decoded name is not UTF-8")]
    NotUtf8,
    /// A hashed component: the name is in the directory's `name` file.
    #[error("hashed component: read the name from the directory's name file")]
    Hashed,
    /// Empty component.
    #[error("empty component")]
    Empty,
}

#[cfg(test)]
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
/// The name a (non-hashed) component stands for.
pub(crate) fn decode(component: &str) -> Result<String, NameDecodeError> {
    if component.is_empty() {
        return Err(NameDecodeError::Empty);
    }
    if is_hashed(component) {
        return Err(NameDecodeError::Hashed);
    }
    let b = component.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if plain(c) => {
                out.push(c);
                i += 1;
            }
            b'.' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(NameDecodeError::BadEscape { at: i });
                };
                out.push(h << 4 | l);
                i += 3;
            }
            byte => return Err(NameDecodeError::BadByte { at: i, byte }),
        }
    }
    String::from_utf8(out).map_err(|_| NameDecodeError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn safe(c: &str) -> bool {
        !c.is_empty()
            && c.len() <= 255
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b))
    }

    #[test]
    fn hostile_names_stay_inside() {
        for name in [
            "../x",
            "a/b",
            "..",
            ".",
            "x\0y",
            "/etc/passwd",
            "~home",
            "%2e%2e",
            "q.name",
        ] {
            let c = encode(name).unwrap();
            assert!(safe(&c), "{name:?} -> {c:?}");
            assert_eq!(decode(&c).unwrap(), name);
        }
        assert_eq!(encode("orders-1_A"), Some("orders-1_A".into()));
        assert_eq!(encode("a.b"), Some("a.2eb".into()));
        assert_eq!(encode(""), None);
    }

    #[test]
    fn long_names_hash_and_say_so() {
        let long = "é".repeat(127);
        let c = encode(&long).unwrap();
        assert!(safe(&c) && c.len() <= MAX_COMPONENT, "{} bytes", c.len());
        assert!(is_hashed(&c));
        assert_eq!(decode(&c), Err(NameDecodeError::Hashed));
        assert_ne!(encode(&"é".repeat(126)).unwrap(), c);
        let fits = "a".repeat(MAX_COMPONENT);
        assert_eq!(decode(&encode(&fits).unwrap()).unwrap(), fits);
        assert!(is_hashed(&encode(&"a".repeat(MAX_COMPONENT + 1)).unwrap()));
    }

    #[test]
    fn bad_components_are_refused() {
        assert_eq!(decode(""), Err(NameDecodeError::Empty));
        assert_eq!(
            decode("a/b"),
            Err(NameDecodeError::BadByte { at: 1, byte: b'/' })
        );
        assert_eq!(decode("a.2"), Err(NameDecodeError::BadEscape { at: 1 }));
        assert_eq!(decode("a.ZZ"), Err(NameDecodeError::BadEscape { at: 1 }));
        assert_eq!(decode(".ff"), Err(NameDecodeError::NotUtf8));
    }

    proptest! {
        #[test]
        fn every_name_round_trips_safely(name in "\\PC{1,255}") {
            prop_assume!(name.len() <= 255);
            let c = encode(&name).unwrap();
            prop_assert!(safe(&c), "{:?} -> {:?}", name, c);
            if !is_hashed(&c) {
                prop_assert_eq!(decode(&c).unwrap(), name);
            }
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,64}") {
            let _ = decode(&s);
        }
    }
}
