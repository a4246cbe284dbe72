//! Channels: a session on a connection with its own delivery tags, consumers
//! and unacked deliveries.
//!
//! # Invariants
//! - Delivery tags are issued under the registry lock, once per delivery batch:
//!   monotonic per channel, starting at 1, never reused.
//! - Closing or dropping a channel restores every unacked delivery with
//!   `redelivered = true`, ahead of everything never delivered, at its
//!   original position.
//! - A delivery is tracked in the registry (or refused and put back) under
//!   the registry lock, where close sets `closed`: no delivery made as the
//!   channel closes can escape the close's restore.
//! - Cancelling a consumer never requeues (AMQP).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::clock::now_ns;
use crate::error::{
    AckError, BatchError, ConfirmsError, Error, FailureKind, PublishError, Settled, StoreFailure,
};
use crate::model::exchange::Exchange;
use crate::model::message::Message;
use crate::model::names::{check_len, check_name};
use crate::model::queue::{Queue, QueueInfo};
use crate::model::value::Headers;
use crate::notify::{thread_waker, ThreadWaker};
use crate::routing::Binding;
use crate::session::confirm::{ChannelOptions, Confirm, Confirms};
use crate::session::connection::ConnShared;
use crate::session::consumer::{pop_retrying, Callback, Consumer, ConsumerOptions, ConsumerShared};
use crate::session::delivery::{Delivery, Outcome};
use crate::session::producer::Producer;
use crate::session::stream::DeliveryStream;
use crate::session::unacked::{LeaseState, Registry, Slot, ACKED, NO_DEADLINE, RESTORED};
use crate::session::window::Window;
use crate::stats::Counters;
use crate::transport::{Envelope, QueueStore};

pub(crate) struct ChannelShared {
    pub(crate) id: u64,
    pub(crate) conn: Arc<ConnShared>,
    closed: AtomicBool,
    registry: Mutex<Registry>,
    consumers: Mutex<Vec<Arc<ConsumerShared>>>,
    queue_cache: Mutex<HashMap<String, Arc<dyn QueueStore>>>,
    next_consumer: AtomicU64,
    pub(crate) confirms: Confirms,
}

impl fmt::Debug for ChannelShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("closed", &self.closed.load(SeqCst))
            .finish()
    }
}

/// A delivery about to be made: the slot that will track it, allocated once as
/// soon as the message leaves its queue (with the consumer it goes to), so the
/// envelope is not copied again on the way to the application.
pub(crate) struct Pending {
    pub(crate) slot: Arc<Slot>,
}

impl Pending {
    /// `consumer` has already acquired its window share unless it is `no_ack`.
    pub(crate) fn new(
        consumer: Option<Arc<ConsumerShared>>,
        env: Envelope,
        queue: Arc<dyn QueueStore>,
    ) -> Self {
        let windowed = consumer.as_ref().is_some_and(|c| !c.no_ack);
        Pending {
            slot: Arc::new(Slot {
                state: LeaseState::new(NO_DEADLINE),
                tag: 0,
                env,
                queue,
                consumer,
                windowed,
            }),
        }
    }
}

