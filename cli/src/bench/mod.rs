//! `dashi bench`: P producers and C consumers move N messages with acks through
//! a transport, with a progress bar, and report throughput and publish→deliver
//! latency percentiles (hdrhistogram). `--compare` runs the peer or limit that
//! fits the transport in the same process run, doing the same work.

pub(crate) mod child;
mod crossbeam_peer;
mod dashi_run;
mod disk_peer;
mod kombu_peer;
mod plot;
pub(crate) mod redis_peer;
mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::args::BenchArgs;
use crate::output::out;
pub(crate) use report::{Report, Skipped};

/// What every run (dashi or peer) is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) url: String,
    pub(crate) messages: u64,
    pub(crate) size: usize,
    pub(crate) producers: usize,
    pub(crate) consumers: usize,
    pub(crate) priorities: u16,
    /// Run each consumer in its own process.
    pub(crate) consumer_processes: bool,
    /// Messages per second in all, if paced.
    pub(crate) rate: Option<f64>,
    /// Publishes each producer keeps awaiting their confirm (1 = synchronous).
    pub(crate) pipeline: usize,
    /// Publish everything first, then consume and ack it: each side's rate
    /// is measured alone.
    pub(crate) phased: bool,
}

impl Workload {
    /// Messages producer `i` sends (the remainder goes to the first ones).
    pub(crate) fn share(&self, i: usize) -> u64 {
        let p = self.producers as u64;
        self.messages / p + u64::from((i as u64) < self.messages % p)
    }

