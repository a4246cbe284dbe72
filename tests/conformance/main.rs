//! The conformance suite: one set of behaviour tests written against
//! `dashi::connect(url)`, expanded into one test module per transport by the
//! [`conformance!`] macro, so a failure names its transport and one transport
//! can run alone: `cargo test --test conformance local_fsync::`. Test paths
//! read `<behaviour>::<transport>::<test>`. A new transport is one line in
//! the macro and one constructor on [`Target`].

/// Expands test functions `fn name(url: &str) { ... }` into the functions
/// themselves plus, per transport, a module of `#[test]`s that run each one
/// against a fresh, isolated URL of that transport.
macro_rules! conformance {
    ($( $(#[$meta:meta])* fn $name:ident($url:ident: &str) $body:block )*) => {
        $( $(#[$meta])* fn $name($url: &str) $body )*
        conformance!(@transport memory, $($name)*);
        conformance!(@transport local, $($name)*);
        conformance!(@transport local_fsync, $($name)*);
    };
    (@transport $transport:ident, $($name:ident)*) => {
        mod $transport {
            $(
                #[test]
                fn $name() {
                    let target = crate::Target::$transport(stringify!($name));
                    super::$name(&target.url);
                }
            )*
        }
    };
}

mod bad_input;
mod busy_poll;
mod close_restores;
mod confirms;
mod consumer_cancel;
mod dead_letter_ttl;
mod drain_and_fairness;
mod event_loop;
mod leases;
mod max_length;
mod priority_order;
mod qos_windows;
mod requeue_position;
mod routing;
mod session_races;
mod simple_queue;
mod stats;
mod stream_async;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashi::{Channel, Connection, Delivery, Queue};
use dashi_test_support::TestDir;

/// One transport under test: its URL, plus whatever keeps its backing store
/// alive for the test's duration (a local:// directory, removed on drop).
#[derive(Debug)]
pub struct Target {
    pub url: String,
    _dir: Option<TestDir>,
}

/// A number unique in this test run, so that every target is isolated.
fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

impl Target {
    /// An isolated `memory://NAME` instance.
    pub fn memory(test: &str) -> Target {
        Target {
            url: format!("memory://conformance-{test}-{}", unique()),
            _dir: None,
        }
    }

    /// A fresh local:// store, `fsync=never`.
    pub fn local(_test: &str) -> Target {
        Self::local_with("segment_size=1M")
    }

    /// A fresh local:// store, `fsync=always`.
    pub fn local_fsync(_test: &str) -> Target {
        Self::local_with("segment_size=1M&fsync=always")
    }

    fn local_with(options: &str) -> Target {
        let dir = TestDir::new();
        Target {
            url: format!("local://{}?{options}", dir.display()),
            _dir: Some(dir),
        }
    }
}

pub fn connect(url: &str) -> Connection {
    dashi::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

pub const WAIT: Duration = Duration::from_secs(5);

/// Declares `name` with default options on `ch`.
pub fn queue(ch: &Channel, name: &str) {
    ch.queue_declare(&Queue::new(name)).unwrap();
}

/// Gets one message that must be there.
pub fn must_get(ch: &Channel, q: &str) -> Delivery {
    ch.get(q, WAIT)
        .unwrap()
        .unwrap_or_else(|| panic!("no message in {q}"))
}

/// Drains a queue with `get`, acking, and returns the bodies as strings.
pub fn drain_bodies(ch: &Channel, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = ch.get(q, Duration::ZERO).unwrap() {
        out.push(String::from_utf8(d.body().to_vec()).unwrap());
        d.ack().unwrap();
    }
    out
}

/// Drains a queue with `get`, acking, and returns (body, redelivered) pairs.
pub fn drain_flags(ch: &Channel, q: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(d) = ch.get(q, Duration::ZERO).unwrap() {
        out.push((body(&d), d.redelivered()));
        d.ack().unwrap();
    }
    out
}

/// `(body, redelivered)` pairs from string literals, for comparisons.
pub fn flags(pairs: &[(&str, bool)]) -> Vec<(String, bool)> {
    pairs.iter().map(|(b, r)| (b.to_string(), *r)).collect()
}

pub fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}
