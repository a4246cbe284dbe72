//! `local://`: the `Transport` over a store directory shared by processes.
//!
//! ```text
//! <root>/DASHI-LOCAL          "dashi-local 2": format marker, checked on open
//! <root>/meta.json, meta.lock  topology, rewritten under an exclusive flock
//! <root>/control              shared words: topology generation
//! <root>/q/<name>/state       shared words: which lanes were ever used
//! <root>/q/<name>/name        the queue's name (for hashed directory names)
//! <root>/q/<name>/lane-<p>/   one lane per priority (see lane.rs)
//! ```
//!
//! # Invariants
//! - Topology changes take the metadata lock, re-read `meta.json`, write it
//!   anew and bump the shared generation; every process reloads its routing
//!   snapshot when it sees a new generation (one atomic load per publish).
//! - A message is encoded once per publish and appended to each target
//!   queue's lane; a delivered body is a view into the segment mapping.
//! - Deliveries are claims in the log, settled in place (acked, dead,
//!   restored), so any process can take over another's work.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::SeqCst,
};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Waker;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dashi_engine::clock::now_ns;
use dashi_engine::exchange::Exchange;
use dashi_engine::names::{check_exchange_ref, check_name};
use dashi_engine::queue::{Overflow, Queue, QueueInfo};
use dashi_engine::routing::{Binding, Routing, Topology};
use dashi_engine::rt::{Runtime, RuntimeConfig};
use dashi_engine::transport::{
    dead_letter, ConnectionId, DeathReason, Envelope, Implements, QueueStore, Transport,
};
use dashi_engine::url::ConnectUrl;
use dashi_engine::{Connection, Notify};
use dashi_engine::{Counters, QueueStats, TransportEvent};
use dashi_engine::{Error, PublishError, UrlError};
use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::codec;
use crate::lane::{claim, Claimed, Lane};
use crate::lock::FileLock;
use crate::meta::Meta;
use crate::names;
use crate::owner;
use crate::recovery::Totals;
use crate::state::StatePage;

const MARKER: &str = "dashi-local 2\n";
const GENERATION: usize = 0;
/// Futex word bumped after every publish (32-bit, own cache line).
const PUBLISHED: usize = 64;
/// Set by a watcher about to sleep on [`PUBLISHED`]; the first publish after
/// that clears it and wakes every watcher, later ones skip the syscall (32-bit).
const SLEEPERS: usize = 128;

/// When a publish is confirmed durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fsync {
    /// Confirmed once in the shared mapping: survives a process crash, not a
    /// power loss (the OS writes pages back when it likes).
    Never,
    /// Confirmed after an `fdatasync` (issued on a runtime core's io_uring)
    /// that covers the record: survives a power loss. One `fdatasync` serves
    /// every publish that arrived while the previous one ran (group commit).
    Always,
    /// `fdatasync` of written segments every interval, on a runtime core;
    /// publishes confirm at once (a power loss loses at most one interval).
    Interval(std::time::Duration),
}

/// Options of a `local://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Durability of a confirmed publish.
    pub fsync: Fsync,
    /// Size of each segment file.
    pub segment_size: u64,
    /// Most ready bytes per queue (its disk budget), if limited.
    pub max_queue_bytes: Option<u64>,
    /// Behave as if io_uring were not permitted (tests of the fallback).
    #[doc(hidden)]
    pub simulate_no_io_uring: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            fsync: Fsync::Never,
            segment_size: 64 << 20,
            max_queue_bytes: None,
            simulate_no_io_uring: false,
        }
    }
}

fn store_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Transport(format!("local store: {what}: {e}"))
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Topo {
    generation: u64,
    topology: Topology,
    queues: HashMap<String, Arc<LocalQueue>>,
}

struct Inner {
    root: PathBuf,
    opts: LocalOptions,
    control: StatePage,
    topo: Mutex<Topo>,
    routing: ArcSwap<Routing<Arc<LocalQueue>>>,
    /// The generation `routing` was built from (checked on every publish
    /// without taking the topology lock).
    loaded_gen: AtomicU64,
    counters: Counters,
    pid: u32,
    /// This process (pid and start time), read once at open.
    me: owner::Me,
    /// Exclusive queues this process declared: name → connection.
    exclusive_owner: Mutex<HashMap<String, ConnectionId>>,
    /// The thread that turns other processes' publishes into local wake-ups.
    watcher: OnceLock<()>,
    /// Arms the watcher when a consumer of this process is about to sleep.
    arm: Arc<Arm>,
    /// fdatasync on a runtime core (`fsync=always` / `interval`).
    durability: Option<Arc<crate::durability::Durability>>,
    /// Segment space (fallocate on a runtime core).
    alloc: Arc<Allocator>,
    /// What recovery did when this process opened the store first.
    recovered: Totals,
    /// Shared lock on `open.lock`, held while the store is open here.
    _presence: FileLock,
}

