//! A delivered message and the ways to settle it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::AckError;
use crate::model::message::{Message, Properties};
use crate::session::channel::ChannelShared;
use crate::session::unacked::{Slot, ACKED, REJECTED, RESTORED};

/// A message delivered to a consumer or returned by `get`, with its delivery
/// info. Settle it with [`ack`](Delivery::ack), [`reject`](Delivery::reject) or
/// [`nack`](Delivery::nack); an unsettled delivery comes back to its queue when
/// its channel closes or its lease runs out. Dropping a `Delivery` does not
/// settle it. The body is shared with the queue, never copied.
pub struct Delivery {
    pub(crate) slot: Arc<Slot>,
    pub(crate) channel: Arc<ChannelShared>,
    pub(crate) no_ack: bool,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_tag", &self.slot.tag)
            .field("queue", &self.slot.queue.name())
            .field("exchange", &self.slot.env.exchange)
            .field("routing_key", &self.slot.env.routing_key)
            .field("redelivered", &self.slot.env.redelivered)
            .field("body_len", &self.slot.env.size())
            .finish()
    }
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ack,
    Reject { requeue: bool },
}

impl Outcome {
    pub(crate) fn state(self) -> u64 {
        match self {
            Outcome::Ack => ACKED,
            Outcome::Reject { requeue: false } => REJECTED,
            Outcome::Reject { requeue: true } => RESTORED,
        }
    }
}

impl Delivery {
    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.slot.env.body
    }

    /// The basic properties.
    pub fn properties(&self) -> &Properties {
        self.slot.env.properties()
    }

    /// Body and properties as a [`Message`] (the body is shared, not copied),
    /// e.g. to publish it again.
    pub fn to_message(&self) -> Message {
        self.slot.env.to_message()
    }

    /// The channel-scoped delivery tag (monotonic, never reused).
    pub fn delivery_tag(&self) -> u64 {
        self.slot.tag
    }

    /// True when this message was delivered before and came back.
    pub fn redelivered(&self) -> bool {
        self.slot.env.redelivered
    }

    /// The exchange the message was published to.
    pub fn exchange(&self) -> &str {
        &self.slot.env.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.slot.env.routing_key
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        self.slot.queue.name()
    }

    /// The consumer it was delivered to (`None` for `get`).
    pub fn consumer_tag(&self) -> Option<&str> {
        self.slot.consumer.as_ref().map(|c| &*c.tag)
    }

    /// The priority lane it came from.
    pub fn priority(&self) -> u8 {
        self.slot.env.lane
    }

    fn slot(&self) -> Result<&Arc<Slot>, AckError> {
        if self.no_ack {
            Err(AckError::NoAck(self.slot.tag))
        } else {
            Ok(&self.slot)
        }
    }

    /// Acknowledges this delivery.
    pub fn ack(&self) -> Result<(), AckError> {
        self.channel.settle(self.slot()?, Outcome::Ack)
    }

    /// Acknowledges this delivery and every earlier unsettled one on its channel.
    pub fn ack_multiple(&self) -> Result<(), AckError> {
        self.slot()?;
        self.channel.settle_tag(self.slot.tag, true, Outcome::Ack)
    }

    /// Rejects it: back to its queue ahead of new messages, at its original
    /// position, with `redelivered = true` when
    /// `requeue`, else dead-lettered (or dropped and counted).
    pub fn reject(&self, requeue: bool) -> Result<(), AckError> {
        self.channel
            .settle(self.slot()?, Outcome::Reject { requeue })
    }

    /// Negative-acknowledges it (same as [`Delivery::reject`]).
    pub fn nack(&self, requeue: bool) -> Result<(), AckError> {
        self.reject(requeue)
    }

    /// Negative-acknowledges it and every earlier unsettled one on its channel.
    pub fn nack_multiple(&self, requeue: bool) -> Result<(), AckError> {
        self.slot()?;
        self.channel
            .settle_tag(self.slot.tag, true, Outcome::Reject { requeue })
    }

    /// Extends the lease: the delivery stays with this consumer until `from_now`
    /// has passed (replacing the current deadline), unless settled before.
    pub fn extend_lease(&self, from_now: Duration) -> Result<(), AckError> {
        self.channel.extend_lease(self.slot()?, from_now)
    }
}
