//! # dashi
//!
//! An embedded message-queue engine: Kombu's messaging model (Connection,
//! Channel, Exchange, Queue, Producer, Consumer) with AMQP 0-9-1 semantics.
//!
//! ```
//! use std::time::Duration;
//! let conn = dashi::connect("memory://doc-example").unwrap();
//! let ch = conn.channel().unwrap();
//! ch.queue_declare(&dashi::Queue::new("tasks")).unwrap();
//! ch.producer().publish("hello", "tasks").unwrap();
//! let d = ch.get("tasks", Duration::from_secs(1)).unwrap().unwrap();
//! assert_eq!(&d.body()[..], b"hello");
//! d.ack().unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use dashi_engine::{
    exchange, futures_core, message, queue, value, AckError, Armed, BatchError, Callback, Channel,
    ChannelOptions, Confirm, ConfirmsError, Connection, ConnectionConfig, Consumer,
    ConsumerOptions, CounterSnapshot, Delivery, DeliveryMode, DeliveryStream, Error, Exchange,
    ExchangeKind, FailureKind, Headers, Implements, Message, NameError, Overflow, Producer,
    Properties, PublishError, Queue, QueueInfo, QueueStats, Settled, SimpleQueue, Stats,
    StoreFailure, UrlError, Value, DEFAULT_CONFIRM_WINDOW, DEFAULT_CONFIRM_WINDOW_BYTES,
    DEFAULT_MAX_BODY_SIZE, DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT, MAX_NAME_LEN,
};

/// Transport schemes this build can open.
pub const SCHEMES: &[&str] = &["memory", "local", "redis", "redis+socket"];

/// The `memory://` transport: in-process, lock-free, the reference
/// implementation of dashi's semantics.
pub mod memory {
    pub use dashi_engine::memory::{open, MemoryTransport};
}

/// The `local://` transport: a memory-mapped store shared by processes.
pub mod local {
    pub use dashi_transport_local::{
        open, set_aside, stop_at, Fsync, LocalOptions, LocalTransport, RecoveryTotals, SetAside,
        HAS_STOP_POINTS, STOP_POINTS,
    };
}

/// The `redis://` transport: kombu's key layout and envelope on Redis, so
/// dashi and kombu/Celery processes share queues.
pub mod redis {
    pub use dashi_transport_redis::{open, ConfirmLevel, RedisTransport};
}

/// For transport implementers: the seam, the envelope, the shared routing and
/// bookkeeping (see [`dashi_engine::spi`]), and the thread-per-core runtime
/// ([`spi::rt`]) the I/O transports run on.
pub mod spi {
    pub use dashi_engine::spi::*;
    /// The thread-per-core io_uring runtime.
    pub use dashi_rt as rt;
}

/// Opens a connection from a URL, dispatching on its scheme:
/// `memory://[NAME]`, `local:///abs/dir`, `redis://[[user]:password@]host[:port][/db]`,
/// `redis+socket:///path.sock`. Several URLs separated by `;` are tried in
/// order and the first that opens is used (failover); the error of the last
/// is returned when none does. A `redis://` list stays one connection that
/// walks the list again on every reconnect.
pub fn connect(url: &str) -> Result<Connection, Error> {
    let first = spi::split_failover(url)?[0];
    if let Some((scheme, _)) = first.split_once("://") {
        if matches!(
            scheme.to_ascii_lowercase().as_str(),
            "redis" | "rediss" | "redis+socket" | "unix"
        ) {
            return dashi_transport_redis::open(url);
        }
    }
    let mut last = Error::Url(UrlError::Empty);
    for one in spi::split_failover(url)? {
        match open_one(one) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn open_one(url: &str) -> Result<Connection, Error> {
    let parsed = spi::ConnectUrl::parse(url)?;
    match parsed.scheme.as_str() {
        "memory" => dashi_engine::memory::open(parsed),
        "local" => dashi_transport_local::open(parsed),
        other => Err(UrlError::UnknownScheme {
            scheme: other.to_owned(),
            supported: SCHEMES.join(", "),
        }
        .into()),
    }
}

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
