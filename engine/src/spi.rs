//! What a transport implementer needs, in one place: the seam ([`Transport`],
//! [`QueueStore`], [`Implements`]), the [`Envelope`] a transport stores, the
//! routing it reuses ([`Topology`], [`Routing`]), the bookkeeping every
//! transport keeps the same way (declarations, limits, TTLs, lanes, consumer
//! counts, dead-lettering), wake-ups ([`Notify`]), counters, the engine's
//! clock, URL parsing, and name checks. Applications do not need this module.
//!
//! A transport implements [`Transport`] (topology, routing, publish) and hands
//! out one [`QueueStore`] per queue (pop, ack, reject, restore, waiters); the
//! session layer (tags, QoS windows, unacked tracking, leases, restore on
//! close) is the engine's and is the same for every transport. It opens a
//! [`Connection`](crate::Connection) with
//! [`Connection::with_transport`](crate::Connection::with_transport).

pub use crate::clock::{deadline_after, now_ns, NEVER};
pub use crate::model::names::{check_exchange_ref, check_len, check_name, ShortStr};
pub use crate::notify::Notify;
pub use crate::routing::{Binding, Refused, Route, Routing, Topology};
pub use crate::stats::{Counters, TransportEvent};
pub use crate::transport::{
    check_delete, check_redeclare, dead_letter, dead_letter_with, effective_ttl, lane_for,
    limit_reached, queue_full, route_and_lane, route_or_drop, spawn_periodic, validate_declaration,
    Accepted, ConnectionId, DeathReason, Envelope, Implements, NotRouted, PendingConfirm,
    PriorityTooHigh, QueueState, QueueStore, Transport, MAX_DEAD_LETTER_DEPTH,
};
pub use crate::url::{parse_seconds, parse_size, percent_decode, split_failover, ConnectUrl};
