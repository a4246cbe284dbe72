//! # dashi-engine
//!
//! The messaging model of dashi (Kombu's vocabulary, AMQP 0-9-1 semantics), the
//! [`Transport`] trait every transport implements, and the in-process
//! `memory://` transport that is the reference implementation of the semantics.
//! Applications normally use the `dashi` facade crate, which re-exports this one
//! and adds `dashi::connect(url)`.
//!
//! Layout: model types ([`message`], [`exchange`], [`queue`], [`value`]),
//! routing ([`routing`], `exchange/topic.rs`, `exchange/headers.rs`), the
//! lock-free pieces (`lanes.rs`, `notify.rs`, `unacked.rs`, all through the
//! `sync` shim so loom can check them), the session layer ([`Connection`],
//! [`Channel`], [`Consumer`], [`Delivery`], [`Producer`], [`SimpleQueue`]),
//! leases (`leases.rs`), stats ([`Stats`]) and [`memory`].
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod sync;

mod channel;
pub mod clock;
mod connection;
mod consumer;
mod delivery;
mod error;
pub mod exchange;
mod lanes;
mod leases;
pub mod memory;
pub mod message;
pub mod names;
mod notify;
mod producer;
pub mod queue;
pub mod routing;
// io_uring submission, eventfd writes and CPU pinning need `unsafe`; every
// block in `rt` carries a SAFETY note.
#[allow(unsafe_code)]
pub mod rt;
mod simple;
mod stats;
mod stream;
pub mod transport;
mod unacked;
pub mod url;
pub mod value;

pub use channel::Channel;
pub use connection::{Connection, ConnectionConfig, DEFAULT_MAX_BODY_SIZE};
pub use consumer::{
    Callback, Consumer, ConsumerOptions, DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT,
};
pub use delivery::Delivery;
pub use error::{AckError, Error, NameError, PublishError, Settled, UrlError};
pub use exchange::{Exchange, ExchangeKind};
/// The `Stream` trait [`DeliveryStream`] implements, re-exported so users need
/// not depend on `futures-core` themselves.
pub use futures_core;
pub use message::{DeliveryMode, Message, Properties};
pub use names::MAX_NAME_LEN;
pub use notify::Notify;
pub use producer::Producer;
pub use queue::{Overflow, Queue, QueueInfo};
pub use simple::SimpleQueue;
pub use stats::{CounterSnapshot, Counters, QueueStats, Stats, TransportEvent};
pub use stream::DeliveryStream;
pub use transport::{Implements, Transport};
pub use url::ConnectUrl;
pub use value::{Headers, Value};