impl ChannelShared {
    pub(crate) fn new(id: u64, conn: Arc<ConnShared>, options: &ChannelOptions) -> Self {
        let confirms = Confirms::new(
            options.confirm_window.unwrap_or(conn.config.confirm_window),
            options
                .confirm_window_bytes
                .unwrap_or(conn.config.confirm_window_bytes),
            options.nonblocking,
        );
        ChannelShared {
            confirms,
            id,
            conn,
            closed: AtomicBool::new(false),
            registry: Mutex::new(Registry::default()),
            consumers: Mutex::new(Vec::new()),
            queue_cache: Mutex::new(HashMap::new()),
            next_consumer: AtomicU64::new(1),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.closed.load(SeqCst) && !self.conn.is_closed()
    }

    fn counters(&self) -> &Counters {
        self.conn.transport.counters()
    }

    pub(crate) fn lease_for(
        &self,
        consumer: Option<&ConsumerShared>,
        queue: &dyn QueueStore,
    ) -> Option<Duration> {
        consumer
            .and_then(|c| c.lease)
            .or(queue.declaration().lease)
            .or(self.conn.config.lease)
            .or(self.conn.transport.default_lease())
    }

    /// Issues tags and tracks the batch; one registry lock for all of it.
    /// Drains `batch` into `out`. If the channel closed before the registry
    /// lock was taken, nothing is delivered: the batch goes back to its queues
    /// (in order, with its window shares released) and `out` is unchanged.
    ///
    /// A `no_ack` delivery stays unsettled (and outside the registry) until
    /// it is handed to the application ([`ChannelShared::ack_no_ack`]): one
    /// that never is goes back to its queue.
    pub(crate) fn deliver(self: &Arc<Self>, batch: &mut Vec<Pending>, out: &mut Vec<Delivery>) {
        let first = out.len();
        let mut shortest: Option<Duration> = None;
        let mut redelivered = 0u64;
        {
            let mut reg = self.registry.lock();
            if reg.is_closed() {
                drop(reg);
                put_back(batch.drain(..).map(|p| p.slot).collect(), None);
                return;
            }
            reg.compact();
            for mut p in batch.drain(..) {
                let no_ack = p.slot.consumer.as_ref().is_some_and(|c| c.no_ack);
                let deadline_us = match (
                    no_ack,
                    self.lease_for(p.slot.consumer.as_deref(), &*p.slot.queue),
                ) {
                    (false, Some(d)) => {
                        if !p.slot.queue.lease(&p.slot.env, d) {
                            // Taken back by another process while it waited
                            // here (a stream's run whose lease ran out):
                            // not this process's to deliver any more.
                            p.slot.release_window();
                            continue;
                        }
                        shortest = Some(shortest.map_or(d, |s: Duration| s.min(d)));
                        (now_ns() / 1_000).saturating_add(d.as_micros() as u64)
                    }
                    _ => NO_DEADLINE,
                };
                let tag = reg.next_tag();
                redelivered += p.slot.env.redelivered as u64;
                let state = LeaseState::new(deadline_us);
                let slot = match Arc::get_mut(&mut p.slot) {
                    Some(s) => {
                        s.tag = tag;
                        s.state = state;
                        p.slot
                    }
                    // Not reachable (the slot was never shared), but correct.
                    None => Arc::new(Slot {
                        state,
                        tag,
                        env: p.slot.env.clone(),
                        queue: p.slot.queue.clone(),
                        consumer: p.slot.consumer.clone(),
                        windowed: p.slot.windowed,
                    }),
                };
                if !no_ack {
                    reg.slots.push_back(slot.clone());
                }
                out.push(Delivery {
                    slot,
                    channel: self.clone(),
                    no_ack,
                });
            }
        }
        let c = self.counters();
        Counters::add(&c.consume.delivered, (out.len() - first) as u64);
        if redelivered > 0 {
            Counters::add(&c.consume.redelivered, redelivered);
        }
        if let Some(d) = shortest {
            crate::session::leases::watch(self, d);
        }
    }

    /// Delivers one message (get, streams); `None` when the channel closed
    /// first (the message went back to its queue).
    pub(crate) fn deliver_one(self: &Arc<Self>, pending: Pending) -> Option<Delivery> {
        let mut out = Vec::with_capacity(1);
        self.deliver(&mut vec![pending], &mut out);
        out.pop()
    }

    /// A `no_ack` delivery is being handed to the application: it counts as
    /// acked from now on.
    pub(crate) fn ack_no_ack(&self, slot: &Slot) {
        if slot.state.settle(ACKED).is_ok() {
            Counters::add(&self.counters().consume.acked, 1);
            if let Err(e) = slot.queue.ack(&[&slot.env]) {
                // Nobody to tell: the message may be delivered again.
                tracing::warn!(queue = slot.queue.name(), error = %e, "no-ack delivery not acked in the store");
            }
        }
    }

    /// Applies an outcome to slots this caller settled (one store call per
    /// queue), releases their window shares, and counts them.
    fn apply(&self, slots: &[&Slot], outcome: Outcome) -> Result<(), Error> {
        if slots.is_empty() {
            return Ok(());
        }
        let c = self.counters();
        let n = slots.len() as u64;
        let mut result = Ok(());
        match outcome {
            Outcome::Ack => {
                Counters::add(&c.consume.acked, n);
                if let [s] = slots {
                    // One delivery (`Delivery::ack`): no grouping to do.
                    result = s.queue.ack(&[&s.env]);
                    s.release_window();
                    return result;
                }
                for (q, group) in by_queue(slots) {
                    let envs: Vec<&Envelope> = group.iter().map(|s| &s.env).collect();
                    if let Err(e) = q.ack(&envs) {
                        result = result.and(Err(e));
                    }
                }
            }
            Outcome::Reject { requeue: false } => {
                Counters::add(&c.consume.rejected, n);
                for (q, group) in by_queue(slots) {
                    if let Err(e) = q.reject(group.iter().map(|s| s.env.clone()).collect()) {
                        result = result.and(Err(e));
                    }
                }
            }
            Outcome::Reject { requeue: true } => {
                Counters::add(&c.consume.rejected, n);
                // `restore` releases the window shares itself.
                return restore(slots.to_vec(), c);
            }
        }
        for s in slots {
            s.release_window();
        }
        result
    }

    pub(crate) fn settle(&self, slot: &Arc<Slot>, outcome: Outcome) -> Result<(), AckError> {
        slot.state
            .settle(outcome.state())
            .map_err(|state| AckError::AlreadySettled {
                tag: slot.tag,
                state,
            })?;
        self.apply(&[slot], outcome)
            .map_err(|e| store_ack_error(slot.tag, e))
    }

    /// Settles by tag; `multiple` covers every unsettled tag up to `tag`
    /// (`tag == 0` with `multiple` = all).
    pub(crate) fn settle_tag(
        &self,
        tag: u64,
        multiple: bool,
        outcome: Outcome,
    ) -> Result<(), AckError> {
        if !self.is_open() {
            return Err(AckError::ChannelClosed);
        }
        let targets: Vec<Arc<Slot>> = {
            let reg = self.registry.lock();
            if tag > reg.last_tag || (tag == 0 && !multiple) {
                return Err(AckError::UnknownTag(tag));
            }
            if multiple {
                let upto = if tag == 0 { u64::MAX } else { tag };
                reg.slots
                    .iter()
                    .take_while(|s| s.tag <= upto)
                    .filter(|s| s.state.is_unacked())
                    .cloned()
                    .collect()
            } else {
                match reg.find(tag) {
                    Some(s) => vec![s.clone()],
                    None => {
                        return Err(AckError::AlreadySettled {
                            tag,
                            state: Settled::Earlier,
                        })
                    }
                }
            }
        };
        let result = if multiple {
            // Every slot this call settles, then one store call per queue.
            let settled: Vec<&Slot> = targets
                .iter()
                .filter(|s| s.state.settle(outcome.state()).is_ok())
                .map(|s| &**s)
                .collect();
            self.apply(&settled, outcome)
                .map_err(|e| store_ack_error(tag, e))
        } else {
            self.settle(&targets[0], outcome)
        };
        self.registry.lock().compact();
        result
    }

    pub(crate) fn extend_lease(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        from_now: Duration,
    ) -> Result<(), AckError> {
        let deadline = (now_ns() / 1_000).saturating_add(from_now.as_micros() as u64);
        slot.state
            .extend(deadline)
            .map_err(|state| AckError::AlreadySettled {
                tag: slot.tag,
                state,
            })?;
        if !slot.queue.lease(&slot.env, from_now) {
            // Another process took it back (its lease ran out by that
            // process's count first): it is delivered again there. Or an
            // ack on another thread settled it meanwhile: that is said.
            let state = match slot.state.settle(RESTORED) {
                Ok(()) => {
                    slot.release_window();
                    self.registry.lock().compact();
                    Settled::Restored
                }
                Err(state) => state,
            };
            return Err(AckError::AlreadySettled {
                tag: slot.tag,
                state,
            });
        }
        crate::session::leases::watch(self, from_now);
        Ok(())
    }

    /// Restores every delivery whose lease ran out (called by the reaper).
    pub(crate) fn expire_leases(&self, now_us: u64) {
        let expired: Vec<Arc<Slot>> = {
            let mut reg = self.registry.lock();
            let v = reg
                .slots
                .iter()
                .filter(|s| s.state.expire(now_us))
                .cloned()
                .collect();
            reg.compact();
            v
        };
        if !expired.is_empty() {
            tracing::debug!(
                channel = self.id,
                n = expired.len(),
                "leases expired, restoring"
            );
            let r = restore(expired.iter().map(|s| &**s).collect(), self.counters());
            warn_unrestored(r);
        }
    }

    pub(crate) fn cancel_consumer(&self, c: &Arc<ConsumerShared>) -> Result<(), Error> {
        if c.cancelled.swap(true, SeqCst) {
            return Ok(());
        }
        self.consumers.lock().retain(|x| !Arc::ptr_eq(x, c));
        self.conn.remove_consumer(c);
        // A stream's run goes back before the queues hear the consumer
        // left (an auto-delete queue may go with its last consumer).
        c.put_back_run();
        for q in &c.queues {
            q.consumer_removed();
        }
        c.window.notify.notify_all();
        // Let go of the callback (and what it captured) now, unless it is
        // running: then the dispatcher drops it when the callback returns.
        if let Some(mut cb) = c.callback.try_lock() {
            cb.take();
        }
        Ok(())
    }

    pub(crate) fn close(&self) {
        if self.closed.swap(true, SeqCst) {
            return;
        }
        let consumers: Vec<_> = self.consumers.lock().clone();
        for c in &consumers {
            let _ = self.cancel_consumer(c);
        }
        let slots: Vec<Arc<Slot>> = {
            // Under the registry lock: a delivery batch either got in before
            // (and is restored here) or sees it closed and puts itself back.
            self.registry.lock().close().into()
        };
        let restored: Vec<&Slot> = slots
            .iter()
            .filter(|s| s.state.settle(RESTORED).is_ok())
            .map(|s| &**s)
            .collect();
        if !restored.is_empty() {
            tracing::debug!(
                channel = self.id,
                n = restored.len(),
                "channel closed, restoring unacked"
            );
        }
        warn_unrestored(restore(restored, self.counters()));
        self.conn.forget_channel(self.id);
    }

    fn queue_handle(&self, name: &str) -> Result<Arc<dyn QueueStore>, Error> {
        check_name("queue", name)?;
        let mut cache = self.queue_cache.lock();
        if let Some(q) = cache.get(name) {
            if !q.is_deleted() {
                return Ok(q.clone());
            }
        }
        let q = self.conn.transport.queue(name, self.conn.id)?;
        cache.insert(name.to_owned(), q.clone());
        Ok(q)
    }

    /// The checks every publish makes before the transport sees it.
    #[inline]
    fn envelope(
        &self,
        message: Message,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Envelope, PublishError> {
        if !self.is_open() {
            return Err(PublishError::ChannelClosed(Box::new(message)));
        }
        let max = self.conn.config.max_body_size;
        if message.body.len() > max {
            return Err(PublishError::BodyTooLarge {
                size: message.body.len(),
                max,
                message: Box::new(message),
            });
        }
        if let Err(reason) = check_len(routing_key) {
            return Err(PublishError::InvalidRoutingKey {
                reason,
                message: Box::new(message),
            });
        }
        Ok(Envelope::new(message, exchange, routing_key))
    }

    #[inline]
    pub(crate) fn publish(
        &self,
        message: Message,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let env = self.envelope(message, exchange, routing_key)?;
        self.conn.transport.publish(env, mandatory)
    }

    /// Takes a window share for `message`, waiting (or failing with
    /// [`PublishError::Full`]) while the window is full.
    fn admit(&self, message: Message) -> Result<(Message, usize), PublishError> {
        let size = message.body.len();
        match self.confirms.admit(size) {
            Ok(()) => Ok((message, size)),
            Err((messages, bytes)) => Err(PublishError::Full {
                messages,
                bytes,
                message: Box::new(message),
            }),
        }
    }

    pub(crate) fn publish_async(
        &self,
        message: Message,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<Confirm, PublishError> {
        let (message, size) = self.admit(message)?;
        let accepted = self
            .envelope(message, exchange, routing_key)
            .and_then(|env| self.conn.transport.publish_async(env, mandatory));
        match accepted {
            Ok(a) => Ok(self.confirms.track(a, size)),
            Err(e) => {
                self.confirms.unadmit(size);
                Err(e)
            }
        }
    }

    /// Publishes `batch` pipelined, handing runs that fit the window to the
    /// transport's batched call, then waits for every confirm.
    pub(crate) fn publish_batch(
        &self,
        batch: impl IntoIterator<Item = (Message, String, String, bool)>,
    ) -> Result<(), BatchError> {
        let mut failed: Vec<(usize, PublishError)> = Vec::new();
        let mut confirms: Vec<(usize, Confirm)> = Vec::new();
        let mut run: Vec<(usize, usize, Envelope, bool)> = Vec::new();
        let mut total = 0;
        let flush = |run: &mut Vec<(usize, usize, Envelope, bool)>,
                     failed: &mut Vec<(usize, PublishError)>,
                     confirms: &mut Vec<(usize, Confirm)>| {
            if run.is_empty() {
                return;
            }
            let mut meta = Vec::with_capacity(run.len());
            let envs: Vec<(Envelope, bool)> = run
                .drain(..)
                .map(|(i, size, env, m)| {
                    meta.push((i, size));
                    (env, m)
                })
                .collect();
            let results = self.conn.transport.publish_many(envs);
            for ((i, size), r) in meta.into_iter().zip(results) {
                match r {
                    Ok(a) => confirms.push((i, self.confirms.track(a, size))),
                    Err(e) => {
                        self.confirms.unadmit(size);
                        failed.push((i, e));
                    }
                }
            }
        };
        for (i, (message, exchange, routing_key, mandatory)) in batch.into_iter().enumerate() {
            total = i + 1;
            let env = match self.envelope(message, &exchange, &routing_key) {
                Ok(env) => env,
                Err(e) => {
                    failed.push((i, e));
                    continue;
                }
            };
            let size = env.size();
            if self.confirms.try_admit_now(size) {
                run.push((i, size, env, mandatory));
                continue;
            }
            // The window is full: send what this batch holds, then wait for
            // room (the run's own confirms are among those waited for).
            flush(&mut run, &mut failed, &mut confirms);
            match self.confirms.admit(size) {
                Ok(()) => run.push((i, size, env, mandatory)),
                Err((messages, bytes)) => failed.push((
                    i,
                    PublishError::Full {
                        messages,
                        bytes,
                        message: Box::new(env.into_message()),
                    },
                )),
            }
        }
        flush(&mut run, &mut failed, &mut confirms);
        for (i, c) in confirms {
            if let Err(e) = c.wait() {
                failed.push((i, e));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            failed.sort_by_key(|(i, _)| *i);
            Err(BatchError { total, failed })
        }
    }
}

/// `slots` grouped by queue, each group in the order given.
fn by_queue<'a>(slots: &[&'a Slot]) -> Vec<(&'a Arc<dyn QueueStore>, Vec<&'a Slot>)> {
    let mut groups: Vec<(&Arc<dyn QueueStore>, Vec<&Slot>)> = Vec::new();
    for &s in slots {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &s.queue)) {
            Some((_, v)) => v.push(s),
            None => groups.push((&s.queue, vec![s])),
        }
    }
    groups
}

