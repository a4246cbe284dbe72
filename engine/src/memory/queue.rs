//! One memory:// queue: priority lanes of envelopes plus lock-free accounting.
//!
//! # Invariants
//! - Ready messages = `inflow.count - outflow.count` (bytes likewise). Publishers
//!   write only `inflow`, consumers only `outflow`; each is on its own cache
//!   line, so a publish and a pop do not contend on counters.
//! - A publish reserves its place (fetch_add on `inflow`) before pushing and
//!   backs it out if it exceeds a reject-publish limit, so limits hold without
//!   a lock. The check uses a cached, never-newer copy of `outflow`, which can
//!   only overestimate the depth; it re-reads `outflow` only when the estimate
//!   crosses a limit, so publishers do not pull the consumers' line per message.
//! - Publish, pop and ack take no lock; restore (slow path) takes the lane's
//!   front-list lock.
//! - A run (`pop_many`) passes the expiry gate once, whether or not the
//!   queue's messages can expire yet, and updates the consumers' counters
//!   once; it holds a bounded number of expired messages before returning.

use std::sync::{Arc, Weak};

use super::lanes::Lanes;
use crate::clock::{now_ns, NEVER};
use crate::model::queue::{Overflow, Queue};
use crate::stats::{QueueStats, TransportEvent};
use crate::sync::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst, Padded};
use crate::transport::{
    limit_reached, ConnectionId, DeathReason, Envelope, QueueState, QueueStore,
};

use super::Shared;

#[derive(Debug, Default)]
struct Inflow {
    count: AtomicU64,
    bytes: AtomicU64,
    /// Never-newer copies of `Outflow::{count, bytes}`.
    seen_out_count: AtomicU64,
    seen_out_bytes: AtomicU64,
    /// `Outflow::ttl` was set (read here so publishers stay on their line).
    ttl: AtomicBool,
}

#[derive(Debug, Default)]
struct Outflow {
    count: AtomicU64,
    bytes: AtomicU64,
    unacked: AtomicU64,
    /// Messages of this queue can expire (it has a TTL, or a message with
    /// its own expiration came): pops then pass the expiry gate. On the
    /// consumers' line, which every pop touches anyway.
    ttl: AtomicBool,
    /// The expiry gate: poppers in flight (low bits) and [`SWEEPING`].
    gate: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct MemQueue {
    pub(crate) decl: Queue,
    pub(crate) owner: Option<ConnectionId>,
    lanes: Lanes<Envelope>,
    inflow: Padded<Inflow>,
    outflow: Padded<Outflow>,
    state: QueueState,
    shared: Weak<Shared>,
}

/// Most expired messages one run collects before it returns (they are
/// dead-lettered after the run, so this bounds what it holds).
const MAX_EXPIRED_PER_RUN: usize = 256;

/// Set in the expiry gate while the expiry sweep looks at the heads.
const SWEEPING: u64 = 1 << 63;

/// A place reserved in a queue by [`MemQueue::reserve`].
pub(crate) enum Reserve {
    Ok,
    Full(&'static str),
}

impl MemQueue {
    pub(crate) fn new(decl: Queue, owner: Option<ConnectionId>, shared: Weak<Shared>) -> Self {
        MemQueue {
            lanes: Lanes::new(decl.max_priority),
            decl,
            owner,
            inflow: Padded(Inflow::default()),
            outflow: Padded(Outflow::default()),
            state: QueueState::new(),
            shared,
        }
    }

    /// Runs `f` (a pop) outside any expiry sweep of this queue, so the sweep,
    /// which takes a head and puts it back when it has not expired, is never
    /// seen half done. Queues whose messages cannot expire skip the gate.
    #[inline]
    fn gated<R>(&self, f: impl FnOnce() -> R) -> R {
        if !self.outflow.ttl.load(Relaxed) {
            return f();
        }
        self.enter_gate();
        let r = f();
        self.outflow.gate.fetch_sub(1, SeqCst);
        r
    }

    /// True when messages of this queue can expire.
    pub(crate) fn may_expire(&self) -> bool {
        self.outflow.ttl.load(Relaxed)
    }