/// The `local://` transport. Cheap to clone.
#[derive(Clone)]
pub struct LocalTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTransport")
            .field("root", &self.inner.root)
            .finish()
    }
}

/// One queue of the store, as this process uses it.
pub struct LocalQueue {
    decl: Queue,
    dir: PathBuf,
    lanes_used: StatePage,
    lanes: Vec<OnceLock<Arc<Lane>>>,
    segment_size: u64,
    alloc: Arc<Allocator>,
    notify: Notify,
    /// Deliveries of this process not yet settled, by token (a fast hash:
    /// tokens are positions, not attacker-chosen).
    held: Mutex<HashMap<u64, Claimed, foldhash::fast::RandomState>>,
    consumers: AtomicU64,
    deleted: AtomicBool,
    /// This process as a claim owner (pid and start-time bits).
    owner: u64,
    transport: Weak<Inner>,
    /// When this process last looked for records held by dead processes.
    last_reclaim_ns: AtomicU64,
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

fn token(lane: u8, c: &Claimed) -> u64 {
    (u64::from(lane) << 56) | (c.pos.seq << 36) | c.pos.off
}

impl LocalQueue {
    fn open(
        root: &Path,
        decl: Queue,
        opts: &LocalOptions,
        alloc: Arc<Allocator>,
        owner: u64,
        transport: Weak<Inner>,
    ) -> Result<LocalQueue, Error> {
        let comp = names::encode(&decl.name).ok_or_else(|| store_err("queue name", "empty"))?;
        let dir = root.join("q").join(comp);
        std::fs::create_dir_all(&dir).map_err(|e| store_err("queue directory", e))?;
        std::fs::write(dir.join("name"), decl.name.as_bytes())
            .map_err(|e| store_err("queue name file", e))?;
        let lanes_used =
            StatePage::open(&dir.join("state")).map_err(|e| store_err("queue state", e))?;
        Ok(LocalQueue {
            lanes: (0..=decl.max_priority).map(|_| OnceLock::new()).collect(),
            decl,
            dir,
            lanes_used,
            segment_size: opts.segment_size,
            alloc,
            notify: Notify::new(),
            held: Mutex::new(HashMap::default()),
            consumers: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            owner,
            transport,
            last_reclaim_ns: AtomicU64::new(0),
        })
    }

