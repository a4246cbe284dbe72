//! The layout of a lane's shared state page and of a record's claim word.
//!
//! # Invariants
//! - Each counter pair of the state page sits on its own 64-byte line and is
//!   written by one side only (producers, consumers, restorers).

/// Claim-word states (bits 0-1), the redelivered bit (2), and the owner:
/// process id in bits 32.., low bits of its start time in bits 3..32 (see
/// [`crate::owner`]), so a recycled pid is not mistaken for the claimer.
pub(crate) mod claim {
    /// Not delivered (or restored).
    pub(crate) const READY: u64 = 0;
    /// Delivered to the owner in bits 32..; not settled.
    pub(crate) const CLAIMED: u64 = 1;
    /// Acknowledged.
    pub(crate) const ACKED: u64 = 2;
    /// Rejected, expired or dropped (dead-lettered elsewhere if configured).
    pub(crate) const DEAD: u64 = 3;
    /// Delivered before and returned.
    pub(crate) const REDELIVERED: u64 = 4;

    /// The state bits.
    pub(crate) fn state(w: u64) -> u64 {
        w & 3
    }
    /// The owner (process id and start-time bits) of a claimed word.
    pub(crate) fn owner(w: u64) -> u64 {
        w & !7
    }
}

/// Offsets of the shared words in the state page.
pub(super) mod at {
    pub(crate) const WRITE_SEG: usize = 0;
    pub(crate) const NEXT: usize = 64;
    pub(crate) const RESTORE: usize = 128;
    // Ready = appended + restored - taken; each pair on its own cache line,
    // written by one side only (producers, restorers, consumers), so a
    // publish and a claim never bounce a counter line between them.
    pub(crate) const APPENDED: usize = 192;
    pub(crate) const APPENDED_BYTES: usize = 200;
    pub(crate) const TAKEN: usize = 512;
    pub(crate) const TAKEN_BYTES: usize = 520;
    pub(crate) const RESTORED: usize = 576;
    pub(crate) const RESTORED_BYTES: usize = 584;
    pub(crate) const UNACKED: usize = 320;
    pub(crate) const HEAD: usize = 384;
    pub(crate) const LOW_SEG: usize = 448;
}
