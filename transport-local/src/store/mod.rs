//! `local://`: the `Transport` over a store directory shared by processes.
//!
//! ```text
//! <root>/DASHI-LOCAL          "dashi-local 2": format marker, checked on open
//! <root>/meta.json, meta.lock  topology, rewritten under an exclusive flock
//! <root>/control              shared words: topology generation
//! <root>/q/<name>/state       shared words: which lanes were ever used
//! <root>/q/<name>/name        the queue's name (for hashed directory names)
//! <root>/q/<name>/lane-<p>/   one lane per priority (see `lane/`)
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

//!
//! Files: `options.rs` (the URL), `opening.rs` (marker, presence lock,
//! recovery on open), `topology.rs` (`meta.json` and the routing snapshot,
//! `meta_json.rs` its format), `publish.rs`, `queue.rs` (one queue and its
//! `QueueStore`), `wakeup.rs` (cross-process wake-ups), `durability.rs`
//! (fdatasync on the runtime).

mod durability;
mod meta_json;
mod opening;
mod options;
mod publish;
mod queue;
mod topology;
mod wakeup;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dashi_engine::spi::{
    check_delete, check_name, check_redeclare, validate_declaration, Binding, ConnectionId,
    Counters, Envelope, Implements, QueueStore, Routing, Topology, Transport,
};
use dashi_engine::{Error, Exchange, PublishError, Queue, QueueInfo, QueueStats};
use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::lane::claim;
use crate::lock::FileLock;
use crate::owner;
use crate::recovery::Totals;
use crate::shared_page::SharedPage;

pub use options::{open, Fsync, LocalOptions};
use queue::LocalQueue;
use wakeup::Arm;

const MARKER: &str = "dashi-local 2\n";
const GENERATION: usize = 0;
/// Futex word bumped after every publish (32-bit, own cache line).
const PUBLISHED: usize = 64;
/// Set by a watcher about to sleep on [`PUBLISHED`]; the first publish after
/// that clears it and wakes every watcher, later ones skip the syscall (32-bit).
const SLEEPERS: usize = 128;

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
    control: SharedPage,
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
    durability: Option<Arc<durability::Durability>>,
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

impl LocalTransport {
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
        validate_declaration(q)?;
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
                    check_redeclare(x, q)?;
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
            consumer_count: lq.state.consumers(),
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
        let (n, _, _, _) = q.counts();
        check_delete(name, if_unused, if_empty, q.state.consumers(), n)?;
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
    QueueStats::new(q.decl.name.clone(), depth, n, b, u, q.state.consumers())
}
