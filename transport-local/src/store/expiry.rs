//! Message TTL in queues nobody reads: a thread per store instance expires
//! the heads of queues whose messages can expire, every 50 ms, so a message
//! is dead-lettered (or dropped and counted) within about 50 ms of its
//! deadline without a consumer (the delay-queue idiom: a TTL queue nobody
//! consumes, dead-lettering into a work queue).
//!
//! # Invariants
//! - Only a head whose time ran out is claimed (a compare-and-swap, as any
//!   consumer's), so the sweep never reorders or delays what consumers get,
//!   and sweeps of several processes at once expire each message once.
//! - A queue with a TTL is swept by every process that has the store open;
//!   one without, by the processes that published messages with their own
//!   expiration to it (and by consumers when they reach such a message).

use std::sync::Arc;
use std::time::Duration;

use dashi_engine::spi::spawn_periodic;

use super::queue::LocalQueue;
use super::Inner;

/// How often heads are looked at.
const EXPIRE_EVERY: Duration = Duration::from_millis(50);

impl Inner {
    /// Starts (once) the thread that expires heads.
    pub(super) fn ensure_expiry(self: &Arc<Self>) {
        self.expiry.get_or_init(|| {
            // Not a runtime thread: dropping the last reference to the store
            // there is fine.
            spawn_periodic(
                "dashi-local-ttl",
                Arc::downgrade(self),
                EXPIRE_EVERY,
                |inner: &Inner| {
                    let queues: Vec<Arc<LocalQueue>> = inner
                        .topo
                        .lock()
                        .queues
                        .values()
                        .filter(|q| q.may_expire())
                        .cloned()
                        .collect();
                    for q in queues {
                        q.expire_heads();
                    }
                },
            );
        });
    }
}
