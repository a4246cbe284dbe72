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
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use dashi_engine::*;

/// Transport schemes this build can open.
pub const SCHEMES: &[&str] = &["memory", "local"];

/// The `local://` transport (memory-mapped store shared by processes).
pub use dashi_transport_local as local;

/// Opens a connection from a URL, dispatching on its scheme:
/// `memory://[NAME]`, `local:///abs/dir`. Several URLs separated by `;` are tried in order and the
/// first that opens is used (failover); the error of the last is returned when
/// none does.
pub fn connect(url: &str) -> Result<Connection, Error> {
    let mut last = Error::Url(UrlError::Empty);
    for one in url::split_failover(url)? {
        match open_one(one) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn open_one(url: &str) -> Result<Connection, Error> {
    let parsed = ConnectUrl::parse(url)?;
    match parsed.scheme.as_str() {
        "memory" => memory::open(parsed),
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
