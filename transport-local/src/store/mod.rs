//! `local://`: the `Transport` over a store directory shared by processes.
//!
//! ```text
//! <root>/DASHI-LOCAL              "dashi-local 4": format marker, checked on open
//! <root>/meta.json, meta.lock      topology, rewritten under an exclusive flock
//! <root>/open.lock                presence: shared flock while open (exclusive to recover)
//! <root>/entry.lock               flock'd exclusively by a process entering (until it holds open.lock)
//! <root>/control                  shared words: generation, wake-ups, process ids, counters
//! <root>/procs/<id>               one per process using the store, flocked while it runs
//! <root>/q/<name>/name            the queue's name (for hashed directory names)
//! <root>/q/<name>/<incarnation>/  one queue incarnation: `state` (lanes used), `lane-<p>/`
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
//! - A queue's files belong to one incarnation (a number `meta.json` never
//!   gives twice): a queue deleted and declared again is a new directory, so
//!   a process that has not seen the change cannot write into the new queue
//!   thinking it is the old one, nor the reverse.
//! - `meta.json` never names a queue whose files were not made: a declare
//!   makes them under the metadata lock before it writes `meta.json`.
//! - A queue whose files a process cannot open is unusable there, never
//!   missing: routed to, every use refused with why (a publish handed back,
//!   not dropped as unroutable), and the store's other queues open.
//!
//! Files: `options.rs` (the URL), `opening.rs` (marker, presence lock,
//! recovery on open), `topology.rs` (`meta.json` and the routing snapshot,
//! `meta_json.rs` its format), `publish.rs`, `queue.rs` (one queue and its
//! `QueueStore`), `wakeup.rs` (cross-process wake-ups), `durability.rs`
//! (fdatasync on the runtime), `expiry.rs` (TTL on a timer),
//! `shared_stats.rs` (store-wide counters and consumers).

mod durability;
mod expiry;
pub(crate) mod meta_json;
mod opening;
mod options;
mod publish;
mod queue;
mod shared_stats;
mod topology;
mod wakeup;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cut::CutFlag;
use arc_swap::ArcSwap;
use dashi_engine::spi::{
    check_delete, check_name, check_redeclare, validate_declaration, Accepted, Binding,
    ConnectionId, Counters, Envelope, Implements, QueueStore, Routing, Topology, Transport,
};
use dashi_engine::{
    Error, Exchange, FailureKind, PublishError, Queue, QueueInfo, QueueStats, StoreFailure,
};
use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::lock::FileLock;
use crate::procs::Registration;
use crate::recovery::Totals;
use crate::segment::claim;
use crate::shared_page::SharedPage;

pub use options::{open, Fsync, LocalOptions};
use queue::LocalQueue;
use wakeup::Arm;

const MARKER: &str = "dashi-local 4\n";
/// The format before segment layout 3: the same store, whose segments are
/// all layout 2. Opened, its marker is rewritten to [`MARKER`] (nothing
/// else changes), so that a build that reads only layout 2 refuses the
/// whole store at once instead of a lane at a time.
const MARKER_3: &str = "dashi-local 3\n";
const GENERATION: usize = 0;
/// Futex word bumped after every publish (32-bit, own cache line).
pub(crate) const PUBLISHED: usize = 64;
/// Set by a watcher about to sleep on [`PUBLISHED`]; the first publish after
/// that clears it and wakes every watcher, later ones skip the syscall (32-bit).
const SLEEPERS: usize = 128;

/// An error of the store's pieces, as a typed failure (its kind decides
/// whether a retry can help).
pub(crate) trait IntoFailure {
    /// The failure, while doing `what`.
    fn failure(self, what: &str) -> StoreFailure;
}

impl IntoFailure for std::io::Error {
    fn failure(self, what: &str) -> StoreFailure {
        StoreFailure::io(what, &self)
    }
}

