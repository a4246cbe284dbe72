//! The dashi side of the bench: every producer and consumer thread opens its
//! own connection to the URL, as separate services would.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashi::{ChannelOptions, Confirm, ConsumerOptions, Error, Message, Queue};

use super::{histogram, latency_us, stamped_body, Progress, Report, Workload};
use crate::connect::connect;

pub(crate) fn run(w: &Workload) -> Result<Report, String> {
    let admin = connect(&w.url)?;
    let ch = admin.channel().map_err(|e| e.to_string())?;
    // Short enough to be carried inline (routing keys of up to 30 bytes
    // cost no allocation), as most queue names are.
    let queue = format!(
        "dashi-bench-{}-{:x}",
        std::process::id(),
        super::now_ns() & 0xffff_ffff
    );
    ch.queue_declare(
        &Queue::new(queue.clone()).with_max_priority((w.priorities - 1).min(255) as u8),
    )
    .map_err(|e| format!("declaring the bench queue: {e}"))?;

    if w.consumer_processes {
        let r = run_with_child_consumers(w, &queue);
        let _ = ch.queue_delete(&queue, false, false);
        return r;
    }
    let consumed = Arc::new(AtomicU64::new(0));
    let finished_ns = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(&admin_label(w), w.messages, consumed.clone());
    let start = Instant::now();
    let spawn_consumers = || -> Vec<ConsumerHandle> {
        (0..w.consumers)
            .map(|_| spawn_consumer(w, &queue, start, &consumed, &finished_ns))
            .collect()
    };
    // Phased: every message is published (and confirmed) before the
    // consumers start, so each side's rate is measured alone.
    let mut confirm = histogram();
    let (consumers, producers_result, publish_phase) = if w.phased {
        let r = join_producers(spawn_producers(w, &queue), &mut confirm);
        let published = start.elapsed();
        (spawn_consumers(), r, Some(published))
    } else {
        let consumers = spawn_consumers();
        let r = join_producers(spawn_producers(w, &queue), &mut confirm);
        (consumers, r, None)
    };
    let mut failure = producers_result.err();
    if failure.is_some() {
        // Let the consumers finish on what was sent.
        consumed.fetch_add(w.messages, Ordering::Relaxed);
    }
    let mut merged = histogram();
    for c in consumers {
        match c.join() {
            Ok(Ok(h)) => {
                let _ = merged.add(&h);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a consumer thread panicked".into())),
        }
    }
    drop(progress);
    let _ = ch.queue_delete(&queue, false, false);
    if let Some(e) = failure {
        return Err(e);
    }
    let elapsed = Duration::from_nanos(finished_ns.load(Ordering::Relaxed).max(1));
    let transport = dashi::spi::ConnectUrl::parse(&w.url)
        .map(|u| format!("dashi {}://", u.scheme))
        .unwrap_or_else(|_| "dashi".into());
    let mut r = Report::from_histogram(transport, w, elapsed, &merged);
    r.confirm_us = Some(super::report::quantiles(&confirm));
    if let Some(p) = publish_phase {
        r.publish_phase = Some(p);
        r.consume_phase = Some(elapsed.saturating_sub(p));
    }
    Ok(r)
}

type ConsumerHandle = std::thread::JoinHandle<Result<hdrhistogram::Histogram<u64>, String>>;

/// One consumer thread with its own connection, acking each delivery and
/// recording its latency; the one that takes the last message notes when
/// (nanoseconds since `start`).
fn spawn_consumer(
    w: &Workload,
    queue: &str,
    start: Instant,
    consumed: &Arc<AtomicU64>,
    finished_ns: &Arc<AtomicU64>,
) -> ConsumerHandle {
    let (w, queue) = (w.clone(), queue.to_owned());
    let (consumed, finished_ns) = (consumed.clone(), finished_ns.clone());
    std::thread::spawn(move || -> Result<hdrhistogram::Histogram<u64>, String> {
        let conn = connect(&w.url)?;
        let ch = conn.channel().map_err(|e| e.to_string())?;
        let hist = Arc::new(Mutex::new(None));
        let mut recorder = Recorder {
            hist: histogram(),
            out: hist.clone(),
        };
        let (c, f, total) = (consumed.clone(), finished_ns.clone(), w.messages);
        let _consumer = ch
            .consume(ConsumerOptions::new(queue), move |d| {
                recorder.hist.saturating_record(latency_us(d.body()).max(1));
                let _ = d.ack();
                if c.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    f.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            })
            .map_err(|e| e.to_string())?;
        while consumed.load(Ordering::Relaxed) < total {
            match conn.drain_events(Some(Duration::from_millis(100))) {
                Ok(_) | Err(Error::Timeout) => {}
                Err(e) => return Err(format!("consumer: {e}")),
            }
        }
        // Cancelling drops the callback, and its recorder hands over.
        drop(_consumer);
        let h = hist
            .lock()
            .map_err(|_| "histogram lock poisoned")?
            .take()
            .ok_or("the consumer's callback was not dropped at cancel")?;
        Ok(h)
    })
}

/// A consumer's latency histogram, owned by its callback so that recording
/// takes no lock (the peers' consumers keep theirs on their thread too);
/// handed over to `out` when the callback is dropped, at cancel.
pub(super) struct Recorder {
    pub(super) hist: hdrhistogram::Histogram<u64>,
    pub(super) out: Arc<Mutex<Option<hdrhistogram::Histogram<u64>>>>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Ok(mut out) = self.out.lock() {
            *out = Some(std::mem::replace(&mut self.hist, histogram()));
        }
    }
}