/// An ack, reject or requeue the store failed to record.
fn store_ack_error(tag: u64, e: Error) -> AckError {
    let failure = match e {
        Error::Store(f) => f,
        other => StoreFailure::new(FailureKind::Runtime, "settle", other),
    };
    AckError::Store { tag, failure }
}

/// A restore nobody can be told about failed (a channel closing, a lease
/// running out): the messages come back when the store reclaims this
/// process's deliveries, as after a crash.
fn warn_unrestored(r: Result<(), Error>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "deliveries not restored in the store");
    }
}

/// Returns settled-as-restored slots to their queues (each queue puts them at
/// their original positions), `redelivered = true`, and releases their
/// windows.
fn restore(mut slots: Vec<&Slot>, counters: &Counters) -> Result<(), Error> {
    if slots.is_empty() {
        return Ok(());
    }
    slots.sort_by_key(|s| s.tag);
    let n = slots.len() as u64;
    let r = restore_in_order(slots.into_iter(), true);
    // Counted once the queues have them back: a count seen means a pop
    // started after it finds them (restored ahead of newer messages).
    Counters::add(&counters.consume.restored, n);
    r
}

/// Gives `slots` (in the order given) back to their queues, one `restore`
/// call per queue with that queue's slots in order, and releases their
/// window shares. `redelivered` marks them as delivered before.
fn restore_in_order<'a>(
    slots: impl Iterator<Item = &'a Slot>,
    redelivered: bool,
) -> Result<(), Error> {
    let slots: Vec<&Slot> = slots.collect();
    let mut result = Ok(());
    for (q, group) in by_queue(&slots) {
        let envs = group
            .iter()
            .map(|s| {
                let mut env = s.env.clone();
                env.redelivered |= redelivered;
                env
            })
            .collect();
        if let Err(e) = q.restore(envs) {
            result = result.and(Err(e));
        }
    }
    for s in slots {
        s.release_window();
    }
    result
}