    /// Waits until the `k`-th message of one of the producers is due (paced
    /// runs): each producer sends its share at `rate / producers`.
    pub(crate) fn pace(&self, start: std::time::Instant, k: u64) {
        let Some(rate) = self.rate else { return };
        let per = rate / self.producers as f64;
        let due = start + Duration::from_secs_f64(k as f64 / per);
        loop {
            let now = std::time::Instant::now();
            if now >= due {
                return;
            }
            let left = due - now;
            if left > Duration::from_micros(200) {
                std::thread::sleep(left - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Priority of the `k`-th message of a producer.
    pub(crate) fn priority(&self, k: u64) -> Option<u8> {
        (self.priorities > 1).then(|| (k % u64::from(self.priorities)) as u8)
    }
}

/// Wall-clock nanoseconds: the send time in a body must mean the same in
/// every process of a run (consumers can be child processes).
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A body of `size` bytes whose first 8 carry the send time.
pub(crate) fn stamped_body(size: usize) -> bytes::Bytes {
    let mut v = vec![0xA5u8; size];
    v[..8].copy_from_slice(&now_ns().to_le_bytes());
    bytes::Bytes::from(v)
}

/// Publish→deliver latency of a stamped body, in microseconds.
pub(crate) fn latency_us(body: &[u8]) -> u64 {
    latency_us_at(body, now_ns())
}

/// Publish→deliver latency of a stamped body delivered at `now` (wall
/// clock, nanoseconds), in microseconds.
pub(crate) fn latency_us_at(body: &[u8], now: u64) -> u64 {
    let sent = body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    now.saturating_sub(sent) / 1_000
}

/// A latency histogram from 1 µs to 1 hour, 3 significant digits.
pub(crate) fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant histogram bounds are valid")
}

/// A progress bar on stderr (hidden when stderr is not a terminal), fed from a
/// shared counter by a ticker thread until `done` is set.
pub(crate) struct Progress {
    done: Arc<AtomicU64>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(label: &str, total: u64, count: Arc<AtomicU64>) -> Progress {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>24} [{bar:30}] {pos}/{len} msgs, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        let ticker = std::thread::spawn(move || {
            while d.load(Ordering::Relaxed) == 0 {
                bar.set_position(count.load(Ordering::Relaxed).min(total));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Progress {
            done,
            ticker: Some(ticker),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(1, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// Bounds of the bench's flags: every body is allocated, every producer and
/// consumer is a thread (or a process).
const MAX_BENCH_SIZE: usize = 64 << 20;
const MAX_THREADS: usize = 1024;

pub(crate) fn run(a: BenchArgs) -> Result<(), String> {
    if a.messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    if a.size < 8 {
        return Err("--size must be at least 8 bytes (the send time rides in the body)".into());
    }
    if a.size > MAX_BENCH_SIZE {
        return Err(format!(
            "--size {} is too large for a bench (at most {MAX_BENCH_SIZE} bytes)",
            a.size
        ));
    }
    if a.producers == 0 || a.consumers == 0 {
        return Err("--producers and --consumers must be at least 1".into());
    }
    if a.producers > MAX_THREADS || a.consumers > MAX_THREADS {
        return Err(format!(
            "--producers and --consumers must be at most {MAX_THREADS}"
        ));
    }
    if a.priorities == 0 || a.priorities > 256 {
        return Err("--priorities must be between 1 and 256".into());
    }
    if a.rate.is_some_and(|r| !(r.is_finite() && r >= 1.0)) {
        return Err("--rate must be at least 1 message per second".into());
    }
    if let Some(path) = &a.plot {
        plot::check_writable(path)?;
    }
    let w = Workload {
        url: a.url.clone(),
        messages: a.messages,
        size: a.size,
        producers: a.producers,
        consumers: a.consumers,
        priorities: a.priorities,
        consumer_processes: a.consumer_processes,
        rate: a.rate,
        pipeline: a.pipeline as usize,
        phased: a.phases,
    };
    now_ns();
    let scheme = dashi::spi::ConnectUrl::parse(&w.url)
        .map(|u| u.scheme)
        .map_err(|e| e.to_string())?;
    let dashi = dashi_run::run(&w)?;
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    if a.compare {
        match scheme.as_str() {
            "memory" => {
                peers.push(crossbeam_peer::run(&w)?);
                match kombu_peer::run(&w, "memory://") {
                    Ok(r) => peers.push(r),
                    Err(s) => skipped.push(s),
                }
            }
            "local" => {
                let url = dashi::spi::ConnectUrl::parse(&w.url).map_err(|e| e.to_string())?;
                if url
                    .options
                    .iter()
                    .any(|(k, v)| k == "fsync" && v != "never")
                {
                    let dir = std::path::Path::new(&url.path);
                    // One loop (what one durable write costs), and as many
                    // loops as producers (what the disk does in parallel).
                    peers.push(disk_peer::run(&w, dir, 1)?);
                    if w.producers > 1 {
                        peers.push(disk_peer::run(&w, dir, w.producers)?);
                    }
                    // What the disk does with large commits: the bound for
                    // pipelined publishing (many messages per sync).
                    peers.push(disk_peer::run_batched(&w, dir, disk_peer::BATCH_BYTES)?);
                } else {
                    // Without syncing, the limit is moving messages between
                    // threads at all: crossbeam-channel in this process.
                    peers.push(crossbeam_peer::run(&w)?);
                    // And the same engine without the log or a second
                    // process: what local:// adds to a delivery.
                    peers.push(dashi_run::run(&Workload {
                        url: "memory://".into(),
                        consumer_processes: false,
                        ..w.clone()
                    })?);
                    skipped.push(Skipped {
                        peer: "write+fdatasync (raw)".into(),
                        reason: "the durability limit applies with fsync=always or interval; this run uses fsync=never"
                            .into(),
                    });
                }
            }
            "redis" => {
                let url = dashi::spi::ConnectUrl::parse(
                    dashi::spi::split_failover(&w.url).map_err(|e| e.to_string())?[0],
                )
                .map_err(|e| e.to_string())?;
                let port = url.port.unwrap_or(6379);
                let db: u32 = url.path.trim_start_matches('/').parse().unwrap_or(0);
                let addr = format!("{}:{port}", url.host);
                match redis_peer::run(&w, &addr, db) {
                    Ok(r) => peers.push(r),
                    Err(e) => skipped.push(Skipped {
                        peer: "raw LPUSH/RPOP pipelined".into(),
                        reason: e,
                    }),
                }
                let auth = match (&url.user, &url.password) {
                    (_, None) => String::new(),
                    (u, Some(p)) => format!("{}:{p}@", u.as_deref().unwrap_or("")),
                };
                let kombu_url = format!("redis://{auth}{addr}/{db}");
                match kombu_peer::run(&w, &kombu_url) {
                    Ok(r) => peers.push(r),
                    Err(s) => skipped.push(s),
                }
            }
            other => skipped.push(Skipped {
                peer: format!("peers for {other}://"),
                reason: "no peer is defined for this transport yet".into(),
            }),
        }
    }
    for s in &skipped {
        eprintln!("dashi: bench: skipped {}: {}", s.peer, s.reason);
    }
    if a.json {
        out!("{}", report::json(&dashi, &peers, &skipped, a.compare))?;
    } else {
        // The report ends in its own newline.
        let human = report::human(&w, &dashi, &peers);
        out!("{}", human.strip_suffix('\n').unwrap_or(&human))?;
    }
    if let Some(path) = &a.plot {
        plot::write(path, &dashi, &peers)?;
        if !a.json {
            out!("chart written to {}", path.display())?;
        }
    }
    Ok(())
}
