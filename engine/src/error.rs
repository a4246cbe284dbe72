//! Errors, one enum per kind of operation. Every variant is precise enough to act
//! on, and every failed publish hands the message back (`PublishError::into_message`).

use std::fmt;

use crate::model::message::Message;

/// Why a name (exchange, queue, consumer tag) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty where a name is required.
    Empty,
    /// The name is longer than 255 bytes (AMQP short string).
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The transport keeps something of its own under this name, or the
    /// name holds a separator of its layout (redis://: kombu's bookkeeping
    /// keys and its priority separator).
    Reserved {
        /// What the name clashes with.
        why: String,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("must not be empty"),
            NameError::TooLong { len } => write!(f, "is {len} bytes long, the limit is 255"),
            NameError::Reserved { why } => write!(f, "is not available: {why}"),
        }
    }
}

/// A connection URL that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL (or one of several separated by `;`) is empty.
    #[error("empty connection URL")]
    Empty,
    /// No `scheme://` prefix.
    #[error("connection URL {url:?} has no scheme (expected e.g. memory://)")]
    MissingScheme {
        /// The URL as given (password removed).
        url: String,
    },
    /// A scheme no transport in this build handles.
    #[error("unknown transport scheme {scheme:?} (supported: {supported})")]
    UnknownScheme {
        /// The scheme as given.
        scheme: String,
        /// The schemes this build supports.
        supported: String,
    },
    /// A query option the transport does not know.
    #[error("unknown option {name:?} for {scheme}:// URL")]
    UnknownOption {
        /// The transport scheme.
        scheme: String,
        /// The option name.
        name: String,
    },
    /// A query option with a value that does not parse or is out of range.
    #[error("invalid value {value:?} for option {name:?}: {reason}")]
    InvalidOption {
        /// The option name.
        name: String,
        /// The value as given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Something else about the URL's shape.
    #[error("malformed connection URL: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
}

/// Errors of topology, channel and consumer operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An exchange, queue or consumer-tag name was refused.
    #[error("{kind} name {name:?} {reason}")]
    InvalidName {
        /// "exchange", "queue", "consumer tag", "routing key".
        kind: &'static str,
        /// The name (truncated to 300 bytes).
        name: String,
        /// Why.
        reason: NameError,
    },
    /// A topic binding pattern that is not valid.
    #[error("invalid topic pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// An argument outside its allowed range or combination.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The named exchange does not exist.
    #[error("unknown exchange {0:?}")]
    UnknownExchange(String),
    /// The named queue does not exist.
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    /// A redeclaration with arguments different from the existing entity's.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// The exchange or queue is in use and `if_unused` was given, or the default
    /// exchange was to be deleted or bound.
    #[error("{0} is in use")]
    InUse(String),
    /// `queue_delete(if_empty)` on a queue that has messages.
    #[error("queue {0:?} is not empty")]
    NotEmpty(String),
    /// The queue is exclusive to another connection.
    #[error("queue {0:?} is exclusive to another connection")]
    Exclusive(String),
    /// A consumer tag already used on this connection.
    #[error("consumer tag {0:?} is already in use on this connection")]
    DuplicateConsumerTag(String),
    /// No consumer with this tag on the channel.
    #[error("no consumer with tag {0:?} on this channel")]
    UnknownConsumerTag(String),
    /// The channel was closed.
    #[error("channel is closed")]
    ChannelClosed,
    /// The connection was closed.
    #[error("connection is closed")]
    ConnectionClosed,
    /// Nothing arrived within the timeout.
    #[error("timed out")]
    Timeout,
    /// A connection URL that could not be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The transport failed (I/O, remote server).
    #[error("transport error: {0}")]
    Transport(String),
    /// The transport's storage failed, with what kind of failure it was (so
    /// [`Error::is_transient`] can tell a retry from a dead end).
    #[error(transparent)]
    Store(StoreFailure),
}

/// What kind of storage failure a [`StoreFailure`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// An I/O error; `transient` when the same call may succeed on retry
    /// (interrupted, would block, timed out).
    Io {
        /// Retrying may succeed.
        transient: bool,
    },
    /// The disk (or a budget) is full: retrying succeeds only once space
    /// comes back.
    NoSpace,
    /// Data written by another format or version.
    Format,
    /// Metadata that cannot be read (a damaged `meta.json`).
    CorruptMetadata,
    /// A record or segment too damaged to use.
    Damaged,
    /// A structural limit was reached (e.g. a lane's last segment number).
    Exhausted,
    /// The transport's runtime (threads, io_uring) failed.
    Runtime,
    /// There is no store where one was expected.
    NoStore,
    /// Something a caller asked for that the store cannot do (a record
    /// larger than a segment).
    Invalid,
}

