//! The seam between the model (channels, consumers, QoS, unacked tracking,
//! leases: all in this crate) and a transport (storage and transfer of messages,
//! topology, routing). Kombu's virtual channel vs. `_put`/`_get`/`_purge` split is
//! the model; the trait is shaped for batches and declares what a transport does
//! natively ([`Implements`]).

mod bookkeeping;
mod dead_letter;
mod envelope;

use std::fmt;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, PublishError, StoreFailure};
use crate::model::exchange::Exchange;
use crate::model::queue::{Queue, QueueInfo};
use crate::routing::Binding;
use crate::stats::{CounterSnapshot, Counters, QueueStats};

pub use bookkeeping::{
    check_delete, check_redeclare, effective_ttl, lane_for, limit_reached, queue_full,
    route_and_lane, route_or_drop, spawn_periodic, validate_declaration, NotRouted,
    PriorityTooHigh, QueueState,
};
pub use dead_letter::{dead_letter, dead_letter_with, DeathReason, MAX_DEAD_LETTER_DEPTH};
pub use envelope::Envelope;

/// Identifies a connection to a transport (exclusive-queue ownership).
pub type ConnectionId = u64;

/// What a transport does natively (Kombu's `implements`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Implements {
    /// Priority lanes kept by the transport itself.
    pub priorities: bool,
    /// Fanout routing to many queues.
    pub fanout: bool,
    /// Leases enforced by the transport across processes.
    pub native_leases: bool,
    /// Messages survive a restart.
    pub durable: bool,
    /// Several processes can share the queues.
    pub multi_process: bool,
}

/// A publish a transport took but has not yet confirmed: it resolves `Ok`
/// when the message reached the transport's durability point, or `Err` when
/// the transport can no longer tell whether it is stored (a sync that failed
/// after the write, a connection lost with the command in flight).
///
/// `poll_confirm` and `wait_confirm` (a zero deadline included) say that
/// the outcome is wanted now: a transport that holds back its syncs (or
/// flushes) to group more publishes into one starts it then.
pub trait PendingConfirm: Send + Sync + fmt::Debug {
    /// The outcome if known now; otherwise `waker` is woken when it may be.
    fn poll_confirm(&self, waker: &Waker) -> Poll<Result<(), StoreFailure>>;
    /// Blocks until the outcome is known or `deadline` passes (`None` on
    /// timeout).
    fn wait_confirm(&self, deadline: Option<Instant>) -> Option<Result<(), StoreFailure>>;
}

/// What [`Transport::publish_async`] did with a message.
#[derive(Debug)]
pub enum Accepted {
    /// Stored at the transport's durability point already.
    Confirmed,
    /// Stored, with the durability point still to come; the envelope comes
    /// back so the caller can hand it back if the confirm fails.
    Pending {
        /// Resolves at the durability point.
        confirm: Box<dyn PendingConfirm>,
        /// The message, kept by the caller until the confirm resolves.
        envelope: Envelope,
    },
}

