//! Topology (exchanges and bindings) and the immutable routing snapshot built
//! from it. Transports keep a [`Topology`] under a slow-path lock, rebuild a
//! [`Routing`] after each change and publish it by atomic pointer swap;
//! publishers route on their own thread against the snapshot, without locks.
//!
//! # Invariants
//! - A [`Routing`] is never changed after it is built: a topology change
//!   builds a new one, so a publisher routes against one consistent view.
//! - Every binding in a [`Topology`] was validated when it was added (exchange
//!   exists, pattern or `x-match` arguments parse), so building a snapshot
//!   cannot fail.

pub(crate) mod headers;
mod snapshot;
pub(crate) mod topic;
mod topology;

pub use snapshot::{Refused, Route, Routing};
pub use topology::{Binding, Topology};