    /// Returns records held by processes that died to their lanes and deletes
    /// fully settled segments (rate limited); true if any record came back.
    fn reclaim_dead(&self) -> bool {
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
        let now = owner::shared_now_ns();
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

    fn lane(&self, p: u8) -> Result<&Arc<Lane>, Error> {
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
    fn used_lanes(&self) -> impl DoubleEndedIterator<Item = u8> + '_ {
        (0..=self.decl.max_priority).rev().filter(|p| {
            self.lanes_used.u64_at(8 * (*p as usize / 64)).load(Acquire) & (1 << (p % 64)) != 0
        })
    }

    /// Ready messages and their body bytes, all lanes; with `exact` false,
    /// possibly overestimated (never under) and without reading what
    /// consumers write (see [`Lane::ready_at_most`]). No allocation: this runs
    /// on every publish for the queue's limits.
    fn ready(&self, exact: bool) -> (u64, u64) {
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

    fn counts(&self) -> (u64, u64, u64, Vec<u64>) {
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

    fn envelope(&self, lane: u8, c: &Claimed) -> Result<Envelope, Error> {
        let bytes = c.segment.payload_bytes(c.pos.off, &c.meta);
        let p = codec::decode(&bytes).map_err(|e| store_err("record payload", e))?;
        let ttl = match (self.decl.message_ttl, p.message.properties.expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut env = Envelope::new(p.message, &p.exchange, &p.routing_key);
        env.redelivered = c.redelivered;
        env.lane = lane;
        env.token = token(lane, c);
        env.expires_at = match ttl {
            None => u64::MAX,
            Some(ttl) => {
                let deadline = c.meta.timestamp_ns.saturating_add(ttl.as_nanos() as u64);
                now_ns().saturating_add(deadline.saturating_sub(wall_ns()))
            }
        };
        Ok(env)
    }

    fn take(&self, token: u64) -> Option<(u8, Claimed)> {
        self.held
            .lock()
            .remove(&token)
            .map(|c| ((token >> 56) as u8, c))
    }

    fn kill(&self, lane: u8, c: &Claimed, env: Envelope, reason: DeathReason) {
        if let Ok(l) = self.lane(lane) {
            l.settle(c, self.owner, claim::DEAD);
        }
        if let Some(t) = self.transport.upgrade() {
            t.dead_letter(&self.decl, env, reason);
        }
    }

    fn pop_ready(&self) -> Option<Envelope> {
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
    fn drop_oldest(&self) -> bool {
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
                    l.restore(&c, self.owner);
                }
            }
        }
        self.notify.notify_all();
    }

    fn lease(&self, env: &Envelope, lease: std::time::Duration) {
        let lane = (env.token >> 56) as u8;
        let held = self.held.lock().get(&env.token).cloned();
        if let (Some(c), Ok(l)) = (held, self.lane(lane)) {
            let deadline = owner::shared_now_ns().saturating_add(lease.as_nanos() as u64);
            l.set_deadline(&c, self.owner, deadline);
        }
    }

    fn register(&self, waker: &Waker) -> u64 {
        let id = self.notify.register(waker);
        if let Some(t) = self.transport.upgrade() {
            t.ensure_watcher();
            // Read after registering, before the caller's last look at the
            // queue: a publish from now on moves the word past this value.
            t.arm.arm(t.control.u32_at(PUBLISHED).load(SeqCst));
        }
        id
    }

    fn unregister(&self, id: u64) {
        self.notify.unregister(id)
    }

    fn is_deleted(&self) -> bool {
        self.deleted.load(SeqCst)
    }

    fn consumer_added(&self) {
        self.consumers.fetch_add(1, SeqCst);
    }

    fn consumer_removed(&self) {
        let left = self.consumers.fetch_sub(1, SeqCst) - 1;
        if left == 0 && self.decl.auto_delete && !self.is_deleted() {
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

impl Inner {
    fn meta_path(&self) -> PathBuf {
        self.root.join("meta.json")
    }

    fn read_meta(&self) -> Result<Meta, Error> {
        match std::fs::read_to_string(self.meta_path()) {
            Ok(text) => Meta::from_json(&text).map_err(|e| store_err("metadata", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Meta::default()),
            Err(e) => Err(store_err("metadata", e)),
        }
    }

    fn lock_meta(&self) -> Result<FileLock, Error> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.root.join("meta.lock"))
            .map_err(|e| store_err("metadata lock", e))?;
        FileLock::exclusive(f).map_err(|e| store_err("metadata lock", e))
    }

    /// Applies a topology change under the metadata lock and publishes it.
    fn change(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Meta) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let _lock = self.lock_meta()?;
        let mut meta = self.read_meta()?;
        let before = meta.clone();
        f(&mut meta)?;
        if meta != before {
            let tmp = self.root.join(format!("meta.json.tmp-{}", self.pid));
            // Written, synced, renamed, and the directory synced: a topology
            // change that returned survives a power loss.
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(meta.to_json().as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, self.meta_path())?;
                std::fs::File::open(&self.root)?.sync_all()
            };
            write().map_err(|e| store_err("metadata write", e))?;
            self.control.u64_at(GENERATION).fetch_add(1, AcqRel);
        }
        self.reload(meta)
    }

    /// Reloads the topology if another process changed it.
    fn refresh(self: &Arc<Self>) -> Result<(), Error> {
        let gen = self.control.u64_at(GENERATION).load(Acquire);
        if self.loaded_gen.load(Acquire) == gen && gen != 0 {
            return Ok(());
        }
        let meta = self.read_meta()?;
        self.reload(meta)
    }

    fn reload(self: &Arc<Self>, meta: Meta) -> Result<(), Error> {
        let gen = self.control.u64_at(GENERATION).load(Acquire);
        let mut topo = self.topo.lock();
        let mut topology = Topology::new();
        for e in &meta.exchanges {
            topology.declare_exchange(e)?;
        }
        let mut queues = HashMap::new();
        for (q, _) in &meta.queues {
            let existing = topo.queues.get(&q.name).filter(|x| x.decl == *q).cloned();
            let lq = match existing {
                Some(x) => x,
                None => Arc::new(LocalQueue::open(
                    &self.root,
                    q.clone(),
                    &self.opts,
                    self.alloc.clone(),
                    self.me.claim_owner(),
                    Arc::downgrade(self),
                )?),
            };
            queues.insert(q.name.clone(), lq);
        }
        for b in &meta.bindings {
            let _ = topology.bind(b.clone(), |q| queues.contains_key(q));
        }
        for (name, q) in &topo.queues {
            if !queues.contains_key(name) {
                q.deleted.store(true, SeqCst);
                q.notify.notify_all();
            }
        }
        let snapshot = topology.snapshot(queues.iter().map(|(n, q)| (n.clone(), q.clone())));
        topo.topology = topology;
        topo.queues = queues;
        topo.generation = gen;
        self.loaded_gen.store(gen, SeqCst);
        self.routing.store(Arc::new(snapshot));
        Ok(())
    }

    fn queue(self: &Arc<Self>, name: &str, owner: ConnectionId) -> Result<Arc<LocalQueue>, Error> {
        check_name("queue", name)?;
        self.refresh()?;
        let q = self
            .topo
            .lock()
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownQueue(name.to_owned()))?;
        self.check_owner(&q, owner)?;
        Ok(q)
    }

    fn check_owner(&self, q: &LocalQueue, owner: ConnectionId) -> Result<(), Error> {
        if q.decl.exclusive {
            match self.exclusive_owner.lock().get(&q.decl.name) {
                Some(o) if *o == owner => {}
                _ => return Err(Error::Exclusive(q.decl.name.clone())),
            }
        }
        Ok(())
    }

    fn dead_letter(self: &Arc<Self>, queue: &Queue, env: Envelope, reason: DeathReason) {
        let Some((message, dlx, rk)) = dead_letter(queue, &env, reason) else {
            if reason == DeathReason::MaxLen {
                self.counters.record(TransportEvent::DroppedOverflow, 1);
            }
            return;
        };
        match self.publish(Envelope::new(message, &dlx, &rk), true, true) {
            Ok(()) => self.counters.record(TransportEvent::DeadLettered, 1),
            Err(e) => {
                tracing::warn!(queue = %queue.name, error = %e, "dead-lettered message dropped");
                self.counters.record(TransportEvent::DroppedDeadLetter, 1)
            }
        }
    }

    fn publish(
        self: &Arc<Self>,
        env: Envelope,
        mandatory: bool,
        clamp: bool,
    ) -> Result<(), PublishError> {
        if let Err(e) = self.refresh() {
            return Err(PublishError::Transport {
                reason: e.to_string(),
                message: Box::new(env.into_message()),
            });
        }
        let routing = self.routing.load();
        let route = match routing.route_publish(&env, mandatory) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.counters.record(TransportEvent::Published, 1);
                self.counters.record(TransportEvent::DroppedUnroutable, 1);
                return Ok(());
            }
            Err(refused) => return Err(refused.into_error(env)),
        };
        let targets = route.as_slice();
        let mut priority = env.properties().priority.unwrap_or(0);
        for &t in targets {
            let q = routing.target(t);
            if priority > q.decl.max_priority {
                if clamp {
                    priority = q.decl.max_priority;
                    continue;
                }
                return Err(PublishError::PriorityTooHigh {
                    priority,
                    max: q.decl.max_priority,
                    queue: q.decl.name.clone(),
                    message: Box::new(env.into_message()),
                });
            }
        }
        let size = env.size() as u64;
        for &t in targets {
            let q = routing.target(t);
            let within = |(n, b): (u64, u64)| {
                n < q.decl.max_length
                    && b + size <= q.decl.max_length_bytes
                    && self.opts.max_queue_bytes.is_none_or(|max| b + size <= max)
            };
            // Cheap first: an overestimate within every limit is enough.
            if within(q.ready(false)) {
                continue;
            }
            let (n, b) = q.ready(true);
            let budget = self.opts.max_queue_bytes.filter(|max| b + size > *max);
            let over = if n + 1 > q.decl.max_length {
                Some("max_length")
            } else if b + size > q.decl.max_length_bytes {
                Some("max_length_bytes")
            } else {
                None
            };
            if let Some(max) = budget {
                return Err(PublishError::QueueFull {
                    queue: q.decl.name.clone(),
                    reason: format!("max_queue_bytes ({max}) of the local store reached"),
                    message: Box::new(env.into_message()),
                });
            }
            if let Some(which) = over {
                match q.decl.overflow {
                    Overflow::RejectPublish => {
                        return Err(PublishError::QueueFull {
                            queue: q.decl.name.clone(),
                            reason: format!("{which} reached and overflow is reject-publish"),
                            message: Box::new(env.into_message()),
                        })
                    }
                    Overflow::DropHead => {
                        q.drop_oldest();
                    }
                }
            }
        }
        let payload = match codec::encode(&env.exchange, &env.routing_key, &env.to_message()) {
            Ok(p) => p,
            Err(e) => {
                return Err(PublishError::Transport {
                    reason: format!("encoding the record: {e}"),
                    message: Box::new(env.into_message()),
                })
            }
        };
        let writer = self.me.writer();
        let ts = wall_ns();
        let mut written = Vec::new();
        for &t in targets {
            let q = routing.target(t);
            let lane = priority.min(q.decl.max_priority);
            let r = q.lane(lane).and_then(|l| {
                let pos = l
                    .append(&payload, env.size() as u32, writer, ts)
                    .map_err(|e| store_err("append", e))?;
                if self.durability.is_some() {
                    if let Some(seg) = l.segment(pos.seq).map_err(|e| store_err("segment", e))? {
                        written.push(seg);
                    }
                }
                Ok(())
            });
            if let Err(e) = r {
                return Err(PublishError::Transport {
                    reason: e.to_string(),
                    message: Box::new(env.into_message()),
                });
            }
            q.notify.notify_all();
        }
        self.counters.record(TransportEvent::Published, 1);
        self.counters
            .record(TransportEvent::Routed, targets.len() as u64);
        self.wake_other_processes();
        if let Some(d) = &self.durability {
            if let Err(e) = d.commit(&written) {
                // The record is in the log (it may be delivered), but its
                // durability is not confirmed: say so.
                return Err(PublishError::Transport {
                    reason: format!("published but not confirmed durable: {e}"),
                    message: Box::new(env.into_message()),
                });
            }
        }
        Ok(())
    }

