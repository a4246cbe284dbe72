//! Where a record is: a segment number and an offset, packed into one word
//! for the lane's shared positions, and into a delivery token together with
//! the lane.
//!
//! # Invariants
//! - A packed position keeps `OFF_BITS` bits of offset and `SEQ_BITS` bits of
//!   segment number; [`NO_POS`] (all those bits set) means "none".
//! - A token is `lane << TOKEN_LANE_SHIFT | packed position`, and the packed
//!   position never reaches the lane's bits.

/// A record's place: segment number and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    /// Segment number.
    pub(crate) seq: u64,
    /// Offset in the segment.
    pub(crate) off: u64,
}

pub(super) const OFF_BITS: u32 = 36;
pub(super) const SEQ_BITS: u32 = 20;
pub(super) const NO_POS: u64 = (1 << (OFF_BITS + SEQ_BITS)) - 1;

impl Pos {
    pub(super) fn pack(self) -> u64 {
        (self.seq << OFF_BITS) | self.off
    }
    pub(super) fn unpack(v: u64) -> Pos {
        Pos {
            seq: (v & NO_POS) >> OFF_BITS,
            off: v & ((1 << OFF_BITS) - 1),
        }
    }
}

/// Where the lane sits in a delivery token.
const TOKEN_LANE_SHIFT: u32 = 56;

/// The delivery token of the record at `pos` in lane `lane`: names the
/// record uniquely within its queue.
pub(crate) fn token(lane: u8, pos: Pos) -> u64 {
    (u64::from(lane) << TOKEN_LANE_SHIFT) | pos.pack()
}

/// The lane a delivery token names.
pub(crate) fn token_lane(token: u64) -> u8 {
    (token >> TOKEN_LANE_SHIFT) as u8
}