/// Puts back messages that were taken from their queues but never handed to
/// the application (their channel closed, their consumer was cancelled before
/// its callback ran), in the order they were taken, as they were: not marked
/// redelivered, since nobody saw them. `counters` counts them as restored.
pub(crate) fn put_back(slots: Vec<Arc<Slot>>, counters: Option<&Counters>) {
    if slots.is_empty() {
        return;
    }
    warn_unrestored(restore_in_order(slots.iter().map(|s| &**s), false));
    if let Some(c) = counters {
        Counters::add(&c.consume.restored, slots.len() as u64);
    }
}

/// A session on a connection. Not meant to be shared between threads at once
/// (as in Kombu and AMQP client libraries); deliveries it hands out may be
/// settled from any thread. Dropping it closes it.
pub struct Channel {
    pub(crate) shared: Arc<ChannelShared>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Channel {
    fn open(&self) -> Result<&ChannelShared, Error> {
        if self.shared.conn.is_closed() {
            Err(Error::ConnectionClosed)
        } else if !self.shared.is_open() {
            Err(Error::ChannelClosed)
        } else {
            Ok(&self.shared)
        }
    }

    /// The channel number on its connection.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// True until closed (or its connection closed).
    pub fn is_open(&self) -> bool {
        self.shared.is_open()
    }

    /// Declares an exchange.
    pub fn exchange_declare(&self, exchange: &Exchange) -> Result<(), Error> {
        self.open()?.conn.transport.declare_exchange(exchange)
    }

    /// Deletes an exchange (only when it has no bindings, with `if_unused`).
    pub fn exchange_delete(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.open()?.conn.transport.delete_exchange(name, if_unused)
    }

    /// Declares a queue.
    pub fn queue_declare(&self, queue: &Queue) -> Result<QueueInfo, Error> {
        let ch = self.open()?;
        let info = ch.conn.transport.declare_queue(queue, ch.conn.id)?;
        if queue.exclusive && ch.conn.is_closed() {
            // The connection closed while we declared: its exclusive queues
            // go with it, this one included.
            let _ = ch
                .conn
                .transport
                .delete_queue(&queue.name, false, false, ch.conn.id);
            return Err(Error::ConnectionClosed);
        }
        Ok(info)
    }

    /// Binds a queue to an exchange with a binding key (and, for headers
    /// exchanges, arguments).
    pub fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Headers,
    ) -> Result<(), Error> {
        let ch = self.open()?;
        ch.queue_handle(queue)?;
        ch.conn.transport.bind(Binding {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            routing_key: routing_key.to_owned(),
            arguments,
        })
    }

