//! One queue of the store as this process uses it: its lanes (one per
//! priority ever used), the deliveries this process holds, and the upkeep a
//! consumer does on the way (reclaiming dead processes' claims, unblocking
//! dead writers' reservations, retention).
//!
//! # Invariants
//! - A delivery's token names its record (lane, segment, offset); the claim
//!   behind it is in `held` until it is settled or restored, so a settle
//!   applies to exactly the record that was delivered.
//! - Lanes are tried most urgent first and each lane is FIFO (restored
//!   records first), so a pop takes the most urgent ready message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::SeqCst};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Waker;

use dashi_engine::spi::{
    effective_ttl, now_ns, DeathReason, Envelope, QueueState, QueueStore, TransportEvent,
};
use dashi_engine::{Error, Queue};
use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::clock;
use crate::codec;
use crate::file_names;
use crate::lane::{claim, token, token_lane, Claimed, Lane};
use crate::owner;
use crate::shared_page::SharedPage;

use super::{store_err, wall_ns, Inner, LocalOptions, PUBLISHED};

/// One queue of the store, as this process uses it.
pub(crate) struct LocalQueue {
    pub(super) decl: Queue,
    pub(super) dir: PathBuf,
    pub(super) lanes_used: SharedPage,
    pub(super) lanes: Vec<OnceLock<Arc<Lane>>>,
    pub(super) segment_size: u64,
    pub(super) alloc: Arc<Allocator>,
    pub(super) state: QueueState,
    /// Deliveries of this process not yet settled, by token (a fast hash:
    /// tokens are positions, not attacker-chosen).
    pub(super) held: Mutex<HashMap<u64, Claimed, foldhash::fast::RandomState>>,
    /// This process as a claim owner (pid and start-time bits).
    pub(super) owner: u64,
    pub(super) transport: Weak<Inner>,
    /// When this process last looked for records held by dead processes.
    pub(super) last_reclaim_ns: AtomicU64,
}

/// How often an idle consumer looks for records held by dead processes.
const RECLAIM_EVERY_NS: u64 = 100_000_000;
/// How long an uncommitted reservation without a writer pid may block a lane.
const UNBLOCK_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How long past its deadline another process's lease must be before this
/// process restores the claim (a live owner's engine restores at the
/// deadline itself; this catches owners that are stopped or hung).
const LEASE_GRACE_NS: u64 = 1_000_000_000;

impl std::fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueue")
            .field("name", &self.decl.name)
            .finish()
    }
}

impl LocalQueue {
    pub(super) fn open(
        root: &Path,
        decl: Queue,
        opts: &LocalOptions,
        alloc: Arc<Allocator>,
        owner: u64,
        transport: Weak<Inner>,
    ) -> Result<LocalQueue, Error> {
        let comp =
            file_names::encode(&decl.name).ok_or_else(|| store_err("queue name", "empty"))?;
        let dir = root.join("q").join(comp);
        std::fs::create_dir_all(&dir).map_err(|e| store_err("queue directory", e))?;
        std::fs::write(dir.join("name"), decl.name.as_bytes())
            .map_err(|e| store_err("queue name file", e))?;
        let lanes_used =
            SharedPage::open(&dir.join("state")).map_err(|e| store_err("queue state", e))?;
        Ok(LocalQueue {
            lanes: (0..=decl.max_priority).map(|_| OnceLock::new()).collect(),
            decl,
            dir,
            lanes_used,
            segment_size: opts.segment_size,
            alloc,
            state: QueueState::new(),
            held: Mutex::new(HashMap::default()),
            owner,
            transport,
            last_reclaim_ns: AtomicU64::new(0),
        })
    }

