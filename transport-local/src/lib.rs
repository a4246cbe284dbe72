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
mod checksum;
mod clock;
mod codec;
// A file cut short under a mapping: a `SIGBUS` handler and the registry of
// the store's mappings it consults need `unsafe`; every block has a SAFETY
// note.
mod cut;
mod file_names;
mod forked;
mod futex;
mod lane;
mod lock;
// Atomics and copies on the shared mapping need `unsafe`; every block has a
// SAFETY note. Nothing else in the crate (but `cut`) uses `unsafe`.
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

/// The named points inside the log protocol where a fault-injection harness
/// (`dashi torture --kill-points`) can stop a process, to kill it exactly
/// there: a record's space reserved but nothing written
/// (`segment::reserved`), its header written (naming its writer) but not
/// its payload (`segment::named`), a record written but not committed
/// (`segment::written`), a writer holding a mapped segment
/// (`lane::write_segment_mapped`), a segment rotation half done (the next
/// segment created, the lane not yet moved to it: `lane::rotating`), a
/// group commit about to `fdatasync` with confirms waiting on it
/// (`durability::sync`), and, in a consumer, a record claimed and counted
/// with the rest of its run not yet claimed and `next` not yet moved past
/// it (`lane::claimed`), and a delivery settled in its claim word with the
/// unacked figure not yet moved (`lane::settled_uncounted`: a kill there
/// leaves the figure one high until the store is recovered).
pub const STOP_POINTS: &[&str] = &[
    "segment::reserved",
    "segment::named",
    "segment::written",
    "lane::write_segment_mapped",
    "lane::rotating",
    "durability::sync",
    "lane::claimed",
    "lane::settled_uncounted",
];

/// Makes the next thread of this process that reaches `point` (one of
/// [`STOP_POINTS`]) print `failpoint <point> <marker>` on stdout and stop
/// there for good, so that whoever reads the line can kill the process at
/// that step. Only a build with the `failpoints` feature has the points;
/// any other build, or an unknown point, gets an error saying so.
pub fn stop_at(point: &str, marker: &str) -> Result<(), String> {
    if !STOP_POINTS.contains(&point) {
        return Err(format!(
            "unknown stop point {point:?} (one of {})",
            STOP_POINTS.join(", ")
        ));
    }
    stop_at_known(point, marker)
}

#[cfg(feature = "failpoints")]
fn stop_at_known(point: &str, marker: &str) -> Result<(), String> {
    if marker.is_empty()
        || !marker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "a stop marker is letters, digits and '-', not {marker:?}"
        ));
    }
    fail::cfg(point, &format!("1*return({marker})"))
}

#[cfg(not(feature = "failpoints"))]
fn stop_at_known(point: &str, _marker: &str) -> Result<(), String> {
    Err(format!(
        "stop point {point} needs a build with the failpoints feature (cargo build --release -p dashi-cli --features dashi-transport-local/failpoints)"
    ))
}

/// Whether this build has the [`STOP_POINTS`] (the `failpoints` feature).
pub const HAS_STOP_POINTS: bool = cfg!(feature = "failpoints");
