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

pub(crate) fn run(w: &Workload, dir: &std::path::Path) -> Result<Report, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("raw fdatasync peer: {}: {e}", dir.display()))?;
    let done = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let progress = Progress::start("write+fdatasync", w.messages, done.clone());
    let start = Instant::now();
    let threads: Vec<_> = (0..w.producers)
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
    for t in threads {
        t.join().map_err(|_| "a raw fdatasync thread panicked")??;
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    drop(progress);
    let h = hist.lock().map_err(|_| "histogram lock poisoned")?.clone();
    Ok(Report::from_histogram(
        "write+fdatasync (raw)",
        w,
        elapsed,
        &h,
    ))
}
