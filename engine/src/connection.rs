//! Connections: one transport instance, its channels, and the push-consumer
//! dispatcher (`drain_events`).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::channel::{Channel, ChannelShared, Pending};
use crate::consumer::{Callback, ConsumerShared, DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_COUNT};
use crate::delivery::Delivery;
use crate::error::Error;
use crate::notify::{thread_waker, Notify, ThreadWaker};
use crate::stats::Stats;
use crate::transport::{ConnectionId, Transport};

/// Default largest body accepted by publish: 128 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 128 << 20;

/// Most deliveries dispatched by one `drain_events` pass.
const DRAIN_BATCH: usize = 256;

/// Polls before parking: 7 rounds of exponential `spin_loop` (1..64), then
/// rounds that also yield the CPU; about 20-50 µs in all.
const SPIN_ROUNDS: u32 = 16;

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
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            prefetch_count: DEFAULT_PREFETCH_COUNT,
            prefetch_bytes: DEFAULT_PREFETCH_BYTES,
            lease: None,
            busy_poll: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct DrainState {
    generation: u64,
    consumers: Vec<Arc<ConsumerShared>>,
    next: usize,
    // Buffers reused across passes.
    taken: Vec<Pending>,
    run: Vec<Pending>,
    deliveries: Vec<Delivery>,
}