fn admin_label(w: &Workload) -> String {
    dashi::spi::ConnectUrl::parse(&w.url)
        .map(|u| format!("dashi {}://", u.scheme))
        .unwrap_or_else(|_| "dashi".into())
}

/// Starts `w.consumers` `dashi bench-consumer` processes on `queue` and
/// waits until each says it is ready.
fn start_child_consumers(
    w: &Workload,
    queue: &str,
) -> Result<
    Vec<(
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
    )>,
    String,
> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(|e| format!("finding the dashi binary: {e}"))?;
    let mut kids = Vec::new();
    for _ in 0..w.consumers {
        let mut child = Command::new(&exe)
            .args(["bench-consumer", &w.url, "--queue", queue])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting a consumer process: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("consumer stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)
            .map_err(|e| format!("consumer process: {e}"))?;
        if line.trim() != "ready" {
            let _ = child.kill();
            return Err(format!("a consumer process did not start: {line:?}"));
        }
        kids.push((child, out));
    }
    Ok(kids)
}

/// Consumers as child processes (`dashi bench-consumer`), producers here.
fn run_with_child_consumers(w: &Workload, queue: &str) -> Result<Report, String> {
    use std::io::BufRead;
    // Competing consumers split the messages by who is free; after the data,
    // one stop message per consumer ends them (FIFO puts the stops last).
    let mut kids = if w.phased {
        Vec::new()
    } else {
        start_child_consumers(w, queue)?
    };
    let consumed = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(&admin_label(w), w.messages, consumed.clone());
    let start_ns = super::now_ns();
    let producers = spawn_producers(w, queue);
    let mut confirm = histogram();
    join_producers(producers, &mut confirm)?;
    // Phased: the consumer processes start once everything is published
    // (their start-up counts in the consume phase).
    let published_ns = super::now_ns();
    if w.phased {
        kids = start_child_consumers(w, queue)?;
    }
    {
        let conn = connect(&w.url)?;
        let ch = conn.channel().map_err(|e| e.to_string())?;
        for _ in 0..w.consumers {
            ch.producer()
                .publish(Message::new(super::child::STOP), queue)
                .map_err(|e| format!("stopping the consumers: {e}"))?;
        }
    }
    let mut end_ns = 0;
    let mut lat = [0f64; 5];
    for (mut child, mut out) in kids {
        let mut line = String::new();
        out.read_line(&mut line)
            .map_err(|e| format!("consumer process: {e}"))?;
        let status = child.wait().map_err(|e| format!("consumer process: {e}"))?;
        if !status.success() {
            return Err(format!("a consumer process failed ({status})"));
        }
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|_| format!("consumer process said {line:?}"))?;
        consumed.fetch_add(v["count"].as_u64().unwrap_or(0), Ordering::Relaxed);
        end_ns = end_ns.max(v["finished_ns"].as_u64().unwrap_or(0));
        // Percentiles of several processes: the worst of each (conservative).
        for (slot, k) in lat.iter_mut().zip(["p50", "p90", "p99", "p999", "max"]) {
            *slot = slot.max(v["latency_us"][k].as_f64().unwrap_or(0.0));
        }
    }
    drop(progress);
    let total = consumed.load(Ordering::Relaxed);
    if total != w.messages {
        return Err(format!(
            "consumer processes got {total} of {} messages",
            w.messages
        ));
    }
    let elapsed = Duration::from_nanos(end_ns.saturating_sub(start_ns).max(1));
    let mut r = Report::from_histogram(
        format!("{} (consumer processes)", admin_label(w)),
        w,
        elapsed,
        &histogram(),
    );
    r.latency_us = lat;
    r.confirm_us = Some(super::report::quantiles(&confirm));
    if w.phased {
        let publish = Duration::from_nanos(published_ns.saturating_sub(start_ns));
        r.publish_phase = Some(publish);
        r.consume_phase = Some(elapsed.saturating_sub(publish));
    }
    Ok(r)
}