/// One queue as the model layer uses it.
pub trait QueueStore: Send + Sync + fmt::Debug {
    /// The queue's name.
    fn name(&self) -> &str;
    /// The queue's declaration.
    fn declaration(&self) -> &Queue;
    /// Takes the next ready message: most urgent lane first, FIFO within a lane.
    /// Expired messages are expired (or dead-lettered) on the way, not returned.
    /// The message counts as unacked until `ack`, `reject` or `restore`.
    /// `Err` when the queue's storage failed and no message could be taken
    /// (a transport with several lanes still delivers from the readable
    /// ones, and reports the failure only when nothing else is ready).
    fn pop(&self) -> Result<Option<Envelope>, Error>;
    /// Takes up to `max` ready messages into `out` in delivery order (as
    /// many `pop`s); returns how many. `Err` only when none was taken and
    /// the storage failed. A transport that can claim a run of messages in
    /// one pass overrides it.
    fn pop_many(&self, max: usize, out: &mut Vec<Envelope>) -> Result<usize, Error> {
        let mut n = 0;
        while n < max {
            match self.pop() {
                Ok(Some(env)) => out.push(env),
                Ok(None) => break,
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
            n += 1;
        }
        Ok(n)
    }
    /// [`QueueStore::pop_many`] for a consumer whose prefetch window has
    /// room for `ahead` more messages after these: a transport with a
    /// round trip per pop may start taking up to `ahead` of them now, so
    /// that the next call finds them arrived (AMQP's prefetch: the broker
    /// sends ahead what the window allows). Messages taken ahead are
    /// served first by the next `pop`/`pop_many` on this handle, and go
    /// back to the queue unseen when the consumer stops
    /// ([`QueueStore::consumer_removed`]). The default takes none ahead.
    fn pop_many_ahead(
        &self,
        max: usize,
        ahead: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<usize, Error> {
        let _ = ahead;
        self.pop_many(max, out)
    }
    /// How many messages a consumer's dispatch asks [`QueueStore::pop_many`]
    /// for at once (bounded by its window). 1 (the default) keeps one
    /// `pop` per message, right for a transport whose pop is a local
    /// operation; a transport with a round trip per pop says more.
    fn batch_hint(&self) -> usize {
        1
    }
    /// Delivered messages were acked (or delivered with no_ack), any number
    /// in one call. `Err` when the storage failed: the messages may stay
    /// unacked there and be delivered again (marked redelivered), so
    /// at-least-once holds.
    fn ack(&self, envs: &[&Envelope]) -> Result<(), Error>;
    /// Delivered messages were rejected without requeue: dead-letter or drop.
    fn reject(&self, envs: Vec<Envelope>) -> Result<(), Error>;
    /// Delivered messages go back to their lanes ahead of every message never
    /// delivered, each at its original position among the other returned
    /// ones (AMQP 0-9-1), whatever order they come back in. The caller has
    /// set `redelivered` (a message put back unseen keeps its flag). `Err`
    /// when the storage failed (the messages then come back when this
    /// process's claims are reclaimed, as after a crash).
    fn restore(&self, envs: Vec<Envelope>) -> Result<(), Error>;
    /// The delivery of `env` is leased until `lease` from now (called when it
    /// is taken ahead by a stream, when it is delivered with a lease, and on
    /// every `extend_lease`). The engine expires leases itself; a transport
    /// shared by processes records the deadline so that another process can
    /// restore the message if this one stops running. `false` when the
    /// message is no longer this process's (another process took it back
    /// after an earlier lease ran out): it is not delivered. The default
    /// does nothing and says `true`.
    fn lease(&self, env: &Envelope, lease: Duration) -> bool {
        let _ = (env, lease);
        true
    }
    /// True when [`QueueStore::lease`] can tell that another process took
    /// a message back (its `false`): a stream then leases the run it took
    /// ahead from when it was taken, and skips what was taken back. Where
    /// it cannot, a run waits unleased, this process's while it lives
    /// (redis://: a leased entry is no longer re-scored, and a restorer
    /// elsewhere would put it back while this process still delivers it).
    /// The default says `false`.
    fn leases_what_waits(&self) -> bool {
        false
    }
    /// The waiters, deleted flag and consumer count of this queue handle;
    /// the defaults of the methods below use it.
    fn state(&self) -> &QueueState;
    /// Registers a waker called when a message becomes ready (or the queue is
    /// deleted); returns an id for [`QueueStore::unregister`].
    fn register(&self, waker: &Waker) -> u64 {
        self.state().register(waker)
    }
    /// Removes a registration.
    fn unregister(&self, id: u64) {
        self.state().unregister(id)
    }
    /// True once the queue was deleted.
    fn is_deleted(&self) -> bool {
        self.state().is_deleted()
    }
    /// A consumer starts consuming; false (nothing counted) when the queue
    /// was deleted first.
    fn consumer_added(&self) -> bool {
        self.state().consumer_added()
    }
    /// A consumer that was just added is taken back because the consumer
    /// could not start (another of its queues is gone): counted out without
    /// the auto-delete rule, since it never consumed.
    fn consumer_withdrawn(&self) {
        self.state().consumer_withdrawn()
    }
    /// A consumer stopped (auto-delete queues go when the last one does).
    fn consumer_removed(&self);
}

/// A transport: storage, transfer, topology and routing.
pub trait Transport: Send + Sync + fmt::Debug {
    /// URL scheme, e.g. `memory`.
    fn scheme(&self) -> &'static str;
    /// What it does natively.
    fn implements(&self) -> Implements;
    /// Default lease for deliveries whose queue and consumer set none.
    fn default_lease(&self) -> Option<Duration> {
        None
    }
    /// Declares an exchange (idempotent; other arguments = `PreconditionFailed`).
    fn declare_exchange(&self, ex: &Exchange) -> Result<(), Error>;
    /// Deletes an exchange and its bindings.
    fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error>;
    /// Declares a queue for connection `owner`.
    fn declare_queue(&self, q: &Queue, owner: ConnectionId) -> Result<QueueInfo, Error>;
    /// Deletes a queue; returns how many ready messages it held.
    fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> Result<u64, Error>;
    /// Drops every ready message; returns how many.
    fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u64, Error>;
    /// Binds a queue to an exchange.
    fn bind(&self, binding: Binding) -> Result<(), Error>;
    /// Removes a binding.
    fn unbind(&self, binding: &Binding) -> Result<(), Error>;
    /// The queue called `name`, for consuming.
    fn queue(&self, name: &str, owner: ConnectionId) -> Result<Arc<dyn QueueStore>, Error>;
    /// Routes and stores a message (its exchange and routing key are in the
    /// envelope). Returns once the message is accepted at the transport's
    /// durability level; on error the message is handed back in the error.
    fn publish(&self, envelope: Envelope, mandatory: bool) -> Result<(), PublishError>;
    /// Routes and stores a message like [`Transport::publish`], but returns
    /// as soon as it is stored, before its durability point: a pipelining
    /// transport returns [`Accepted::Pending`] and resolves the confirm
    /// later, so many publishes share one sync or round trip. The default
    /// publishes synchronously and returns [`Accepted::Confirmed`].
    fn publish_async(&self, envelope: Envelope, mandatory: bool) -> Result<Accepted, PublishError> {
        self.publish(envelope, mandatory)
            .map(|()| Accepted::Confirmed)
    }
    /// [`Transport::publish_async`] of each `(envelope, mandatory)` in order,
    /// one result per message in the same order; a transport that can send a
    /// batch in one command overrides it.
    fn publish_many(&self, batch: Vec<(Envelope, bool)>) -> Vec<Result<Accepted, PublishError>> {
        batch
            .into_iter()
            .map(|(env, mandatory)| self.publish_async(env, mandatory))
            .collect()
    }
    /// A connection closed: its exclusive queues go.
    fn connection_closed(&self, owner: ConnectionId);
    /// `Err` when the transport can no longer do its work (a core of its
    /// runtime panicked, its store failed); memory:// is always healthy.
    fn health(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Event counters of this process (what it published, delivered, ...).
    fn counters(&self) -> &Counters;
    /// Event counters of every process sharing this transport's storage,
    /// when it has storage shared between processes (local://); `None` when
    /// [`Transport::counters`] is the whole story. Queue figures
    /// ([`Transport::queue_stats`]) of such a transport are store-wide too.
    fn store_counters(&self) -> Option<CounterSnapshot> {
        None
    }
    /// Figures of one queue; `Ok(None)` when there is no such queue. An
    /// error when the figures cannot be read (a store or server that does
    /// not answer, a permission refused): never `None` for it, which would
    /// tell the caller the queue is gone.
    fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>, Error>;
    /// Figures of every queue; an error when they cannot be read (never an
    /// empty or partial list for it).
    fn all_queue_stats(&self) -> Result<Vec<QueueStats>, Error>;
}