    /// Expires the head of each lane whose time ran out (and the heads after
    /// it while they have run out too): messages of a queue nobody reads
    /// expire on time. A head not expired goes back to its place before any
    /// pop can run (the gate), so nothing is reordered. Returns the expired
    /// messages, for the caller to dead-letter outside the gate (a
    /// dead-letter route may lead back into this queue).
    pub(crate) fn expire_heads(&self) -> Vec<Envelope> {
        let mut expired = Vec::new();
        if self
            .outflow
            .gate
            .compare_exchange(0, SWEEPING, SeqCst, SeqCst)
            .is_err()
        {
            // Pops are running: they expire what they meet; next sweep.
            return expired;
        }
        let now = now_ns();
        for lane in 0..self.lanes.lane_count() {
            while let Some(mut env) = self.lanes.pop_from(lane) {
                let taken = self.took(&env);
                if env.token == 0 {
                    env.token = taken + 1;
                }
                if env.expires_at != NEVER && now >= env.expires_at {
                    expired.push(env);
                    continue;
                }
                // Back to its place: nobody popped meanwhile.
                self.inflow.count.fetch_add(1, SeqCst);
                self.inflow.bytes.fetch_add(env.size() as u64, SeqCst);
                self.lanes.restore(lane, [env], |e| e.token);
                break;
            }
        }
        self.outflow.gate.fetch_and(!SWEEPING, SeqCst);
        expired
    }

    /// Dead-letters (or drops and counts) messages the sweep expired.
    pub(crate) fn expired(&self, envs: Vec<Envelope>) {
        for env in envs {
            if let Some(shared) = self.counters() {
                shared.counters.record(TransportEvent::Expired, 1);
            }
            self.dead_letter(env, DeathReason::Expired);
        }
    }

    fn counters(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }

    /// Which limit a depth of `n` messages and `b` bytes breaks, if any.
    fn over(&self, n: u64, b: u64) -> Option<&'static str> {
        limit_reached(&self.decl, n, b)
    }

    /// Ready depth after this reservation, exact when it matters.
    fn depth_after(&self, n_in: u64, b_in: u64) -> Option<&'static str> {
        let i = &self.inflow;
        let est_n = n_in.saturating_sub(i.seen_out_count.load(Relaxed));
        let est_b = b_in.saturating_sub(i.seen_out_bytes.load(Relaxed));
        self.over(est_n, est_b)?;
        // The estimate crossed a limit: refresh from the consumers' side.
        let out_n = self.outflow.count.load(SeqCst);
        let out_b = self.outflow.bytes.load(SeqCst);
        i.seen_out_count.fetch_max(out_n, Relaxed);
        i.seen_out_bytes.fetch_max(out_b, Relaxed);
        self.over(n_in.saturating_sub(out_n), b_in.saturating_sub(out_b))
    }

    /// Reserves room for one message of `size` bytes. With drop-head, makes room
    /// by dropping (or dead-lettering) the oldest least urgent messages.
    #[inline]
    pub(crate) fn reserve(&self, size: u64) -> Reserve {
        let n = self.inflow.count.fetch_add(1, SeqCst) + 1;
        let b = self.inflow.bytes.fetch_add(size, SeqCst) + size;
        let Some(which) = self.depth_after(n, b) else {
            return Reserve::Ok;
        };
        match self.decl.overflow {
            Overflow::RejectPublish => {
                self.unreserve(size);
                Reserve::Full(which)
            }
            Overflow::DropHead => {
                while self.over(self.ready(), self.ready_bytes()).is_some() {
                    match self.gated(|| self.lanes.pop_least_urgent()) {
                        Some((_, env)) => {
                            self.took(&env);
                            self.dead_letter(env, DeathReason::MaxLen);
                        }
                        // Only in-flight reservations are left: they may exceed
                        // the limit until the next publish makes room.
                        None => break,
                    }
                }
                Reserve::Ok
            }
        }
    }

    pub(crate) fn unreserve(&self, size: u64) {
        self.inflow.count.fetch_sub(1, SeqCst);
        self.inflow.bytes.fetch_sub(size, SeqCst);
    }