    /// Returns records held by processes that died to their lanes and deletes
    /// fully settled segments (rate limited); true if any record came back.
    pub(super) fn reclaim_dead(&self) -> bool {
        let now = now_ns();
        let last = self.last_reclaim_ns.load(Acquire);
        if now.saturating_sub(last) < RECLAIM_EVERY_NS
            || self
                .last_reclaim_ns
                .compare_exchange(last, now, AcqRel, Acquire)
                .is_err()
        {
            return false;
        }
        // One look at /proc per owner per pass.
        let mut seen: HashMap<u64, bool> = HashMap::new();
        let mut alive = |owner: u64| {
            *seen
                .entry(owner)
                .or_insert_with(|| owner::claim_owner_alive(owner))
        };
        let now = clock::shared_now_ns();
        let mut any = false;
        for p in self.used_lanes() {
            let Ok(l) = self.lane(p) else { continue };
            if l.counts().2 > 0 {
                any |= l
                    .reclaim(&mut alive, self.owner, now, LEASE_GRACE_NS)
                    .unwrap_or(0)
                    > 0;
            }
            // A dead producer's uncommitted reservation must not block the
            // lane (writers that died before writing their pid get 10 s).
            match l.unblock(owner::writer_alive, UNBLOCK_AFTER) {
                Ok(padded) => any |= padded,
                Err(e) => tracing::warn!(queue = %self.decl.name, error = %e, "unblocking failed"),
            }
            // Retention follows the slowest consumer: only segments wholly
            // before the oldest unsettled record go.
            if let Err(e) = l.retire() {
                tracing::warn!(queue = %self.decl.name, error = %e, "retention failed");
            }
        }
        any
    }

    pub(super) fn lane(&self, p: u8) -> Result<&Arc<Lane>, Error> {
        let cell = &self.lanes[p as usize];
        if let Some(l) = cell.get() {
            return Ok(l);
        }
        let lane = Lane::open_with(
            &self.dir.join(format!("lane-{p}")),
            u32::from(p),
            self.segment_size,
            self.alloc.clone(),
        )
        .map_err(|e| store_err("lane", e))?;
        let _ = cell.set(Arc::new(lane));
        self.lanes_used
            .u64_at(8 * (p as usize / 64))
            .fetch_or(1 << (p % 64), AcqRel);
        cell.get().ok_or_else(|| store_err("lane", "vanished"))
    }

    /// Lanes any process ever used, most urgent first.
    pub(super) fn used_lanes(&self) -> impl DoubleEndedIterator<Item = u8> + '_ {
        (0..=self.decl.max_priority).rev().filter(|p| {
            self.lanes_used.u64_at(8 * (*p as usize / 64)).load(Acquire) & (1 << (p % 64)) != 0
        })
    }

    /// Ready messages and their body bytes, all lanes; with `exact` false,
    /// possibly overestimated (never under) and without reading what
    /// consumers write (see [`Lane::ready_at_most`]). No allocation: this runs
    /// on every publish for the queue's limits.
    pub(super) fn ready(&self, exact: bool) -> (u64, u64) {
        let (mut n, mut b) = (0, 0);
        for p in self.used_lanes() {
            if let Ok(l) = self.lane(p) {
                let (r, rb) = if exact {
                    let (r, rb, _) = l.counts();
                    (r, rb)
                } else {
                    l.ready_at_most()
                };
                n += r;
                b += rb;
            }
        }
        (n, b)
    }

    pub(super) fn counts(&self) -> (u64, u64, u64, Vec<u64>) {
        let mut depth = vec![0; self.decl.max_priority as usize + 1];
        let (mut n, mut b, mut u) = (0, 0, 0);
        for p in self.used_lanes() {
            if let Ok(l) = self.lane(p) {
                let (r, rb, ru) = l.counts();
                depth[p as usize] = r;
                n += r;
                b += rb;
                u += ru;
            }
        }
        (n, b, u, depth)
    }

    pub(super) fn envelope(&self, lane: u8, c: &Claimed) -> Result<Envelope, Error> {
        let bytes = c.segment.payload_bytes(c.pos.off, &c.meta);
        let p = codec::decode(&bytes).map_err(|e| store_err("record payload", e))?;
        let ttl = effective_ttl(self.decl.message_ttl, p.message.properties.expiration);
        let mut env = Envelope::new(p.message, &p.exchange, &p.routing_key);
        env.redelivered = c.redelivered;
        env.lane = lane;
        env.token = token(lane, c.pos);
        env.expires_at = match ttl {
            None => u64::MAX,
            Some(ttl) => {
                let deadline = c.meta.timestamp_ns.saturating_add(ttl.as_nanos() as u64);
                now_ns().saturating_add(deadline.saturating_sub(wall_ns()))
            }
        };
        Ok(env)
    }

    pub(super) fn take(&self, token: u64) -> Option<(u8, Claimed)> {
        self.held
            .lock()
            .remove(&token)
            .map(|c| (token_lane(token), c))
    }

    pub(super) fn kill(&self, lane: u8, c: &Claimed, env: Envelope, reason: DeathReason) {
        if let Ok(l) = self.lane(lane) {
            l.settle(c, self.owner, claim::DEAD);
        }
        if let Some(t) = self.transport.upgrade() {
            t.dead_letter(&self.decl, env, reason);
        }
    }

    pub(super) fn pop_ready(&self) -> Option<Envelope> {
        for p in self.used_lanes() {
            let Ok(l) = self.lane(p) else { continue };
            while let Ok(Some(c)) = l.claim(self.owner) {
                let env = match self.envelope(p, &c) {
                    Ok(env) => env,
                    Err(e) => {
                        tracing::warn!(queue = %self.decl.name, error = %e, "unreadable record set aside");
                        l.settle(&c, self.owner, claim::DEAD);
                        continue;
                    }
                };
                if env.expires_at != u64::MAX && now_ns() >= env.expires_at {
                    if let Some(t) = self.transport.upgrade() {
                        t.counters.record(TransportEvent::Expired, 1);
                    }
                    self.kill(p, &c, env, DeathReason::Expired);
                    continue;
                }
                self.held.lock().insert(env.token, c);
                return Some(env);
            }
        }
        None
    }

    /// Claims the oldest message of the least urgent lane (drop-head).
    pub(super) fn drop_oldest(&self) -> bool {
        for p in self.used_lanes().rev() {
            let Ok(l) = self.lane(p) else { continue };
            if let Ok(Some(c)) = l.claim(self.owner) {
                match self.envelope(p, &c) {
                    Ok(env) => self.kill(p, &c, env, DeathReason::MaxLen),
                    Err(_) => {
                        l.settle(&c, self.owner, claim::DEAD);
                    }
                }
                return true;
            }
        }
        false
    }
}

