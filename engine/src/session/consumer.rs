//! Consumers: options, the shared consumer state, and the handle users hold.
//!
//! # Invariants
//! - A consumer takes a message only while its window has room (unless
//!   `no_ack`), and acquires the window shares as it takes them (a run's
//!   at once).
//! - Its queues are served round-robin, one message at a time, unless it
//!   is alone on its one queue: then it takes a run (the queue's batch,
//!   within the window).
//! - A stream's run not yet handed out holds its window shares and goes
//!   back to its queues unseen, in order, when the consumer is cancelled
//!   (by the stream's drop, a cancel, or the channel's close).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Error;
use crate::session::channel::ChannelShared;
use crate::session::delivery::Delivery;
use crate::session::window::Window;
use crate::transport::{Envelope, QueueStore};

/// Default prefetch window in messages.
pub const DEFAULT_PREFETCH_COUNT: u32 = 1000;
/// Default prefetch window in body bytes.
pub const DEFAULT_PREFETCH_BYTES: u64 = 64 << 20;

/// How to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    pub(crate) queues: Vec<String>,
    pub(crate) tag: Option<String>,
    pub(crate) no_ack: bool,
    pub(crate) prefetch_count: Option<u32>,
    pub(crate) prefetch_bytes: Option<u64>,
    pub(crate) lease: Option<Duration>,
}

impl ConsumerOptions {
    /// Consume from `queue`, with manual acks and the connection's prefetch.
    pub fn new(queue: impl Into<String>) -> Self {
        ConsumerOptions {
            queues: vec![queue.into()],
            tag: None,
            no_ack: false,
            prefetch_count: None,
            prefetch_bytes: None,
            lease: None,
        }
    }

    /// Also consume from `queue` (queues are served round-robin).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Sets the consumer tag (unique per connection); generated when unset.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Messages count as acked as soon as they are delivered.
    pub fn no_ack(mut self, no_ack: bool) -> Self {
        self.no_ack = no_ack;
        self
    }

    /// Most unacked deliveries at once (at least 1).
    pub fn prefetch_count(mut self, n: u32) -> Self {
        self.prefetch_count = Some(n);
        self
    }

    /// Most unacked body bytes at once; a delivery is made while the total is
    /// below this, so the window can exceed it by one message.
    pub fn prefetch_bytes(mut self, n: u64) -> Self {
        self.prefetch_bytes = Some(n);
        self
    }

    /// Lease of each delivery (overrides the queue's and the connection's).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// The callback of a push consumer, run by `Connection::drain_events`.
pub type Callback = Box<dyn FnMut(Delivery) + Send + 'static>;

pub(crate) struct ConsumerShared {
    pub(crate) tag: Arc<str>,
    pub(crate) channel: Weak<ChannelShared>,
    pub(crate) queues: Vec<Arc<dyn QueueStore>>,
    pub(crate) no_ack: bool,
    pub(crate) window: Arc<Window>,
    pub(crate) lease: Option<Duration>,
    pub(crate) callback: Mutex<Option<Callback>>,
    pub(crate) cancelled: AtomicBool,
    rr: AtomicUsize,
    /// A stream's run: messages taken from their queues (window shares
    /// held) and not yet handed out. Put back unseen at cancel.
    run: Mutex<VecDeque<Taken>>,
}

/// A message taken from its queue, with that queue.
pub(crate) type Taken = (Envelope, Arc<dyn QueueStore>);

impl fmt::Debug for ConsumerShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerShared")
            .field("tag", &self.tag)
            .field(
                "queues",
                &self.queues.iter().map(|q| q.name()).collect::<Vec<_>>(),
            )
            .field("no_ack", &self.no_ack)
            .finish()
    }
}

impl ConsumerShared {
    pub(crate) fn new(
        tag: Arc<str>,
        channel: Weak<ChannelShared>,
        queues: Vec<Arc<dyn QueueStore>>,
        no_ack: bool,
        window: Window,
        lease: Option<Duration>,
        callback: Option<Callback>,
    ) -> Self {
        ConsumerShared {
            tag,
            channel,
            queues,
            no_ack,
            window: Arc::new(window),
            lease,
            callback: Mutex::new(callback),
            cancelled: AtomicBool::new(false),
            rr: AtomicUsize::new(0),
            run: Mutex::new(VecDeque::new()),
        }
    }

