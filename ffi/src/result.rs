//! Result codes, grouped by origin from a base of 7000 (the numbers are part
//! of the ABI: never renumber, only add).

use std::ffi::c_char;
use std::mem::MaybeUninit;

use dashi::{AckError, Error, FailureKind, PublishError};

use crate::boundary::{ffi_guard_value, write_text};

/// The outcome of a call: `DASHI_OK` or what went wrong.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dashi_result {
    /// Success.
    DASHI_OK = 0,
    // 7000: how the function was called.
    /// A pointer argument was NULL.
    DASHI_NULL_PARAMETER = 7000,
    /// An argument is not valid (a string that is not UTF-8, a bad value).
    DASHI_INVALID_ARGUMENT = 7001,
    /// dashi panicked inside the call (a bug); the handle may be unusable.
    DASHI_PANIC = 7002,
    /// Nothing came within the timeout.
    DASHI_TIMEOUT = 7003,
    /// The property or header asked for is not set on the message.
    DASHI_NOT_SET = 7004,
    // 7100: connection, channel, topology.
    /// The URL is malformed, names an unknown scheme or a bad option.
    DASHI_INVALID_URL = 7100,
    /// The connection is closed.
    DASHI_CONNECTION_CLOSED = 7101,
    /// The channel is closed.
    DASHI_CHANNEL_CLOSED = 7102,
    /// No such exchange.
    DASHI_UNKNOWN_EXCHANGE = 7103,
    /// No such queue.
    DASHI_UNKNOWN_QUEUE = 7104,
    /// Declared before with other arguments.
    DASHI_PRECONDITION_FAILED = 7105,
    /// In use (delete `if_unused`).
    DASHI_IN_USE = 7106,
    /// Not empty (delete `if_empty`).
    DASHI_NOT_EMPTY = 7107,
    /// An exclusive queue of another connection.
    DASHI_EXCLUSIVE = 7108,
    /// No consumer with this tag.
    DASHI_UNKNOWN_CONSUMER = 7109,
    /// A name that is too long, or a bad binding pattern.
    DASHI_INVALID_NAME = 7110,
    // 7200: storage.
    /// The transport's storage failed; retrying may help later.
    DASHI_STORE_TRANSIENT = 7200,
    /// The transport's storage failed (I/O, damage, another format, a
    /// failed runtime); someone needs to act before a retry helps.
    DASHI_STORE_FAILED = 7201,
    /// The disk (or a store budget) is full.
    DASHI_NO_SPACE = 7202,
    // 7300: publishing.
    /// No queue is bound for the routing key (mandatory publish).
    DASHI_UNROUTABLE = 7300,
    /// The priority is above the queue's max_priority.
    DASHI_PRIORITY_TOO_HIGH = 7301,
    /// The body is larger than the connection's max_body_size.
    DASHI_BODY_TOO_LARGE = 7302,
    /// A reject-publish queue is full.
    DASHI_QUEUE_FULL = 7303,
    /// Written, but its durability could not be confirmed: the message may
    /// or may not be delivered; publishing it again may deliver it twice.
    DASHI_UNCONFIRMED = 7304,
    /// The channel's window of unconfirmed publishes is full.
    DASHI_WINDOW_FULL = 7305,
    // 7400: settling deliveries.
    /// No delivery with this tag was made on the channel.
    DASHI_UNKNOWN_TAG = 7400,
    /// The delivery was acked or rejected before.
    DASHI_ALREADY_SETTLED = 7401,
    /// The delivery went back to its queue before (its lease ran out or its
    /// channel closed): it will be delivered again.
    DASHI_RESTORED = 7402,
    /// The delivery came from a no-ack consumer: nothing to settle.
    DASHI_NO_ACK = 7403,
    /// Settled, but the store failed to record it: the message may be
    /// delivered again.
    DASHI_NOT_RECORDED = 7404,
}

use dashi_result::*;

