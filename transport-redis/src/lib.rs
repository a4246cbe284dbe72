//! # dashi-transport-redis
//!
//! The `redis://` transport.

mod conn;
mod link;
mod options;
mod resp;
mod scripts;
mod transport;
mod wire;

pub use options::ConfirmLevel;
pub use transport::{open, RedisTransport};
