//! A bench consumer in its own process: subscribes, says `ready`, consumes
//! and acks its share, then prints one JSON line with when it finished (wall
//! clock) and its latency percentiles.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashi::{ConsumerOptions, Error};
use serde_json::json;

use super::dashi_run::Recorder;
use super::{histogram, latency_us_at, now_ns};
use crate::args::BenchConsumerArgs;
use crate::connect::connect;

/// Body of the message that tells a consumer process the run is over (one per
/// consumer, published after every data message).
pub(crate) const STOP: &[u8] = b"\0dashi-bench-stop";

pub(crate) fn run(a: BenchConsumerArgs) -> Result<(), String> {
    let conn = connect(&a.url)?;
    let ch = conn.channel().map_err(|e| e.to_string())?;
    // The histogram is the callback's own (no lock per message) and handed
    // over when the consumer is cancelled, as the in-process consumers and
    // the peers keep theirs; one clock read per message serves the latency
    // and the finish time (the peers read the clock once a message too).
    let hist = Arc::new(Mutex::new(None));
    let mut recorder = Recorder {
        hist: histogram(),
        out: hist.clone(),
    };
    let got = Arc::new(AtomicU64::new(0));
    let last_ns = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (g, l, st) = (got.clone(), last_ns.clone(), stop.clone());
    let _consumer = ch
        .consume(ConsumerOptions::new(a.queue.clone()), move |d| {
            if d.body().starts_with(STOP) {
                if st.swap(true, Ordering::Relaxed) {
                    // One stop per consumer: a second one (taken in the same
                    // prefetch batch) goes back for another consumer.
                    let _ = d.reject(true);
                } else {
                    let _ = d.ack();
                }
                return;
            }
            let now = now_ns();
            recorder
                .hist
                .saturating_record(latency_us_at(d.body(), now).max(1));
            let _ = d.ack();
            g.fetch_add(1, Ordering::Relaxed);
            l.store(now, Ordering::Relaxed);
        })
        .map_err(|e| e.to_string())?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Never wait forever: a minute without any message ends the process with
    // an error (the parent then reports it).
    let mut idle = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match conn.drain_events(Some(Duration::from_millis(100))) {
            Ok(_) => idle = std::time::Instant::now(),
            Err(Error::Timeout) if idle.elapsed() > Duration::from_secs(60) => {
                return Err("no message for 60 s; giving up".into())
            }
            Err(Error::Timeout) => {}
            Err(e) => return Err(format!("consumer: {e}")),
        }
    }
    // Stop taking messages; anything still prefetched goes back on close.
    // Cancelling drops the callback, and its recorder hands over.
    drop(_consumer);
    let h = hist
        .lock()
        .map_err(|_| "histogram lock poisoned")?
        .take()
        .ok_or("the consumer's callback was not dropped at cancel")?;
    drop(ch);
    let q = |p: f64| h.value_at_quantile(p);
    println!(
        "{}",
        json!({
            "count": got.load(Ordering::Relaxed),
            "finished_ns": last_ns.load(Ordering::Relaxed),
            "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max()},
        })
    );
    Ok(())
}
