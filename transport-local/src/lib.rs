//! # dashi-transport-local
//!
//! The `local://` transport: a memory-mapped durable log that several
//! processes share without a broker. The on-disk format is documented in
//! `FORMAT.md` beside this crate; what survives a crash or a power loss is in
//! the workspace's `RELIABILITY.md`.
//!
//! - [`transport`]: the store (`LocalTransport`, `open(url)`): topology in
//!   `meta.json` with a shared generation word, queues of priority lanes,
//!   cross-process wake-ups, durability modes, recovery on open.
//! - [`codec`]: the record payload (exchange, routing key, properties, body),
//!   a versioned binary encoding whose decoder never panics on garbage and
//!   reads the body without copying.
//! - [`names`]: queue and exchange names to file names and back, so no name
//!   can escape or break the store directory.
//! - [`segment`]: a preallocated, memory-mapped segment that processes append
//!   to with a shared fetch-add, commit with a compare-and-swap, and scan with
//!   self-describing, checksummed records; [`recovery`] checks one on open.
//! - [`lane`]: a chain of segments with shared consumer state: claims by
//!   compare-and-swap on each record's claim word, restored records ahead of
//!   newer ones, dead or stalled claimers' records reclaimed ([`state`] holds
//!   the shared words, [`owner`] names processes by pid and start time,
//!   [`alloc`] allocates segments on the io_uring runtime).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod alloc;
pub mod codec;
mod durability;
pub mod lane;
// flock(2) through libc; the block has a SAFETY note.
#[allow(unsafe_code)]
pub mod lock;
pub mod meta;
pub mod names;
// clock_gettime(2) through libc; the block has a SAFETY note.
#[allow(unsafe_code)]
pub mod owner;
pub mod recovery;
// Atomics and copies on the shared mapping need `unsafe`; every block has a
// SAFETY note.
#[allow(unsafe_code)]
pub mod segment;
#[allow(unsafe_code)]
pub mod state;
pub mod transport;

pub use transport::{open, Fsync, LocalOptions, LocalTransport};
