//! Counters and per-queue figures, read through a cloneable [`Stats`] handle.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::sync::Padded as CachePadded;
use crate::transport::Transport;
use crate::Error;

/// Counters written on the publish side.
#[derive(Debug, Default)]
pub(crate) struct PublishSide {
    pub(crate) published: AtomicU64,
    pub(crate) routed: AtomicU64,
    pub(crate) dropped_unroutable: AtomicU64,
}

/// Counters written on the consume side.
#[derive(Debug, Default)]
pub(crate) struct ConsumeSide {
    pub(crate) delivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) restored: AtomicU64,
}

/// Counters for rarer events.
#[derive(Debug, Default)]
pub(crate) struct Other {
    pub(crate) expired: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped_overflow: AtomicU64,
    pub(crate) dropped_dead_letter: AtomicU64,
}

/// A transport's event counters. Transports own one; the engine increments the
/// consume-side ones.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) publish: CachePadded<PublishSide>,
    pub(crate) consume: CachePadded<ConsumeSide>,
    pub(crate) other: CachePadded<Other>,
}

/// Events a transport counts with [`Counters::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A publish was accepted.
    Published,
    /// Queue copies made by routing.
    Routed,
    /// A publish matched no queue.
    DroppedUnroutable,
    /// A message's TTL ran out.
    Expired,
    /// A message went to a dead-letter exchange.
    DeadLettered,
    /// A message was dropped by overflow drop-head.
    DroppedOverflow,
    /// A dead-lettered message matched no queue.
    DroppedDeadLetter,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterSnapshot {
    /// Publishes accepted.
    pub published: u64,
    /// Queue copies made by routing (a fanout to 3 queues counts 3).
    pub routed: u64,
    /// Publishes that matched no queue and had no alternate exchange.
    pub dropped_unroutable: u64,
    /// Deliveries to consumers and `get`.
    pub delivered: u64,
    /// Acks.
    pub acked: u64,
    /// Rejects and nacks (with or without requeue).
    pub rejected: u64,
    /// Deliveries with `redelivered = true`.
    pub redelivered: u64,
    /// Unacked deliveries returned to their queue (close, lease, requeue).
    pub restored: u64,
    /// Messages whose TTL ran out.
    pub expired: u64,
    /// Messages republished to a dead-letter exchange. Counted when the
    /// republish returns: on a store that syncs each publish
    /// (`local://?fsync=always`) the dead-lettered message can be read
    /// before this count shows it, by up to one sync.
    pub dead_lettered: u64,
    /// Messages dropped by `overflow = drop-head` without a dead-letter exchange.
    pub dropped_overflow: u64,
    /// Dead-lettered messages that matched no queue of the dead-letter exchange.
    pub dropped_dead_letter: u64,
}

impl CounterSnapshot {
    /// How many counters there are.
    pub const LEN: usize = 12;

    /// The counters in declaration order (for transports that keep them in
    /// shared memory).
    pub fn to_array(&self) -> [u64; Self::LEN] {
        [
            self.published,
            self.routed,
            self.dropped_unroutable,
            self.delivered,
            self.acked,
            self.rejected,
            self.redelivered,
            self.restored,
            self.expired,
            self.dead_lettered,
            self.dropped_overflow,
            self.dropped_dead_letter,
        ]
    }

