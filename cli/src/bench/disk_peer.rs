//! The durability limits for local://: each producer thread writes `size`
//! bytes and calls `fdatasync` for every message, on a file in the store's own
//! directory (same disk), with no queue, routing or consumer: what one
//! synchronous durable write per message costs there. And the disk's
//! bandwidth with large commits: one thread writing the same messages
//! sequentially and calling `fdatasync` once per [`BATCH_BYTES`], the bound
//! for pipelined publishing.

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
                let f = scratch_file(&path)?;
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
    // Writing is all this peer does: its one phase is publishing.
    if w.phased {
        r.publish_phase = Some(elapsed);
    }
    Ok(r)
}

/// Bytes written between two `fdatasync` calls by [`run_batched`].
pub(crate) const BATCH_BYTES: usize = 1 << 20;

/// One thread writes the workload's messages back to back (one `write` per
/// commit of `batch` bytes, rounded to whole messages) and calls
/// `fdatasync` after each commit.
pub(crate) fn run_batched(
    w: &Workload,
    dir: &std::path::Path,
    batch: usize,
) -> Result<Report, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("raw fdatasync peer: {}: {e}", dir.display()))?;
    let path = dir.join(format!("raw-batched-{}", std::process::id()));
    let f = scratch_file(&path)?;
    let per_commit = (batch / w.size).max(1) as u64;
    let buf = vec![0xA5u8; per_commit as usize * w.size];
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("write+fdatasync 1MiB", w.messages, done.clone());
    let mut hist = histogram();
    let start = Instant::now();
    let mut off = 0u64;
    let mut left = w.messages;
    while left > 0 {
        let n = left.min(per_commit);
        let t = Instant::now();
        let r = f
            .write_all_at(&buf[..n as usize * w.size], off)
            .and_then(|()| f.sync_data());
        if let Err(e) = r {
            let _ = std::fs::remove_file(&path);
            return Err(format!("raw fdatasync peer: {e}"));
        }
        // Every message of the commit is confirmed when its sync returns.
        hist.saturating_record_n((t.elapsed().as_micros() as u64).max(1), n);
        off += n * w.size as u64;
        left -= n;
        done.fetch_add(n, Ordering::Relaxed);
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    drop(progress);
    let _ = std::fs::remove_file(&path);
    let w1 = Workload {
        producers: 1,
        ..w.clone()
    };
    let mut r = Report::from_histogram(
        format!("write+fdatasync ({} KiB commits)", batch >> 10),
        &w1,
        elapsed,
        &hist,
    );
    r.confirm_us = Some(r.latency_us);
    // Writing is all this peer does: its one phase is publishing.
    if w.phased {
        r.publish_phase = Some(elapsed);
    }
    Ok(r)
}

/// A fresh file for a raw peer to write.
fn scratch_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("raw fdatasync peer: {}: {e}", path.display()))
}
