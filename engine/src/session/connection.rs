//! Connections: one transport instance, its channels, and the push-consumer
//! dispatcher (`drain_events`).
//!
//! # Invariants
//! - Closing is idempotent and happens once (`closed` swaps): every channel
//!   closes (restoring its unacked deliveries), then the transport deletes the
//!   connection's exclusive queues, then waiters on `close_notify` wake.
//! - A consumer tag is unique per connection (`tags`), released when the
//!   consumer is cancelled.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Error;
use crate::notify::Notify;
use crate::session::channel::{Channel, ChannelShared, Pending};
use crate::session::confirm::{
    ChannelOptions, DEFAULT_CONFIRM_WINDOW, DEFAULT_CONFIRM_WINDOW_BYTES,
};
use crate::session::consumer::{ConsumerShared, DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT};
use crate::session::delivery::Delivery;
use crate::stats::Stats;
use crate::transport::{ConnectionId, Envelope, Transport};

/// Default largest body accepted by publish: 128 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 128 << 20;

/// Connection-wide settings (from URL options or set directly).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Largest body accepted by publish.
    pub max_body_size: usize,
    /// Default consumer prefetch window in messages.
    pub prefetch_count: u32,
    /// Default consumer prefetch window in body bytes.
    pub prefetch_bytes: u64,
    /// Default delivery lease (visibility timeout) when neither the consumer
    /// nor the queue sets one; `None` = the transport's default.
    pub lease: Option<Duration>,
    /// Busy-poll: how long a waiting consumer (`drain_events`, `get`) keeps
    /// polling its queues on the CPU before it goes to sleep. Zero (the
    /// default) polls only briefly (tens of µs); a longer time trades a busy
    /// core for the lowest wake-up latency.
    pub busy_poll: Duration,
    /// Default window of a channel's pipelined publishes, in messages
    /// awaiting their confirm (see [`crate::ChannelOptions`]).
    pub confirm_window: usize,
    /// The same window in body bytes.
    pub confirm_window_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            prefetch_count: DEFAULT_PREFETCH_COUNT,
            prefetch_bytes: DEFAULT_PREFETCH_BYTES,
            lease: None,
            busy_poll: Duration::ZERO,
            confirm_window: DEFAULT_CONFIRM_WINDOW,
            confirm_window_bytes: DEFAULT_CONFIRM_WINDOW_BYTES,
        }
    }
}

/// The drainer's state, kept across `drain_events` calls (see `drain.rs`).
#[derive(Default)]
pub(crate) struct DrainState {
    pub(crate) generation: u64,
    pub(crate) consumers: Vec<Arc<ConsumerShared>>,
    pub(crate) next: usize,
    // Buffers reused across passes.
    pub(crate) taken: Vec<Pending>,
    pub(crate) run: Vec<Pending>,
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) scratch: Vec<Envelope>,
    /// A storage failure met by a pass that delivered nothing.
    pub(crate) error: Option<Error>,
}

pub(crate) struct ConnShared {
    pub(crate) id: ConnectionId,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) config: ConnectionConfig,
    closed: AtomicBool,
    next_channel: AtomicU64,
    channels: Mutex<Vec<(u64, Weak<ChannelShared>)>>,
    pub(crate) consumers: Mutex<Vec<Arc<ConsumerShared>>>,
    pub(crate) consumers_gen: AtomicU64,
    tags: Mutex<HashSet<Arc<str>>>,
    pub(crate) drain: Mutex<DrainState>,
    pub(crate) close_notify: Notify,
    /// Woken when a push consumer is added or cancelled (a drainer asleep
    /// must look at the new set).
    pub(crate) changed: Notify,
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

