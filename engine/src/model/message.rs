//! Messages and their AMQP basic properties.

use std::time::Duration;

use bytes::Bytes;

use crate::model::value::Headers;

/// AMQP delivery mode. Transports that persist messages honour `Persistent`;
/// `memory://` keeps everything in memory either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// May be lost when the transport restarts (AMQP 1).
    Transient,
    /// Written to durable storage where the transport has any (AMQP 2, Kombu's default).
    #[default]
    Persistent,
}

/// The AMQP basic properties Kombu exposes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    /// MIME type of the body, e.g. `application/json`.
    pub content_type: Option<String>,
    /// Encoding of the body, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Headers,
    /// Transient or persistent.
    pub delivery_mode: DeliveryMode,
    /// Priority: higher is more urgent (AMQP). `None` is the lowest lane (0).
    pub priority: Option<u8>,
    /// Correlation id (RPC replies).
    pub correlation_id: Option<String>,
    /// Queue name to reply to.
    pub reply_to: Option<String>,
    /// Per-message time to live; the shorter of this and the queue's
    /// `message_ttl` applies.
    pub expiration: Option<Duration>,
    /// Application message id.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch, as set by the publisher.
    pub timestamp: Option<u64>,
}

impl Properties {
    /// True when every property is unset (equal to [`Properties::DEFAULT`]),
    /// checked field by field without comparing maps.
    #[inline]
    pub fn is_default(&self) -> bool {
        let Properties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
        } = self;
        content_type.is_none()
            && content_encoding.is_none()
            && headers.is_empty()
            && *delivery_mode == DeliveryMode::Persistent
            && priority.is_none()
            && correlation_id.is_none()
            && reply_to.is_none()
            && expiration.is_none()
            && message_id.is_none()
            && timestamp.is_none()
    }

    /// Every property unset (delivery mode persistent).
    pub const DEFAULT: Properties = Properties {
        content_type: None,
        content_encoding: None,
        headers: std::collections::BTreeMap::new(),
        delivery_mode: DeliveryMode::Persistent,
        priority: None,
        correlation_id: None,
        reply_to: None,
        expiration: None,
        message_id: None,
        timestamp: None,
    };
}

/// A body with its properties: what a producer publishes. Its `Debug` shows
/// at most the first [`DEBUG_BODY_BYTES`] bytes of the body and its length,
/// so an error holding a large message prints one short line.
#[derive(Clone, PartialEq, Default)]
pub struct Message {
    /// The payload. Shared, never copied by dashi on the way through.
    pub body: Bytes,
    /// Basic properties.
    pub properties: Properties,
}

/// Body bytes a `Debug` of a [`Message`] shows.
pub const DEBUG_BODY_BYTES: usize = 64;

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.body[..self.body.len().min(DEBUG_BODY_BYTES)];
        let mut d = f.debug_struct("Message");
        if shown.len() < self.body.len() {
            d.field(
                "body",
                &format_args!(
                    "{:?}… ({} bytes)",
                    Bytes::copy_from_slice(shown),
                    self.body.len()
                ),
            );
        } else {
            d.field("body", &self.body);
        }
        d.field("properties", &self.properties).finish()
    }
}

impl Message {
    /// A message with this body and default properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            properties: Properties::default(),
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.properties.priority = Some(priority);
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.properties.content_type = Some(content_type.into());
        self
    }

    /// Adds one header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<crate::Value>) -> Self {
        self.properties.headers.insert(key.into(), value.into());
        self
    }

    /// Sets the per-message time to live.
    pub fn with_expiration(mut self, ttl: Duration) -> Self {
        self.properties.expiration = Some(ttl);
        self
    }

    /// Body length: what counts against `max_length_bytes` and
    /// `prefetch_bytes` (as in RabbitMQ).
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_fields() {
        let m = Message::new("hi")
            .with_priority(3)
            .with_content_type("text/plain")
            .with_header("k", "v")
            .with_expiration(Duration::from_secs(1));
        assert_eq!(&m.body[..], b"hi");
        assert_eq!(m.size(), 2);
        assert_eq!(m.properties.priority, Some(3));
        assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(m.properties.headers["k"], crate::Value::from("v"));
        assert_eq!(m.properties.expiration, Some(Duration::from_secs(1)));
        assert_eq!(m.properties.delivery_mode, DeliveryMode::Persistent);
    }

    /// `is_default` agrees with comparing to `Properties::DEFAULT`, and any
    /// one property set makes it false.
    #[test]
    fn is_default_checks_every_property() {
        assert!(Properties::DEFAULT.is_default());
        assert!(Message::new("x").properties.is_default());
        let setters: Vec<fn(&mut Properties)> = vec![
            |p| p.content_type = Some("t".into()),
            |p| p.content_encoding = Some("e".into()),
            |p| {
                p.headers.insert("k".into(), crate::Value::from("v"));
            },
            |p| p.delivery_mode = DeliveryMode::Transient,
            |p| p.priority = Some(0),
            |p| p.correlation_id = Some("c".into()),
            |p| p.reply_to = Some("r".into()),
            |p| p.expiration = Some(Duration::ZERO),
            |p| p.message_id = Some("m".into()),
            |p| p.timestamp = Some(0),
        ];
        for (i, set) in setters.iter().enumerate() {
            let mut p = Properties::DEFAULT;
            set(&mut p);
            assert!(!p.is_default(), "property {i} set but seen as default");
            assert_ne!(p, Properties::DEFAULT, "property {i}");
        }
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_cuts_a_large_body_and_keeps_a_small_one() {
        let big = format!("{:?}", Message::new(vec![7u8; 1 << 20]));
        assert!(big.len() < 600, "{} chars", big.len());
        assert!(big.contains("(1048576 bytes)"), "{big}");
        let small = format!("{:?}", Message::new("hi"));
        assert!(small.contains("b\"hi\""), "{small}");
        assert!(!small.contains("bytes)"), "{small}");
    }
}