    /// The next message for a stream: the front of its run, or a new run
    /// taken with [`ConsumerShared::take_many`] (a consumer alone on its
    /// queue takes as many as the queue's batch and the window allow, so a
    /// stream makes one store call per run rather than per message, as a
    /// push consumer does). The run's lock is held while it is refilled, so
    /// a cancel waits for a take in flight and then puts all of it back.
    pub(crate) fn take_for_stream(&self) -> Result<Option<Taken>, Error> {
        let mut run = self.run.lock();
        if let Some(next) = run.pop_front() {
            return Ok(Some(next));
        }
        if self.cancelled.load(SeqCst) {
            return Ok(None);
        }
        let mut scratch = Vec::new();
        self.take_many(STREAM_RUN, &mut scratch, |env, q| {
            run.push_back((env, q.clone()))
        })?;
        let next = run.pop_front();
        // The rest of the run waits here, taken: its lease starts now, as
        // the one handed out does, so a process that hangs before handing
        // them out (stopped, stuck in a write) does not keep them past it
        // (another process takes them once it ran out). Each is leased
        // again as it is handed out, and one another process took back is
        // not. Only where the store can tell (`leases_what_waits`).
        if !self.no_ack && !run.is_empty() {
            if let Some(ch) = self.channel.upgrade() {
                for (env, q) in run.iter().filter(|(_, q)| q.leases_what_waits()) {
                    if let Some(d) = ch.lease_for(Some(self), &**q) {
                        // A `false` here is found again at hand-out.
                        q.lease(env, d);
                    }
                }
            }
        }
        Ok(next)
    }

    /// Puts a stream's run back in its queues, unseen and in order, and
    /// releases its window shares (at cancel).
    pub(crate) fn put_back_run(&self) {
        let taken: Vec<_> = self.run.lock().drain(..).collect();
        if taken.is_empty() {
            return;
        }
        let mut by_queue: Vec<(Arc<dyn QueueStore>, Vec<Envelope>)> = Vec::new();
        for (env, q) in taken {
            if !self.no_ack {
                self.window.release(env.size());
            }
            match by_queue.iter_mut().find(|(x, _)| Arc::ptr_eq(x, &q)) {
                Some((_, envs)) => envs.push(env),
                None => by_queue.push((q, vec![env])),
            }
        }
        for (q, envs) in by_queue {
            if let Err(e) = q.restore(envs) {
                tracing::warn!(queue = q.name(), error = %e, "a stream's untaken run not put back in the store");
            }
        }
    }