/// A storage failure with its kind, the operation, and the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}{}: {detail}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
pub struct StoreFailure {
    /// The kind.
    pub kind: FailureKind,
    /// The operation or object ("presence lock", "append", "metadata").
    pub what: String,
    /// The file, when one is concerned.
    pub path: Option<std::path::PathBuf>,
    /// What went wrong.
    pub detail: String,
    /// The store refused the message before storing any of it (see
    /// [`StoreFailure::refused`]).
    refused: bool,
}

impl StoreFailure {
    /// A failure of `kind` while doing `what`.
    pub fn new(kind: FailureKind, what: impl Into<String>, detail: impl fmt::Display) -> Self {
        StoreFailure {
            kind,
            what: what.into(),
            path: None,
            detail: detail.to_string(),
            refused: false,
        }
    }

    /// The same, said of a publish the store refused before storing any of
    /// it (a server's error reply to the write: out of memory, no
    /// permission): the message is certainly not stored, so its confirm
    /// fails with [`PublishError::Refused`], not
    /// [`PublishError::Unconfirmed`], and publishing it again stores no
    /// duplicate.
    pub fn refused(mut self) -> Self {
        self.refused = true;
        self
    }

    /// True for a failure made by [`StoreFailure::refused`].
    pub fn is_refused(&self) -> bool {
        self.refused
    }

    /// The same, about file `path`.
    pub fn at(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// An I/O error while doing `what`, classified by its kind (a full disk
    /// is [`FailureKind::NoSpace`]).
    pub fn io(what: impl Into<String>, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => FailureKind::NoSpace,
            K::Interrupted | K::WouldBlock | K::TimedOut => FailureKind::Io { transient: true },
            _ => FailureKind::Io { transient: false },
        };
        StoreFailure::new(kind, what, e)
    }

    /// True when the same call may succeed later without any change by the
    /// caller: only transient I/O errors. A full disk, damaged or foreign
    /// data and a failed runtime need someone to act first.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, FailureKind::Io { transient: true })
    }
}

impl Error {
    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout)
    }

    /// True when the same call may succeed later without any change by the caller
    /// (timeouts and transport failures).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(f) => f.is_transient(),
            _ => matches!(self, Error::Timeout | Error::Transport(_)),
        }
    }

    /// An [`Error::InvalidName`], with an over-long name shortened for display.
    pub fn name(kind: &'static str, name: &str, reason: NameError) -> Self {
        let mut shown = name.to_owned();
        if shown.len() > 300 {
            let mut cut = 300;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
            shown.push('…');
        }
        Error::InvalidName {
            kind,
            name: shown,
            reason,
        }
    }
}

