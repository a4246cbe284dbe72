//! Name rules shared by every transport: AMQP short strings, 1..=255 bytes.

use crate::error::{Error, NameError};

/// Longest exchange, queue, routing key or consumer tag, in bytes.
pub const MAX_NAME_LEN: usize = 255;

pub(crate) fn check_len(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        Err(NameError::TooLong { len: name.len() })
    } else {
        Ok(())
    }
}

/// A name that must be non-empty and at most 255 bytes.
pub(crate) fn check_name(kind: &'static str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::name(kind, name, NameError::Empty));
    }
    check_len(name).map_err(|reason| Error::name(kind, name, reason))
}

/// An exchange name where "" means the default exchange.
pub(crate) fn check_exchange_ref(name: &str) -> Result<(), Error> {
    check_len(name).map_err(|reason| Error::name("exchange", name, reason))
}
