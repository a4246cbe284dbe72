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

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

use parking_lot::Mutex;

use crate::session::channel::ChannelShared;

struct Reaper {
    channels: Mutex<Vec<Weak<ChannelShared>>>,
    period_us: AtomicU64,
    thread: Thread,
}

static REAPER: OnceLock<Option<Arc<Reaper>>> = OnceLock::new();

const MIN_PERIOD_US: u64 = 1_000;
const MAX_PERIOD_US: u64 = 1_000_000;

/// The process's reaper, started on first use; `None` if its thread could not
/// be started (logged: leases then only end by ack or channel close).
fn reaper() -> Option<&'static Arc<Reaper>> {
    REAPER
        .get_or_init(|| {
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
                        channels: Mutex::new(Vec::new()),
                        period_us: AtomicU64::new(MAX_PERIOD_US),
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
        })
        .as_ref()
}

/// Registers a channel that holds leased deliveries, whose shortest lease is
/// `lease`.
pub(crate) fn watch(channel: &Arc<ChannelShared>, lease: Duration) {
    let Some(r) = reaper() else { return };
    let period = (lease.as_micros() as u64 / 4).clamp(MIN_PERIOD_US, MAX_PERIOD_US);
    {
        let mut list = r.channels.lock();
        if !list.iter().any(|w| w.as_ptr() == Arc::as_ptr(channel)) {
            list.push(Arc::downgrade(channel));
        }
    }
    if r.period_us.fetch_min(period, SeqCst) > period {
        r.thread.unpark();
    }
}

fn run(r: &Reaper) {
    loop {
        std::thread::park_timeout(Duration::from_micros(r.period_us.load(SeqCst)));
        let live: Vec<Arc<ChannelShared>> = {
            let mut list = r.channels.lock();
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let now_us = crate::clock::now_ns() / 1_000;
        for ch in &live {
            ch.expire_leases(now_us);
        }
        drop(live);
        if r.channels.lock().is_empty() {
            r.period_us.store(MAX_PERIOD_US, SeqCst);
        }
    }
}