    /// Takes up to `max` messages (at least one when any is ready) from the
    /// next queue in round-robin order that has some: as many as that
    /// queue's [`QueueStore::batch_hint`] and the window's room by count
    /// allow, so a transport with a round trip per pop (redis://) takes a
    /// run of messages in one. Only a consumer alone on its single queue
    /// batches (others keep one message per turn, AMQP's fairness);
    /// messages a batch took past the window's byte budget go back to the
    /// queue unseen. Nothing is taken while the window is full (unless
    /// `no_ack`). Each message taken goes to `take` with its queue, as it
    /// leaves the transport's vector: straight into where it is kept, with
    /// no copy in between (a delivery's time is mostly its envelope's
    /// copies). `Err` when no queue had a message and one of them failed
    /// (the first failure; the others still deliver while it lasts). `envs`
    /// is scratch space (left empty), kept by the caller so a pass
    /// allocates nothing.
    pub(crate) fn take_many(
        &self,
        max: usize,
        envs: &mut Vec<Envelope>,
        mut take: impl FnMut(Envelope, &Arc<dyn QueueStore>),
    ) -> Result<usize, Error> {
        if self.cancelled.load(SeqCst) || (!self.no_ack && !self.window.has_room()) || max == 0 {
            return Ok(0);
        }
        let n = self.queues.len();
        let start = self.rr.load(SeqCst);
        let mut failed = None;
        envs.clear();
        for k in 0..n {
            let i = (start + k) % n;
            let q = &self.queues[i];
            // Batches keep AMQP's turns: only a consumer alone on its one
            // queue takes more than one message per turn.
            let alone = n == 1 && q.state().consumers() <= 1;
            let room = if self.no_ack { max } else { self.window.room() };
            let want = if alone {
                max.min(q.batch_hint().max(1)).min(room.max(1))
            } else {
                1
            };
            // What the window still holds room for after this batch may be
            // taken ahead (a batch's worth at most), by a consumer alone.
            let ahead = if alone && want > 1 {
                want.min(room.saturating_sub(want))
            } else {
                0
            };
            match pop_many_retrying(&**q, want, ahead, envs) {
                Ok(0) => {}
                Ok(_) => {
                    self.rr.store(i + 1, SeqCst);
                    let mut got = 0;
                    let mut bytes = 0;
                    let mut over = Vec::new();
                    // Only this dispatcher acquires, and settles only
                    // release: the window never holds more than this
                    // snapshot plus what this run adds, so checking
                    // against them keeps the budget (one acquire per run).
                    let (held, held_bytes) = self.window.in_flight();
                    for env in envs.drain(..) {
                        // The byte budget holds exactly: what does not fit
                        // goes back unseen, in order (one message always
                        // fits an empty window).
                        if !self.no_ack
                            && got > 0
                            && !self.window.room_at(held + got, held_bytes + bytes)
                        {
                            over.push(env);
                            continue;
                        }
                        bytes += env.size();
                        take(env, q);
                        got += 1;
                    }
                    if !self.no_ack {
                        self.window.acquire_many(got, bytes);
                    }
                    if !over.is_empty() {
                        if let Err(e) = q.restore(over) {
                            tracing::warn!(queue = q.name(), error = %e, "messages over the prefetch window not put back in the store");
                        }
                    }
                    return Ok(got);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(0), Err)
    }

    /// True when every queue it consumes was deleted.
    pub(crate) fn orphaned(&self) -> bool {
        self.queues.iter().all(|q| q.is_deleted())
    }
}

/// Tries to take one message from `q`, retrying a transient storage
/// failure a few times (1 ms apart) before reporting it.
pub(crate) fn pop_retrying(q: &dyn QueueStore) -> Result<Option<Envelope>, Error> {
    let mut tries = 0;
    loop {
        match q.pop() {
            Err(e) if e.is_transient() && tries < TRANSIENT_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// [`pop_retrying`] for up to `max` messages: one `pop` when `max` is 1,
/// else one [`QueueStore::pop_many_ahead`] (`ahead`: the window's room
/// after these).
fn pop_many_retrying(
    q: &dyn QueueStore,
    max: usize,
    ahead: usize,
    out: &mut Vec<Envelope>,
) -> Result<usize, Error> {
    if max <= 1 {
        return pop_retrying(q).map(|e| match e {
            Some(env) => {
                out.push(env);
                1
            }
            None => 0,
        });
    }
    let mut tries = 0;
    loop {
        match q.pop_many_ahead(max, ahead, out) {
            Err(e) if e.is_transient() && tries < TRANSIENT_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// Most messages a stream takes in one run (the queue's batch and the
/// window bound it further).
const STREAM_RUN: usize = 256;

/// How often a transient storage failure is retried before a consumer sees it.
const TRANSIENT_RETRIES: u32 = 3;

/// A consumer handle. Dropping it cancels the consumer (its unacked deliveries
/// stay unacked on the channel, as in AMQP).
#[must_use = "dropping a Consumer cancels it"]
#[derive(Debug)]
pub struct Consumer {
    pub(crate) shared: Arc<ConsumerShared>,
}

impl Consumer {
    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.shared.tag
    }

    /// Deliveries in flight (unacked) and their body bytes.
    pub fn in_flight(&self) -> (usize, usize) {
        self.shared.window.in_flight()
    }

    /// True once cancelled (explicitly, by tag or queue, or by channel close).
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(SeqCst)
    }

    /// Cancels the consumer. Its unacked deliveries are not requeued.
    pub fn cancel(self) -> Result<(), Error> {
        let ch = self.shared.channel.upgrade().ok_or(Error::ChannelClosed)?;
        ch.cancel_consumer(&self.shared)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(ch) = self.shared.channel.upgrade() {
            let _ = ch.cancel_consumer(&self.shared);
        }
    }
}