impl dashi_result {
    /// Every code, for [`dashi_result::from_code`].
    const ALL: [dashi_result; 31] = [
        DASHI_OK,
        DASHI_NULL_PARAMETER,
        DASHI_INVALID_ARGUMENT,
        DASHI_PANIC,
        DASHI_TIMEOUT,
        DASHI_NOT_SET,
        DASHI_INVALID_URL,
        DASHI_CONNECTION_CLOSED,
        DASHI_CHANNEL_CLOSED,
        DASHI_UNKNOWN_EXCHANGE,
        DASHI_UNKNOWN_QUEUE,
        DASHI_PRECONDITION_FAILED,
        DASHI_IN_USE,
        DASHI_NOT_EMPTY,
        DASHI_EXCLUSIVE,
        DASHI_UNKNOWN_CONSUMER,
        DASHI_INVALID_NAME,
        DASHI_STORE_TRANSIENT,
        DASHI_STORE_FAILED,
        DASHI_NO_SPACE,
        DASHI_UNROUTABLE,
        DASHI_PRIORITY_TOO_HIGH,
        DASHI_BODY_TOO_LARGE,
        DASHI_QUEUE_FULL,
        DASHI_UNCONFIRMED,
        DASHI_WINDOW_FULL,
        DASHI_UNKNOWN_TAG,
        DASHI_ALREADY_SETTLED,
        DASHI_RESTORED,
        DASHI_NO_ACK,
        DASHI_NOT_RECORDED,
    ];

    /// The result with number `code`, if there is one.
    pub fn from_code(code: u32) -> Option<dashi_result> {
        Self::ALL.into_iter().find(|r| *r as u32 == code)
    }

    fn text(self) -> &'static str {
        match self {
            DASHI_OK => "ok",
            DASHI_NULL_PARAMETER => "a pointer argument was NULL",
            DASHI_INVALID_ARGUMENT => "an argument is not valid (bad value or not UTF-8)",
            DASHI_PANIC => "dashi panicked inside the call",
            DASHI_TIMEOUT => "nothing came within the timeout",
            DASHI_NOT_SET => "the property or header is not set",
            DASHI_INVALID_URL => "the URL is malformed or names an unknown scheme or option",
            DASHI_CONNECTION_CLOSED => "the connection is closed",
            DASHI_CHANNEL_CLOSED => "the channel is closed",
            DASHI_UNKNOWN_EXCHANGE => "no such exchange",
            DASHI_UNKNOWN_QUEUE => "no such queue",
            DASHI_PRECONDITION_FAILED => "declared before with other arguments",
            DASHI_IN_USE => "in use",
            DASHI_NOT_EMPTY => "not empty",
            DASHI_EXCLUSIVE => "an exclusive queue of another connection",
            DASHI_UNKNOWN_CONSUMER => "no consumer with this tag",
            DASHI_INVALID_NAME => "a name that is too long or a bad binding pattern",
            DASHI_STORE_TRANSIENT => "the store failed; retrying may help",
            DASHI_STORE_FAILED => "the store failed",
            DASHI_NO_SPACE => "no space left in the store",
            DASHI_UNROUTABLE => "no queue is bound for the routing key",
            DASHI_PRIORITY_TOO_HIGH => "the priority is above the queue's max_priority",
            DASHI_BODY_TOO_LARGE => "the body is larger than max_body_size",
            DASHI_QUEUE_FULL => "the queue is full",
            DASHI_UNCONFIRMED => {
                "written but not confirmed durable: it may or may not be delivered"
            }
            DASHI_WINDOW_FULL => "the channel's window of unconfirmed publishes is full",
            DASHI_UNKNOWN_TAG => "no delivery with this tag was made on the channel",
            DASHI_ALREADY_SETTLED => "the delivery was settled before",
            DASHI_RESTORED => "the delivery went back to its queue before",
            DASHI_NO_ACK => "the delivery came from a no-ack consumer",
            DASHI_NOT_RECORDED => "settled, but the store failed to record it",
        }
    }
}

/// Writes the text of `r` into `buf` (at most `len` bytes, always
/// NUL-terminated when `len > 0`, cut if it does not fit) and returns the
/// text's full length without the NUL (call again with a larger buffer when
/// it is `>= len`). `buf` may be NULL when `len` is 0. Any thread.
///
/// # Safety
/// `buf` is writable for `len` bytes, or `len` is 0.
#[no_mangle]
pub unsafe extern "C" fn dashi_result_message(
    r: MaybeUninit<dashi_result>,
    buf: *mut c_char,
    len: usize,
) -> usize {
    ffi_guard_value(0, || {
        // In C a `dashi_result` is any `uint32_t`: read the number, never
        // assume it is one of ours.
        // SAFETY: `dashi_result` is `repr(u32)`, so the argument is four
        // initialized bytes of a `u32` whatever C passed.
        let code = unsafe { r.as_ptr().cast::<u32>().read() };
        let text =
            dashi_result::from_code(code).map_or("unknown dashi_result code", dashi_result::text);
        // SAFETY: the caller passes a writable buffer of `len` bytes (or
        // NULL with `len == 0`), as the header says.
        unsafe { write_text(text, buf, len) };
        text.len()
    })
}

