//! The layout of a lane's shared state page (the claim word of each record is
//! in `segment.rs`).
//!
//! # Invariants
//! - Each counter pair sits on its own 64-byte line and is written by one
//!   side only (producers, consumers, restorers), so a publish and a claim
//!   never bounce a line between them.
//! - Positions are packed (`position.rs`); a zero word is "not initialised
//!   yet" (no record starts at offset 0).

/// Offsets of the shared words in the state page.
pub(crate) mod at {
    /// The segment producers append to.
    pub(crate) const WRITE_SEG: usize = 0;
    /// The first record never claimed (packed position).
    pub(crate) const NEXT: usize = 64;
    /// The lowest position that may hold a restored, ready record below
    /// `NEXT` (packed; all ones = none).
    pub(crate) const RESTORE_LOW: usize = 128;
    /// Records (and body bytes) appended (producers).
    pub(crate) const APPENDED: usize = 192;
    pub(crate) const APPENDED_BYTES: usize = 200;
    /// Records claimed and not settled (two's complement; for figures only).
    pub(crate) const UNACKED: usize = 256;
    /// The first record that may be unsettled (packed).
    pub(crate) const HEAD: usize = 320;
    /// The lowest segment not yet deleted by retention.
    pub(crate) const LOW_SEG: usize = 384;
    /// Records (and body bytes) claimed (consumers).
    pub(crate) const TAKEN: usize = 448;
    pub(crate) const TAKEN_BYTES: usize = 456;
    /// Records (and body bytes) returned to ready (restorers). `RESTORED`
    /// also tells a consumer clearing the restore mark whether a restore
    /// happened during its walk.
    pub(crate) const RESTORED: usize = 512;
    pub(crate) const RESTORED_BYTES: usize = 520;
}
