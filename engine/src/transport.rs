//! The seam between the model (channels, consumers, QoS, unacked tracking,
//! leases: all in this crate) and a transport (storage and transfer of messages,
//! topology, routing). Kombu's virtual channel vs. `_put`/`_get`/`_purge` split is
//! the model; the trait is shaped for batches and declares what a transport does
//! natively ([`Implements`]).

use std::fmt;
use std::task::Waker;
use std::time::Duration;

use crate::error::{Error, PublishError};
use crate::exchange::Exchange;
use bytes::Bytes;

use crate::message::{Message, Properties};
use crate::names::ShortStr;
use crate::queue::{Queue, QueueInfo};
use crate::routing::Binding;
use crate::stats::{Counters, QueueStats};
use std::sync::Arc;

/// Identifies a connection to a transport (exclusive-queue ownership).
pub type ConnectionId = u64;

/// One queue's copy of a published message. It carries the message inline:
/// the body is a shared `Bytes` and properties other than the defaults are one
/// shared allocation, so routing a message to several queues copies no payload,
/// and a message with default properties and short names costs no allocation.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The body.
    pub body: Bytes,
    /// Properties; `None` = all defaults.
    pub properties: Option<Arc<Properties>>,
    /// Exchange it was published to.
    pub exchange: ShortStr,
    /// Routing key it was published with.
    pub routing_key: ShortStr,
    /// Delivered before and returned to the queue.
    pub redelivered: bool,
    /// Expiry in [`crate::clock::now_ns`] terms; `u64::MAX` = never.
    pub expires_at: u64,
    /// The lane (priority) it sits in.
    pub lane: u8,
    /// Transport-private position (record offset, Redis tag); 0 in memory://.
    pub token: u64,
}

static DEFAULT_PROPERTIES: Properties = Properties::DEFAULT;

impl Envelope {
    /// Splits a message into an envelope (no copy of the body).
    #[inline]
    pub fn new(message: Message, exchange: &str, routing_key: &str) -> Self {
        let properties =
            (message.properties != Properties::DEFAULT).then(|| Arc::new(message.properties));
        Envelope {
            body: message.body,
            properties,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            redelivered: false,
            expires_at: u64::MAX,
            lane: 0,
            token: 0,
        }
    }

    /// The properties.
    pub fn properties(&self) -> &Properties {
        self.properties.as_deref().unwrap_or(&DEFAULT_PROPERTIES)
    }

    /// Body and properties as a new [`Message`] (the body is shared).
    pub fn to_message(&self) -> Message {
        Message {
            body: self.body.clone(),
            properties: self.properties().clone(),
        }
    }

    /// Back into a [`Message`] (no copy when the properties are not shared).
    pub fn into_message(self) -> Message {
        let properties = match self.properties {
            None => Properties::default(),
            Some(p) => Arc::try_unwrap(p).unwrap_or_else(|shared| (*shared).clone()),
        };
        Message {
            body: self.body,
            properties,
        }
    }

    /// Body length.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

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

/// One queue as the model layer uses it.
pub trait QueueStore: Send + Sync + fmt::Debug {
    /// The queue's name.
    fn name(&self) -> &str;
    /// The queue's declaration.
    fn declaration(&self) -> &Queue;
    /// Takes the next ready message: most urgent lane first, FIFO within a lane.
    /// Expired messages are expired (or dead-lettered) on the way, not returned.
    /// The message counts as unacked until `ack`, `reject` or `restore`.
    fn pop(&self) -> Option<Envelope>;
    /// A delivered message was acked (or delivered with no_ack).
    fn ack(&self, env: &Envelope);
    /// A delivered message was rejected without requeue: dead-letter or drop.
    fn reject(&self, env: Envelope);
    /// Delivered messages go back to the front of their lanes, `envs[0]` first.
    /// The caller has set `redelivered`.
    fn restore(&self, envs: Vec<Envelope>);
    /// The delivery of `env` is leased until `lease` from now (called when it
    /// is delivered with a lease and on every `extend_lease`). The engine
    /// expires leases itself; a transport shared by processes records the
    /// deadline so that another process can restore the message if this one
    /// stops running. The default does nothing.
    fn lease(&self, env: &Envelope, lease: Duration) {
        let _ = (env, lease);
    }
    /// Registers a waker called when a message becomes ready (or the queue is
    /// deleted); returns an id for [`QueueStore::unregister`].
    fn register(&self, waker: &Waker) -> u64;
    /// Removes a registration.
    fn unregister(&self, id: u64);
    /// True once the queue was deleted.
    fn is_deleted(&self) -> bool;
    /// A consumer started consuming.
    fn consumer_added(&self);
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
    /// A connection closed: its exclusive queues go.
    fn connection_closed(&self, owner: ConnectionId);
    /// `Err` when the transport can no longer do its work (a core of its
    /// runtime panicked, its store failed); memory:// is always healthy.
    fn health(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Event counters.
    fn counters(&self) -> &Counters;
    /// Figures of one queue.
    fn queue_stats(&self, name: &str) -> Option<QueueStats>;
    /// Figures of every queue.
    fn all_queue_stats(&self) -> Vec<QueueStats>;
}

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
        h.entry(k.to_owned())
            .or_insert_with(|| crate::Value::from(v));
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
