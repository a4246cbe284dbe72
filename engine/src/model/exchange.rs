//! Exchanges: their types and declarations. (How each type routes is in
//! `routing/`: `topic.rs`, `headers.rs`.)

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The four AMQP exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes to queues whose binding key equals the routing key.
    Direct,
    /// Routes by `.`-separated word patterns with `*` (one word) and `#` (zero or more).
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by message headers against binding arguments (`x-match` all/any).
    Headers,
}

impl ExchangeKind {
    /// The AMQP name: `direct`, `topic`, `fanout`, `headers`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "direct" => ExchangeKind::Direct,
            "topic" => ExchangeKind::Topic,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown exchange type {other:?} (expected direct, topic, fanout or headers)"
                )))
            }
        })
    }
}

/// An exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Name, 1..=255 bytes.
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives a restart of a durable transport.
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Where unroutable messages go instead of being dropped.
    pub alternate_exchange: Option<String>,
}

impl Exchange {
    /// A durable exchange of this type.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Exchange {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            alternate_exchange: None,
        }
    }

    /// `direct` exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Direct)
    }
    /// `topic` exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Topic)
    }
    /// `fanout` exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Fanout)
    }
    /// `headers` exchange.
    pub fn headers(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Headers)
    }

    /// Sets the alternate exchange.
    pub fn with_alternate_exchange(mut self, name: impl Into<String>) -> Self {
        self.alternate_exchange = Some(name.into());
        self
    }

    /// Sets auto-delete.
    pub fn with_auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
}