    /// After a publish: one atomic add, and a futex wake only for the first
    /// publish since some process's watcher went to sleep.
    fn wake_other_processes(&self) {
        let word = self.control.u32_at(PUBLISHED);
        word.fetch_add(1, AcqRel);
        std::sync::atomic::fence(SeqCst);
        let sleepers = self.control.u32_at(SLEEPERS);
        if sleepers.load(SeqCst) != 0 && sleepers.swap(0, SeqCst) != 0 {
            crate::state::futex_wake(word);
        }
    }

    /// Starts (once) the thread that wakes this process's sleeping consumers
    /// when another process publishes.
    fn ensure_watcher(self: &Arc<Self>) {
        self.watcher.get_or_init(|| {
            let (weak, arm) = (Arc::downgrade(self), self.arm.clone());
            let _ = std::thread::Builder::new()
                .name("dashi-local-watch".into())
                .spawn(move || watch(weak, arm));
        });
    }
}

/// The publish-counter value the watcher must wait from, set by consumers
/// about to sleep (the oldest value wins: waking early is harmless, late is
/// not).
#[derive(Default)]
struct Arm {
    from: parking_lot::Mutex<Option<u32>>,
    cv: parking_lot::Condvar,
}

impl Arm {
    fn arm(&self, seen: u32) {
        let mut from = self.from.lock();
        if from.is_none() {
            *from = Some(seen);
            self.cv.notify_one();
        }
    }

