//! Where a record is: a segment number and an offset, packed into one word
//! for the lane's shared positions and for delivery tokens.
//!
//! # Invariants
//! - A packed position is `seq << 32 | offset / 8`: 32 bits of segment number
//!   (2^32 segments per lane) and offsets up to 32 GiB in 8-byte steps (every
//!   record starts on one). Packed positions order like `(seq, offset)`.
//! - [`NO_POS`] (all ones) means "none"; no record can be there (the last
//!   segment number is never used, see [`MAX_SEQ`]).

/// The highest segment number a lane uses; appending past it is refused.
pub(crate) const MAX_SEQ: u64 = (1 << 32) - 2;

/// "No position".
pub(crate) const NO_POS: u64 = u64::MAX;

/// A record's place: segment number and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    /// Segment number.
    pub(crate) seq: u64,
    /// Offset in the segment (a multiple of 8).
    pub(crate) off: u64,
}

impl Pos {
    /// The first record of segment `seq`.
    pub(crate) fn start(seq: u64) -> Pos {
        Pos {
            seq,
            off: crate::segment::HEADER_LEN,
        }
    }

    pub(crate) fn pack(self) -> u64 {
        (self.seq << 32) | (self.off >> 3)
    }

    pub(crate) fn unpack(v: u64) -> Pos {
        Pos {
            seq: v >> 32,
            off: (v & 0xffff_ffff) << 3,
        }
    }
}

/// The delivery token of the record at `pos`: its packed position, which
/// names it within its lane (the lane travels in the envelope).
pub(crate) fn token(pos: Pos) -> u64 {
    pos.pack()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_pack_in_order_to_the_last_segment() {
        let a = Pos { seq: 3, off: 4096 };
        let b = Pos {
            seq: 3,
            off: 8 << 30,
        };
        let c = Pos {
            seq: MAX_SEQ,
            off: (32 << 30) - 8,
        };
        for p in [a, b, c] {
            assert_eq!(Pos::unpack(p.pack()), p);
            assert_ne!(p.pack(), NO_POS);
        }
        assert!(a.pack() < b.pack() && b.pack() < c.pack());
        assert_eq!(token(a), a.pack());
    }
}