impl QueueStore for LocalQueue {
    fn name(&self) -> &str {
        &self.decl.name
    }

    fn declaration(&self) -> &Queue {
        &self.decl
    }

    fn pop(&self) -> Option<Envelope> {
        let first = self.pop_ready();
        if first.is_some() {
            // A consumer that never runs dry still reclaims (dead owners,
            // expired leases) and retires segments: every 1024 pops it looks
            // at the clock, and the pass itself runs at most every 100 ms.
            thread_local!(static POPS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
            if POPS.with(|n| {
                n.set(n.get().wrapping_add(1));
                n.get() % 1024 == 0
            }) {
                self.reclaim_dead();
            }
            return first;
        }
        if !self.reclaim_dead() {
            return first;
        }
        self.pop_ready()
    }

    fn ack(&self, env: &Envelope) {
        if let Some((p, c)) = self.take(env.token) {
            if let Ok(l) = self.lane(p) {
                l.settle(&c, self.owner, claim::ACKED);
            }
        }
    }

    fn reject(&self, env: Envelope) {
        if let Some((p, c)) = self.take(env.token) {
            self.kill(p, &c, env, DeathReason::Rejected);
        }
    }

    fn restore(&self, envs: Vec<Envelope>) {
        for env in envs {
            if let Some((p, c)) = self.take(env.token) {
                if let Ok(l) = self.lane(p) {
                    l.restore(&c, self.owner, env.redelivered);
                }
            }
        }
        self.state.notify_all();
    }

    fn lease(&self, env: &Envelope, lease: std::time::Duration) {
        let lane = token_lane(env.token);
        let held = self.held.lock().get(&env.token).cloned();
        if let (Some(c), Ok(l)) = (held, self.lane(lane)) {
            let deadline = clock::shared_now_ns().saturating_add(lease.as_nanos() as u64);
            l.set_deadline(&c, self.owner, deadline);
        }
    }

    fn register(&self, waker: &Waker) -> u64 {
        let id = self.state.register(waker);
        if let Some(t) = self.transport.upgrade() {
            t.ensure_watcher();
            // Read after registering, before the caller's last look at the
            // queue: a publish from now on moves the word past this value.
            t.arm.arm(t.control.u32_at(PUBLISHED).load(SeqCst));
        }
        id
    }

    fn state(&self) -> &QueueState {
        &self.state
    }

    fn consumer_removed(&self) {
        if self.state.consumer_removed(&self.decl) {
            if let Some(t) = self.transport.upgrade() {
                let _ = t.change(|m| {
                    m.queues.retain(|(q, _)| q.name != self.decl.name);
                    m.bindings.retain(|b| b.queue != self.decl.name);
                    Ok(())
                });
            }
        }
    }
}
