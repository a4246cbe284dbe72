//! # dashi-engine
//!
//! The messaging model of dashi (Kombu's vocabulary, AMQP 0-9-1 semantics),
//! the session layer every transport shares, the [`spi`] a transport
//! implements, and the in-process `memory://` transport that is the reference
//! implementation of the semantics. Applications normally use the `dashi`
//! facade crate, which re-exports the user API of this one and adds
//! `dashi::connect(url)`.
//!
//! Layout, one folder per concern:
//! - `model/`: what users declare and send ([`Message`], [`Exchange`],
//!   [`Queue`], [`Value`], name rules).
//! - `routing/`: the topology, the immutable routing snapshot, the topic trie
//!   and headers matching.
//! - `session/`: [`Connection`] (and its `drain_events` dispatcher),
//!   [`Channel`], [`Consumer`] and its QoS window, [`Delivery`] and the
//!   unacked registry, [`Producer`], [`DeliveryStream`], [`SimpleQueue`], the
//!   lease reaper.
//! - `transport/`: the seam ([`spi::Transport`], [`spi::QueueStore`]), the
//!   [`spi::Envelope`], dead-lettering and the queue bookkeeping every
//!   transport shares.
//! - [`memory`]: the `memory://` transport and its lock-free priority lanes.
//! - `notify.rs` (wake-ups), `clock.rs`, `url.rs`, `stats.rs`, `error.rs`,
//!   and `sync.rs` (the shim through which loom checks the lock-free pieces).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod sync;

mod clock;
mod error;
pub mod memory;
mod model;
mod notify;
mod routing;
mod session;
pub mod spi;
mod stats;
#[cfg(any(test, feature = "test-hooks"))]
pub mod test_hooks;
mod transport;
mod url;

pub use error::{
    AckError, BatchError, ConfirmsError, Error, FailureKind, NameError, PublishError, Settled,
    StoreFailure, UrlError,
};
/// The `Stream` trait [`DeliveryStream`] implements, re-exported so users need
/// not depend on `futures-core` themselves.
pub use futures_core;
pub use model::exchange::{Exchange, ExchangeKind};
pub use model::message::{DeliveryMode, Message, Properties};
pub use model::names::MAX_NAME_LEN;
pub use model::queue::{Overflow, Queue, QueueInfo};
pub use model::value::{Headers, Value};
pub use model::{exchange, message, queue, value};
pub use session::channel::Channel;
pub use session::confirm::{
    ChannelOptions, Confirm, DEFAULT_CONFIRM_WINDOW, DEFAULT_CONFIRM_WINDOW_BYTES,
};
pub use session::connection::{Connection, ConnectionConfig, DEFAULT_MAX_BODY_SIZE};
pub use session::consumer::{
    Callback, Consumer, ConsumerOptions, DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT,
};
pub use session::delivery::Delivery;
pub use session::drain::Armed;
pub use session::producer::Producer;
pub use session::simple::SimpleQueue;
pub use session::stream::DeliveryStream;
pub use stats::{CounterSnapshot, QueueStats, Stats};
pub use transport::Implements;