fn store(kind: FailureKind) -> dashi_result {
    match kind {
        FailureKind::Io { transient: true } => DASHI_STORE_TRANSIENT,
        FailureKind::NoSpace => DASHI_NO_SPACE,
        _ => DASHI_STORE_FAILED,
    }
}

impl From<&Error> for dashi_result {
    fn from(e: &Error) -> Self {
        match e {
            Error::InvalidName { .. } | Error::InvalidPattern { .. } => DASHI_INVALID_NAME,
            Error::InvalidArgument(_) => DASHI_INVALID_ARGUMENT,
            Error::UnknownExchange(_) => DASHI_UNKNOWN_EXCHANGE,
            Error::UnknownQueue(_) => DASHI_UNKNOWN_QUEUE,
            Error::PreconditionFailed(_) | Error::DuplicateConsumerTag(_) => {
                DASHI_PRECONDITION_FAILED
            }
            Error::InUse(_) => DASHI_IN_USE,
            Error::NotEmpty(_) => DASHI_NOT_EMPTY,
            Error::Exclusive(_) => DASHI_EXCLUSIVE,
            Error::UnknownConsumerTag(_) => DASHI_UNKNOWN_CONSUMER,
            Error::ChannelClosed => DASHI_CHANNEL_CLOSED,
            Error::ConnectionClosed => DASHI_CONNECTION_CLOSED,
            Error::Timeout => DASHI_TIMEOUT,
            Error::Url(_) => DASHI_INVALID_URL,
            Error::Store(f) => store(f.kind),
            e if e.is_transient() => DASHI_STORE_TRANSIENT,
            _ => DASHI_STORE_FAILED,
        }
    }
}

impl From<&PublishError> for dashi_result {
    fn from(e: &PublishError) -> Self {
        match e {
            PublishError::ChannelClosed(_) => DASHI_CHANNEL_CLOSED,
            PublishError::UnknownExchange { .. } => DASHI_UNKNOWN_EXCHANGE,
            PublishError::Unroutable { .. } => DASHI_UNROUTABLE,
            PublishError::PriorityTooHigh { .. } => DASHI_PRIORITY_TOO_HIGH,
            PublishError::BodyTooLarge { .. } => DASHI_BODY_TOO_LARGE,
            PublishError::QueueFull { .. } => DASHI_QUEUE_FULL,
            PublishError::InvalidRoutingKey { .. } => DASHI_INVALID_NAME,
            PublishError::Store { failure, .. } => store(failure.kind),
            PublishError::Refused { failure, .. } => store(failure.kind),
            PublishError::Unconfirmed { .. } => DASHI_UNCONFIRMED,
            PublishError::Full { .. } => DASHI_WINDOW_FULL,
            e if e.is_transient() => DASHI_STORE_TRANSIENT,
            _ => DASHI_STORE_FAILED,
        }
    }
}

impl From<&AckError> for dashi_result {
    fn from(e: &AckError) -> Self {
        match e {
            AckError::UnknownTag(_) => DASHI_UNKNOWN_TAG,
            e if e.is_restored() => DASHI_RESTORED,
            AckError::AlreadySettled { .. } => DASHI_ALREADY_SETTLED,
            AckError::NoAck(_) => DASHI_NO_ACK,
            AckError::Store { .. } => DASHI_NOT_RECORDED,
            _ => DASHI_STORE_FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every code once: a code added to the enum and not to
    /// `ALL` would read as unknown.
    #[test]
    fn every_code_is_known_by_its_number() {
        for r in dashi_result::ALL {
            assert_eq!(dashi_result::from_code(r as u32), Some(r));
            assert_ne!(r.text(), "");
        }
        let mut codes: Vec<u32> = dashi_result::ALL.iter().map(|r| *r as u32).collect();
        codes.dedup();
        assert_eq!(codes.len(), dashi_result::ALL.len());
        // Every code the header declares is in `ALL`.
        let header = include_str!("../../include/dashi.h");
        let start = header.find("enum dashi_result").expect("the enum");
        let end = start + header[start..].find("};").expect("its end");
        let mut declared = 0;
        for line in header[start..end].lines() {
            let Some((name, value)) = line.trim().trim_end_matches(',').split_once(" = ") else {
                continue;
            };
            let code: u32 = value.parse().expect("a number");
            let r = dashi_result::from_code(code).unwrap_or_else(|| panic!("{name} not in ALL"));
            assert_eq!(format!("{r:?}"), name);
            declared += 1;
        }
        assert_eq!(declared, dashi_result::ALL.len());
        assert_eq!(dashi_result::from_code(7405), None);
        assert_eq!(dashi_result::from_code(1), None);
        assert_eq!(dashi_result::from_code(u32::MAX), None);
    }
}
