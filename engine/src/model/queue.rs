//! Queue declarations.

use std::time::Duration;

/// What a queue does when a publish would exceed `max_length` or
/// `max_length_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the publish with [`crate::PublishError::QueueFull`] (the default).
    #[default]
    RejectPublish,
    /// Drop (or dead-letter) the oldest message of the least urgent lane to
    /// make room.
    DropHead,
}

/// Default `max_length`: 16 Mi messages.
pub const DEFAULT_MAX_LENGTH: u64 = 1 << 24;
/// Default `max_length_bytes`: 1 GiB.
pub const DEFAULT_MAX_LENGTH_BYTES: u64 = 1 << 30;

/// A queue declaration. Limits default to finite values so memory stays bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// Name, 1..=255 bytes.
    pub name: String,
    /// Survives a restart of a durable transport.
    pub durable: bool,
    /// Only the declaring connection may use it; deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer is cancelled.
    pub auto_delete: bool,
    /// Highest priority accepted; 0 = one lane, no priorities. Up to 255.
    pub max_priority: u8,
    /// Most messages held (ready, not counting unacked).
    pub max_length: u64,
    /// Most body bytes held (ready, not counting unacked).
    pub max_length_bytes: u64,
    /// What to do when a limit is reached.
    pub overflow: Overflow,
    /// Time to live of every message in the queue.
    pub message_ttl: Option<Duration>,
    /// Where rejected, expired and dropped messages go.
    pub dead_letter_exchange: Option<String>,
    /// Routing key for dead-lettered messages (default: the original key).
    pub dead_letter_routing_key: Option<String>,
    /// Default lease (visibility timeout) of deliveries from this queue; a
    /// consumer may set its own. `None` = held until ack or channel close.
    pub lease: Option<Duration>,
}

impl Queue {
    /// A durable queue with default limits.
    pub fn new(name: impl Into<String>) -> Self {
        Queue {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            max_priority: 0,
            max_length: DEFAULT_MAX_LENGTH,
            max_length_bytes: DEFAULT_MAX_LENGTH_BYTES,
            overflow: Overflow::RejectPublish,
            message_ttl: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            lease: None,
        }
    }

    /// Sets `max_priority`.
    pub fn with_max_priority(mut self, max: u8) -> Self {
        self.max_priority = max;
        self
    }
    /// Sets `max_length`.
    pub fn with_max_length(mut self, n: u64) -> Self {
        self.max_length = n;
        self
    }
    /// Sets `max_length_bytes`.
    pub fn with_max_length_bytes(mut self, n: u64) -> Self {
        self.max_length_bytes = n;
        self
    }
    /// Sets the overflow policy.
    pub fn with_overflow(mut self, o: Overflow) -> Self {
        self.overflow = o;
        self
    }
    /// Sets the message TTL.
    pub fn with_message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }
    /// Sets the dead-letter exchange and, optionally, routing key.
    pub fn with_dead_letter(
        mut self,
        exchange: impl Into<String>,
        routing_key: Option<&str>,
    ) -> Self {
        self.dead_letter_exchange = Some(exchange.into());
        self.dead_letter_routing_key = routing_key.map(str::to_owned);
        self
    }
    /// Sets exclusive.
    pub fn with_exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }
    /// Sets auto-delete.
    pub fn with_auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
    /// Sets the default delivery lease.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// What `queue_declare` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Ready messages.
    pub message_count: u64,
    /// Consumers.
    pub consumer_count: u64,
}
