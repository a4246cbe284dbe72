//! The model users program against (Kombu's vocabulary, AMQP semantics): what
//! a message, an exchange and a queue are, header values, and the rules for
//! names. Plain data; nothing here moves messages.

pub mod exchange;
pub mod message;
pub(crate) mod names;
pub mod queue;
pub mod value;
