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
