//! The Redis limit for redis://: the same producers and consumers moving the
//! same stamped bodies through one list of the same server with raw
//! pipelined `LPUSH` and `RPOP` over plain sockets (no envelope, no
//! unacked bookkeeping, no acks: what Redis itself does per message).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{histogram, latency_us, stamped_body, Progress, Report, Workload};

/// Commands in flight per connection.
const PIPELINE: usize = 256;

pub(crate) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one reply: `Some(bytes)` for a bulk string, `None` for anything
/// else (an integer, a nil); `Err` on an error reply or a broken socket.
pub(crate) fn reply(r: &mut BufReader<TcpStream>) -> Result<Option<Vec<u8>>, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    match line.as_bytes().first() {
        Some(b'$') => {
            let n: i64 = line[1..]
                .trim()
                .parse()
                .map_err(|_| format!("bad reply {line:?}"))?;
            if n < 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(n as usize);
            Ok(Some(buf))
        }
        Some(b'-') => Err(format!("redis: {}", line.trim())),
        Some(_) => Ok(None),
        None => Err("the server closed the connection".into()),
    }
}

fn connect(addr: &str, db: u32) -> Result<(TcpStream, BufReader<TcpStream>), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("raw redis peer: {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let r = BufReader::with_capacity(1 << 16, s.try_clone().map_err(|e| e.to_string())?);
    let mut c = (s, r);
    if db != 0 {
        let mut out = Vec::new();
        command(&mut out, &[b"SELECT", db.to_string().as_bytes()]);
        c.0.write_all(&out).map_err(|e| e.to_string())?;
        reply(&mut c.1)?;
    }
    Ok(c)
}

/// Runs the limit on `addr` (host:port), database `db`.
pub(crate) fn run(w: &Workload, addr: &str, db: u32) -> Result<Report, String> {
    let key = format!("dashi-bench-raw-{}-{}", std::process::id(), super::now_ns());
    let consumed = Arc::new(AtomicU64::new(0));
    let finished_ns = Arc::new(AtomicU64::new(0));
    let label = "raw LPUSH/RPOP pipelined";
    let progress = Progress::start(label, w.messages, consumed.clone());
    let start = Instant::now();
    let producers: Vec<_> = (0..w.producers)
        .map(|i| {
            let (addr, key, w) = (addr.to_owned(), key.clone(), w.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let (mut s, mut r) = connect(&addr, db)?;
                let mut left = w.share(i);
                let mut out = Vec::new();
                while left > 0 {
                    let n = left.min(PIPELINE as u64);
                    out.clear();
                    for _ in 0..n {
                        command(&mut out, &[b"LPUSH", key.as_bytes(), &stamped_body(w.size)]);
                    }
                    s.write_all(&out).map_err(|e| e.to_string())?;
                    for _ in 0..n {
                        reply(&mut r)?;
                    }
                    left -= n;
                }
                Ok(())
            })
        })
        .collect();
    // Phased: every message is sent before the consumers start.
    let mut producers = producers;
    let mut publish_phase = None;
    if w.phased {
        for p in producers.drain(..) {
            p.join().map_err(|_| "a raw redis producer panicked")??;
        }
        publish_phase = Some(start.elapsed());
    }
    let consumers: Vec<_> = (0..w.consumers)
        .map(|_| {
            let (consumed, finished_ns, total) =
                (consumed.clone(), finished_ns.clone(), w.messages);
            let (addr, key) = (addr.to_owned(), key.clone());
            std::thread::spawn(move || -> Result<_, String> {
                let (mut s, mut r) = connect(&addr, db)?;
                let mut h = histogram();
                let mut batch = Vec::new();
                for _ in 0..PIPELINE {
                    command(&mut batch, &[b"RPOP", key.as_bytes()]);
                }
                while consumed.load(Ordering::Relaxed) < total {
                    s.write_all(&batch).map_err(|e| e.to_string())?;
                    let mut empty = 0;
                    for _ in 0..PIPELINE {
                        match reply(&mut r)? {
                            Some(body) => {
                                h.saturating_record(latency_us(&body).max(1));
                                if consumed.fetch_add(1, Ordering::Relaxed) + 1 == total {
                                    finished_ns.store(
                                        start.elapsed().as_nanos() as u64,
                                        Ordering::Relaxed,
                                    );
                                }
                            }
                            None => empty += 1,
                        }
                    }
                    if empty == PIPELINE {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                Ok(h)
            })
        })
        .collect();
    for p in producers {
        p.join().map_err(|_| "a raw redis producer panicked")??;
    }
    let mut merged = histogram();
    for c in consumers {
        let h = c.join().map_err(|_| "a raw redis consumer panicked")??;
        let _ = merged.add(&h);
    }
    drop(progress);
    // The list is empty again; nothing to clean up.
    let elapsed = Duration::from_nanos(finished_ns.load(Ordering::Relaxed).max(1));
    let mut r = Report::from_histogram(label, w, elapsed, &merged);
    if let Some(p) = publish_phase {
        r.publish_phase = Some(p);
        r.consume_phase = Some(elapsed.saturating_sub(p));
    }
    Ok(r)
}
