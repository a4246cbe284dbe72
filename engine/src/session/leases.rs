//! The lease reaper: restores deliveries whose lease (visibility timeout) ran
//! out.
//!
//! # Invariants
//! - One reaper thread per process, started when the first channel with a
//!   leased delivery registers; it holds channels weakly.
//! - Its period follows the shortest lease registered (a quarter of it, between
//!   1 ms and 1 s), so a delivery is restored between its deadline and
//!   deadline + period.
//! - No cap per pass: every expired delivery found is restored in that pass.

use std::sync::{Arc, Weak};
use std::thread::Thread;
use std::time::Duration;

use crate::session::channel::ChannelShared;
use crate::sync::{AtomicU64, Mutex, Ordering::SeqCst};

/// What the reaper watches and how often it looks: the watched entries and
/// the period, which follows the shortest lease registered since the list
/// was last empty.
#[derive(Debug)]
pub(crate) struct Watchlist<E> {
    entries: Mutex<Vec<E>>,
    period_us: AtomicU64,
}

impl<E> Watchlist<E> {
    pub(crate) fn new() -> Self {
        Watchlist {
            entries: Mutex::new(Vec::new()),
            period_us: AtomicU64::new(MAX_PERIOD_US),
        }
    }

    /// Adds an entry (through `add`, under the lock) and shortens the period
    /// to `period_us` if that is shorter; true when it did (the reaper must
    /// wake and use it).
    pub(crate) fn watch(&self, add: impl FnOnce(&mut Vec<E>), period_us: u64) -> bool {
        add(&mut self.entries.lock());
        self.period_us.fetch_min(period_us, SeqCst) > period_us
    }

    /// After a pass: drops entries `keep` refuses, and when none is left
    /// goes back to the longest period. Both under the lock, so a `watch`
    /// racing the end of a pass is never overwritten: it either lands before
    /// (the list is not empty) or after (its period comes after the reset).
    pub(crate) fn end_pass(&self, keep: impl FnMut(&E) -> bool) {
        let mut entries = self.entries.lock();
        entries.retain(keep);
        if entries.is_empty() {
            self.period_us.store(MAX_PERIOD_US, SeqCst);
        }
    }

    pub(crate) fn period_us(&self) -> u64 {
        self.period_us.load(SeqCst)
    }

    /// What `f` makes of each entry it accepts (under the lock).
    pub(crate) fn collect<T>(&self, f: impl FnMut(&E) -> Option<T>) -> Vec<T> {
        self.entries.lock().iter().filter_map(f).collect()
    }
}

struct Reaper {
    channels: Watchlist<Weak<ChannelShared>>,
    thread: Thread,
}

/// The reaper and the process it runs in: a child forked from that process
/// has no reaper thread (threads do not cross a fork) and starts its own.
static REAPER: std::sync::Mutex<Option<(u32, Option<Arc<Reaper>>)>> = std::sync::Mutex::new(None);

const MIN_PERIOD_US: u64 = 1_000;
const MAX_PERIOD_US: u64 = 1_000_000;

/// The process's reaper, started on first use in each process; `None` if
/// its thread could not be started (logged: leases then only end by ack or
/// channel close).
fn reaper() -> Option<Arc<Reaper>> {
    let pid = std::process::id();
    let mut held = REAPER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, r)) = held.as_ref() {
        if *p == pid {
            return r.clone();
        }
    }
    let started = start_reaper();
    *held = Some((pid, started.clone()));
    started
}

fn start_reaper() -> Option<Arc<Reaper>> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<Reaper>>();
    let spawned = std::thread::Builder::new()
        .name("dashi-lease-reaper".into())
        .spawn(move || {
            if let Ok(r) = rx.recv() {
                run(&r)
            }
        });
    match spawned {
        Ok(handle) => {
            let r = Arc::new(Reaper {
                channels: Watchlist::new(),
                thread: handle.thread().clone(),
            });
            let _ = tx.send(r.clone());
            Some(r)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the lease reaper thread; leases will not expire");
            None
        }
    }
}

/// Registers a channel that holds leased deliveries, whose shortest lease is
/// `lease`.
pub(crate) fn watch(channel: &Arc<ChannelShared>, lease: Duration) {
    let Some(r) = reaper() else { return };
    let period = u64::try_from(lease.as_micros() / 4)
        .unwrap_or(u64::MAX)
        .clamp(MIN_PERIOD_US, MAX_PERIOD_US);
    let add = |list: &mut Vec<Weak<ChannelShared>>| {
        if !list.iter().any(|w| w.as_ptr() == Arc::as_ptr(channel)) {
            list.push(Arc::downgrade(channel));
        }
    };
    if r.channels.watch(add, period) {
        r.thread.unpark();
    }
}

fn run(r: &Reaper) {
    loop {
        std::thread::park_timeout(Duration::from_micros(r.channels.period_us()));
        let live: Vec<Arc<ChannelShared>> = r.channels.collect(Weak::upgrade);
        let now_us = crate::clock::now_ns() / 1_000;
        for ch in &live {
            ch.expire_leases(now_us);
        }
        drop(live);
        r.channels.end_pass(|w| w.strong_count() > 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// A lease registered while the reaper ends a pass over an empty list
    /// keeps its short period (the reset to the longest period cannot land
    /// after it).
    #[test]
    fn a_watch_racing_the_end_of_a_pass_keeps_its_period() {
        loom::model(|| {
            let w = crate::sync::Arc::new(Watchlist::<u32>::new());
            let w2 = w.clone();
            let watcher = loom::thread::spawn(move || {
                w2.watch(|l| l.push(1), 10_000);
            });
            w.end_pass(|_| true);
            watcher.join().unwrap();
            assert_eq!(w.period_us(), 10_000);
        });
    }
}
