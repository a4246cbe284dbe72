//! [`Envelope`]: one queue's copy of a published message, as transports store
//! and return it.
//!
//! # Invariants
//! - The body is a shared `Bytes` and non-default properties are one shared
//!   `Arc`: routing a message to several queues copies no payload, and a
//!   message with default properties and names of at most 30 bytes costs no
//!   allocation.

use std::sync::Arc;

use bytes::Bytes;

use crate::model::message::{Message, Properties};
use crate::model::names::ShortStr;

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
    /// Transport-private position: the record in local://, the message's
    /// original position in memory:// (0 until it is first taken), a Redis tag.
    pub token: u64,
}

static DEFAULT_PROPERTIES: Properties = Properties::DEFAULT;

impl Envelope {
    /// Splits a message into an envelope (no copy of the body).
    #[inline]
    pub fn new(message: Message, exchange: &str, routing_key: &str) -> Self {
        Envelope::with_names(message, exchange.into(), routing_key.into())
    }

    /// [`Envelope::new`] with names already built (a transport decoding
    /// them from its own format builds them there, without a `String`).
    #[inline]
    pub fn with_names(message: Message, exchange: ShortStr, routing_key: ShortStr) -> Self {
        let properties = (!message.properties.is_default()).then(|| Arc::new(message.properties));
        Envelope {
            body: message.body,
            properties,
            exchange,
            routing_key,
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

    /// Sets the message's priority property (copying shared properties only
    /// if they change): a dead-lettered message clamped to its new queue's
    /// maximum says so to its consumer.
    pub fn set_priority(&mut self, priority: u8) {
        if self.properties().priority == Some(priority) {
            return;
        }
        let mut p = self.properties().clone();
        p.priority = Some(priority);
        self.properties = Some(Arc::new(p));
    }
}
