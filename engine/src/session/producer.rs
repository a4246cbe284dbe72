//! Producers.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use std::time::Duration;

use crate::error::{BatchError, ConfirmsError, PublishError};
use crate::model::message::Message;
use crate::session::channel::ChannelShared;
use crate::session::confirm::Confirm;

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

    /// Publishes pipelined: routes the message and hands it to the
    /// transport, returning before the transport's durability point. The
    /// [`Confirm`] resolves `Ok` when the message is as durable as
    /// [`Producer::publish`] would have made it, or hands the message back
    /// in [`PublishError::Unconfirmed`]. Errors found before the transport
    /// took the message (routing, limits, a full window on a non-blocking
    /// channel) come back here, with the message. At most the channel's
    /// window of publishes await their confirm at once: past it this call
    /// waits for the oldest ones.
    #[inline]
    pub fn publish_async(
        &self,
        message: impl Into<Message>,
        routing_key: &str,
    ) -> Result<Confirm, PublishError> {
        self.channel
            .publish_async(message.into(), &self.exchange, routing_key, false)
    }

    /// Publishes every `(message, routing_key)` of `batch` pipelined (each as
    /// [`Producer::publish_async`], handed to the transport in runs as large
    /// as the window allows) and waits for all their confirms. `Err` lists
    /// each message not confirmed with its position and the message itself;
    /// the others were published.
    pub fn publish_batch<'k, M: Into<Message>>(
        &self,
        batch: impl IntoIterator<Item = (M, &'k str)>,
    ) -> Result<(), BatchError> {
        self.channel.publish_batch(
            batch
                .into_iter()
                .map(|(m, rk)| (m.into(), self.exchange.clone(), rk.to_owned(), false)),
        )
    }

    /// Waits for every outstanding confirm of this producer's channel (see
    /// [`crate::Channel::wait_for_confirms`]).
    pub fn wait_for_confirms(&self, timeout: Duration) -> Result<(), ConfirmsError> {
        if !self.channel.is_open() {
            return Err(ConfirmsError::ChannelClosed);
        }
        self.channel.confirms.wait_all(timeout)
    }
}