    /// Appends a reserved envelope and wakes waiters. A publish that routed
    /// to this queue just as it was deleted loses its message with the queue
    /// (as AMQP allows): it is purged here rather than left in a deleted
    /// queue.
    #[inline]
    pub(crate) fn push_reserved(&self, env: Envelope) {
        if env.expires_at != NEVER && !self.inflow.ttl.load(Relaxed) {
            self.inflow.ttl.store(true, Relaxed);
            self.outflow.ttl.store(true, Relaxed);
            if let Some(shared) = self.counters() {
                shared.ensure_sweeper();
            }
        }
        self.lanes.push(env.lane as usize, env);
        if self.state.is_deleted() {
            self.purge();
            return;
        }
        self.state.notify_all();
    }

    /// Counts a message leaving the ready set; returns how many left before
    /// it (its place in the order messages were taken).
    #[inline]
    fn took(&self, env: &Envelope) -> u64 {
        self.outflow.bytes.fetch_add(env.size() as u64, SeqCst);
        self.outflow.count.fetch_add(1, SeqCst)
    }

    fn dead_letter(&self, env: Envelope, reason: DeathReason) {
        if let Some(shared) = self.counters() {
            shared.dead_letter(self, env, reason);
        }
    }

    /// Drops every ready message; returns how many.
    pub(crate) fn purge(&self) -> u64 {
        let mut n = 0;
        while let Some((_, env)) = self.gated(|| self.lanes.pop()) {
            self.took(&env);
            n += 1;
        }
        n
    }

    /// Marks the queue deleted (if not already) and drops its ready
    /// messages; returns how many there were.
    pub(crate) fn mark_deleted(&self) -> u64 {
        self.state.set_deleted();
        // Emptied before the waiters wake, so they find it gone, not a
        // message of a deleted queue.
        let n = self.purge();
        self.state.notify_all();
        n
    }

    pub(crate) fn ready(&self) -> u64 {
        let out = self.outflow.count.load(SeqCst);
        self.inflow.count.load(SeqCst).saturating_sub(out)
    }

    fn ready_bytes(&self) -> u64 {
        let out = self.outflow.bytes.load(SeqCst);
        self.inflow.bytes.load(SeqCst).saturating_sub(out)
    }

    pub(crate) fn consumers(&self) -> u64 {
        self.state.consumers()
    }

    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            name: self.decl.name.clone(),
            depth_by_lane: (0..self.lanes.lane_count())
                .map(|l| self.lanes.len(l).map_or_else(|| self.ready(), |n| n as u64))
                .collect(),
            messages: self.ready(),
            bytes: self.ready_bytes(),
            unacked: self.outflow.unacked.load(SeqCst),
            consumers: self.state.consumers(),
            garbage: 0,
            unusable: None,
        }
    }
}

impl MemQueue {
    /// The next ready message (see [`QueueStore::pop`]); memory:// cannot
    /// fail to read one.
    fn pop_ready(&self) -> Option<Envelope> {
        let mut now = 0;
        loop {
            let (_, mut env) = self.gated(|| self.lanes.pop())?;
            let taken = self.took(&env);
            // The first time a message is taken, its token records where it
            // stood (messages are taken in lane order), so a restore can put
            // it back at its original position; a restored message keeps it.
            // Two consumers taking at once may record their two messages the
            // other way round: they promise no order between themselves.
            if env.token == 0 {
                env.token = taken + 1;
            }
            if env.expires_at != NEVER {
                if now == 0 {
                    now = now_ns();
                }
                if now >= env.expires_at {
                    if let Some(shared) = self.counters() {
                        shared.counters.record(TransportEvent::Expired, 1);
                    }
                    self.dead_letter(env, DeathReason::Expired);
                    continue;
                }
            }
            self.outflow.unacked.fetch_add(1, Relaxed);
            return Some(env);
        }
    }
}