    /// Removes a binding.
    pub fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Headers,
    ) -> Result<(), Error> {
        self.open()?.conn.transport.unbind(&Binding {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            routing_key: routing_key.to_owned(),
            arguments,
        })
    }

    /// Deletes a queue; returns how many ready messages it held.
    pub fn queue_delete(&self, name: &str, if_unused: bool, if_empty: bool) -> Result<u64, Error> {
        let ch = self.open()?;
        ch.conn
            .transport
            .delete_queue(name, if_unused, if_empty, ch.conn.id)
    }

    /// Drops every ready message of a queue; returns how many.
    pub fn queue_purge(&self, name: &str) -> Result<u64, Error> {
        let ch = self.open()?;
        ch.conn.transport.purge_queue(name, ch.conn.id)
    }

    /// A producer publishing to the default exchange through this channel.
    pub fn producer(&self) -> Producer {
        Producer::new(self.shared.clone())
    }

    /// Publishes one message pipelined: routes it and hands it to the
    /// transport, returning its [`Confirm`] before the transport's durability
    /// point (see [`crate::Producer::publish_async`]).
    pub fn publish_async(
        &self,
        message: Message,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<Confirm, PublishError> {
        self.shared
            .publish_async(message, exchange, routing_key, mandatory)
    }

    /// Waits until every publish made on this channel so far has its
    /// confirm (AMQP's `wait_for_confirms`). `Ok` when none failed, apart
    /// from failures already read through their [`Confirm`] (or reported by
    /// an earlier call); [`ConfirmsError::Failed`] hands back the messages
    /// of failed publishes whose `Confirm` was dropped and counts those a
    /// held `Confirm` will hand back; [`ConfirmsError::Timeout`] when some
    /// are still pending after `timeout` (nothing is lost: call again).
    pub fn wait_for_confirms(&self, timeout: Duration) -> Result<(), ConfirmsError> {
        if !self.shared.is_open() {
            // Its confirms still resolve, each through its `Confirm`.
            return Err(ConfirmsError::ChannelClosed);
        }
        self.shared.confirms.wait_all(timeout)
    }

    /// Publishes every `(message, exchange, routing_key, mandatory)` of
    /// `batch` pipelined and waits for their confirms (see
    /// [`crate::Producer::publish_batch`]).
    pub fn publish_batch(
        &self,
        batch: impl IntoIterator<Item = (Message, String, String, bool)>,
    ) -> Result<(), BatchError> {
        self.shared.publish_batch(batch)
    }

    /// Publishes awaiting their confirm on this channel now.
    pub fn confirms_outstanding(&self) -> usize {
        self.shared.confirms.outstanding()
    }

    /// Publishes one message.
    pub fn basic_publish(
        &self,
        message: Message,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        self.shared
            .publish(message, exchange, routing_key, mandatory)
    }

    fn new_consumer(
        &self,
        opts: &ConsumerOptions,
        callback: Option<Callback>,
    ) -> Result<Arc<ConsumerShared>, Error> {
        let ch = self.open()?;
        if opts.queues.is_empty() {
            return Err(Error::InvalidArgument(
                "a consumer needs at least one queue".into(),
            ));
        }
        if opts.prefetch_count == Some(0) || opts.prefetch_bytes == Some(0) {
            return Err(Error::InvalidArgument(
                "prefetch_count and prefetch_bytes must be at least 1".into(),
            ));
        }
        let queues = opts
            .queues
            .iter()
            .map(|q| ch.queue_handle(q))
            .collect::<Result<Vec<_>, _>>()?;
        let tag: Arc<str> = match &opts.tag {
            Some(t) => {
                check_name("consumer tag", t)?;
                t.as_str().into()
            }
            None => format!(
                "ctag{}.{}.{}",
                ch.conn.id,
                ch.id,
                ch.next_consumer.fetch_add(1, SeqCst)
            )
            .into(),
        };
        ch.conn.claim_tag(&tag)?;
        let cfg = &ch.conn.config;
        let window = Window::new(
            opts.prefetch_count.unwrap_or(cfg.prefetch_count) as usize,
            opts.prefetch_bytes.unwrap_or(cfg.prefetch_bytes) as usize,
        );
        let c = Arc::new(ConsumerShared::new(
            tag,
            Arc::downgrade(&self.shared),
            queues,
            opts.no_ack,
            window,
            opts.lease,
            callback,
        ));
        for (i, q) in c.queues.iter().enumerate() {
            if !q.consumer_added() {
                // Deleted since we looked it up: the consumer does not start.
                for earlier in &c.queues[..i] {
                    earlier.consumer_withdrawn();
                }
                ch.conn.release_tag(&c.tag);
                return Err(Error::UnknownQueue(q.name().to_owned()));
            }
        }
        ch.consumers.lock().push(c.clone());
        if !ch.is_open() {
            // Closed while we set up: do not outlive the channel.
            let _ = ch.cancel_consumer(&c);
            return Err(self.open().err().unwrap_or(Error::ChannelClosed));
        }
        Ok(c)
    }

    /// Starts a push consumer: `callback` runs for each delivery inside
    /// `Connection::drain_events`, on the thread that calls it.
    pub fn consume(
        &self,
        options: ConsumerOptions,
        callback: impl FnMut(Delivery) + Send + 'static,
    ) -> Result<Consumer, Error> {
        let c = self.new_consumer(&options, Some(Box::new(callback)))?;
        self.shared.conn.add_consumer(c.clone());
        Ok(Consumer { shared: c })
    }

    /// Starts a consumer read as an async `Stream` of deliveries; works on any
    /// executor. The stream ends when the consumer is cancelled, the channel
    /// closes or every queue it reads is deleted.
    ///
    /// A stream alone on its one queue takes a run of messages in one store
    /// call (up to the queue's batch: 32 on memory:// and local://, 256 on
    /// redis://, within the prefetch window) and hands them out one by one,
    /// as AMQP's prefetch does: the run counts against the window and stays
    /// with this consumer until handed out; whatever is left goes back to
    /// the queue unseen, in order, when the stream is dropped, the consumer
    /// cancelled or the channel closed. `prefetch_count` bounds the run.
    pub fn stream(&self, options: ConsumerOptions) -> Result<DeliveryStream, Error> {
        let c = self.new_consumer(&options, None)?;
        Ok(DeliveryStream::new(c, self.shared.clone()))
    }

    /// Cancels the consumer with `tag` (its unacked deliveries stay unacked).
    pub fn cancel(&self, tag: &str) -> Result<(), Error> {
        let ch = self.open()?;
        let c = ch
            .consumers
            .lock()
            .iter()
            .find(|c| &*c.tag == tag)
            .cloned()
            .ok_or_else(|| Error::UnknownConsumerTag(tag.to_owned()))?;
        ch.cancel_consumer(&c)
    }

    /// Cancels every consumer of this channel that reads `queue`; returns how many.
    pub fn cancel_queue(&self, queue: &str) -> Result<usize, Error> {
        let ch = self.open()?;
        let hit: Vec<_> = ch
            .consumers
            .lock()
            .iter()
            .filter(|c| c.queues.iter().any(|q| q.name() == queue))
            .cloned()
            .collect();
        for c in &hit {
            ch.cancel_consumer(c)?;
        }
        Ok(hit.len())
    }

    /// Pulls one message from `queue`, waiting up to `timeout` (zero = don't
    /// wait). `Ok(None)` when nothing arrived in time. The delivery must be
    /// settled (prefetch windows do not apply, as with AMQP `basic.get`).
    pub fn get(&self, queue: &str, timeout: Duration) -> Result<Option<Delivery>, Error> {
        self.get_inner(queue, timeout, false)
    }

    /// Like [`Channel::get`], but the message counts as acked at once.
    pub fn get_no_ack(&self, queue: &str, timeout: Duration) -> Result<Option<Delivery>, Error> {
        self.get_inner(queue, timeout, true)
    }

    fn get_inner(
        &self,
        queue: &str,
        timeout: Duration,
        no_ack: bool,
    ) -> Result<Option<Delivery>, Error> {
        let ch = self.open()?;
        let q = ch.queue_handle(queue)?;
        let deadline = Instant::now().checked_add(timeout);
        let waker = ThreadWaker::current();
        let deliver = |env: Envelope| -> Result<Option<Delivery>, Error> {
            let Some(mut d) = self.shared.deliver_one(Pending::new(None, env, q.clone())) else {
                // The channel closed as the message was taken: it went
                // back. (Or another process took it back first: nothing
                // to deliver.)
                self.open()?;
                return Ok(None);
            };
            if no_ack {
                let _ = self.shared.settle(&d.slot, Outcome::Ack);
                d.no_ack = true;
            }
            Ok(Some(d))
        };
        // `deliver` says `None` for a message another process took back
        // meanwhile: the queue is asked again.
        loop {
            if let Some(env) = pop_retrying(&*q)? {
                if let Some(d) = deliver(env)? {
                    return Ok(Some(d));
                }
                continue;
            }
            if q.is_deleted() {
                return Err(Error::UnknownQueue(queue.to_owned()));
            }
            self.open()?;
            if timeout.is_zero() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            let budget = self.shared.conn.config.busy_poll;
            if !budget.is_zero() {
                let mut got = Ok(None);
                crate::session::drain::busy_poll(budget, deadline, || {
                    got = pop_retrying(&*q);
                    usize::from(!matches!(got, Ok(None)))
                });
                if let Some(env) = got? {
                    if let Some(d) = deliver(env)? {
                        return Ok(Some(d));
                    }
                    continue;
                }
            }
            let w = thread_waker(&waker);
            let id = q.register(&w);
            let close_id = self.shared.conn.close_notify.register(&w);
            let got = pop_retrying(&*q);
            if matches!(got, Ok(None)) && self.shared.is_open() && !q.is_deleted() {
                waker.wait(deadline);
            }
            q.unregister(id);
            self.shared.conn.close_notify.unregister(close_id);
            if let Some(env) = got? {
                if let Some(d) = deliver(env)? {
                    return Ok(Some(d));
                }
            }
        }
    }

    /// Acks by tag (`multiple`: every unsettled tag up to it; tag 0 + multiple = all).
    pub fn ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), AckError> {
        self.shared.settle_tag(delivery_tag, multiple, Outcome::Ack)
    }

    /// Rejects by tag.
    pub fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), AckError> {
        self.shared
            .settle_tag(delivery_tag, false, Outcome::Reject { requeue })
    }

    /// Nacks by tag (`multiple` as for [`Channel::ack`]).
    pub fn nack(&self, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<(), AckError> {
        self.shared
            .settle_tag(delivery_tag, multiple, Outcome::Reject { requeue })
    }

    /// Unacked deliveries currently tracked on this channel.
    pub fn unacked(&self) -> usize {
        self.shared
            .registry
            .lock()
            .slots
            .iter()
            .filter(|s| s.state.is_unacked())
            .count()
    }

    /// Closes the channel, restoring its unacked deliveries.
    pub fn close(self) {
        self.shared.close();
    }
}
