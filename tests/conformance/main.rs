//! The conformance suite: one set of behaviour tests written against
//! `dashi::connect(url)`, run for every transport URL in [`targets`]. A new
//! transport joins by adding its URL factory there.

mod bad_input;
mod busy_poll;
mod close_restores;
mod consumer_cancel;
mod dead_letter_ttl;
mod drain_and_fairness;
mod leases;
mod max_length;
mod priority_order;
mod qos_windows;
mod requeue_position;
mod routing;
mod simple_queue;
mod stats;
mod stream_async;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashi::{Channel, Connection, Delivery, Queue};

/// One transport under test: its URL, plus whatever keeps its backing store
/// alive for the test's duration (a local:// directory is removed on drop).
#[derive(Debug)]
pub struct Target {
    pub url: String,
    dir: Option<std::path::PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Every transport URL the suite runs against, fresh and isolated per call.
pub fn targets(test: &str) -> Vec<Target> {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "dashi-conformance-{}-{test}-{n}",
        std::process::id()
    ));
    vec![
        Target {
            url: format!("memory://conformance-{test}-{n}"),
            dir: None,
        },
        Target {
            url: format!("local://{}?segment_size=1M", dir.display()),
            dir: Some(dir.clone()),
        },
        Target {
            url: format!(
                "local://{}-sync?segment_size=1M&fsync=always",
                dir.display()
            ),
            dir: Some(dir.with_file_name(format!(
                "{}-sync",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
            ))),
        },
    ]
}

/// Runs `f` once per transport.
pub fn each(test: &str, f: impl Fn(&str)) {
    for t in targets(test) {
        eprintln!("-- {test} on {}", t.url);
        f(&t.url);
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