/// A publish that did not happen. Every variant holds the message, so nothing is
/// lost: take it back with [`PublishError::into_message`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The channel (or its connection) is closed.
    #[error("publish on a closed channel")]
    ChannelClosed(Box<Message>),
    /// The target exchange does not exist.
    #[error("unknown exchange {exchange:?}")]
    UnknownExchange {
        /// The exchange name.
        exchange: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// `mandatory` was set and no queue matched.
    #[error(
        "unroutable: no queue bound to exchange {exchange:?} matches routing key {routing_key:?}"
    )]
    Unroutable {
        /// The exchange name.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The message's priority is above a target queue's `max_priority`.
    #[error("priority {priority} is above max_priority {max} of queue {queue:?}")]
    PriorityTooHigh {
        /// The message's priority.
        priority: u8,
        /// The queue's maximum.
        max: u8,
        /// The queue.
        queue: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The body is larger than the connection's `max_body_size`.
    #[error("body of {size} bytes exceeds the maximum of {max} bytes")]
    BodyTooLarge {
        /// Body size.
        size: usize,
        /// Configured maximum.
        max: usize,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// A target queue with `overflow = reject-publish` is at `max_length` or
    /// `max_length_bytes`.
    #[error("queue {queue:?} is full ({reason})")]
    QueueFull {
        /// The queue.
        queue: String,
        /// Which limit.
        reason: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The routing key is longer than 255 bytes.
    #[error("routing key {reason}")]
    InvalidRoutingKey {
        /// Why.
        reason: NameError,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The transport failed to accept the message.
    #[error("transport error: {reason}")]
    Transport {
        /// What failed.
        reason: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The transport's storage failed to take the message (a full disk, a
    /// damaged segment); the message was not stored.
    /// [`PublishError::is_transient`] says whether a retry can help.
    #[error("{failure}")]
    Store {
        /// What failed.
        failure: StoreFailure,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The transport cannot tell whether the message was stored: it was
    /// written but the sync that was to make it durable failed, or the
    /// connection was lost with the command in flight. The message may be
    /// delivered or not; publishing it again may deliver it twice.
    #[error("unconfirmed, the message may or may not be stored: {failure}")]
    Unconfirmed {
        /// What failed.
        failure: StoreFailure,
        /// The message, handed back.
        message: Box<Message>,
        /// The exchange it was published to (to publish it again).
        exchange: Box<str>,
        /// The routing key it was published with.
        routing_key: Box<str>,
    },
    /// The store refused a pipelined publish before storing any of it (a
    /// Redis error reply to every write of it: out of memory, no
    /// permission): certainly not stored, so publishing it again stores no
    /// duplicate. Carries where it was published, as
    /// [`PublishError::Unconfirmed`] does, to publish it again.
    #[error("refused, the message is not stored: {failure}")]
    Refused {
        /// What the store said (boxed: the error stays as small as it was).
        failure: Box<StoreFailure>,
        /// The message, handed back.
        message: Box<Message>,
        /// The exchange it was published to (to publish it again).
        exchange: Box<str>,
        /// The routing key it was published with.
        routing_key: Box<str>,
    },
    /// The channel's window of unconfirmed publishes is full and the channel
    /// does not block (see [`crate::ChannelOptions`]); wait for confirms
    /// and try again.
    #[error("publish window full: {messages} messages and {bytes} bytes awaiting confirms")]
    Full {
        /// Publishes awaiting their confirm.
        messages: usize,
        /// Their body bytes.
        bytes: usize,
        /// The message, handed back.
        message: Box<Message>,
    },
}

impl PublishError {
    /// An [`PublishError::Unconfirmed`] publish of `envelope`: its message,
    /// exchange and routing key handed back.
    pub fn unconfirmed(failure: StoreFailure, envelope: crate::transport::Envelope) -> Self {
        let exchange = envelope.exchange.as_str().into();
        let routing_key = envelope.routing_key.as_str().into();
        PublishError::Unconfirmed {
            failure,
            message: Box::new(envelope.into_message()),
            exchange,
            routing_key,
        }
    }

    /// A [`PublishError::Refused`] publish of `envelope`.
    pub fn refused(failure: StoreFailure, envelope: crate::transport::Envelope) -> Self {
        let exchange = envelope.exchange.as_str().into();
        let routing_key = envelope.routing_key.as_str().into();
        PublishError::Refused {
            failure: Box::new(failure),
            message: Box::new(envelope.into_message()),
            exchange,
            routing_key,
        }
    }

    /// The message that was not published.
    pub fn into_message(self) -> Message {
        *match self {
            PublishError::ChannelClosed(m) => m,
            PublishError::UnknownExchange { message, .. }
            | PublishError::Unroutable { message, .. }
            | PublishError::PriorityTooHigh { message, .. }
            | PublishError::BodyTooLarge { message, .. }
            | PublishError::QueueFull { message, .. }
            | PublishError::InvalidRoutingKey { message, .. }
            | PublishError::Transport { message, .. }
            | PublishError::Store { message, .. }
            | PublishError::Unconfirmed { message, .. }
            | PublishError::Refused { message, .. }
            | PublishError::Full { message, .. } => message,
        }
    }

    /// A borrow of the message that was not published.
    pub fn message(&self) -> &Message {
        match self {
            PublishError::ChannelClosed(m) => m,
            PublishError::UnknownExchange { message, .. }
            | PublishError::Unroutable { message, .. }
            | PublishError::PriorityTooHigh { message, .. }
            | PublishError::BodyTooLarge { message, .. }
            | PublishError::QueueFull { message, .. }
            | PublishError::InvalidRoutingKey { message, .. }
            | PublishError::Transport { message, .. }
            | PublishError::Store { message, .. }
            | PublishError::Unconfirmed { message, .. }
            | PublishError::Refused { message, .. }
            | PublishError::Full { message, .. } => message,
        }
    }

    /// True when retrying the same publish later may succeed (queue full,
    /// window full, transport failure, a transient storage failure). A retry
    /// of an [`PublishError::Unconfirmed`] publish may store the message a
    /// second time.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::Store { failure, .. } | PublishError::Unconfirmed { failure, .. } => {
                failure.is_transient()
            }
            PublishError::Refused { failure, .. } => failure.is_transient(),
            _ => matches!(
                self,
                PublishError::QueueFull { .. }
                    | PublishError::Transport { .. }
                    | PublishError::Full { .. }
            ),
        }
    }

    /// True when the message may have been stored although the publish
    /// failed ([`PublishError::Unconfirmed`]).
    pub fn is_unconfirmed(&self) -> bool {
        matches!(self, PublishError::Unconfirmed { .. })
    }
}

/// Why [`crate::Channel::wait_for_confirms`] did not return `Ok`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfirmsError {
    /// Some publishes were still awaiting their confirm when the time ran
    /// out; none of them is lost, call again to keep waiting.
    #[error("{outstanding} publishes still awaiting their confirm after the timeout")]
    Timeout {
        /// Publishes still awaiting their confirm.
        outstanding: usize,
    },
    /// Publishes were not confirmed.
    #[error(
        "{} publishes were not confirmed",
        .failed.len() + .reported_to_confirms
    )]
    Failed {
        /// The failures whose [`crate::Confirm`] was dropped, each with its
        /// message handed back.
        failed: Vec<PublishError>,
        /// Failures whose [`crate::Confirm`] is held and not yet read: that
        /// confirm hands the message back (or, if it is dropped unread, the
        /// next call does). Failures already read through their confirm
        /// are not reported again.
        reported_to_confirms: usize,
    },
    /// The channel is closed (its outstanding confirms still resolve, each
    /// through its [`crate::Confirm`]).
    #[error("channel is closed")]
    ChannelClosed,
}

