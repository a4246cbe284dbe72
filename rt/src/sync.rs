//! The one place where the runtime's cross-thread primitives for the doorbell
//! handshake are named, so that `--cfg loom` swaps in loom's model-checked
//! versions (the engine's `sync` module is the same idea).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU8, Ordering};
#[cfg(all(loom, test))]
pub(crate) use loom::sync::{atomic::AtomicUsize, Arc};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU8, Ordering};