pub(crate) struct ConnShared {
    pub(crate) id: ConnectionId,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) config: ConnectionConfig,
    closed: AtomicBool,
    next_channel: AtomicU64,
    channels: Mutex<Vec<(u64, Weak<ChannelShared>)>>,
    consumers: Mutex<Vec<Arc<ConsumerShared>>>,
    consumers_gen: AtomicU64,
    tags: Mutex<HashSet<Arc<str>>>,
    drain: Mutex<DrainState>,
    pub(crate) close_notify: Notify,
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

    pub(crate) fn add_consumer(&self, c: Arc<ConsumerShared>) {
        self.consumers.lock().push(c);
        self.consumers_gen.fetch_add(1, SeqCst);
    }

    pub(crate) fn remove_consumer(&self, c: &Arc<ConsumerShared>) {
        self.consumers.lock().retain(|x| !Arc::ptr_eq(x, c));
        self.tags.lock().remove(&c.tag);
        self.consumers_gen.fetch_add(1, SeqCst);
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
        if self.shared.is_closed() {
            return Err(Error::ConnectionClosed);
        }
        let id = self.shared.next_channel.fetch_add(1, SeqCst);
        let ch = Arc::new(ChannelShared::new(id, self.shared.clone()));
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

    /// Waits up to `timeout` (`None` = forever) for deliveries to this
    /// connection's push consumers and runs their callbacks on this thread.
    /// Returns how many were dispatched (at least one), after dispatching every
    /// delivery that was ready (up to a batch of 256), fairly: consumers take
    /// turns one message at a time. `Err(Timeout)` when nothing came.
    ///
    /// Calling it from inside one of this connection's callbacks is an error
    /// ([`Error::InvalidArgument`]), not a deadlock.
    pub fn drain_events(&self, timeout: Option<Duration>) -> Result<usize, Error> {
        if DRAINING.with(|d| d.get()) == self.shared.id {
            return Err(Error::InvalidArgument(
                "drain_events called from inside a callback of the same connection".into(),
            ));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.shared.drain.lock();
        let _draining = Draining::enter(self.shared.id);
        let waker = ThreadWaker::current();
        loop {
            if self.shared.is_closed() {
                return Err(Error::ConnectionClosed);
            }
            let gen = self.shared.consumers_gen.load(SeqCst);
            if gen != state.generation || state.generation == 0 {
                state.consumers = self.shared.consumers.lock().clone();
                state.generation = gen;
            }
            let n = dispatch(&mut state);
            if n > 0 {
                return Ok(n);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
            // Spin briefly before sleeping: a busy producer refills the queue
            // within microseconds, and parking costs a futex round trip.
            let mut spun = 0;
            let mut n = 0;
            while spun < SPIN_ROUNDS {
                for _ in 0..(1 << spun.min(6)) {
                    std::hint::spin_loop();
                }
                if spun >= 6 {
                    std::thread::yield_now();
                }
                n = dispatch(&mut state);
                if n > 0 {
                    break;
                }
                spun += 1;
            }
            if n == 0 && !self.shared.config.busy_poll.is_zero() {
                n = busy_poll(self.shared.config.busy_poll, deadline, || {
                    dispatch(&mut state)
                });
            }
            if n > 0 {
                return Ok(n);
            }
            // Register everywhere a wake-up can come from, re-check, then park.
            let w = thread_waker(&waker);
            let mut regs = Vec::new();
            for c in &state.consumers {
                for q in &c.queues {
                    regs.push((Reg::Queue(q.clone()), q.register(&w)));
                }
                regs.push((Reg::Window(c.clone()), c.window.notify.register(&w)));
            }
            let close_id = self.shared.close_notify.register(&w);
            let n = dispatch(&mut state);
            if n == 0 && !self.shared.is_closed() {
                waker.wait(deadline);
            }
            for (r, id) in regs {
                match r {
                    Reg::Queue(q) => q.unregister(id),
                    Reg::Window(c) => c.window.notify.unregister(id),
                }
            }
            self.shared.close_notify.unregister(close_id);
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

/// Calls `poll` on the CPU until it returns non-zero, `budget` has passed or
/// `deadline` is reached; returns its last result.
pub(crate) fn busy_poll(
    budget: Duration,
    deadline: Option<Instant>,
    mut poll: impl FnMut() -> usize,
) -> usize {
    let start = Instant::now();
    let end = start.checked_add(budget);
    let end = match (end, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    loop {
        for _ in 0..64 {
            let n = poll();
            if n > 0 {
                return n;
            }
            std::hint::spin_loop();
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            return 0;
        }
    }
}

thread_local! {
    /// The connection whose callbacks this thread is running (0 = none).
    static DRAINING: std::cell::Cell<ConnectionId> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as draining a connection; restores the previous mark when
/// dropped (also on unwind from a panicking callback).
struct Draining(ConnectionId);

impl Draining {
    fn enter(id: ConnectionId) -> Self {
        Draining(DRAINING.with(|d| d.replace(id)))
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        DRAINING.with(|d| d.set(self.0));
    }
}

enum Reg {
    Queue(Arc<dyn crate::transport::QueueStore>),
    Window(Arc<ConsumerShared>),
}

/// One dispatch pass: consumers take turns, one message each per round, until
/// a round yields nothing or the batch is full; then tags are issued per
/// channel and callbacks run.
fn dispatch(state: &mut DrainState) -> usize {
    let DrainState {
        consumers,
        next,
        taken,
        run,
        deliveries,
        ..
    } = state;
    if consumers.is_empty() {
        return 0;
    }
    let n = consumers.len();
    'rounds: loop {
        let mut any = false;
        for k in 0..n {
            let c = &consumers[(*next + k) % n];
            if let Some((env, queue)) = c.take() {
                taken.push(Pending::new(Some(c.clone()), env, queue));
                any = true;
                if taken.len() >= DRAIN_BATCH {
                    *next = (*next + k + 1) % n;
                    break 'rounds;
                }
            }
        }
        if !any {
            break;
        }
    }
    if taken.is_empty() {
        return 0;
    }
    // Issue tags: one registry lock per run of the same channel.
    let mut run_channel: Option<Arc<ChannelShared>> = None;
    for p in taken.drain(..) {
        let ch = p.slot.consumer.as_ref().and_then(|c| c.channel.upgrade());
        let same = match (&ch, &run_channel) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            if let Some(rc) = &run_channel {
                rc.deliver(run, deliveries);
            }
            run_channel = ch;
        }
        if run_channel.is_some() {
            run.push(p);
        } else {
            // Channel gone between take and delivery: hand the message back.
            p.slot.release_window();
            p.slot.queue.restore(vec![p.slot.env.clone()]);
        }
    }
    if let Some(rc) = &run_channel {
        rc.deliver(run, deliveries);
    }
    let count = deliveries.len();
    // Run callbacks, holding each consumer's callback lock across its run of
    // deliveries rather than per message.
    let consumers: &[Arc<ConsumerShared>] = consumers;
    let mut held: Option<(usize, parking_lot::MutexGuard<'_, Option<Callback>>)> = None;
    for d in deliveries.drain(..) {
        let Some(c) = &d.slot.consumer else { continue };
        let Some(i) = consumers.iter().position(|x| Arc::ptr_eq(x, c)) else {
            continue;
        };
        if !c.cancelled.load(SeqCst) {
            if held.as_ref().is_none_or(|(h, _)| *h != i) {
                held = Some((i, consumers[i].callback.lock()));
            }
            if let Some(cb) = held.as_mut().and_then(|(_, g)| g.as_mut()) {
                cb(d);
                continue;
            }
        }
        // Cancelled before its callback ran: the application never saw it, so
        // it goes back as it was.
        let slot = &d.slot;
        if !d.no_ack && slot.state.settle(crate::unacked::RESTORED).is_ok() {
            slot.queue.restore(vec![slot.env.clone()]);
            slot.release_window();
        }
    }
    drop(held);
    count
}
