//! `dashi consume`: reads through a delivery stream, so exactly `--count`
//! messages leave the queue (the stream takes runs, but within a window no
//! larger than `--count`, and puts back what it did not hand out), while
//! `--prefetch` still bounds what is unacked.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use dashi::{ConsumerOptions, Delivery, DeliveryStream};

use crate::args::ConsumeArgs;
use crate::connect::connect_existing;
use crate::declare::declare_for_consume;
use crate::json::delivery_json;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ack,
    NoAck,
    Reject,
    Requeue,
    LeaveUnacked,
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark()
    }
}

/// The first wait after a transient consume failure.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The next delivery, waiting up to `timeout` (`None` = forever). `Ok(None)`
/// on timeout; `Err` when the stream ended (queue deleted, connection closed),
/// on an error no retry fixes, or on a transient one that outlasts `timeout`.
fn next(
    stream: &mut DeliveryStream,
    waker: &Waker,
    timeout: Option<Duration>,
) -> Result<Option<Delivery>, String> {
    use dashi::futures_core::Stream;
    // A timeout past the clock's range waits for ever.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut cx = Context::from_waker(waker);
    // A store that fails for a while (a Redis restart, a network cut) does
    // not end a consumer: the engine retried a few times already, so this
    // waits and asks again, longer each time up to `RETRY_MAX`, saying so
    // once on stderr; an error no retry fixes, or one that outlasts
    // `--timeout`, ends it.
    let mut backoff: Option<Duration> = None;
    loop {
        match Pin::new(&mut *stream).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(d))) => {
                if backoff.is_some() {
                    eprintln!("dashi: consuming again");
                }
                return Ok(Some(d));
            }
            Poll::Ready(Some(Err(e))) => {
                let wait = match backoff {
                    _ if !e.is_transient() => return Err(format!("consume failed: {e}")),
                    None => {
                        eprintln!(
                            "dashi: consume failed for now, retrying: {}",
                            crate::output::shown(&e.to_string())
                        );
                        RETRY_FIRST
                    }
                    Some(w) => (w * 2).min(RETRY_MAX),
                };
                backoff = Some(wait);
                let wait = match deadline {
                    None => wait,
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(format!("consume failed until --timeout ran out: {e}"));
                        }
                        wait.min(left)
                    }
                };
                std::thread::sleep(wait);
            }
            Poll::Ready(None) => {
                return Err("the consumer ended: queue deleted or connection closed".into())
            }
            Poll::Pending if backoff.is_some() => {
                // Answering again: the wait for a message starts anew.
                eprintln!("dashi: consuming again");
                backoff = None;
            }
            Poll::Pending => match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    std::thread::park_timeout(d - now);
                }
            },
        }
    }
}

pub(crate) fn run(a: ConsumeArgs) -> Result<(), String> {
    let mode = if a.no_ack {
        Mode::NoAck
    } else if a.reject {
        Mode::Reject
    } else if a.requeue {
        Mode::Requeue
    } else if a.leave_unacked {
        Mode::LeaveUnacked
    } else {
        Mode::Ack
    };
    let timeout =
        match a.timeout {
            Some(t) if !(t.is_finite() && t >= 0.0) => {
                return Err(format!("--timeout {t} is not a number of seconds"))
            }
            Some(t) => Some(Duration::try_from_secs_f64(t).map_err(|_| {
                format!("--timeout {t} is too large (at most {} seconds)", u64::MAX)
            })?),
            None => None,
        };
    if let Some(p) = a
        .prefetch
        .filter(|&p| mode == Mode::LeaveUnacked && a.count > u64::from(p))
    {
        return Err(format!(
            "--leave-unacked keeps all {} messages unacked: --prefetch {p} would stop \
             deliveries at {p}",
            a.count
        ));
    }
    let conn = connect_existing(&a.url)?;
    let ch = conn.channel().map_err(|e| e.to_string())?;
    declare_for_consume(&ch, &conn, &a.topology, &a.queue)?;
    let mut opts = ConsumerOptions::new(a.queue.clone()).no_ack(mode == Mode::NoAck);
    if a.prefetch == Some(0) {
        return Err("--prefetch must be at least 1".into());
    }
    // The stream takes runs within its window: a window no larger than
    // `--count` keeps it from taking more than it will hand out.
    let window = a.prefetch.unwrap_or(conn.config().prefetch_count);
    let count = u32::try_from(a.count).unwrap_or(u32::MAX);
    opts = opts.prefetch_count(if a.count == 0 {
        window
    } else if mode == Mode::LeaveUnacked {
        // Every delivery stays unacked, so the window must hold all of
        // them (a smaller one filled up and the command waited for ever).
        count
    } else {
        window.min(count)
    });
    if a.count > 0 && mode == Mode::LeaveUnacked {
        // Nor may their bytes stop it (a URL's prefetch_bytes).
        opts = opts.prefetch_bytes(u64::MAX);
    }
    let mut stream = ch.stream(opts).map_err(|e| e.to_string())?;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut seen = 0u64;
    while a.count == 0 || seen < a.count {
        let Some(d) = next(&mut stream, &waker, timeout)? else {
            break;
        };
        seen += 1;
        let line = if a.json {
            delivery_json(&d).to_string()
        } else {
            format!(
                "[{}] queue={} exchange={:?} routing_key={:?} priority={} redelivered={} body={}",
                d.delivery_tag(),
                crate::output::shown(d.queue()),
                d.exchange(),
                d.routing_key(),
                d.priority(),
                d.redelivered(),
                crate::output::shown(&String::from_utf8_lossy(d.body()))
            )
        };
        writeln!(out, "{line}").map_err(|e| format!("writing to stdout: {e}"))?;
        let settled = match mode {
            Mode::Ack => d.ack(),
            Mode::Reject => d.reject(false),
            Mode::Requeue => d.reject(true),
            Mode::NoAck | Mode::LeaveUnacked => Ok(()),
        };
        match settled {
            Ok(()) => {}
            // Not settled: it stays unacked and comes back after the
            // visibility timeout (at least once), so consuming goes on.
            Err(e) if matches!(&e, dashi::AckError::Store { failure, .. } if failure.is_transient()) =>
            {
                eprintln!(
                    "dashi: settling delivery {} failed for now (it will be delivered again): {}",
                    d.delivery_tag(),
                    crate::output::shown(&e.to_string())
                )
            }
            Err(e) => return Err(format!("settling delivery {}: {e}", d.delivery_tag())),
        }
        if mode == Mode::LeaveUnacked {
            // Keep it unacked until the process is gone.
            std::mem::forget(d);
        }
    }
    out.flush().map_err(|e| format!("writing to stdout: {e}"))?;
    if mode == Mode::LeaveUnacked {
        // What the stream took and did not hand out goes back unseen (its
        // consumer is cancelled; the deliveries seen stay unacked). Then
        // leave as a crashed consumer would: no ack, no graceful channel
        // close, no destructors.
        drop(stream);
        std::process::exit(0);
    }
    Ok(())
}
