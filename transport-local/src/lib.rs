//! # dashi-transport-local
//!
//! The `local://` transport: a memory-mapped durable log that several
//! processes share without a broker. The on-disk format is documented in
//! `FORMAT.md` beside this crate; what survives a crash or a power loss is in
//! the workspace's `RELIABILITY.md`.
//!
//! The public API is the transport itself ([`LocalTransport`], [`open`],
//! [`LocalOptions`], [`Fsync`], [`RecoveryTotals`], [`set_aside`]); everything else is
//! internal, grouped by idea:
//! - `store/`: the store as a transport: options and URL, opening (marker,
//!   presence lock, recovery), topology (`meta.json` and the routing
//!   snapshot), publish, one queue as a `QueueStore`, cross-process
//!   wake-ups, durability (group commit on the io_uring runtime), TTL
//!   expiry on a timer, store-wide counters and consumers.
//! - `lane/`: a chain of segments with shared consumer state: positions and
//!   tokens, the state-page layout, appends, claims, upkeep.
//! - `segment.rs` (one mapped segment, records reserved and committed by
//!   compare-and-swap of their state word), `recovery.rs` (checking one on
//!   open), `codec.rs` (the record payload), `file_names.rs` (names to file
//!   names), `shared_page.rs` (mapped words), `futex.rs`, `alloc.rs`
//!   (segment space), `procs.rs` (process identities), `clock.rs` (the
//!   host's shared clock), `lock.rs` (`flock`).
//!
//! With the `test-hooks` feature, `test_hooks` exposes entry points for the
//! fuzz targets.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// A failpoint (the `fail` crate) where the protocol can be stopped, slowed
/// or failed from a test: with the `failpoints` feature, the action
/// `return(<marker>)` prints `failpoint <name> <marker>` on stdout and stops
/// the thread for good (a test then kills the process there). Nothing
/// without the feature.
#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |marker: Option<String>| {
            crate::failpoints::stop_here($name, marker)
        })
    };
}

#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($name:literal) => {};
}
pub(crate) use failpoint;
#[cfg(feature = "failpoints")]
mod failpoints;

mod alloc;
mod clock;
mod codec;
mod file_names;
mod futex;
mod lane;
mod lock;
// Atomics and copies on the shared mapping need `unsafe`; every block has a
// SAFETY note. Nothing else in the crate uses `unsafe`.
#[allow(unsafe_code)]
mod mem;
mod procs;
mod recovery;
mod segment;
mod shared_page;
mod store;
mod sync;
#[cfg(any(test, feature = "test-hooks"))]
pub mod test_hooks;
#[cfg(test)]
mod tests;

pub use recovery::Totals as RecoveryTotals;
pub use store::{open, set_aside, Fsync, LocalOptions, LocalTransport, SetAside};
