//! # dashi-transport-redis
//!
//! The `redis://` transport.

mod conn;
mod link;
mod options;
mod resp;
mod scripts;
#[cfg(any(test, feature = "test-hooks"))]
pub mod test_hooks;
mod transport;
mod watch;
mod wire;

pub use options::ConfirmLevel;
pub use transport::{open, RedisTransport};