impl MemQueue {
    /// Up to `max` ready messages, with one pass through the expiry gate
    /// and one update of the consumers' counters per run rather than per
    /// message. The gate is taken even when no message can expire yet, so
    /// a sweep that starts mid-run (a first message with a TTL just came)
    /// waits for the run. Expired messages met on the way are dead-lettered
    /// after it, and the run is refilled in their place.
    fn pop_run(&self, max: usize, out: &mut Vec<Envelope>) -> usize {
        let first = out.len();
        let mut expired = Vec::new();
        let mut now = 0;
        while out.len() - first < max {
            let start = out.len();
            let mut bytes = 0u64;
            self.enter_gate();
            while out.len() - first < max {
                let Some((_, env)) = self.lanes.pop() else {
                    break;
                };
                bytes += env.size() as u64;
                out.push(env);
            }
            self.outflow.gate.fetch_sub(1, SeqCst);
            let n = (out.len() - start) as u64;
            if n == 0 {
                break;
            }
            self.outflow.bytes.fetch_add(bytes, SeqCst);
            let taken = self.outflow.count.fetch_add(n, SeqCst);
            // As in `pop_ready`: a first-taken message records where it stood.
            for (k, env) in out[start..].iter_mut().enumerate() {
                if env.token == 0 {
                    env.token = taken + k as u64 + 1;
                }
            }
            let before = expired.len();
            if out[start..].iter().any(|e| e.expires_at != NEVER) {
                if now == 0 {
                    now = now_ns();
                }
                let mut k = start;
                while k < out.len() {
                    if now >= out[k].expires_at {
                        expired.push(out.remove(k));
                    } else {
                        k += 1;
                    }
                }
            }
            // Refill only while this run found something new to expire,
            // and not without end (a publisher could keep sending messages
            // that arrive expired): the rest waits for the next call.
            if expired.len() == before || expired.len() >= MAX_EXPIRED_PER_RUN {
                break;
            }
        }
        let n = out.len() - first;
        self.outflow.unacked.fetch_add(n as u64, Relaxed);
        for env in expired {
            if let Some(shared) = self.counters() {
                shared.counters.record(TransportEvent::Expired, 1);
            }
            self.dead_letter(env, DeathReason::Expired);
        }
        n
    }

    /// Counts a popper in, waiting out an expiry sweep in progress.
    fn enter_gate(&self) {
        while self.outflow.gate.fetch_add(1, SeqCst) & SWEEPING != 0 {
            self.outflow.gate.fetch_sub(1, SeqCst);
            while self.outflow.gate.load(SeqCst) & SWEEPING != 0 {
                crate::sync::yield_now();
            }
        }
    }
}

impl QueueStore for MemQueue {
    fn name(&self) -> &str {
        &self.decl.name
    }

    fn declaration(&self) -> &Queue {
        &self.decl
    }

    fn pop(&self) -> Result<Option<Envelope>, crate::Error> {
        Ok(self.pop_ready())
    }

    fn pop_many(&self, max: usize, out: &mut Vec<Envelope>) -> Result<usize, crate::Error> {
        Ok(self.pop_run(max, out))
    }

    fn batch_hint(&self) -> usize {
        32
    }

    fn ack(&self, envs: &[&Envelope]) -> Result<(), crate::Error> {
        self.outflow.unacked.fetch_sub(envs.len() as u64, Relaxed);
        Ok(())
    }

    fn reject(&self, envs: Vec<Envelope>) -> Result<(), crate::Error> {
        self.outflow.unacked.fetch_sub(envs.len() as u64, Relaxed);
        for env in envs {
            self.dead_letter(env, DeathReason::Rejected);
        }
        Ok(())
    }

    fn restore(&self, envs: Vec<Envelope>) -> Result<(), crate::Error> {
        self.restore_all(envs);
        Ok(())
    }

    fn state(&self) -> &QueueState {
        &self.state
    }

    fn consumer_removed(&self) {
        if self.state.consumer_removed(&self.decl) {
            if let Some(shared) = self.counters() {
                shared.remove_queue(self);
            }
        }
    }
}

