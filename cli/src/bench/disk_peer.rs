//! The durability limit for local://: each producer thread writes `size`
//! bytes and calls `fdatasync` for every message, on a file in the store's own
//! directory (same disk), with no queue, routing or consumer: what one
//! synchronous durable write per message costs there.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{histogram, Progress, Report, Workload};

/// `threads` loops, each on its own file, share the workload's messages.
pub(crate) fn run(w: &Workload, dir: &std::path::Path, threads: usize) -> Result<Report, String> {
    let w = &Workload {
        producers: threads,
        ..w.clone()
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("raw fdatasync peer: {}: {e}", dir.display()))?;
    let done = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let progress = Progress::start("write+fdatasync", w.messages, done.clone());
    let start = Instant::now();
    let loops: Vec<_> = (0..w.producers)
        .map(|i| {
            let (w, done, hist) = (w.clone(), done.clone(), hist.clone());
            let path = dir.join(format!("raw-fdatasync-{}-{i}", std::process::id()));
            std::thread::spawn(move || -> Result<(), String> {
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("raw fdatasync peer: {}: {e}", path.display()))?;
                let buf = vec![0xA5u8; w.size];
                let mut local = histogram();
                for k in 0..w.share(i) {
                    let t = Instant::now();
                    f.write_all_at(&buf, k * w.size as u64)
                        .and_then(|()| f.sync_data())
                        .map_err(|e| format!("raw fdatasync peer: {e}"))?;
                    local.saturating_record((t.elapsed().as_micros() as u64).max(1));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let _ = hist.lock().map(|mut h| h.add(&local));
                let _ = std::fs::remove_file(&path);
                Ok(())
            })
        })
        .collect();
    for t in loops {
        t.join().map_err(|_| "a raw fdatasync thread panicked")??;
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    drop(progress);
    let h = hist.lock().map_err(|_| "histogram lock poisoned")?.clone();
    let label = if threads == 1 {
        "write+fdatasync (1 loop)".to_string()
    } else {
        format!("write+fdatasync ({threads} loops)")
    };
    let mut r = Report::from_histogram(label, w, elapsed, &h);
    // A raw write is confirmed when its fdatasync returns.
    r.confirm_us = Some(r.latency_us);
    Ok(r)
}