/// Publishes of [`crate::Producer::publish_batch`] that failed, each with its
/// position in the batch and its message handed back in the error.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} messages of the batch were not published: first: {}", .failed.len(), .failed.first().map(|(i, e)| format!("#{i}: {e}")).unwrap_or_default())]
pub struct BatchError {
    /// Messages in the batch.
    pub total: usize,
    /// The failed ones: (position in the batch, error with the message).
    pub failed: Vec<(usize, PublishError)>,
}

/// Where a delivery stands when an ack, reject or lease extension could not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// Already acknowledged.
    Acked,
    /// Already rejected or nacked.
    Rejected,
    /// Returned to its queue (channel closed or lease expired); it will be, or
    /// was, delivered again with `redelivered = true`.
    Restored,
    /// Settled earlier and no longer tracked (acked, rejected or restored).
    Earlier,
}

impl fmt::Display for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Settled::Acked => "acked",
            Settled::Rejected => "rejected",
            Settled::Restored => "restored to its queue",
            Settled::Earlier => "settled",
        })
    }
}

/// Errors of ack, reject, nack and lease extension.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// No delivery with this tag was ever made on this channel.
    #[error("unknown delivery tag {0}")]
    UnknownTag(u64),
    /// The delivery was made but is no longer outstanding.
    #[error("delivery tag {tag} is no longer outstanding: already {state}")]
    AlreadySettled {
        /// The tag.
        tag: u64,
        /// What happened to it.
        state: Settled,
    },
    /// The delivery came from a `no_ack` consumer: there is nothing to settle.
    #[error("delivery tag {0} was delivered with no_ack")]
    NoAck(u64),
    /// The channel is closed; its unacked deliveries were restored.
    #[error("channel is closed")]
    ChannelClosed,
    /// The delivery was settled, but the transport's storage failed to
    /// record it: the message may be delivered again (marked redelivered),
    /// as at-least-once allows.
    #[error("delivery tag {tag} settled but not recorded by the store: {failure}")]
    Store {
        /// The tag (the highest one for a `multiple` settle).
        tag: u64,
        /// What failed.
        failure: StoreFailure,
    },
}

impl AckError {
    /// True when the message was handed back to its queue before this call
    /// (lease expiry or channel close), so it will be redelivered.
    pub fn is_restored(&self) -> bool {
        matches!(
            self,
            AckError::AlreadySettled {
                state: Settled::Restored,
                ..
            } | AckError::ChannelClosed
        )
    }
}

#[cfg(test)]
mod store_failure_tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_and_only_transient_ones_retry() {
        let raw = |n| std::io::Error::from_raw_os_error(n);
        // ENOSPC, EINTR, EAGAIN, EACCES.
        let full = StoreFailure::io("append", &raw(28)).at("/s/seg");
        assert_eq!(full.kind, FailureKind::NoSpace);
        assert!(!full.is_transient());
        assert!(full.to_string().starts_with("append /s/seg: "), "{full}");
        for n in [4, 11] {
            assert!(StoreFailure::io("x", &raw(n)).is_transient(), "errno {n}");
        }
        let denied = StoreFailure::io("x", &raw(13));
        assert_eq!(denied.kind, FailureKind::Io { transient: false });
        assert!(!Error::Store(denied.clone()).is_transient());
        let message = Box::new(Message::new("m"));
        let e = PublishError::Store {
            failure: StoreFailure::io("x", &raw(4)),
            message,
        };
        assert!(e.is_transient());
        assert_eq!(&e.into_message().body[..], b"m");
        for kind in [
            FailureKind::Format,
            FailureKind::CorruptMetadata,
            FailureKind::Damaged,
            FailureKind::Runtime,
            FailureKind::NoStore,
        ] {
            assert!(
                !StoreFailure::new(kind, "x", "y").is_transient(),
                "{kind:?}"
            );
        }
    }
}
