//! Dead-lettering: what a message that leaves a queue unacked (rejected,
//! expired, dropped by overflow) is republished as, when its queue names a
//! dead-letter exchange (RabbitMQ's `x-first-death-*` / `x-last-death-*`).

use crate::error::PublishError;
use crate::model::message::Message;
use crate::model::queue::Queue;
use crate::model::value::Value;
use crate::stats::{Counters, TransportEvent};

use super::Envelope;

/// Why a message leaves a queue without being acked (the `x-*-death-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeathReason {
    /// Rejected or nacked without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// Dropped by `overflow = drop-head`.
    MaxLen,
}

impl DeathReason {
    /// The AMQP name: `rejected`, `expired`, `maxlen`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
        }
    }
}

/// The message, exchange and routing key to republish a dead message with,
/// when `queue` has a dead-letter exchange: `x-first-death-*` headers set once,
/// `x-last-death-*` every time, the per-message TTL removed (so it does not
/// expire again at once).
pub fn dead_letter(
    queue: &Queue,
    env: &Envelope,
    reason: DeathReason,
) -> Option<(Message, String, String)> {
    let dlx = queue.dead_letter_exchange.clone()?;
    let mut message = env.to_message();
    let h = &mut message.properties.headers;
    for (k, v) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue.name.as_str()),
        ("x-first-death-exchange", env.exchange.as_str()),
    ] {
        h.entry(k.to_owned()).or_insert_with(|| Value::from(v));
    }
    h.insert("x-last-death-reason".into(), reason.as_str().into());
    h.insert("x-last-death-queue".into(), queue.name.as_str().into());
    message.properties.expiration = None;
    let rk = queue
        .dead_letter_routing_key
        .clone()
        .unwrap_or_else(|| env.routing_key.to_string());
    Some((message, dlx, rk))
}

/// Dead-letters `env`, which left `queue` for `reason`: when the queue has a
/// dead-letter exchange, `publish` republishes it there (the caller makes that
/// publish mandatory and clamps its priority); what happened is counted
/// (`dead_lettered`, `dropped_dead_letter`, or `dropped_overflow` for a
/// drop-head without a dead-letter exchange) and a failed republish is logged.
///
/// Dead-lettering can cascade (a republish into a full drop-head queue
/// dead-letters its oldest message, and so on); past [`MAX_DEAD_LETTER_DEPTH`]
/// nested dead-letterings on one thread the message is dropped and counted as
/// `dropped_dead_letter` instead, so a cycle cannot exhaust the stack.
pub fn dead_letter_with(
    counters: &Counters,
    queue: &Queue,
    env: &Envelope,
    reason: DeathReason,
    publish: impl FnOnce(Envelope) -> Result<(), PublishError>,
) {
    let Some((message, dlx, rk)) = dead_letter(queue, env, reason) else {
        if reason == DeathReason::MaxLen {
            counters.record(TransportEvent::DroppedOverflow, 1);
        }
        return;
    };
    let Some(_depth) = Depth::enter() else {
        tracing::warn!(queue = %queue.name, "dead-lettered message dropped: dead-letter cycle deeper than {MAX_DEAD_LETTER_DEPTH}");
        counters.record(TransportEvent::DroppedDeadLetter, 1);
        return;
    };
    match publish(Envelope::new(message, &dlx, &rk)) {
        Ok(()) => counters.record(TransportEvent::DeadLettered, 1),
        Err(e) => {
            tracing::warn!(queue = %queue.name, error = %e, "dead-lettered message dropped");
            counters.record(TransportEvent::DroppedDeadLetter, 1)
        }
    }
}

/// Most dead-letterings nested inside one another on a thread.
pub const MAX_DEAD_LETTER_DEPTH: u32 = 16;

thread_local! {
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One level of dead-lettering on this thread, left when dropped.
struct Depth;

impl Depth {
    fn enter() -> Option<Depth> {
        DEPTH.with(|d| {
            if d.get() >= MAX_DEAD_LETTER_DEPTH {
                None
            } else {
                d.set(d.get() + 1);
                Some(Depth)
            }
        })
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}