impl ConnShared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    pub(crate) fn claim_tag(&self, tag: &Arc<str>) -> Result<(), Error> {
        if self.tags.lock().insert(tag.clone()) {
            Ok(())
        } else {
            Err(Error::DuplicateConsumerTag(tag.to_string()))
        }
    }

    pub(crate) fn release_tag(&self, tag: &Arc<str>) {
        self.tags.lock().remove(tag);
    }

    pub(crate) fn add_consumer(&self, c: Arc<ConsumerShared>) {
        self.consumers.lock().push(c);
        self.consumers_gen.fetch_add(1, SeqCst);
        self.changed.notify_all();
    }

    pub(crate) fn remove_consumer(&self, c: &Arc<ConsumerShared>) {
        self.consumers.lock().retain(|x| !Arc::ptr_eq(x, c));
        self.tags.lock().remove(&c.tag);
        self.consumers_gen.fetch_add(1, SeqCst);
        self.changed.notify_all();
    }

    pub(crate) fn forget_channel(&self, id: u64) {
        self.channels.lock().retain(|(i, _)| *i != id);
    }

    fn close(&self) {
        if self.closed.swap(true, SeqCst) {
            return;
        }
        let channels: Vec<Arc<ChannelShared>> = self
            .channels
            .lock()
            .iter()
            .filter_map(|(_, w)| w.upgrade())
            .collect();
        for ch in channels {
            ch.close();
        }
        self.transport.connection_closed(self.id);
        self.close_notify.notify_all();
        tracing::debug!(connection = self.id, "connection closed");
    }
}

/// A connection to one transport. Dropping it closes it: every channel closes
/// and restores its unacked deliveries, and exclusive queues are deleted.
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("transport", &self.shared.transport.scheme())
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Connection {
    /// A connection over `transport`.
    pub fn with_transport(transport: Arc<dyn Transport>, config: ConnectionConfig) -> Connection {
        let id = NEXT_CONNECTION.fetch_add(1, SeqCst);
        tracing::debug!(connection = id, transport = transport.scheme(), "connected");
        Connection {
            shared: Arc::new(ConnShared {
                id,
                transport,
                config,
                closed: AtomicBool::new(false),
                next_channel: AtomicU64::new(1),
                channels: Mutex::new(Vec::new()),
                consumers: Mutex::new(Vec::new()),
                consumers_gen: AtomicU64::new(0),
                tags: Mutex::new(HashSet::new()),
                drain: Mutex::new(DrainState::default()),
                close_notify: Notify::new(),
                changed: Notify::new(),
            }),
        }
    }

    /// This connection's id (unique in the process).
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The settings in force.
    pub fn config(&self) -> &ConnectionConfig {
        &self.shared.config
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.shared.transport
    }

    /// A stats handle (cloneable, outlives nothing).
    pub fn stats(&self) -> Stats {
        Stats {
            transport: self.shared.transport.clone(),
        }
    }

    /// `Err` when the connection can no longer work: closed, or its transport
    /// failed (for the I/O transports, a runtime core that panicked).
    pub fn health(&self) -> Result<(), Error> {
        if self.shared.is_closed() {
            return Err(Error::ConnectionClosed);
        }
        self.shared.transport.health()
    }

    /// True until closed.
    pub fn is_open(&self) -> bool {
        !self.shared.is_closed()
    }

    /// Opens a channel.
    pub fn channel(&self) -> Result<Channel, Error> {
        self.channel_with(ChannelOptions::default())
    }

    /// Opens a channel with its own window of pipelined publishes (see
    /// [`ChannelOptions`]).
    pub fn channel_with(&self, options: ChannelOptions) -> Result<Channel, Error> {
        options.validate()?;
        if self.shared.is_closed() {
            return Err(Error::ConnectionClosed);
        }
        let id = self.shared.next_channel.fetch_add(1, SeqCst);
        let ch = Arc::new(ChannelShared::new(id, self.shared.clone(), &options));
        self.shared.channels.lock().push((id, Arc::downgrade(&ch)));
        Ok(Channel { shared: ch })
    }

    /// A [`crate::SimpleQueue`] on a new channel of this connection.
    pub fn simple_queue(&self, name: &str) -> Result<crate::SimpleQueue, Error> {
        crate::SimpleQueue::new(self, name)
    }

    /// Closes the connection (see the type docs).
    pub fn close(self) {
        self.shared.close();
    }
}
