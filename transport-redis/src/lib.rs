//! # dashi-transport-redis
//!
//! The `redis://` transport.

mod conn;
mod link;
mod options;
mod resp;
mod scripts;
mod transport;
mod watch;
mod wire;

pub use options::ConfirmLevel;
pub use transport::{open, RedisTransport};
