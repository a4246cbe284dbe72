//! Producers.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::PublishError;
use crate::model::message::Message;
use crate::session::channel::ChannelShared;

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::new(b)
    }
}
impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::new(b)
    }
}
impl From<String> for Message {
    fn from(b: String) -> Self {
        Message::new(b)
    }
}
impl From<&'static str> for Message {
    fn from(b: &'static str) -> Self {
        Message::new(Bytes::from_static(b.as_bytes()))
    }
}
impl From<&'static [u8]> for Message {
    fn from(b: &'static [u8]) -> Self {
        Message::new(Bytes::from_static(b))
    }
}

/// Publishes through a channel to one exchange (the default exchange `""`
/// unless set). `publish` returns once the transport accepted the message at
/// its durability level; on error the message is handed back in the error.
pub struct Producer {
    channel: Arc<ChannelShared>,
    exchange: String,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("channel", &self.channel.id)
            .field("exchange", &self.exchange)
            .finish()
    }
}

impl Producer {
    pub(crate) fn new(channel: Arc<ChannelShared>) -> Self {
        Producer {
            channel,
            exchange: String::new(),
        }
    }

    /// Publishes to `exchange` instead of the default exchange.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The exchange this producer publishes to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Publishes to this producer's exchange with `routing_key`.
    #[inline]
    pub fn publish(
        &self,
        message: impl Into<Message>,
        routing_key: &str,
    ) -> Result<(), PublishError> {
        self.channel
            .publish(message.into(), &self.exchange, routing_key, false)
    }

    /// Publishes with `mandatory`: a message no queue takes is an error
    /// ([`PublishError::Unroutable`]) instead of being counted as dropped.
    #[inline]
    pub fn publish_mandatory(
        &self,
        message: impl Into<Message>,
        routing_key: &str,
    ) -> Result<(), PublishError> {
        self.channel
            .publish(message.into(), &self.exchange, routing_key, true)
    }

    /// Publishes to any exchange.
    #[inline]
    pub fn publish_to(
        &self,
        message: impl Into<Message>,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        self.channel
            .publish(message.into(), exchange, routing_key, mandatory)
    }
}
