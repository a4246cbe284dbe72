//! Publishing into the store: route against the snapshot, check every
//! target's limits, encode the message once, append it to each target's
//! lane, wake consumers, and (with fsync) wait for the durability point.
//!
//! # Invariants
//! - Nothing is appended anywhere unless every target accepts the message
//!   (priority and limits are checked first).
//! - A publish that returns `Ok` is committed in every target's lane (and,
//!   with `fsync=always`, covered by a finished `fdatasync`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use dashi_engine::spi::{
    dead_letter_with, limit_reached, queue_full, route_and_lane, Accepted, DeathReason, Envelope,
    PendingConfirm, Routing, TransportEvent,
};
use dashi_engine::{Error, FailureKind, Overflow, PublishError, Queue, StoreFailure};

use crate::codec;
use crate::cut::CutFlag;
use crate::segment::Segment;

use super::durability::Tickets;
use super::queue::LocalQueue;
use super::{store_err, store_fail, wall_ns, Inner};

/// A publish that failed in the store, handing the message back, with the
/// failure's kind (a retry helps only after a transient one).
fn store_error(e: Error, env: Envelope) -> PublishError {
    let failure = match e {
        Error::Store(f) => f,
        other => StoreFailure::new(FailureKind::Runtime, "publish", other),
    };
    PublishError::Store {
        failure,
        message: Box::new(env.into_message()),
    }
}

/// The record is in the log (it may be delivered), but a sync that was to
/// make it durable failed: say so. Nothing more is confirmed from those
/// files: their segments are sealed, new records go to new ones.
fn unconfirmed(e: String, env: Envelope) -> PublishError {
    PublishError::unconfirmed(not_durable(e), env)
}

fn not_durable(e: String) -> StoreFailure {
    StoreFailure::new(
        FailureKind::Io { transient: false },
        "published but not confirmed durable",
        e,
    )
}