    /// Waits up to `timeout` for an arming; takes it.
    fn take(&self, timeout: std::time::Duration) -> Option<u32> {
        let mut from = self.from.lock();
        if from.is_none() {
            self.cv.wait_for(&mut from, timeout);
        }
        from.take()
    }
}

/// Body of the watcher thread. Idle until a consumer of this process is about
/// to sleep (it arms the watcher with the publish counter it saw); then sleeps
/// on the shared futex word from that value, so a publish by any process
/// after the consumer's last look wakes it, and wakes this process's waiting
/// consumers. While consumers keep waiting it re-arms itself; once a second it
/// wakes them anyway, so records of dead processes get reclaimed. Exits when
/// the transport is dropped.
fn watch(weak: Weak<Inner>, arm: Arc<Arm>) {
    let second = std::time::Duration::from_secs(1);
    loop {
        let seen = arm.take(second);
        let Some(inner) = weak.upgrade() else { return };
        let Some(seen) = seen else { continue };
        let word = inner.control.u32_at(PUBLISHED);
        // Raise the flag, then look: a publish either comes before the look
        // (the word moved: no sleep) or sees the flag (and wakes us).
        inner.control.u32_at(SLEEPERS).store(1, SeqCst);
        std::sync::atomic::fence(SeqCst);
        if word.load(SeqCst) == seen {
            crate::state::futex_wait(word, seen, second);
        }
        let waiting: Vec<Arc<LocalQueue>> = inner
            .topo
            .lock()
            .queues
            .values()
            .filter(|q| q.notify.waiters() > 0)
            .cloned()
            .collect();
        if !waiting.is_empty() {
            // Those still asleep after this wake-up wait from here on.
            arm.arm(word.load(SeqCst));
        }
        for q in &waiting {
            q.notify.notify_all();
        }
    }
}