/// One thread per producer, each with its own connection, publishing its
/// share of stamped bodies; a full queue hands a message back and it is
/// published again (back-pressure).
/// Each returns a histogram of how long its publishes took to confirm.
type ProducerHandle = std::thread::JoinHandle<Result<hdrhistogram::Histogram<u64>, String>>;

fn spawn_producers(w: &Workload, queue: &str) -> Vec<ProducerHandle> {
    (0..w.producers)
        .map(|i| {
            let (w, queue) = (w.clone(), queue.to_owned());
            std::thread::spawn(move || -> Result<hdrhistogram::Histogram<u64>, String> {
                let conn = connect(&w.url)?;
                let ch = conn
                    .channel_with(ChannelOptions::new().confirm_window(w.pipeline))
                    .map_err(|e| e.to_string())?;
                let p = ch.producer();
                let mut confirm = histogram();
                if w.pipeline > 1 {
                    publish_pipelined(&w, &p, &queue, i, &mut confirm)?;
                    return Ok(confirm);
                }
                let start = Instant::now();
                for k in 0..w.share(i) {
                    w.pace(start, k);
                    let mut m = Message::new(stamped_body(w.size));
                    m.properties.priority = w.priority(k);
                    let t = timed(k).then(Instant::now);
                    while let Err(e) = p.publish(m, &queue) {
                        if !e.is_transient() {
                            return Err(format!("producer: {e}"));
                        }
                        m = e.into_message();
                        std::thread::yield_now();
                    }
                    if let Some(t) = t {
                        confirm.saturating_record((t.elapsed().as_nanos() as u64 / 1000).max(1));
                    }
                }
                Ok(confirm)
            })
        })
        .collect()
}

/// One publish in this many has its confirm latency timed: two clock reads
/// per publish cost more than a memory:// publish on some machines (a
/// `clock_gettime` took ~100 ns on the VM of BENCHMARKS.md, 40 % of the
/// producer's time), and the peers read no clock for it.
const CONFIRM_SAMPLE: u64 = 64;

/// Whether the `k`-th publish of a producer is timed.
fn timed(k: u64) -> bool {
    k % CONFIRM_SAMPLE == 0
}

/// Producer `i`'s share published with up to `w.pipeline` publishes
/// awaiting their confirm; the latency of each timed one is recorded when
/// it is seen resolved (oldest first).
fn publish_pipelined(
    w: &Workload,
    p: &dashi::Producer,
    queue: &str,
    i: usize,
    confirm: &mut hdrhistogram::Histogram<u64>,
) -> Result<(), String> {
    let mut in_flight: VecDeque<(Option<Instant>, Confirm)> = VecDeque::with_capacity(w.pipeline);
    let settle = |(t, c): (Option<Instant>, Confirm),
                  confirm: &mut hdrhistogram::Histogram<u64>| {
        c.wait().map_err(|e| format!("producer: {e}"))?;
        if let Some(t) = t {
            confirm.saturating_record((t.elapsed().as_nanos() as u64 / 1000).max(1));
        }
        Ok::<(), String>(())
    };
    let start = Instant::now();
    for k in 0..w.share(i) {
        w.pace(start, k);
        let mut m = Message::new(stamped_body(w.size));
        m.properties.priority = w.priority(k);
        let t = timed(k).then(Instant::now);
        let c = loop {
            match p.publish_async(m, queue) {
                Ok(c) => break c,
                Err(e) if e.is_transient() => {
                    m = e.into_message();
                    // Room comes back as the consumers take messages.
                    if let Some(oldest) = in_flight.pop_front() {
                        settle(oldest, confirm)?;
                    } else {
                        std::thread::yield_now();
                    }
                }
                Err(e) => return Err(format!("producer: {e}")),
            }
        };
        in_flight.push_back((t, c));
        // Settle what resolved once half the window is out (asking earlier
        // would start a sync per message on a transport that groups them).
        if in_flight.len() >= w.pipeline / 2 {
            while in_flight.front().is_some_and(|(_, c)| c.is_resolved()) {
                let oldest = in_flight.pop_front().expect("not empty");
                settle(oldest, confirm)?;
            }
        }
    }
    for f in in_flight {
        settle(f, confirm)?;
    }
    Ok(())
}

/// Joins the producers; merges their confirm histograms.
fn join_producers(
    producers: Vec<ProducerHandle>,
    confirm: &mut hdrhistogram::Histogram<u64>,
) -> Result<(), String> {
    let mut failure = None;
    for p in producers {
        match p.join() {
            Ok(Ok(h)) => {
                let _ = confirm.add(&h);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a producer thread panicked".into()),
        }
    }
    failure.map_or(Ok(()), Err)
}