/// The buffer a thread encodes its records into, reused from publish to
/// publish (no allocation per message). Taken out of the thread's slot for
/// the publish and put back after, so a publish nested in another (a
/// dead-letter) simply gets a buffer of its own; a buffer grown past
/// [`Scratch::KEEP`] by a large message is not kept.
struct Scratch(Vec<u8>);

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Scratch {
    const KEEP: usize = 64 << 10;

    fn take() -> Self {
        let mut v = SCRATCH.try_with(|s| s.take()).unwrap_or_default();
        v.clear();
        Scratch(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() <= Self::KEEP {
            let v = std::mem::take(&mut self.0);
            // A thread being torn down has no slot left: the buffer goes.
            let _ = SCRATCH.try_with(|s| s.set(v));
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// A pipelined publish's confirm: the syncs of its segments, and the
/// store's cut flag (a file cut short under this process before the sync
/// resolved may have taken the record: the confirm says so).
#[derive(Debug)]
struct LocalConfirm(Tickets, Arc<CutFlag>);

impl LocalConfirm {
    fn outcome(&self, synced: Result<(), String>) -> Result<(), StoreFailure> {
        synced.map_err(not_durable)?;
        match self.1.is_set() {
            true => Err(self.1.failure()),
            false => Ok(()),
        }
    }
}

impl PendingConfirm for LocalConfirm {
    fn poll_confirm(&self, waker: &Waker) -> Poll<Result<(), StoreFailure>> {
        self.0.poll(waker).map(|r| self.outcome(r))
    }

    fn wait_confirm(&self, deadline: Option<Instant>) -> Option<Result<(), StoreFailure>> {
        self.0.wait(deadline).map(|r| self.outcome(r))
    }
}

impl Inner {
    /// Sends a message that left `queue` unacked (rejected, expired, dropped
    /// by overflow) to its dead-letter exchange, or counts it as dropped.
    pub(super) fn dead_letter(self: &Arc<Self>, queue: &Queue, env: Envelope, reason: DeathReason) {
        dead_letter_with(&self.stats.counters, queue, &env, reason, |dl| {
            self.publish(dl, true, true)
        });
    }

    /// Routes and appends `env`, and returns once it is durable as the
    /// store's `fsync` mode promises. `clamp` lowers a priority above a
    /// target's maximum instead of refusing it (dead-lettered messages).
    pub(super) fn publish(
        self: &Arc<Self>,
        env: Envelope,
        mandatory: bool,
        clamp: bool,
    ) -> Result<(), PublishError> {
        let Some((written, env)) = self.append(env, mandatory, clamp)? else {
            return Ok(());
        };
        let Some(d) = &self.durability else {
            return Ok(());
        };
        match d.commit(written) {
            Ok(()) if self.cut.is_set() => Err(PublishError::unconfirmed(self.cut.failure(), env)),
            Ok(()) => Ok(()),
            Err(e) => Err(unconfirmed(e, env)),
        }
    }

    /// Routes and appends `env`, returning before the durability point:
    /// with `fsync=always` or `interval` the confirm resolves at the sync
    /// that covers the record.
    pub(super) fn publish_async(
        self: &Arc<Self>,
        env: Envelope,
        mandatory: bool,
    ) -> Result<Accepted, PublishError> {
        let Some((written, envelope)) = self.append(env, mandatory, false)? else {
            return Ok(Accepted::Confirmed);
        };
        match &self.durability {
            None => Ok(Accepted::Confirmed),
            Some(d) => Ok(Accepted::Pending {
                confirm: Box::new(LocalConfirm(d.tickets(written, false), self.cut.clone())),
                envelope,
            }),
        }
    }

    /// Routes `env` and appends it to every target's lane; `None` when no
    /// queue took it, else the segments written (for the durability wait)
    /// and the envelope.
    #[allow(clippy::type_complexity)]
    fn append(
        self: &Arc<Self>,
        env: Envelope,
        mandatory: bool,
        clamp: bool,
    ) -> Result<Option<(Vec<Arc<Segment>>, Envelope)>, PublishError> {
        let appended = match self.cut.enter() {
            Ok(_g) => self.append_here(env, mandatory, clamp),
            Err(e) => return Err(store_error(e, env)),
        };
        match appended {
            // Written to a page of a file cut short, or after: the record
            // may be anywhere or nowhere.
            Ok(Some((_, env))) if self.cut.is_set() => {
                Err(PublishError::unconfirmed(self.cut.failure(), env))
            }
            other => other,
        }
    }

    /// [`Inner::append`] under the cut guard.
    #[allow(clippy::type_complexity)]
    fn append_here(
        self: &Arc<Self>,
        env: Envelope,
        mandatory: bool,
        clamp: bool,
    ) -> Result<Option<(Vec<Arc<Segment>>, Envelope)>, PublishError> {
        if let Err(e) = self.refresh() {
            return Err(store_error(e, env));
        }
        let routing = self.routing.load();
        let mut env = env;
        let counters = &self.stats.counters;
        let (route, priority) =
            match route_and_lane(&routing, &mut env, mandatory, clamp, counters, |q| &q.decl) {
                Ok(Some(planned)) => planned,
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.into_error(env)),
            };
        let targets = route.as_slice();
        let size = env.size() as u64;
        for &t in targets {
            if let Err(reason) = self.make_room(routing.target(t), size) {
                return Err(queue_full(&routing.target(t).decl, reason, env));
            }
        }
        let mut payload = Scratch::take();
        let encoded = codec::encode_into(
            &mut payload,
            &env.exchange,
            &env.routing_key,
            env.properties(),
            &env.body,
        );
        if let Err(e) = encoded {
            let e = store_fail(FailureKind::Invalid, "encoding the record", e);
            return Err(store_error(e, env));
        }
        // The body may point into a segment of this store (a delivery
        // published again, a dead-lettered record): read from a page cut
        // short, it came out as zeros. Nothing is appended then.
        if let Err(e) = self.cut.check() {
            return Err(store_error(e, env));
        }
        let expires = env.properties().expiration.is_some();
        if expires {
            // This process sweeps the queues its expiring messages went to.
            for &t in targets {
                routing.target(t).expiring.store(true, Relaxed);
            }
            self.ensure_expiry();
        }
        // The publish time is what a TTL counts from, and nothing else reads
        // it: read the clock only when a TTL applies (a tenth of a small
        // publish's time otherwise). 0 says "not recorded".
        let ts = if expires
            || targets
                .iter()
                .any(|&t| routing.target(t).decl.message_ttl.is_some())
        {
            wall_ns()
        } else {
            0
        };
        let written = match self.append_all(&routing, targets, priority, &payload, size, ts) {
            Ok(w) => w,
            Err(e) => return Err(store_error(e, env)),
        };
        self.stats.counters.record(TransportEvent::Published, 1);
        self.stats
            .counters
            .record(TransportEvent::Routed, targets.len() as u64);
        self.wake_other_processes();
        Ok(Some((written, env)))
    }

    /// Checks that `q` takes one more message of `size` body bytes: within
    /// its limits and the store's per-queue budget, or (drop-head) after
    /// dropping its oldest least urgent message. `Err` names the limit.
    fn make_room(&self, q: &LocalQueue, size: u64) -> Result<(), String> {
        let budget = self.opts.max_queue_bytes;
        let fits = |(n, b): (u64, u64)| {
            limit_reached(&q.decl, n.saturating_add(1), b.saturating_add(size)).is_none()
                && budget.is_none_or(|max| b.saturating_add(size) <= max)
        };
        // Cheap first: an overestimate within every limit is enough.
        if fits(q.ready(false)) {
            return Ok(());
        }
        let (n, b) = q.ready(true);
        if let Some(max) = budget.filter(|max| b.saturating_add(size) > *max) {
            return Err(format!(
                "max_queue_bytes ({max}) of the local store reached"
            ));
        }
        match limit_reached(&q.decl, n.saturating_add(1), b.saturating_add(size)) {
            None => Ok(()),
            Some(which) => match q.decl.overflow {
                Overflow::RejectPublish => {
                    Err(format!("{which} reached and overflow is reject-publish"))
                }
                Overflow::DropHead => {
                    q.drop_oldest();
                    Ok(())
                }
            },
        }
    }

    /// Appends the encoded message, published at `ts` (0: not recorded), to
    /// each target's lane `priority` (or its highest lane) and wakes the
    /// local waiters; returns the segments written, for the durability wait. A target another process deleted
    /// since this one routed (its files are gone) is skipped: the delete
    /// wins, as if the message had landed just before it and gone with the
    /// queue, which is what a publish racing a delete may see.
    fn append_all(
        self: &Arc<Self>,
        routing: &Routing<Arc<LocalQueue>>,
        targets: &[usize],
        priority: u8,
        payload: &[u8],
        size: u64,
        ts: u64,
    ) -> Result<Vec<Arc<Segment>>, dashi_engine::Error> {
        let writer = u64::from(self.me());
        let mut written = Vec::new();
        for &t in targets {
            let q = routing.target(t);
            let appended = q.lane(priority.min(q.decl.max_priority)).and_then(|l| {
                l.append_in(payload, size as u32, writer, ts)
                    .map_err(|e| store_err("append", e))
            });
            let (_, seg) = match appended {
                Ok(done) => done,
                Err(e) => {
                    // Deleted meanwhile? The reload marks it so.
                    if !q.state.is_deleted() {
                        let _ = self.refresh();
                    }
                    if q.state.is_deleted() {
                        continue;
                    }
                    return Err(e);
                }
            };
            if self.durability.is_some() {
                written.push(seg);
            }
            q.state.notify_all();
        }
        Ok(written)
    }
}