impl IntoFailure for crate::segment::SegmentError {
    fn failure(self, what: &str) -> StoreFailure {
        use crate::segment::SegmentError as E;
        match self {
            E::Io { path, source } => StoreFailure::io(what, &source).at(path),
            e @ E::UnknownVersion { .. } => StoreFailure::new(FailureKind::Format, what, e),
            e => StoreFailure::new(FailureKind::Damaged, what, e),
        }
    }
}

impl IntoFailure for crate::lane::LaneError {
    fn failure(self, what: &str) -> StoreFailure {
        use crate::lane::LaneError as E;
        match self {
            E::Segment(e) => e.failure(what),
            E::Io { dir, source } => StoreFailure::io(what, &source).at(dir),
            e @ E::TooLarge(_) => StoreFailure::new(FailureKind::Invalid, what, e),
            e @ E::Damaged(_) => StoreFailure::new(FailureKind::Damaged, what, e),
            e @ E::Exhausted { .. } => StoreFailure::new(FailureKind::Exhausted, what, e),
            e @ E::Inconsistent { .. } => StoreFailure::new(FailureKind::Damaged, what, e),
        }
    }
}

fn store_err(what: &str, e: impl IntoFailure) -> Error {
    Error::Store(e.failure(what))
}

/// A failure of a kind the caller knows (no error value to classify).
fn store_fail(kind: FailureKind, what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Store(StoreFailure::new(kind, what, detail))
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
    control: Arc<SharedPage>,
    topo: Mutex<Topo>,
    routing: ArcSwap<Routing<Arc<LocalQueue>>>,
    /// The generation `routing` was built from (checked on every publish
    /// without taking the topology lock).
    loaded_gen: AtomicU64,
    /// When to try the files of this process's unusable queues again
    /// (coarse clock, ns; 0 = none is unusable).
    retry_unusable_at: AtomicU64,
    /// This process has read a `meta.json`: the store has one, and a read
    /// that finds none is an anomaly, never an empty topology.
    meta_seen: std::sync::atomic::AtomicBool,
    /// This process's event counters, and their flushes into the store-wide
    /// totals.
    stats: Arc<shared_stats::CounterFlush>,
    /// This process's registration with the store (its id, and the lock
    /// that tells other processes it runs).
    reg: Registration,
    /// Exclusive queues this process declared: name → connection.
    exclusive_owner: Mutex<HashMap<String, ConnectionId>>,
    /// The thread that turns other processes' publishes into local wake-ups.
    watcher: OnceLock<()>,
    /// The thread that expires the heads of queues with a TTL.
    expiry: OnceLock<()>,
    /// Arms the watcher when a consumer of this process is about to sleep.
    arm: Arc<Arm>,
    /// fdatasync on a runtime core (`fsync=always` / `interval`).
    durability: Option<Arc<durability::Durability>>,
    /// Segment space (fallocate on a runtime core).
    alloc: Arc<Allocator>,
    /// What recovery did when this process opened the store first.
    recovered: Totals,
    /// Set once a file of the store was found cut short under this
    /// process: every operation here fails from then on (`cut.rs`).
    cut: Arc<CutFlag>,
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

impl Inner {
    /// Runs `f` (an operation of the store) under the cut guard: refused
    /// once a file of the store was found cut short here, and failed when
    /// it met one itself (what it read there was zeros).
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        let done = {
            let _g = self.cut.enter()?;
            f()
        };
        self.cut.check()?;
        done
    }

    /// This process's id in the store (claims and records name it).
    fn me(&self) -> u32 {
        self.reg.id()
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

    /// Records this process found with a damaged claim word and set aside
    /// (neither delivered nor dropped silently; reported in the log).
    pub fn set_aside(&self) -> u64 {
        let queues: Vec<_> = self.inner.topo.lock().queues.values().cloned().collect();
        queues
            .iter()
            .flat_map(|q| q.lanes.iter().filter_map(|l| l.get()))
            .map(|l| l.damaged_claims())
            .sum()
    }

    /// `fdatasync` calls issued so far (0 with `fsync=never`).
    pub fn syncs(&self) -> u64 {
        self.inner.durability.as_ref().map_or(0, |d| d.syncs())
    }

    /// Makes core `core` of the runtime the syncs run on panic (tests).
    #[cfg(test)]
    pub(crate) fn inject_core_panic(&self, core: usize) {
        if let Some(d) = &self.inner.durability {
            d.inject_core_panic(core);
        }
    }

    /// The store's cut flag (tests set it without a fault).
    #[cfg(test)]
    pub(crate) fn inner_cut_flag(&self) -> &CutFlag {
        &self.inner.cut
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
        self.inner.guarded(|| {
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
        })
    }

    fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.inner.guarded(|| {
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
        })
    }

    fn declare_queue(&self, q: &Queue, owner: ConnectionId) -> Result<QueueInfo, Error> {
        self.inner.guarded(|| {
            validate_declaration(q)?;
            let me = self.inner.me();
            let root = self.inner.root.clone();
            self.inner.change(|m| {
                if let Some(x) = m.queue(&q.name).cloned() {
                    // An exclusive queue of a process that ended went with it.
                    let orphan = x
                        .owner
                        .is_some_and(|o| o != me && !crate::procs::alive(&root, o));
                    if !orphan {
                        if x.decl.exclusive
                            && (x.owner != Some(me)
                                || self.inner.exclusive_owner.lock().get(&q.name) != Some(&owner))
                        {
                            return Err(Error::Exclusive(q.name.clone()));
                        }
                        return check_redeclare(&x.decl, q);
                    }
                    m.remove_queue(&q.name, Some(x.id));
                }
                // Long names are hashed into their file name: two names of
                // one file name would share a directory, and deleting one
                // queue would take the other's files with it.
                let mine = crate::file_names::encode(&q.name);
                if let Some(other) = m
                    .queues
                    .iter()
                    .find(|o| o.decl.name != q.name && crate::file_names::encode(&o.decl.name) == mine)
                {
                    return Err(Error::name(
                        "queue",
                        &q.name,
                        dashi_engine::NameError::Reserved {
                            why: format!(
                                "its file name in the store (a long name's is hashed) is that of queue {:?}",
                                other.decl.name
                            ),
                        },
                    ));
                }
                let id = m.add_queue(q.clone(), q.exclusive.then_some(me));
                // Its files first: `meta.json` never names a queue without them.
                queue::make_files(&root, &q.name, id)?;
                crate::failpoint!("store::declare_files_made");
                if q.exclusive {
                    self.inner
                        .exclusive_owner
                        .lock()
                        .insert(q.name.clone(), owner);
                }
                Ok(())
            })?;
            let lq = self.inner.queue(&q.name, owner)?;
            let (n, _, _, _) = lq.counts()?;
            Ok(QueueInfo {
                name: q.name.clone(),
                message_count: n,
                consumer_count: lq.state.consumers(),
            })
        })
    }

    fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> Result<u64, Error> {
        self.inner.guarded(|| {
            let q = self.inner.queue(name, owner)?;
            // A queue whose files cannot be read can still be deleted, but not
            // "if empty": nobody can tell that it is.
            let n = match q.counts() {
                Ok((n, ..)) => n,
                Err(e) if if_empty => return Err(e),
                Err(_) => 0,
            };
            check_delete(name, if_unused, if_empty, q.state.consumers(), n)?;
            // Exactly the incarnation checked: a newer one declared meanwhile by
            // another process stays.
            self.inner.change(|m| {
                m.remove_queue(name, Some(q.id));
                Ok(())
            })?;
            q.remove_files();
            Ok(n)
        })
    }

    fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u64, Error> {
        self.inner.guarded(|| {
            let q = self.inner.queue(name, owner)?;
            let mut n = 0;
            for p in q.used_lanes() {
                let l = q.lane(p)?;
                while let Some(c) = l.claim(q.owner).map_err(|e| store_err("purge", e))? {
                    l.settle(&c, q.owner, claim::DEAD);
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn bind(&self, binding: Binding) -> Result<(), Error> {
        self.inner.guarded(|| {
            self.inner.change(|m| {
                let mut t = Topology::new();
                for e in &m.exchanges {
                    t.declare_exchange(e)?;
                }
                let names: Vec<String> = m.queues.iter().map(|q| q.decl.name.clone()).collect();
                if t.bind(binding.clone(), |q| names.iter().any(|n| n == q))?
                    && !m.bindings.contains(&binding)
                {
                    m.bindings.push(binding.clone());
                }
                Ok(())
            })
        })
    }

    fn unbind(&self, binding: &Binding) -> Result<(), Error> {
        self.inner.guarded(|| {
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
        })
    }

    fn queue(&self, name: &str, owner: ConnectionId) -> Result<Arc<dyn QueueStore>, Error> {
        let q: Arc<dyn QueueStore> = self.inner.guarded(|| self.inner.queue(name, owner))?;
        Ok(q)
    }

    fn publish(&self, envelope: Envelope, mandatory: bool) -> Result<(), PublishError> {
        self.inner.publish(envelope, mandatory, false)
    }

    fn publish_async(&self, envelope: Envelope, mandatory: bool) -> Result<Accepted, PublishError> {
        self.inner.publish_async(envelope, mandatory)
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
            Some(d) => d
                .health()
                .map_err(|e| store_fail(FailureKind::Runtime, "runtime", e)),
            None => Ok(()),
        }
    }

    fn counters(&self) -> &Counters {
        &self.inner.stats.counters
    }

    fn store_counters(&self) -> Option<dashi_engine::CounterSnapshot> {
        self.inner.stats.totals()
    }

    fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>, Error> {
        self.inner.guarded(|| {
            // A store whose metadata cannot be read says so: answering from
            // what this process loaded before could name a deleted queue, and
            // answering "no such queue" would be a lie.
            self.inner.refresh()?;
            let q = self.inner.topo.lock().queues.get(name).cloned();
            match q {
                None => Ok(None),
                // Zeros would pass for an empty queue.
                Some(q) => q.counts().map(|c| Some(stats(&q, c))),
            }
        })
    }

    fn all_queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        self.inner.guarded(|| {
            self.inner.refresh()?;
            let qs: Vec<_> = self.inner.topo.lock().queues.values().cloned().collect();
            Ok(qs
                .iter()
                .map(|q| match q.counts() {
                    Ok(c) => stats(q, c),
                    Err(e) => QueueStats::new(q.decl.name.clone(), vec![], 0, 0, 0, 0)
                        .with_unusable(e.to_string()),
                })
                .collect())
        })
    }
}

fn stats(q: &LocalQueue, (n, b, u, depth): (u64, u64, u64, Vec<u64>)) -> QueueStats {
    QueueStats::new(q.decl.name.clone(), depth, n, b, u, q.store_consumers())
}

/// What recovery has set aside in a store over its life, found on disk:
/// segment files too damaged to read (in each lane's `damaged/`) and the
/// files holding corrupt records' bytes (each lane's `quarantine`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetAside {
    /// Damaged segment files.
    pub damaged_segments: Vec<PathBuf>,
    /// Quarantine files of corrupt records.
    pub quarantine_files: Vec<PathBuf>,
}

/// Lists what recovery set aside in the store at `root` (for `stat`).
pub fn set_aside(root: &std::path::Path) -> std::io::Result<SetAside> {
    let mut out = SetAside::default();
    let mut todo = vec![root.join("q")];
    while let Some(dir) = todo.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let path = e.path();
            let name = e.file_name();
            if e.file_type()?.is_dir() {
                if name == "damaged" {
                    for f in std::fs::read_dir(&path)? {
                        out.damaged_segments.push(f?.path());
                    }
                } else {
                    todo.push(path);
                }
            } else if name == "quarantine" {
                out.quarantine_files.push(path);
            }
        }
    }
    out.damaged_segments.sort();
    out.quarantine_files.sort();
    Ok(out)
}
