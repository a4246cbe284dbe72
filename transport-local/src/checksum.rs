//! The records' checksum, CRC-32C (Castagnoli), with the CPU's own
//! instruction where it has one (x86-64 with SSE 4.2: one instruction per
//! 8 bytes, about a fifth of the instructions of a table-driven CRC on a
//! small record), else the `crc32c` crate's portable code. Both give the
//! same value (checked below on random input).
//!
//! # Invariants
//! - `append(append(0, a), b) == append(0, a ++ b)`: a record's header and
//!   payload are checked in two calls, as one run of bytes.

/// The CRC-32C of `data` continued from `crc` (0 for a fresh one).
#[inline]
#[allow(unsafe_code)]
pub(crate) fn append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU was just seen to have SSE 4.2, the only
            // feature `hw` is compiled for and requires.
            return unsafe { hw(crc, data) };
        }
    }
    crc32c::crc32c_append(crc, data)
}

/// [`append`] with the `crc32` instruction: 8 bytes at a time, then the
/// last few one by one.
///
/// # Safety
/// The CPU must have SSE 4.2.
#[cfg(all(target_arch = "x86_64", not(loom)))]
#[target_feature(enable = "sse4.2")]
// Rust before 1.87 asks for `unsafe` around the intrinsics even here;
// later releases find it unnecessary.
#[allow(unsafe_code, unused_unsafe)]
unsafe fn hw(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(!crc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        // SAFETY: the caller saw SSE 4.2 (this function's contract).
        c = unsafe { _mm_crc32_u64(c, u64::from_le_bytes(b)) };
    }
    let mut c = c as u32;
    for &b in words.remainder() {
        // SAFETY: as above.
        c = unsafe { _mm_crc32_u8(c, b) };
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::append;
    use proptest::prelude::*;

    #[test]
    fn the_standard_check_value() {
        // CRC-32C of "123456789" (the catalogue's check value).
        assert_eq!(append(0, b"123456789"), 0xE306_9283);
        assert_eq!(append(0, b""), 0);
    }

    proptest! {
        #[test]
        fn the_same_as_the_portable_code_in_any_split(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            at in 0usize..300,
        ) {
            let at = at.min(data.len());
            let whole = crc32c::crc32c(&data);
            prop_assert_eq!(append(0, &data), whole);
            prop_assert_eq!(append(append(0, &data[..at]), &data[at..]), whole);
        }
    }
}