/// Recovers every lane of the store at `root` (the caller is its only user)
/// and removes half-made segment files of writers that died creating them.
fn recover_store(root: &Path, segment_size: u64) -> Result<Totals, Error> {
    let mut total = Totals::default();
    let queues = match std::fs::read_dir(root.join("q")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(total),
        Err(e) => return Err(store_err("recovery", e)),
    };
    for q in queues.flatten() {
        let Ok(lanes) = std::fs::read_dir(q.path()) else {
            continue;
        };
        for l in lanes.flatten() {
            let name = l.file_name().to_string_lossy().into_owned();
            let Some(p) = name
                .strip_prefix("lane-")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(files) = std::fs::read_dir(l.path()) {
                for f in files.flatten() {
                    if f.file_name().to_string_lossy().contains(".seg.tmp-") {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
            let lane =
                Lane::open(&l.path(), p, segment_size).map_err(|e| store_err("recovery", e))?;
            let t = lane.recover().map_err(|e| store_err("recovery", e))?;
            if t.moved + t.tails_cut + t.holes_padded > 0 {
                tracing::warn!(
                    lane = %l.path().display(),
                    moved_aside = t.moved,
                    tails_cut = t.tails_cut,
                    holes_padded = t.holes_padded,
                    "local store recovered"
                );
            }
            total.merge(t);
        }
    }
    Ok(total)
}

/// Stores open in this process, by directory and options.
type OpenStores = Mutex<HashMap<(PathBuf, String), Weak<Inner>>>;

static OPEN: OnceLock<OpenStores> = OnceLock::new();

impl LocalTransport {
    /// The store at `root`, shared with every connection of this process that
    /// opened it with the same options (one set of mappings and wake-ups).
    pub fn open(root: &Path, opts: LocalOptions) -> Result<LocalTransport, Error> {
        let key = (root.to_owned(), format!("{opts:?}"));
        let mut open = OPEN.get_or_init(Default::default).lock();
        if let Some(inner) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(LocalTransport { inner });
        }
        let t = Self::open_new(root, opts)?;
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&t.inner));
        Ok(t)
    }

    fn open_new(root: &Path, opts: LocalOptions) -> Result<LocalTransport, Error> {
        std::fs::create_dir_all(root.join("q")).map_err(|e| store_err("directory", e))?;
        let marker = root.join("DASHI-LOCAL");
        match std::fs::read_to_string(&marker) {
            Ok(m) if m == MARKER => {}
            Ok(m) => {
                return Err(store_err(
                    "format",
                    format!(
                        "{} holds a store of format {:?}; this build reads {:?}",
                        root.display(),
                        m.trim(),
                        MARKER.trim()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(&marker, MARKER).map_err(|e| store_err("format marker", e))?;
            }
            Err(e) => return Err(store_err("format marker", e)),
        }
        // Presence: every process holds a shared lock on `open.lock` while it
        // has the store open. The first one in (nobody else holds it) gets it
        // exclusively and recovers the store before letting others in.
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(root.join("open.lock"))
            .map_err(|e| store_err("presence lock", e))?;
        let mut recovered = Totals::default();
        let presence = match FileLock::try_exclusive(
            lock_file
                .try_clone()
                .map_err(|e| store_err("presence lock", e))?,
        )
        .map_err(|e| store_err("presence lock", e))?
        {
            Some(alone) => {
                recovered = recover_store(root, opts.segment_size)?;
                alone
                    .downgrade()
                    .map_err(|e| store_err("presence lock", e))?
            }
            None => FileLock::shared(lock_file).map_err(|e| store_err("presence lock", e))?,
        };
        let control =
            StatePage::open(&root.join("control")).map_err(|e| store_err("control page", e))?;
        // One small runtime per store: fallocate of segments (and their
        // background preparation) and, with fsync, the fdatasyncs.
        let cores = match opts.fsync {
            Fsync::Never => 1,
            _ => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(2),
        };
        let mut cfg = RuntimeConfig::default()
            .with_cores(cores)
            .with_shutdown_timeout(std::time::Duration::from_millis(500));
        cfg.simulate_unavailable = opts.simulate_no_io_uring.then_some(libc::EPERM);
        let rt = Runtime::start(cfg).map(Arc::new).map_err(|e| e.to_string());
        let alloc = match &rt {
            Ok(rt) => Allocator::on_ring(rt.clone()),
            Err(e) => {
                // fsync=never works without io_uring (fsync modes refuse below).
                if opts.fsync == Fsync::Never {
                    tracing::warn!(error = %e, "io_uring unavailable: local:// segments are allocated with fallocate(2) by the writer");
                }
                Allocator::direct()
            }
        };
        let durability = crate::durability::Durability::start(opts.fsync, rt)
            .map_err(|e| store_err("durability", e))?;
        let inner = Arc::new(Inner {
            root: root.to_owned(),
            opts,
            control,
            topo: Mutex::new(Topo {
                generation: u64::MAX,
                topology: Topology::new(),
                queues: HashMap::new(),
            }),
            routing: ArcSwap::from_pointee(Routing::default()),
            loaded_gen: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
            pid: std::process::id(),
            me: owner::Me::get(),
            exclusive_owner: Mutex::new(HashMap::new()),
            watcher: OnceLock::new(),
            arm: Arc::new(Arm::default()),
            durability,
            alloc,
            recovered,
            _presence: presence,
        });
        let meta = inner.read_meta()?;
        inner.reload(meta)?;
        Ok(LocalTransport { inner })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// What recovery found and did when this instance opened the store with
    /// nobody else using it (all zero when other processes had it open, in
    /// which case the first of them recovered it).
    pub fn recovered(&self) -> Totals {
        self.inner.recovered
    }

    /// True when segments are allocated through io_uring (false when the
    /// runtime could not start and `fallocate(2)` is used instead).
    pub fn allocates_on_ring(&self) -> bool {
        self.inner.alloc.uses_ring()
    }

    /// `fdatasync` calls issued so far (0 with `fsync=never`).
    pub fn syncs(&self) -> u64 {
        self.inner.durability.as_ref().map_or(0, |d| d.syncs())
    }
}

impl Transport for LocalTransport {
    fn scheme(&self) -> &'static str {
        "local"
    }

    fn implements(&self) -> Implements {
        let mut i = Implements::default();
        i.priorities = true;
        i.fanout = true;
        i.durable = true;
        i.multi_process = true;
        i.native_leases = true;
        i
    }

    fn declare_exchange(&self, ex: &Exchange) -> Result<(), Error> {
        let mut t = Topology::new();
        t.declare_exchange(ex)?;
        self.inner.change(|m| {
            match m.exchanges.iter().find(|e| e.name == ex.name) {
                Some(e) if e == ex => {}
                Some(e) => {
                    let mut t = Topology::new();
                    t.declare_exchange(e)?;
                    t.declare_exchange(ex)?;
                }
                None => m.exchanges.push(ex.clone()),
            }
            Ok(())
        })
    }

    fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        check_name("exchange", name)?;
        self.inner.change(|m| {
            if !m.exchanges.iter().any(|e| e.name == name) {
                return Err(Error::UnknownExchange(name.to_owned()));
            }
            if if_unused && m.bindings.iter().any(|b| b.exchange == name) {
                return Err(Error::InUse(format!("exchange {name:?}")));
            }
            m.exchanges.retain(|e| e.name != name);
            m.bindings.retain(|b| b.exchange != name);
            Ok(())
        })
    }

    fn declare_queue(&self, q: &Queue, owner: ConnectionId) -> Result<QueueInfo, Error> {
        check_name("queue", &q.name)?;
        if let Some(dlx) = &q.dead_letter_exchange {
            check_exchange_ref(dlx)?;
        }
        if q.max_length == 0 || q.max_length_bytes == 0 {
            return Err(Error::InvalidArgument(
                "max_length and max_length_bytes must be at least 1".into(),
            ));
        }
        let pid = self.inner.pid;
        self.inner.change(|m| {
            match m.queues.iter().find(|(x, _)| x.name == q.name) {
                Some((x, o)) => {
                    if x.exclusive
                        && (*o != Some(pid)
                            || self.inner.exclusive_owner.lock().get(&q.name) != Some(&owner))
                    {
                        return Err(Error::Exclusive(q.name.clone()));
                    }
                    if x != q {
                        return Err(Error::PreconditionFailed(format!(
                            "queue {:?} exists with other arguments ({x:?}); redeclared as {q:?}",
                            q.name
                        )));
                    }
                }
                None => {
                    m.queues.push((q.clone(), q.exclusive.then_some(pid)));
                    if q.exclusive {
                        self.inner
                            .exclusive_owner
                            .lock()
                            .insert(q.name.clone(), owner);
                    }
                }
            }
            Ok(())
        })?;
        let lq = self.inner.queue(&q.name, owner)?;
        let (n, _, _, _) = lq.counts();
        Ok(QueueInfo {
            name: q.name.clone(),
            message_count: n,
            consumer_count: lq.consumers.load(SeqCst),
        })
    }

    fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> Result<u64, Error> {
        let q = self.inner.queue(name, owner)?;
        if if_unused && q.consumers.load(SeqCst) > 0 {
            return Err(Error::InUse(format!("queue {name:?}")));
        }
        let (n, _, _, _) = q.counts();
        if if_empty && n > 0 {
            return Err(Error::NotEmpty(name.to_owned()));
        }
        self.inner.change(|m| {
            m.queues.retain(|(x, _)| x.name != name);
            m.bindings.retain(|b| b.queue != name);
            Ok(())
        })?;
        let _ = std::fs::remove_dir_all(&q.dir);
        Ok(n)
    }

    fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u64, Error> {
        let q = self.inner.queue(name, owner)?;
        let mut n = 0;
        for p in q.used_lanes() {
            let l = q.lane(p)?;
            while let Ok(Some(c)) = l.claim(q.owner) {
                l.settle(&c, q.owner, claim::DEAD);
                n += 1;
            }
        }
        Ok(n)
    }

    fn bind(&self, binding: Binding) -> Result<(), Error> {
        self.inner.change(|m| {
            let mut t = Topology::new();
            for e in &m.exchanges {
                t.declare_exchange(e)?;
            }
            let names: Vec<String> = m.queues.iter().map(|(q, _)| q.name.clone()).collect();
            if t.bind(binding.clone(), |q| names.iter().any(|n| n == q))?
                && !m.bindings.contains(&binding)
            {
                m.bindings.push(binding.clone());
            }
            Ok(())
        })
    }

    fn unbind(&self, binding: &Binding) -> Result<(), Error> {
        self.inner.change(|m| {
            let before = m.bindings.len();
            m.bindings.retain(|b| b != binding);
            if m.bindings.len() == before {
                return Err(Error::InvalidArgument(format!(
                    "no binding of queue {:?} to exchange {:?} with key {:?}",
                    binding.queue, binding.exchange, binding.routing_key
                )));
            }
            let ex = binding.exchange.clone();
            let auto = m.exchanges.iter().any(|e| e.name == ex && e.auto_delete);
            if auto && !m.bindings.iter().any(|b| b.exchange == ex) {
                m.exchanges.retain(|e| e.name != ex);
            }
            Ok(())
        })
    }

    fn queue(&self, name: &str, owner: ConnectionId) -> Result<Arc<dyn QueueStore>, Error> {
        Ok(self.inner.queue(name, owner)?)
    }

    fn publish(&self, envelope: Envelope, mandatory: bool) -> Result<(), PublishError> {
        self.inner.publish(envelope, mandatory, false)
    }

    fn connection_closed(&self, owner: ConnectionId) {
        let mine: Vec<String> = self
            .inner
            .exclusive_owner
            .lock()
            .iter()
            .filter(|(_, o)| **o == owner)
            .map(|(n, _)| n.clone())
            .collect();
        for name in mine {
            let _ = self.delete_queue(&name, false, false, owner);
            self.inner.exclusive_owner.lock().remove(&name);
        }
    }

    fn health(&self) -> Result<(), Error> {
        match &self.inner.durability {
            Some(d) => d.health().map_err(|e| store_err("runtime", e)),
            None => Ok(()),
        }
    }

    fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    fn queue_stats(&self, name: &str) -> Option<QueueStats> {
        self.inner.refresh().ok()?;
        let q = self.inner.topo.lock().queues.get(name).cloned()?;
        Some(stats(&q))
    }

    fn all_queue_stats(&self) -> Vec<QueueStats> {
        let _ = self.inner.refresh();
        let qs: Vec<_> = self.inner.topo.lock().queues.values().cloned().collect();
        qs.iter().map(|q| stats(q)).collect()
    }
}

fn stats(q: &LocalQueue) -> QueueStats {
    let (n, b, u, depth) = q.counts();
    QueueStats::new(
        q.decl.name.clone(),
        depth,
        n,
        b,
        u,
        q.consumers.load(SeqCst),
    )
}

fn parse_fsync(v: &str) -> Result<Fsync, UrlError> {
    let invalid = |reason: &str| UrlError::InvalidOption {
        name: "fsync".into(),
        value: v.into(),
        reason: reason.into(),
    };
    match v {
        "never" => Ok(Fsync::Never),
        "always" => Ok(Fsync::Always),
        v => match v.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if (1..=3_600_000).contains(&ms) => {
                Ok(Fsync::Interval(std::time::Duration::from_millis(ms)))
            }
            Some(_) => Err(invalid("interval:<ms> needs 1 to 3600000 milliseconds")),
            None => Err(invalid("expected never, always or interval:<ms>")),
        },
    }
}

/// Opens a `local:///abs/dir?options` URL.
pub fn open(mut url: ConnectUrl) -> Result<Connection, Error> {
    if url.scheme != "local" {
        return Err(UrlError::UnknownScheme {
            scheme: url.scheme,
            supported: "local".into(),
        }
        .into());
    }
    if !url.host.is_empty() || url.path.is_empty() || !url.path.starts_with('/') {
        return Err(UrlError::Malformed {
            reason: format!(
                "local:// needs an absolute directory: local:///abs/path (got host {:?}, path {:?}); \
                 relative paths are not accepted",
                url.host, url.path
            ),
        }
        .into());
    }
    let config = url.take_connection_config()?;
    let mut opts = LocalOptions::default();
    if let Some(v) = url.take_option("fsync") {
        opts.fsync = parse_fsync(&v)?;
    }
    if let Some(v) = url.take_option("segment_size") {
        let n = dashi_engine::url::parse_size("segment_size", &v)?;
        if !(64 << 10..=1 << 35).contains(&n) || n % 4096 != 0 {
            return Err(UrlError::InvalidOption {
                name: "segment_size".into(),
                value: v,
                reason: "expected a multiple of 4096 from 64K to 32G".into(),
            }
            .into());
        }
        opts.segment_size = n;
    }
    if let Some(v) = url.take_option("max_queue_bytes") {
        opts.max_queue_bytes = Some(dashi_engine::url::parse_size("max_queue_bytes", &v)?);
    }
    url.reject_unknown_options()?;
    let t = LocalTransport::open(Path::new(&url.path), opts)?;
    Ok(Connection::with_transport(Arc::new(t), config))
}