    /// The inverse of [`CounterSnapshot::to_array`].
    pub fn from_array(a: [u64; Self::LEN]) -> Self {
        let [published, routed, dropped_unroutable, delivered, acked, rejected, redelivered, restored, expired, dead_lettered, dropped_overflow, dropped_dead_letter] =
            a;
        CounterSnapshot {
            published,
            routed,
            dropped_unroutable,
            delivered,
            acked,
            rejected,
            redelivered,
            restored,
            expired,
            dead_lettered,
            dropped_overflow,
            dropped_dead_letter,
        }
    }
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Counts an event of a transport (the session layer counts deliveries,
    /// acks, rejects and restores itself).
    pub fn record(&self, event: TransportEvent, n: u64) {
        let c = match event {
            TransportEvent::Published => &self.publish.published,
            TransportEvent::Routed => &self.publish.routed,
            TransportEvent::DroppedUnroutable => &self.publish.dropped_unroutable,
            TransportEvent::Expired => &self.other.expired,
            TransportEvent::DeadLettered => &self.other.dead_lettered,
            TransportEvent::DroppedOverflow => &self.other.dropped_overflow,
            TransportEvent::DroppedDeadLetter => &self.other.dropped_dead_letter,
        };
        Self::add(c, n);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = |c: &AtomicU64| c.load(Relaxed);
        CounterSnapshot {
            published: r(&self.publish.published),
            routed: r(&self.publish.routed),
            dropped_unroutable: r(&self.publish.dropped_unroutable),
            delivered: r(&self.consume.delivered),
            acked: r(&self.consume.acked),
            rejected: r(&self.consume.rejected),
            redelivered: r(&self.consume.redelivered),
            restored: r(&self.consume.restored),
            expired: r(&self.other.expired),
            dead_lettered: r(&self.other.dead_lettered),
            dropped_overflow: r(&self.other.dropped_overflow),
            dropped_dead_letter: r(&self.other.dropped_dead_letter),
        }
    }
}

/// Figures of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Queue name.
    pub name: String,
    /// Ready messages per priority lane, index = priority.
    pub depth_by_lane: Vec<u64>,
    /// Ready messages in all lanes.
    pub messages: u64,
    /// Body bytes of the ready messages.
    pub bytes: u64,
    /// Delivered and not yet acked, rejected or restored.
    pub unacked: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// Messages found unreadable and set aside where they can still be
    /// read: redis://'s dead-letter list for garbage
    /// (`_dashi.garbage.<queue>`: invalid JSON, no `properties`, `headers:
    /// null`, an unknown body encoding). 0 where a transport keeps no such
    /// list (memory:// never sets a message aside; local:// marks a damaged
    /// record dead in its log and reports damaged files store-wide).
    pub garbage: u64,
    /// Why this process cannot use the queue, when it cannot (local://: its
    /// files could not be opened, e.g. replaced by hand by the wrong kind of
    /// file); its figures are then all zero, not read. `None` for a queue
    /// that works.
    pub unusable: Option<String>,
}

impl QueueStats {
    /// Figures of one queue (for transports outside this crate).
    pub fn new(
        name: String,
        depth_by_lane: Vec<u64>,
        messages: u64,
        bytes: u64,
        unacked: u64,
        consumers: u64,
    ) -> Self {
        QueueStats {
            name,
            depth_by_lane,
            messages,
            bytes,
            unacked,
            consumers,
            garbage: 0,
            unusable: None,
        }
    }

    /// The same figures with `garbage` messages set aside.
    pub fn with_garbage(mut self, garbage: u64) -> Self {
        self.garbage = garbage;
        self
    }

    /// The same figures (zero) of a queue this process cannot use, with
    /// the one line that says why.
    pub fn with_unusable(mut self, why: String) -> Self {
        self.unusable = Some(why);
        self
    }
}

/// A cloneable handle to a transport's figures.
#[derive(Clone)]
pub struct Stats {
    pub(crate) transport: Arc<dyn Transport>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("transport", &self.transport.scheme())
            .finish()
    }
}

impl Stats {
    /// Event counters: of every process sharing the store when the
    /// transport has one (local://, see [`Stats::store_wide`]), else of this
    /// process.
    pub fn counters(&self) -> CounterSnapshot {
        self.transport
            .store_counters()
            .unwrap_or_else(|| self.transport.counters().snapshot())
    }

    /// This process's event counters only.
    pub fn process_counters(&self) -> CounterSnapshot {
        self.transport.counters().snapshot()
    }

    /// True when [`Stats::counters`] and the queue figures cover every
    /// process sharing the store (local://), false when they are this
    /// process's (memory://).
    pub fn store_wide(&self) -> bool {
        self.transport.store_counters().is_some()
    }

    /// Figures of one queue: [`Error::UnknownQueue`] when there is no such
    /// queue, the transport's error when its figures cannot be read (a
    /// server that refuses or does not answer, a store whose metadata
    /// cannot be read, a queue whose own files cannot be opened), never one
    /// passed off as the other.
    pub fn queue(&self, name: &str) -> Result<QueueStats, Error> {
        self.transport
            .queue_stats(name)?
            .ok_or_else(|| Error::UnknownQueue(name.to_owned()))
    }

    /// Figures of every queue, sorted by name; an error when they cannot be
    /// read (never an empty list for it). A queue this process cannot use
    /// is listed with [`QueueStats::unusable`] set (where [`Stats::queue`]
    /// answers with its error).
    pub fn queues(&self) -> Result<Vec<QueueStats>, Error> {
        let mut v = self.transport.all_queue_stats()?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_through_arrays_in_order() {
        let a: [u64; CounterSnapshot::LEN] = std::array::from_fn(|i| i as u64 + 1);
        let s = CounterSnapshot::from_array(a);
        assert_eq!(
            (s.published, s.delivered, s.dropped_dead_letter),
            (1, 4, 12)
        );
        assert_eq!(s.to_array(), a);
    }
}