impl MemQueue {
    /// [`QueueStore::restore`]: memory:// cannot fail.
    fn restore_all(&self, envs: Vec<Envelope>) {
        if envs.is_empty() {
            return;
        }
        self.outflow.unacked.fetch_sub(envs.len() as u64, Relaxed);
        if self.state.is_deleted() {
            return;
        }
        let bytes: u64 = envs.iter().map(|e| e.size() as u64).sum();
        self.inflow.count.fetch_add(envs.len() as u64, SeqCst);
        self.inflow.bytes.fetch_add(bytes, SeqCst);
        // Each goes back to its original position (where it was first taken,
        // in its token), ahead of everything never taken.
        for env in envs {
            self.lanes.restore(env.lane as usize, [env], |e| e.token);
        }
        self.state.notify_all();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::model::message::Message;

    fn queue(max_length: u64) -> MemQueue {
        MemQueue::new(
            Queue::new("q").with_max_length(max_length),
            None,
            Weak::new(),
        )
    }

    fn env() -> Envelope {
        Envelope::new(Message::new("x"), "", "q")
    }

    /// Two publishers race for the last place of a reject-publish queue:
    /// exactly one gets it, and the accounting matches what is in the lanes.
    #[test]
    fn reject_publish_limit_holds_under_racing_publishers() {
        loom::model(|| {
            let q = loom::sync::Arc::new(queue(1));
            let spawn = |q: loom::sync::Arc<MemQueue>| {
                loom::thread::spawn(move || match q.reserve(1) {
                    Reserve::Ok => {
                        q.push_reserved(env());
                        true
                    }
                    Reserve::Full(_) => false,
                })
            };
            let (a, b) = (spawn(q.clone()), spawn(q.clone()));
            let won = a.join().unwrap() as u32 + b.join().unwrap() as u32;
            assert_eq!(won, 1);
            assert_eq!(q.ready(), 1);
            assert!(q.pop().unwrap().is_some());
            assert!(q.pop().unwrap().is_none());
            assert_eq!(q.ready(), 0);
        });
    }

    /// A queue holding "m0" then "m1", both with a far expiry (so the
    /// sweep looks at them and puts the head back).
    fn two_that_can_expire() -> loom::sync::Arc<MemQueue> {
        let q = loom::sync::Arc::new(queue(10));
        for b in ["m0", "m1"] {
            assert!(matches!(q.reserve(1), Reserve::Ok));
            let mut e = Envelope::new(Message::new(b), "", "q");
            e.expires_at = NEVER - 1;
            q.push_reserved(e);
        }
        q
    }

    /// The expiry sweep takes a head that has not expired and puts it back;
    /// a pop racing it gets that head, never the message behind it.
    #[test]
    fn a_pop_racing_the_expiry_sweep_gets_the_head() {
        loom::model(|| {
            let q = two_that_can_expire();
            let q2 = q.clone();
            let sweeper = loom::thread::spawn(move || q2.expire_heads().len());
            let first = q.pop().unwrap().unwrap();
            assert_eq!(sweeper.join().unwrap(), 0);
            assert_eq!(&first.to_message().body[..], b"m0");
            assert_eq!(q.ready(), 1);
        });
    }

    /// A run racing the expiry sweep (a message with a TTL arrived, so a
    /// sweep may start mid-run): the run takes the gate too, so it gets the
    /// messages in order, never the second without the first.
    #[test]
    fn a_run_racing_the_expiry_sweep_keeps_the_order() {
        loom::model(|| {
            let q = two_that_can_expire();
            let q2 = q.clone();
            let sweeper = loom::thread::spawn(move || q2.expire_heads().len());
            let mut run = Vec::new();
            q.pop_run(2, &mut run);
            assert_eq!(sweeper.join().unwrap(), 0);
            let bodies: Vec<_> = run.iter().map(|e| e.to_message().body).collect();
            assert_eq!(bodies, ["m0", "m1"]);
            assert_eq!(q.ready(), 0);
        });
    }

    /// A pop racing a publish: the message is taken once or left once, and the
    /// ready count agrees.
    #[test]
    fn pop_racing_publish_keeps_counts() {
        loom::model(|| {
            let q = loom::sync::Arc::new(queue(10));
            let q2 = q.clone();
            let publisher = loom::thread::spawn(move || {
                assert!(matches!(q2.reserve(1), Reserve::Ok));
                q2.push_reserved(env());
            });
            let first = q.pop().unwrap().is_some() as u64;
            publisher.join().unwrap();
            assert_eq!(first + q.ready(), 1);
            let second = q.pop().unwrap().is_some() as u64;
            assert_eq!(first + second, 1);
            assert_eq!(q.ready(), 0);
        });
    }
}
