//! The session layer, the same for every transport: connections and their
//! push-consumer dispatch (`drain_events`), channels with delivery tags and
//! unacked registries, consumers with QoS windows, deliveries and how they are
//! settled, producers, async streams, Kombu's `SimpleQueue`, and the lease
//! reaper that restores deliveries whose lease ran out.

pub(crate) mod channel;
pub(crate) mod confirm;
pub(crate) mod connection;
pub(crate) mod consumer;
pub(crate) mod delivery;
pub(crate) mod drain;
pub(crate) mod leases;
pub(crate) mod producer;
pub(crate) mod simple;
pub(crate) mod stream;
pub(crate) mod unacked;
pub(crate) mod window;
